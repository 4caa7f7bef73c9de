"""zarr 2.18 and zarr 3 behind one small API; what we write is always in the zarr-2 on-disk format.

Diffusion Policy's ``ReplayBuffer`` uses the zarr 2 API; zarr 3 writes stores it reads when groups
are opened with ``zarr_format=2``. Everything in this package that touches zarr goes through here.

Replay buffers in the zarr-3 on-disk format (a ``zarr.json`` instead of ``.zgroup``) are read when
zarr 3 is installed, and refused with a message naming the format under zarr 2.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import zarr

__all__ = [
    "ZARR3",
    "ZarrFormatError",
    "chunk_path",
    "crc32",
    "create_array",
    "open_group",
    "read_all",
    "store_format",
]

ZARR3 = int(zarr.__version__.split(".")[0]) >= 3
"""Whether the installed zarr is version 3 or newer."""


class ZarrFormatError(ValueError):
    """A folder that is not a zarr group, or one in a format the installed zarr cannot use."""


def store_format(path: str | os.PathLike[str]) -> int | None:
    """The on-disk format of a zarr group folder: 2 (``.zgroup``), 3 (``zarr.json``), or ``None``."""
    path = Path(path)
    if (path / ".zgroup").is_file():
        return 2
    if (path / "zarr.json").is_file():
        return 3
    return None


def open_group(path: str | os.PathLike[str], mode: str = "r") -> zarr.Group:
    """Open a zarr group: the zarr-2 format with either zarr 2.18 or zarr 3 (and zarr-3 stores read-only).

    Args:
        path: The group folder.
        mode: ``"r"`` (read), ``"r+"`` (update an existing zarr-2 group) or ``"w"`` (create).

    Raises:
        FileNotFoundError: If ``path`` does not exist (modes ``"r"``, ``"r+"``).
        ZarrFormatError: If ``path`` is not a zarr group, or is in the zarr-3 format and either zarr
            2 is installed or ``mode`` is not ``"r"``.
    """
    if mode == "w":
        if ZARR3:
            return zarr.open_group(str(path), mode=mode, zarr_format=2)
        return zarr.open_group(str(path), mode=mode)
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"zarr group not found: {p}")
    fmt = store_format(p)
    if fmt is None:
        what = "a file" if p.is_file() else "a folder without .zgroup or zarr.json"
        raise ZarrFormatError(f"{p} is not a zarr group ({what})")
    if fmt == 3:
        if not ZARR3:
            raise ZarrFormatError(
                f"{p} is in the zarr-3 on-disk format (zarr.json), which the installed zarr {zarr.__version__} "
                "cannot read: install zarr>=3, or convert it to the zarr-2 format Diffusion Policy writes"
            )
        if mode != "r":
            raise ZarrFormatError(f"{p} is in the zarr-3 on-disk format (zarr.json); this package writes zarr-2 format")
        return zarr.open_group(str(p), mode="r", zarr_format=3)
    if ZARR3:
        return zarr.open_group(str(p), mode=mode, zarr_format=2)
    return zarr.open_group(str(p), mode=mode)


def create_array(
    group: zarr.Group, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: str, fill: Any
) -> zarr.Array:
    """Create an array ``name`` (``/``-separated path) in ``group`` with the given chunking and fill value."""
    if ZARR3:
        return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill)
    return group.create_dataset(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill)


def chunk_path(root: str | os.PathLike[str], name: str, index: tuple[int, ...]) -> Path:
    """The file of chunk ``index`` of the zarr-2-format array ``root/name`` (``.`` or ``/`` separated)."""
    folder = Path(root, *name.split("/"))
    try:
        separator = json.loads((folder / ".zarray").read_text()).get("dimension_separator") or "."
    except (OSError, ValueError):
        separator = "."
    return folder.joinpath(*separator.join(str(i) for i in index).split("/"))


def read_all(array: zarr.Array) -> np.ndarray:
    """The whole array as numpy."""
    return np.asarray(array[...])


def crc32(block: np.ndarray) -> int:
    """CRC-32 of an array's values (C order, its stored dtype): what the caches record per chunk."""
    return zlib.crc32(np.ascontiguousarray(block).view(np.uint8).reshape(-1))
