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
from dataclasses import dataclass, field
from typing import Any

from lerobot.configs import FeatureType, NormalizationMode, PreTrainedConfig
from lerobot.optim import AdamConfig, DiffuserSchedulerConfig
from lerobot.utils.constants import OBS_STATE

from ..finetune import FINETUNE_MODES
from ..image_encoder import LEVELS
from ..object_tracking import parse_object_prompts
from ..pooling import check_pool_options
from ..variants import check_image_size, get_variant

__all__ = ["SAM2DiffusionConfig"]

logger = logging.getLogger(__name__)

PREDICTION_TYPES = ("epsilon", "sample")
NOISE_SCHEDULERS = ("DDPM", "DDIM")
FUSE_MODES = ("pool", "coarse_to_fine")
OBJECT_TOKEN_MODES = ("append", "replace")
OBJECT_ABSENT_MODES = ("learned", "zero")


@PreTrainedConfig.register_subclass("sam2_diffusion")
@dataclass
class SAM2DiffusionConfig(PreTrainedConfig):
    """Configuration of ``SAM2DiffusionPolicy`` (LeRobot policy type ``sam2_diffusion``).

    Inputs: one or more cameras (``observation.image*``, all of shape (3, H, W), any H, W),
    optionally ``observation.state`` and ``observation.environment_state``. Output: ``action``.

    Args:
        n_obs_steps: Observation steps the policy sees (the current one and the ones before).
        horizon: Length of the predicted action sequence (a multiple of ``2 ** (len(down_dims) - 1)``).
        n_action_steps: Actions executed per prediction (at most ``horizon - n_obs_steps + 1``).
        normalization_mapping: LeRobot normalisation per feature type; ``VISUAL`` must be
            ``IDENTITY`` (SAM 2 normalises its input itself).
        drop_n_last_frames: Frames at the end of each episode never sampled as the current frame
            (LeRobot's ``EpisodeAwareSampler``).
        resize_shape: Optional ``(H, W)`` resize of every camera before cropping.
        crop_ratio: With ``resize_shape``: crop ``int(side * crop_ratio)`` (1.0: no crop).
        crop_shape: Optional ``(H, W)`` crop (derived from ``crop_ratio`` when ``resize_shape`` is set).
        crop_is_random: Random crops in training (centre crops at inference).
        sam2_variant: Released SAM 2 model (``sam2.1_hiera_tiny`` ... ``sam2_hiera_large``).
        sam2_checkpoint: SAM 2 weights used when the policy is built from scratch: a Meta ``.pt``,
            a ``.safetensors`` file or Hugging Face folder, or (with ``sam2_download``) a URL,
            variant name or hub id. ``None``: seeded random SAM 2 weights (tests only). Never read
            when a trained policy is reloaded: its ``model.safetensors`` holds the SAM 2 weights.
        sam2_download: Allow downloading ``sam2_checkpoint``.
        sam2_image_size: SAM 2 input side (a multiple of 32); every camera is resized to it.
        levels: Pyramid levels feeding the pooling heads (subset of ``s4``, ``s8``, ``s16``).
        pool: Pooling head: ``spatial_softmax``, ``attention``, ``avg`` or ``conv``.
        num_keypoints: Keypoints of the ``spatial_softmax`` head.
        pool_kwargs: Extra head options (``num_heads``, ``hidden_channels``, ``temperature``...).
        feature_dim: Feature size per camera (``None``: the head's natural size).
        share_heads: One pooling head for all cameras instead of one per camera.
        fuse: How the pyramid reaches the head: ``pool`` (``levels`` average-pooled to the coarsest
            selected grid) or ``coarse_to_fine`` (s16 upsampled x2 and fused with s8, then with s4,
            SAM2Act-style; ``levels`` must then be left at ``["s16"]`` or name all three).
        fuse_stride: Stride of the map the head reads with ``coarse_to_fine``: 8 or 4.
        fuse_channels: ``[C_8, C_4]`` widths of the coarse-to-fine maps (SAM 2's decoder: 64, 32).
        freeze: Keep the SAM 2 weights frozen (default; eval mode kept through ``.train()``).
        finetune: With ``freeze=False``: ``all`` (default), ``last_blocks`` or ``lora``.
        finetune_blocks: Trainable Hiera blocks for ``last_blocks``.
        lora_rank: LoRA rank for ``lora``.
        lora_alpha: LoRA alpha for ``lora``.
        trunk_lr_scale: Learning-rate multiplier of the trainable SAM 2 weights.
        object_masks: Object tokens: ``{camera key: mask feature key}``, e.g.
            ``{"observation.image": "observation.masks"}`` (a mask key must not contain ``image``:
            LeRobot's dataset statistics would take it for a camera). The mask feature holds ``(K, H, W)``
            masks per frame at the camera's ``H, W`` (bool, or float in [0, 1]; mask channel ``k``
            is the object with the ``k``-th smallest id); it is never normalised and never part of
            the state. Each such camera gets ``num_objects`` tokens, the mask-weighted average of
            ``object_level`` (see ``sam2_encoder.object_tokens``). Training reads the masks from the
            dataset; at inference a batch without them is tracked by the policy (``object_prompts``).
            Empty: no object tokens.
        num_objects: ``K``, the objects per camera.
        object_level: Pyramid level the tokens pool (``s4``, ``s8``, ``s16``); with ``fuse="pool"``
            the coarsest of ``levels``.
        object_tokens: ``append`` (after the camera's readout) or ``replace`` (tokens only).
        object_token_dim: Project each token to this size (``None``: the level's channels).
        object_absent: Token of an empty mask (object absent or lost): ``learned`` or ``zero``.
        object_prompts: First-frame prompts of the policy's own tracker, used when a batch comes
            without masks (LeRobot's eval environments, a robot): ``{camera: {obj_id: {"points":
            [[x, y], ...], "labels": [1, ...]} | {"box": [x0, y0, x1, y1]}}}`` in camera pixels,
            ``num_objects`` ids per camera of ``object_masks``. Each episode (``reset()``) starts
            new streams prompted on their first frame; ``policy.set_object_prompts(...)`` sets them
            at run time (a person's clicks, a detector). Needs ``freeze=True`` (SAM 2's tracker
            reads SAM 2's own features); with ``resize_shape`` / a crop, prompts are moved into the view the
            trunk sees (the centre crop at inference) and the masks are that view's, as in DP's obs encoder.
        object_tracker: Build the policy's own tracker when object tokens are on and the trunk is
            frozen (its SAM 2 prompt encoder, mask decoder and memory weights are saved in
            ``model.safetensors``: 47 MB for the tiny model; ``sam2_checkpoint`` must then be a full
            SAM 2 checkpoint). ``false``: no tracker, every batch must carry the masks.
        reuse_frames: At inference, frames already encoded in the previous prediction are not
            encoded again (one new frame per camera per control step; same actions).
        sam2_compile: ``torch.compile`` the SAM 2 pass.
        sam2_fast_attention: Our fused SAM 2 attention (bit-identical to transformers').
        sam2_seed: Seed of the pooling heads (and of random SAM 2 weights).
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

    # image preprocessing before SAM 2's own resize
    resize_shape: tuple[int, int] | None = None
    crop_ratio: float = 1.0
    crop_shape: tuple[int, int] | None = None
    crop_is_random: bool = True

    # SAM 2 encoder
    sam2_variant: str = "sam2.1_hiera_tiny"
    sam2_checkpoint: str | None = None
    sam2_download: bool = False
    sam2_image_size: int = 224
    levels: list[str] = field(default_factory=lambda: ["s16"])
    pool: str = "spatial_softmax"
    num_keypoints: int = 32
    pool_kwargs: dict[str, Any] = field(default_factory=dict)
    feature_dim: int | None = None
    share_heads: bool = False
    fuse: str = "pool"
    fuse_stride: int = 8
    fuse_channels: list[int] = field(default_factory=lambda: [64, 32])
    freeze: bool = True
    finetune: str | None = None
    finetune_blocks: int = 2
    lora_rank: int = 8
    lora_alpha: float = 16.0
    trunk_lr_scale: float = 0.1
    reuse_frames: bool = True
    sam2_compile: bool = False
    sam2_fast_attention: bool = True
    sam2_seed: int = 0

    # object tokens: masks from the dataset in training, from the policy's own tracker at inference
    object_masks: dict[str, str] = field(default_factory=dict)
    num_objects: int = 1
    object_level: str = "s16"
    object_tokens: str = "append"
    object_token_dim: int | None = None
    object_absent: str = "learned"
    object_prompts: dict[str, Any] = field(default_factory=dict)
    object_tracker: bool = True

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
        for name in ("n_obs_steps", "horizon", "n_action_steps", "num_train_timesteps", "kernel_size", "n_groups"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"sam2_diffusion: {name} must be >= 1, got {getattr(self, name)}")
        if self.drop_n_last_frames < 0:
            raise ValueError(f"sam2_diffusion: drop_n_last_frames must be >= 0, got {self.drop_n_last_frames}")
        if self.n_action_steps > self.horizon - self.n_obs_steps + 1:
            raise ValueError(
                f"sam2_diffusion: n_action_steps ({self.n_action_steps}) must be <= horizon - n_obs_steps + 1 "
                f"({self.horizon} - {self.n_obs_steps} + 1 = {self.horizon - self.n_obs_steps + 1})"
            )
        if not self.down_dims:
            raise ValueError("sam2_diffusion: down_dims must name at least one UNet stage, got ()")
        factor = 2 ** (len(self.down_dims) - 1)  # every stage but the last halves the sequence
        if self.horizon % factor:
            raise ValueError(
                f"sam2_diffusion: horizon ({self.horizon}) must be a multiple of {factor} "
                f"(2 ** (len(down_dims) - 1) with down_dims={list(self.down_dims)})"
            )
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"sam2_diffusion: prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}"
            )
        if self.noise_scheduler_type not in NOISE_SCHEDULERS:
            raise ValueError(
                f"sam2_diffusion: noise_scheduler_type must be one of {NOISE_SCHEDULERS}, "
                f"got {self.noise_scheduler_type!r}"
            )
        if self.num_inference_steps is not None and not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            raise ValueError(
                f"sam2_diffusion: num_inference_steps must be in [1, num_train_timesteps={self.num_train_timesteps}], "
                f"got {self.num_inference_steps}"
            )
        self._check_crop()
        self._check_sam2()
        self._check_objects()

    def _check_crop(self) -> None:
        if self.resize_shape is not None:
            if len(self.resize_shape) != 2 or any(int(d) <= 0 for d in self.resize_shape):
                raise ValueError(
                    f"sam2_diffusion: resize_shape must be two positive ints (H, W), got {self.resize_shape}"
                )
            self.resize_shape = (int(self.resize_shape[0]), int(self.resize_shape[1]))
        if not 0 < self.crop_ratio <= 1.0:
            raise ValueError(f"sam2_diffusion: crop_ratio must be in (0, 1], got {self.crop_ratio}")
        if self.resize_shape is not None:  # LeRobot's rule: the ratio decides the crop after a resize
            h, w = self.resize_shape
            ratio = self.crop_ratio
            self.crop_shape = (int(h * ratio), int(w * ratio)) if ratio < 1.0 else None
        if self.crop_shape is not None:
            if len(self.crop_shape) != 2 or any(int(d) <= 0 for d in self.crop_shape):
                raise ValueError(f"sam2_diffusion: crop_shape must be two positive ints (H, W), got {self.crop_shape}")
            self.crop_shape = (int(self.crop_shape[0]), int(self.crop_shape[1]))

    def _check_sam2(self) -> None:
        try:
            self.sam2_variant = get_variant(self.sam2_variant).name
            check_image_size(self.sam2_image_size)
            check_pool_options(
                self.pool, {"num_keypoints": self.num_keypoints} if self.pool == "spatial_softmax" else {}
            )
            check_pool_options(self.pool, self.pool_kwargs)
        except ValueError as e:
            raise ValueError(f"sam2_diffusion: {e}") from e
        if "num_keypoints" in self.pool_kwargs:
            raise ValueError("sam2_diffusion: set num_keypoints, not pool_kwargs['num_keypoints']")
        if "output_dim" in self.pool_kwargs:
            raise ValueError("sam2_diffusion: set feature_dim, not pool_kwargs['output_dim']")
        levels = [self.levels] if isinstance(self.levels, str) else list(self.levels)
        unknown = [lv for lv in levels if lv not in LEVELS]
        if unknown or not levels:
            raise ValueError(f"sam2_diffusion: levels must be a non-empty subset of {list(LEVELS)}, got {levels}")
        self.levels = levels
        self._check_fuse()
        if self.num_keypoints < 1:
            raise ValueError(f"sam2_diffusion: num_keypoints must be >= 1, got {self.num_keypoints}")
        if self.feature_dim is not None and self.feature_dim < 1:
            raise ValueError(f"sam2_diffusion: feature_dim must be >= 1 or None, got {self.feature_dim}")
        if self.finetune is not None and self.finetune not in FINETUNE_MODES:
            raise ValueError(f"sam2_diffusion: finetune must be None or one of {FINETUNE_MODES}, got {self.finetune!r}")
        if self.freeze and self.finetune is not None:
            raise ValueError(
                f"sam2_diffusion: finetune={self.finetune!r} needs freeze=false (the SAM 2 weights are frozen)"
            )
        if self.finetune_blocks < 1 or self.lora_rank < 1:
            raise ValueError(
                "sam2_diffusion: finetune_blocks and lora_rank must be >= 1, "
                f"got {self.finetune_blocks}, {self.lora_rank}"
            )
        if self.trunk_lr_scale < 0:
            raise ValueError(f"sam2_diffusion: trunk_lr_scale must be >= 0, got {self.trunk_lr_scale}")

    def _check_fuse(self) -> None:
        if self.fuse not in FUSE_MODES:
            raise ValueError(f"sam2_diffusion: fuse must be one of {FUSE_MODES}, got {self.fuse!r}")
        if type(self.fuse_stride) is not int or self.fuse_stride not in (8, 4):
            raise ValueError(f"sam2_diffusion: fuse_stride must be 8 or 4, got {self.fuse_stride!r}")
        channels = [self.fuse_channels] if isinstance(self.fuse_channels, int | str) else list(self.fuse_channels)
        if len(channels) != 2 or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in channels):
            raise ValueError(
                f"sam2_diffusion: fuse_channels must be two whole numbers >= 1 [C_8, C_4], got {self.fuse_channels!r}"
            )
        self.fuse_channels = channels
        if self.fuse == "coarse_to_fine" and sorted(self.levels) not in (["s16"], sorted(LEVELS)):
            raise ValueError(
                f"sam2_diffusion: fuse='coarse_to_fine' reads s4, s8 and s16 itself; got levels={self.levels} "
                "(leave levels at ['s16'] or name all three)"
            )

    def _check_objects(self) -> None:
        masks = self.object_masks
        if not isinstance(masks, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in masks.items()):
            raise ValueError(
                f"sam2_diffusion: object_masks must be {{camera key: mask feature key}} (strings), got {masks!r}"
            )
        if not masks:
            if self.object_prompts:
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
        if isinstance(self.num_objects, bool) or not isinstance(self.num_objects, int) or self.num_objects < 1:
            raise ValueError(f"sam2_diffusion: num_objects must be a whole number >= 1, got {self.num_objects!r}")
        if self.object_level not in LEVELS:
            raise ValueError(f"sam2_diffusion: object_level must be one of {list(LEVELS)}, got {self.object_level!r}")
        coarsest = max(self.levels, key=LEVELS.index)
        if self.fuse == "pool" and self.object_level != coarsest:
            raise ValueError(
                f"sam2_diffusion: object_level={self.object_level!r} with fuse='pool' must be the coarsest of "
                f"levels {self.levels} ({coarsest!r}; finer levels are pooled away)"
            )
        if self.object_tokens not in OBJECT_TOKEN_MODES:
            raise ValueError(
                f"sam2_diffusion: object_tokens must be one of {OBJECT_TOKEN_MODES}, got {self.object_tokens!r}"
            )
        dim = self.object_token_dim
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise ValueError(f"sam2_diffusion: object_token_dim must be None or a whole number >= 1, got {dim!r}")
        if self.object_absent not in OBJECT_ABSENT_MODES:
            raise ValueError(
                f"sam2_diffusion: object_absent must be one of {OBJECT_ABSENT_MODES}, got {self.object_absent!r}"
            )
        if not isinstance(self.object_prompts, dict):
            raise ValueError(
                f"sam2_diffusion: object_prompts must be {{camera: {{obj_id: prompt}}}}, got {self.object_prompts!r}"
            )
        if self.object_prompts:
            self.check_tracking()

    def check_tracking(self) -> None:
        """Raise unless the policy can track objects itself (the options its tracker needs).

        Raises:
            ValueError: With ``freeze=False`` (SAM 2's mask decoder and memory were trained on SAM 2's
                own features: give fine-tuned policies masks in the batch), or with ``resize_shape`` /
                a crop (the tracker sees whole camera frames).
        """
        if not self.object_tracker:
            raise ValueError(
                "sam2_diffusion: the policy's own object tracker (object_prompts / set_object_prompts) is off "
                "(object_tracker=false): give the masks in the batch, or set object_tracker=true"
            )
        if not self.freeze:
            raise ValueError(
                "sam2_diffusion: the policy's own object tracker (object_prompts / set_object_prompts) needs "
                "freeze=true: SAM 2's tracker was trained on SAM 2's own features; with a fine-tuned trunk give "
                f"the masks in the batch ({sorted(self.object_masks.values())}) from an external tracker"
            )

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
        self._validate_object_features()

    def _validate_object_features(self) -> None:
        inputs = self.input_features or {}
        cameras = self.image_features
        for camera, key in self.object_masks.items():
            if camera not in cameras:
                raise ValueError(
                    f"sam2_diffusion: object_masks names camera {camera!r}, which is not a camera input; "
                    f"cameras: {sorted(cameras)}"
                )
            expected = (self.num_objects, *cameras[camera].shape[1:])
            if key not in inputs:
                raise ValueError(
                    f"sam2_diffusion: object_masks[{camera!r}] = {key!r} is not an input feature (the dataset has no "
                    f"such key); expected masks of shape {expected} (num_objects, H, W) there; input features: "
                    f"{sorted(inputs)}"
                )
            if tuple(inputs[key].shape) != expected:
                raise ValueError(
                    f"sam2_diffusion: mask feature {key!r} of camera {camera!r} has shape {tuple(inputs[key].shape)}; "
                    f"expected {expected}: num_objects={self.num_objects}, then the camera's H, W"
                )
        if self.object_masks and self.share_heads and set(self.object_masks) != set(cameras):
            raise ValueError(
                "sam2_diffusion: share_heads=true needs object masks for every camera or none; got them for "
                f"{sorted(self.object_masks)} of {sorted(cameras)}"
            )
        if self.object_prompts:
            frame_sizes = {camera: tuple(cameras[camera].shape[1:]) for camera in self.object_masks}
            try:
                parse_object_prompts(self.object_prompts, frame_sizes, self.num_objects)
            except ValueError as e:
                raise ValueError(f"sam2_diffusion: {e}") from e

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
        """Observation frames relative to the current one: ``[1 - n_obs_steps, ..., 0]``."""
        return list(range(1 - self.n_obs_steps, 1))

    @property
    def action_delta_indices(self) -> list[int]:
        """Action frames: ``horizon`` of them from the oldest observation step."""
        return list(range(1 - self.n_obs_steps, 1 - self.n_obs_steps + self.horizon))

    @property
    def reward_delta_indices(self) -> None:
        """Rewards are not used."""
        return None
