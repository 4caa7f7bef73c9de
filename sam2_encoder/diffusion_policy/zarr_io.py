"""zarr 2.18 and zarr 3 behind one small API, always in the zarr-2 on-disk format.

Diffusion Policy's ``ReplayBuffer`` uses the zarr 2 API; zarr 3 writes stores it reads when groups
are opened with ``zarr_format=2``. Everything in this package that touches zarr goes through here.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import zarr

__all__ = ["ZARR3", "create_array", "open_group", "read_all"]

ZARR3 = int(zarr.__version__.split(".")[0]) >= 3
"""Whether the installed zarr is version 3 or newer."""


def open_group(path: str | os.PathLike[str], mode: str = "r") -> zarr.Group:
    """Open a zarr group in the zarr-2 format with either zarr 2.18 or zarr 3."""
    if ZARR3:
        return zarr.open_group(str(path), mode=mode, zarr_format=2)
    return zarr.open_group(str(path), mode=mode)


def create_array(
    group: zarr.Group, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: str, fill: Any
) -> zarr.Array:
    """Create an array ``name`` (``/``-separated path) in ``group`` with the given chunking and fill value."""
    if ZARR3:
        return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill)
    return group.create_dataset(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill)


def read_all(array: zarr.Array) -> np.ndarray:
    """The whole array as numpy."""
    return np.asarray(array[...])
