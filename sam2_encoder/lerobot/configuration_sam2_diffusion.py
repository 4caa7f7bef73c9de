"""``SAM2DiffusionConfig``: LeRobot's Diffusion Policy options with SAM 2 as the vision backbone.

Registered with LeRobot as policy type ``sam2_diffusion`` (``--policy.type=sam2_diffusion``). The
options of LeRobot's ``DiffusionConfig`` that still apply keep their names and meaning; the ResNet
ones (``vision_backbone``, ``pretrained_backbone_weights``, ``use_group_norm``,
``spatial_softmax_num_keypoints``, ``use_separate_rgb_encoder_per_camera``) are replaced by the
SAM 2 options (``sam2_*``, ``pool``, ``num_keypoints``, ``share_heads``, fine-tuning).

Images: LeRobot hands the policy float images in [0, 1]. SAM 2 applies its own (ImageNet)
normalisation inside the encoder, so VISUAL features must not be normalised by LeRobot:
``normalization_mapping["VISUAL"]`` is ``IDENTITY`` and any other value is refused.
"""

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from lerobot.configs import FeatureType, NormalizationMode, PreTrainedConfig
from lerobot.optim import AdamConfig, DiffuserSchedulerConfig
from lerobot.utils.constants import OBS_STATE

from ..config import EncoderConfig, option_docs, option_types
from .memory_history import MemoryLayout, check_memory_options
from .validation import check_diffusion_options, check_object_features, check_object_options, check_tracking

__all__ = ["ENCODER_OPTIONS", "LEROBOT_DEFAULTS", "LEROBOT_NAMES", "SAM2DiffusionConfig"]

logger = logging.getLogger(__name__)


#: The one table of LeRobot's names for encoder options it spells differently: ``{encoder option:
#: LeRobot option}`` (LeRobot's names of today stay, so saved ``config.json`` files keep loading).
LEROBOT_NAMES = {
    "variant": "sam2_variant",
    "checkpoint": "sam2_checkpoint",
    "image_size": "sam2_image_size",
    "random_crop": "crop_is_random",
    "compile": "sam2_compile",
    "fast_attention": "sam2_fast_attention",
    "seed": "sam2_seed",
    "download": "sam2_download",
    "object_masks_key": "object_masks",
}
#: Encoder options the LeRobot host sets itself instead of exposing them.
_FIXED = {"input_range": (0.0, 1.0)}  # LeRobot's float images; VISUAL normalisation is IDENTITY
#: Encoder options fed by a LeRobot option of the same name that LeRobot declares (and documents) itself.
_HOST_OWNED = ("n_obs_steps",)
#: ``{LeRobot option: encoder option}`` for every encoder option LeRobot exposes (all but the two above).
ENCODER_OPTIONS = {
    LEROBOT_NAMES.get(name, name): name for name in option_docs() if name not in _FIXED and name not in _HOST_OWNED
}
#: LeRobot's declared overrides of the encoder's defaults: ``{LeRobot option: default}``. The
#: policy tracks its objects itself unless told not to; ``{}`` is "none" for the mappings.
LEROBOT_DEFAULTS: dict[str, Any] = {"object_tracker": True, "object_masks": {}, "object_prompts": {}}
#: LeRobot's annotations where the encoder's do not suit draccus / JSON (lists, plain strings).
_LEROBOT_TYPES: dict[str, Any] = {
    "sam2_checkpoint": str | None,
    "levels": list[str],
    "fuse_channels": list[int],
    "object_masks": dict[str, str],
    "object_prompts": dict[str, Any],
}


def _with_encoder_options(cls: type) -> type:
    """Add every encoder option of :data:`ENCODER_OPTIONS` to ``cls`` as a dataclass field (before ``@dataclass``).

    The fields, their annotations, defaults and the docstring's lines come from
    :class:`~sam2_encoder.config.EncoderConfig`; draccus and ``config.json`` see ordinary fields.
    """
    docs, types = option_docs(), option_types()
    lines = []
    for name, option in ENCODER_OPTIONS.items():
        default, doc = docs[option]
        default = LEROBOT_DEFAULTS.get(name, default)
        if isinstance(default, tuple) and name in _LEROBOT_TYPES:
            default = list(default)
        cls.__annotations__[name] = _LEROBOT_TYPES.get(name, types[option])
        if isinstance(default, list | dict):
            setattr(cls, name, field(default_factory=lambda d=default: type(d)(d)))
        else:
            setattr(cls, name, default)
        alias = f" (the encoder's ``{option}``)" if option != name else ""
        lines.append(f"        {name}: {doc}{alias}")
    cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n" + "\n".join(lines) + "\n    "
    return cls


