"""Our pass through transformers' Hiera trunk and FPN neck: the same values as transformers' forward.

``trunk_stages`` runs each ``Sam2MultiScaleBlock`` through :func:`block_forward` (one SDPA call per
block, optionally without the window padding's projections); ``fpn_neck`` is Meta's ``FpnNeck``
top-down fusion without position encodings. ``SAM2ImageEncoder`` (image_encoder.py) calls both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._hf import do_pool, hiera_blocks, hiera_pos_embed, window_partition, window_unpartition

__all__ = [
    "FPN_FUSE_TYPES",
    "FPN_INTERPOLATION_MODES",
    "attend",
    "block_forward",
    "fpn_neck",
    "fpn_settings",
    "trunk_stages",
]


def trunk_stages(backbone: nn.Module, pixel_values: torch.Tensor, skip_padding: bool = False) -> list[torch.Tensor]:
    """The four stage outputs of a transformers Hiera backbone, each ``(B, h, w, C)``, finest first.

    Args:
        backbone: ``Sam2VisionModel.backbone``.
        pixel_values: ``(B, 3, H, W)`` normalised pixels.
        skip_padding: See :func:`block_forward`.
    """
    blocks, stage_ends = hiera_blocks(backbone)
    x = backbone.patch_embed(pixel_values)
    x = x + hiera_pos_embed(backbone, x.shape[1:3])
    outputs = []
    for i, block in enumerate(blocks):
        x = block_forward(block, x, skip_padding)
        if i in stage_ends:
            outputs.append(x)
    return outputs


def fpn_neck(
    neck: nn.Module, stages: list[torch.Tensor], mode: str = "nearest", fuse: str = "sum"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FPN neck without position encodings, keeping the three finest levels (``scalp=1``).

    Top-down fusion follows the config's ``fpn_interpolation_mode`` (``nearest``, as in every
    released model, or ``bilinear``) and ``fuse_type`` (``sum``, as released, or ``avg``), with
    Meta's ``FpnNeck`` semantics; transformers' configs carry neither, which means the released
    ``nearest`` / ``sum`` (see :func:`fpn_settings`).

    Args:
        neck: ``Sam2VisionModel.neck``.
        stages: Trunk outputs ``(B, h, w, C_i)``, finest first.
        mode: Top-down interpolation mode.
        fuse: ``"sum"`` or ``"avg"``.

    Returns:
        ``(B, 256, h, w)`` maps at strides 4, 8 and 16.
    """
    n = len(neck.convs) - 1
    maps: list[torch.Tensor] = [None] * (n + 1)  # type: ignore[list-item]
    previous = None
    for i in range(n, -1, -1):  # coarsest first, as the top-down path needs
        conv = neck.convs[n - i]
        lateral = conv(stages[i].permute(0, 3, 1, 2))
        if previous is not None and i in neck.fpn_top_down_levels:
            top_down = F.interpolate(
                previous.float(), scale_factor=2.0, mode=mode, align_corners=None if mode == "nearest" else False
            )
            lateral = lateral + top_down.to(lateral.dtype)
            if fuse == "avg":
                lateral = lateral / 2
        maps[i] = previous = lateral
    return maps[0], maps[1], maps[2]


FPN_INTERPOLATION_MODES = ("nearest", "bilinear")
FPN_FUSE_TYPES = ("sum", "avg")


def fpn_settings(config) -> tuple[str, str]:
    """``(fpn_interpolation_mode, fuse_type)`` of a vision config, refusing what the neck does not implement."""
    mode = getattr(config, "fpn_interpolation_mode", "nearest")
    fuse = getattr(config, "fuse_type", "sum")
    if mode not in FPN_INTERPOLATION_MODES:
        raise ValueError(
            f"vision config fpn_interpolation_mode={mode!r} is not implemented; use one of {FPN_INTERPOLATION_MODES}"
        )
    if fuse not in FPN_FUSE_TYPES:
        raise ValueError(f"vision config fuse_type={fuse!r} is not implemented; use one of {FPN_FUSE_TYPES}")
    return mode, fuse


def attend(attn: nn.Module, qkv: torch.Tensor) -> torch.Tensor:
    """Attention of ``Sam2MultiScaleAttention`` from its qkv projection, without the output projection.

    One SDPA call; none of transformers' unused attention-weight tensor.

    Args:
        attn: The transformers attention module (heads, query stride, scale).
        qkv: ``(B, h, w, 3 * C_out)``: ``attn.qkv`` of the tokens (windows flattened into the batch).

    Returns:
        ``(B, h', w', C_out)``, pooled when the module has a query stride.
    """
    batch, height, width, _ = qkv.shape
    heads = attn.num_attention_heads
    query, key, value = torch.unbind(qkv.reshape(batch, height * width, 3, heads, -1), 2)
    if attn.query_stride:
        query = do_pool(query.reshape(batch, height, width, -1), attn.query_stride)
        height, width = query.shape[1:3]
        query = query.reshape(batch, height * width, heads, -1)
    out = F.scaled_dot_product_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), scale=attn.scale
    )
    return out.transpose(1, 2).reshape(batch, height, width, -1)


def block_forward(block: nn.Module, x: torch.Tensor, skip_padding: bool = False) -> torch.Tensor:
    """One Hiera block (``Sam2MultiScaleBlock``) with :func:`attend`.

    Where the windows do not tile the map, transformers pads the normalised tokens with zeros and
    projects every padded token. A zero token's qkv is exactly ``attn.qkv(0)`` (the bias), so with
    ``skip_padding`` we project only the real tokens, pad the projections with that value, and apply
    the output projection to the real tokens only, without the padding's matmuls (about a fifth of
    the work at 256 px). The values are the same, but a matmul over fewer rows may take another
    BLAS kernel whose rounding differs (seen on Intel Xeon at 64 px: 1e-4), so it is opt-in.

    Args:
        block: The transformers block (its weights and settings are used).
        x: ``(B, h, w, C_in)``.
        skip_padding: Project real tokens only (see above).

    Returns:
        ``(B, h', w', C_out)``.
    """
    attn = block.attn
    residual = x
    x = block.layer_norm1(x)
    if block.dim != block.dim_out:
        residual = do_pool(block.proj(x), block.query_stride)
    window = block.window_size
    batch, height, width, channels = x.shape
    pad_h, pad_w = ((-height) % window, (-width) % window) if window > 0 else (0, 0)
    skip = skip_padding and bool(pad_h or pad_w)
    if skip:
        qkv = attn.qkv(x)
        fill = attn.qkv(x.new_zeros(1, 1, 1, channels))  # what a zero padding token projects to
        if pad_w:
            qkv = torch.cat([qkv, fill.expand(batch, height, pad_w, -1)], dim=2)
        if pad_h:
            qkv = torch.cat([qkv, fill.expand(batch, pad_h, width + pad_w, -1)], dim=1)
        qkv, padded = window_partition(qkv, window)
        x = attend(attn, qkv)
    elif window > 0:
        x, padded = window_partition(x, window)
        x = attn.proj(attend(attn, attn.qkv(x)))
    else:
        x = attn.proj(attend(attn, attn.qkv(x)))
    if block.query_stride:
        window = block.window_size // block.query_stride[0]
        height, width = residual.shape[1:3]
        padded = (height + (-height) % window, width + (-width) % window)
    if window > 0:
        x = window_unpartition(x, window, padded, (height, width))
    if skip:
        x = attn.proj(x)  # real tokens only
    x = residual + x
    return x + block.mlp(block.layer_norm2(x))
