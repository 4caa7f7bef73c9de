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

Integrity is the :mod:`.store`'s, shared with the feature cache: each episode's masks are
written, then their checksums, and only then the episode is flagged done (chunk files are
replaced whole). A rerun with the same arguments first re-reads the episodes flagged done against
their checksums, tracks again the ones that fail, then the rest; it refuses a folder built from
other arguments. ``complete`` is set only after the episodes of the run have been read back
against their checksums. Readers (:class:`MaskCache`) refuse incomplete caches and verify each
frame's chunk the first time they read it; :func:`verify_mask_cache` (``sam2-encoder masks
--verify CACHE``) checks every frame.
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

from ..checkpoints import find_local_path, weights_identity
from ..prompts import parse_episode_prompts, prompt_table_sha256
from .dp_base import DPDatasetWrapper, dp_classes
from .mask_store import (
    MASKS,
    SEALED,
    MaskCacheError,
    check_mask_arrays,
    mask_layout,
    small_arrays,
    verify_mask_cache,
)
from .replay import episode_ends, replay_frames
from .store import (
    NO_CHECKSUM,
    Progress,
    Store,
    create_store,
    frame_index,
    open_existing,
    read_back,
)
from .zarr_io import create_array

__all__ = [
    "MASKS",
    "MaskCache",
    "MaskCacheError",
    "MaskDataset",
    "MaskWriter",
    "build_mask_cache",
    "check_mask_inputs",
    "default_mask_path",
    "load_prompts",
    "verify_mask_cache",
    "weights_identity",
]

_SUM_CHUNK = 1 << 14  # checksums per chunk file: an episode rewrites only the one or two it touches


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
    data, n_frames = replay_frames(replay, [key])
    frames = data[key]
    ends = episode_ends(replay, n_frames)
    shape = tuple(frames.shape)
    return frames, ends, load_prompts(prompts, len(ends), frame_shape=shape[1:3])


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
        open_existing(Path(out), MASKS, {})
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
    writer = MaskWriter(replay, key, prompts, out, predictor, weights, on_damaged)
    if on_start is not None:
        on_start(int(writer.finished.sum()), len(writer.ends))
    try:
        writer.track_all(on_episode, needs_features, on_features)
    except BaseException:
        writer.discard_if_unused()
        raise
    return writer.finish()


