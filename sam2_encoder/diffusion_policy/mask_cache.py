"""Offline object masks: run the streaming tracker over every episode of a replay buffer.

Object tokens (``object_masks_key``) need per-frame masks ``(K, H, W)`` in the training data. This
module prompts :class:`~sam2_encoder.streaming.StreamingPredictor` on the first frame of each
episode from a small JSON file, tracks the rest of the episode and stores the masks::

    out.zarr/
      .zattrs            {"sam2_encoder_masks": {format, replay, key, objects, prompts_sha256,
                          variant, weights, image_size, frame_shape, n_frames, n_episodes, complete}}
      masks              (N, K, H, W) bool, one chunk per frame, objects in ``objects`` order
      episode_done       (E,) bool: set only after the episode's masks are written

Prompts (frame pixel coordinates, as ``StreamingPredictor.add_prompt`` takes them)::

    {"objects": [1, 2],
     "episodes": {"0": {"1": {"points": [[30, 20]], "labels": [1]}, "2": {"box": [4, 4, 20, 24]}},
                  "1": {"1": {"box": [10, 12, 30, 40]}}}}

Every episode must be listed; an object without a prompt in an episode has empty masks there
(its token is then the "absent" one). Resumable: a rerun with the same arguments skips finished
episodes (chunk files are replaced whole), and refuses a folder built from other arguments.
Readers (:class:`MaskCache`) refuse a cache whose ``complete`` flag is not set.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoints import find_local_path, sha256sum
from .feature_cache import sequence_frames
from .zarr_io import create_array, open_group

__all__ = [
    "MaskCache",
    "MaskCacheError",
    "MaskDataset",
    "build_mask_cache",
    "check_mask_inputs",
    "default_mask_path",
    "load_prompts",
    "weights_identity",
]

FORMAT = 1
_ATTR = "sam2_encoder_masks"
_PROMPT_FIELDS = ("points", "labels", "box")


class MaskCacheError(RuntimeError):
    """A mask cache that is incomplete, built from other arguments, or not a mask cache."""


def load_prompts(
    prompts: str | os.PathLike[str] | Mapping[str, Any],
    n_episodes: int,
    frame_shape: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Read and check a prompts file (see the module docstring).

    Args:
        prompts: A JSON file, or the parsed mapping.
        n_episodes: Episodes of the replay buffer (every one must be listed).
        frame_shape: ``(H, W)`` of the frames: when given, every point and box is checked to be
            finite numbers inside the frame ``[0, W] x [0, H]``, boxes to have ``x1 > x0`` and
            ``y1 > y0``, and labels to be one 0 / 1 per point (so that a bad prompt is refused
            before any episode is tracked).

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
    if not isinstance(prompts, Mapping) or set(prompts) != {"objects", "episodes"}:
        got = sorted(prompts) if isinstance(prompts, Mapping) else type(prompts).__name__
        raise ValueError(f"{where} must be {{'objects': [ids], 'episodes': {{...}}}}, got {got}")
    objects = prompts["objects"]
    if (
        not isinstance(objects, list)
        or not objects
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in objects)
        or len(set(objects)) != len(objects)
    ):
        raise ValueError(f"{where}: 'objects' must be a non-empty list of distinct integer ids, got {objects!r}")
    episodes = prompts["episodes"]
    if not isinstance(episodes, Mapping):
        raise ValueError(f"{where}: 'episodes' must map episode index -> prompts, got {type(episodes).__name__}")
    out: dict[int, dict[int, dict[str, Any]]] = {}
    for name, per_object in episodes.items():
        if not str(name).isdigit() or int(name) >= n_episodes:
            raise ValueError(f"{where}: episode {name!r} is not an index of the {n_episodes} episodes")
        if not isinstance(per_object, Mapping):
            raise ValueError(f"{where}: episode {name} must map object id -> prompt, got {per_object!r}")
        out[int(name)] = {}
        for obj, prompt in per_object.items():
            if not str(obj).lstrip("-").isdigit() or int(obj) not in objects:
                raise ValueError(f"{where}: episode {name} prompts object {obj!r}, which is not in objects {objects}")
            if not isinstance(prompt, Mapping) or not prompt or set(prompt) - set(_PROMPT_FIELDS):
                raise ValueError(
                    f"{where}: episode {name} object {obj}: a prompt is a mapping of {list(_PROMPT_FIELDS)}, "
                    f"got {prompt!r}"
                )
            if "points" not in prompt and "box" not in prompt:
                raise ValueError(f"{where}: episode {name} object {obj}: give points or a box")
            if frame_shape is not None:
                _check_prompt(prompt, frame_shape, f"{where}: episode {name} object {obj}")
            out[int(name)][int(obj)] = dict(prompt)
    missing = [e for e in range(n_episodes) if e not in out]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise ValueError(f"{where}: episodes {shown} have no prompts (list every episode; {{}} for none)")
    return {"objects": list(objects), "episodes": out}


def _numbers(value: Any, count: int | None, what: str, where: str) -> list[float]:
    """A flat list of finite numbers (``count`` of them when given), bools and strings refused."""
    flat = value if isinstance(value, list) else [value]
    if not flat or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in flat):
        raise ValueError(f"{where}: {what} must be finite numbers, got {value!r}")
    if count is not None and len(flat) != count:
        raise ValueError(f"{where}: {what} must be {count} numbers, got {value!r}")
    return [float(v) for v in flat]


def _check_prompt(prompt: Mapping[str, Any], frame_shape: Sequence[int], where: str) -> None:
    """Points / labels / box of one prompt against a ``(H, W)`` frame (frame pixel coordinates)."""
    height, width = (int(v) for v in frame_shape[:2])
    corners: list[list[float]] = []
    points = prompt.get("points")
    if points is not None:
        pairs = points if isinstance(points, list) and points and isinstance(points[0], list) else [points]
        corners += [_numbers(p, 2, "each point [x, y]", where) for p in pairs]
        labels = prompt.get("labels")
        if labels is not None and (
            not isinstance(labels, list)
            or len(labels) != len(pairs)
            or not all(v in (0, 1) and not isinstance(v, bool | float) for v in labels)
        ):
            raise ValueError(f"{where}: labels must be one 1 (object) or 0 (background) per point, got {labels!r}")
    elif "labels" in prompt:
        raise ValueError(f"{where}: labels without points")
    box = prompt.get("box")
    if box is not None:
        x0, y0, x1, y1 = _numbers(box, 4, "box [x0, y0, x1, y1]", where)
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"{where}: box must have x1 > x0 and y1 > y0, got {box!r}")
        corners += [[x0, y0], [x1, y1]]
    outside = [c for c in corners if not (0 <= c[0] <= width and 0 <= c[1] <= height)]
    if outside:
        raise ValueError(
            f"{where}: (x, y) = {outside[0]} lies outside the {width}x{height} (W x H) frames: "
            f"x must be in [0, {width}] and y in [0, {height}] (frame pixel coordinates)"
        )


def default_mask_path(replay: str | os.PathLike[str], key: str) -> Path:
    """``REPLAY.zarr`` -> ``REPLAY.<key>_masks.zarr`` beside it."""
    replay = Path(replay)
    return replay.with_name(f"{replay.name.removesuffix('.zarr')}.{key}_masks.zarr")


def _prompts_sha256(prompts: Mapping[str, Any]) -> str:
    canonical = {
        "objects": prompts["objects"],
        "episodes": {str(e): {str(o): p for o, p in sorted(v.items())} for e, v in sorted(prompts["episodes"].items())},
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


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
        raise MaskCacheError(f"{e}; pass another --out (out=)") from None


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
        MaskCacheError: If ``out`` exists and is not a mask cache.
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
) -> Path:
    """Track every episode of ``replay`` and store the masks (resumable).

    Everything is checked before anything is written (the replay buffer, every prompt against
    the frame size, an existing ``out``). A new cache appears whole (created under a temporary
    name, then renamed); a run that fails before finishing its first episode removes the cache it
    created, while finished episodes of an interrupted run are kept for the rerun.

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
            resuming).

    Returns:
        ``out`` as a path.

    Raises:
        MaskCacheError: If ``out`` exists and was built from other arguments, or is not a mask cache.
        ValueError / KeyError: For bad prompts or a replay buffer without the key.
    """
    frames, ends, table = _inputs(replay, key, prompts)
    shape = tuple(frames.shape)
    objects = table["objects"]
    spec = {
        "format": FORMAT,
        "replay": str(Path(replay).resolve()),
        "key": key,
        "objects": objects,
        "prompts_sha256": _prompts_sha256(table),
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
    else:
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            group = open_group(tmp, mode="w")
            create_array(group, "masks", (shape[0], k, h, w), (1, k, h, w), "bool", False)
            create_array(group, "episode_done", (len(ends),), (len(ends),), "bool", False)
            group.attrs[_ATTR] = {**spec, "complete": False}
            os.replace(tmp, out)  # the cache appears whole, every array declared
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        root = open_group(out, mode="r+")
    masks, done = root["masks"], root["episode_done"]
    starts = np.concatenate([[0], ends[:-1]])
    finished = np.asarray(done[...], dtype=bool)
    if on_start is not None:
        on_start(int(finished.sum()), len(ends))
    tracked = 0
    try:
        for e, (start, end) in enumerate(zip(starts.tolist(), ends.tolist())):
            if finished[e]:
                continue
            masks[start:end] = _track_episode(predictor, frames, start, end, table["episodes"][e], objects, e)
            finished[e] = True
            done[...] = finished  # one chunk file, replaced whole
            tracked += 1
            if on_episode is not None:
                on_episode(int(finished.sum()), len(ends))
    except BaseException:
        if created and tracked == 0:  # nothing of this run worth keeping
            shutil.rmtree(out, ignore_errors=True)
        raise
    root.attrs[_ATTR] = {**spec, "complete": True}
    return out


def _track_episode(
    predictor: Any, frames: Any, start: int, end: int, prompts: Mapping[int, Mapping[str, Any]], objects, episode: int
) -> np.ndarray:
    """``(T, K, H, W)`` bool masks of one episode (zeros for unprompted objects)."""
    n, (h, w) = end - start, frames.shape[1:3]
    out = np.zeros((n, len(objects), h, w), dtype=bool)
    if not prompts:
        return out
    slot = {obj: i for i, obj in enumerate(objects)}
    predictor.reset()

    def put(t: int, result: Any) -> None:
        for i, obj in enumerate(result.obj_ids):
            out[t, slot[obj]] = result.masks[i].cpu().numpy()

    result = None
    for i, (obj, prompt) in enumerate(sorted(prompts.items())):
        try:
            result = predictor.add_prompt(np.asarray(frames[start]) if i == 0 else None, obj_id=obj, **prompt)
        except (ValueError, TypeError) as e:
            raise ValueError(f"prompts: episode {episode} object {obj}: {e}") from e
    put(0, result)
    for t in range(1, n):
        put(t, predictor.track(np.asarray(frames[start + t])))
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
        raise MaskCacheError(f"{path} is not a mask cache (no {_ATTR!r} attributes)")
    if root.attrs[_ATTR].get("format") != FORMAT:
        raise MaskCacheError(f"{path} has mask-cache format {root.attrs[_ATTR].get('format')!r}; expected {FORMAT}")
    return root


class MaskCache:
    """A finished mask cache.

    Args:
        path: The folder written by :func:`build_mask_cache`.

    Raises:
        MaskCacheError: If the folder is not a complete mask cache of this format.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.root = _open(self.path)
        self.spec = dict(self.root.attrs[_ATTR])
        if not self.spec.get("complete"):
            done = int(np.asarray(self.root["episode_done"][...]).sum())
            raise MaskCacheError(
                f"{self.path} is incomplete ({done} of {self.spec['n_episodes']} episodes): rerun the same command "
                "to finish it"
            )

    @property
    def objects(self) -> list[int]:
        """Object ids, in the order of the masks' ``K`` axis."""
        return list(self.spec["objects"])

    def __len__(self) -> int:
        return int(self.spec["n_frames"])

    def masks(self, frames: np.ndarray | Sequence[int]) -> np.ndarray:
        """``(len(frames), K, H, W)`` bool masks of some frames (indices into the replay buffer)."""
        index = np.asarray(frames, dtype=np.int64).reshape(-1)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            bad = int(index.min()) if index.min() < 0 else int(index.max())
            raise IndexError(f"frame {bad} is outside mask cache {self.path} ({len(self)} frames)")
        return np.asarray(self.root["masks"].get_orthogonal_selection((index,)), dtype=bool)


