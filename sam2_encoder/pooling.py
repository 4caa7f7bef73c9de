"""Heads that turn a feature map ``(N, C, h, w)`` into a vector ``(N, D)``.

* ``spatial_softmax``: learned keypoints, their expected image coordinates (robomimic / LeRobot).
* ``attention``: one learned query attends over the map's tokens (UMI / CLIP-style pooling).
* ``avg``: global average pooling.
* ``conv``: a small strided conv + flatten (keeps coarse spatial layout).

Two ways to feed them the pyramid:

* :func:`fuse_levels` (``fuse="pool"``): finer levels average-pooled to the coarsest grid and
  concatenated (the readout sees stride 16).
* :class:`CoarseToFine` (``fuse="coarse_to_fine"``): s16 upsampled x2 by a learned transposed
  conv and fused with a projection of s8, then (``stride=4``) x2 again fused with s4, the way
  SAM 2's mask decoder upscales; the readout sees stride 8 or 4. Its input travels as one tensor,
  the *packed pyramid* (:func:`pack_pyramid`): s4 and s8 folded onto the s16 grid by
  space-to-depth and concatenated with s16, a lossless ``(1024, h, w)`` layout.

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
    "PACKED_LAYOUT",
    "POOLS",
    "AttentionPool",
    "AvgPool",
    "CoarseToFine",
    "ConvFlatten",
    "LayerNorm2d",
    "SpatialSoftmax",
    "build_pool",
    "check_pool_options",
    "coarse_to_fine_shape",
    "fuse_levels",
    "pack_pyramid",
    "packed_channels",
    "unpack_pyramid",
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


# --------------------------------------------------------------------------------------------
# coarse-to-fine fusion
# --------------------------------------------------------------------------------------------

#: ``(level, channels, factor)`` of the packed pyramid, finest first: ``factor`` is the level's
#: resolution over the s16 grid's (space-to-depth block size).
PACKED_LAYOUT = (("s4", 32, 4), ("s8", 64, 2), ("s16", 256, 1))


def packed_channels(layout: Sequence[tuple[str, int, int]] = PACKED_LAYOUT) -> int:
    """Channels of the packed pyramid: ``sum(C_i * factor_i ** 2)`` (1024 for SAM 2)."""
    return sum(c * f * f for _, c, f in layout)


def pack_pyramid(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Fold a pyramid onto its coarsest grid without losing a value (space-to-depth).

    Args:
        maps: ``(M, C_i, h * f_i, w * f_i)`` maps, finest first, the last one ``(M, C, h, w)``;
            each ``f_i`` an integer.

    Returns:
        ``(M, sum C_i * f_i ** 2, h, w)``: ``pixel_unshuffle(map_i, f_i)`` concatenated in order.
        Channel ``c * f * f + dy * f + dx`` of a level's block holds ``map[c, y * f + dy, x * f + dx]``.

    Raises:
        ValueError: If a level's size is not an integer multiple of the coarsest grid.
    """
    h, w = maps[-1].shape[-2:]
    parts = []
    for m in maps:
        f = m.shape[-2] // h
        if m.shape[-2] != f * h or m.shape[-1] != f * w:
            raise ValueError(f"cannot pack a {tuple(m.shape[-2:])} map onto a {(h, w)} grid: not an integer multiple")
        parts.append(m if f == 1 else F.pixel_unshuffle(m, f))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def unpack_pyramid(
    packed: torch.Tensor, layout: Sequence[tuple[str, int, int]] = PACKED_LAYOUT
) -> dict[str, torch.Tensor]:
    """Invert :func:`pack_pyramid` exactly.

    Args:
        packed: ``(M, packed_channels(layout), h, w)``.
        layout: ``(level, channels, factor)`` per level, finest first.

    Returns:
        ``{level: (M, C_i, h * f_i, w * f_i)}``.
    """
    sizes = [c * f * f for _, c, f in layout]
    if packed.shape[1] != sum(sizes):
        raise ValueError(f"a packed pyramid has {sum(sizes)} channels, got shape {tuple(packed.shape)}")
    out = {}
    for (name, _, f), part in zip(layout, packed.split(sizes, dim=1)):
        out[name] = part if f == 1 else F.pixel_shuffle(part, f)
    return out


