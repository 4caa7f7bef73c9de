"""transformers' stock pipeline as a user of it would call it: ``Sam2Processor`` + ``get_image_features``.

The features are reshaped to ``(B, C, h, w)`` and the coarsest level gets the no-memory embedding,
so they compare with ours and Meta's. ``Sam2ImageProcessor`` needs torchvision: import it first
with :func:`meta_reference.import_torchvision`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["hf_features", "make_processor", "stock_pixels"]

STRIDES = (4, 8, 16)


def make_processor(size: int) -> Any:
    """transformers' stock ``Sam2Processor`` resizing to ``size`` (its image processor's defaults otherwise)."""
    from transformers import Sam2ImageProcessor, Sam2Processor

    return Sam2Processor(image_processor=Sam2ImageProcessor(size={"height": size, "width": size}))


def stock_pixels(processor: Any, frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """Normalised pixels from the stock processor (resized on ``device``)."""
    kwargs = {"device": device} if device.type != "cpu" else {}
    return processor(images=frames, return_tensors="pt", **kwargs)["pixel_values"].to(device)


def hf_features(model: Any, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``get_image_features`` + no-memory embedding, as ``(B, C, h, w)`` maps (what a user of it needs)."""
    feats = list(model.get_image_features(pixel_values).fpn_hidden_states)  # (hw, B, C) each
    feats[-1] = feats[-1] + model.no_memory_embedding
    b, h, w = pixel_values.shape[0], pixel_values.shape[-2], pixel_values.shape[-1]
    return tuple(f.permute(1, 2, 0).reshape(b, -1, h // s, w // s) for f, s in zip(feats, STRIDES))  # type: ignore[return-value]
