"""A faithful miniature of Diffusion Policy's training path for tests: replay buffer, sampler, denoiser.

Mirrors what ``DiffusionUnetImagePolicy`` does with its obs encoder (``compute_loss`` and
``predict_action`` with ``obs_as_global_cond=True``): take ``n_obs_steps`` frames, normalise
images to [-1, 1], encode ``(B * To)`` rows in one call, reshape to ``(B, To * D)`` as the global
condition of a denoiser trained with a diffusers scheduler.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import zarr
from torch import nn


def open_group_v2(path: Path | str, mode: str = "r"):
    """A zarr group in the zarr-2 format with either zarr 2.18 or zarr 3."""
    if int(zarr.__version__.split(".")[0]) >= 3:
        return zarr.open_group(str(path), mode=mode, zarr_format=2)
    return zarr.open_group(str(path), mode=mode)


def write_replay_buffer(path: Path, episodes: int = 3, steps: int = 20, size: int = 48, seed: int = 0) -> Path:
    """A Diffusion Policy ReplayBuffer: data/<key> time-first, meta/episode_ends cumulative int64.

    Each frame shows a bright square; the action is the square's (normalised) position, so actions
    are predictable from the image.
    """
    rng = np.random.default_rng(seed)
    n = episodes * steps
    images = np.full((n, size, size, 3), 40, dtype=np.uint8)
    positions = np.zeros((n, 2), dtype=np.float32)
    for e in range(episodes):
        start = rng.uniform(8, size - 16, size=2)
        velocity = rng.uniform(-1.0, 1.0, size=2)
        for t in range(steps):
            y, x = np.clip(start + velocity * t, 0, size - 8).astype(int)
            images[e * steps + t, y : y + 8, x : x + 8] = (230, 200, 60)
            positions[e * steps + t] = (y / size, x / size)
    root = open_group_v2(path, mode="w")
    data = root.require_group("data")
    meta = root.require_group("meta")
    for key, value in {"img": images, "agent_pos": positions + 0.01, "action": positions}.items():
        arr = (
            data.create_array(key, shape=value.shape, dtype=value.dtype)
            if hasattr(data, "create_array")
            else (data.create_dataset(key, shape=value.shape, dtype=value.dtype))
        )
        arr[:] = value
    ends = np.arange(1, episodes + 1, dtype=np.int64) * steps
    arr = (
        meta.create_array("episode_ends", shape=ends.shape, dtype=ends.dtype)
        if hasattr(meta, "create_array")
        else meta.create_dataset("episode_ends", shape=ends.shape, dtype=ends.dtype)
    )
    arr[:] = ends
    return path


class SequenceSampler:
    """Windows of ``horizon`` steps inside episodes (DP's SequenceSampler without padding)."""

    def __init__(self, path: Path, horizon: int) -> None:
        root = open_group_v2(path)
        self.data = {k: np.asarray(root["data"][k][:]) for k in ("img", "agent_pos", "action")}
        ends = np.asarray(root["meta"]["episode_ends"][:])
        starts = np.concatenate([[0], ends[:-1]])
        self.indices = [i for s, e in zip(starts, ends) for i in range(s, e - horizon + 1)]
        self.horizon = horizon

    def batch(self, size: int, generator: np.random.Generator) -> dict[str, torch.Tensor]:
        picks = generator.choice(len(self.indices), size=size, replace=False)
        rows = np.stack([np.arange(self.indices[p], self.indices[p] + self.horizon) for p in picks])
        return {k: torch.from_numpy(v[rows]) for k, v in self.data.items()}


def normalise(batch: dict[str, torch.Tensor], n_obs_steps: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """DP's LinearNormalizer for this data: images 0..255 -> [-1, 1] (CHW), low-dim/action -> [-1, 1]."""
    img = batch["img"][:, :n_obs_steps].permute(0, 1, 4, 2, 3).float() / 255.0 * 2 - 1
    obs = {"image": img, "agent_pos": batch["agent_pos"][:, :n_obs_steps] * 2 - 1}
    return obs, batch["action"] * 2 - 1


class Denoiser(nn.Module):
    """A small conditional noise predictor standing in for DP's ConditionalUnet1D."""

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
        half = 16
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=sample.device) / half)
        angles = timestep.float()[:, None] * freqs[None]
        t_emb = torch.cat([angles.sin(), angles.cos()], dim=-1)
        x = torch.cat([sample.flatten(1), global_cond, t_emb], dim=-1)
        return self.net(x).view(-1, self.horizon, self.action_dim)


def global_cond(encoder: nn.Module, obs: dict[str, torch.Tensor]) -> torch.Tensor:
    """DP's obs_as_global_cond path: (B, To, ...) -> (B*To, ...) -> encoder -> (B, To*D)."""
    b, to = obs["image"].shape[:2]
    flat = {k: v.reshape(b * to, *v.shape[2:]) for k, v in obs.items()}
    return encoder(flat).reshape(b, -1)


def create_indices(episode_ends: np.ndarray, sequence_length: int, pad_before: int, pad_after: int) -> np.ndarray:
    """DP's SequenceSampler index table: (buffer_start, buffer_end, sample_start, sample_end) per sample."""
    rows = []
    start = 0
    for end in episode_ends:
        length = int(end - start)
        for idx in range(-pad_before, length - sequence_length + pad_after + 1):
            buffer_start = max(idx, 0) + start
            buffer_end = min(idx + sequence_length, length) + start
            sample_start = buffer_start - (idx + start)
            sample_end = sequence_length - ((idx + sequence_length + start) - buffer_end)
            rows.append((buffer_start, buffer_end, sample_start, sample_end))
        start = int(end)
    return np.asarray(rows, dtype=np.int64)


class DPStyleImageDataset(torch.utils.data.Dataset):
    """The interface of DP's PushTImageDataset over our replay buffer: sampler.indices, padded samples."""

    def __init__(self, zarr_path: str, horizon: int = 16, pad_before: int = 1, pad_after: int = 7, **dp_kwargs) -> None:
        root = open_group_v2(zarr_path)
        self.data = {k: np.asarray(root["data"][k][:]) for k in ("img", "agent_pos", "action")}
        ends = np.asarray(root["meta"]["episode_ends"][:])

        class Sampler:
            indices = create_indices(ends, horizon, pad_before, pad_after)
            sequence_length = horizon

        self.sampler = Sampler()
        self.horizon = horizon

    def __len__(self) -> int:
        return len(self.sampler.indices)

    def __getitem__(self, idx: int) -> dict:
        bs, be, ss, se = self.sampler.indices[idx]
        frames = np.concatenate([np.full(ss, bs), np.arange(bs, be), np.full(self.horizon - se, be - 1)])
        image = np.moveaxis(self.data["img"][frames], -1, 1) / 255
        return {
            "obs": {
                "image": torch.from_numpy(image).float(),
                "agent_pos": torch.from_numpy(self.data["agent_pos"][frames]),
            },
            "action": torch.from_numpy(self.data["action"][frames]),
        }

    def get_validation_dataset(self) -> DPStyleImageDataset:
        return self

    def get_normalizer(self) -> dict:
        return {"image": "range", "agent_pos": "limits", "action": "limits"}
