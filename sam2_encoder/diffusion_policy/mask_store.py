"""The mask cache on disk: its store kind and error, its arrays and episode flags, the whole-cache check.

numpy and zarr only (no torch, no transformers), so ``sam2-encoder masks --verify`` starts fast;
:mod:`.mask_cache` writes and reads caches of this layout (see its module doc).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .store import ChecksummedArray, Progress, Store, StoreError, StoreKind, verify_progress

__all__ = [
    "MASKS",
    "SEALED",
    "MaskCacheError",
    "check_mask_arrays",
    "mask_layout",
    "small_arrays",
    "verify_mask_cache",
]

SEALED = ("checksums", "episode_ends")  # small arrays whose CRC-32 the attributes of a complete cache record


class MaskCacheError(StoreError):
    """A mask cache that is incomplete, damaged, built from other arguments, or not a mask cache."""


MASKS = StoreKind(
    attr="sam2_encoder_masks",
    noun="mask cache",
    title="mask cache",
    command="sam2-encoder masks",
    chunk="frame",
    unit="episode",
    verb="track",
    error=MaskCacheError,
)
"""The mask cache as a :class:`~.store.StoreKind`: one chunk per frame, one progress flag per episode."""


def mask_layout(store: Store, ends: np.ndarray) -> tuple[ChecksummedArray, Progress]:
    """The masks (one checksummed chunk per frame) and the episodes' flags, each writing its frames."""

    def describe(frame: int) -> str:
        return f"masks chunk {frame} (frame {frame}, episode {int(np.searchsorted(ends, frame, side='right'))})"

    masks = ChecksummedArray(store, "masks", "checksums", 1, describe, sparse=True)  # zarr 3 omits empty masks
    starts = np.concatenate([[0], ends[:-1]])
    units = [[(masks, range(int(a), int(b)))] for a, b in zip(starts, ends)]
    return masks, Progress(store, "episode_done", units)


def check_mask_arrays(store: Store) -> list[str]:
    """Every array present with the shape, dtype and chunking the attributes imply."""
    spec = store.spec
    n, e = int(spec["n_frames"]), int(spec["n_episodes"])
    k, (h, w) = len(spec["objects"]), spec["frame_shape"]
    found = [
        store.check_array("masks", n, "bool", rows=1, tail=(k, h, w)),
        store.check_array("checksums", n, "int64"),
        store.check_array("episode_ends", e, "int64"),
        store.check_array("episode_done", e, "bool"),
    ]
    return [p for p in found if p is not None]


def small_arrays(store: Store, problems: list[str]) -> np.ndarray | None:
    """``episode_ends`` once the arrays, the small vectors and (complete) their sealed CRC-32s check out."""
    problems += check_mask_arrays(store)
    if problems:
        return None
    vectors = {name: store.read_vector(name, problems) for name in SEALED}
    if not problems and store.complete:
        problems += store.seal_problems(vectors)
    return None if problems else vectors["episode_ends"]


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
    store = Store(Path(path), MASKS)
    problems = store.format_problems()
    ends = None if problems else small_arrays(store, problems)
    return problems or verify_progress([mask_layout(store, ends)[1]])
