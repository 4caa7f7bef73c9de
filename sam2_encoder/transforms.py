"""SAM 2's image-predictor preprocessing as a batched ``nn.Module``.

Meta's ``SAM2ImagePredictor.set_image`` path: uint8 RGB -> float in [0, 1] -> bilinear,
antialiased resize to a square ``image_size x image_size`` (aspect ratio not kept, no padding)
-> ImageNet normalisation. ``F.interpolate(mode="bilinear", antialias=True)`` reproduces
torchvision's tensor ``Resize``, so no torchvision is needed.

Meta's *video* loader differs (PIL bicubic on uint8, up to 0.83 apart in normalised units),
and transformers' image processor rounds to uint8 after resizing (up to 0.0175 apart): this
module follows the image-predictor path.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .variants import check_image_size

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "UINT8_HINT", "SAM2Transforms"]

UINT8_HINT = "; pass uint8 for 0..255 images"  # the range error's hint for images that look like 0..255

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ImageInput = torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray]


class SAM2Transforms(nn.Module):
    """Batched SAM 2 preprocessing on device tensors.

    Args:
        image_size: Output side (or ``(H, W)``), a multiple of 32.
        channel_order: ``"RGB"`` or ``"BGR"`` (OpenCV frames): the order of the input channels.
        input_range: ``(low, high)`` of float inputs, finite with ``low < high``; ``(0, 1)`` by
            default, ``(-1, 1)`` for frames normalised by Diffusion Policy. uint8 inputs are
            always 0..255.
        layout: ``"auto"`` (channels-first if dim -3 has 3 entries, else channels-last),
            ``"CHW"`` or ``"HWC"``.
        validate: Check for NaN and out-of-range values (one device sync per call).
        tolerance: Slack allowed beyond ``input_range`` before a value counts as out of range
            (finite, ``>= 0``).

    Input:
        ``(B, 3, H, W)``, ``(3, H, W)``, ``(B, H, W, 3)`` or ``(H, W, 3)``, uint8 or float, as a
        tensor or numpy array, or a list of such images (each resized on its own).

    Output:
        ``(B, 3, S, S)`` float32 (or the dtype given to ``.to()``), on this module's device.
        An empty batch (``B = 0``, or an empty list) gives an empty ``(0, 3, S, S)`` output: a
        batch of no images is a valid batch. Images with no pixels (``H = 0`` or ``W = 0``) are
        refused.

    Raises:
        ValueError: At construction, for an invalid ``image_size``, ``channel_order``,
            ``layout``, ``input_range`` or ``tolerance``.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        image_size: int | tuple[int, int] = 1024,
        channel_order: Literal["RGB", "BGR"] = "RGB",
        input_range: tuple[float, float] = (0.0, 1.0),
        layout: Literal["auto", "CHW", "HWC"] = "auto",
        validate: bool = True,
        tolerance: float = 1e-3,
    ) -> None:
        super().__init__()
        self.image_size = check_image_size(image_size)
        if channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
        if layout not in ("auto", "CHW", "HWC"):
            raise ValueError(f"layout must be 'auto', 'CHW' or 'HWC', got {layout!r}")
        self.channel_order = channel_order
        self.input_range = _check_input_range(input_range)
        self.layout = layout
        self.validate = validate
        self.tolerance = _check_tolerance(tolerance)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def extra_repr(self) -> str:
        return (
            f"image_size={self.image_size}, channel_order={self.channel_order!r}, "
            f"input_range={self.input_range}, layout={self.layout!r}"
        )

    def forward(self, images: ImageInput) -> torch.Tensor:
        """Preprocess a batch.

        Args:
            images: See the class docstring.

        Returns:
            ``(B, 3, S, S)`` normalised pixels.
        """
        if isinstance(images, list | tuple):
            if not images:  # an empty batch
                return self.mean.new_empty((0, 3, *self.image_size))
            return torch.cat([self(image) for image in images], dim=0)
        return self.finish(self.to_rgb_unit(self._as_bchw(images)))

    def to_rgb_unit(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` uint8 / float in ``input_range`` -> float RGB in [0, 1] (see ``to_unit_range``)."""
        x = self.to_unit_range(x)
        return x.flip(1) if self.channel_order == "BGR" else x

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """Resize and normalise ``(B, 3, H, W)`` RGB in [0, 1] to contiguous ``(B, 3, S, S)``.

        Contiguous NCHW whatever the input layout: on CPU the layout picks the conv kernels, and
        channels-last input would move features by an ulp against the same pixels in NCHW.
        """
        return self.normalize(self.resize(x)).contiguous()

    def _as_bchw(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        if isinstance(images, np.ndarray):
            if not images.flags.writeable:  # decoded images, memory maps: torch warns on read-only memory
                images = images.copy()
            images = torch.from_numpy(np.ascontiguousarray(images))
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor, numpy array or list of them, got {type(images).__name__}")
        if images.dim() not in (3, 4):
            raise ValueError(
                f"images must have shape (B, 3, H, W), (3, H, W), (B, H, W, 3) or (H, W, 3); got {tuple(images.shape)}"
            )
        x = images if images.dim() == 4 else images.unsqueeze(0)
        channels_last = self.layout == "HWC" or (self.layout == "auto" and x.shape[1] != 3 and x.shape[-1] == 3)
        if channels_last:
            x = x.permute(0, 3, 1, 2)
        if x.shape[1] != 3:
            where = "last" if channels_last else "second"
            raise ValueError(
                f"images must have 3 colour channels; got shape {tuple(images.shape)} "
                f"({x.shape[1]} channels in the {where} axis, layout={self.layout!r})"
            )
        if x.dtype != torch.uint8 and not x.is_floating_point():
            raise TypeError(f"images must be uint8 or floating point, got {x.dtype}")
        if x.shape[-2] == 0 or x.shape[-1] == 0:
            raise ValueError(f"images have no pixels: shape {tuple(images.shape)} (height or width 0)")
        return x.to(self.mean.device, non_blocking=True)

    def to_unit_range(self, x: torch.Tensor) -> torch.Tensor:
        """Map uint8 0..255 or floats in ``input_range`` to float32 [0, 1].

        Args:
            x: ``(B, 3, H, W)`` uint8 or float.

        Returns:
            ``(B, 3, H, W)`` float32 (float64 stays float64).

        Raises:
            ValueError: On NaN/inf or values outside ``input_range`` (when ``validate``).
        """
        if x.dtype == torch.uint8:
            return x.float() / 255.0
        if x.dtype != torch.float64:
            x = x.float()
        low, high = self.input_range
        if self.validate and x.numel():
            lo, hi = torch.aminmax(x)
            lo, hi = float(lo), float(hi)
            if not (np.isfinite(lo) and np.isfinite(hi)):
                raise ValueError(f"images contain NaN or inf (min {lo}, max {hi})")
            if lo < low - self.tolerance or hi > high + self.tolerance:
                hint = ""
                if hi > 1.5 and high <= 1.0:
                    hint = UINT8_HINT
                elif lo < -self.tolerance and low >= 0.0:
                    hint = "; Diffusion Policy's normaliser yields [-1, 1]: use input_range=(-1, 1)"
                raise ValueError(
                    f"images have values in [{lo:.4g}, {hi:.4g}], outside input_range {self.input_range}{hint}"
                )
        if (low, high) == (0.0, 1.0):
            return x
        if (low, high) == (-1.0, 1.0):
            # inverse of Diffusion Policy's x * 2 - 1, which itself rounds below 0.5: 63 of the 256
            # uint8 levels come back 1.5e-8 off (no formula recovers the bits that subtraction lost)
            return x * 0.5 + 0.5
        return (x - low) / (high - low)

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """Bilinear antialiased resize to ``image_size`` (no-op when already that size).

        Args:
            x: ``(B, 3, H, W)`` float in [0, 1].

        Returns:
            ``(B, 3, S, S)``.
        """
        if tuple(x.shape[-2:]) == self.image_size:
            return x
        return F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False, antialias=True)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet normalisation ``(x - mean) / std`` per channel."""
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


def _check_input_range(input_range: object) -> tuple[float, float]:
    """``(low, high)`` as finite floats with ``low < high``, else one ValueError naming it."""
    try:
        if isinstance(input_range, str | bytes):
            raise TypeError
        low, high = (float(v) for v in input_range)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"input_range must be two numbers (low, high), got {input_range!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"input_range must be finite, got {input_range!r}")
    if not high > low:
        raise ValueError(f"input_range must be (low, high) with high > low, got {input_range!r}")
    return low, high


def _check_tolerance(tolerance: object) -> float:
    """A finite float ``>= 0``, else one ValueError naming it."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real):
        raise ValueError(f"tolerance must be a number >= 0, got {tolerance!r}")
    value = float(tolerance)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"tolerance must be finite and >= 0, got {tolerance!r}")
    return value
