"""A zarr cache of frozen SAM 2 features for a Diffusion Policy replay buffer.

With a frozen trunk every epoch re-encodes the same frames; encoding them once makes policy
training many times faster. Layout (zarr-2 format, readable by zarr 2.18 and zarr 3)::

    CACHE.zarr/
      .zattrs                   {"sam2_encoder": {format, variant, weights, image_size, levels, dtype,
                                 keys, n_frames, chunk_frames, transforms, version, source,
                                 complete}}
      features/<key>/<level>    (N, C, h, w) float16 (or float32), chunked by chunk_frames frames
      checksums/<key>/<level>   (n_chunks,) int64: CRC-32 of each chunk's values, -1 until written
      progress/<key>            (n_chunks,) bool, one zarr chunk per flag

What is stored and the spec that refuses a mismatched cache are this module's; integrity (format
version, per-chunk CRC-32, progress flags, first-read verification, ``--verify``, crash-safe
creation) is the :mod:`.store`'s, shared with the mask cache.

Writing is resumable and safe to kill at any time: each chunk of frames is encoded, written, its
checksums recorded, and only then flagged done; a rerun with the same arguments skips flagged
chunks and recomputes the rest with the same batch composition, so the result is byte-identical to
an uninterrupted run. When every chunk is flagged, the whole cache is read back and checked against
its checksums; only then is ``complete`` set (last). Under ``torchrun`` chunks are shared
round-robin across ranks.

Readers serve the layout an encoder's heads read (``layout``): ``"pool"`` (``fuse="pool"``: the
levels average-pooled onto the coarsest grid and concatenated) or ``"packed"``
(``fuse="coarse_to_fine"``: s4, s8 and s16 folded losslessly onto the s16 grid by
``pooling.pack_pyramid``, ``(1024, S/16, S/16)``; the cache must hold all three levels).

What is verified when:

* opening (:class:`FeatureCache`): the attributes exist, the format is this version's, the cache is
  complete, and every array has the recorded dtype, frame count and chunking;
* reading (:meth:`FeatureCache.fused`): the first time a chunk is read (per process), all of it is
  decoded and its CRC-32 compared with the recorded one; a missing chunk file (which zarr would
  silently read as zeros), a truncated or altered one, or a missing checksum raises
  :class:`CacheError` naming the array, chunk and frames. Later reads of that chunk are not
  re-checked;
* :func:`verify_cache` (``sam2-encoder cache --verify CACHE``): every chunk of every array, plus
  the progress flags, reporting each problem.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..checkpoints import find_local_path
from ..image_encoder import LEVELS, SAM2ImageEncoder
from ..memory_cache import memory_cache_problems
from ..policy_memory import MemoryModules
from ..pooling import fuse_levels, pack_pyramid
from .dp_base import DPDatasetWrapper, dp_classes, sequence_frames
from .feature_store import (
    FEATURES,
    CacheError,
    check_feature_arrays,
    feature_arrays,
    feature_progress,
    verify_cache,
)
from .replay import replay_frames
from .store import (
    NO_CHECKSUM,
    ChecksummedArray,
    Store,
    complete_when_flagged,
    create_store,
    frame_index,
    open_existing,
)
from .zarr_io import create_array

__all__ = [
    "FEATURES",
    "LAYOUTS",
    "CacheError",
    "CachedFeatureDataset",
    "FeatureCache",
    "FeatureWriter",
    "build_cache",
    "check_layout",
    "default_cache_path",
    "fill_cache",
    "sequence_frames",
    "verify_cache",
]

LAYOUTS = {"pool": "pool", "packed": "packed", "coarse_to_fine": "packed"}
"""What the heads read from a cache, by ``layout`` (an encoder's ``fuse`` value names its layout too):
``"pool"`` fuses levels onto the coarsest grid (``fuse="pool"``); ``"packed"`` folds s4, s8 and s16
onto the s16 grid without loss (``pooling.pack_pyramid``; ``fuse="coarse_to_fine"``)."""


def check_layout(layout: str) -> str:
    """``"pool"`` or ``"packed"`` for a layout name (``"coarse_to_fine"`` is ``"packed"``).

    Raises:
        ValueError: Naming the value and the choices.
    """
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(
            f"layout must be one of {sorted(LAYOUTS)} (an encoder's fuse value names its own), got {layout!r}"
        )
    return LAYOUTS[layout]


# --------------------------------------------------------------------------------------------
# features
# --------------------------------------------------------------------------------------------


def default_cache_path(replay: str | os.PathLike[str], variant: str, image_size: int) -> Path:
    """``REPLAY.zarr`` -> ``REPLAY.<variant>_<size>.features.zarr`` beside it."""
    replay = Path(replay)
    stem = replay.name.removesuffix(".zarr")
    return replay.with_name(f"{stem}.{variant}_{image_size}.features.zarr")


def _spec(
    encoder: SAM2ImageEncoder,
    keys: Sequence[str],
    levels: Sequence[str],
    dtype: str,
    n_frames: int,
    chunk: int,
    source: str,
    weights: str | None = None,
) -> dict[str, Any]:
    t = encoder.transforms
    return {
        "variant": encoder.variant.name,
        "weights": encoder.weights_id if weights is None else weights,
        "image_size": list(encoder.image_size),
        "levels": list(levels),
        "dtype": dtype,
        "keys": list(keys),
        "n_frames": int(n_frames),
        "chunk_frames": int(chunk),
        "transforms": {
            "input": "uint8 HWC",
            "channel_order": t.channel_order,
            "resize": "bilinear, antialias, to image_size (aspect not kept)",
            "normalize": "imagenet",
            "crop": None,
        },
        "version": __version__,
        "source": source,
    }


def _check_build_args(
    keys: Sequence[str], levels: Sequence[str], dtype: str, chunk_frames: Any, extra: bool = False
) -> tuple[list[str], int]:
    """``(levels in pyramid order, chunk_frames)`` after checking every build argument."""
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
    if isinstance(keys, str) or not keys:
        raise ValueError(f"keys must be a non-empty list of replay-buffer keys, got {keys!r}")
    if len(set(keys)) != len(keys):
        raise ValueError(f"keys must be distinct, got {list(keys)}")
    if isinstance(levels, str):
        levels = [levels]
    unknown = [lv for lv in levels if lv not in LEVELS]
    levels = [lv for lv in LEVELS if lv in levels]
    if unknown or not (levels or extra):
        raise ValueError(f"levels must be a non-empty subset of {LEVELS}, got {unknown or list(levels)}")
    if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int | np.integer) or chunk_frames < 1:
        raise ValueError(f"chunk_frames must be a whole number >= 1, got {chunk_frames!r}")
    return levels, int(chunk_frames)


class FeatureWriter:
    """A feature cache being written: created (or checked against its arguments) on construction.

    Chunks are written whole, their checksums recorded, and only then flagged done, either from a
    batch of frames encoded here (:meth:`encode_chunk`) or frame by frame from pyramids computed
    elsewhere (:meth:`put`, e.g. the tracker's one encoder pass per frame: a chunk is written once
    all its frames have arrived). :meth:`finish` reads the whole cache back against its checksums
    and sets ``complete``. :func:`build_cache` is this class driven over every chunk.

    Args:
        replay: The replay buffer (see :func:`build_cache`).
        keys: Image keys under ``data/`` the cache holds.
        encoder: The image encoder (its variant, image size and transforms are recorded; it
            encodes the chunks of :meth:`encode_chunk`).
        out: Cache path (default: :func:`default_cache_path`).
        levels: Pyramid levels to store.
        dtype: ``"float16"`` or ``"float32"``.
        chunk_frames: Frames per zarr chunk.
        weights: Identity of the weights recorded in the cache (default: ``encoder.weights_id``);
            for pyramids that come from another module sharing the weights (the tracker's).
        prepare: Create or check the folder (rank 0 only when sharded).
        barrier: Called after preparing (ranks wait for rank 0).
        extra: More per-frame maps stored after ``levels``, ``{name: (C, h, w)}`` (a subclass's
            :meth:`encode_chunk` computes them; the policy memory's cache stores ``s16_neck`` and
            ``memory``, see :mod:`.memory_cache`).
        extra_spec: More attributes recorded in (and checked against) the cache's spec.

    Raises:
        CacheError: If an existing cache at ``out`` was built with other arguments, or is not one.
        KeyError: If a key is not in the replay buffer.
        ValueError: For bad arguments or frames that are not (N, H, W, 3) uint8.
    """

    def __init__(
        self,
        replay: str | os.PathLike[str],
        keys: Sequence[str],
        encoder: SAM2ImageEncoder,
        out: str | os.PathLike[str] | None = None,
        levels: Sequence[str] = ("s16",),
        dtype: str = "float16",
        chunk_frames: int = 32,
        weights: str | None = None,
        prepare: bool = True,
        barrier: Callable[[], None] | None = None,
        extra: Mapping[str, tuple[int, int, int]] | None = None,
        extra_spec: Mapping[str, Any] | None = None,
    ) -> None:
        extra = dict(extra or {})
        levels, chunk_frames = _check_build_args(keys, levels, dtype, chunk_frames, bool(extra))
        levels = levels + list(extra)
        self.keys, self.levels, self.dtype, self.chunk_frames = list(keys), levels, dtype, chunk_frames
        self.encoder = encoder
        if out is None:
            out = default_cache_path(replay, encoder.variant.name, encoder.image_size[0])
        self.out = Path(out)
        self.data, self.n_frames = replay_frames(replay, keys)
        self.spec = _spec(
            encoder, keys, levels, dtype, self.n_frames, chunk_frames, str(Path(replay).resolve()), weights
        )
        self.spec.update(extra_spec or {})
        self.shapes = {**encoder.feature_shapes(), **extra}
        self.n_chunks = math.ceil(self.n_frames / chunk_frames)
        self.created = self._prepare() if prepare else False
        (barrier or (lambda: None))()
        self.store = Store(self.out, FEATURES, mode="r+")
        self.complete = self.store.complete
        self._arrays = feature_arrays(self.store)
        self._progress = feature_progress(self.store, self._arrays)
        problems: list[str] = []
        self._flags = {key: progress.read(problems) for key, progress in self._progress.items()}
        if problems:
            raise self.store.damaged(problems)
        self._pending: dict[tuple[str, int], tuple[dict[str, np.ndarray], np.ndarray]] = {}
        self.written = 0
        """Chunks written by this object."""

    def _prepare(self) -> bool:
        """Check an existing cache's settings, or create an empty one whole; ``True`` if created."""
        if self.out.exists():
            open_existing(self.out, FEATURES, self.spec)
            return False

        def declare(group: Any) -> None:
            for key in self.keys:
                for level in self.levels:
                    c, h, w = self.shapes[level]
                    shape, chunks = (self.n_frames, c, h, w), (self.chunk_frames, c, h, w)
                    create_array(group, f"features/{key}/{level}", shape, chunks, self.dtype, 0)
                    create_array(group, f"checksums/{key}/{level}", (self.n_chunks,), (1,), "int64", NO_CHECKSUM)
                create_array(group, f"progress/{key}", (self.n_chunks,), (1,), "bool", False)

        create_store(self.out, FEATURES, self.spec, declare)
        return True

    def frames(self, i: int) -> range:
        """Replay-buffer frames of chunk ``i``."""
        return range(i * self.chunk_frames, min((i + 1) * self.chunk_frames, self.n_frames))

    def todo(self, key: str) -> list[int]:
        """Chunks of ``key`` not flagged done."""
        return [i for i in range(self.n_chunks) if not self._flags[key][i]]

    def needs(self, key: str, start: int, stop: int) -> bool:
        """Whether any chunk holding frames ``[start, stop)`` of ``key`` is still to write."""
        first, last = start // self.chunk_frames, (max(stop, start + 1) - 1) // self.chunk_frames
        return not self._flags[key][first : last + 1].all()

    def encode_chunk(self, key: str, i: int) -> None:
        """Encode chunk ``i`` of ``key`` in one batch with :attr:`encoder` and write it."""
        span = self.frames(i)
        frames = torch.from_numpy(np.asarray(self.data[key][span.start : span.stop]))
        with torch.inference_mode():
            pyramid = self.encoder(frames)
        self._write(key, i, {level: self._values(pyramid[level]) for level in self.levels})

    def encode_chunks(
        self, chunks: Sequence[tuple[str, int]], progress: bool = False, stop_after: int | None = None
    ) -> bool:
        """Encode and write ``(key, chunk)`` pairs in order (:meth:`encode_chunk`).

        Args:
            chunks: The ``(key, chunk index)`` pairs.
            progress: Show a progress bar.
            stop_after: Stop once this object has written this many chunks.

        Returns:
            ``False`` if it stopped early (``stop_after``), else ``True``.
        """
        from tqdm.auto import tqdm

        for key, i in tqdm(chunks, desc=f"cache {self.out.name}", disable=not progress, unit="chunk"):
            if stop_after is not None and self.written >= stop_after:
                return False
            self.encode_chunk(key, i)
        return True

    def put(self, key: str, frame: int, pyramid: Any) -> None:
        """Take one frame's pyramid (batch 1); its chunk is written once all its frames are in.

        Frames of chunks already done are ignored (a rerun recomputes whole episodes).

        Args:
            key: The replay-buffer key.
            frame: The frame's index in the replay buffer.
            pyramid: Its :class:`~sam2_encoder.image_encoder.FeaturePyramid`, levels ``(1, C, h, w)``.
        """
        i = int(frame) // self.chunk_frames
        if self._flags[key][i]:
            return
        span = self.frames(i)
        if (key, i) not in self._pending:
            maps = {level: np.empty((len(span), *self.shapes[level]), dtype=self.dtype) for level in self.levels}
            self._pending[(key, i)] = (maps, np.zeros(len(span), dtype=bool))
        maps, filled = self._pending[(key, i)]
        for level in self.levels:
            maps[level][int(frame) - span.start] = self._values(pyramid[level])[0]
        filled[int(frame) - span.start] = True
        if filled.all():
            del self._pending[(key, i)]
            self._write(key, i, maps)

    def _values(self, level: torch.Tensor) -> np.ndarray:
        return level.float().cpu().numpy().astype(self.dtype)

    def _write(self, key: str, i: int, maps: Mapping[str, np.ndarray]) -> None:
        for level in self.levels:
            self._arrays[(key, level)].write(self.frames(i).start, maps[level])
        self._progress[key].mark(i)  # only after the data and its checksums are written
        self.written += 1

    def finish(self) -> bool:
        """Once every chunk of every key is flagged: read the cache back, then set ``complete``.

        Returns:
            Whether the cache is complete (``False`` while chunks are still to write).

        Raises:
            CacheError: If chunks fail the read-back check (they are unflagged: rerun to redo them).
        """
        if self.complete:
            return True
        keys = list(self._progress)
        flags, self.complete = complete_when_flagged(self.store, list(self._progress.values()), check_feature_arrays)
        self._flags = dict(zip(keys, flags))  # other ranks' flags too
        return self.complete

    def discard_if_unused(self) -> None:
        """Remove the cache if this object created it and wrote nothing (a run that failed at once)."""
        if self.created and self.written == 0:
            shutil.rmtree(self.out, ignore_errors=True)


def build_cache(
    replay: str | os.PathLike[str],
    keys: Sequence[str],
    encoder: SAM2ImageEncoder,
    out: str | os.PathLike[str] | None = None,
    levels: Sequence[str] = ("s16",),
    dtype: str = "float16",
    chunk_frames: int = 32,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] | None = None,
    stop_after_chunks: int | None = None,
) -> Path:
    """Encode the frames of a replay buffer into a feature cache (resumable, shardable).

    Args:
        replay: Diffusion Policy replay buffer (``data/<key>`` (N, H, W, 3) uint8,
            ``meta/episode_ends``), zarr-2 format (zarr-3 format is read with zarr 3 installed).
        keys: Image keys under ``data/`` to encode.
        encoder: The (frozen) image encoder; its device is used.
        out: Cache path (default: :func:`default_cache_path`).
        levels: Pyramid levels to store.
        dtype: ``"float16"`` or ``"float32"``.
        chunk_frames: Frames per zarr chunk and per encoder batch.
        progress: Show a progress bar (rank 0).
        rank: This process's rank when sharded.
        world_size: Number of processes sharing the work.
        barrier: Synchronises ranks (``torch.distributed.barrier``); required when
            ``world_size > 1``.
        stop_after_chunks: Stop after encoding this many chunks (leaves the cache incomplete;
            used to demonstrate resumption).

    Returns:
        The cache path.

    Raises:
        CacheError: If an existing cache at ``out`` was built with other arguments, or a chunk
            fails the final read-back check (its flag is cleared: rerun to re-encode it).
        KeyError: If a key is not in the replay buffer.
        ValueError: For bad arguments or frames that are not (N, H, W, 3) uint8.
    """
    _check_build_args(keys, levels, dtype, chunk_frames)
    if world_size > 1 and barrier is None:
        raise ValueError("world_size > 1 needs a barrier (torch.distributed.barrier)")
    sync = barrier or (lambda: None)
    writer = FeatureWriter(replay, keys, encoder, out, levels, dtype, chunk_frames, prepare=rank == 0, barrier=sync)
    return fill_cache(writer, progress, rank, world_size, sync, stop_after_chunks)


def fill_cache(
    writer: FeatureWriter,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] | None = None,
    stop_after_chunks: int | None = None,
) -> Path:
    """Encode every chunk of a writer's keys not flagged done (this rank's share), then finish the cache.

    The loop of :func:`build_cache` (arguments as there), for any :class:`FeatureWriter`.

    Returns:
        The cache path.
    """
    sync = barrier or (lambda: None)
    keys = writer.keys
    if writer.complete:
        return writer.out
    todo = [(key, i) for key in keys for i in writer.todo(key) if i % world_size == rank]
    try:
        if not writer.encode_chunks(todo, progress and rank == 0, stop_after_chunks):
            return writer.out
    except Exception:
        if world_size == 1:  # nothing of this run worth keeping
            writer.discard_if_unused()
        raise
    sync()
    if rank == 0:
        writer.finish()
    sync()
    return writer.out