def coarse_to_fine_shape(
    height16: int, width16: int, stride: int = 8, channels: Sequence[int] = (64, 32)
) -> tuple[int, int, int]:
    """``(C_out, h, w)`` of :class:`CoarseToFine`'s output for an s16 grid, without building it.

    Raises:
        ValueError: For a stride other than 8 or 4, or channels that are not two positive ints.
    """
    if stride not in (4, 8):
        raise ValueError(f"coarse-to-fine stride must be 8 or 4, got {stride!r}")
    widths = tuple(channels)
    if len(widths) != 2 or not all(isinstance(c, int) and c > 0 for c in widths):
        raise ValueError(f"coarse-to-fine channels must be two positive ints (C_8, C_4), got {channels!r}")
    scale = 16 // stride
    return (widths[0] if stride == 8 else widths[1], height16 * scale, width16 * scale)


class LayerNorm2d(nn.Module):
    """Layer norm over the channels at every position of an ``(N, C, h, w)`` map (as in SAM 2's decoder).

    Args:
        channels: ``C``.
        eps: Added to the variance.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, h, w) -> (N, C, h, w)``."""
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) * torch.rsqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class CoarseToFine(nn.Module):
    """Learned multi-resolution upsampling of the SAM 2 pyramid (SAM2Act-style, SAM 2 decoder-like).

    ``x8 = GELU(LN(ConvT2x2(s16) + Conv1x1(s8)))`` at stride 8 and, for ``stride=4``,
    ``x4 = GELU(LN(ConvT2x2(x8) + Conv1x1(s4)))``. All layers exist from construction on.

    Args:
        level_channels: ``(C_s4, C_s8, C_s16)`` of the pyramid.
        stride: Output stride, 8 or 4.
        channels: ``(C_8, C_4)``: widths of the stride-8 and stride-4 maps (SAM 2's decoder: 64, 32).

    Shapes:
        ``s4 (N, C_s4, 4h, 4w), s8 (N, C_s8, 2h, 2w), s16 (N, C_s16, h, w) -> (N, C_out, 16h/stride, 16w/stride)``
        with ``C_out = channels[0]`` (stride 8) or ``channels[1]`` (stride 4).
    """

    def __init__(
        self,
        level_channels: Sequence[int] = (32, 64, 256),
        stride: int = 8,
        channels: Sequence[int] = (64, 32),
    ) -> None:
        super().__init__()
        coarse_to_fine_shape(1, 1, stride, channels)  # validates
        c4_in, c8_in, c16_in = (int(c) for c in level_channels)
        c8, c4 = channels
        self.stride = stride
        self.up8 = nn.ConvTranspose2d(c16_in, c8, kernel_size=2, stride=2)
        self.lateral8 = nn.Conv2d(c8_in, c8, kernel_size=1)
        self.norm8 = LayerNorm2d(c8)
        if stride == 4:
            self.up4 = nn.ConvTranspose2d(c8, c4, kernel_size=2, stride=2)
            self.lateral4 = nn.Conv2d(c4_in, c4, kernel_size=1)
            self.norm4 = LayerNorm2d(c4)
        self.out_channels = c8 if stride == 8 else c4

    def output_shape(self, height16: int, width16: int) -> tuple[int, int, int]:
        """``(C_out, h, w)`` of the output for an s16 grid of ``height16 x width16``."""
        return coarse_to_fine_shape(height16, width16, self.stride, (self.up8.out_channels, self.out_channels))

    def forward(self, s4: torch.Tensor | None, s8: torch.Tensor, s16: torch.Tensor) -> torch.Tensor:
        """Fuse the pyramid from coarse to fine (``s4`` unused at stride 8)."""
        x = F.gelu(self.norm8(self.up8(s16) + self.lateral8(s8)))
        if self.stride == 4:
            assert s4 is not None
            x = F.gelu(self.norm4(self.up4(x) + self.lateral4(s4)))
        return x
