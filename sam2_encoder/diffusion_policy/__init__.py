"""Diffusion Policy host: obs encoder, feature cache, synthetic data and Hydra configs.

The observation encoder, the zarr feature cache and its dataset wrapper, the policy memory's dataset
wrapper (``MemoryDataset``), synthetic DP data, and the Hydra configs
(``pkg://sam2_encoder.diffusion_policy.config``).

Imported lazily: ``SAM2ObsEncoder`` needs torch only; the cache needs zarr.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SAM2ObsEncoder": "obs_encoder",
    "parse_shape_meta": "obs_encoder",
    "parse_mask_meta": "obs_encoder",
    "CacheError": "feature_cache",
    "CachedFeatureDataset": "feature_cache",
    "DPCachedFeatureDataset": "feature_cache",
    "FeatureCache": "feature_cache",
    "FeatureWriter": "feature_cache",
    "LAYOUTS": "feature_cache",
    "build_cache": "feature_cache",
    "check_layout": "feature_cache",
    "verify_cache": "feature_cache",
    "MaskCache": "mask_cache",
    "MaskCacheError": "mask_cache",
    "MaskDataset": "mask_cache",
    "DPMaskDataset": "mask_cache",
    "build_mask_cache": "mask_cache",
    "MemoryDataset": "memory_dataset",
    "DPMemoryDataset": "memory_dataset",
    "build_cache_with_masks": "tracked_cache",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sam2_encoder.diffusion_policy' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
