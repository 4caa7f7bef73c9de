"""``SAM2ObsEncoder``: a drop-in for Diffusion Policy's ``MultiImageObsEncoder``.

Contract (see Diffusion Policy's ``DiffusionUnetImagePolicy``): built from ``shape_meta``;
``forward(obs_dict)`` takes ``obs_dict[key]`` of shape ``(N, *shape_meta.obs[key].shape)`` with
``N = B * n_obs_steps`` and returns ``(N, D)`` in the same row order, rgb features first (keys
sorted) then the raw low-dim values (keys sorted); ``output_shape()`` returns ``(D,)``.

Images arrive normalised by the policy's ``LinearNormalizer``: float in [-1, 1]; the input range
is converted exactly. Everything else is :class:`~sam2_encoder.camera_encoder.MultiCameraEncoder`.

Object tokens at inference without masks in the obs (DP's simulator runners and
``eval_real_robot.py`` never provide them): ``object_tracker=True`` with ``object_prompts`` (camera
pixels) and ``n_obs_steps`` (the presets pass DP's top-level ``n_obs_steps``) tracks the objects on the
policy's own trunk pass, one stream per batch row ``b`` of DP's ``b * To + t`` rows. DP's
``policy.reset()`` does not reach the encoder: a robot loop calls
``policy.obs_encoder.reset_objects()`` beside it (and may call ``set_object_prompts`` per episode);
DP's sim runners need nothing (their first window repeats the episode's first frame, which
restarts a stream).

Policy memory (``memory="sam2"``): the encoder's banks need every frame of an episode, one new frame
per call, while DP's runners call the policy every ``n_action_steps`` steps. Given DP's
``n_action_steps`` (the memory preset passes it), an encoder with memory refuses any value but 1.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..camera_encoder import MultiCameraEncoder
from ..checkpoints import find_local_path
from ..config import whole_dims

__all__ = [
    "DP_BLOCK_OPTIONS",
    "DP_DEFAULTS",
    "DP_ONLY_OPTIONS",
    "SAM2ObsEncoder",
    "parse_mask_meta",
    "parse_shape_meta",
]

#: Encoder options whose Diffusion Policy default differs from :class:`~sam2_encoder.config.EncoderConfig`'s
#: (the presets' ``base.yaml`` carries the same): DP's normaliser gives images in [-1, 1]; ``num_objects``
#: comes from shape_meta's mask entries; ``n_obs_steps`` from the workspace's own.
DP_DEFAULTS: dict[str, Any] = {
    "input_range": (-1.0, 1.0),
    "num_objects": None,
    "n_obs_steps": "${oc.select:n_obs_steps,null}",
}
#: Encoder options that DP's own ``policy.obs_encoder`` block sets (``base.yaml`` leaves them to it).
DP_BLOCK_OPTIONS = ("resize_shape", "crop_shape", "random_crop")
#: Arguments of :class:`SAM2ObsEncoder` that are not encoder options.
DP_ONLY_OPTIONS = (
    "_target_",
    "shape_meta",
    "feature_cache",
    "rgb_model",
    "use_group_norm",
    "share_rgb_model",
    "imagenet_norm",
    "n_action_steps",
)


def _split(
    shape_meta: Mapping[str, Any],
) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]], dict[str, tuple[str, tuple[int, ...]]]]:
    """``(rgb, low_dim, masks)`` of ``shape_meta["obs"]``; ``masks`` is ``{camera: (key, (K, H, W))}``."""
    if not isinstance(shape_meta, Mapping) or not isinstance(shape_meta.get("obs"), Mapping):
        got = sorted(shape_meta) if isinstance(shape_meta, Mapping) else type(shape_meta).__name__
        raise ValueError(f"shape_meta needs an 'obs' mapping of {{key: {{shape, type}}}}, got {got}")
    rgb: dict[str, tuple[int, ...]] = {}
    low_dim: dict[str, tuple[int, ...]] = {}
    mask_entries: dict[str, tuple[Any, tuple[int, ...]]] = {}
    for key in sorted(shape_meta["obs"]):
        attr = shape_meta["obs"][key]
        if not isinstance(attr, Mapping) or "shape" not in attr:
            raise ValueError(f"shape_meta.obs.{key} needs a 'shape' entry, got {attr!r}")
        shape = whole_dims(attr["shape"], f"shape_meta.obs.{key}.shape")
        kind = attr.get("type", "low_dim")
        if kind == "rgb":
            if len(shape) != 3 or shape[0] != 3:
                raise ValueError(f"shape_meta.obs.{key}: rgb shape must be [3, H, W], got {list(shape)}")
            rgb[key] = shape
        elif kind == "low_dim":
            low_dim[key] = shape
        elif kind == "mask":
            if len(shape) != 3:
                raise ValueError(f"shape_meta.obs.{key}: mask shape must be [K, H, W] (K objects), got {list(shape)}")
            mask_entries[key] = (attr.get("camera"), shape)
        else:
            raise ValueError(f"shape_meta.obs.{key}: type must be 'rgb', 'low_dim' or 'mask', got {kind!r}")
    if not rgb:
        raise ValueError("shape_meta.obs has no rgb key: SAM2ObsEncoder needs at least one camera")
    masks: dict[str, tuple[str, tuple[int, ...]]] = {}
    for key, (camera, shape) in mask_entries.items():
        if camera is None and len(rgb) == 1:
            camera = next(iter(rgb))
        if not isinstance(camera, str) or camera not in rgb:
            got = "no camera" if camera is None else f"camera {camera!r}"
            raise ValueError(
                f"shape_meta.obs.{key}: a mask entry needs camera: <the rgb key it belongs to>, one of {sorted(rgb)}; "
                f"got {got}"
            )
        if shape[1:] != rgb[camera][1:]:
            raise ValueError(
                f"shape_meta.obs.{key}: mask shape [K, H, W] must have camera {camera!r}'s H, W "
                f"{list(rgb[camera][1:])}, got {list(shape)}"
            )
        if camera in masks:
            raise ValueError(
                f"shape_meta.obs: camera {camera!r} has two mask entries, {masks[camera][0]!r} and {key!r}; "
                "give one (K, H, W) entry per camera"
            )
        masks[camera] = (key, shape)
    counts = {key: shape[0] for key, shape in masks.values()}
    if len(set(counts.values())) > 1:
        raise ValueError(
            f"shape_meta.obs: every mask entry must track the same number of objects K (num_objects), got {counts}"
        )
    return rgb, low_dim, dict(sorted(masks.items()))


def parse_shape_meta(shape_meta: Mapping[str, Any]) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """Split ``shape_meta["obs"]`` into rgb and low-dim keys (each sorted, as Diffusion Policy does).

    Mask entries (``type: mask``) belong to neither; see :func:`parse_mask_meta`.

    Args:
        shape_meta: ``{"obs": {key: {"shape": [...], "type": "rgb" | "low_dim" | "mask"}}, ...}``;
            ``type`` defaults to ``low_dim``.

    Returns:
        ``(rgb, low_dim)``: ``{key: shape}`` dicts in sorted key order.

    Raises:
        ValueError: On a missing ``obs`` entry, an entry without ``shape``, a shape that is not a
            list of whole numbers >= 1, an unknown type, an rgb shape other than (3, H, W), no rgb
            key, or a bad mask entry (see :func:`parse_mask_meta`).
    """
    rgb, low_dim, _ = _split(shape_meta)
    return rgb, low_dim


def parse_mask_meta(shape_meta: Mapping[str, Any]) -> dict[str, tuple[str, tuple[int, int, int]]]:
    """The object-mask entries of ``shape_meta["obs"]``: ``{camera: (mask key, (K, H, W))}``.

    A mask entry is ``{shape: [K, H, W], type: mask, camera: <rgb key>}``: per-frame masks of K
    tracked objects at that camera's H, W, fed to the object tokens (``object_masks_key``). The
    ``camera`` attribute may be left out when there is one rgb key. Diffusion Policy's own code
    (datasets, real-world helpers) skips entries whose type is neither rgb nor low_dim.

    Args:
        shape_meta: Diffusion Policy's shape meta.

    Returns:
        ``{camera: (key, (K, H, W))}``, cameras sorted; empty without mask entries.

    Raises:
        ValueError: For a mask shape that is not ``[K, H, W]`` with the camera's ``H, W``, an
            unknown or missing camera, two masks for one camera, or different K across cameras
            (and everything :func:`parse_shape_meta` refuses).
    """
    return _split(shape_meta)[2]  # type: ignore[return-value]


def _masks_from_meta(
    masks: Mapping[str, tuple[str, tuple[int, ...]]], given_key: Any, given_count: Any
) -> dict[str, Any]:
    """``object_masks_key`` / ``num_objects`` from shape_meta's mask entries, checked against given ones."""
    from_meta = {camera: key for camera, (key, _) in masks.items()}
    count = next(iter(masks.values()))[1][0]
    if given_key is not None:
        if isinstance(given_key, str):
            same = len(from_meta) == 1 and next(iter(from_meta.values())) == given_key
        else:
            same = isinstance(given_key, Mapping) and {str(c): str(k) for c, k in given_key.items()} == from_meta
        if not same:
            raise ValueError(
                f"object_masks_key={given_key!r} disagrees with the mask entries of shape_meta ({from_meta}); "
                "leave object_masks_key out (null) to take them from shape_meta"
            )
    if given_count is not None and (isinstance(given_count, bool) or given_count != count):
        key, shape = next(iter(masks.values()))
        raise ValueError(
            f"num_objects={given_count!r} disagrees with shape_meta.obs.{key}.shape {list(shape)} (K={count}); "
            "leave num_objects out (null) to take it from shape_meta"
        )
    return {"object_masks_key": from_meta, "num_objects": count}


