"""A feature cache of a LeRobotDataset: each camera's frames through the policy's frozen SAM 2 trunk, once.

With a frozen trunk, every LeRobot training step would decode the same frames and run the same SAM 2
pass again. :func:`build_lerobot_cache` (``sam2-encoder lerobot-cache``) decodes every frame of the
cached cameras once, with LeRobot's own decoding (``dataset[i]``: the frames and timestamps LeRobot
gives the policy), runs them through the policy's view (resize / centre crop) and trunk, and stores
what the policy's heads read (``MultiCameraEncoder.fuse_levels``: ``feature_shape`` per frame).
Training then reads them instead (``--policy.feature_cache=CACHE``, :class:`CachedCameras`); the heads
and the UNet still learn, and the saved policy runs on raw frames at ``lerobot-eval``. The cache
also holds a view of the dataset without the cached cameras' video (:mod:`.dataset_view`,
``--dataset.root=CACHE/dataset``), so that stock ``lerobot-train`` never decodes those videos.

Layout (the checksummed store of :mod:`sam2_encoder.diffusion_policy.store`, kind
:data:`LEROBOT_FEATURES`, zarr-2 format)::

    CACHE/
      .zattrs                  {"sam2_encoder_lerobot": {format, encoder, dataset, cameras, dtype,
                                n_frames, chunk_frames, thumb, version, source, complete, sealed_crc32}}
      features/<camera>        (N, *feature_shape) float16 | float32, chunked by chunk_frames frames
      checksums/<camera>       (n_chunks,) int64: CRC-32 of each chunk, -1 until written
      thumbs/<camera>          (N, 3, 8, 8) float32: each frame average-pooled (checks training batches)
      thumb_checksums/<camera> (n_chunks,) int64
      episodes                 (E, 2) int64: each episode's [from, to) dataset indices (sealed)
      progress                 (n_chunks,) bool: chunk i of every camera written and checksummed
      dataset/                 the dataset view (written once the cache is complete; see dataset_view)

Rows are LeRobot's absolute dataset indices (the ``index`` column). What the store does (format,
per-chunk CRC-32, progress flags, crash-safe creation, first-read checks, ``--verify``) is the
store's; this module says what is stored and what refuses a mismatch: the encoder part
(:func:`encoder_spec`: variant, weights identity, image size, levels, fuse, feature shape,
precision, each camera's frame size and view, transforms) and the dataset part
(:func:`dataset_fingerprint`: repo id, codebase version, fps, episode and frame counts, a hash of
the episode index and video timestamps, camera shapes).

Writing is resumable after SIGKILL: a chunk is encoded, written with its checksums, and only then
flagged; a rerun redoes unflagged chunks with the same batch composition (byte-identical result).
Under ``torchrun`` chunks are shared round-robin across ranks; rank 0 creates the store and
completes it after reading it back.
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
import torch.nn.functional as F

from .. import __version__
from ..camera_encoder import MultiCameraEncoder
from ..diffusion_policy.feature_cache import CacheError
from ..diffusion_policy.store import (
    NO_CHECKSUM,
    ChecksummedArray,
    Progress,
    Store,
    StoreKind,
    complete_when_flagged,
    create_store,
    frame_index,
    open_existing,
    verify_progress,
)
from ..diffusion_policy.zarr_io import create_array
from ..obs_inputs import to_pixels
from .dataset_view import cached_features, view_problems, write_dataset_view

__all__ = [
    "LEROBOT_FEATURES",
    "THUMB",
    "CachedCameras",
    "LeRobotCacheError",
    "LeRobotFeatureCache",
    "LeRobotFeatureWriter",
    "build_lerobot_cache",
    "dataset_features",
    "dataset_fingerprint",
    "encoder_spec",
    "frames_of",
    "open_dataset",
    "thumbnails",
    "verify_lerobot_cache",
]

THUMB = 8
"""Side of the per-frame thumbnails (average-pooled frames) that check a training batch's frames."""

_THUMB_ATOL = 1e-4  # the same decoded frames pool to the same thumbnail (same op, same values)