class MaskWriter:
    """A mask cache being written: created whole, or checked against its arguments and resumed.

    On construction everything is checked (the replay buffer, every prompt against the frame size,
    an existing ``out``) and a new cache is created whole; an existing one is refused if built
    from other arguments, and its finished episodes are read back against their checksums (the
    damaged ones are unflagged, to be tracked again). :meth:`track_all` then tracks each episode
    not flagged done, writes its masks, then their checksums, and only then flags it;
    :meth:`finish` reads back what this object wrote and sets ``complete``.
    :func:`build_mask_cache` is this class driven over every episode.

    Args:
        replay: The replay buffer (see :func:`build_mask_cache`).
        key: The camera key.
        prompts: The prompts file or mapping (see the module docstring).
        out: The cache folder to create or resume.
        predictor: A :class:`~sam2_encoder.streaming.StreamingPredictor` (reset for each episode).
        weights: Identity of the predictor's weights, recorded and compared on resume.
        on_damaged: Called once with the problems found in the finished episodes of an existing
            cache (those episodes are tracked again); not called when there are none.

    Raises:
        MaskCacheError: If ``out`` exists and was built from other arguments, is not a mask cache
            of this format, or its arrays are damaged beyond a re-track.
        ValueError / KeyError: For bad prompts or a replay buffer without the key.
    """

    def __init__(
        self,
        replay: str | os.PathLike[str],
        key: str,
        prompts: str | os.PathLike[str] | Mapping[str, Any],
        out: str | os.PathLike[str],
        predictor: Any,
        weights: str,
        on_damaged: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.frames, self.ends, self.table = _inputs(replay, key, prompts)
        self.predictor = predictor
        spec = _spec(replay, key, self.table, tuple(self.frames.shape), len(self.ends), predictor, weights)
        self.out = Path(out)
        self.created = not self.out.exists()
        self.store = _create(self.out, spec, self.ends) if self.created else _resume(self.out, spec, self.ends)
        self.masks, self.progress = mask_layout(self.store, self.ends)
        self.finished = _resumable(self.progress, on_damaged)
        """``(E,)`` bool: the episodes flagged done (updated as episodes are tracked)."""
        self.tracked: list[int] = []
        """Episodes whose masks this object wrote."""

    def track_all(
        self,
        on_episode: Callable[[int, int], None] | None = None,
        needs_features: Callable[[int, int], bool] | None = None,
        on_features: Callable[[int, Any], None] | None = None,
    ) -> None:
        """Track each episode not flagged done into the masks, flag it, and add it to :attr:`tracked`.

        An episode already done is tracked again (not rewritten) only while ``needs_features`` wants
        its frames' features (the arguments are :func:`build_mask_cache`'s).
        """
        predictor, frames, ends, table = self.predictor, self.frames, self.ends, self.table
        finished, objects = self.progress.values, table["objects"]
        starts = np.concatenate([[0], ends[:-1]])
        for e, (start, end) in enumerate(zip(starts.tolist(), ends.tolist())):
            features = on_features if on_features is not None and needs_features(start, end) else None
            if finished[e]:
                if features is not None:  # masks done, features not: the same tracking gives them
                    _track_episode(predictor, frames, start, end, table["episodes"][e], objects, e, features)
                continue
            block = _track_episode(predictor, frames, start, end, table["episodes"][e], objects, e, features)
            self.masks.write(start, block)  # the chunk files it touches, each replaced whole, then their checksums
            self.progress.mark(e)  # only after the masks and their checksums are written
            self.tracked.append(e)
            if on_episode is not None:
                on_episode(int(finished.sum()), len(ends))

    def discard_if_unused(self) -> None:
        """Remove the cache if this object created it and finished no episode (nothing worth keeping)."""
        if self.created and not self.tracked:
            shutil.rmtree(self.out, ignore_errors=True)

    def finish(self) -> Path:
        """Read back the episodes this object wrote, then set ``complete``; returns the cache folder.

        Raises:
            MaskCacheError: If an episode fails the read-back check (it is unflagged: rerun to track it again).
        """
        read_back([(self.progress, self.tracked)])  # what this run wrote, before calling the cache complete
        # written last: readers only trust complete caches, and check the small arrays against these CRC-32s
        self.store.set_attrs(sealed_crc32=self.store.seal(SEALED), complete=True)
        return self.out


def _spec(
    replay: str | os.PathLike[str],
    key: str,
    table: Mapping[str, Any],
    shape: tuple[int, ...],
    n_episodes: int,
    predictor: Any,
    weights: str,
) -> dict[str, Any]:
    """What a mask cache records of its arguments (a resume must match it); ``shape``: the frames' ``(N, H, W, 3)``."""
    return {
        "replay": str(Path(replay).resolve()),
        "key": key,
        "objects": table["objects"],
        "prompts_sha256": prompt_table_sha256(table),
        "variant": predictor.variant.name,
        "weights": weights,
        "image_size": predictor.image_size,
        "frame_shape": list(shape[1:3]),
        "n_frames": int(shape[0]),
        "n_episodes": n_episodes,
    }


def _create(out: Path, spec: Mapping[str, Any], ends: np.ndarray) -> Store:
    """A new, empty mask cache (it appears whole, every array declared)."""
    n, k, (h, w) = int(spec["n_frames"]), len(spec["objects"]), spec["frame_shape"]

    def declare(group: Any) -> None:
        create_array(group, "masks", (n, k, h, w), (1, k, h, w), "bool", False)
        create_array(group, "checksums", (n,), (min(n, _SUM_CHUNK),), "int64", NO_CHECKSUM)
        create_array(group, "episode_ends", (len(ends),), (len(ends),), "int64", 0)[...] = ends
        create_array(group, "episode_done", (len(ends),), (len(ends),), "bool", False)

    return create_store(out, MASKS, spec, declare)


def _resume(out: Path, spec: Mapping[str, Any], ends: np.ndarray) -> Store:
    """The existing cache ``out``, refused if built from other arguments or its arrays are damaged."""
    store = open_existing(out, MASKS, spec)
    problems = check_mask_arrays(store)
    recorded = store.read_vector("episode_ends", problems)
    if not problems and not np.array_equal(recorded, ends):
        problems.append("episode_ends differs from the replay buffer's meta/episode_ends")
    if problems:
        raise store.damaged(problems)
    return store


def _resumable(progress: Progress, on_damaged: Callable[[list[str]], None] | None) -> np.ndarray:
    """The episodes a rerun keeps: flagged done and read back whole (the rest are unflagged)."""
    damaged: list[str] = []  # a flag file that cannot be decoded: start those over
    finished = progress.read(damaged)
    if finished is None:
        finished = np.zeros(len(progress.units), dtype=bool)
    for e in np.flatnonzero(finished).tolist():  # verify what this run resumes from
        bad = progress.problems(e)
        if bad:
            finished[e] = False
            damaged += bad
    if damaged:
        progress.store.set_attrs(complete=False)  # before anything is rewritten
        progress.write_all(finished)
        if on_damaged is not None:
            on_damaged(damaged)
    return progress.values


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
        self.store = Store(self.path, MASKS)
        self.root = self.store.group
        self.spec = self.store.spec
        if not self.store.complete:
            done = self.store.read_vector("episode_done", [], default=np.zeros(0, bool))
            raise self.store.incomplete(int(done.sum()), int(self.spec["n_episodes"]))
        problems: list[str] = []
        ends = small_arrays(self.store, problems)
        if problems:
            raise self.store.damaged(problems)
        self._masks, _ = mask_layout(self.store, ends)

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
        unique, inverse = np.unique(frame_index(frames, len(self), self.store), return_inverse=True)
        if not unique.size:
            return np.zeros((0, *self.mask_shape), dtype=bool)
        return np.asarray(self._masks.read(unique), dtype=bool)[inverse]


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
            objects = "object" if k == 1 else "objects"
            raise MaskCacheError(
                f"mask cache {self.cache.path} holds {k} {objects} {self.cache.objects} on {h}x{w} frames, masks "
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


__getattr__ = dp_classes(globals(), {"DPMaskDataset": MaskDataset})
"""``DPMaskDataset``: :class:`MaskDataset` that is also DP's ``BaseImageDataset`` (DP's workspace asserts
it), created on first use so that DP is imported only by configs that ask for it."""
