"""Meta's SAM 2 checkpoint names -> transformers' ``Sam2VideoModel`` names."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch

__all__ = ["convert_meta_state_dict", "has_vision_keys", "looks_like_meta"]


_MLP3 = r"(output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head|object_pointer_proj)"

# Applied in order, each to the result of the previous ones.
_RENAMES: tuple[tuple[str, str], ...] = (
    # image encoder
    (r"^image_encoder\.trunk\.", "vision_encoder.backbone."),
    (r"^image_encoder\.neck\.convs\.(\d+)\.conv\.", r"vision_encoder.neck.convs.\1."),
    (r"\.patch_embed\.proj\.", ".patch_embed.projection."),
    (r"^(vision_encoder\.backbone\.blocks\.\d+)\.norm([12])\.", r"\1.layer_norm\2."),
    (r"^(vision_encoder\.backbone\.blocks\.\d+)\.mlp\.layers\.0\.", r"\1.mlp.proj_in."),
    (r"^(vision_encoder\.backbone\.blocks\.\d+)\.mlp\.layers\.1\.", r"\1.mlp.proj_out."),
    # prompt encoder
    (r"^sam_prompt_encoder\.", "prompt_encoder."),
    (r"^prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"^prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"^prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"^prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"^prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
    # mask decoder
    (r"^sam_mask_decoder\.", "mask_decoder."),
    (r"^mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
    (r"^mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
    (r"^mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
    (r"^(mask_decoder\.transformer\.layers\.\d+)\.norm([1-4])\.", r"\1.layer_norm\2."),
    (r"^(mask_decoder\.transformer\.layers\.\d+)\.mlp\.layers\.0\.", r"\1.mlp.proj_in."),
    (r"^(mask_decoder\.transformer\.layers\.\d+)\.mlp\.layers\.1\.", r"\1.mlp.proj_out."),
    (r"\.norm_final_attn\.", ".layer_norm_final_attn."),
    # object pointers and three-layer MLPs
    (r"^obj_ptr_proj\.", "object_pointer_proj."),
    (r"^obj_ptr_tpos_proj\.", "temporal_positional_encoding_projection_layer."),
    (rf"(^|\.){_MLP3}\.layers\.0\.", r"\1\2.proj_in."),
    (rf"(^|\.){_MLP3}\.layers\.1\.", r"\1\2.layers.0."),
    (rf"(^|\.){_MLP3}\.layers\.2\.", r"\1\2.proj_out."),
    # memory attention
    (r"^(memory_attention\.layers\.\d+)\.norm([1-3])\.", r"\1.layer_norm\2."),
    (r"^memory_attention\.norm\.", "memory_attention.layer_norm."),
    # memory encoder
    (r"^memory_encoder\.mask_downsampler\.encoder\.12\.", "memory_encoder.mask_downsampler.final_conv."),
    (r"^memory_encoder\.pix_feat_proj\.", "memory_encoder.feature_projection."),
    (r"^memory_encoder\.fuser\.", "memory_encoder.memory_fuser."),
    (r"(memory_fuser\.layers\.\d+)\.dwconv\.", r"\1.depthwise_conv."),
    (r"(memory_fuser\.layers\.\d+)\.norm\.", r"\1.layer_norm."),
    (r"(memory_fuser\.layers\.\d+)\.pwconv([12])\.", r"\1.pointwise_conv\2."),
    (r"(memory_fuser\.layers\.\d+)\.gamma$", r"\1.scale"),
    (r"^memory_encoder\.out_proj\.", "memory_encoder.projection."),
    (r"\.out_proj\.", ".o_proj."),
    # top-level parameters
    (r"^maskmem_tpos_enc$", "memory_temporal_positional_encoding"),
    (r"^no_mem_embed$", "no_memory_embedding"),
    (r"^no_mem_pos_enc$", "no_memory_positional_encoding"),
    (r"^no_obj_ptr$", "no_object_pointer"),
    (r"^no_obj_embed_spatial$", "occlusion_spatial_embedding_parameter"),
)
_COMPILED = tuple((re.compile(p), r) for p, r in _RENAMES)
_MASK_DOWNSAMPLER = re.compile(r"^memory_encoder\.mask_downsampler\.encoder\.(\d+)\.(.+)$")
_POINT_EMBED = re.compile(r"^sam_prompt_encoder\.point_embeddings\.(\d+)\.weight$")
_GAUSSIAN = "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"


def _rename(key: str) -> str:
    m = _MASK_DOWNSAMPLER.match(key)
    if m and m.group(1) != "12":
        index = int(m.group(1))
        part = "conv" if index % 3 == 0 else "layer_norm"
        return f"memory_encoder.mask_downsampler.layers.{index // 3}.{part}.{m.group(2)}"
    for pattern, repl in _COMPILED:
        key = pattern.sub(repl, key)
    return key


def convert_meta_state_dict(meta: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert a Meta SAM 2 state dict to transformers ``Sam2VideoModel`` names.

    Pure renames except two: the four ``point_embeddings.{0..3}.weight`` (1, 256) are
    concatenated into ``prompt_encoder.point_embed.weight`` (4, 256), and the prompt encoder's
    Gaussian matrix (2, 128) fills both ``prompt_encoder.shared_embedding.positional_embedding``
    and ``shared_image_embedding.positional_embedding``.

    Args:
        meta: Meta's state dict (the ``"model"`` entry of a ``.pt`` file).

    Returns:
        A new dict in transformers' names; tensors are shared, not copied.
    """
    out: dict[str, torch.Tensor] = {}
    points: dict[int, torch.Tensor] = {}
    for key, value in meta.items():
        m = _POINT_EMBED.match(key)
        if m:
            points[int(m.group(1))] = value
        elif key == _GAUSSIAN:
            out["prompt_encoder.shared_embedding.positional_embedding"] = value
            out["shared_image_embedding.positional_embedding"] = value
        else:
            out[_rename(key)] = value
    if points:
        out["prompt_encoder.point_embed.weight"] = torch.cat([points[i] for i in sorted(points)], dim=0)
    return out


def looks_like_meta(keys: Iterable[str]) -> bool:
    """Whether state-dict keys are in Meta's names (``image_encoder.``, ``sam_mask_decoder.``, ...)."""
    return any(k.startswith(("image_encoder.", "sam_mask_decoder.", "sam_prompt_encoder.")) for k in keys)


def has_vision_keys(keys: Iterable[str]) -> bool:
    """Whether state-dict keys (transformers' names) include the image encoder."""
    return any(k.startswith("vision_encoder.") for k in keys)
