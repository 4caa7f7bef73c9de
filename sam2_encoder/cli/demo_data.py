"""``sam2-encoder demo-data [--out DIR]``: the small data the README's commands run on.

Writes, into one folder that appears whole (written as ``.<name>.<pid>.partial`` beside it, then
renamed; the next run removes such folders of runs that were killed):

- ``replay.zarr``: a Diffusion Policy replay buffer (zarr-2 format, DP's layout) of a moving
  square, from :func:`sam2_encoder.diffusion_policy.synthetic.write_replay_buffer`: ``data/img``
  ``(N, H, W, 3)`` uint8, ``data/agent_pos`` and ``data/action`` ``(N, 2)``, ``meta/episode_ends``;
  the input of ``sam2-encoder cache`` and ``sam2-encoder masks``;
- ``prompts.json``: the ``masks`` / ``cache --prompts`` prompts file, one box around the square
  on every episode's first frame (object id 1);
- ``clip.npy``: episode 0's frames ``(T, H, W, 3)`` uint8, an input of ``sam2-encoder track``;
- ``frame.npy``: its first frame ``(H, W, 3)`` uint8, an input of ``sam2-encoder encode``;
- ``lerobot/`` (with ``--lerobot``, where LeRobot is installed): the same episodes as a local
  LeRobotDataset (``observation.image``, ``observation.state``, ``action`` and the square's exact
  mask ``observation.masks`` ``(1, H, W)`` bool), images stored as PNG;
- ``demo.json``: the options it was made with. The same command again finds them and writes
  nothing, so README blocks can each start with it.

Needs zarr (``sam2-encoder[dp]``); no model, no network.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from .common import CLIError, needs_zarr, positive_int

__all__ = ["register", "run"]

_BACKGROUND = 40  # write_replay_buffer's background grey
_CAMERA = "img"
_TASK = "push the square"


def _frame_side(text: str) -> int:
    """Argparse type: a frame side between 32 and 1024 pixels."""
    value = positive_int(text)
    if not 32 <= value <= 1024:
        raise argparse.ArgumentTypeError(f"expected a frame side from 32 to 1024 pixels, got {value}")
    return value


def register(sub: Any) -> argparse.ArgumentParser:
    """Add the ``demo-data`` subcommand to a ``sam2-encoder`` subparsers object."""
    p = sub.add_parser(
        "demo-data",
        help="write a small Diffusion Policy replay buffer, a prompts file and frames to try the other commands on",
        description="Write the small data README's commands run on: a Diffusion Policy replay buffer "
        "(replay.zarr), a prompts file for `masks` / `cache --prompts` (prompts.json), a clip for `track` "
        "(clip.npy), a frame for `encode` (frame.npy) and, with --lerobot, a local LeRobotDataset. The folder "
        "appears whole; the same command again writes nothing.",
    )
    p.add_argument("--out", default="data/demo", help="output folder, new or empty (default: %(default)s)")
    p.add_argument("--episodes", type=positive_int, default=3, help="episodes (default: %(default)s)")
    p.add_argument("--steps", type=positive_int, default=20, help="frames per episode (default: %(default)s)")
    p.add_argument("--size", type=_frame_side, default=96, help="frame side in pixels, 32-1024 (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the trajectories (default: %(default)s)")
    p.add_argument(
        "--lerobot",
        action="store_true",
        help="also write the episodes as a local LeRobotDataset in OUT/lerobot (needs LeRobot installed)",
    )
    p.set_defaults(func=run)
    return p


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """What ``demo.json`` records: the options that decide the data."""
    from .. import __version__

    keys = ("episodes", "steps", "size", "seed", "lerobot")
    return {"format": 1, "sam2_encoder": __version__, **{k: getattr(args, k) for k in keys}}


def _existing(out: Path, options: dict[str, Any]) -> bool:
    """Whether ``out`` already holds this demo data; ``False`` when it is absent or empty.

    Raises:
        CLIError: If ``out`` is a file, or a folder with other content (other demo options included).
    """
    if not out.exists():
        return False
    if not out.is_dir():
        raise CLIError(f"--out {out} is a file: give a new or empty folder")
    if not any(out.iterdir()):
        return False
    manifest = out / "demo.json"
    try:
        found = json.loads(manifest.read_text())
    except (OSError, ValueError):
        found = None
    if found == options:
        return True
    what = "demo data made with other options" if isinstance(found, dict) else "other files"
    raise CLIError(f"--out {out} holds {what}: give a new or empty folder, or delete {out} first")


def square_box(frame: Any) -> list[int]:
    """The pixel box ``[x0, y0, x1, y1]`` of the square in one synthetic frame, with a 1-pixel margin.

    Args:
        frame: ``(H, W, 3)`` uint8 frame of :func:`write_replay_buffer`.

    Returns:
        ``[x0, y0, x1, y1]`` inside ``[0, W] x [0, H]``, ``x1 > x0``, ``y1 > y0``.
    """
    import numpy as np

    ys, xs = np.nonzero((frame != _BACKGROUND).any(axis=-1))
    h, w = frame.shape[:2]
    return [max(int(xs.min()) - 1, 0), max(int(ys.min()) - 1, 0), min(int(xs.max()) + 2, w), min(int(ys.max()) + 2, h)]


def _write_prompts(path: Path, frames: Any, ends: Any) -> None:
    starts = [0, *(int(e) for e in ends[:-1])]
    episodes = {str(i): {"1": {"box": square_box(frames[s])}} for i, s in enumerate(starts)}
    path.write_text(json.dumps({"objects": [1], "episodes": episodes}) + "\n")


def _write_lerobot(root: Path, frames: Any, state: Any, action: Any, ends: Any) -> None:
    """The episodes as a local LeRobotDataset at ``root`` (PNG images, no video, no hub)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    h, w = frames.shape[1:3]
    features = {
        "observation.image": {"dtype": "image", "shape": (h, w, 3), "names": ["height", "width", "channel"]},
        "observation.state": {"dtype": "float32", "shape": (2,), "names": ["y", "x"]},
        "action": {"dtype": "float32", "shape": (2,), "names": ["y", "x"]},
        "observation.masks": {"dtype": "bool", "shape": (1, h, w), "names": ["object", "height", "width"]},
    }
    dataset = LeRobotDataset.create(repo_id="local/sam2_demo", fps=10, features=features, root=root, use_videos=False)
    start = 0
    for end in ends:
        for i in range(start, int(end)):
            dataset.add_frame(
                {
                    "observation.image": frames[i],
                    "observation.state": state[i],
                    "action": action[i],
                    "observation.masks": (frames[i] != _BACKGROUND).any(axis=-1)[None],
                    "task": _TASK,
                }
            )
        dataset.save_episode()
        start = int(end)
    dataset.finalize()


