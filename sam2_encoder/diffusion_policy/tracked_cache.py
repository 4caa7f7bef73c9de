"""A feature cache and a mask cache from one encoder pass per frame (``sam2-encoder cache --prompts``).

The tracker (:class:`~sam2_encoder.streaming.StreamingPredictor`) encodes every frame it tracks;
``return_features=True`` hands that pyramid back. :func:`build_cache_with_masks` tracks every
episode of one camera from first-frame prompts (the :mod:`.mask_cache` prompts file) and writes
each frame's pyramid into the feature cache while the masks go into the mask cache, so the
camera's frames are encoded once, not once per cache. Other cameras of the same feature cache
are encoded in batches of ``chunk_frames`` by the tracker's encoder (the same weights).

Both outputs are the ordinary formats: :class:`~.feature_cache.FeatureCache` /
``CachedFeatureDataset`` and :class:`~.mask_cache.MaskCache` / ``MaskDataset`` read them, and
``sam2-encoder cache --verify`` / ``sam2-encoder masks --verify`` check them. Each is resumable on
its own terms (feature chunks flagged done after their checksums, episodes flagged done after
theirs); a rerun tracks again the episodes whose masks, or the chunks of whose frames, are not
done yet (masks already done are not rewritten; feature chunks already done are not rewritten).

Numerics: the tracked camera's features come from one frame per encoder pass, where
``sam2-encoder cache`` alone encodes ``chunk_frames`` frames per pass; CPU kernels are not
batch-size invariant, so the two agree within the reference's batch-composition variance (see
``tests/test_numerics.py``), bit for bit where the batch sizes round alike.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from .feature_cache import CacheError, FeatureWriter, default_cache_path
from .mask_cache import build_mask_cache, check_mask_inputs, default_mask_path

__all__ = ["build_cache_with_masks", "cache_folders", "tracked_camera"]


def tracked_camera(keys: Sequence[str], mask_key: str | None) -> str:
    """The camera the prompts track: ``mask_key``, one of ``keys`` (default: the only key).

    Raises:
        ValueError: For a ``mask_key`` not in ``keys``, or none with several keys.
    """
    if mask_key is None:
        if len(keys) != 1:
            raise ValueError(f"the prompts track one camera: with several keys {keys}, name it with mask_key=")
        mask_key = keys[0]
    if mask_key not in keys:
        raise ValueError(f"mask_key {mask_key!r} is not one of the keys to cache {keys}")
    return mask_key


def cache_folders(
    replay: str | os.PathLike[str],
    encoder: Any,
    mask_key: str,
    out: str | os.PathLike[str] | None,
    masks_out: str | os.PathLike[str] | None,
) -> tuple[Path, Path]:
    """The feature cache and mask cache folders, two different ones.

    Args:
        replay: The replay buffer (the default folders lie beside it).
        encoder: The tracker's ``SAM2ImageEncoder`` (its variant and image size name the feature cache).
        mask_key: The tracked camera (it names the mask cache).
        out: Feature cache folder, or ``None`` for :func:`~.feature_cache.default_cache_path`.
        masks_out: Mask cache folder, or ``None`` for :func:`~.mask_cache.default_mask_path`.

    Raises:
        ValueError: If both are the same folder.
    """
    out = Path(out) if out is not None else default_cache_path(replay, encoder.variant.name, encoder.image_size[0])
    masks_out = Path(masks_out) if masks_out is not None else default_mask_path(replay, mask_key)
    if out.resolve() == masks_out.resolve():
        raise ValueError(f"the feature cache and the mask cache would both be {out}: give them two folders")
    return out, masks_out


def build_cache_with_masks(
    replay: str | os.PathLike[str],
    keys: Sequence[str],
    predictor: Any,
    prompts: str | os.PathLike[str] | Mapping[str, Any],
    weights: str,
    feature_weights: str | None = None,
    mask_key: str | None = None,
    out: str | os.PathLike[str] | None = None,
    masks_out: str | os.PathLike[str] | None = None,
    levels: Sequence[str] = ("s16",),
    dtype: str = "float16",
    chunk_frames: int = 32,
    on_episode: Callable[[int, int], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_damaged: Callable[[list[str]], None] | None = None,
) -> tuple[Path, Path]:
    """Track ``mask_key``'s episodes into a mask cache and cache every key's features, one pass per frame.

    Everything is checked before anything is written (keys, ``mask_key``, the prompts against the
    frame size, both output folders).

    Args:
        replay: A Diffusion Policy replay buffer (``data/<key>`` ``(N, H, W, 3)`` uint8,
            ``meta/episode_ends``).
        keys: Image keys of the feature cache.
        predictor: The :class:`~sam2_encoder.streaming.StreamingPredictor`; its ``encoder``
            (variant, image size, transforms) defines the features.
        prompts: The prompts file or mapping (see :mod:`.mask_cache`).
        weights: Identity of the predictor's weights, recorded in the mask cache
            (:func:`~sam2_encoder.checkpoints.weights_identity` of its checkpoint, the one
            ``SAM2ImageEncoder.weights_id`` reports for the same checkpoint).
        feature_weights: Identity recorded in the feature cache (default ``weights``): what a
            ``SAM2ImageEncoder`` reading the cache reports as ``weights_id`` for the same weights.
        mask_key: The camera to track; default: the only key.
        out: Feature cache folder (default: :func:`~.feature_cache.default_cache_path`).
        masks_out: Mask cache folder (default: :func:`~.mask_cache.default_mask_path`).
        levels: Pyramid levels to store.
        dtype: Feature storage dtype, ``"float16"`` or ``"float32"``.
        chunk_frames: Frames per feature chunk (and per encoder batch of the other keys).
        on_episode: ``on_episode(done, total)`` after each episode whose masks are written.
        on_start: ``on_start(done, total)`` once before tracking (episodes with masks done).
        on_damaged: Called with the problems of damaged finished episodes (tracked again).

    Returns:
        ``(feature cache path, mask cache path)``.

    Raises:
        ValueError: For a ``mask_key`` that is not one of ``keys`` (or none with several keys),
            the same folder for both caches, bad prompts or frames.
        KeyError: For a key not in the replay buffer.
        CacheError / MaskCacheError: (both :class:`~.store.StoreError`) For an existing folder
            built from other arguments or damaged, or chunks / episodes that fail the read-back
            check (rerun to redo them).
    """
    keys = [keys] if isinstance(keys, str) else list(keys)
    mask_key = tracked_camera(keys, mask_key)
    out, masks_out = cache_folders(replay, predictor.encoder, mask_key, out, masks_out)
    check_mask_inputs(replay, mask_key, prompts, masks_out)  # before the feature cache is created
    writer = FeatureWriter(
        replay, keys, predictor.encoder, out, levels, dtype, chunk_frames, weights=feature_weights or weights
    )
    try:
        # other cameras: batched, as `sam2-encoder cache` encodes them
        writer.encode_chunks([(key, i) for key in keys if key != mask_key for i in writer.todo(key)])
        build_mask_cache(
            replay,
            mask_key,
            prompts,
            masks_out,
            predictor,
            weights,
            on_episode=on_episode,
            on_start=on_start,
            on_damaged=on_damaged,
            needs_features=partial(writer.needs, mask_key),
            on_features=partial(writer.put, mask_key),
        )
    except BaseException:
        if not masks_out.exists():  # nothing of this run worth keeping (else both caches resume)
            writer.discard_if_unused()
        raise
    if not writer.finish():
        missing = {key: writer.todo(key)[:10] for key in keys if writer.todo(key)}
        raise CacheError(f"feature cache {writer.out}: chunks {missing} were not written; rerun the same command")
    return writer.out, masks_out
