"""The encoder's inputs: what an obs dict must hold, and how camera frames become SAM 2 pixels.

``MultiCameraEncoder.forward`` takes ``{key: (*lead, *shape)}``: every camera as frames
``(3, H, W)`` float in ``input_range`` (or precomputed features ``feature_shape``), every low-dim
key, and, with object tokens, the object masks ``(K, H, W)`` (unless the object tracker makes
them). The checks here give one error naming the key, the shape or value seen and what was
expected; :func:`to_pixels` maps frames (and masks) through the camera view to the trunk's input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from .camera_view import CameraView
from .object_tokens import check_masks
from .transforms import UINT8_HINT, SAM2Transforms

__all__ = ["batch_dims", "given_masks", "low_dim_values", "to_pixels", "tracks_call"]


def batch_dims(
    obs_dict: Mapping[str, torch.Tensor],
    cameras: Mapping[str, Sequence[int]],
    low_dim: Mapping[str, Sequence[int]],
    feature_shape: Sequence[int],
    head_dtype: torch.dtype,
) -> tuple[tuple[int, ...], int]:
    """The leading dims shared by every camera and low-dim input, and their product ``N``.

    Args:
        obs_dict: The inputs.
        cameras: ``{key: (3, H, W)}``; a camera may instead hold ``feature_shape`` features of ``head_dtype``.
        low_dim: ``{key: shape}``.
        feature_shape: ``(C, h, w)`` of precomputed features.
        head_dtype: The dtype precomputed features must have (the heads').

    Raises:
        KeyError, TypeError, ValueError: For a missing key, a non-tensor, features of another
            dtype, a wrong shape, or batch dims that differ between keys.
    """
    lead: tuple[int, ...] | None = None
    feature_shape = tuple(feature_shape)
    for key, shape in {**cameras, **low_dim}.items():
        shape = tuple(shape)
        if key not in obs_dict:
            raise KeyError(
                f"obs_dict is missing {key!r}; expected keys {sorted({**cameras, **low_dim})}, got {sorted(obs_dict)}"
            )
        value = obs_dict[key]
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"obs_dict[{key!r}] must be a torch.Tensor, got {type(value).__name__}")
        if key in cameras and tuple(value.shape[-3:]) == feature_shape:
            shape = feature_shape
            if value.dtype != head_dtype:
                raise TypeError(
                    f"obs_dict[{key!r}] holds precomputed features {tuple(value.shape)} of dtype {value.dtype}; "
                    f"the heads take {head_dtype} (FeatureCache.fused returns float32): convert them with "
                    f".to({head_dtype})"
                )
        if value.dim() < len(shape) + 1 or tuple(value.shape[value.dim() - len(shape) :]) != shape:
            expected = f"(N, {', '.join(map(str, shape))})"
            if key in cameras:
                expected += f" or cached features (N, {', '.join(map(str, feature_shape))})"
            raise ValueError(f"obs_dict[{key!r}] has shape {tuple(value.shape)}; expected {expected}")
        this = tuple(value.shape[: value.dim() - len(shape)])
        if lead is None:
            lead = this
        elif this != lead:
            raise ValueError(f"obs_dict[{key!r}] has batch dims {this}, other keys have {lead}")
    assert lead is not None
    return lead, math.prod(lead)


def given_masks(
    obs_dict: Mapping[str, torch.Tensor],
    object_masks: Mapping[str, str],
    cameras: Mapping[str, Sequence[int]],
    num_objects: int,
    lead: tuple[int, ...],
    n: int,
) -> dict[str, torch.Tensor]:
    """``{camera: (n, K, H, W) float}`` from the obs dict's mask keys (``object_masks``: camera -> key), checked.

    Raises:
        KeyError, ValueError: For a missing mask key, a wrong shape, or values outside [0, 1].
    """
    out = {}
    for camera, key in object_masks.items():
        if key not in obs_dict:
            raise KeyError(
                f"obs_dict is missing {key!r}, the object masks of camera {camera!r}; got keys {sorted(obs_dict)}"
            )
        _, h, w = cameras[camera]
        value = obs_dict[key]
        if isinstance(value, torch.Tensor) and tuple(value.shape) == (*lead, num_objects, h, w):
            value = value.reshape(n, num_objects, h, w)
        elif isinstance(value, torch.Tensor):
            expected = ", ".join(map(str, (*lead, num_objects, h, w)))
            raise ValueError(
                f"obs_dict[{key!r}] (object masks of camera {camera!r}) has shape {tuple(value.shape)}; expected "
                f"({expected}): the batch dims, num_objects={num_objects}, then the camera's H, W"
            )
        out[camera] = check_masks(value, key, (num_objects, h, w))
    return out


def tracks_call(obs_dict: Mapping[str, torch.Tensor], object_masks: Mapping[str, str], training: bool) -> bool:
    """Whether an encoder with an object tracker tracks this call: the obs dict has none of the mask keys.

    Raises:
        KeyError: For some mask keys but not all, or none in training / with autograd on.
    """
    keys = list(object_masks.values())
    given = [key for key in keys if key in obs_dict]
    if given and len(given) != len(keys):
        raise KeyError(
            f"obs_dict has object masks {given} but not {sorted(set(keys) - set(given))}; give all of them or none "
            "(the encoder's object tracker then makes them)"
        )
    if given:
        return False
    if training or torch.is_grad_enabled():
        raise KeyError(
            f"obs_dict is missing {keys[0]!r}, the object masks of camera {next(iter(object_masks))!r}; the "
            "object tracker runs at inference only (eval mode, under torch.no_grad()): training reads the masks "
            f"from the dataset; got keys {sorted(obs_dict)}"
        )
    return True


def low_dim_values(obs_dict: Mapping[str, torch.Tensor], keys: Sequence[str], n: int, dtype: torch.dtype) -> list:
    """``[(n, prod(shape))]`` per low-dim key, as ``dtype``.

    Raises:
        ValueError: For NaN or inf, naming the key, the row and the entry.
    """
    out = []
    for key in keys:
        value = obs_dict[key].reshape(n, -1).to(dtype)
        if not bool(torch.isfinite(value).all()):
            row, col = (~torch.isfinite(value)).nonzero()[0].tolist()
            raise ValueError(
                f"obs_dict[{key!r}] (low-dim input) contains NaN or inf: row {row}, entry {col} is "
                f"{value[row, col].item()}"
            )
        out.append(value)
    return out


def to_pixels(
    transforms: SAM2Transforms,
    view: CameraView,
    key: str,
    x: torch.Tensor,
    masks: torch.Tensor | None = None,
    training: bool = False,
    finish: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Frames to SAM 2 pixels ``(M, 3, S, S)``; object masks through the same resize and crop.

    Args:
        transforms: The encoder's SAM 2 preprocessing (``input_range``, channel order).
        view: Camera ``key``'s view.
        key: The camera, for messages.
        x: ``(M, 3, H, W)`` float in ``input_range``.
        masks: Optional ``(M, K, H, W)`` masks.
        training: Random crops (see :meth:`CameraView.apply`).
        finish: ``False`` stops before SAM 2's resize and normalisation: RGB in [0, 1], in the view.

    Returns:
        ``(pixels, masks in the view or None)``.
    """
    if not x.is_floating_point():
        raise TypeError(
            f"obs_dict[{key!r}] is {x.dtype}; expected float images in input_range "
            f"{transforms.input_range} (Diffusion Policy's normaliser output)"
        )
    try:
        x = transforms.to_rgb_unit(x)
    except ValueError as e:  # this encoder takes float images only: rescaling is the fix
        message = str(e).replace(UINT8_HINT, f"; scale 0..255 images to input_range {transforms.input_range}")
        raise ValueError(f"obs_dict[{key!r}]: {message}") from e
    if masks is not None:  # one tensor through resize and crop: the masks get the images' crops
        x = torch.cat([x, masks.to(x.dtype)], dim=1)
    x = view.apply(x, training)
    if masks is not None:
        x, masks = x[:, :3].contiguous(), x[:, 3:]
    return (transforms.finish(x) if finish else x), masks
