"""Reading a Diffusion Policy replay buffer's camera frames and episode ends, checked once for both caches.

A ``ReplayBuffer`` folder (zarr) holds ``data/<key>`` arrays, ``(N, H, W, 3)`` uint8 for cameras,
and ``meta/episode_ends`` (cumulative int64). The feature cache and the mask cache read the same
frames; the checks and their messages are here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .zarr_io import open_group

__all__ = ["episode_ends", "replay_frames"]


def replay_frames(replay: str | os.PathLike[str], keys: Sequence[str]) -> tuple[Any, int]:
    """``(data group, n_frames)`` of a replay buffer, every key checked to be ``(N, H, W, 3)`` uint8.

    Raises:
        KeyError: For a buffer without ``data/`` or without a key (naming what it has).
        ValueError: For a key that is not ``(N, H, W, 3)`` uint8 frames (all of the same ``N``), or
            no frames.
    """
    source = open_group(replay)
    if "data" not in source:
        raise KeyError(f"replay buffer {replay} has no data/ group; it has {sorted(source.keys())}")
    data = source["data"]
    missing = [k for k in keys if k not in data]
    if missing:
        raise KeyError(f"replay buffer {replay} has no data/{missing[0]}; it has {sorted(data.keys())}")
    n_frames = data[keys[0]].shape[0]
    for key in keys:
        array = data[key]
        shape = tuple(array.shape)
        if len(shape) != 4 or shape[-1] != 3 or shape[0] != n_frames or np.dtype(array.dtype) != np.uint8:
            raise ValueError(
                f"data/{key} of {replay} is {np.dtype(array.dtype)} {shape}; "
                f"expected ({n_frames}, H, W, 3) uint8 frames"
            )
    if n_frames == 0:
        raise ValueError(f"replay buffer {replay}: data/{keys[0]} holds no frames")
    return data, n_frames


def episode_ends(replay: str | os.PathLike[str], n_frames: int) -> np.ndarray:
    """``meta/episode_ends`` of a replay buffer, checked to split its ``n_frames`` frames.

    Raises:
        ValueError: For a buffer without ``meta/episode_ends``, or ends that are not increasing
            and ending at ``n_frames``.
    """
    source = open_group(replay)
    if "meta" not in source or "episode_ends" not in source["meta"]:
        raise ValueError(f"replay buffer {replay} has no meta/episode_ends (a Diffusion Policy ReplayBuffer has)")
    ends = np.asarray(source["meta"]["episode_ends"][...], dtype=np.int64)
    if len(ends) == 0 or ends[-1] != n_frames or np.any(np.diff(np.concatenate([[0], ends])) <= 0):
        raise ValueError(f"meta/episode_ends of {replay} does not split its {n_frames} frames: {ends.tolist()}")
    return ends