class LeRobotCacheError(CacheError):
    """A LeRobot feature cache is missing, incomplete, damaged, or built for another policy or dataset."""


LEROBOT_FEATURES = StoreKind(
    attr="sam2_encoder_lerobot",
    noun="LeRobot feature cache",
    title="sam2_encoder LeRobot feature cache",
    command="sam2-encoder lerobot-cache",
    chunk="chunk",
    unit="chunk",
    verb="encode",
    error=LeRobotCacheError,
)
"""The LeRobot feature cache as a :class:`~sam2_encoder.diffusion_policy.store.StoreKind`."""


# --------------------------------------------------------------------------------------------
# what a cache is built from
# --------------------------------------------------------------------------------------------


def encoder_spec(encoder: MultiCameraEncoder, cameras: Sequence[str]) -> dict[str, Any]:
    """What the cached features of ``cameras`` depend on in the policy's encoder (JSON-able).

    Args:
        encoder: The policy's ``MultiCameraEncoder`` (``policy.encoder``).
        cameras: The cached cameras.

    Raises:
        LeRobotCacheError: For a camera the encoder does not have, a fine-tuned trunk
            (``freeze=false``), random crops, or object tokens on a cached camera.
    """
    config = encoder.config
    unknown = [c for c in cameras if c not in encoder.rgb_shapes]
    if unknown:
        raise LeRobotCacheError(f"cameras {unknown} are not cameras of the policy; its cameras: {encoder.rgb_keys}")
    if not config.finetuning.freeze:
        raise LeRobotCacheError(
            "a feature cache holds the frozen SAM 2 trunk's features: the policy has freeze=false (the trunk is "
            "fine-tuned, so its features change every step); train it from frames"
        )
    if encoder.crop_shape is not None and encoder.random_crop:
        raise LeRobotCacheError(
            f"crop_shape {list(encoder.crop_shape)} with crop_is_random=true is an augmentation a cache cannot hold "
            "(it stores each frame once, in the centre crop): set --policy.crop_is_random=false for cached cameras"
        )
    masked = [c for c in cameras if c in encoder.object_masks]
    if masked:
        raise LeRobotCacheError(
            f"cameras {masked} have object tokens (object_masks): caching them is not supported; leave them out "
            "of the cache (--camera) or train from frames"
        )
    views = {}
    for camera in sorted(cameras):
        view = encoder.view(camera)
        views[camera] = {
            "frame": list(view.frame_hw),
            "resize_shape": None if view.resize_hw is None else list(view.resize_hw),
            "crop_shape": None if view.crop_hw is None else list(view.crop_hw),
            "crop": "centre" if view.crop_hw is not None else None,
        }
    image = encoder.encoder
    return {
        "variant": image.variant.name,
        "weights": image.weights_id,
        "image_size": list(image.image_size),
        "levels": list(config.readout.levels),
        "fuse": config.readout.fuse,
        "feature_shape": list(encoder.feature_shape),
        "precision": config.backbone.precision,
        "views": views,
        "transforms": {
            "input": "float [0, 1] (LeRobot's uint8 frames / 255)",
            "channel_order": image.transforms.channel_order,
            "normalize": "imagenet",
        },
    }


