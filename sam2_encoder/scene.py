"""A generated test scene, so every command and example runs without an image or a download."""

from __future__ import annotations

import numpy as np

__all__ = ["synthetic_scene"]


def synthetic_scene(height: int = 480, width: int = 640, seed: int = 0) -> np.ndarray:
    """A deterministic test image: a table-top-like scene with a few coloured shapes.

    Args:
        height: Image height.
        width: Image width.
        seed: Seed of the shape placement.

    Returns:
        ``(height, width, 3)`` uint8 RGB.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([0.55 + 0.25 * yy / height, 0.5 + 0.1 * xx / width, 0.45 + 0.0 * xx], axis=-1)
    for _ in range(6):
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.15, 0.85) * width
        r = rng.uniform(0.05, 0.15) * min(height, width)
        inside = (
            (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
            if rng.random() < 0.5
            else ((np.abs(yy - cy) < r) & (np.abs(xx - cx) < r * 1.3))
        )
        image[inside] = rng.uniform(0.05, 0.95, size=3)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
