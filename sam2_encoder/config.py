"""``EncoderConfig``: every option of ``MultiCameraEncoder``, defined and validated once.

The configuration is composed of small parts, one per concern: :class:`BackboneConfig` (the SAM 2
trunk), :class:`ViewConfig` (the camera view: input range, resize, crop), :class:`ReadoutConfig`
(pyramid levels, fusion and the pooling head), :class:`ObjectConfig` (object tokens),
:class:`TrackingConfig` (the inference-time object tracker), :class:`FinetuneConfig` and
:class:`MemoryConfig` (policy memory from SAM 2's memory bank), plus
``reuse_frames`` (the frame memo). Each option is ONE dataclass field: its name, type, default
and one-line doc (``field(metadata={"doc": ...})``); each part's ``__post_init__`` validates its
options, and :class:`EncoderConfig` checks the rules that span parts. Hosts build it from flat
options (:meth:`EncoderConfig.from_flat`: Diffusion Policy's Hydra YAML, LeRobot's config) and
read it back flat (:meth:`EncoderConfig.flat`); :func:`option_docs` gives every option's doc.

Rules that need the cameras (object mask keys per camera, a crop larger than a camera, prompts
inside the frames) are checked where the cameras are known, by ``MultiCameraEncoder``.
"""

import difflib
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from ._checks import whole_number
from .containers import to_plain
from .finetune import FINETUNE_MODES, check_lora_alpha
from .image_encoder import BACKENDS, LEVELS, PRECISIONS, build_seeded
from .pooling import check_pool_options
from .variants import check_image_size, get_variant

__all__ = [
    "BackboneConfig",
    "EncoderConfig",
    "FinetuneConfig",
    "MemoryConfig",
    "ObjectConfig",
    "ReadoutConfig",
    "TrackingConfig",
    "ViewConfig",
    "option_docs",
    "whole_dims",
]


def _option(default: Any, doc: str) -> Any:
    """A config field with its one-line ``doc`` (a mutable ``default`` is copied per instance)."""
    if isinstance(default, dict | list):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


def _set(part: object, name: str, value: Any) -> None:
    object.__setattr__(part, name, value)  # the parts are frozen: normalised values are set once here


@dataclass(frozen=True)
class BackboneConfig:
    """The SAM 2 trunk (see ``SAM2ImageEncoder``).

    ``download`` is off by default so that a host's reload (which re-runs the constructor) never
    touches the network: a checkpoint that is not found gives placeholder weights and a warning,
    which the host's saved state dict replaces (used before that, the encoder raises).
    """

    variant: str = _option("sam2.1_hiera_tiny", "Released SAM 2 model name (sam2.1_hiera_tiny ... sam2_hiera_large).")
    checkpoint: str | os.PathLike[str] | None = _option(
        None, "SAM 2 weights (a .pt, .safetensors or Hugging Face folder); null = seeded random weights."
    )
    image_size: int = _option(224, "SAM 2 input side (a multiple of 32); every camera is resized to it.")
    precision: str = _option("fp32", "fp32 | bf16: the Hiera trunk under bfloat16 autocast where the hardware has it.")
    backend: str = _option(
        "torch", "torch | openvino: the frozen trunk's inference in OpenVINO on the CPU (the [openvino] extra)."
    )
    compile: bool = _option(False, "torch.compile the encoder pass (static shapes).")
    fast_attention: bool = _option(True, "Our fused SAM 2 attention (bit-identical to transformers').")
    seed: int = _option(0, "Seed of the random parts (heads, random SAM 2 weights).")
    download: bool = _option(False, "Allow downloading a remote checkpoint (off: a reload never uses the network).")

    def __post_init__(self) -> None:
        _set(self, "variant", get_variant(self.variant).name)
        check_image_size(self.image_size)
        _choice("precision", self.precision, PRECISIONS)
        _choice("backend", self.backend, BACKENDS)
        build_seeded(lambda: None, self.seed)  # the seed check torch's RNG needs
        for name in ("compile", "fast_attention", "download"):
            _flag(name, getattr(self, name))
        if self.backend == "openvino" and self.compile:
            raise ValueError(
                "compile=True with backend='openvino': OpenVINO compiles the trunk itself; set compile=False "
                "(or backend='torch' to torch.compile it)"
            )