# --------------------------------------------------------------------------------------------
# checking
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


class FeatureCache:
    """Read access to a complete feature cache, checking each chunk the first time it is read.

    Args:
        path: The cache folder.

    Raises:
        CacheError: If the folder is not a sam2_encoder cache of this format (also a
            ``FileNotFoundError`` if there is none, a ``ValueError`` if it is no zarr group), is
            incomplete, or an array's dtype, frame count or chunking disagrees with the metadata.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = find_local_path(path)
        self.store = Store(self.path, FEATURES)
        self.spec: dict[str, Any] = self.store.spec
        self._arrays = feature_arrays(self.store)
        if not self.store.complete:
            flags = [self.store.read_vector(p.flags, []) for p in feature_progress(self.store, self._arrays).values()]
            done = sum(int(np.sum(f)) for f in flags if f is not None)
            raise self.store.incomplete(done, len(self.keys) * math.ceil(len(self) / int(self.spec["chunk_frames"])))
        problems = check_feature_arrays(self.store)
        if problems:
            raise self.store.damaged(problems)

    @property
    def keys(self) -> list[str]:
        """Encoded replay-buffer keys."""
        return list(self.spec["keys"])

    @property
    def levels(self) -> list[str]:
        """Stored pyramid levels."""
        return list(self.spec["levels"])

    def __len__(self) -> int:
        return int(self.spec["n_frames"])

    def _array(self, key: str, level: str) -> ChecksummedArray:
        if key not in self.keys or level not in self.levels:
            raise KeyError(f"cache has keys {self.keys} and levels {self.levels}; asked for {key!r} / {level!r}")
        return self._arrays[(key, level)]

    def array(self, key: str, level: str):
        """The zarr array ``features/<key>/<level>``, shape ``(N, C, h, w)`` (not checked: see :meth:`fused`)."""
        return self._array(key, level).data

    @property
    def holds_memory(self) -> bool:
        """Whether this is a policy memory's cache (``s16_neck`` and ``memory`` maps, see :mod:`.memory_cache`)."""
        return isinstance(self.spec.get("memory"), Mapping)

    def maps(self, key: str, frames: np.ndarray | Sequence[int], levels: Sequence[str]) -> list[torch.Tensor]:
        """Stored maps of some frames as they are: ``[(len(frames), C, h, w) float32]``, one per level.

        Each chunk is verified against its checksum the first time it is read.

        Raises:
            KeyError: For a key or level the cache does not hold.
            IndexError: For a frame index outside the cache.
            CacheError: For a missing or damaged chunk.
        """
        unique, inverse = np.unique(frame_index(frames, len(self), self.store), return_inverse=True)
        index = torch.from_numpy(inverse.reshape(-1))
        return [torch.from_numpy(self._array(key, level).read(unique).astype(np.float32))[index] for level in levels]

    def refuse_memory(self, reader: str) -> None:
        """Refuse a policy memory's cache in a memoryless reader, naming the reader to use.

        Raises:
            CacheError: If :attr:`holds_memory`.
        """
        if self.holds_memory:
            raise CacheError(
                f"feature cache {self.path} holds policy-memory features (built with --memory sam2: levels "
                f"{self.levels}); {reader} serves memoryless caches: use MemoryCacheDataset "
                "(sam2_encoder.diffusion_policy.memory_cache) with an encoder with memory='sam2'"
            )

    def check_chunks(self, key: str, level: str, chunks: Sequence[int]) -> None:
        """Verify chunks not yet verified by this object against their recorded CRC-32.

        Raises:
            CacheError: Naming the array, chunk, frames and what is wrong (missing file, no
                checksum, undecodable, or changed values).
        """
        self._array(key, level).check(chunks)

    def fused(
        self,
        key: str,
        frames: np.ndarray | Sequence[int],
        levels: Sequence[str] | None = None,
        layout: str = "pool",
    ) -> torch.Tensor:
        """Features of some frames in the layout an encoder's heads read (its ``feature_shape``).

        Each chunk is verified against its checksum the first time it is read (:meth:`check_chunks`).

        Args:
            key: Replay-buffer key.
            frames: Frame indices in ``[0, len(self))`` (any order, repeats allowed).
            levels: Levels to fuse (default: all stored). With ``layout="packed"``: ``None``,
                ``["s16"]`` (an encoder's default, which coarse-to-fine widens) or all three.
            layout: ``"pool"``: the levels average-pooled onto the coarsest one's grid and
                concatenated (``fuse="pool"``); ``"packed"`` (or ``"coarse_to_fine"``): the packed
                pyramid of s4, s8 and s16 (``fuse="coarse_to_fine"``), see :data:`LAYOUTS`.

        Returns:
            ``(len(frames), C, h, w)`` float32: ``C = sum C_level`` pooled, or ``1024`` packed,
            on the coarsest level's ``(h, w)`` grid.

        Raises:
            IndexError: For a frame index outside the cache.
            ValueError: For an unknown layout, or levels that a packed layout does not read.
            CacheError: For a missing or damaged chunk, or a packed layout from a cache that
                lacks one of s4, s8, s16.
        """
        layout = check_layout(layout)
        if layout == "packed":
            levels = self.packed_levels(levels)
        self.refuse_memory("FeatureCache.fused")
        maps = self.maps(key, frames, levels or self.levels)
        return pack_pyramid(maps) if layout == "packed" else fuse_levels(maps)

    def packed_levels(self, levels: Sequence[str] | None = None) -> list[str]:
        """The levels a packed layout reads (s4, s8, s16), checked against ``levels`` and the cache.

        Args:
            levels: ``None``, ``["s16"]`` (an encoder's default, which coarse-to-fine widens to all
                three) or all three levels.

        Raises:
            ValueError: For other ``levels``.
            CacheError: If the cache lacks one of the three levels.
        """
        if levels is not None:
            asked = [levels] if isinstance(levels, str) else list(levels)
            if sorted(asked) not in (["s16"], sorted(LEVELS)):
                raise ValueError(
                    f"the packed layout (fuse='coarse_to_fine') reads s4, s8 and s16; got levels={asked} "
                    "(leave levels out, or give all three)"
                )
        missing = [lv for lv in LEVELS if lv not in self.levels]
        if missing:
            raise CacheError(
                f"feature cache {self.path} holds levels {self.levels}, but the packed layout (fuse='coarse_to_fine') "
                f"needs s4, s8 and s16 (lacks {missing}): build one with `sam2-encoder cache ... --levels s4 s8 s16`"
            )
        return list(LEVELS)

    def check_compatible(
        self,
        encoder: SAM2ImageEncoder,
        levels: Sequence[str],
        layout: str = "pool",
        memory: MemoryModules | None = None,
    ) -> None:
        """Raise unless this cache holds ``encoder``'s features for ``levels``.

        Args:
            encoder: The image encoder (a ``MultiCameraEncoder``'s ``.encoder``).
            levels: Levels the heads read.
            layout: ``"pool"`` or ``"packed"`` / ``"coarse_to_fine"`` (then ``levels`` must be all
                three; see :meth:`fused`).
            memory: The encoder's memory modules (``memory="sam2"``). A policy memory's cache
                (:attr:`holds_memory`) is checked by :func:`~sam2_encoder.memory_cache.memory_cache_problems`:
                with ``memory``, its ``memory_source`` and weights too; with ``None``, the trunk only.

        Raises:
            CacheError: Naming every disagreement (variant, weights, image size, levels).
            ValueError: For an unknown layout.
        """
        if self.holds_memory or memory is not None:
            fuse = "coarse_to_fine" if check_layout(layout) == "packed" else "pool"
            problems = memory_cache_problems(self.spec, encoder, levels, fuse, memory)
            if problems:
                raise CacheError(f"feature cache {self.path} does not match the encoder: " + "; ".join(problems))
            return
        if check_layout(layout) == "packed":
            levels = list(LEVELS)
        problems = []
        if self.spec["variant"] != encoder.variant.name:
            problems.append(f"variant {self.spec['variant']!r} in the cache vs {encoder.variant.name!r}")
        if list(self.spec["image_size"]) != list(encoder.image_size):
            problems.append(f"image_size {self.spec['image_size']} in the cache vs {list(encoder.image_size)}")
        missing = [lv for lv in levels if lv not in self.levels]
        if missing:
            why = ""
            if check_layout(layout) == "packed":
                why = " (fuse='coarse_to_fine' reads s4, s8 and s16: build the cache with --levels s4 s8 s16)"
            problems.append(f"levels {self.levels} in the cache lack {missing}{why}")
        if self.spec["weights"] != encoder.weights_id:
            problems.append(f"weights {self.spec['weights']} in the cache vs {encoder.weights_id}")
        if problems:
            raise CacheError(f"feature cache {self.path} does not match the encoder: " + "; ".join(problems))


