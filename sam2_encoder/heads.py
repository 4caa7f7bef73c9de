"""A camera's head beyond plain pooling: coarse-to-fine fusion and/or object tokens, then a readout.

:class:`CameraHead` maps the encoder's per-camera map (the fused map of ``fuse="pool"``, or the
packed pyramid of ``fuse="coarse_to_fine"``, see :mod:`sam2_encoder.pooling`) and optional object
masks to one vector. ``MultiCameraEncoder`` uses it only when one of these options is on, so the
state-dict keys of plain heads stay as they were.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .object_tokens import ObjectTokens
from .pooling import PACKED_LAYOUT, CoarseToFine, unpack_pyramid

__all__ = ["CameraHead"]


class CameraHead(nn.Module):
    """Optional coarse-to-fine fusion, a readout, and optional object tokens.

    Args:
        readout: A pooling head on the (fused) map, or ``None`` when object tokens replace it.
        fuse: A :class:`CoarseToFine` module feeding the readout (the input must then be a packed
            pyramid), or ``None``.
        objects: An :class:`ObjectTokens` module, or ``None``.
        object_level: The level the tokens pool: with ``fuse`` any of ``"s4"``, ``"s8"``, ``"s16"``;
            without, the last ``object_channels`` channels of the input map are that level.
        object_channels: Channels of the object level (used when the input is not packed).
        packed: The input is a packed pyramid (:func:`~sam2_encoder.pooling.pack_pyramid`);
            default: when ``fuse`` is given. A packed input reaches a readout only through ``fuse``
            (without a readout, packed input just gives the tokens every level).
        layout: The packed pyramid's ``(level, channels, factor)`` entries.

    Shapes:
        ``(N, C, h, w)`` [, masks ``(N, K, H, W)`` float in [0, 1]] ``-> (N, output_dim)``: readout
        output, then the ``K`` tokens flattened.
    """

    def __init__(
        self,
        readout: nn.Module | None,
        fuse: CoarseToFine | None = None,
        objects: ObjectTokens | None = None,
        object_level: str = "s16",
        object_channels: int = 256,
        packed: bool | None = None,
        layout: Sequence[tuple[str, int, int]] = PACKED_LAYOUT,
    ) -> None:
        super().__init__()
        if readout is None and objects is None:
            raise ValueError("a camera head needs a readout, object tokens, or both")
        packed = fuse is not None if packed is None else packed
        if (fuse is not None) != (packed and readout is not None):
            raise ValueError("a packed pyramid reaches a readout only through coarse-to-fine fusion, and back")
        self.packed = packed
        self.fuse = fuse
        self.readout = readout
        self.objects = objects
        self.object_level = object_level
        self.object_channels = object_channels
        self.layout = tuple(layout)
        self.output_dim = (readout.output_dim if readout is not None else 0) + (
            objects.output_dim if objects is not None else 0
        )

    def forward(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """Map ``(N, C, h, w)`` (and masks when the head has object tokens) to ``(N, output_dim)``."""
        parts = []
        if self.packed:
            levels = unpack_pyramid(x, self.layout)
            if self.readout is not None:
                parts.append(self.readout(self.fuse(levels["s4"], levels["s8"], levels["s16"])))
            level = levels[self.object_level]
        else:
            if self.readout is not None:
                parts.append(self.readout(x))
            level = x[:, x.shape[1] - self.object_channels :]
        if self.objects is not None:
            if masks is None:
                raise ValueError("this head pools object tokens: it needs the object masks")
            parts.append(self.objects(level, masks))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
