"""Offline object masks: run the streaming tracker over every episode of a replay buffer.

Object tokens (``object_masks_key``) need per-frame masks ``(K, H, W)`` in the training data. This
module prompts :class:`~sam2_encoder.streaming.StreamingPredictor` on the first frame of each
episode from a small JSON file, tracks the rest of the episode and stores the masks::

    out.zarr/
      .zattrs            {"sam2_encoder_masks": {format, replay, key, objects, prompts_sha256,
                          variant, weights, image_size, frame_shape, n_frames, n_episodes, complete}}
      masks              (N, K, H, W) bool, one chunk per frame, objects in ``objects`` order
      checksums          (N,) int64: CRC-32 of each frame's chunk values, -1 until written (16384 a chunk)
      episode_ends       (E,) int64: the replay buffer's meta/episode_ends
      episode_done       (E,) bool: set only after the episode's masks and checksums are written

Prompts (frame pixel coordinates, as ``StreamingPredictor.add_prompt`` takes them)::

    {"objects": [1, 2],
     "episodes": {"0": {"1": {"points": [[30, 20]], "labels": [1]}, "2": {"box": [4, 4, 20, 24]}},
                  "1": {"1": {"box": [10, 12, 30, 40]}}}}

Every episode must be listed; an object without a prompt in an episode has empty masks there
(its token is then the "absent" one).

Integrity, as for the feature cache: each episode's masks are written, then their checksums, and
only then the episode is flagged done (chunk files are replaced whole). A rerun with the same
arguments first re-reads the episodes flagged done against their checksums, tracks again the
ones that fail, then the rest; it refuses a folder built from other arguments. ``complete`` is set
only after the episodes of the run have been read back against their checksums. Readers
(:class:`MaskCache`) refuse incomplete caches and verify each frame's chunk the first time they
read it; :func:`verify_mask_cache` (``sam2-encoder masks --verify CACHE``) checks every frame.
Format-1 caches (no checksums) are refused by name: rebuild them.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoints import find_local_path, sha256sum
from ..prompts import parse_episode_prompts, prompt_table_sha256
from .dp_base import DPDatasetWrapper
from .zarr_io import chunk_path, crc32, create_array, open_group

__all__ = [
    "MaskCache",
    "MaskCacheError",
    "MaskDataset",
    "build_mask_cache",
    "check_mask_inputs",
    "default_mask_path",
    "load_prompts",
    "verify_mask_cache",
    "weights_identity",
]

FORMAT = 2
"""Mask-cache layout version: 2 added per-frame checksums (format-1 caches are refused: rebuild them)."""

_NO_CHECKSUM = -1
_SUM_CHUNK = 1 << 14  # checksums per chunk file: an episode rewrites only the one or two it touches
_SEALED = ("checksums", "episode_ends")  # small arrays whose CRC-32 the attributes of a complete cache record
_ATTR = "sam2_encoder_masks"


class MaskCacheError(RuntimeError):
    """A mask cache that is incomplete, damaged, built from other arguments, or not a mask cache."""


def load_prompts(
    prompts: str | os.PathLike[str] | Mapping[str, Any],
    n_episodes: int,
    frame_shape: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Read and check a prompts file (see the module docstring).

    Args:
        prompts: A JSON file, or the parsed mapping.
        n_episodes: Episodes of the replay buffer (every one must be listed).
        frame_shape: ``(H, W)`` of the frames: when given, every point and box is also checked
            to lie inside the frame ``[0, W] x [0, H]`` (so that a bad prompt is refused before
            any episode is tracked). Without it, every other rule of :mod:`sam2_encoder.prompts`
            is still checked.

    Returns:
        ``{"objects": [ids], "episodes": {int: {obj_id: {points?, labels?, box?}}}}``.

    Raises:
        ValueError: Naming the file, episode and object of the first problem.
    """
    where = "prompts"
    if not isinstance(prompts, Mapping):
        where = str(prompts)
        try:
            prompts = json.loads(Path(prompts).read_text())
        except FileNotFoundError:
            raise ValueError(f"prompts file not found: {prompts}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{where} is not valid JSON: {e}") from None
    return parse_episode_prompts(prompts, n_episodes, frame_shape, where)


