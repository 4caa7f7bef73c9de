"""``sam2-encoder track``: prompt an object on the first frame and track it through a video.

Reads a folder of frames (``.png``/``.jpg``/... via Pillow, ``.npy`` arrays), a ``(T, H, W, 3)``
``.npy`` file, or a video file (PyAV, or imageio as a fallback; both optional), runs
:class:`~sam2_encoder.streaming.StreamingPredictor` frame by frame and writes one mask PNG and one
overlay frame per input frame, named as the input frame (``masks/<name>.png``; the frames of a
stack, an animated image or a video are numbered ``000000.png`` ...).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import CLIError, add_model_args, build_model, non_negative_int, plural, remove_stale_partials, say

if TYPE_CHECKING:
    import numpy as np

__all__ = ["overlay", "register", "run"]

OVERLAY_COLOR = (255, 40, 40)


def _floats(text: str, count: int, what: str) -> list[float]:
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != count:
        raise argparse.ArgumentTypeError(f"{what} must be {count} comma-separated numbers, got {text!r}")
    return values


def _point(text: str) -> list[float]:
    """``X,Y``, checked by the prompt rules that need no frame (finite numbers)."""
    from ..prompts import check_points

    xy = _floats(text, 2, "a point (X,Y)")
    try:
        check_points([xy], None)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return xy


def _box(text: str) -> list[float]:
    """``X0,Y0,X1,Y1``, checked by the prompt rules that need no frame (finite, ``X1 > X0``, ``Y1 > Y0``)."""
    from ..prompts import check_box

    box = _floats(text, 4, "a box (X0,Y0,X1,Y1)")
    try:
        check_box(box)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return box


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``track`` subcommand to a ``sam2-encoder`` subparsers object.

    Args:
        subparsers: The object returned by ``ArgumentParser.add_subparsers()``.

    Returns:
        The ``track`` parser (its ``func`` default is :func:`run`).
    """
    p = subparsers.add_parser(
        "track",
        help="track an object through a video or a folder of frames, writing mask PNGs and overlays",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("input", help="video file (needs PyAV or imageio), folder of frames, or a (T, H, W, 3) .npy file")
    p.add_argument(
        "--point",
        action="append",
        type=_point,
        default=[],
        metavar="X,Y",
        help="click on the object in the first frame, in pixels (repeatable; a value that starts with '-' needs "
        "the = form: --point=-3,10)",
    )
    p.add_argument(
        "--negative",
        action="append",
        type=_point,
        default=[],
        metavar="X,Y",
        help="click on the background in the first frame (repeatable; --negative=-3,10 for a value that starts "
        "with '-')",
    )
    p.add_argument("--box", type=_box, metavar="X0,Y0,X1,Y1", help="box around the object in the first frame")
    add_model_args(p, image_size=1024)
    p.add_argument("--out", default=None, help="output folder (default: <input>_track next to the input)")
    p.add_argument("--max-frames", type=non_negative_int, default=0, help="stop after this many frames (0: all)")
    p.add_argument("--no-overlay", action="store_true", help="write the masks only")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="bf16: encode frames with the Hiera trunk under bfloat16 autocast (needs native bf16)",
    )
    p.set_defaults(func=run)
    return p


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------