def _write_all(tmp: Path, args: argparse.Namespace, options: dict[str, Any]) -> None:
    import numpy as np

    from ..diffusion_policy.synthetic import write_replay_buffer
    from ..diffusion_policy.zarr_io import open_group

    replay = tmp / "replay.zarr"
    write_replay_buffer(replay, episodes=args.episodes, steps=args.steps, size=args.size, seed=args.seed)
    root = open_group(replay)
    frames = np.asarray(root["data"][_CAMERA][...])
    ends = np.asarray(root["meta"]["episode_ends"][...])
    _write_prompts(tmp / "prompts.json", frames, ends)
    np.save(tmp / "clip.npy", frames[: int(ends[0])])
    np.save(tmp / "frame.npy", frames[0])
    if args.lerobot:
        state = np.asarray(root["data"]["agent_pos"][...])
        action = np.asarray(root["data"]["action"][...])
        _write_lerobot(tmp / "lerobot", frames, state, action, ends)
    (tmp / "demo.json").write_text(json.dumps(options, indent=1) + "\n")


def _remove_stale_partials(out: Path) -> None:
    """Delete ``.<name>.<pid>.partial`` folders beside ``out`` left by demo-data runs that were killed."""
    for folder in out.parent.glob(f".{out.name}.*.partial"):
        pid = folder.name[len(out.name) + 2 : -len(".partial")]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


def _check_imports(lerobot: bool) -> None:
    try:
        import zarr  # noqa: F401
    except ImportError as e:
        raise needs_zarr("demo-data", e) from e
    if lerobot:
        try:
            import lerobot as _lerobot  # noqa: F401
        except ImportError:
            raise CLIError(
                "--lerobot needs LeRobot, which is not installed here (Python >= 3.12: "
                'pip install -e . "./integration/lerobot", see integration/lerobot/README.md); '
                "without --lerobot the other demo files are written"
            ) from None


def run(args: argparse.Namespace) -> int:
    """Run ``sam2-encoder demo-data`` with parsed arguments; returns the exit status.

    Raises:
        CLIError: For an ``--out`` that holds something else, no zarr, or ``--lerobot`` without LeRobot.
    """
    out = Path(args.out)
    options = _options(args)
    if _existing(out, options):
        print(f"demo data already in {out} (same options): nothing written")
        return 0
    _check_imports(args.lerobot)
    print(f"writing demo data to {out} ({args.episodes} episodes of {args.steps} frames, {args.size}x{args.size})")
    sys.stdout.flush()
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out)
    tmp = out.parent / f".{out.name}.{os.getpid()}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        _write_all(tmp, args, options)
        if out.exists():  # an empty folder: replaced by the finished one
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for name, what in (
        ("replay.zarr", "Diffusion Policy replay buffer, camera key 'img' (cache, masks)"),
        ("prompts.json", "first-frame box of object 1 in every episode (masks --prompts, cache --prompts)"),
        ("clip.npy", "episode 0's frames (track)"),
        ("frame.npy", "one frame (encode)"),
        *(
            (("lerobot", "LeRobotDataset: --dataset.repo_id=local/sam2_demo --dataset.root=" + str(out / "lerobot")),)
            if args.lerobot
            else ()
        ),
    ):
        print(f"  {out / name}: {what}")
    return 0
