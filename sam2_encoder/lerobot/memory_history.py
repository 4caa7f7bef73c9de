"""Policy memory in LeRobot: the past frames of a training sample, loaded by LeRobot's own dataset.

With ``memory="sam2"`` the encoder conditions each window frame on a bank of that frame's past:
the episode's first frame (``memory_keep_first``) and the frames ``memory_stride, 2 *
memory_stride, ... memory_frames * memory_stride`` steps before it, clamped to the episode's
first frame near the start. The unmodified ``LeRobotDataset`` loads them when the policy's
``observation_delta_indices`` name them: LeRobot clamps every ``index + delta`` into the
episode, so a delta of :data:`FIRST_FRAME` (far before any episode start) is the episode's first
frame, and strided deltas before the start are clamped to it too (as the streaming bank does).

:class:`MemoryLayout` holds the delta list (each offset once: the window's ``n_obs_steps``
frames and every bank frame) and where each window frame and bank frame sits in it;
:meth:`MemoryLayout.split` turns a batch of ``(B, len(deltas), ...)`` tensors into the usual
``(B, n_obs_steps, ...)`` window and the bank frames ``(B, n_obs_steps, bank, ...)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..config import MemoryConfig
from ..policy_memory import bank_frames, memory_key

__all__ = [
    "FIRST_FRAME",
    "MemoryLayout",
    "bank_offsets",
    "check_episode_lengths",
    "check_memory_options",
    "episode_lengths",
]

#: The delta of "the episode's first frame": LeRobot clamps ``index + FIRST_FRAME`` to the
#: episode's start for every episode shorter than ``-FIRST_FRAME`` frames (29 hours at 10 fps).
FIRST_FRAME = -(1 << 20)


@dataclass(frozen=True)
class MemoryLayout:
    """Where a training sample's window and bank frames sit in ``observation_delta_indices``.

    Attributes:
        deltas: The policy's ``observation_delta_indices``, sorted, each once (:data:`FIRST_FRAME`
            first with ``memory_keep_first``).
        window: ``n_obs_steps`` positions in ``deltas`` of the window frames ``1 - To .. 0``.
        bank: Per window frame, the positions in ``deltas`` of its bank frames, in the bank's order
            (the first frame, then past frames ``memory_stride, 2 * memory_stride, ...`` steps back, as
            the encoder's slots); empty without memory.
    """

    deltas: tuple[int, ...]
    window: tuple[int, ...]
    bank: tuple[tuple[int, ...], ...]

    @classmethod
    def build(cls, n_obs_steps: int, memory: MemoryConfig | None = None) -> MemoryLayout:
        """The layout of a policy with ``n_obs_steps`` and the encoder's ``MemoryConfig`` (``None``: no memory)."""
        steps = list(range(1 - n_obs_steps, 1))
        banks = [bank_offsets(step, memory) for step in steps] if memory is not None and memory.enabled else []
        deltas = sorted({*steps, *(d for bank in banks for d in bank)})
        where = {d: i for i, d in enumerate(deltas)}
        return cls(tuple(deltas), tuple(where[d] for d in steps), tuple(tuple(where[d] for d in b) for b in banks))

    @property
    def has_memory(self) -> bool:
        """Whether the window frames come with bank frames."""
        return bool(self.bank)

    def split(self, batch: Mapping[str, Tensor], keys: Iterable[str], bank_keys: Iterable[str]) -> dict[str, Tensor]:
        """A batch of ``(B, len(deltas), ...)`` tensors as the encoder's training input: windows and banks.

        Args:
            batch: The LeRobot batch (other keys are kept as they are).
            keys: The observation keys loaded with ``deltas`` (cameras, state, masks).
            bank_keys: The keys whose bank frames the encoder reads (cameras, and masks with
                ``memory_source="objects"``).

        Returns:
            The batch with each key of ``keys`` as its window ``(B, n_obs_steps, ...)`` and, for each key
            of ``bank_keys``, its bank frames under ``memory_key(key)``: ``(B, n_obs_steps, bank, ...)``.

        Raises:
            ValueError: A key whose second dimension is not ``len(deltas)``.
        """
        out = dict(batch)
        for key in keys:
            x = batch.get(key)
            if x is None:
                continue
            if x.dim() < 2 or x.shape[1] != len(self.deltas):
                raise ValueError(
                    f"sam2_diffusion (memory): batch[{key!r}] has shape {tuple(x.shape)}; expected (B, "
                    f"{len(self.deltas)}, ...): one frame per observation_delta_indices entry {list(self.deltas)}"
                )
            out[key] = x[:, list(self.window)]
        for key in bank_keys:
            out[memory_key(key)] = batch[key][:, torch.tensor(self.bank)]  # (B, To, bank, ...)
        return out


def bank_offsets(step: int, memory: MemoryConfig) -> list[int]:
    """The deltas of window frame ``step``'s bank, in the encoder's slot order (``policy_memory.bank_frames``).

    The first frame (``memory_keep_first``) is :data:`FIRST_FRAME`; past frame ``k`` is ``step - k * memory_stride``.
    """
    far = -FIRST_FRAME  # a frame far from its episode's start: bank_frames clamps nothing
    return [FIRST_FRAME if frame == 0 else step + frame - far for frame in bank_frames(far, memory)]


def episode_lengths(meta: Any) -> list[int]:
    """The frames of each episode of a dataset (LeRobot's ``dataset_meta``; ``[]`` when it lists none)."""
    episodes = getattr(meta, "episodes", None)
    if episodes is None:
        return []
    starts, stops = list(episodes["dataset_from_index"]), list(episodes["dataset_to_index"])
    return [int(b) - int(a) for a, b in zip(starts, stops)]


def check_episode_lengths(lengths: Sequence[int]) -> None:
    """Raise unless every episode is shorter than ``-FIRST_FRAME`` frames (``memory_keep_first`` reaches its start).

    Raises:
        ValueError: Naming the longest episode and its length.
    """
    if lengths and max(lengths) >= -FIRST_FRAME:
        longest = max(range(len(lengths)), key=lengths.__getitem__)
        raise ValueError(
            f"sam2_diffusion: memory_keep_first reads each episode's first frame at delta {FIRST_FRAME}, which "
            f"reaches the start of episodes shorter than {-FIRST_FRAME} frames; episode {longest} has "
            f"{lengths[longest]} frames: split it, or set memory_keep_first=false"
        )


def check_memory_options(config: Any) -> None:
    """``sam2_diffusion``'s memory rules that need LeRobot's view (a ``SAM2DiffusionConfig``).

    Raises:
        ValueError: ``memory_source="objects"`` without ``object_masks``; ``memory`` with a
            ``feature_cache`` (the memory encodes every bank frame's own trunk features).
    """
    if config.memory != "sam2":  # "none", or a value the encoder's config refuses
        return
    if config.memory_source == "objects" and not config.object_masks:
        raise ValueError(
            "sam2_diffusion: memory_source='objects' stores each frame with its object masks, but object_masks "
            "is empty: set object_masks={camera: mask feature}, or use memory_source='frame'"
        )
    if config.feature_cache is not None:
        raise ValueError(
            f"sam2_diffusion: memory={config.memory!r} encodes the memory of every bank frame from its own SAM 2 "
            "pass (stride-16 neck), which a feature_cache does not hold: train from frames (no feature_cache), "
            "or set memory='none'"
        )
