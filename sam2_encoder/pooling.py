"""Heads that turn a feature map ``(N, C, h, w)`` into a vector ``(N, D)``.

* ``spatial_softmax``: learned keypoints, their expected image coordinates (robomimic / LeRobot).
* ``attention``: one learned query attends over the map's tokens (UMI / CLIP-style pooling).
* ``avg``: global average pooling.
* ``conv``: a small strided conv + flatten (keeps coarse spatial layout).

Every head is built with its input shape known (no lazily created parameters, so EMA copies walk
identical module trees) and exposes ``output_dim``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "POOLS",
    "AttentionPool",
    "AvgPool",
    "ConvFlatten",
    "SpatialSoftmax",
    "build_pool",
    "check_pool_options",
    "fuse_levels",
]


class SpatialSoftmax(nn.Module):
    """Spatial soft-argmax keypoints.

    A 1x1 conv maps the map to ``num_keypoints`` heatmaps; a softmax over each heatmap gives a
    distribution whose expected ``(x, y)`` in [-1, 1] is the keypoint.

    Args:
        in_channels: ``C`` of the input map.
        height: ``h`` of the input map.
        width: ``w`` of the input map.
        num_keypoints: Number of keypoints; ``output_dim = 2 * num_keypoints``.
        temperature: Initial softmax temperature.
        learnable_temperature: Learn the temperature.

    Shapes:
        ``(N, C, h, w) -> (N, 2 * num_keypoints)``, ordered ``x0, y0, x1, y1, ...``.
    """

    pos_x: torch.Tensor
    pos_y: torch.Tensor

    def __init__(
        self,
        in_channels: int,
        height: int,
        width: int,
        num_keypoints: int = 32,
        temperature: float = 1.0,
        learnable_temperature: bool = False,
    ) -> None:
        super().__init__()
        self.keypoints = nn.Conv2d(in_channels, num_keypoints, kernel_size=1)
        log_t = torch.tensor(math.log(temperature))
        if learnable_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
        self.register_buffer("pos_x", xs.reshape(1, 1, -1), persistent=False)
        self.register_buffer("pos_y", ys.reshape(1, 1, -1), persistent=False)
        self.output_dim = 2 * num_keypoints

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, h, w) -> (N, 2K)``."""
        heat = self.keypoints(x).flatten(2)  # (N, K, h*w)
        attention = torch.softmax(heat.float() / self.log_temperature.exp(), dim=-1)
        kx = (attention * self.pos_x).sum(-1)
        ky = (attention * self.pos_y).sum(-1)
        return torch.stack([kx, ky], dim=-1).flatten(1).to(x.dtype)


class AttentionPool(nn.Module):
    """Attention pooling: a learned query attends over the map's tokens plus learned positions.

    Args:
        in_channels: ``C`` of the input map.
        height: ``h`` of the input map.
        width: ``w`` of the input map.
        num_heads: Attention heads (must divide ``in_channels``).
        output_dim: Size of the output vector.

    Shapes:
        ``(N, C, h, w) -> (N, output_dim)``.
    """

    def __init__(self, in_channels: int, height: int, width: int, num_heads: int = 8, output_dim: int = 256) -> None:
        super().__init__()
        if in_channels % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide the feature channels ({in_channels})")
        self.positions = nn.Parameter(torch.randn(1, height * width + 1, in_channels) / math.sqrt(in_channels))
        self.query = nn.Parameter(torch.zeros(1, 1, in_channels))
        self.attention = nn.MultiheadAttention(in_channels, num_heads, batch_first=True)
        self.proj = nn.Linear(in_channels, output_dim)
        self.output_dim = output_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, h, w) -> (N, output_dim)``."""
        tokens = x.flatten(2).transpose(1, 2)  # (N, hw, C)
        query = tokens.mean(1, keepdim=True) + self.query
        tokens = torch.cat([query, tokens], dim=1) + self.positions
        pooled, _ = self.attention(tokens[:, :1], tokens, tokens, need_weights=False)
        return self.proj(pooled[:, 0])


class AvgPool(nn.Module):
    """Global average pooling, optionally followed by a linear projection.

    Shapes:
        ``(N, C, h, w) -> (N, C)`` or ``(N, output_dim)``.
    """

    def __init__(self, in_channels: int, height: int, width: int, output_dim: int | None = None) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels, output_dim) if output_dim else nn.Identity()
        self.output_dim = output_dim or in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, h, w) -> (N, D)``."""
        return self.proj(x.mean(dim=(2, 3)))


class ConvFlatten(nn.Module):
    """A strided 3x3 conv, GroupNorm, ReLU, flatten and a linear projection.

    Shapes:
        ``(N, C, h, w) -> (N, output_dim)``.
    """

    def __init__(
        self, in_channels: int, height: int, width: int, hidden_channels: int = 64, output_dim: int = 256
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, hidden_channels, kernel_size=3, stride=2, padding=1)
        self.norm = nn.GroupNorm(min(8, hidden_channels), hidden_channels)
        flat = hidden_channels * ((height + 1) // 2) * ((width + 1) // 2)
        self.proj = nn.Linear(flat, output_dim)
        self.output_dim = output_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, h, w) -> (N, output_dim)``."""
        return self.proj(F.relu(self.norm(self.conv(x))).flatten(1))


POOLS = {"spatial_softmax": SpatialSoftmax, "attention": AttentionPool, "avg": AvgPool, "conv": ConvFlatten}


def build_pool(name: str, in_channels: int, height: int, width: int, **kwargs) -> nn.Module:
    """Build a pooling head by name.

    Args:
        name: One of ``POOLS`` (``spatial_softmax``, ``attention``, ``avg``, ``conv``).
        in_channels: Channels of the input map.
        height: Height of the input map.
        width: Width of the input map.
        **kwargs: Head-specific options (``num_keypoints``, ``output_dim``, ``num_heads``...).

    Returns:
        The head, with an ``output_dim`` attribute.

    Raises:
        ValueError: For an unknown name or an option the head does not take (the known ones are listed).
    """
    check_pool_options(name, kwargs)
    return POOLS[name](in_channels, height, width, **kwargs)


def check_pool_options(name: str, options: Mapping[str, Any]) -> None:
    """Refuse an unknown head name or an option the head does not take, naming the valid ones.

    Raises:
        ValueError: With the name or option seen and what the head accepts.
    """
    if name not in POOLS:
        raise ValueError(f"unknown pool {name!r}; choose one of {', '.join(POOLS)}")
    accepted = list(inspect.signature(POOLS[name]).parameters)[3:]  # after in_channels, height, width
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"pool {name!r} does not take {', '.join(unknown)}; its options are {', '.join(accepted)}")


def fuse_levels(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Average-pool finer maps to the last (coarsest) map's grid and concatenate channels.

    Args:
        maps: ``(M, C_i, h_i, w_i)`` maps, finest first.

    Returns:
        ``(M, sum C_i, h, w)`` at the last map's resolution (the single map itself if only one).
    """
    target = maps[-1].shape[-2:]
    maps = [m if m.shape[-2:] == target else F.adaptive_avg_pool2d(m, target) for m in maps]
    return maps[0] if len(maps) == 1 else torch.cat(list(maps), dim=1)