# --------------------------------------------------------------------------------------------
# Diffusion Policy dataset wrapper
# --------------------------------------------------------------------------------------------


class CachedFeatureDataset(DPDatasetWrapper):
    """Serves cached SAM 2 features in place of images for a Diffusion Policy dataset.

    Wraps a DP image dataset (anything with ``sampler.indices`` / ``sampler.sequence_length`` like
    DP's ``SequenceSampler``, ``__getitem__`` returning ``{"obs": {...}, "action": ...}`` and
    ``get_normalizer()``). For each cached obs key, ``obs[key]`` becomes the features of the
    sample's frames in the encoder's layout, ``(T, *feature_shape)`` float32, which
    ``SAM2ObsEncoder`` feeds straight to its head. The normaliser maps those keys through the
    identity.

    Args:
        feature_cache: Path of a complete cache.
        cached_keys: ``{obs key: replay-buffer key}``, e.g. ``{"image": "img"}``.
        levels: Levels to fuse (must match the encoder's ``levels``); default: all stored.
        layout: What the encoder's heads read: ``"pool"`` (``fuse="pool"``: ``levels`` pooled
            onto the coarsest grid) or ``"packed"`` (``fuse="coarse_to_fine"``: s4, s8 and s16
            packed onto the s16 grid, ``(1024, S/16, S/16)``; the cache must hold all three).
            The encoder's ``fuse`` value is accepted as is (``layout: ${policy.obs_encoder.fuse}``).
        dataset: The DP dataset to wrap, or ``None`` to build ``dataset_target(**dataset_kwargs)``.
        dataset_target: Import path of the DP dataset class (used from Hydra configs, where this
            node is merged over the task's dataset node, whose arguments arrive as kwargs), or a list
            of paths: our wrappers outermost first, then the DP dataset class (see
            :class:`~.dp_base.DPDatasetWrapper`; e.g. masks over cached features).
        n_obs_steps: Only the first ``n_obs_steps`` steps get features (the rest are zeros, which
            DP's policy never reads); ``None`` fills every step.
        **dataset_kwargs: Arguments of ``dataset_target``.
    """

    def __init__(
        self,
        feature_cache: str | os.PathLike[str],
        cached_keys: Mapping[str, str],
        levels: Sequence[str] | None = None,
        dataset: Any = None,
        dataset_target: str | Sequence[str] | None = None,
        n_obs_steps: int | None = None,
        layout: str = "pool",
        **dataset_kwargs: Any,
    ) -> None:
        self.layout = check_layout(layout)
        super().__init__(dataset, dataset_target, dataset_kwargs)
        self.cache = FeatureCache(feature_cache)
        self.cache.refuse_memory("CachedFeatureDataset")
        self.cached_keys = dict(cached_keys)
        unknown = [v for v in self.cached_keys.values() if v not in self.cache.keys]
        if unknown:
            raise CacheError(f"cache {self.cache.path} has keys {self.cache.keys}, not {unknown}")
        if self.layout == "packed":
            self.levels = self.cache.packed_levels(levels)
        else:
            self.levels = list(levels) if levels is not None else self.cache.levels
        self.n_obs_steps = n_obs_steps
        self.served_keys = tuple(self.cached_keys)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        item = self.dataset[idx]
        frames = self.sample_frames(idx)
        steps = len(frames) if self.n_obs_steps is None else min(self.n_obs_steps, len(frames))
        obs = dict(item["obs"])
        for obs_key, cache_key in self.cached_keys.items():
            features = self.cache.fused(cache_key, frames[:steps], self.levels, self.layout)
            if steps < len(frames):
                features = torch.cat([features, features.new_zeros(len(frames) - steps, *features.shape[1:])])
            obs[obs_key] = features
        return {**item, "obs": obs}


__getattr__ = dp_classes(globals(), {"DPCachedFeatureDataset": CachedFeatureDataset})
"""``DPCachedFeatureDataset``: :class:`CachedFeatureDataset` that is also DP's ``BaseImageDataset`` (DP's
workspace asserts it), created on first use so that DP is imported only by configs that ask for it."""
