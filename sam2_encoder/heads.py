"""The encoder's per-camera heads: what they are (:class:`CameraHead`) and how they are built (:class:`HeadBuilder`).

:class:`CameraHead` maps the encoder's per-camera map (the fused map of ``fuse="pool"``, or the
packed pyramid of ``fuse="coarse_to_fine"``, see :mod:`sam2_encoder.pooling`) and optional object
masks to one vector. :class:`HeadBuilder` turns the readout / object-token options
(:class:`~sam2_encoder.config.ReadoutConfig`, :class:`~sam2_encoder.config.ObjectConfig`) and the
pyramid's shapes into the heads: a plain pooling head when no option needs more (state-dict keys
as before these options), a :class:`CameraHead` otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .config import ObjectConfig, ReadoutConfig
from .image_encoder import LEVELS, build_seeded
from .object_tokens import ObjectTokens
from .pooling import PACKED_LAYOUT, CoarseToFine, build_pool, coarse_to_fine_shape, unpack_pyramid

__all__ = ["CameraHead", "HeadBuilder", "ProjectedHead"]


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


class ProjectedHead(nn.Module):
    """A head followed by a linear projection to ``output_dim``.

    Shapes:
        ``(N, C, h, w) -> (N, output_dim)``.
    """

    def __init__(self, head: nn.Module, output_dim: int) -> None:
        super().__init__()
        self.head = head
        self.proj = nn.Linear(head.output_dim, output_dim)
        self.output_dim = output_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.head(x))


class HeadBuilder:
    """Builds the camera heads of one encoder from its readout / object options and pyramid shapes.

    Args:
        readout: Levels, fusion and the pooling head.
        objects: The object-token options (used by heads built ``with_objects``).
        shapes: ``{level: (C, h, w)}`` of the trunk's pyramid (``SAM2ImageEncoder.feature_shapes()``).

    Attributes:
        feature_shape: ``(C, h, w)`` of the per-camera map the heads read (the fused levels, or
            the packed pyramid with ``fuse="coarse_to_fine"``): what precomputed features must be.
        layout: The packed pyramid's ``(level, channels, factor)`` entries.
    """

    def __init__(
        self, readout: ReadoutConfig, objects: ObjectConfig, shapes: Mapping[str, tuple[int, int, int]]
    ) -> None:
        self.readout_config = readout
        self.objects = objects
        self.shapes = dict(shapes)
        channels = sum(shapes[lv][0] for lv in readout.levels)
        _, height, width = shapes[readout.levels[-1]]
        self.feature_shape = (channels, height, width)
        # the packed pyramid: each level folded onto the s16 grid (see pooling.pack_pyramid)
        self.layout = tuple((lv, shapes[lv][0], shapes[lv][1] // shapes["s16"][1]) for lv in LEVELS)
        if readout.fuse == "coarse_to_fine":
            self.feature_shape = (sum(c * f * f for _, c, f in self.layout), height, width)
            channels, height, width = coarse_to_fine_shape(height, width, readout.fuse_stride, readout.fuse_channels)
        self._readout_input = (channels, height, width)  # what the readout pools

    def readout(self) -> nn.Module:
        """A new readout: the pooling head on the (fused) map, projected to ``feature_dim`` if set."""
        cfg = self.readout_config
        if cfg.pool == "spatial_softmax":  # keypoint coordinates, optionally projected
            head = build_pool(cfg.pool, *self._readout_input, **cfg.head_options())
            return ProjectedHead(head, cfg.feature_dim) if cfg.feature_dim else head
        return build_pool(cfg.pool, *self._readout_input, **cfg.head_options(with_output_dim=True))

    def head(self, with_objects: bool) -> nn.Module:
        """A new camera head: the plain readout, or a :class:`CameraHead` with fusion / object tokens."""
        cfg, objects = self.readout_config, self.objects
        if cfg.fuse == "pool" and not with_objects:
            return self.readout()  # the plain head (state-dict keys as before these options)
        readout = None if with_objects and objects.object_tokens == "replace" else self.readout()
        level_channels = self.shapes[objects.object_level][0]
        upsample = readout is not None and cfg.fuse == "coarse_to_fine"
        return CameraHead(
            readout,
            CoarseToFine([c for _, c, _ in self.layout], cfg.fuse_stride, cfg.fuse_channels) if upsample else None,
            ObjectTokens(level_channels, objects.num_objects, objects.object_token_dim, objects.object_absent)
            if with_objects
            else None,
            object_level=objects.object_level,
            object_channels=level_channels,
            packed=cfg.fuse == "coarse_to_fine",
            layout=self.layout,
        )

    def build(self, names: Mapping[str, bool], seed: int) -> nn.ModuleDict:
        """``{name: head}``, ``names`` mapping each head's name to whether it has object tokens, seeded."""
        return build_seeded(lambda: nn.ModuleDict({n: self.head(o) for n, o in names.items()}), seed)