@dataclass(frozen=True)
class ViewConfig:
    """The camera view: how incoming frames reach SAM 2's own resize.

    Images are mapped from ``input_range`` to [0, 1] exactly, resized to ``resize_shape``, then
    cropped to ``crop_shape`` (random per image in train mode with ``random_crop``, centre
    otherwise: unlike Diffusion Policy, ``random_crop=False`` still crops); object masks get the
    same resize and crop.
    """

    input_range: tuple[float, float] = _option((0.0, 1.0), "Range of incoming float images (DP's normaliser: -1, 1).")
    channel_order: str = _option("RGB", "RGB | BGR: channel order of incoming images.")
    resize_shape: tuple[int, int] | None = _option(None, "Optional (H, W) resize before cropping (DP's option).")
    crop_shape: tuple[int, int] | None = _option(
        None, "Optional (H, W) crop: random in train mode with random_crop, centre otherwise."
    )
    random_crop: bool = _option(True, "Random crops in train mode (random_crop=false still crops, at the centre).")

    def __post_init__(self) -> None:
        _set(self, "input_range", _input_range(self.input_range))
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        for name in ("resize_shape", "crop_shape"):
            value = getattr(self, name)
            _set(self, name, None if value is None else whole_dims(value, name, 2))
        _flag("random_crop", self.random_crop)


@dataclass(frozen=True)
class ReadoutConfig:
    """How each camera's pyramid becomes one vector: levels, fusion and the pooling head."""

    levels: tuple[str, ...] = _option(("s16",), "Pyramid levels feeding the heads (s4, s8, s16).")
    pool: str = _option("spatial_softmax", "Head type: spatial_softmax | attention | avg | conv.")
    num_keypoints: int = _option(32, "Keypoints of the spatial_softmax head (unused by the others).")
    pool_kwargs: dict[str, Any] = _option({}, "Extra head options, e.g. {num_heads: 8} for attention.")
    feature_dim: int | None = _option(None, "Output size per camera; null = the head's own (2 * num_keypoints).")
    share_heads: bool = _option(False, "One head for all cameras instead of one per camera.")
    fuse: str = _option("pool", "pool (levels pooled to the coarsest grid) | coarse_to_fine (s16 -x2+ s8 -x2+ s4).")
    fuse_stride: int = _option(8, "coarse_to_fine: stride of the map the readout sees, 8 or 4.")
    fuse_channels: tuple[int, int] = _option((64, 32), "coarse_to_fine: (C_8, C_4) widths of the fused maps.")

    def __post_init__(self) -> None:
        levels = [self.levels] if isinstance(self.levels, str) else list(self.levels)
        if not levels or any(lv not in LEVELS for lv in levels):
            raise ValueError(f"levels must be a non-empty subset of {LEVELS}, got {levels}")
        _set(self, "levels", tuple(lv for lv in LEVELS if lv in levels))  # finest first
        if self.fuse not in ("pool", "coarse_to_fine"):
            raise ValueError(f"fuse must be 'pool' or 'coarse_to_fine', got {self.fuse!r}")
        if self.fuse == "coarse_to_fine":
            if self.levels not in (("s16",), LEVELS):
                raise ValueError(
                    f"fuse='coarse_to_fine' reads s4, s8 and s16 itself; got levels={list(self.levels)} "
                    "(leave levels at its default or give all three)"
                )
            _set(self, "levels", LEVELS)
        if type(self.fuse_stride) is not int or self.fuse_stride not in (8, 4):
            raise ValueError(f"fuse_stride must be 8 or 4, got {self.fuse_stride!r}")
        channels = [self.fuse_channels] if isinstance(self.fuse_channels, int | str) else list(self.fuse_channels)
        whole = [not isinstance(c, bool) and isinstance(c, numbers.Integral) and c >= 1 for c in channels]
        if len(channels) != 2 or not all(whole):
            raise ValueError(f"fuse_channels must be two positive ints (C_8, C_4), got {self.fuse_channels!r}")
        _set(self, "fuse_channels", (int(channels[0]), int(channels[1])))
        _set(self, "pool_kwargs", to_plain(dict(self.pool_kwargs or {})))
        whole_number(self.num_keypoints, "num_keypoints")
        if self.feature_dim is not None:
            whole_number(self.feature_dim, "feature_dim")
        _flag("share_heads", self.share_heads)
        check_pool_options(self.pool, self.head_options(with_output_dim=True))
        if self.pool == "spatial_softmax":
            whole_number(self.head_options()["num_keypoints"], "num_keypoints")

    def head_options(self, with_output_dim: bool = False) -> dict[str, Any]:
        """The pooling head's keyword options: ``pool_kwargs``, ``num_keypoints`` for spatial softmax.

        Args:
            with_output_dim: Add ``output_dim=feature_dim`` where the head itself projects (every
                head but spatial softmax, whose keypoints are projected by a linear layer after it).
        """
        options = dict(self.pool_kwargs)
        if self.pool == "spatial_softmax":
            options.setdefault("num_keypoints", self.num_keypoints)
        elif with_output_dim and self.feature_dim:
            options["output_dim"] = self.feature_dim
        return options