def default_mask_path(replay: str | os.PathLike[str], key: str) -> Path:
    """``REPLAY.zarr`` -> ``REPLAY.<key>_masks.zarr`` beside it."""
    replay = Path(replay)
    return replay.with_name(f"{replay.name.removesuffix('.zarr')}.{key}_masks.zarr")


def _inputs(
    replay: str | os.PathLike[str], key: str, prompts: str | os.PathLike[str] | Mapping[str, Any]
) -> tuple[Any, np.ndarray, dict[str, Any]]:
    """``(frames array, episode_ends, prompts table)``, everything checked."""
    source = open_group(replay)
    if "data" not in source or key not in source["data"]:
        have = sorted(source["data"].keys()) if "data" in source else sorted(source.keys())
        raise KeyError(f"replay buffer {replay} has no data/{key}; it has {have}")
    frames = source["data"][key]
    shape = tuple(frames.shape)
    if len(shape) != 4 or shape[-1] != 3 or np.dtype(frames.dtype) != np.uint8:
        raise ValueError(f"data/{key} of {replay} is {np.dtype(frames.dtype)} {shape}; expected (N, H, W, 3) uint8")
    if "meta" not in source or "episode_ends" not in source["meta"]:
        raise ValueError(f"replay buffer {replay} has no meta/episode_ends (a Diffusion Policy ReplayBuffer has)")
    ends = np.asarray(source["meta"]["episode_ends"][...], dtype=np.int64)
    if len(ends) == 0 or ends[-1] != shape[0] or np.any(np.diff(np.concatenate([[0], ends])) <= 0):
        raise ValueError(f"meta/episode_ends of {replay} does not split its {shape[0]} frames: {ends.tolist()}")
    return frames, ends, load_prompts(prompts, len(ends), frame_shape=shape[1:3])


def _open_existing(out: Path):  # noqa: ANN202 - a zarr group
    try:
        return _open(out, mode="r+")
    except MaskCacheError as e:
        joint = "; or" if str(e).endswith("command") else ";"  # a format-1 cache: rebuild it, or another --out
        raise MaskCacheError(f"{e}{joint} pass another --out (out=)") from None


