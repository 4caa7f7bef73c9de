"""The camera view: the part of a camera frame the SAM 2 trunk sees, for frames, masks and prompt points.

A camera frame ``(H, W)`` is optionally resized to ``resize_hw`` (bilinear, antialiased), then
optionally cropped to ``crop_hw``: a random crop per image in training (when ``random_crop``), the
centre crop otherwise. :class:`CameraView` applies that to frames and to object masks (one tensor,
so masks get exactly the images' crops) and moves prompt points from camera pixels into the view
the trunk sees at inference (resize, centre crop; the point math is :class:`~sam2_encoder.prompts.View`).
The encoder's ``forward`` and its object tracker use the same view of each camera.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .prompts import Prompt, View

__all__ = ["CameraView"]


class CameraView:
    """``(H, W)`` camera frames -> optional resize -> optional crop -> what the trunk sees.

    Args:
        frame_hw: ``(H, W)`` of the camera.
        resize_hw: Optional ``(h, w)`` resize before cropping.
        crop_hw: Optional ``(h, w)`` crop of the (resized) frame.
        random_crop: Random crops in training; the centre crop otherwise (and always at inference).
        name: The camera's key, for messages.

    Raises:
        ValueError: If the crop is larger than the (resized) frame.
    """

    def __init__(
        self,
        frame_hw: Sequence[int],
        resize_hw: Sequence[int] | None = None,
        crop_hw: Sequence[int] | None = None,
        random_crop: bool = True,
        name: str = "camera",
    ) -> None:
        self.frame_hw = (int(frame_hw[0]), int(frame_hw[1]))
        self.resize_hw = None if resize_hw is None else (int(resize_hw[0]), int(resize_hw[1]))
        self.crop_hw = None if crop_hw is None else (int(crop_hw[0]), int(crop_hw[1]))
        self.random_crop = random_crop
        self.name = name
        h, w = self.resize_hw or self.frame_hw
        if self.crop_hw is not None and (self.crop_hw[0] > h or self.crop_hw[1] > w):
            raise ValueError(f"crop_shape {list(self.crop_hw)} is larger than camera {name!r} ({h}x{w})")
        self.points = View.of(self.frame_hw, self.resize_hw, self.crop_hw)  # camera pixels -> inference view

    @property
    def shape(self) -> tuple[int, int]:
        """``(h, w)`` of the view."""
        return self.crop_hw or self.resize_hw or self.frame_hw

    def apply(self, x: torch.Tensor, training: bool = False) -> torch.Tensor:
        """Resize then crop a batch.

        Args:
            x: ``(N, C, H, W)`` float (images, or images and masks stacked on channels: one crop each).
            training: Random crops (with ``random_crop``) instead of the centre crop.

        Returns:
            ``(N, C, h, w)``.
        """
        if self.resize_hw is not None and tuple(x.shape[-2:]) != self.resize_hw:
            x = F.interpolate(x, size=self.resize_hw, mode="bilinear", align_corners=False, antialias=True)
        if self.crop_hw is not None:
            x = self.crop(x, training)
        return x

    def crop(self, x: torch.Tensor, training: bool = False) -> torch.Tensor:
        """Random crop per image in training (if ``random_crop``), centre crop otherwise; ``(N, C, h, w)``."""
        n, c, h, w = x.shape
        ch, cw = self.crop_hw or (h, w)
        if not (training and self.random_crop):
            top, left = (h - ch) // 2, (w - cw) // 2
            return x[:, :, top : top + ch, left : left + cw]
        tops = torch.randint(0, h - ch + 1, (n,), device=x.device)
        lefts = torch.randint(0, w - cw + 1, (n,), device=x.device)
        rows = (tops[:, None] + torch.arange(ch, device=x.device))[:, None, :, None]
        cols = (lefts[:, None] + torch.arange(cw, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chans = torch.arange(c, device=x.device)[None, :, None, None]
        return x[batch, chans, rows, cols]

    def check_prompts(self, objects: Mapping[int, Prompt], where: str) -> None:
        """Raise unless every point and box corner (camera pixels) lies in the inference view.

        Raises:
            ValueError: ``"<where>[<id>]: <corners> lies outside the part of the frame the encoder
                sees at inference ..."`` with the camera-pixel bounds of the view.
        """
        if self.points.is_identity(self.frame_hw):
            return
        x0, y0, x1, y1 = self.points.bounds()
        for obj_id, prompt in objects.items():
            bad = self.points.outside(prompt)
            if bad:
                raise ValueError(
                    f"{where}[{obj_id}]: {bad} lies outside the part of the frame the encoder sees at inference "
                    f"(resize_shape={self.resize_hw}, centre crop_shape={self.crop_hw}): x must be in "
                    f"[{x0:g}, {x1:g}] and y in [{y0:g}, {y1:g}] (camera pixels)"
                )

    def map_prompts(self, objects: Mapping[int, Mapping[str, Any]]) -> dict[int, Prompt]:
        """``{obj_id: prompt}`` in camera pixels -> the same in pixels of the inference view."""
        return {obj_id: self.points.map(prompt) for obj_id, prompt in objects.items()}
