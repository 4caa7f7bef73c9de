"""The feature cache on disk: its store kind and error, its arrays and progress flags, the whole-cache check.

numpy and zarr only (no torch, no transformers), so ``sam2-encoder cache --verify`` starts fast;
:mod:`.feature_cache` writes and reads caches of this layout (see its module doc).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from .store import ChecksummedArray, Progress, Store, StoreError, StoreKind, verify_progress

__all__ = [
    "FEATURES",
    "CacheError",
    "check_feature_arrays",
    "feature_arrays",
    "feature_progress",
    "verify_cache",
]


class CacheError(StoreError):
    """A feature cache is incomplete, damaged, or disagrees with the encoder or the arguments."""


FEATURES = StoreKind(
    attr="sam2_encoder",
    noun="feature cache",
    title="sam2_encoder feature cache",
    command="sam2-encoder cache",
    chunk="chunk",
    unit="chunk",
    verb="encode",
    error=CacheError,
)
"""The feature cache as a :class:`~.store.StoreKind`."""


def feature_arrays(store: Store) -> dict[tuple[str, str], ChecksummedArray]:
    """Every ``features/<key>/<level>`` with its checksums, chunked by ``chunk_frames`` frames."""
    spec = store.spec
    chunk, n = int(spec["chunk_frames"]), int(spec["n_frames"])

    def describe(name: str) -> Callable[[int], str]:
        return lambda i: f"{name} chunk {i} (frames {i * chunk}-{min((i + 1) * chunk, n) - 1})"

    return {
        (key, level): ChecksummedArray(
            store, f"features/{key}/{level}", f"checksums/{key}/{level}", chunk, describe(f"features/{key}/{level}")
        )
        for key in spec["keys"]
        for level in spec["levels"]
    }


def feature_progress(store: Store, arrays: Mapping[tuple[str, str], ChecksummedArray]) -> dict[str, Progress]:
    """Per key, its flags ``progress/<key>``: one per chunk of frames, which writes that chunk of every level."""
    spec = store.spec
    n_chunks = math.ceil(int(spec["n_frames"]) / int(spec["chunk_frames"]))
    return {
        key: Progress(
            store, f"progress/{key}", [[(arrays[(key, lv)], [i]) for lv in spec["levels"]] for i in range(n_chunks)]
        )
        for key in spec["keys"]
    }


def check_feature_arrays(store: Store) -> list[str]:
    """Every array present, with the recorded dtype, frame count and chunking."""
    spec = store.spec
    n, chunk = int(spec["n_frames"]), int(spec["chunk_frames"])
    n_chunks = math.ceil(n / chunk)
    found = []
    for key in spec["keys"]:
        for level in spec["levels"]:
            found.append(store.check_array(f"features/{key}/{level}", n, spec["dtype"], rows=chunk))
            found.append(store.check_array(f"checksums/{key}/{level}", n_chunks, "int64"))
        found.append(store.check_array(f"progress/{key}", n_chunks, "bool"))
    return [p for p in found if p is not None]


def verify_cache(path: str | os.PathLike[str]) -> list[str]:
    """Check a whole feature cache: attributes, completeness, progress flags, every chunk's checksum.

    Of an incomplete cache, the chunks flagged done are checked and the rest counted.

    Args:
        path: The cache folder.

    Returns:
        One line per problem found (empty when the cache is whole).

    Raises:
        CacheError: If it is not a sam2_encoder cache of this format (also a ``FileNotFoundError``
            if there is no such folder).
    """
    store = Store(Path(path), FEATURES)
    problems = store.format_problems() or check_feature_arrays(store)
    return problems or verify_progress(list(feature_progress(store, feature_arrays(store)).values()))