def check_mask_inputs(
    replay: str | os.PathLike[str],
    key: str,
    prompts: str | os.PathLike[str] | Mapping[str, Any],
    out: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """What :func:`build_mask_cache` checks before it needs the predictor (for a quick refusal).

    Args:
        replay: The replay buffer.
        key: The camera key.
        prompts: The prompts file or mapping.
        out: The cache folder, if it may exist already.

    Returns:
        ``{"frames": N, "frame_shape": (H, W), "episodes": E, "objects": [ids]}``.

    Raises:
        KeyError: For a key not in the replay buffer.
        ValueError: For frames that are not ``(N, H, W, 3)`` uint8, bad episode ends or bad prompts.
        MaskCacheError: If ``out`` exists and is not a mask cache of this format.
    """
    frames, ends, table = _inputs(replay, key, prompts)
    if out is not None and Path(out).exists():
        _open_existing(Path(out))
    return {
        "frames": int(frames.shape[0]),
        "frame_shape": tuple(frames.shape[1:3]),
        "episodes": len(ends),
        "objects": table["objects"],
    }


def build_mask_cache(
    replay: str | os.PathLike[str],
    key: str,
    prompts: str | os.PathLike[str] | Mapping[str, Any],
    out: str | os.PathLike[str],
    predictor: Any,
    weights: str,
    on_episode: Callable[[int, int], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_damaged: Callable[[list[str]], None] | None = None,
    needs_features: Callable[[int, int], bool] | None = None,
    on_features: Callable[[int, Any], None] | None = None,
) -> Path:
    """Track every episode of ``replay`` and store the masks with their checksums (resumable).

    Everything is checked before anything is written (the replay buffer, every prompt against
    the frame size, an existing ``out``). A new cache appears whole (created under a temporary
    name, then renamed); a run that fails before finishing its first episode removes the cache it
    created, while finished episodes of an interrupted run are kept for the rerun. A rerun first
    reads the finished episodes back against their checksums and tracks the damaged ones again.

    Args:
        replay: A Diffusion Policy replay buffer (``data/<key>`` ``(N, H, W, 3)`` uint8,
            ``meta/episode_ends``).
        key: The camera key.
        prompts: The prompts file or mapping (see the module docstring).
        out: The cache folder to create or resume.
        predictor: A :class:`~sam2_encoder.streaming.StreamingPredictor` (reset for each episode).
        weights: Identity of the predictor's weights, recorded and compared on resume (e.g.
            ``"sha256:..."`` of the checkpoint, see :func:`weights_identity`).
        on_episode: Called as ``on_episode(done, total)`` after each finished episode (progress).
        on_start: Called once as ``on_start(done, total)`` before tracking (``done`` > 0 when
            resuming; damaged episodes are not counted as done).
        on_damaged: Called once with the problems found in the episodes a rerun resumes from
            (those episodes are tracked again); not called when there are none.
        needs_features: With ``on_features``: ``needs_features(start, stop)`` tells whether the
            features of frames ``[start, stop)`` are still wanted; an episode whose masks are done
            is tracked again (its masks are not rewritten) while its features are wanted.
        on_features: Called as ``on_features(frame, pyramid)`` with the replay-buffer index and
            the :class:`~sam2_encoder.image_encoder.FeaturePyramid` (batch 1) of every frame of
            each episode tracked: the tracker's own encoder pass (``return_features=True``);
            frames of an episode without prompts are encoded one at a time by the predictor's
            encoder, as the tracker would. This is how ``sam2-encoder cache --prompts`` fills a
            feature cache and a mask cache with one encoder pass per frame.

    Returns:
        ``out`` as a path.

    Raises:
        MaskCacheError: If ``out`` exists and was built from other arguments, is not a mask cache
            of this format, or its arrays are damaged beyond a re-track; or if an episode of this
            run fails the read-back check (it is unflagged: rerun to track it again).
        ValueError / KeyError: For bad prompts or a replay buffer without the key.
    """
    if (needs_features is None) != (on_features is None):
        raise ValueError("needs_features and on_features go together: give both or neither")
    frames, ends, table = _inputs(replay, key, prompts)
    shape = tuple(frames.shape)
    objects = table["objects"]
    spec = {
        "format": FORMAT,
        "replay": str(Path(replay).resolve()),
        "key": key,
        "objects": objects,
        "prompts_sha256": prompt_table_sha256(table),
        "variant": predictor.variant.name,
        "weights": weights,
        "image_size": predictor.image_size,
        "frame_shape": list(shape[1:3]),
        "n_frames": int(shape[0]),
        "n_episodes": len(ends),
    }
    out = Path(out)
    k, (h, w) = len(objects), shape[1:3]
    created = not out.exists()
    if not created:
        root = _open_existing(out)
        old = dict(root.attrs[_ATTR])
        differ = sorted(f for f in spec if old.get(f) != spec[f])
        if differ:
            details = "; ".join(f"{f}: cache {old.get(f)!r}, now {spec[f]!r}" for f in differ)
            raise MaskCacheError(f"{out} was built from other arguments ({details}); use another --out or delete it")
        problems = _check_arrays(root, spec)
        recorded = _read_vector(root, "episode_ends", problems)
        if not problems and not np.array_equal(recorded, ends):
            problems.append("episode_ends differs from the replay buffer's meta/episode_ends")
        if problems:
            raise MaskCacheError(f"mask cache {out} is damaged: {'; '.join(problems)}; delete it and rerun")
    else:
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            group = open_group(tmp, mode="w")
            create_array(group, "masks", (shape[0], k, h, w), (1, k, h, w), "bool", False)
            create_array(group, "checksums", (shape[0],), (min(shape[0], _SUM_CHUNK),), "int64", _NO_CHECKSUM)
            create_array(group, "episode_ends", (len(ends),), (len(ends),), "int64", 0)[...] = ends
            create_array(group, "episode_done", (len(ends),), (len(ends),), "bool", False)
            group.attrs[_ATTR] = {**spec, "complete": False}
            os.replace(tmp, out)  # the cache appears whole, every array declared
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        root = open_group(out, mode="r+")
    masks, done, checksums = root["masks"], root["episode_done"], root["checksums"]
    starts = np.concatenate([[0], ends[:-1]])
    unreadable: list[str] = []  # a flag or checksum file that cannot be decoded: start those over
    finished = _read_vector(root, "episode_done", unreadable, default=np.zeros(len(ends), bool))
    sums = _read_vector(root, "checksums", unreadable, default=np.full(shape[0], _NO_CHECKSUM, np.int64))
    damaged = list(unreadable)
    for e in np.flatnonzero(finished).tolist():  # verify what this run resumes from
        bad = _frame_problems(out, masks, sums, ends, range(starts[e], ends[e]))
        if bad:
            finished[e] = False
            damaged += bad
    if damaged:
        root.attrs[_ATTR] = {**spec, "complete": False}  # before anything is rewritten
        done[...] = finished
        if on_damaged is not None:
            on_damaged(damaged)
    if on_start is not None:
        on_start(int(finished.sum()), len(ends))
    tracked: list[int] = []
    try:
        for e, (start, end) in enumerate(zip(starts.tolist(), ends.tolist())):
            features = on_features if on_features is not None and needs_features(start, end) else None
            if finished[e]:
                if features is not None:  # masks done, features not: the same tracking gives them
                    _track_episode(predictor, frames, start, end, table["episodes"][e], objects, e, features)
                continue
            block = _track_episode(predictor, frames, start, end, table["episodes"][e], objects, e, features)
            masks[start:end] = block
            sums[start:end] = [crc32(values) for values in block]
            checksums[start:end] = sums[start:end]  # the chunk files it touches, each replaced whole
            finished[e] = True
            done[...] = finished  # only after the masks and their checksums are written
            tracked.append(e)
            if on_episode is not None:
                on_episode(int(finished.sum()), len(ends))
    except BaseException:
        if created and not tracked:  # nothing of this run worth keeping
            shutil.rmtree(out, ignore_errors=True)
        raise
    failed: list[str] = []
    for e in tracked:  # read back what this run wrote before calling the cache complete
        bad = _frame_problems(out, masks, sums, ends, range(starts[e], ends[e]))
        if bad:
            finished[e] = False
            failed += bad
    if failed:
        done[...] = finished
        raise MaskCacheError(
            f"mask cache {out}: {len(failed)} frame(s) failed the read-back check and their episodes were unflagged "
            f"(rerun the same command to track them again): " + "; ".join(failed[:5])
        )
    # written last: readers only trust complete caches, and check the small arrays against these CRC-32s
    sealed = {name: crc32(np.asarray(root[name][...])) for name in _SEALED}
    root.attrs[_ATTR] = {**spec, "sealed_crc32": sealed, "complete": True}
    return out


def _track_episode(
    predictor: Any,
    frames: Any,
    start: int,
    end: int,
    prompts: Mapping[int, Mapping[str, Any]],
    objects,
    episode: int,
    on_features: Callable[[int, Any], None] | None = None,
) -> np.ndarray:
    """``(T, K, H, W)`` bool masks of one episode (zeros for unprompted objects).

    With ``on_features``, each frame's pyramid goes to ``on_features(frame, pyramid)``: the
    tracker's own encoder pass, or (no prompts) the predictor's encoder on that frame alone.
    """
    n, (h, w) = end - start, frames.shape[1:3]
    out = np.zeros((n, len(objects), h, w), dtype=bool)
    wanted = on_features is not None
    if not prompts:
        if wanted:
            for t in range(n):  # nothing to track: the tracker's encoder on each frame, as track() runs it
                with torch.inference_mode():
                    on_features(start + t, predictor.encoder(np.asarray(frames[start + t])[None]))
        return out
    slot = {obj: i for i, obj in enumerate(objects)}
    predictor.reset()

    def put(t: int, result: Any, features: Any) -> None:
        for i, obj in enumerate(result.obj_ids):
            out[t, slot[obj]] = result.masks[i].cpu().numpy()
        if wanted:
            on_features(start + t, features)

    result = features = None
    for i, (obj, prompt) in enumerate(sorted(prompts.items())):
        try:  # the first prompt brings the frame (its one encoder pass), the others refine it
            result = predictor.add_prompt(
                np.asarray(frames[start]) if i == 0 else None, obj_id=obj, return_features=wanted and i == 0, **prompt
            )
        except (ValueError, TypeError) as e:
            raise ValueError(f"prompts: episode {episode} object {obj}: {e}") from e
        features = result.features if i == 0 else features
    put(0, result, features)
    for t in range(1, n):
        result = predictor.track(np.asarray(frames[start + t]), return_features=wanted)
        put(t, result, result.features)
    return out


def weights_identity(checkpoint: str | os.PathLike[str] | None, seed: int = 0) -> str:
    """``sha256:<hex>`` of a local checkpoint file (a folder's ``model.safetensors``), else a name.

    Args:
        checkpoint: What the predictor was built from (path, variant name, hub id, URL, or ``None``).
        seed: The seed of random weights (``checkpoint=None``).
    """
    if checkpoint is None:
        return f"random:seed={seed}"
    path = find_local_path(checkpoint)
    if path.is_dir():
        path = path / "model.safetensors"
    return f"sha256:{sha256sum(path)}" if path.is_file() else str(checkpoint)


def _open(path: Path, mode: str = "r"):  # noqa: ANN202 - a zarr group
    try:
        root = open_group(path, mode=mode)
    except FileNotFoundError:
        raise MaskCacheError(f"mask cache not found: {path}; build it with `sam2-encoder masks`") from None
    except ValueError as e:  # not a zarr group, or one in a format we do not write
        why = str(e).removeprefix(str(path)).strip()
        raise MaskCacheError(
            f"{path} is not a mask cache: it {why}" if why.startswith("is ") else f"{path}: {e}"
        ) from e
    if _ATTR not in root.attrs:
        feature_cache = "sam2_encoder" in root.attrs
        hint = " (it is a feature cache: `sam2-encoder cache --verify` checks those)" if feature_cache else ""
        raise MaskCacheError(f"{path} is not a mask cache (no {_ATTR!r} attributes){hint}")
    found = root.attrs[_ATTR].get("format")
    if found != FORMAT:
        what = " (no checksums)" if found == 1 else ""
        raise MaskCacheError(
            f"mask cache {path} has format {found!r}{what}; this version reads format {FORMAT} (a CRC-32 per frame): "
            "delete it and rebuild it with the same `sam2-encoder masks` command"
        )
    return root


def _check_arrays(root: Any, spec: Mapping[str, Any]) -> list[str]:
    """Every array present with the shape, dtype and chunking the attributes imply."""
    n, e = int(spec["n_frames"]), int(spec["n_episodes"])
    k, (h, w) = len(spec["objects"]), spec["frame_shape"]
    expected = {
        "masks": ((n, k, h, w), (1, k, h, w), "bool"),
        "checksums": ((n,), None, "int64"),
        "episode_ends": ((e,), None, "int64"),
        "episode_done": ((e,), None, "bool"),
    }
    problems = []
    for name, (shape, chunks, dtype) in expected.items():
        try:
            array = root[name]
        except Exception as err:  # noqa: BLE001 - missing or unreadable metadata
            problems.append(f"{name} cannot be opened ({type(err).__name__}: {err})")
            continue
        got = (tuple(array.shape), np.dtype(array.dtype))
        if got != (shape, np.dtype(dtype)) or (chunks is not None and tuple(array.chunks) != chunks):
            problems.append(
                f"{name} is {np.dtype(array.dtype)} {tuple(array.shape)} in chunks of {tuple(array.chunks)}; "
                f"the cache attributes imply {dtype} {shape}" + (f" in chunks of {chunks}" if chunks else "")
            )
    return problems


def _read_vector(root: Any, name: str, problems: list[str], default: np.ndarray | None = None) -> np.ndarray:
    """A whole small array, or ``default`` (with a problem noted) when its chunk cannot be decoded."""
    try:
        return np.asarray(root[name][...])
    except Exception as e:  # noqa: BLE001 - a damaged chunk file
        problems.append(f"{name} cannot be read ({type(e).__name__}: {e})")
        return default


def _sealed_problems(root: Any, spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> list[str]:
    """The small arrays of a complete cache against the CRC-32s recorded when it was completed."""
    sealed = spec.get("sealed_crc32") or {}
    problems = []
    for name in _SEALED:
        expected, actual = sealed.get(name), crc32(np.asarray(arrays[name], dtype=root[name].dtype))
        if expected is None:
            problems.append(f"{name} has no recorded CRC-32 (sealed_crc32) in a complete cache")
        elif actual != expected:
            problems.append(
                f"{name} is damaged: CRC-32 {actual:08x} of its values differs from the recorded {expected:08x}"
            )
    return problems


def _frame_problem(path: Path, frame: int, ends: np.ndarray, values: np.ndarray | None, expected: int, error: str = ""):
    """What is wrong with the chunk of ``frame`` (its decoded ``values``, or ``None`` + ``error``), or ``None``."""
    episode = int(np.searchsorted(ends, frame, side="right"))
    where = f"masks chunk {frame} (frame {frame}, episode {episode})"
    file = chunk_path(path, "masks", (frame, 0, 0, 0))
    if values is None:
        return f"{where}: the chunk file {file} cannot be decoded ({error})"
    if expected == _NO_CHECKSUM:
        return f"{where}: no checksum was recorded for it (checksums[{frame}] is unset)"
    actual = crc32(values)
    if actual != expected:
        missing = ", which is missing" if not file.exists() else ""
        return (
            f"{where}: damaged, CRC-32 {actual:08x} of its values differs from the recorded {expected:08x} "
            f"({file}{missing})"
        )
    return None


def _read_frames(array: Any, frames: np.ndarray) -> list[np.ndarray | str]:
    """Each frame's ``(K, H, W)`` values, or the text of the error that decoding its chunk raised."""
    try:
        return list(np.asarray(array.get_orthogonal_selection((frames,)), dtype=bool))
    except Exception:  # noqa: BLE001 - find the chunk(s) at fault, frame by frame
        out: list[np.ndarray | str] = []
        for frame in frames.tolist():
            try:
                out.append(np.asarray(array[frame], dtype=bool))
            except Exception as e:  # noqa: BLE001 - a damaged chunk file
                out.append(f"{type(e).__name__}: {e}")
        return out


def _check_values(path: Path, frame: int, ends: np.ndarray, values: np.ndarray | str, expected: int) -> str | None:
    if isinstance(values, str):
        return _frame_problem(path, frame, ends, None, expected, values)
    return _frame_problem(path, frame, ends, values, expected)


def _frame_problems(path: Path, array: Any, sums: np.ndarray, ends: np.ndarray, frames: range) -> list[str]:
    """Problems of the chunks of ``frames`` (each read and compared with its recorded CRC-32)."""
    index = np.arange(frames.start, frames.stop, dtype=np.int64)
    found = (
        _check_values(path, f, ends, values, int(sums[f]))
        for f, values in zip(index.tolist(), _read_frames(array, index))
    )
    return [p for p in found if p is not None]


def verify_mask_cache(path: str | os.PathLike[str]) -> list[str]:
    """Check a whole mask cache: attributes, arrays, completeness, every frame's checksum.

    Of an incomplete cache, the episodes flagged done are checked and the rest counted.

    Args:
        path: The cache folder.

    Returns:
        One line per problem found (empty when the cache is whole).

    Raises:
        MaskCacheError: If there is no such folder, or it is not a mask cache of this format.
    """
    path = Path(path)
    root = _open(path)
    spec = dict(root.attrs[_ATTR])
    problems = _check_arrays(root, spec)
    if problems:
        return problems
    ends = _read_vector(root, "episode_ends", problems)
    done = _read_vector(root, "episode_done", problems)
    sums = _read_vector(root, "checksums", problems)
    if problems:
        return problems
    complete = bool(spec.get("complete"))
    if complete:
        problems += _sealed_problems(root, spec, {"checksums": sums, "episode_ends": ends})
        if problems:
            return problems
    if complete and not done.all():
        undone = np.flatnonzero(~done).tolist()[:10]
        problems.append(f"episode_done: episodes {undone} are not flagged done in a complete cache")
    if not complete:
        problems.append(
            f"{path} is incomplete ({int(done.sum())} of {len(done)} episodes tracked): "
            "rerun the same `sam2-encoder masks` command"
        )
    starts = np.concatenate([[0], ends[:-1]])
    for e in range(len(ends)):
        if complete or done[e]:
            problems += _frame_problems(path, root["masks"], sums, ends, range(int(starts[e]), int(ends[e])))
    return problems


class MaskCache:
    """A finished mask cache, checking each frame's chunk the first time it is read.

    Args:
        path: The folder written by :func:`build_mask_cache`.

    Raises:
        MaskCacheError: If the folder is not a complete mask cache of this format, or its arrays
            or checksums cannot be read.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = find_local_path(path)  # inside DP's train.py: relative to the launch directory
        self.root = _open(self.path)
        self.spec = dict(self.root.attrs[_ATTR])
        if not self.spec.get("complete"):
            done = _read_vector(self.root, "episode_done", [], default=np.zeros(0, bool))
            raise MaskCacheError(
                f"{self.path} is incomplete ({int(done.sum())} of {self.spec['n_episodes']} episodes): rerun the same "
                "command to finish it"
            )
        problems = _check_arrays(self.root, self.spec)
        if not problems:
            self._ends = _read_vector(self.root, "episode_ends", problems)
            self._sums = _read_vector(self.root, "checksums", problems)
        if not problems:
            problems += _sealed_problems(self.root, self.spec, {"checksums": self._sums, "episode_ends": self._ends})
        if problems:
            raise MaskCacheError(
                f"mask cache {self.path} is damaged: {'; '.join(problems)}; check it with "
                f"`sam2-encoder masks --verify {self.path}` and rebuild it"
            )
        self._array = self.root["masks"]
        self._verified: set[int] = set()

    @property
    def objects(self) -> list[int]:
        """Object ids, in the order of the masks' ``K`` axis."""
        return list(self.spec["objects"])

    @property
    def mask_shape(self) -> tuple[int, int, int]:
        """``(K, H, W)`` of each frame's masks."""
        h, w = self.spec["frame_shape"]
        return len(self.spec["objects"]), int(h), int(w)

    def __len__(self) -> int:
        return int(self.spec["n_frames"])

    def masks(self, frames: np.ndarray | Sequence[int]) -> np.ndarray:
        """``(len(frames), K, H, W)`` bool masks of some frames (indices into the replay buffer).

        Each frame's chunk is compared with its recorded CRC-32 the first time this object reads it.

        Raises:
            IndexError: For a frame outside the cache.
            MaskCacheError: Naming the chunk, frame and episode of a missing, undecodable or
                altered chunk, or one without a checksum.
        """
        index = np.asarray(frames, dtype=np.int64).reshape(-1)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            bad = int(index.min()) if index.min() < 0 else int(index.max())
            raise IndexError(f"frame {bad} is outside mask cache {self.path} ({len(self)} frames)")
        unique, inverse = np.unique(index, return_inverse=True)
        values = _read_frames(self._array, unique)
        for frame, value in zip(unique.tolist(), values):
            if frame in self._verified and not isinstance(value, str):
                continue
            problem = _check_values(self.path, frame, self._ends, value, int(self._sums[frame]))
            if problem is not None:
                raise MaskCacheError(
                    f"mask cache {self.path}: {problem}; check it with `sam2-encoder masks --verify {self.path}` "
                    "and rebuild it"
                )
            self._verified.add(frame)
        block = np.stack(values) if values else np.zeros((0, *self.mask_shape), dtype=bool)
        return block[inverse.reshape(-1)]


class MaskDataset(DPDatasetWrapper):
    """Adds cached object masks to the samples of a Diffusion Policy dataset.

    Wraps a DP dataset (``sampler.indices`` / ``sampler.sequence_length`` like DP's
    ``SequenceSampler``, items ``{"obs": {...}, "action": ...}``, ``get_normalizer()``; also a
    :class:`~sam2_encoder.diffusion_policy.feature_cache.CachedFeatureDataset`). Each item gets
    ``obs[obs_key]``: ``(T, K, H, W)`` float32 masks of the sample's frames (padded steps repeat the
    first / last frame, as the sampler pads), which ``object_masks_key=obs_key`` feeds to the
    object tokens. The normaliser maps ``obs_key`` through the identity; the validation split
    takes its masks from the same cache.

    Args:
        masks: A :class:`MaskCache` or its path.
        obs_key: The obs key the masks are served under.
        dataset: The DP dataset to wrap, or ``None`` to build ``dataset_target(**dataset_kwargs)``.
        dataset_target: Import path of the DP dataset class (from Hydra configs, where this node
            is merged over the task's dataset node, whose arguments arrive as kwargs), or a list
            of paths: our wrappers outermost first, then the DP dataset class (see
            :class:`~.dp_base.DPDatasetWrapper`; e.g. masks over cached features).
        shape: ``[K, H, W]`` the policy expects (``shape_meta.obs.<obs_key>.shape``), checked
            against the cache; ``None`` skips the check.
        **dataset_kwargs: Arguments of ``dataset_target``.

    Raises:
        MaskCacheError: For a cache that is not complete, whose ``(K, H, W)`` differs from
            ``shape``, or whose frame count differs from the wrapped dataset's replay buffer.
    """

    def __init__(
        self,
        masks: MaskCache | str | os.PathLike[str],
        obs_key: str,
        dataset: Any = None,
        dataset_target: str | Sequence[str] | None = None,
        shape: Sequence[int] | None = None,
        **dataset_kwargs: Any,
    ) -> None:
        super().__init__(dataset, dataset_target, dataset_kwargs)
        self.cache = masks if isinstance(masks, MaskCache) else MaskCache(masks)
        self.obs_key = obs_key
        self.served_keys = (obs_key,)
        k, h, w = self.cache.mask_shape
        if shape is not None and [int(v) for v in shape] != [k, h, w]:
            raise MaskCacheError(
                f"mask cache {self.cache.path} holds {k} object(s) {self.cache.objects} on {h}x{w} frames, masks "
                f"[{k}, {h}, {w}]; the policy expects {obs_key} of shape {[int(v) for v in shape]} "
                f"(shape_meta.obs.{obs_key}.shape; set num_objects={k})"
            )
        steps = getattr(getattr(self.dataset, "replay_buffer", None), "n_steps", None)
        if steps is not None and int(steps) != len(self.cache):
            raise MaskCacheError(
                f"mask cache {self.cache.path} holds masks of {len(self.cache)} frames, the dataset's replay buffer "
                f"has {int(steps)}: build the cache from this replay buffer"
            )

    def __getitem__(self, idx: int) -> dict[str, Any]:
        item = self.dataset[idx]
        masks = torch.from_numpy(self.cache.masks(self.sample_frames(idx))).float()
        return {**item, "obs": {**item["obs"], self.obs_key: masks}}


def __getattr__(name: str) -> Any:
    # DPMaskDataset: MaskDataset that is also DP's BaseImageDataset (DP's workspace asserts it),
    # created on first use so that DP is imported only by configs that ask for it.
    if name == "DPMaskDataset":
        from .dp_base import serve_dp_class

        return serve_dp_class(globals(), name, MaskDataset)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