def overlay(frame: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Tint the masked pixels of a frame.

    Args:
        frame: ``(H, W, 3)`` uint8.
        mask: ``(H, W)`` bool.
        alpha: Weight of the tint colour.

    Returns:
        ``(H, W, 3)`` uint8.
    """
    import numpy as np

    out = frame.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(OVERLAY_COLOR, dtype=np.float32)
    return out.round().astype(np.uint8)


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(array).save(path)


def _check_prompts(args: argparse.Namespace, frame: np.ndarray) -> None:
    """Every ``--point`` / ``--negative`` / ``--box`` inside the first frame.

    The rule of :mod:`sam2_encoder.prompts` that needs the frame; the others were checked when
    the arguments were parsed.
    """
    from ..prompts import check_box, check_points

    size = frame.shape[:2]
    where = f"{args.input}: frame 0"
    try:
        for option, points in (("--point", args.point), ("--negative", args.negative)):
            for x, y in points:
                check_points([[x, y]], None, f"{where}: {option} {x:g},{y:g}", size)
        if args.box is not None:
            check_box(args.box, f"{where}: --box {','.join(f'{v:g}' for v in args.box)}", size)
    except ValueError as e:
        raise CLIError(str(e)) from None


def _check_out(out: Path) -> None:
    """An output folder we may (re)place: absent, empty, or an earlier ``track`` output."""
    if out.is_file():
        raise CLIError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "track.json").is_file():
        raise CLIError(f"--out {out} exists and is not the output of an earlier `sam2-encoder track`; choose another")
    if not out.parent.is_dir():
        raise CLIError(f"--out {out}: the folder {out.parent} does not exist")


def _prompt(args: argparse.Namespace) -> dict[str, Any]:
    """The first frame's prompt as ``StreamingPredictor.add_prompt`` takes it (and track.json records it)."""
    prompt: dict[str, Any] = {}
    if args.point or args.negative:
        prompt["points"] = [*args.point, *args.negative]
        prompt["labels"] = [1] * len(args.point) + [0] * len(args.negative)
    if args.box is not None:
        prompt["box"] = list(args.box)
    return prompt


def _first_frame(args: argparse.Namespace) -> tuple[np.ndarray, Iterator[np.ndarray], int]:
    """``(first frame, the other frames, frame count or 0 if unknown)``, the prompt checked against it."""
    from .frames import iter_frames

    frames, count = iter_frames(args.input)
    if count == 0:
        raise CLIError(f"{args.input} holds no frames")
    if args.max_frames > 0:
        count = min(count, args.max_frames) if count else args.max_frames
    try:
        first = next(frames)
    except StopIteration:
        raise CLIError(f"{args.input} holds no frames") from None
    _check_prompts(args, first)
    return first, frames, count


def _track(
    args: argparse.Namespace,
    predictor: Any,
    frames: Iterator[np.ndarray],
    count: int,
    work: Path,
    names: list[str] | None,
) -> list[float]:
    """Track object 1 through ``frames`` into ``work/masks`` (and ``work/overlay``); the mask area of each frame.

    Each output is named after its input frame (``names``), or numbered when the frames have none.
    """
    import numpy as np
    from tqdm.auto import tqdm

    areas: list[float] = []
    bar = tqdm(frames, total=count, desc="track", unit="frame", disable=args.quiet)
    for index, frame in enumerate(bar):
        if args.max_frames and index >= args.max_frames:
            break
        try:
            result = predictor.add_prompt(frame, obj_id=1, **_prompt(args)) if index == 0 else predictor.track(frame)
        except (ValueError, TypeError) as e:
            raise CLIError(f"{args.input}: frame {index}: {e}") from e
        mask = result.mask(1).cpu().numpy()
        areas.append(float(mask.mean()))
        name = f"{names[index] if names else f'{index:06d}'}.png"
        _save_png(mask.astype(np.uint8) * 255, work / "masks" / name)
        if not args.no_overlay:
            _save_png(overlay(frame, mask), work / "overlay" / name)
    bar.close()
    return areas


def _report(args: argparse.Namespace, out: Path, predictor: Any, areas: list[float], seconds: float) -> dict[str, Any]:
    """What ``track.json`` records: input, prompt, model, timing, the mask area of each frame."""
    return {
        "input": str(Path(args.input)),
        "frames": len(areas),
        "prompt": _prompt(args),
        "variant": predictor.variant.name,
        "image_size": predictor.image_size,
        "seconds": round(seconds, 3),
        "ms_per_frame": round(1000 * seconds / len(areas), 2),
        "state_bytes": predictor.state_nbytes(),
        "mask_area_fraction": [round(a, 5) for a in areas],
        "out": str(out),
    }


def run(args: argparse.Namespace) -> int:
    """Run ``sam2-encoder track`` with parsed arguments.

    Everything is written into a hidden folder beside ``--out`` (``.<out>.<pid>.partial``) that
    replaces it only when every frame was tracked; a failed, interrupted or terminated run
    removes it, and one left by a killed run (SIGKILL) is removed by the next run. ``track.json``
    records the prompt, the model and the timing.

    Returns:
        The exit status (0 on success).

    Raises:
        CLIError: For a missing prompt, an unreadable or empty input, a prompt that does not fit
            the frame, or an output folder that is not ours to replace.
    """
    if not args.point and not args.box:
        raise CLIError("give at least one --point X,Y (or a --box X0,Y0,X1,Y1) on the first frame")
    try:
        import PIL  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the environment
        raise CLIError("writing mask PNGs needs Pillow: pip install pillow") from None
    from .frames import frame_names

    source = Path(args.input)
    out = Path(args.out) if args.out else source.parent / f"{source.stem}_track"
    _check_out(out)
    first, frames, count = _first_frame(args)  # refused before the slow imports
    names = frame_names(source)
    say(f"track: loading torch and {args.variant} at {args.image_size}x{args.image_size}")
    import torch

    from ..streaming import StreamingPredictor

    predictor = build_model(
        StreamingPredictor,
        args,
        "masks",
        device=args.device,
        dtype=getattr(torch, args.dtype),
        precision=args.precision,
    )
    report, seconds = _track_into(out, args, predictor, _chain(first, frames), count, names)
    print(
        f"tracked {plural(report['frames'], 'frame')} in {seconds:.1f} s ({report['ms_per_frame']} ms/frame); "
        f"masks in {out / 'masks'}" + ("" if args.no_overlay else f", overlays in {out / 'overlay'}")
    )
    return 0


def _track_into(
    out: Path,
    args: argparse.Namespace,
    predictor: Any,
    frames: Iterator[np.ndarray],
    count: int,
    names: list[str] | None,
) -> tuple[dict[str, Any], float]:
    """Track ``frames`` into a hidden ``.<out>.<pid>.partial`` folder that replaces ``out`` once all are done.

    A failure or interruption removes the folder; ones left by killed runs are removed first.

    Returns:
        ``(what track.json records, seconds of tracking)``.
    """
    remove_stale_partials(out.parent, out.name, ".partial")
    work = out.with_name(f".{out.name}.{os.getpid()}.partial")
    shutil.rmtree(work, ignore_errors=True)
    try:
        (work / "masks").mkdir(parents=True)
        if not args.no_overlay:
            (work / "overlay").mkdir()
        start = time.perf_counter()
        areas = _track(args, predictor, frames, count, work, names)
        seconds = time.perf_counter() - start
        report = _report(args, out, predictor, areas, seconds)
        (work / "track.json").write_text(json.dumps(report, indent=1))
        if out.exists():
            shutil.rmtree(out)  # an earlier track output (checked by _check_out)
        os.replace(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report, seconds


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest
