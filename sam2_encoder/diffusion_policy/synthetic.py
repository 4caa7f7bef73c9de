"""Synthetic Diffusion Policy data and a small denoiser, to try the pipeline without a DP checkout.

Used by the tests and benchmarks, and handy for a first run: a replay buffer in DP's layout whose
actions are predictable from the images, a dataset with DP's sampling and padding semantics, and
a small conditional noise predictor standing in for DP's ``ConditionalUnet1D``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .dp_base import sequence_frames
from .zarr_io import create_array, open_group

__all__ = [
    "ReplayFrames",
    "ReplayImageDataset",
    "TinyDenoiser",
    "create_indices",
    "dp_normalise",
    "global_cond",
    "write_memory_buffer",
    "write_replay_buffer",
]


def write_replay_buffer(
    path: str | os.PathLike[str],
    episodes: int = 3,
    steps: int = 20,
    size: int | tuple[int, int] = 48,
    cameras: Sequence[str] = ("img",),
    seed: int = 0,
) -> str | os.PathLike[str]:
    """Write a replay buffer in Diffusion Policy's layout (zarr-2 format).

    ``data/<camera>`` (N, H, W, 3) uint8 frames of a moving square, ``data/agent_pos`` (N, 2),
    ``data/action`` (N, 2) = the square's normalised position, ``meta/episode_ends`` cumulative
    int64.

    Args:
        path: Output ``.zarr`` folder.
        episodes: Number of episodes.
        steps: Steps per episode.
        size: Frame side or ``(H, W)``.
        cameras: Image keys (each camera sees the square with its own colour).
        seed: Seed of the trajectories.

    Returns:
        ``path``.
    """
    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    n = episodes * steps
    positions = np.zeros((n, 2), dtype=np.float32)
    frames = {cam: np.full((n, h, w, 3), 40, dtype=np.uint8) for cam in cameras}
    side = max(4, min(h, w) // 6)
    for e in range(episodes):
        start = rng.uniform(0, 1, size=2) * (np.array([h, w]) - side)
        velocity = rng.uniform(-1.0, 1.0, size=2) * min(h, w) / 40
        for t in range(steps):
            y, x = np.clip(start + velocity * t, 0, np.array([h, w]) - side).astype(int)
            for c, cam in enumerate(cameras):
                frames[cam][e * steps + t, y : y + side, x : x + side] = (230, 200 - 60 * c, 60 + 80 * c)
            positions[e * steps + t] = (y / h, x / w)
    root = open_group(path, mode="w")
    arrays = {**frames, "agent_pos": positions + 0.01, "action": positions}
    for key, value in arrays.items():
        create_array(root, f"data/{key}", value.shape, (min(n, 64), *value.shape[1:]), str(value.dtype), 0)[:] = value
    ends = np.arange(1, episodes + 1, dtype=np.int64) * steps
    create_array(root, "meta/episode_ends", ends.shape, ends.shape, "int64", 0)[:] = ends
    return path


def write_memory_buffer(
    path: str | os.PathLike[str],
    episodes: int = 8,
    steps: int = 12,
    size: int = 48,
    cue_steps: int = 2,
    camera: str = "img",
    seed: int = 0,
) -> str | os.PathLike[str]:
    """A memory task in Diffusion Policy's layout: a cue seen only in the first frames decides the target.

    Each episode shows a cue (a red or a blue bar across the top) in its first ``cue_steps`` frames
    only; every frame shows a grey square on a random walk whose path does not depend on the cue. The
    action at every step is the target: ``(+0.5, +0.5)`` after a red cue, ``(-0.5, -0.5)`` after a blue
    one (cues alternate over episodes). A policy that sees the last frames only cannot do better than
    the mean (loss 0.25 per entry after DP's [-1, 1] scaling, which maps the targets to +-1: 1.0);
    one whose memory keeps the first frame can.

    Args:
        path: Output ``.zarr`` folder.
        episodes: Number of episodes (half red, half blue).
        steps: Steps per episode (> ``cue_steps``).
        size: Frame side.
        cue_steps: Frames that show the cue.
        camera: Image key.
        seed: Seed of the squares' paths.

    Returns:
        ``path``.
    """
    rng = np.random.default_rng(seed)
    n = episodes * steps
    frames = np.full((n, size, size, 3), 40, dtype=np.uint8)
    actions = np.zeros((n, 2), dtype=np.float32)
    side, bar = max(4, size // 6), max(2, size // 8)
    for e in range(episodes):
        red = e % 2 == 0
        pos = rng.uniform(bar, size - side, size=2)
        for t in range(steps):
            i = e * steps + t
            pos = np.clip(pos + rng.normal(0, size / 20, size=2), bar, size - side)
            y, x = pos.astype(int)
            frames[i, y : y + side, x : x + side] = 160
            if t < cue_steps:
                frames[i, :bar] = (230, 30, 30) if red else (30, 30, 230)
            actions[i] = 0.5 if red else -0.5
    root = open_group(path, mode="w")
    arrays = {camera: frames, "agent_pos": np.zeros((n, 2), dtype=np.float32), "action": actions}
    for key, value in arrays.items():
        create_array(root, f"data/{key}", value.shape, (min(n, 64), *value.shape[1:]), str(value.dtype), 0)[:] = value
    ends = np.arange(1, episodes + 1, dtype=np.int64) * steps
    create_array(root, "meta/episode_ends", ends.shape, ends.shape, "int64", 0)[:] = ends
    return path


def create_indices(
    episode_ends: np.ndarray, sequence_length: int, pad_before: int = 0, pad_after: int = 0
) -> np.ndarray:
    """Diffusion Policy's sample table: ``(buffer_start, buffer_end, sample_start, sample_end)`` rows.

    Windows of ``sequence_length`` steps inside each episode, allowed to hang over its start by
    ``pad_before`` and over its end by ``pad_after`` steps (filled with the first / last frame).

    Returns:
        ``(num_samples, 4)`` int64.
    """
    pad_before = min(max(pad_before, 0), sequence_length - 1)
    pad_after = min(max(pad_after, 0), sequence_length - 1)
    rows = []
    start = 0
    for end in episode_ends:
        length = int(end) - start
        for idx in range(-pad_before, length - sequence_length + pad_after + 1):
            buffer_start = max(idx, 0) + start
            buffer_end = min(idx + sequence_length, length) + start
            sample_start = buffer_start - (idx + start)
            sample_end = sequence_length - ((idx + sequence_length + start) - buffer_end)
            rows.append((buffer_start, buffer_end, sample_start, sample_end))
        start = int(end)
    return np.asarray(rows, dtype=np.int64).reshape(-1, 4)


class ReplayFrames(dict):
    """The replay buffer's arrays by key, with ``episode_ends`` (what DP's ``ReplayBuffer`` offers readers)."""

    def __init__(self, data: Mapping[str, np.ndarray], episode_ends: np.ndarray) -> None:
        super().__init__(data)
        self.episode_ends = np.asarray(episode_ends)


class _Sampler:
    def __init__(self, indices: np.ndarray, sequence_length: int) -> None:
        self.indices = indices
        self.sequence_length = sequence_length


class ReplayImageDataset(torch.utils.data.Dataset):
    """A dataset with the interface of DP's ``PushTImageDataset`` over :func:`write_replay_buffer` data.

    Items are ``{"obs": {"image": (T, 3, H, W) float in [0, 1], "agent_pos": (T, 2)}, "action":
    (T, 2)}`` (one ``obs`` entry per camera, named by ``camera_keys``), sampled and padded like DP's
    ``SequenceSampler``; ``sampler.indices`` is DP's table.

    Args:
        zarr_path: The replay buffer.
        horizon: Steps per sample.
        pad_before: DP's ``n_obs_steps - 1``.
        pad_after: DP's ``n_action_steps - 1``.
        camera_keys: ``{obs key: replay key}``; default ``{"image": "img"}``.
        **dp_kwargs: Ignored DP dataset options (``seed``, ``val_ratio``, ...).
    """

    def __init__(
        self,
        zarr_path: str | os.PathLike[str],
        horizon: int = 16,
        pad_before: int = 1,
        pad_after: int = 7,
        camera_keys: Mapping[str, str] | None = None,
        **dp_kwargs,
    ) -> None:
        root = open_group(zarr_path)
        self.camera_keys = dict(camera_keys or {"image": "img"})
        keys = [*self.camera_keys.values(), "agent_pos", "action"]
        self.data = {k: np.asarray(root["data"][k][...]) for k in keys}
        ends = np.asarray(root["meta"]["episode_ends"][...])
        self.sampler = _Sampler(create_indices(ends, horizon, pad_before, pad_after), horizon)
        self.horizon = horizon
        self.replay_buffer = ReplayFrames(self.data, ends)

    def __len__(self) -> int:
        return len(self.sampler.indices)

    def __getitem__(self, idx: int) -> dict:
        frames = sequence_frames(self.sampler.indices[idx], self.sampler.sequence_length)
        obs = {
            name: torch.from_numpy(np.moveaxis(self.data[key][frames], -1, 1).astype(np.float32) / 255)
            for name, key in self.camera_keys.items()
        }
        obs["agent_pos"] = torch.from_numpy(self.data["agent_pos"][frames])
        return {"obs": obs, "action": torch.from_numpy(self.data["action"][frames])}

    def get_validation_dataset(self) -> ReplayImageDataset:
        """This synthetic data has no held-out split: the dataset itself."""
        return self

    def get_normalizer(self) -> dict[str, str]:
        """The normalisation DP would fit: images by range, low-dim and actions by limits."""
        return {**{k: "range" for k in self.camera_keys}, "agent_pos": "limits", "action": "limits"}


def dp_normalise(batch: dict, n_obs_steps: int, camera_keys: Sequence[str] = ("image",)) -> tuple[dict, torch.Tensor]:
    """DP's ``LinearNormalizer`` for this data: images [0, 1] -> [-1, 1], low-dim and actions -> [-1, 1].

    Args:
        batch: A collated batch of :class:`ReplayImageDataset` items (``(B, T, ...)``).
        n_obs_steps: Observation steps kept (DP's ``To``).
        camera_keys: Image keys of ``batch["obs"]`` (cached feature keys are passed through).

    Returns:
        ``(obs, action)`` with ``obs[key]`` ``(B, To, ...)`` and ``action`` ``(B, T, 2)``.
    """
    obs = {}
    for key, value in batch["obs"].items():
        value = value[:, :n_obs_steps]
        is_image = key in camera_keys and value.shape[-3] == 3
        obs[key] = value * 2 - 1 if (is_image or key not in camera_keys) else value
    return obs, batch["action"] * 2 - 1


def global_cond(encoder: nn.Module, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """DP's ``obs_as_global_cond`` path: ``(B, To, ...)`` -> ``(B*To, ...)`` -> encoder -> ``(B, To*D)``."""
    b, to = next(iter(obs.values())).shape[:2]
    flat = {k: v.reshape(b * to, *v.shape[2:]) for k, v in obs.items()}
    return encoder(flat).reshape(b, -1)


class TinyDenoiser(nn.Module):
    """A small conditional noise predictor standing in for DP's ``ConditionalUnet1D``.

    Args:
        horizon: Action steps per sample.
        action_dim: Action size.
        cond_dim: Global condition size (``To * obs_encoder.output_shape()[0]``).
        hidden: Hidden width.

    Shapes:
        ``(B, horizon, action_dim), (B,), (B, cond_dim) -> (B, horizon, action_dim)``.
    """

    def __init__(self, horizon: int, action_dim: int, cond_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.horizon, self.action_dim = horizon, action_dim
        self.net = nn.Sequential(
            nn.Linear(horizon * action_dim + cond_dim + 32, hidden),
            nn.Mish(),
            nn.Linear(hidden, hidden),
            nn.Mish(),
            nn.Linear(hidden, horizon * action_dim),
        )

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        """Predict the noise in ``sample`` at diffusion step ``timestep``."""
        half = 16
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=sample.device) / half)
        angles = timestep.float().reshape(-1)[:, None] * freqs[None]
        t_emb = torch.cat([angles.sin(), angles.cos()], dim=-1).expand(sample.shape[0], -1)
        x = torch.cat([sample.flatten(1), global_cond, t_emb], dim=-1)
        return self.net(x).view(-1, self.horizon, self.action_dim)
