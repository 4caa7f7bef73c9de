"""``MemoryDataset``: a Diffusion Policy dataset whose samples carry each step's memory bank frames.

An encoder with ``memory="sam2"`` (:mod:`sam2_encoder.policy_memory`) trains on the bank of every
row: for each step of a sample (DP's ``SequenceSampler`` frames, padded at the episode edges by
repeating the first / last frame) and each camera, the frames of
:func:`~sam2_encoder.policy_memory.bank_frames` of that step's index in its episode, read from the
replay buffer, under ``obs[memory_key(camera)]`` ``(T, F, 3, H, W)`` float in [0, 1] like the camera.
The normaliser maps them like their camera (DP's range normaliser), so the encoder sees them in the
camera's range.

DP's image workspace asserts ``isinstance(dataset, BaseImageDataset)``: use ``DPMemoryDataset`` (DP's
base mixed in on first use, see :mod:`~sam2_encoder.diffusion_policy.dp_base`) as the ``_target_``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..config import MemoryConfig
from ..policy_memory import bank_frames, memory_key
from .dp_base import DPDatasetWrapper, dp_classes

__all__ = ["MemoryDataset"]


class MemoryDataset(DPDatasetWrapper):
    """Add each step's bank frames to the samples of a DP dataset.

    Args:
        dataset: The DP dataset (``sampler.indices``, ``replay_buffer`` with ``episode_ends`` and the
            camera arrays ``(N, H, W, 3)`` uint8), or ``None`` to build ``dataset_target``.
        camera_keys: ``{obs key: replay buffer key}`` of the cameras (default ``{"image": "img"}``,
            DP's pusht).
        memory_frames, memory_stride, memory_keep_first: The encoder's memory options (the same
            values, or the banks differ from the ones the encoder keeps at inference).
        dataset_target, dataset_kwargs: See :class:`~sam2_encoder.diffusion_policy.dp_base.DPDatasetWrapper`.

    Raises:
        ValueError: For bad memory options (as the encoder's config says them), or a replay buffer
            without a camera key.
    """

    def __init__(
        self,
        dataset: Any = None,
        camera_keys: Mapping[str, str] | None = None,
        memory_frames: int = 6,
        memory_stride: int = 1,
        memory_keep_first: bool = True,
        dataset_target: str | Sequence[str] | None = None,
        **dataset_kwargs: Any,
    ) -> None:
        super().__init__(dataset, dataset_target, dataset_kwargs)
        self.memory = MemoryConfig("sam2", memory_frames, memory_stride, memory_keep_first)
        self.camera_keys = dict(camera_keys or {"image": "img"})
        buffer = self.dataset.replay_buffer
        for obs_key, key in self.camera_keys.items():
            if key not in buffer:
                raise ValueError(f"MemoryDataset: the replay buffer has no {key!r} (camera {obs_key!r})")
        ends = np.asarray(buffer.episode_ends)
        self.episode_start = np.repeat(np.concatenate([[0], ends[:-1]]), np.diff(np.concatenate([[0], ends])))
        self.served_keys = tuple(memory_key(k) for k in self.camera_keys)

    def bank_indices(self, idx: int) -> np.ndarray:
        """``(T, F)`` replay-buffer frames of sample ``idx``'s banks, one row per step."""
        frames = self.sample_frames(idx)
        start = self.episode_start[frames]
        return np.asarray([[s + f for f in bank_frames(int(i - s), self.memory)] for i, s in zip(frames, start)])

    def __getitem__(self, idx: int) -> dict:
        item = self.dataset[idx]
        banks = self.bank_indices(idx)
        buffer = self.dataset.replay_buffer
        for obs_key, key in self.camera_keys.items():
            unique, inverse = np.unique(banks, return_inverse=True)
            frames = np.moveaxis(np.asarray(buffer[key][unique]), -1, 1).astype(np.float32) / 255
            item["obs"][memory_key(obs_key)] = torch.from_numpy(frames[inverse.reshape(banks.shape)])
        return item

    def get_normalizer(self, *args: Any, **kwargs: Any):
        """The wrapped dataset's normaliser with each bank key mapped like its camera."""
        normalizer = self.dataset.get_normalizer(*args, **kwargs)
        for obs_key in self.camera_keys:
            normalizer[memory_key(obs_key)] = normalizer[obs_key]
        return normalizer


__getattr__ = dp_classes(globals(), {"DPMemoryDataset": MemoryDataset})