@dataclass(frozen=True)
class ObjectConfig:
    """Object tokens: per camera, ``num_objects`` mask-weighted averages of one pyramid level."""

    object_masks_key: str | dict[str, str] | None = _option(
        None, "Obs key of (K, H, W) object masks: a key (one camera) or {camera: key}; null = no object tokens."
    )
    num_objects: int = _option(1, "K, the objects per camera (mask channel k is the k-th smallest object id).")
    object_level: str = _option("s16", "Level the tokens pool: s4 | s8 | s16 (the coarsest of levels with fuse=pool).")
    object_tokens: str = _option("append", "append (after the camera's readout) | replace (tokens only).")
    object_token_dim: int | None = _option(None, "Project each token to this size; null = the level's channels.")
    object_absent: str = _option("learned", "Token of an empty mask (object absent or lost): learned | zero.")

    def __post_init__(self) -> None:
        if isinstance(self.object_masks_key, Mapping):
            _set(self, "object_masks_key", {str(k): v for k, v in self.object_masks_key.items()})
        _set(self, "num_objects", whole_number(self.num_objects, "num_objects"))
        if self.object_token_dim is not None:
            whole_number(self.object_token_dim, "object_token_dim")
        if self.object_masks_key is None:
            return  # the other options describe tokens that do not exist
        if self.object_level not in LEVELS:
            raise ValueError(f"object_level must be one of {LEVELS}, got {self.object_level!r}")
        if self.object_tokens not in ("append", "replace"):
            raise ValueError(f"object_tokens must be 'append' or 'replace', got {self.object_tokens!r}")
        if self.object_absent not in ("learned", "zero"):
            raise ValueError(f"object_absent must be 'learned' or 'zero', got {self.object_absent!r}")


