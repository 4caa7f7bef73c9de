"""The one seam to transformers' internals.

Every transformers name this package uses that is not public API lives here: Hiera's pooling and
window helpers, the trunk's position-embedding method and block attribute names, and the state
tables of the video inference session. They are checked once, at import (functions and classes)
or when a session is wrapped (session attributes), with one error that names the installed
transformers version and the range the project's CI tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import transformers
from torch import nn

__all__ = [
    "TESTED_TRANSFORMERS",
    "Sam2VideoInferenceSession",
    "VideoSessionState",
    "do_pool",
    "hiera_blocks",
    "hiera_pos_embed",
    "window_partition",
    "window_unpartition",
]

TESTED_TRANSFORMERS = ("5.4.0", "5.23.0")
"""Oldest and newest transformers releases the CI runs the core tests against."""


class TransformersCompatError(ImportError):
    """The installed transformers lacks an internal name this package relies on."""


def _incompatible(what: str, err: Exception | None = None) -> TransformersCompatError:
    low, high = TESTED_TRANSFORMERS
    reason = f" ({type(err).__name__}: {err})" if err is not None else ""
    return TransformersCompatError(
        f"sam2_encoder needs {what} from transformers, which transformers {transformers.__version__} does not "
        f"provide{reason}; tested with transformers {low} to {high}: pip install 'transformers>={low},<={high}'"
    )


try:
    from transformers.models.sam2 import modeling_sam2 as _sam2
    from transformers.models.sam2_video import modeling_sam2_video as _sam2_video

    do_pool: Callable[..., torch.Tensor] = _sam2.do_pool
    window_partition: Callable[..., tuple[torch.Tensor, tuple[int, int]]] = _sam2.window_partition
    window_unpartition: Callable[..., torch.Tensor] = _sam2.window_unpartition
    Sam2VideoInferenceSession = _sam2_video.Sam2VideoInferenceSession
    _HIERA = _sam2.Sam2HieraDetModel
    _BLOCK = _sam2.Sam2MultiScaleBlock
except (ImportError, AttributeError) as _err:  # pragma: no cover - depends on the installed version
    raise _incompatible("modeling_sam2.do_pool / window_partition / window_unpartition", _err) from _err

for _cls, _names in (
    (_HIERA, ("_get_pos_embed",)),
    (_BLOCK, ("forward",)),
):
    for _name in _names:
        if not hasattr(_cls, _name):  # pragma: no cover - depends on the installed version
            raise _incompatible(f"{_cls.__name__}.{_name}")

# attributes read from a built Hiera block / attention module (checked on first use, see hiera_blocks)
_BLOCK_ATTRS = ("attn", "layer_norm1", "layer_norm2", "mlp", "dim", "dim_out", "window_size", "query_stride")
_ATTN_ATTRS = ("qkv", "proj", "num_attention_heads", "query_stride", "scale")


def hiera_pos_embed(backbone: nn.Module, hw: tuple[int, int]) -> torch.Tensor:
    """Hiera's absolute + windowed position embedding for a ``(h, w)`` token grid.

    Args:
        backbone: transformers' ``Sam2HieraDetModel``.
        hw: Token grid after the patch embedding.

    Returns:
        ``(1, h, w, C)``.
    """
    return backbone._get_pos_embed(hw)


def hiera_blocks(backbone: nn.Module) -> tuple[nn.ModuleList, set[int]]:
    """The trunk's blocks and the indices of the blocks that end a stage, after checking the block API.

    Args:
        backbone: transformers' ``Sam2HieraDetModel``.

    Returns:
        ``(blocks, stage_ends)``.
    """
    blocks = backbone.blocks
    if not getattr(backbone, "_sam2_encoder_checked", False):
        block = blocks[0]
        missing = [f"block.{a}" for a in _BLOCK_ATTRS if not hasattr(block, a)]
        missing += [f"block.attn.{a}" for a in _ATTN_ATTRS if not hasattr(getattr(block, "attn", None), a)]
        if not hasattr(backbone, "stage_ends"):
            missing.append("stage_ends")
        if missing:
            raise _incompatible(f"the Hiera block attributes {', '.join(missing)}")
        backbone._sam2_encoder_checked = True
    return blocks, set(backbone.stage_ends)


class VideoSessionState:
    """Read and edit the per-object state tables of a transformers video inference session.

    ``StreamingPredictor`` bounds the session's memory and adds / removes objects mid-stream; both
    need the session's internal tables. This wrapper is the only code that names them.

    Args:
        session: A ``Sam2VideoInferenceSession``.

    Raises:
        TransformersCompatError: If the session lacks one of the tables.
    """

    _TABLES = ("point_inputs_per_obj", "mask_inputs_per_obj", "output_dict_per_obj", "frames_tracked_per_obj")
    _ATTRS = (*_TABLES, "_obj_id_to_idx", "_obj_idx_to_id", "obj_ids", "obj_with_new_inputs", "processed_frames")

    def __init__(self, session: Any) -> None:
        missing = [a for a in self._ATTRS if not hasattr(session, a)]
        cache = getattr(session, "cache", None)
        missing += [f"cache.{a}" for a in ("cache_vision_features", "get_vision_features") if not hasattr(cache, a)]
        if missing:
            raise _incompatible(f"the video session attributes {', '.join(missing)}")
        self.session = session

    def has_object(self, obj_id: int) -> bool:
        """Whether ``obj_id`` is tracked."""
        return obj_id in self.session._obj_id_to_idx

    def remove_object(self, obj_id: int) -> None:
        """Drop an object's state and re-index the others densely (the session keys by index 0..N-1)."""
        session = self.session
        kept = [i for i in range(len(session.obj_ids)) if session._obj_idx_to_id[i] != obj_id]
        for name in self._TABLES:
            table = getattr(session, name)
            table_kept = [table[i] for i in kept]
            table.clear()
            table.update(enumerate(table_kept))
        ids = [session._obj_idx_to_id[i] for i in kept]
        session._obj_id_to_idx.clear()
        session._obj_idx_to_id.clear()
        for index, kept_id in enumerate(ids):
            session._obj_id_to_idx[kept_id] = index
            session._obj_idx_to_id[index] = kept_id
        session.obj_ids = ids
        session.obj_with_new_inputs = [i for i in session.obj_with_new_inputs if i != obj_id]

    def set_new_inputs(self, obj_ids: list[int]) -> None:
        """Mark the objects whose prompts changed (the next step re-runs them on the current frame)."""
        self.session.obj_with_new_inputs = list(obj_ids)

    def point_inputs(self, obj_idx: int, frame_idx: int) -> dict[str, torch.Tensor] | None:
        """The point prompt of an object on a frame, if any."""
        return self.session.point_inputs_per_obj[obj_idx].get(frame_idx)

    def outputs(self) -> dict[int, dict[str, dict[int, dict[str, Any]]]]:
        """``{obj_idx: {"cond_frame_outputs": {t: entry}, "non_cond_frame_outputs": {t: entry}}}``."""
        return self.session.output_dict_per_obj

    def per_frame_tables(self, obj_idx: int) -> tuple[dict[int, Any], ...]:
        """The object's frame-indexed prompt and tracking tables (tracked flags, points, masks)."""
        s = self.session
        return s.frames_tracked_per_obj[obj_idx], s.point_inputs_per_obj[obj_idx], s.mask_inputs_per_obj[obj_idx]

    def forget_processed_frames(self) -> None:
        """Drop the session's store of processed frame pixels."""
        if self.session.processed_frames:
            self.session.processed_frames.clear()

    def cache_features(self, frame_idx: int, features: dict[str, Any]) -> None:
        """Hand a frame's vision features to the session so its model skips the encoder."""
        self.session.cache.cache_vision_features(frame_idx, features)

    def cached_features(self, frame_idx: int) -> dict[str, Any]:
        """The vision features the session holds for a frame (``vision_feats``: three ``(HW, B, C)`` levels)."""
        return self.session.cache.get_vision_features(frame_idx)
