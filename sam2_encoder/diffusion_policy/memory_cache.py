"""The policy memory's feature cache for Diffusion Policy: a frozen memory encoder trained without the trunk.

An encoder with ``memory="sam2"`` trains from frames by encoding every row's frame and its ``F`` bank
frames (:class:`~sam2_encoder.diffusion_policy.memory_dataset.MemoryDataset`). With a frozen trunk,
each replay-buffer frame is encoded once instead (:mod:`sam2_encoder.memory_cache` says what and
why), into a feature cache of the same layout, checks and crash-safe writes as
:mod:`.feature_cache`'s, whose per-frame maps are::

    features/<key>/s4, s8      (N, 32 | 64, S/4 | S/8, ...)  the finer levels the heads read (raw)
    features/<key>/s16_neck    (N, 256, S/16, S/16)         the memory attention's queries
    features/<key>/memory      (N, 64, S/16, S/16)          SAM 2's memory of the frame (the bank's entries)

and whose attributes add ``memory: {memory_source, memory_weights}`` (the memory encoder's weights
digest) to the trunk's (variant, image size, weights): a reader refuses a cache that disagrees with
its encoder in one error naming each setting, the cache's value and the encoder's
(:func:`check_memory_cache`). The bank layout is not recorded: it is chosen when reading, so one cache
serves any ``memory_frames`` / ``memory_stride`` / ``memory_keep_first``.

:class:`MemoryCacheDataset` (``DPMemoryCacheDataset`` with DP's base mixed in) serves each sample
step the frame's cached features ``obs[camera]`` ``(T, *feature_shape)`` and the memories of its
bank ``obs[memory_key(camera)]`` ``(T, F, 64, h, w)``; the encoder's training forward then runs the
memory attention and the heads only (:class:`~sam2_encoder.memory_cache.CachedMemoryCall`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import MemoryConfig
from ..image_encoder import SAM2ImageEncoder
from ..memory_cache import (
    MEMORY_ARRAYS,
    cached_features,
    frame_memory_maps,
    memory_cache_levels,
    memory_cache_problems,
    memory_spec,
)
from ..policy_memory import MemoryModules, bank_frames, memory_key
from .dp_base import DPDatasetWrapper, dp_classes
from .feature_cache import CacheError, FeatureCache, FeatureWriter, check_layout, fill_cache

__all__ = [
    "MemoryCacheDataset",
    "MemoryFeatureWriter",
    "bank_indices",
    "build_memory_cache",
    "check_memory_cache",
    "default_memory_cache_path",
]


def default_memory_cache_path(replay: str | os.PathLike[str], variant: str, image_size: int) -> Path:
    """``REPLAY.zarr`` -> ``REPLAY.<variant>_<size>.memory.zarr`` beside it."""
    replay = Path(replay)
    return replay.with_name(f"{replay.name.removesuffix('.zarr')}.{variant}_{image_size}.memory.zarr")


class MemoryFeatureWriter(FeatureWriter):
    """A memory cache being written: each chunk of frames through the trunk and the memory encoder once.

    Args:
        replay: The replay buffer (see :func:`build_memory_cache`).
        keys: Its camera keys to cache.
        encoder: The frozen image encoder (a policy encoder's ``.encoder``).
        memory: Its memory modules (a policy encoder's ``.memory``).
        out: Cache path (default: :func:`default_memory_cache_path`).
        levels: The levels the heads read (must hold s16; ``["s4", "s8", "s16"]`` for
            ``fuse="coarse_to_fine"``): the finer ones are stored raw, s16 as ``s16_neck``.
        dtype: ``"float16"`` or ``"float32"``.
        chunk_frames: Frames per zarr chunk and per encoder batch.
        masks: ``{key: mask cache path}`` (``sam2-encoder masks``): each frame's object masks, for
            ``memory_source="objects"`` (required then, refused otherwise).
        prepare, barrier: As :class:`~.feature_cache.FeatureWriter`'s.

    Raises:
        ValueError: For levels without s16, or masks that do not go with ``memory_source``.
        CacheError: If an existing cache at ``out`` was built with other arguments.
    """

    def __init__(
        self,
        replay: str | os.PathLike[str],
        keys: Sequence[str],
        encoder: SAM2ImageEncoder,
        memory: MemoryModules,
        out: str | os.PathLike[str] | None = None,
        levels: Sequence[str] = ("s16",),
        dtype: str = "float16",
        chunk_frames: int = 32,
        masks: Mapping[str, str | os.PathLike[str]] | None = None,
        prepare: bool = True,
        barrier: Callable[[], None] | None = None,
    ) -> None:
        stored = memory_cache_levels([levels] if isinstance(levels, str) else list(levels), "pool")
        self.memory = memory
        self.mask_caches = _mask_caches(memory.config.memory_source, keys, masks)
        spec = {"memory": memory_spec(memory)}
        if self.mask_caches:
            spec["memory"]["masks"] = {k: c.spec.get("prompts_sha256") for k, c in sorted(self.mask_caches.items())}
        _, h, w = encoder.feature_shapes()["s16"]
        channels = int(memory.memory_encoder.projection.out_channels)
        extra = {"s16_neck": (256, h, w), "memory": (channels, h, w)}
        finer = [lv for lv in stored if lv not in MEMORY_ARRAYS]
        if out is None:
            out = default_memory_cache_path(replay, encoder.variant.name, encoder.image_size[0])
        super().__init__(replay, keys, encoder, out, finer, dtype, chunk_frames, None, prepare, barrier, extra, spec)

    def encode_chunk(self, key: str, i: int) -> None:
        """Chunk ``i`` of ``key``: one trunk pass and one memory-encoder pass, then written."""
        span = self.frames(i)
        frames = torch.from_numpy(np.asarray(self.data[key][span.start : span.stop]))
        masks = None
        if key in self.mask_caches:
            masks = torch.from_numpy(self.mask_caches[key].masks(np.arange(span.start, span.stop)))
        with torch.inference_mode():
            maps = frame_memory_maps(self.encoder, self.memory, frames, masks)
        self._write(key, i, {level: self._values(maps[level]) for level in self.levels})


def _mask_caches(source: str, keys: Sequence[str], masks: Mapping[str, Any] | None) -> dict[str, Any]:
    """The mask caches of ``memory_source="objects"`` (one per key), checked; ``{}`` for ``"frame"``."""
    if source != "objects":
        if masks:
            raise ValueError(f"masks= {dict(masks)} go with memory_source='objects'; the memory has {source!r}")
        return {}
    missing = [k for k in keys if k not in (masks or {})]
    if missing:
        raise ValueError(
            f"memory_source='objects' stores each frame's memory with its object masks: give masks={{key: mask "
            f"cache}} (`sam2-encoder masks`) for {missing}"
        )
    from .mask_cache import MaskCache

    return {k: MaskCache(masks[k]) for k in keys}


def build_memory_cache(
    replay: str | os.PathLike[str],
    keys: Sequence[str],
    encoder: SAM2ImageEncoder,
    memory: MemoryModules,
    out: str | os.PathLike[str] | None = None,
    levels: Sequence[str] = ("s16",),
    dtype: str = "float16",
    chunk_frames: int = 32,
    masks: Mapping[str, str | os.PathLike[str]] | None = None,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] | None = None,
    stop_after_chunks: int | None = None,
) -> Path:
    """Encode a replay buffer's frames into a policy memory's cache (resumable, shardable).

    Args:
        replay: Diffusion Policy replay buffer (``data/<key>`` (N, H, W, 3) uint8, ``meta/episode_ends``).
        keys: Camera keys under ``data/``.
        encoder: The frozen image encoder: ``policy.obs_encoder.encoder`` of the policy to train.
        memory: Its memory modules: ``policy.obs_encoder.memory``.
        out: Cache path (default: :func:`default_memory_cache_path`).
        levels: The levels the heads read (see :class:`MemoryFeatureWriter`).
        dtype: ``"float16"`` or ``"float32"``.
        chunk_frames: Frames per zarr chunk and per encoder batch.
        masks: ``{key: mask cache}`` for ``memory_source="objects"``.
        progress: Show a progress bar (rank 0).
        rank: This process's rank when sharded.
        world_size: Number of processes sharing the work.
        barrier: Synchronises ranks; required when ``world_size > 1``.
        stop_after_chunks: Stop after encoding this many chunks (leaves the cache incomplete).

    Returns:
        The cache path.

    Raises:
        CacheError, KeyError, ValueError: As :func:`~.feature_cache.build_cache`.
    """
    if world_size > 1 and barrier is None:
        raise ValueError("world_size > 1 needs a barrier (torch.distributed.barrier)")
    sync = barrier or (lambda: None)
    writer = MemoryFeatureWriter(
        replay, keys, encoder, memory, out, levels, dtype, chunk_frames, masks, prepare=rank == 0, barrier=sync
    )
    return fill_cache(writer, progress, rank, world_size, sync, stop_after_chunks)


def check_memory_cache(path: str | os.PathLike[str], enc: Any) -> FeatureCache:
    """Open a memory cache and refuse it unless it holds ``enc``'s values.

    Args:
        path: The cache folder.
        enc: The policy encoder (``MultiCameraEncoder`` / ``SAM2ObsEncoder``) with ``memory="sam2"``.

    Returns:
        The open cache.

    Raises:
        CacheError: One error naming each setting that differs (variant, image size, weights,
            levels, ``memory_source``, memory weights) with the cache's value and the encoder's, or
            for an encoder without memory.
    """
    cache = FeatureCache(path)
    if enc.memory is None:
        raise CacheError(f"feature cache {cache.path} holds policy-memory features; the encoder has memory='none'")
    problems = memory_cache_problems(cache.spec, enc.encoder, enc.levels, enc.fuse, enc.memory)
    if problems:
        raise CacheError(f"feature cache {cache.path} does not match the encoder: " + "; ".join(problems))
    return cache


def bank_indices(frames: np.ndarray, episode_ends: np.ndarray, config: MemoryConfig) -> np.ndarray:
    """``(T, F)`` buffer frames of the banks of buffer frames ``frames`` ``(T,)`` (``bank_frames`` per episode)."""
    ends = np.asarray(episode_ends)
    starts = np.concatenate([[0], ends[:-1]])[np.searchsorted(ends, frames, side="right")]
    return np.asarray([[s + f for f in bank_frames(int(i - s), config)] for i, s in zip(frames, starts)])


class MemoryCacheDataset(DPDatasetWrapper):
    """Serves a DP dataset's samples with a memory cache's features and bank memories in place of frames.

    For each cached camera and each sample step: ``obs[camera]`` ``(T, *feature_shape)`` the frame's
    cached features, ``obs[memory_key(camera)]`` ``(T, F, 64, h, w)`` the memories of its bank
    (:func:`~sam2_encoder.policy_memory.bank_frames` inside its episode; DP's padded steps repeat the
    edge frame). Both are normalised through the identity.

    Args:
        feature_cache: A complete memory cache (:func:`build_memory_cache`).
        cached_keys: ``{obs key: replay-buffer key}``, e.g. ``{"image": "img"}``.
        memory_frames, memory_stride, memory_keep_first: The encoder's memory options.
        levels: The levels the encoder's heads read (its ``levels``).
        layout: The encoder's ``fuse`` (``"pool"`` / ``"coarse_to_fine"``; ``"packed"`` is the latter).
        n_obs_steps: Only the first ``n_obs_steps`` steps are served (the rest are zeros, which DP's
            policy never reads); ``None`` serves every step.
        dataset, dataset_target, dataset_kwargs: See :class:`~.dp_base.DPDatasetWrapper`.

    Raises:
        CacheError: For a cache without memory features, without a key, or lacking the levels read.
    """

    def __init__(
        self,
        feature_cache: str | os.PathLike[str],
        cached_keys: Mapping[str, str],
        memory_frames: int = 6,
        memory_stride: int = 1,
        memory_keep_first: bool = True,
        levels: Sequence[str] = ("s16",),
        layout: str = "pool",
        n_obs_steps: int | None = None,
        dataset: Any = None,
        dataset_target: str | Sequence[str] | None = None,
        **dataset_kwargs: Any,
    ) -> None:
        self.fuse = "coarse_to_fine" if check_layout(layout) == "packed" else "pool"
        super().__init__(dataset, dataset_target, dataset_kwargs)
        self.memory = MemoryConfig("sam2", memory_frames, memory_stride, memory_keep_first)
        self.cache = FeatureCache(feature_cache)
        self.levels = [levels] if isinstance(levels, str) else list(levels)
        stored = memory_cache_levels(self.levels, self.fuse)
        missing = [lv for lv in stored if lv not in self.cache.levels]
        if not self.cache.holds_memory or missing:
            why = "no policy-memory features (build it with --memory sam2)" if not self.cache.holds_memory else ""
            raise CacheError(
                f"feature cache {self.cache.path} holds levels {self.cache.levels}: "
                + (why or f"it lacks {missing}, which levels={self.levels} with fuse={self.fuse!r} reads")
            )
        self.cached_keys = dict(cached_keys)
        unknown = [v for v in self.cached_keys.values() if v not in self.cache.keys]
        if unknown:
            raise CacheError(f"cache {self.cache.path} has keys {self.cache.keys}, not {unknown}")
        self.feature_levels = [lv for lv in stored if lv != "memory"]
        self.episode_ends = np.asarray(self.dataset.replay_buffer.episode_ends)
        self.n_obs_steps = n_obs_steps
        self.served_keys = tuple(self.cached_keys) + tuple(memory_key(k) for k in self.cached_keys)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        item = self.dataset[idx]
        frames = self.sample_frames(idx)
        steps = len(frames) if self.n_obs_steps is None else min(self.n_obs_steps, len(frames))
        banks = bank_indices(frames[:steps], self.episode_ends, self.memory)
        obs = dict(item["obs"])
        for obs_key, key in self.cached_keys.items():
            maps = dict(zip(self.feature_levels, self.cache.maps(key, frames[:steps], self.feature_levels)))
            features = cached_features(maps, self.levels, self.fuse)
            (memories,) = self.cache.maps(key, banks.reshape(-1), ["memory"])
            memories = memories.reshape(*banks.shape, *memories.shape[1:])
            obs[obs_key] = _pad(features, len(frames))
            obs[memory_key(obs_key)] = _pad(memories, len(frames))
        return {**item, "obs": obs}


def _pad(x: torch.Tensor, steps: int) -> torch.Tensor:
    """``x`` ``(t, ...)`` padded with zero steps to ``(steps, ...)``."""
    return x if len(x) == steps else torch.cat([x, x.new_zeros(steps - len(x), *x.shape[1:])])


__getattr__ = dp_classes(globals(), {"DPMemoryCacheDataset": MemoryCacheDataset})
"""``DPMemoryCacheDataset``: :class:`MemoryCacheDataset` with DP's ``BaseImageDataset`` mixed in (DP's
workspace asserts it), created on first use so that DP is imported only by configs that ask for it."""