@dataclass(frozen=True)
class TrackingConfig:
    """The inference-time object tracker (obs dicts without masks get them from SAM 2 trackers).

    Needs object tokens, ``freeze=True`` and a full SAM 2 checkpoint (memory modules). Prompts are
    in camera pixels (the obs image's ``W x H``, before ``resize_shape`` / ``crop_shape``),
    ``num_objects`` ids per camera with masks (mask channel ``k`` is the ``k``-th smallest id).
    Rows of a call are ``b * n_obs_steps + t`` (Diffusion Policy's layout), ``t = n_obs_steps - 1``
    the newest frame. ``object_restart="auto"`` starts a stream over at the first call, after
    ``reset_objects()`` / ``set_object_prompts()``, when the number of streams changes, on
    ``train()`` / ``eval()``, and when a stream's ``n_obs_steps`` frames are all one frame that is
    not the last frame it tracked (Diffusion Policy's ``MultiStepWrapper`` at an episode start);
    ``"manual"``: the same without the last rule.
    """

    object_tracker: bool = _option(False, "Track the objects at inference when an obs dict has no masks.")
    object_prompts: dict[str, Any] | None = _option(
        None, "Tracker prompts in camera pixels: {camera: {obj_id: {points: [[x, y]], labels: [1]} | {box: [...]}}}."
    )
    n_obs_steps: int | None = _option(None, "Rows per stream in a call (DP's b * To + t rows); null = 1.")
    object_restart: str = _option("auto", "auto (a window of one repeated new frame restarts a stream) | manual.")

    def __post_init__(self) -> None:
        if self.n_obs_steps is not None:
            _set(self, "n_obs_steps", whole_number(self.n_obs_steps, "n_obs_steps"))
        if not isinstance(self.object_tracker, bool):
            raise ValueError(f"object_tracker must be true or false, got {self.object_tracker!r}")
        _set(self, "object_prompts", to_plain(self.object_prompts) or None)
        if self.object_tracker and self.object_restart not in ("auto", "manual"):
            raise ValueError(f"object_restart must be 'auto' or 'manual', got {self.object_restart!r}")
        if self.object_prompts and not self.object_tracker:
            raise ValueError(
                "object_prompts are given but object_tracker is false: set object_tracker=true to track them"
            )


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning of the SAM 2 weights (see :func:`~sam2_encoder.finetune.configure_finetuning`)."""

    freeze: bool = _option(True, "Keep the SAM 2 weights frozen (eval + no grad); false fine-tunes them (finetune).")
    finetune: str | None = _option(None, "With freeze=false: all (default) | last_blocks | lora.")
    finetune_blocks: int = _option(2, "Trainable Hiera blocks for finetune=last_blocks.")
    lora_rank: int = _option(8, "LoRA rank for finetune=lora.")
    lora_alpha: float = _option(16.0, "LoRA alpha for finetune=lora.")
    trunk_lr_scale: float = _option(0.1, "Learning-rate multiplier of the trunk's optimizer group.")

    def __post_init__(self) -> None:
        _flag("freeze", self.freeze)
        if self.freeze and self.finetune is not None:
            raise ValueError(f"finetune={self.finetune!r} needs freeze=False")
        if self.finetune is not None and self.finetune not in FINETUNE_MODES:
            raise ValueError(f"unknown finetune mode {self.finetune!r}; choose one of {', '.join(FINETUNE_MODES)}")
        whole_number(self.finetune_blocks, "finetune_blocks")
        whole_number(self.lora_rank, "LoRA rank (lora_rank)")
        alpha = self.lora_alpha
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"LoRA alpha (lora_alpha) must be a finite number > 0, got {alpha!r}")
        scale = self.trunk_lr_scale
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale) or scale < 0:
            raise ValueError(f"trunk_lr_scale must be a finite number >= 0, got {scale!r}")


#: SAM 2's temporal position encodings: ``num_maskmem = 7`` slots, one for the conditioning frame and
#: 6 for past frames (every released variant), so a bank holds at most 6 past frames.
MAX_MEMORY_FRAMES = 6


@dataclass(frozen=True)
class MemoryConfig:
    """Policy memory: each camera's features conditioned on a bank of past frames (SAM 2's memory).

    See :mod:`sam2_encoder.policy_memory`. A frame's memory is SAM 2's memory encoder on its stride-16
    features and a mask (``memory_source``); the bank of frame ``t`` is the episode's first frame
    (``memory_keep_first``) and frames ``t - k * memory_stride`` for ``k = 1 .. memory_frames``
    (clamped to the first frame at the episode start), and SAM 2's memory attention conditions the
    current features on it before the heads. Needs a square ``image_size``.

    The memory's SAM 2 weights are frozen unless ``memory_lora_rank > 0``: then LoRA (update
    ``(memory_lora_alpha / memory_lora_rank) * B @ A``, ``B`` zero at the start) adapts the q/k/v/out
    projections of the memory attention's self- and cross-attention in every layer; only those LoRA
    weights train. The memory encoder stays frozen (a frame's memory stays a fixed per-frame quantity)
    and the modules stay in eval mode (no dropout), so training computes what inference does.
    """

    memory: str = _option("none", "none | sam2: condition each camera on a bank of its past frames (SAM 2 memory).")
    memory_frames: int = _option(MAX_MEMORY_FRAMES, "Past frames in the bank, 1-6 (SAM 2's temporal encodings).")
    memory_stride: int = _option(1, "Frames between two past frames of the bank (every k-th frame is kept).")
    memory_keep_first: bool = _option(True, "Keep the episode's first frame in the bank (SAM 2's conditioning frame).")
    memory_source: str = _option("frame", "Mask of a frame's memory: frame (whole frame) | objects (its object masks).")
    memory_lora_rank: int = _option(0, "LoRA rank on the memory attention's q/k/v/out projections; 0 = frozen memory.")
    memory_lora_alpha: float = _option(16.0, "LoRA alpha of the memory attention (scale alpha / rank; not lora_alpha).")

    def __post_init__(self) -> None:
        _choice("memory", self.memory, ("none", "sam2"))
        frames = whole_number(self.memory_frames, "memory_frames")
        if frames > MAX_MEMORY_FRAMES:
            raise ValueError(
                f"memory_frames must be at most {MAX_MEMORY_FRAMES} (SAM 2's temporal encodings of past frames), "
                f"got {frames}"
            )
        _set(self, "memory_frames", frames)
        _set(self, "memory_stride", whole_number(self.memory_stride, "memory_stride"))
        _flag("memory_keep_first", self.memory_keep_first)
        _choice("memory_source", self.memory_source, ("frame", "objects"))
        rank = self.memory_lora_rank
        if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 0:
            raise ValueError(f"memory_lora_rank must be a whole number >= 0 (0 = frozen memory), got {rank!r}")
        _set(self, "memory_lora_rank", int(rank))
        _set(self, "memory_lora_alpha", check_lora_alpha(self.memory_lora_alpha, "memory_lora_alpha"))
        if rank and not self.enabled:
            raise ValueError(
                f"memory_lora_rank={rank} puts LoRA on SAM 2's memory attention, which memory={self.memory!r} "
                "does not have: set memory='sam2', or memory_lora_rank=0"
            )

    @property
    def enabled(self) -> bool:
        """Whether the encoder has a memory."""
        return self.memory != "none"

    @property
    def bank_size(self) -> int:
        """Frames in a bank: ``memory_frames`` plus the first frame with ``memory_keep_first``."""
        return self.memory_frames + int(self.memory_keep_first)


#: The parts of :class:`EncoderConfig`, by attribute name.
_PARTS = {
    "backbone": BackboneConfig,
    "view": ViewConfig,
    "readout": ReadoutConfig,
    "objects": ObjectConfig,
    "tracking": TrackingConfig,
    "finetuning": FinetuneConfig,
    "policy_memory": MemoryConfig,
}


@dataclass(frozen=True)
class EncoderConfig:
    """Every option of :class:`~sam2_encoder.camera_encoder.MultiCameraEncoder`, validated.

    Build it from parts (``EncoderConfig(readout=ReadoutConfig(pool="avg"))``) or from flat
    options (``EncoderConfig.from_flat(pool="avg")``); :func:`option_docs` lists the options.

    Raises:
        ValueError: One error naming the option, the value seen and what is expected (from the
            part that owns the option, or from a rule between parts); an unknown flat option is
            named with the closest valid one.
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    view: ViewConfig = field(default_factory=ViewConfig)
    readout: ReadoutConfig = field(default_factory=ReadoutConfig)
    objects: ObjectConfig = field(default_factory=ObjectConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    finetuning: FinetuneConfig = field(default_factory=FinetuneConfig)
    policy_memory: MemoryConfig = field(default_factory=MemoryConfig)
    reuse_frames: bool = _option(True, "At inference, reuse the features of frames seen in the previous call.")
    """With ``reuse_frames`` (eval mode, autograd off), a control loop with ``n_obs_steps`` To encodes
    each camera frame once instead of To times; a frame repeated within one call is encoded once too.
    Frames (with their object masks) are matched by exact content, so outputs equal encoding every
    frame up to the float rounding of batched kernels (bit-identical in our tests and benchmark)."""

    def __post_init__(self) -> None:
        _flag("reuse_frames", self.reuse_frames)
        objects, levels, fuse = self.objects, self.readout.levels, self.readout.fuse
        if objects.object_masks_key is not None and fuse == "pool" and objects.object_level != levels[-1]:
            raise ValueError(
                f"object_level={objects.object_level!r} with fuse='pool' must be the coarsest of levels "
                f"{list(levels)} (finer levels are pooled away); use object_level={levels[-1]!r} "
                "or fuse='coarse_to_fine', which keeps every level"
            )
        if self.tracking.object_tracker:
            if objects.object_masks_key is None:
                raise ValueError(
                    "object_tracker=True needs object tokens: set object_masks_key (or a `type: mask` entry in "
                    "shape_meta) and num_objects; without object tokens there is nothing to track"
                )
            if not self.finetuning.freeze:
                raise ValueError(
                    "object_tracker=True needs freeze=True: the tracker's mask decoder and memory were trained on "
                    "SAM 2's own features, and a fine-tuned trunk feeds it others; fine-tune with masks from the "
                    "dataset and give them in every obs dict at inference (object_tracker=false)"
                )
        if self.backbone.backend == "openvino" and not self.finetuning.freeze:
            raise ValueError(
                "backend='openvino' is inference only and needs freeze=True (no gradient flows through OpenVINO); "
                "fine-tune with backend='torch', then run the trained policy with backend='openvino'"
            )
        self._check_memory()

    def _check_memory(self) -> None:
        """Rules between the memory and the other parts: a square image size, masks to store."""
        memory = self.policy_memory
        if not memory.enabled:
            return
        height, width = check_image_size(self.backbone.image_size)
        if height != width:
            raise ValueError(
                f"memory={memory.memory!r} needs a square image_size (SAM 2's memory attention), got {[height, width]}"
            )
        if memory.memory_source == "objects" and self.objects.object_masks_key is None:
            raise ValueError(
                "memory_source='objects' stores each frame with its object masks: set object_masks_key (or a "
                "`type: mask` entry in shape_meta), or use memory_source='frame'"
            )

    @classmethod
    def from_flat(cls, **options: Any) -> "EncoderConfig":
        """The config from flat options (``pool="avg", crop_shape=(84, 84), ...``); others default.

        Raises:
            ValueError: For an unknown option (named, with the closest valid name) or a bad value.
        """
        owner = _owners()
        unknown = [name for name in options if name not in owner]
        if unknown:
            name = unknown[0]
            close = difflib.get_close_matches(name, list(owner), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid options: {', '.join(sorted(owner))}"
            raise ValueError(f"unknown encoder option {name!r}{hint}")
        parts = {part: kind(**{n: v for n, v in options.items() if owner[n] == part}) for part, kind in _PARTS.items()}
        top = {n: v for n, v in options.items() if owner[n] is None}
        return cls(**parts, **top)

    def flat(self) -> dict[str, Any]:
        """Every option by its flat name (the keyword arguments of :meth:`from_flat`)."""
        out: dict[str, Any] = {}
        for part in _PARTS:
            value = getattr(self, part)
            out.update({f.name: getattr(value, f.name) for f in fields(value)})
        out.update({f.name: getattr(self, f.name) for f in fields(self) if f.name not in _PARTS})
        return out


def option_docs() -> dict[str, tuple[Any, str]]:
    """``{option: (default, one-line doc)}`` for every flat option, in the parts' order."""
    out = {}
    for kind in (*_PARTS.values(), EncoderConfig):
        for f in fields(kind):
            if f.name in _PARTS:
                continue
            default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            out[f.name] = (default, f.metadata["doc"])
    return out


def option_types() -> dict[str, Any]:
    """``{option: annotation}`` for every flat option (real types, e.g. ``tuple[int, int] | None``)."""
    return {f.name: f.type for kind in (*_PARTS.values(), EncoderConfig) for f in fields(kind) if f.name not in _PARTS}


def _owners() -> dict[str, str | None]:
    """``{flat option: the part holding it}`` (``None``: a field of :class:`EncoderConfig` itself)."""
    owner: dict[str, str | None] = {f.name: part for part, kind in _PARTS.items() for f in fields(kind)}
    owner.update({f.name: None for f in fields(EncoderConfig) if f.name not in _PARTS})
    return owner


def _choice(name: str, value: object, choices: tuple) -> None:
    if not (isinstance(value, str) and value in choices):
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


def _input_range(value: object) -> tuple[float, float]:
    """``(low, high)`` as finite floats with ``low < high``, else one ValueError naming it."""
    try:
        if isinstance(value, str | bytes):
            raise TypeError
        low, high = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"input_range must be two numbers (low, high), got {value!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"input_range must be finite, got {value!r}")
    if not high > low:
        raise ValueError(f"input_range must be (low, high) with high > low, got {value!r}")
    return low, high


def whole_dims(value: object, what: str, length: int | None = None) -> tuple[int, ...]:
    """A shape given as whole numbers >= 1 (Python or numpy integers, or integral floats like 32.0).

    Raises:
        ValueError: Naming ``what`` and the value, for anything else (a bare number, a string,
            bools, fractions, zero or negative sizes, or a length other than ``length``).
    """
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) and not hasattr(value, "tolist"):
        raise ValueError(f"{what} must be a list of whole numbers >= 1, got {value!r}")
    items = value.tolist() if hasattr(value, "tolist") else list(value)
    if not isinstance(items, list):
        raise ValueError(f"{what} must be a list of whole numbers >= 1, got {value!r}")
    out = []
    for item in items:
        whole = isinstance(item, numbers.Integral) or isinstance(item, float) and item.is_integer()
        if isinstance(item, bool) or not whole or item < 1:
            raise ValueError(f"{what} must be whole numbers >= 1, got {list(items)!r}")
        out.append(int(item))
    if length is not None and len(out) != length:
        raise ValueError(f"{what} must be {length} whole numbers (H, W), got {list(items)!r}")
    return tuple(out)
