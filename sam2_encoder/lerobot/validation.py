"""Checks of ``sam2_diffusion``'s options that are LeRobot's own, beside the encoder's (``EncoderConfig``).

The diffusion part (UNet, horizon, noise scheduler), the object-token options and features (mask
keys LeRobot can load, mask features of the cameras' size, prompts inside the frames) and what the
policy's own tracker needs. Each function takes a ``SAM2DiffusionConfig`` (not imported here:
the configuration imports this module). Each problem is one ``ValueError`` starting ``sam2_diffusion:``.
"""

from __future__ import annotations

from typing import Any

from ..object_tracking import parse_object_prompts

__all__ = ["check_diffusion_options", "check_object_features", "check_object_options", "check_tracking"]

PREDICTION_TYPES = ("epsilon", "sample")
NOISE_SCHEDULERS = ("DDPM", "DDIM")


def check_diffusion_options(config: Any) -> None:
    """The UNet, horizon and noise-scheduler options (LeRobot's diffusion part of the policy)."""
    for name in ("n_obs_steps", "horizon", "n_action_steps", "num_train_timesteps", "kernel_size", "n_groups"):
        if int(getattr(config, name)) < 1:
            raise ValueError(f"sam2_diffusion: {name} must be >= 1, got {getattr(config, name)}")
    if config.drop_n_last_frames < 0:
        raise ValueError(f"sam2_diffusion: drop_n_last_frames must be >= 0, got {config.drop_n_last_frames}")
    if config.n_action_steps > config.horizon - config.n_obs_steps + 1:
        raise ValueError(
            f"sam2_diffusion: n_action_steps ({config.n_action_steps}) must be <= horizon - n_obs_steps + 1 "
            f"({config.horizon} - {config.n_obs_steps} + 1 = {config.horizon - config.n_obs_steps + 1})"
        )
    if not config.down_dims:
        raise ValueError("sam2_diffusion: down_dims must name at least one UNet stage, got ()")
    factor = 2 ** (len(config.down_dims) - 1)  # every stage but the last halves the sequence
    if config.horizon % factor:
        raise ValueError(
            f"sam2_diffusion: horizon ({config.horizon}) must be a multiple of {factor} "
            f"(2 ** (len(down_dims) - 1) with down_dims={list(config.down_dims)})"
        )
    if config.prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"sam2_diffusion: prediction_type must be one of {PREDICTION_TYPES}, got {config.prediction_type!r}"
        )
    if config.noise_scheduler_type not in NOISE_SCHEDULERS:
        raise ValueError(
            f"sam2_diffusion: noise_scheduler_type must be one of {NOISE_SCHEDULERS}, "
            f"got {config.noise_scheduler_type!r}"
        )
    if config.num_inference_steps is not None and not 1 <= config.num_inference_steps <= config.num_train_timesteps:
        raise ValueError(
            f"sam2_diffusion: num_inference_steps must be in [1, num_train_timesteps={config.num_train_timesteps}], "
            f"got {config.num_inference_steps}"
        )


def check_object_options(config: Any) -> None:
    """``object_masks`` / ``object_prompts``: their types, and mask keys LeRobot can load."""
    masks = config.object_masks
    if not isinstance(masks, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in masks.items()):
        raise ValueError(
            f"sam2_diffusion: object_masks must be {{camera key: mask feature key}} (strings), got {masks!r}"
        )
    if not isinstance(config.object_prompts, dict):
        raise ValueError(
            f"sam2_diffusion: object_prompts must be {{camera: {{obj_id: prompt}}}}, got {config.object_prompts!r}"
        )
    if not masks:
        if config.object_prompts:
            raise ValueError(
                "sam2_diffusion: object_prompts are set but object_masks is empty; name the mask feature of each "
                "prompted camera, e.g. object_masks={'observation.image': 'observation.masks'}"
            )
        return
    keys = list(masks.values())
    if len(set(keys)) != len(keys) or set(keys) & set(masks) or "observation.state" in keys:
        raise ValueError(
            "sam2_diffusion: object_masks keys must be distinct from each other, from the cameras and from "
            f"observation.state, got {masks}"
        )
    imagelike = sorted(key for key in keys if "image" in key)
    if imagelike:
        raise ValueError(
            f"sam2_diffusion: object mask keys must not contain 'image', got {imagelike}: LeRobot 0.6's dataset "
            "statistics treat every such key as a camera; name them e.g. 'observation.masks' or "
            "'observation.masks.top'"
        )


def check_tracking(config: Any) -> None:
    """Raise unless the policy can track objects itself (the options its tracker needs).

    Raises:
        ValueError: With ``freeze=False`` (SAM 2's mask decoder and memory were trained on SAM 2's
            own features: give fine-tuned policies masks in the batch).
    """
    if not config.object_tracker:
        raise ValueError(
            "sam2_diffusion: the policy's own object tracker (object_prompts / set_object_prompts) is off "
            "(object_tracker=false): give the masks in the batch, or set object_tracker=true"
        )
    if not config.freeze:
        raise ValueError(
            "sam2_diffusion: the policy's own object tracker (object_prompts / set_object_prompts) needs "
            "freeze=true: SAM 2's tracker was trained on SAM 2's own features; with a fine-tuned trunk give "
            f"the masks in the batch ({sorted(config.object_masks.values())}) from an external tracker"
        )


def check_object_features(config: Any) -> None:
    """The ``object_masks`` cameras and mask features against the input features; prompts inside the frames."""
    inputs = config.input_features or {}
    cameras = config.image_features
    for camera, key in config.object_masks.items():
        if camera not in cameras:
            raise ValueError(
                f"sam2_diffusion: object_masks names camera {camera!r}, which is not a camera input; "
                f"cameras: {sorted(cameras)}"
            )
        expected = (config.num_objects, *cameras[camera].shape[1:])
        if key not in inputs:
            raise ValueError(
                f"sam2_diffusion: object_masks[{camera!r}] = {key!r} is not an input feature (the dataset has no "
                f"such key); expected masks of shape {expected} (num_objects, H, W) there; input features: "
                f"{sorted(inputs)}"
            )
        if tuple(inputs[key].shape) != expected:
            raise ValueError(
                f"sam2_diffusion: mask feature {key!r} of camera {camera!r} has shape {tuple(inputs[key].shape)}; "
                f"expected {expected}: num_objects={config.num_objects}, then the camera's H, W"
            )
    if config.object_masks and config.share_heads and set(config.object_masks) != set(cameras):
        raise ValueError(
            "sam2_diffusion: share_heads=true needs object masks for every camera or none; got them for "
            f"{sorted(config.object_masks)} of {sorted(cameras)}"
        )
    if config.object_prompts:
        frame_sizes = {camera: tuple(cameras[camera].shape[1:]) for camera in config.object_masks}
        try:
            parse_object_prompts(config.object_prompts, frame_sizes, config.num_objects)
        except ValueError as e:
            raise ValueError(f"sam2_diffusion: {e}") from e