def _check_memory_action_steps(n_action_steps: Any) -> None:
    """Refuse DP's ``n_action_steps`` other than 1 (or ``None``, unknown) for an encoder with policy memory."""
    if n_action_steps is None or (not isinstance(n_action_steps, bool) and n_action_steps == 1):
        return
    raise ValueError(
        f"n_action_steps={n_action_steps!r} with memory='sam2': Diffusion Policy's runners call the policy every "
        "n_action_steps steps with the last n_obs_steps frames, but the memory needs every frame of an episode in "
        "order, one new frame per call; set n_action_steps=1 (train_diffusion_unet_sam2_memory_workspace's value)"
    )


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
        n_action_steps: DP's ``n_action_steps`` (``None``: unknown, not checked); with ``memory="sam2"``
            it must be 1 (see the module doc).
        **kwargs: Every other option, flat: the fields of :class:`~sam2_encoder.config.EncoderConfig`
            (``variant``, ``checkpoint``, ``image_size``, ``levels``, ``pool``, ``crop_shape``, ...;
            an unknown one is named with the closest valid one). With mask entries in
            ``shape_meta`` (``type: mask``, see :func:`parse_mask_meta`), ``object_masks_key`` and
            ``num_objects`` come from them (given as well, they must agree; ``None`` = from
            ``shape_meta``). ``object_tracker``, ``object_prompts``, ``n_obs_steps`` and
            ``object_restart``: the tracker for inference without masks (see the module doc).

    Shapes:
        ``forward({key: (N, *shape)}) -> (N, D)`` with ``D = output_shape()[0]``.
    """

    def __init__(
        self,
        shape_meta: Mapping[str, Any],
        *,
        input_range: Sequence[float] = DP_DEFAULTS["input_range"],
        feature_cache: str | os.PathLike[str] | None = None,
        rgb_model: Any = None,
        use_group_norm: Any = None,
        share_rgb_model: Any = None,
        imagenet_norm: Any = None,
        n_action_steps: int | None = None,
        **kwargs: Any,
    ) -> None:
        if rgb_model is not None:
            warnings.warn("SAM2ObsEncoder ignores rgb_model: the SAM 2 trunk is the vision model", stacklevel=2)
        rgb, low_dim, masks = _split(shape_meta)
        if masks:
            kwargs.update(_masks_from_meta(masks, kwargs.get("object_masks_key"), kwargs.get("num_objects")))
        elif kwargs.get("num_objects", 1) is None:  # null in a config: "from shape_meta", which has none
            kwargs.pop("num_objects")
        super().__init__(rgb, low_dim, input_range=input_range, **kwargs)
        if self.memory is not None:
            _check_memory_action_steps(n_action_steps)
        self._range_unchecked = float(self.config.view.input_range[0]) < 0  # see check_normalised
        if feature_cache is not None:
            self._check_cache(feature_cache)

    def forward(self, obs_dict: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Encode a batch (see :meth:`MultiCameraEncoder.forward`), after :meth:`check_normalised`.

        Shapes:
            ``{key: (N, *shape)} -> (N, D)``.
        """
        if self._range_unchecked and not (torch.compiler.is_compiling() or torch.compiler.is_exporting()):
            self.check_normalised(obs_dict)
        return super().forward(obs_dict)

    def check_normalised(self, obs_dict: Mapping[str, torch.Tensor]) -> None:
        """Warn once if the images look un-normalised: every camera's whole batch in [0, 1].

        DP's normaliser maps a [0, 1] image to [-1, 1]: a real normalised batch has values below 0
        unless every pixel of every camera is at least half bright. The check runs on each call
        until one batch has a value below 0 (then it stops for good), so it costs one min/max per
        camera on the first call of a correctly wired policy. Precomputed feature inputs are skipped.

        Args:
            obs_dict: ``{key: (N, *shape)}`` as given to :meth:`forward`.
        """
        frames = [
            obs_dict[key]
            for key, shape in self.rgb_shapes.items()
            if key in obs_dict and tuple(obs_dict[key].shape[-3:]) == tuple(shape) and obs_dict[key].is_floating_point()
        ]
        if not frames:
            return
        low = min(float(x.min()) for x in frames)
        if low < 0:
            self._range_unchecked = False
            return
        if max(float(x.max()) for x in frames) <= 1:
            self._range_unchecked = False
            lo, hi = self.config.view.input_range
            warnings.warn(
                f"SAM2ObsEncoder: every camera's images {sorted(self.rgb_shapes)} lie in [0, 1], but input_range is "
                f"[{lo}, {hi}] (Diffusion Policy's normaliser output): SAM 2 then sees washed-out frames. Normalise "
                "the images with the policy's normaliser, or set input_range: [0.0, 1.0] if they are [0, 1] on purpose",
                stacklevel=3,
            )

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