def dataset_fingerprint(meta: Any, features: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """What identifies a LeRobotDataset's frames: ``{repo_id, codebase_version, fps, ...}`` (JSON-able).

    Args:
        meta: Its ``LeRobotDatasetMetadata`` (``dataset.meta``; the policy gets it as ``dataset_meta``).
        features: Its ``info.json`` features (default: ``meta.features``); a cache's dataset view
            passes its own with the cameras it left out put back (:func:`dataset_features`).

    Returns:
        Repo id, codebase version, fps, episode and frame counts, camera shapes, and the SHA-256
        of the episodes' ``[from, to)`` dataset indices and each video camera's timestamps.

    Raises:
        LeRobotCacheError: If the episodes table lacks a video camera's timestamps.
    """
    features = meta.features if features is None else features
    episodes = meta.episodes
    digest = hashlib.sha256()
    for column in ("dataset_from_index", "dataset_to_index"):
        digest.update(np.asarray(episodes[column], dtype=np.int64).tobytes())
    for camera in sorted(k for k, ft in features.items() if ft["dtype"] == "video"):
        for end in ("from_timestamp", "to_timestamp"):
            column = f"videos/{camera}/{end}"
            if column not in episodes.column_names:
                raise LeRobotCacheError(
                    f"dataset {meta.root}: its episodes table has no {column!r} column, so camera {camera!r} is "
                    "not a video of this dataset (a feature cache of another dataset?)"
                )
            digest.update(np.asarray(episodes[column], dtype=np.float64).tobytes())
    cameras = sorted(k for k, ft in features.items() if ft["dtype"] in ("video", "image"))
    return {
        "repo_id": str(meta.repo_id),
        "codebase_version": str(meta.info.codebase_version),
        "fps": int(meta.fps),
        "total_episodes": int(meta.total_episodes),
        "total_frames": int(meta.total_frames),
        "cameras": {key: list(features[key]["shape"]) for key in cameras},
        "episodes_sha256": digest.hexdigest(),
    }


def dataset_features(meta: Any, cache: str | os.PathLike[str]) -> dict[str, Any]:
    """``meta.features`` with the cameras ``cache``'s dataset view left out put back (as the source had them)."""
    return {**cached_features(cache), **meta.features}


def episode_bounds(meta: Any) -> np.ndarray:
    """``(E, 2)`` int64: each episode's ``[from, to)`` absolute dataset indices."""
    episodes = meta.episodes
    return np.stack(
        [
            np.asarray(episodes["dataset_from_index"], dtype=np.int64),
            np.asarray(episodes["dataset_to_index"], dtype=np.int64),
        ],
        axis=1,
    )


def open_dataset(repo_id: str, root: str | os.PathLike[str] | None = None, video_backend: str | None = None) -> Any:
    """The whole LeRobotDataset as ``lerobot-train`` opens it, without time windows or augmentation.

    Args:
        repo_id: Its repo id (already in the LeRobot cache, or at ``root``).
        root: Its local folder (``--dataset.root``).
        video_backend: LeRobot's video backend (``--dataset.video_backend``; default: LeRobot's).
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset(repo_id, root=root, video_backend=video_backend, return_uint8=True)


def frames_of(dataset: Any, cameras: Sequence[str], rows: Sequence[int]) -> dict[str, torch.Tensor]:
    """LeRobot's decoded frames of ``rows`` (absolute indices), as ``lerobot-train`` hands them on.

    Args:
        dataset: A whole LeRobotDataset without ``delta_timestamps`` or ``image_transforms``.
        cameras: Camera keys.
        rows: Dataset indices.

    Returns:
        ``{camera: (len(rows), 3, H, W)}`` float32 in [0, 1] (uint8 frames / 255, as ``lerobot-train`` does).
    """
    items = [dataset[int(i)] for i in rows]
    out = {}
    for camera in cameras:
        x = torch.stack([item[camera] for item in items])
        out[camera] = x.to(torch.float32) / 255.0 if x.dtype == torch.uint8 else x.to(torch.float32)
    return out


def thumbnails(frames: torch.Tensor) -> torch.Tensor:
    """``(..., 3, H, W)`` frames -> ``(..., 3, THUMB, THUMB)`` float32 averages (adaptive average pooling)."""
    lead = frames.shape[:-3]
    x = frames.reshape(-1, *frames.shape[-3:]).to(torch.float32)
    return F.adaptive_avg_pool2d(x, THUMB).reshape(*lead, 3, THUMB, THUMB)


def _check_dataset(dataset: Any) -> None:
    """Refuse a dataset that is not served whole and plain (a cache indexes every frame, unaugmented)."""
    if getattr(dataset, "delta_timestamps", None) is not None:
        raise ValueError(
            "build the cache from a dataset opened without delta_timestamps (open_dataset): it stores one entry "
            f"per frame, training's windows are read from it; got delta_timestamps={dataset.delta_timestamps}"
        )
    if getattr(dataset, "image_transforms", None) is not None:
        raise ValueError("build the cache from a dataset without image_transforms: it stores the frames as recorded")
    if getattr(dataset, "episodes", None) is not None:
        raise ValueError(
            f"build the cache from the whole dataset (episodes=None), got episodes={dataset.episodes}: rows are "
            "absolute dataset indices; --dataset.episodes in training selects from it"
        )


def _arrays(store: Store) -> dict[str, ChecksummedArray]:
    """``features/<camera>`` and ``thumbs/<camera>`` with their checksums, chunked by ``chunk_frames``."""
    spec = store.spec
    chunk, n = int(spec["chunk_frames"]), int(spec["n_frames"])

    def describe(name: str) -> Callable[[int], str]:
        return lambda i: f"{name} chunk {i} (frames {i * chunk}-{min((i + 1) * chunk, n) - 1})"

    out = {}
    for camera in spec["cameras"]:
        pairs = ((f"features/{camera}", f"checksums/{camera}"), (f"thumbs/{camera}", f"thumb_checksums/{camera}"))
        for data, sums in pairs:
            out[data] = ChecksummedArray(store, data, sums, chunk, describe(data))
    return out


def _progress(store: Store, arrays: Mapping[str, ChecksummedArray]) -> Progress:
    """One flag per chunk of frames: it writes that chunk of every camera's features and thumbnails."""
    n_chunks = math.ceil(int(store.spec["n_frames"]) / int(store.spec["chunk_frames"]))
    return Progress(store, "progress", [[(array, [i]) for array in arrays.values()] for i in range(n_chunks)])


def _check_arrays(store: Store) -> list[str]:
    """Every array present with the recorded dtype, frame count, chunking and shape."""
    spec = store.spec
    n, chunk = int(spec["n_frames"]), int(spec["chunk_frames"])
    n_chunks = math.ceil(n / chunk)
    shape = list(spec["encoder"]["feature_shape"])
    found = [store.check_array("progress", n_chunks, "bool")]
    found.append(store.check_array("episodes", int(spec["dataset"]["total_episodes"]), "int64", tail=(2,)))
    for camera in spec["cameras"]:
        found.append(store.check_array(f"features/{camera}", n, spec["dtype"], rows=chunk, tail=shape))
        found.append(store.check_array(f"thumbs/{camera}", n, "float32", rows=chunk, tail=(3, THUMB, THUMB)))
        found.append(store.check_array(f"checksums/{camera}", n_chunks, "int64"))
        found.append(store.check_array(f"thumb_checksums/{camera}", n_chunks, "int64"))
    return [p for p in found if p is not None]


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


class LeRobotFeatureWriter:
    """A LeRobot feature cache being written: created (or checked against its arguments) on construction.

    Args:
        dataset: The whole LeRobotDataset (:func:`open_dataset`).
        encoder: The policy's encoder (``policy.encoder``), on the device to encode on.
        out: The cache folder.
        cameras: Cameras to cache (default: every camera of the encoder).
        dtype: ``"float16"`` or ``"float32"``.
        chunk_frames: Frames per chunk (one zarr chunk, one encoder batch per camera); small, since
            training reads frames at random and decodes a whole chunk for each.
        prepare: Create or check the folder (rank 0 only when sharded).
        barrier: Called after preparing (ranks wait for rank 0).

    Raises:
        LeRobotCacheError: For an existing cache at ``out`` built from other arguments, or a policy
            whose features cannot be cached (see :func:`encoder_spec`).
        ValueError: For bad arguments or a dataset with windows, augmentation or an episode subset.
    """

    def __init__(
        self,
        dataset: Any,
        encoder: MultiCameraEncoder,
        out: str | os.PathLike[str],
        cameras: Sequence[str] | None = None,
        dtype: str = "float16",
        chunk_frames: int = 8,
        prepare: bool = True,
        barrier: Callable[[], None] | None = None,
    ) -> None:
        if dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
        if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or chunk_frames < 1:
            raise ValueError(f"chunk_frames must be a whole number >= 1, got {chunk_frames!r}")
        _check_dataset(dataset)
        self.dataset, self.encoder, self.out = dataset, encoder, Path(out)
        self.cameras = sorted(cameras if cameras is not None else encoder.rgb_keys)
        if not self.cameras or len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras must be distinct camera keys of the policy, got {list(cameras or [])}")
        self.n_frames, self.chunk_frames = int(dataset.meta.total_frames), chunk_frames
        self.n_chunks = math.ceil(self.n_frames / chunk_frames)
        self.spec = {
            "encoder": encoder_spec(encoder, self.cameras),
            "dataset": dataset_fingerprint(dataset.meta),
            "cameras": self.cameras,
            "dtype": dtype,
            "n_frames": self.n_frames,
            "chunk_frames": chunk_frames,
            "thumb": THUMB,
            "version": __version__,
            "source": str(Path(dataset.root).resolve()),
        }
        self.spec = json.loads(json.dumps(self.spec))  # as read back from the attributes (lists, not tuples)
        self.created = self._prepare() if prepare else False
        (barrier or (lambda: None))()
        self.store = Store(self.out, LEROBOT_FEATURES, mode="r+")
        self.complete = self.store.complete
        self._arrays = _arrays(self.store)
        self._progress = _progress(self.store, self._arrays)
        problems: list[str] = []
        self._flags = self._progress.read(problems)
        if problems:
            raise self.store.damaged(problems)
        self.written = 0
        """Chunks written by this object."""

    def _prepare(self) -> bool:
        """Check an existing cache's spec, or create an empty one whole; ``True`` if created."""
        if self.out.exists():
            open_existing(self.out, LEROBOT_FEATURES, self.spec)
            return False
        shape, bounds = tuple(self.spec["encoder"]["feature_shape"]), episode_bounds(self.dataset.meta)

        def declare(group: Any) -> None:
            n, c, k = self.n_frames, self.chunk_frames, self.n_chunks
            for camera in self.cameras:
                create_array(group, f"features/{camera}", (n, *shape), (c, *shape), self.spec["dtype"], 0)
                create_array(group, f"thumbs/{camera}", (n, 3, THUMB, THUMB), (c, 3, THUMB, THUMB), "float32", 0)
                create_array(group, f"checksums/{camera}", (k,), (1,), "int64", NO_CHECKSUM)
                create_array(group, f"thumb_checksums/{camera}", (k,), (1,), "int64", NO_CHECKSUM)
            create_array(group, "progress", (k,), (1,), "bool", False)
            episodes = create_array(group, "episodes", bounds.shape, bounds.shape, "int64", 0)
            episodes[...] = bounds

        create_store(self.out, LEROBOT_FEATURES, self.spec, declare)
        return True

    def frames(self, i: int) -> range:
        """Dataset indices of chunk ``i``."""
        return range(i * self.chunk_frames, min((i + 1) * self.chunk_frames, self.n_frames))

    def todo(self) -> list[int]:
        """Chunks not flagged done."""
        return [i for i in range(self.n_chunks) if not self._flags[i]]

    def encode_chunk(self, i: int) -> None:
        """Decode chunk ``i``'s frames once, encode each camera's in one batch, write, then flag it."""
        span = self.frames(i)
        frames = frames_of(self.dataset, self.cameras, span)
        device = next(self.encoder.encoder.parameters()).device
        for camera in self.cameras:
            x = frames[camera].to(device)
            features = encode_frames(self.encoder, camera, x)
            values = features.float().cpu().numpy().astype(self.spec["dtype"])
            self._arrays[f"features/{camera}"].write(span.start, values)
            self._arrays[f"thumbs/{camera}"].write(span.start, thumbnails(frames[camera]).numpy())
        self._progress.mark(i)  # only after every camera's chunk and its checksums are written
        self.written += 1

    def finish(self) -> bool:
        """Once every chunk is flagged: read the cache back, seal the episodes, then set ``complete``.

        Returns:
            Whether the cache is complete (``False`` while chunks are still to write).

        Raises:
            LeRobotCacheError: If chunks fail the read-back check (unflagged: rerun to redo them).
        """
        if self.complete:
            return True
        flags, self.complete = complete_when_flagged(self.store, [self._progress], _check_arrays, sealed=["episodes"])
        self._flags = flags[0]  # other ranks' flags too
        return self.complete

    def discard_if_unused(self) -> None:
        """Remove the cache if this object created it and wrote nothing (a run that failed at once)."""
        if self.created and self.written == 0:
            shutil.rmtree(self.out, ignore_errors=True)


def encode_frames(encoder: MultiCameraEncoder, camera: str, frames: torch.Tensor) -> torch.Tensor:
    """What the policy's heads read for ``frames`` of ``camera``: its eval view, ONE trunk pass, its fusion.

    Args:
        encoder: The policy's encoder.
        camera: The camera (its view: resize and centre crop).
        frames: ``(M, 3, H, W)`` float in [0, 1].

    Returns:
        ``(M, *feature_shape)``.
    """
    with torch.inference_mode():
        pixels, _ = to_pixels(encoder.encoder.transforms, encoder.view(camera), camera, frames, None, False)
        return encoder.encode_pixels(pixels)


def build_lerobot_cache(
    dataset: Any,
    encoder: MultiCameraEncoder,
    out: str | os.PathLike[str],
    cameras: Sequence[str] | None = None,
    dtype: str = "float16",
    chunk_frames: int = 8,
    progress: bool = False,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> Path:
    """Encode every frame of a LeRobotDataset's cameras into a feature cache (resumable, shardable).

    Args:
        dataset: The whole dataset (:func:`open_dataset`).
        encoder: The policy's encoder (``policy.encoder``; its device is used).
        out: The cache folder (resumed when it holds a cache of the same arguments).
        cameras: Cameras to cache (default: all of the policy's).
        dtype: ``"float16"`` or ``"float32"`` storage.
        chunk_frames: Frames per chunk and per encoder batch.
        progress: Show a progress bar (rank 0).
        rank: This process's rank when sharded.
        world_size: Number of processes sharing the chunks (round-robin).
        barrier: Synchronises ranks (``torch.distributed.barrier``); required when ``world_size > 1``.
        on_chunk: Called with the number of chunks this process has written, after each.

    Returns:
        The cache path.

    Raises:
        LeRobotCacheError: See :class:`LeRobotFeatureWriter`; or chunks that fail the final read-back.
        ValueError: For bad arguments.
    """
    if world_size > 1 and barrier is None:
        raise ValueError("world_size > 1 needs a barrier (torch.distributed.barrier)")
    sync = barrier or (lambda: None)
    writer = LeRobotFeatureWriter(dataset, encoder, out, cameras, dtype, chunk_frames, rank == 0, sync)
    if writer.complete:
        if rank == 0:  # a cache completed before its view was written (or by an older version): add it
            write_dataset_view(writer.out, dataset.root, writer.cameras)
        return writer.out
    todo = [i for i in writer.todo() if i % world_size == rank]
    from tqdm.auto import tqdm

    try:
        for i in tqdm(todo, desc=f"lerobot-cache {writer.out.name}", disable=not progress or rank != 0, unit="chunk"):
            writer.encode_chunk(i)
            if on_chunk is not None:
                on_chunk(writer.written)
    except Exception:
        if world_size == 1:
            writer.discard_if_unused()
        raise
    sync()
    if rank == 0 and writer.finish():
        write_dataset_view(writer.out, dataset.root, writer.cameras)
    sync()
    return writer.out


def verify_lerobot_cache(path: str | os.PathLike[str]) -> list[str]:
    """Check a whole LeRobot feature cache: arrays, seals, progress flags, checksums, the dataset view's links.

    Every chunk is read against its checksum; the links of the dataset view (``CACHE/dataset``) must
    still reach the source dataset.

    Returns:
        One line per problem found (empty when the cache is whole).

    Raises:
        LeRobotCacheError: If it is not a LeRobot feature cache of this format.
    """
    store = Store(Path(path), LEROBOT_FEATURES)
    problems = store.format_problems() or _check_arrays(store)
    if problems:
        return problems
    if store.complete:
        episodes = store.read_vector("episodes", problems)
        if episodes is not None:
            problems += store.seal_problems({"episodes": episodes})
    return problems + verify_progress([_progress(store, _arrays(store))]) + view_problems(path)


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


class LeRobotFeatureCache:
    """Read access to a complete LeRobot feature cache; each chunk is checked the first time it is read.

    Args:
        path: The cache folder.

    Raises:
        LeRobotCacheError: If it is missing (also a ``FileNotFoundError``), not a LeRobot feature cache,
            incomplete, or its arrays or sealed episode table disagree with its attributes.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.store = Store(self.path, LEROBOT_FEATURES)
        self.spec: dict[str, Any] = self.store.spec
        self._arrays = _arrays(self.store)
        if not self.store.complete:
            flags = self.store.read_vector("progress", [])
            done = 0 if flags is None else int(np.sum(flags))
            raise self.store.incomplete(done, len(_progress(self.store, self._arrays).units))
        problems = _check_arrays(self.store)
        episodes = self.store.read_vector("episodes", problems)
        if episodes is not None:
            problems += self.store.seal_problems({"episodes": episodes})
        if problems:
            raise self.store.damaged(problems)
        self.episodes = np.asarray(episodes, dtype=np.int64)
        """``(E, 2)``: each episode's ``[from, to)`` dataset indices."""

    @property
    def cameras(self) -> list[str]:
        """The cached cameras."""
        return list(self.spec["cameras"])

    def __len__(self) -> int:
        return int(self.spec["n_frames"])

    def check(self, encoder: MultiCameraEncoder, meta: Any | None) -> None:
        """Raise unless this cache holds ``encoder``'s features of the dataset ``meta`` describes.

        Args:
            encoder: The policy's encoder.
            meta: The dataset's ``LeRobotDatasetMetadata``, or ``None`` to check the encoder only.

        Raises:
            LeRobotCacheError: Naming every field that differs (``encoder.variant: cache 'tiny',
                policy 'small'``, ``dataset.total_frames: ...``).
        """
        differ = _differences("encoder", self.spec["encoder"], encoder_spec(encoder, self.cameras), "policy")
        if meta is not None:  # the dataset itself or this cache's view of it (its cameras put back)
            fingerprint = dataset_fingerprint(meta, dataset_features(meta, self.path))
            differ += _differences("dataset", self.spec["dataset"], fingerprint, "dataset")
        if differ:
            raise LeRobotCacheError(
                f"LeRobot feature cache {self.path} was built for another policy or dataset ({'; '.join(differ)}): "
                "rebuild it with `sam2-encoder lerobot-cache` and the same --policy options, or train without "
                "--policy.feature_cache"
            )

    def windows(self, index: torch.Tensor, episode: torch.Tensor, deltas: Sequence[int]) -> np.ndarray:
        """LeRobot's observation windows: ``index + delta`` clamped into each row's episode.

        Args:
            index: ``(B,)`` absolute dataset indices (the batch's ``index``).
            episode: ``(B,)`` episode indices (the batch's ``episode_index``).
            deltas: The policy's ``observation_delta_indices``.

        Returns:
            ``(B, len(deltas))`` int64 dataset indices (LeRobot repeats an episode's edge frame).
        """
        idx = index.detach().cpu().numpy().astype(np.int64).reshape(-1)
        ep = episode.detach().cpu().numpy().astype(np.int64).reshape(-1)
        if ep.size and (ep.min() < 0 or ep.max() >= len(self.episodes)):
            raise LeRobotCacheError(
                f"episode_index {int(ep.max())} is outside LeRobot feature cache {self.path} "
                f"({len(self.episodes)} episodes)"
            )
        start, stop = self.episodes[ep, 0:1], self.episodes[ep, 1:2] - 1
        return np.clip(idx[:, None] + np.asarray(deltas, dtype=np.int64)[None, :], start, stop)

    def read(self, name: str, rows: np.ndarray) -> torch.Tensor:
        """Rows of ``features/<camera>`` or ``thumbs/<camera>``, ``(*rows.shape, ...)`` float32, checked."""
        if name not in self._arrays:
            raise KeyError(f"LeRobot feature cache {self.path} has cameras {self.cameras}; asked for {name!r}")
        unique, inverse = np.unique(frame_index(rows.reshape(-1), len(self), self.store), return_inverse=True)
        block = torch.from_numpy(self._arrays[name].read(unique).astype(np.float32))
        return block[torch.from_numpy(inverse.reshape(-1))].reshape(*rows.shape, *block.shape[1:])


def _differences(part: str, cached: Mapping[str, Any], now: Mapping[str, Any], what: str) -> list[str]:
    """``part.field: cache X, <what> Y`` for every field of ``now`` that differs (JSON-normalised)."""
    now = json.loads(json.dumps(now))
    return [f"{part}.{f}: cache {cached.get(f)!r}, {what} {now[f]!r}" for f in now if cached.get(f) != now[f]]


class CachedCameras:
    """Serves cached features in place of a training batch's frames (``--policy.feature_cache``).

    Args:
        path: The cache folder.
        encoder: The policy's encoder (checked against the cache).
        deltas: The policy's ``observation_delta_indices``.
        meta: The dataset's metadata (``make_policy``'s ``dataset_meta``), or ``None`` (then only the
            encoder is checked; every batch's frames are still checked against the thumbnails).

    Raises:
        LeRobotCacheError: See :meth:`LeRobotFeatureCache.check`.
    """

    def __init__(
        self, path: str | os.PathLike[str], encoder: MultiCameraEncoder, deltas: Sequence[int], meta: Any = None
    ) -> None:
        self.cache = LeRobotFeatureCache(path)
        self.cache.check(encoder, meta)
        self.deltas = list(deltas)
        self.cameras = self.cache.cameras

    def substitute(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """``batch`` with each cached camera's frames replaced by their features.

        Args:
            batch: A LeRobot training batch: ``index`` and ``episode_index`` ``(B,)``, cameras
                ``(B, T, 3, H, W)`` (or ``(B, 3, H, W)`` when ``T == 1``) float in [0, 1]. A cached
                camera may be absent (a batch of the cache's dataset view, ``CACHE/dataset``: its
                video is never decoded); present frames are checked against the cache's thumbnails.

        Returns:
            The batch with cameras ``(B, T, *feature_shape)`` float32 on the frames' device.

        Raises:
            KeyError: Without ``index`` / ``episode_index`` in the batch.
            LeRobotCacheError: If a batch's frames differ from the frames the cache was built from
                (image augmentation, or another dataset), or a chunk is damaged (named).
        """
        for key in ("index", "episode_index"):
            if key not in batch:
                raise KeyError(
                    f"sam2_diffusion: feature_cache reads the batch's {key!r} (LeRobot's dataset adds it); got keys "
                    f"{sorted(batch)}"
                )
        rows = self.cache.windows(batch["index"], batch["episode_index"], self.deltas)
        out = dict(batch)
        for camera in self.cameras:
            frames = batch.get(camera)
            if frames is not None:
                self._check_frames(camera, frames.reshape(len(rows), len(self.deltas), *frames.shape[-3:]), rows)
            device = frames.device if frames is not None else batch["index"].device
            out[camera] = self.cache.read(f"features/{camera}", rows).to(device)
        return out

    def _check_frames(self, camera: str, frames: torch.Tensor, rows: np.ndarray) -> None:
        """Refuse a batch whose frames are not the ones cached (their thumbnails differ)."""
        seen = thumbnails(frames.detach()).cpu()  # pooled where the frames are (a GPU), then moved
        cached = self.cache.read(f"thumbs/{camera}", rows)
        gap = (seen - cached).abs().amax(dim=(-3, -2, -1))
        if float(gap.max()) > _THUMB_ATOL:
            b, t = np.unravel_index(int(gap.argmax()), tuple(gap.shape))
            raise LeRobotCacheError(
                f"sam2_diffusion: the frames of cached camera {camera!r} in this batch are not the frames the feature "
                f"cache {self.cache.path} was built from (dataset frame {int(rows[b, t])}: thumbnails differ by "
                f"{float(gap.max()):.4f}): image augmentation (--dataset.image_transforms.enable=true) is not "
                "supported on cached cameras; or the dataset changed since the cache was built (rebuild it)"
            )