@PreTrainedConfig.register_subclass("sam2_diffusion")
@dataclass
@_with_encoder_options
class SAM2DiffusionConfig(PreTrainedConfig):
    """Configuration of ``SAM2DiffusionPolicy`` (LeRobot policy type ``sam2_diffusion``).

    Inputs: one or more cameras (``observation.image*``, all of shape (3, H, W), any H, W),
    optionally ``observation.state`` and ``observation.environment_state``. Output: ``action``.

    The SAM 2 encoder's options (listed last below) come from
    :class:`~sam2_encoder.config.EncoderConfig`, under the names of :data:`LEROBOT_NAMES`, with
    LeRobot's defaults of :data:`LEROBOT_DEFAULTS`; :meth:`encoder_config` builds the encoder's
    config from them. ``sam2_checkpoint`` is never read when a trained policy is reloaded (its
    ``model.safetensors`` holds the SAM 2 weights). Object tokens: ``object_masks`` is ``{camera key:
    mask feature key}``, e.g. ``{"observation.image": "observation.masks"}`` (a mask key must not
    contain ``image``: LeRobot's dataset statistics would take it for a camera); the mask feature
    holds ``(K, H, W)`` masks per frame at the camera's ``H, W``, never normalised, never part of the
    state. Training reads them from the dataset; at inference a batch without them is tracked by
    the policy (``object_prompts``, or ``policy.set_object_prompts(...)`` at run time), which needs
    ``freeze=True`` (with ``resize_shape`` / a crop, prompts are moved into the view the trunk sees and
    the masks are that view's); ``object_tracker=false``: no tracker weights,
    every batch must carry the masks.

    Args:
        n_obs_steps: Observation steps the policy sees (the current one and the ones before).
        horizon: Length of the predicted action sequence (a multiple of ``2 ** (len(down_dims) - 1)``).
        n_action_steps: Actions executed per prediction (at most ``horizon - n_obs_steps + 1``).
        normalization_mapping: LeRobot normalisation per feature type; ``VISUAL`` must be
            ``IDENTITY`` (SAM 2 normalises its input itself).
        drop_n_last_frames: Frames at the end of each episode never sampled as the current frame
            (LeRobot's ``EpisodeAwareSampler``).
        crop_ratio: With ``resize_shape``: crop ``int(side * crop_ratio)`` (1.0: no crop); sets ``crop_shape``.
        feature_cache: A cache of ``sam2-encoder lerobot-cache`` (same options, same dataset): training
            reads its cameras' frozen-trunk features instead of encoding their frames (the heads and the
            UNet still learn); refused when built for other options or another dataset. Needs ``freeze=true``
            and no random crops; ignored at inference (the saved policy runs on raw frames).
        down_dims: Channels of the UNet's temporal stages.
        kernel_size: UNet convolution kernel size.
        n_groups: GroupNorm groups in the UNet.
        diffusion_step_embed_dim: Size of the diffusion-step embedding.
        use_film_scale_modulation: FiLM scale as well as bias conditioning.
        gradient_checkpointing: Checkpoint the UNet's residual blocks in training.
        noise_scheduler_type: ``DDPM`` or ``DDIM``.
        num_train_timesteps: Diffusion steps of the forward process.
        beta_schedule: diffusers beta schedule.
        beta_start: First beta.
        beta_end: Last beta.
        prediction_type: ``epsilon`` or ``sample``.
        clip_sample: Clip samples to ``[-clip_sample_range, clip_sample_range]`` while denoising.
        clip_sample_range: The clipping range.
        num_inference_steps: Denoising steps at inference (``None``: ``num_train_timesteps``).
        compile_model: ``torch.compile`` the UNet.
        compile_mode: Mode for ``compile_model``.
        do_mask_loss_for_padding: Leave copy-padded actions out of the loss.
        optimizer_lr: Adam learning rate (the trunk gets ``optimizer_lr * trunk_lr_scale``).
        optimizer_betas: Adam betas.
        optimizer_eps: Adam eps.
        optimizer_weight_decay: Adam weight decay.
        scheduler_name: diffusers learning-rate schedule.
        scheduler_warmup_steps: Warm-up steps of the schedule.
    """

    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8

    normalization_mapping: dict[str, NormalizationMode] = field(
        default_factory=lambda: {
            "VISUAL": NormalizationMode.IDENTITY,
            "STATE": NormalizationMode.MIN_MAX,
            "ACTION": NormalizationMode.MIN_MAX,
        }
    )
    drop_n_last_frames: int = 7  # horizon - n_action_steps - n_obs_steps + 1

    # image preprocessing before SAM 2's own resize (resize_shape / crop_shape: encoder options)
    crop_ratio: float = 1.0
    feature_cache: str | None = None  # sam2-encoder lerobot-cache: train from cached trunk features

    # the SAM 2 encoder's options: added from EncoderConfig by _with_encoder_options

    # UNet
    down_dims: tuple[int, ...] = (512, 1024, 2048)
    kernel_size: int = 5
    n_groups: int = 8
    diffusion_step_embed_dim: int = 128
    use_film_scale_modulation: bool = True
    gradient_checkpointing: bool = False

    # noise scheduler
    noise_scheduler_type: str = "DDPM"
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    beta_start: float = 0.0001
    beta_end: float = 0.02
    prediction_type: str = "epsilon"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    num_inference_steps: int | None = None

    compile_model: bool = False
    compile_mode: str = "reduce-overhead"
    do_mask_loss_for_padding: bool = False

    # training presets
    optimizer_lr: float = 1e-4
    optimizer_betas: tuple[float, float] = (0.95, 0.999)
    optimizer_eps: float = 1e-8
    optimizer_weight_decay: float = 1e-6
    scheduler_name: str = "cosine"
    scheduler_warmup_steps: int = 500

    def __post_init__(self) -> None:
        """Validate the options; each problem is one ``ValueError`` naming the option and value."""
        super().__post_init__()
        try:
            self._validate()
        except ValueError as e:
            # on the command line draccus replaces this error by "Couldn't instantiate class
            # SAM2DiffusionConfig using the given arguments": log what is wrong first
            logger.error("%s", e)
            raise

    def _validate(self) -> None:
        visual = self.normalization_mapping.get("VISUAL", NormalizationMode.IDENTITY)
        if NormalizationMode(visual) is not NormalizationMode.IDENTITY:
            raise ValueError(
                "sam2_diffusion: normalization_mapping['VISUAL'] must be IDENTITY, got "
                f"{NormalizationMode(visual).name}; SAM 2 normalises images itself (they arrive as float "
                "[0, 1]), LeRobot's normalisation would apply twice"
            )
        self.normalization_mapping["VISUAL"] = NormalizationMode.IDENTITY
        check_diffusion_options(self)
        check_object_options(self)
        check_memory_options(self)
        if not 0 < self.crop_ratio <= 1.0:
            raise ValueError(f"sam2_diffusion: crop_ratio must be in (0, 1], got {self.crop_ratio}")
        config = self.encoder_config()  # every encoder option, validated once by the encoder's config
        if config.view.resize_shape is not None:  # LeRobot's rule: the ratio decides the crop after a resize
            h, w = config.view.resize_shape
            ratio = self.crop_ratio
            self.crop_shape = (int(h * ratio), int(w * ratio)) if ratio < 1.0 else None
            config = self.encoder_config()
        self.resize_shape, self.crop_shape = config.view.resize_shape, config.view.crop_shape
        self.sam2_variant = config.backbone.variant  # the canonical name
        if isinstance(self.levels, str):
            self.levels = [self.levels]
        if self.feature_cache is not None and (not self.freeze or (self.crop_shape and self.crop_is_random)):
            why = "freeze=false fine-tunes the trunk" if not self.freeze else "crop_is_random=true crops at random"
            raise ValueError(
                f"sam2_diffusion: feature_cache holds each frame's frozen-trunk features once, but {why}: set "
                "freeze=true and crop_is_random=false, or train from frames (no feature_cache)"
            )
        if self.object_prompts:
            check_tracking(self)

    def check_tracking(self) -> None:
        """Raise unless the policy can track objects itself (see :func:`~.validation.check_tracking`)."""
        check_tracking(self)

    def set_dataset_feature_metadata(self, features: dict[str, Any]) -> None:
        """``make_policy``'s hook, called once ``input_features`` are typed from the dataset.

        With ``feature_cache`` and its dataset view (``--dataset.root=CACHE/dataset``: no video for the
        cached cameras), the cached cameras are put back as the source dataset types them
        (:func:`~.dataset_view.restore_cached_cameras`); otherwise nothing changes.
        """
        if self.feature_cache is not None and self.input_features:
            from .dataset_view import restore_cached_cameras

            self.input_features = restore_cached_cameras(self.feature_cache, self.input_features)

    def encoder_config(self, load_checkpoint: bool = True) -> EncoderConfig:
        """The encoder's options of this policy as an :class:`~sam2_encoder.config.EncoderConfig`.

        Args:
            load_checkpoint: Read (and, with ``sam2_download``, download) ``sam2_checkpoint``;
                ``False``: seeded random SAM 2 weights that a saved state dict replaces.

        Raises:
            ValueError: ``"sam2_diffusion: <the encoder's message>"``, naming LeRobot's option.
        """
        options = {encoder: getattr(self, name) for name, encoder in ENCODER_OPTIONS.items()}
        tracks = bool(self.object_masks) and self.object_tracker and self.freeze  # the encoder's tracker
        options.update(_FIXED, n_obs_steps=self.n_obs_steps, object_tracker=tracks)
        options["object_masks_key"] = dict(sorted(self.object_masks.items())) or None
        options["object_prompts"] = self.object_prompts if tracks else None
        if not load_checkpoint:
            options.update(checkpoint=None, download=False)
        try:
            return EncoderConfig.from_flat(**options)
        except ValueError as e:
            raise ValueError(f"sam2_diffusion: {_lerobot_names(str(e))}") from e

    def get_optimizer_preset(self) -> AdamConfig:
        """Adam with the ``optimizer_*`` options (the trunk's group scales its own lr)."""
        return AdamConfig(
            lr=self.optimizer_lr,
            betas=self.optimizer_betas,
            eps=self.optimizer_eps,
            weight_decay=self.optimizer_weight_decay,
        )

    def get_scheduler_preset(self) -> DiffuserSchedulerConfig:
        """Diffusers' ``scheduler_name`` schedule with ``scheduler_warmup_steps`` warm-up."""
        return DiffuserSchedulerConfig(name=self.scheduler_name, num_warmup_steps=self.scheduler_warmup_steps)

    def validate_features(self) -> None:
        """Check the input / output features against what the policy needs.

        Raises:
            ValueError: No camera, a camera that is not (3, H, W), a crop larger than a camera, no
                ``action`` output, an ``object_masks`` camera or mask feature that is missing or of
                the wrong shape, or ``object_prompts`` that do not fit the cameras.
        """
        if not self.image_features:
            raise ValueError(
                "sam2_diffusion needs at least one camera (a VISUAL input feature such as observation.image); "
                f"got input features {sorted(self.input_features or {})}"
            )
        for key, ft in self.image_features.items():
            if len(ft.shape) != 3 or ft.shape[0] != 3:
                raise ValueError(f"sam2_diffusion: camera {key!r} must have shape (3, H, W), got {tuple(ft.shape)}")
            if self.resize_shape is None and self.crop_shape is not None:
                if self.crop_shape[0] > ft.shape[1] or self.crop_shape[1] > ft.shape[2]:
                    raise ValueError(
                        f"sam2_diffusion: crop_shape {tuple(self.crop_shape)} is larger than camera {key!r} "
                        f"{tuple(ft.shape[1:])}"
                    )
        if self.action_feature is None:
            raise ValueError(
                "sam2_diffusion needs an 'action' output feature; "
                f"got output features {sorted(self.output_features or {})}"
            )
        check_object_features(self)

    @property
    def low_dim_keys(self) -> list[str]:
        """The vector inputs the policy reads: ``observation.state`` and ENV features (never object masks)."""
        masks = set(self.object_masks.values())
        return [
            key
            for key, ft in (self.input_features or {}).items()
            if ((ft.type is FeatureType.STATE and key == OBS_STATE) or ft.type is FeatureType.ENV) and key not in masks
        ]

    @property
    def observation_delta_indices(self) -> list[int]:
        """Observation frames relative to the current one: ``[1 - n_obs_steps, ..., 0]``.

        With ``memory``, every bank frame of the window too (each delta once, sorted; see
        :meth:`memory_layout`): LeRobot's dataset loads them, clamped into the episode.
        """
        return list(self.memory_layout().deltas)

    def memory_layout(self) -> MemoryLayout:
        """Where the window and each window frame's bank frames sit in :attr:`observation_delta_indices`."""
        return MemoryLayout.build(self.n_obs_steps, self.encoder_config(load_checkpoint=False).policy_memory)

    @property
    def action_delta_indices(self) -> list[int]:
        """Action frames: ``horizon`` of them from the oldest observation step."""
        return list(range(1 - self.n_obs_steps, 1 - self.n_obs_steps + self.horizon))

    @property
    def reward_delta_indices(self) -> None:
        """Rewards are not used."""
        return None


def _lerobot_names(message: str) -> str:
    """An encoder config's error ``message`` with the encoder's option names in LeRobot's spelling."""
    names = {encoder: name for name, encoder in ENCODER_OPTIONS.items() if name != encoder}
    pattern = r"\b(" + "|".join(map(re.escape, names)) + r")(?=\s+must\b|\s+is\b|=)"  # the option, not the word
    return re.sub(pattern, lambda m: names[m.group(1)], message)
