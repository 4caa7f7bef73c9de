"""``SAM2ObsEncoder``: a drop-in for Diffusion Policy's ``MultiImageObsEncoder``.

Contract (see Diffusion Policy's ``DiffusionUnetImagePolicy``): built from ``shape_meta``;
``forward(obs_dict)`` takes ``obs_dict[key]`` of shape ``(N, *shape_meta.obs[key].shape)`` with
``N = B * n_obs_steps`` and returns ``(N, D)`` in the same row order, rgb features first (keys
sorted) then the raw low-dim values (keys sorted); ``output_shape()`` returns ``(D,)``.

Images arrive normalised by the policy's ``LinearNormalizer``: float in [-1, 1]; the input range
is converted exactly. Everything else is :class:`~sam2_encoder.camera_encoder.MultiCameraEncoder`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from ..camera_encoder import MultiCameraEncoder
from ..checkpoints import find_local_path

__all__ = ["SAM2ObsEncoder", "parse_shape_meta"]


def parse_shape_meta(shape_meta: Mapping[str, Any]) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """Split ``shape_meta["obs"]`` into rgb and low-dim keys (each sorted, as Diffusion Policy does).

    Args:
        shape_meta: ``{"obs": {key: {"shape": [...], "type": "rgb" | "low_dim"}}, ...}``;
            ``type`` defaults to ``low_dim``.

    Returns:
        ``(rgb, low_dim)``: ``{key: shape}`` dicts in sorted key order.

    Raises:
        ValueError: On a missing ``obs`` entry, an entry without ``shape``, an unknown type or an
            rgb shape other than (3, H, W).
    """
    if not isinstance(shape_meta, Mapping) or not isinstance(shape_meta.get("obs"), Mapping):
        got = sorted(shape_meta) if isinstance(shape_meta, Mapping) else type(shape_meta).__name__
        raise ValueError(f"shape_meta needs an 'obs' mapping of {{key: {{shape, type}}}}, got {got}")
    rgb: dict[str, tuple[int, ...]] = {}
    low_dim: dict[str, tuple[int, ...]] = {}
    for key in sorted(shape_meta["obs"]):
        attr = shape_meta["obs"][key]
        if not isinstance(attr, Mapping) or "shape" not in attr:
            raise ValueError(f"shape_meta.obs.{key} needs a 'shape' entry, got {attr!r}")
        try:
            shape = tuple(int(s) for s in attr["shape"])
        except (TypeError, ValueError):
            raise ValueError(f"shape_meta.obs.{key}.shape must be a list of ints, got {attr['shape']!r}") from None
        kind = attr.get("type", "low_dim")
        if kind == "rgb":
            if len(shape) != 3 or shape[0] != 3 or min(shape) < 1:
                raise ValueError(f"shape_meta.obs.{key}: rgb shape must be [3, H, W], got {list(shape)}")
            rgb[key] = shape
        elif kind == "low_dim":
            low_dim[key] = shape
        else:
            raise ValueError(f"shape_meta.obs.{key}: type must be 'rgb' or 'low_dim', got {kind!r}")
    if not rgb:
        raise ValueError("shape_meta.obs has no rgb key: SAM2ObsEncoder needs at least one camera")
    return rgb, low_dim


class SAM2ObsEncoder(MultiCameraEncoder):
    """Diffusion Policy observation encoder with a SAM 2 trunk shared by all cameras.

    Args:
        shape_meta: Diffusion Policy's shape meta (``obs`` entries with ``shape`` and ``type``).
        input_range: Range of incoming images; ``(-1, 1)`` is Diffusion Policy's normaliser.
        feature_cache: A ``sam2-encoder cache`` folder whose features the training data serves
            (see ``CachedFeatureDataset``). Checked against this encoder (variant, weights, image
            size, levels) when it exists; skipped when absent (e.g. on the robot at inference).
            Cameras whose input has the feature shape ``(C, h, w)`` skip the trunk either way.
        rgb_model: Ignored (accepted so a Diffusion Policy encoder block can switch ``_target_``).
        use_group_norm: Ignored (no BatchNorm in SAM 2).
        share_rgb_model: Ignored (the SAM 2 trunk is always shared).
        imagenet_norm: Ignored (SAM 2's own normalisation is always applied, on the correct range).
        **kwargs: Every other option of :class:`~sam2_encoder.camera_encoder.MultiCameraEncoder`
            (``variant``, ``checkpoint``, ``image_size``, ``levels``, ``pool``, ``num_keypoints``,
            ``feature_dim``, ``freeze``, ``finetune``, ``crop_shape``, ...).

    Shapes:
        ``forward({key: (N, *shape)}) -> (N, D)`` with ``D = output_shape()[0]``.
    """

    def __init__(
        self,
        shape_meta: Mapping[str, Any],
        *,
        input_range: Sequence[float] = (-1.0, 1.0),
        feature_cache: str | os.PathLike[str] | None = None,
        rgb_model: Any = None,
        use_group_norm: Any = None,
        share_rgb_model: Any = None,
        imagenet_norm: Any = None,
        **kwargs: Any,
    ) -> None:
        if rgb_model is not None:
            warnings.warn("SAM2ObsEncoder ignores rgb_model: the SAM 2 trunk is the vision model", stacklevel=2)
        rgb, low_dim = parse_shape_meta(shape_meta)
        super().__init__(rgb, low_dim, input_range=input_range, **kwargs)
        if feature_cache is not None:
            self._check_cache(feature_cache)

    def _check_cache(self, path: str | os.PathLike[str]) -> None:
        if self.crop_shape is not None or self.resize_shape is not None:
            raise ValueError(
                "feature_cache cannot be combined with crop_shape/resize_shape: cached features are computed "
                "from whole frames, so live inference must not crop either"
            )
        if not find_local_path(path).exists():
            warnings.warn(f"feature cache {path} not found: not checked (inference needs no cache)", stacklevel=3)
            return
        if self.encoder.pending_checkpoint is not None:
            warnings.warn(
                f"feature cache {path} not checked: the SAM 2 checkpoint {self.encoder.pending_checkpoint} was not "
                "found, so the weights it was built with are unknown until a saved state is loaded",
                stacklevel=3,
            )
            return
        from .feature_cache import FeatureCache  # zarr only when a cache is used

        FeatureCache(path).check_compatible(self.encoder, self.levels, layout=self.feature_layout)

    @property
    def feature_layout(self) -> str:
        """The feature-cache layout the heads read: ``"pool"``, or ``"packed"`` with ``fuse="coarse_to_fine"``.

        Pass it to ``CachedFeatureDataset(layout=...)``.
        """
        return "packed" if self.fuse == "coarse_to_fine" else "pool"
