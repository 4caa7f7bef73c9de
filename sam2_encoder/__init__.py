"""SAM 2 as the eyes of a visuomotor policy.

Batched, exact SAM 2 / 2.1 image features (Hiera trunk + FPN neck) for robot learning, built on
transformers' SAM 2 models: preprocessing (:class:`SAM2Transforms`), the multi-scale encoder
(:class:`SAM2ImageEncoder`), a multi-camera policy encoder, a Diffusion Policy observation encoder
and a bounded streaming video tracker.

Names are imported on first use, so ``import sam2_encoder`` is cheap and pulls in neither torch
nor a host (Hydra, zarr, Diffusion Policy, LeRobot).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_EXPORTS = {
    "VARIANTS": "variants",
    "Variant": "variants",
    "get_variant": "variants",
    "CheckpointError": "checkpoints",
    "convert_meta_state_dict": "checkpoints",
    "load_checkpoint": "checkpoints",
    "resolve_checkpoint": "checkpoints",
    "SAM2Transforms": "transforms",
    "FeaturePyramid": "image_encoder",
    "SAM2ImageEncoder": "image_encoder",
    "EncoderConfig": "config",
    "MultiCameraEncoder": "camera_encoder",
    "StreamingPredictor": "streaming",
    "TrackResult": "streaming",
    "ObjectTracker": "object_tracking",
    "TrackerModules": "object_tracking",
    "SAM2ObsEncoder": "diffusion_policy.obs_encoder",
}

__all__ = [
    "VARIANTS",
    "CheckpointError",
    "EncoderConfig",
    "FeaturePyramid",
    "MultiCameraEncoder",
    "ObjectTracker",
    "SAM2ImageEncoder",
    "SAM2ObsEncoder",
    "SAM2Transforms",
    "StreamingPredictor",
    "TrackResult",
    "TrackerModules",
    "Variant",
    "__version__",
    "convert_meta_state_dict",
    "get_variant",
    "load_checkpoint",
    "resolve_checkpoint",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .camera_encoder import MultiCameraEncoder
    from .checkpoints import CheckpointError, convert_meta_state_dict, load_checkpoint, resolve_checkpoint
    from .config import EncoderConfig
    from .diffusion_policy.obs_encoder import SAM2ObsEncoder
    from .image_encoder import FeaturePyramid, SAM2ImageEncoder
    from .object_tracking import ObjectTracker, TrackerModules
    from .streaming import StreamingPredictor, TrackResult
    from .transforms import SAM2Transforms
    from .variants import VARIANTS, Variant, get_variant


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sam2_encoder' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