class MaskDataset(torch.utils.data.Dataset):
    """Adds cached object masks to the samples of a Diffusion Policy dataset.

    Wraps a DP dataset (``sampler.indices`` / ``sampler.sequence_length`` like DP's
    ``SequenceSampler``, items ``{"obs": {...}, "action": ...}``, ``get_normalizer()``; also a
    :class:`~sam2_encoder.diffusion_policy.feature_cache.CachedFeatureDataset`). Each item gets
    ``obs[obs_key]``: ``(T, K, H, W)`` float32 masks of the sample's frames (padded steps repeat the
    first / last frame, as the sampler pads), which ``object_masks_key=obs_key`` feeds to the
    object tokens. The normaliser maps ``obs_key`` through the identity.

    Args:
        masks: A :class:`MaskCache` or its path.
        obs_key: The obs key the masks are served under.
        dataset: The DP dataset to wrap, or ``None`` to build ``dataset_target(**dataset_kwargs)``.
        dataset_target: Import path of the DP dataset class (from Hydra configs, where this node
            is merged over the task's dataset node, whose arguments arrive as kwargs).
        **dataset_kwargs: Arguments of ``dataset_target``.
    """

    def __init__(
        self,
        masks: MaskCache | str | os.PathLike[str],
        obs_key: str,
        dataset: Any = None,
        dataset_target: str | None = None,
        **dataset_kwargs: Any,
    ) -> None:
        if dataset is None:
            if dataset_target is None:
                raise ValueError("MaskDataset needs dataset= or dataset_target=")
            from hydra.utils import get_class

            dataset = get_class(dataset_target)(**dataset_kwargs)
        sampler = getattr(dataset, "sampler", None)
        if sampler is None or not hasattr(sampler, "indices"):
            raise TypeError(f"{type(dataset).__name__} has no DP-style sampler with .indices")
        self.dataset = dataset
        self.cache = masks if isinstance(masks, MaskCache) else MaskCache(masks)
        self.obs_key = obs_key

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        item = self.dataset[idx]
        sampler = self.dataset.sampler
        frames = sequence_frames(sampler.indices[idx], sampler.sequence_length)
        masks = torch.from_numpy(self.cache.masks(frames)).float()
        return {**item, "obs": {**item["obs"], self.obs_key: masks}}

    def get_validation_dataset(self) -> MaskDataset:
        """The wrapped dataset's validation split, with masks from the same cache."""
        return MaskDataset(self.cache, self.obs_key, dataset=self.dataset.get_validation_dataset())

    def get_normalizer(self, *args: Any, **kwargs: Any):
        """The wrapped dataset's normaliser with the mask key mapped through the identity."""
        from diffusion_policy.model.common.normalizer import SingleFieldLinearNormalizer

        normalizer = self.dataset.get_normalizer(*args, **kwargs)
        normalizer[self.obs_key] = SingleFieldLinearNormalizer.create_identity()
        return normalizer


def __getattr__(name: str) -> Any:
    # DPMaskDataset: MaskDataset that is also DP's BaseImageDataset (DP's workspace asserts it),
    # created on first use so that DP is imported only by configs that ask for it.
    if name == "DPMaskDataset":
        from .dp_base import serve_dp_class

        return serve_dp_class(globals(), name, MaskDataset)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
