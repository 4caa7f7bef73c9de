"""SAM 2's image encoder (Hiera trunk + FPN neck) as a batched multi-scale feature extractor.

The output equals Meta SAM 2's image-predictor features: ``forward_image`` (trunk, neck,
``scalp=1``, ``conv_s0``/``conv_s1`` high-res projections) followed by
``_prepare_backbone_features`` and the no-memory embedding added to the coarsest level
(``directly_add_no_mem_embed``), reshaped back to ``(B, C, H, W)`` with sizes taken from the
input rather than hard-coded for 1024.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, fields

import torch
from torch import nn

from .hiera import fpn_neck, fpn_settings, trunk_stages
from .openvino_backend import BACKENDS, OpenVINOBackend, require_openvino
from .sam2_weights import SAM2Weights, build_seeded
from .transforms import ImageInput, SAM2Transforms
from .variants import Variant, check_image_size, get_variant
from .weight_casts import FrozenWeightCasts

__all__ = [
    "BACKENDS",
    "LEVELS",
    "MICRO_BATCH_TOKENS",
    "PRECISIONS",
    "SKIP_PADDING_MIN_SIDE",
    "FeaturePyramid",
    "SAM2ImageEncoder",
    "bf16_support",
    "build_seeded",
]

log = logging.getLogger(__name__)

LEVELS = ("s4", "s8", "s16")
_STRIDES = {"s4": 4, "s8": 8, "s16": 16}
_CHANNELS = {"s4": 32, "s8": 64, "s16": 256}

PRECISIONS = ("fp32", "bf16")
# micro_batch="auto" on CPU encodes chunks of max(1, MICRO_BATCH_TOKENS // tokens-per-image) images,
# tokens = stride-4 patches, (H/4)(W/4): 4 images at 256 px, 5 at 224, 16 at 128. Timed on the 2-core
# Intel Xeon (AVX-512, 1 thread; ms/image, chunk: one pass): 256 x 8: 237 (4) vs 257 (8), 268 (1);
# 256 x 32: 261 (4) vs 346; 224 x 16: 200-218 (4-8) vs 258; 128 x 8: 62 (8) vs 69 (4). The outputs
# equal transformers' encoding of the same chunks and stay within its own batch-composition
# variance (tests/test_numerics.py).
MICRO_BATCH_TOKENS = 16384
# skip_padding="auto" skips the window padding's projections on CPU when both sides are at least this:
# bit-identical to transformers there (tests/test_numerics.py); at 64-96 px the skipped matmuls are so
# small that BLAS picks other kernels and rounds differently (up to 2.7e-5 on values up to 30).
SKIP_PADDING_MIN_SIDE = 128


@dataclass
class FeaturePyramid:
    """SAM 2's three image-predictor feature maps for a batch.

    Attributes:
        s4: ``(B, 32, H/4, W/4)``: stride-4 neck level through ``conv_s0``.
        s8: ``(B, 64, H/8, W/8)``: stride-8 neck level through ``conv_s1``.
        s16: ``(B, 256, H/16, W/16)``: stride-16 level (top-down fused) plus the no-memory embedding.
        pos_enc: The sine position encodings of the three levels, each ``(B, 256, h, w)``,
            when asked for with ``with_pos_enc=True``; else ``None``.
        s16_neck: ``(B, 256, H/16, W/16)``: the stride-16 level before the no-memory embedding,
            as SAM 2's video tracker stores it (it adds memory instead); ``None`` if unknown.
    """

    s4: torch.Tensor
    s8: torch.Tensor
    s16: torch.Tensor
    pos_enc: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    s16_neck: torch.Tensor | None = None

    def __iter__(self) -> Iterator[torch.Tensor]:
        """Iterate the maps, finest first (position encodings excluded)."""
        return iter((self.s4, self.s8, self.s16))

    def __len__(self) -> int:
        return 3

    def __getitem__(self, key: int | str) -> torch.Tensor:
        """A map by index (0..2) or by name (``"s4"``, ``"s8"``, ``"s16"``)."""
        if isinstance(key, str):
            if key not in LEVELS:
                raise KeyError(f"unknown level {key!r}; levels are {LEVELS}")
            return getattr(self, key)
        return (self.s4, self.s8, self.s16)[key]

    def as_dict(self) -> dict[str, torch.Tensor]:
        """``{"s4": ..., "s8": ..., "s16": ...}``."""
        return {name: getattr(self, name) for name in LEVELS}

    def map(self, fn) -> FeaturePyramid:
        """A new pyramid with ``fn`` applied to every tensor (maps, position encodings, ``s16_neck``)."""
        pos = None if self.pos_enc is None else tuple(fn(p) for p in self.pos_enc)
        neck = None if self.s16_neck is None else fn(self.s16_neck)
        return FeaturePyramid(*(fn(m) for m in self), pos_enc=pos, s16_neck=neck)

    def to(self, *args, **kwargs) -> FeaturePyramid:
        """``Tensor.to`` applied to every tensor."""
        return self.map(lambda t: t.to(*args, **kwargs))

    def select(self, index: torch.Tensor | slice | int) -> FeaturePyramid:
        """The pyramid of a subset of the batch (``index`` applied to dim 0)."""
        return self.map(lambda t: t[index])

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the maps by level name."""
        return {f.name: tuple(getattr(self, f.name).shape) for f in fields(self) if f.name in LEVELS}


class SAM2ImageEncoder(SAM2Weights):
    """Batched multi-scale SAM 2 image features for any released variant.

    Args:
        variant: A released model name (``"sam2.1_hiera_tiny"``; see ``variants.VARIANTS``).
        checkpoint: Meta ``.pt`` / safetensors / HF folder path, URL, variant name or hub id
            (see :func:`sam2_encoder.checkpoints.resolve_checkpoint`), or ``None`` for seeded
            random weights (a warning is issued).
        image_size: Encoder input side (or ``(H, W)``), each a multiple of 32. Inputs of any
            size are resized to it by the transforms.
        device: Where to put the weights.
        dtype: Weight dtype (``torch.float32`` by default).
        freeze: Freeze the weights: no gradients, and the module stays in eval mode through
            ``.train()``. The trunk then runs under ``torch.no_grad`` (``inference_mode`` when
            autograd is off).
        with_pos_enc: Also return the neck's sine position encodings (off: a policy does not
            need them and they cost time).
        fast_attention: Run the Hiera blocks through our fused attention (one SDPA call, none
            of transformers' unused attention-weight tensor). Outputs are identical; off runs
            transformers' own trunk forward.
        skip_padding: With ``fast_attention``, skip the projections of the zero tokens that pad
            attention windows (faster where windows do not tile the map, e.g. 256 px; the same
            values, but BLAS may round differently for the smaller matmuls). ``"auto"`` (default):
            on CPU when both sides are at least ``SKIP_PADDING_MIN_SIDE`` (128), where it was
            measured bit-identical to transformers; ``True`` / ``False`` force it.
        micro_batch: Encode a batch in chunks of this many images (the outputs are concatenated).
            ``"auto"`` (default): on CPU, chunks of ``max(1, MICRO_BATCH_TOKENS // ((H/4)(W/4)))``
            images (4 at 256 px, 5 at 224), which keeps the activations in cache; one pass elsewhere.
            ``None``: always one pass; an ``int >= 1``: that chunk size everywhere. The outputs
            equal transformers' encoding of the same chunks; against one pass of the whole batch
            they differ by transformers' own batch-composition variance (up to ~1e-5 on values
            up to ~15, see ``tests/test_numerics.py``).
        precision: ``"fp32"`` (default) or ``"bf16"``: run the Hiera trunk under bfloat16 autocast
            (weights, neck and outputs stay float32). Needs native bf16 (CUDA with bf16, a CPU
            with AVX512-BF16 or AMX; see :func:`bf16_support`), else ``ValueError`` when encoding.
            Features move by 0.4-0.8% relative L2 (cosine >= 0.99996 per level with Meta-scaled
            weights at 224/256 px; ``benchmarks/fidelity.py``).
        backend: ``"torch"`` (default) or ``"openvino"``: inference through OpenVINO on the CPU
            (``pip install 'sam2-encoder[openvino]'``), for a frozen encoder only. The trunk, neck and
            projections are compiled once per input size and batch (seconds, on first use; see
            :mod:`sam2_encoder.openvino_backend`); ``precision`` sets OpenVINO's precision: ``"fp32"``
            within ``export.PARITY_RTOL`` of eager (tested), ``"bf16"`` cosine >= 0.9999 per level
            (``benchmarks/runtimes.py``). ``micro_batch="auto"`` runs each batch in one pass there.
            Settable later (``encoder.backend = "openvino"``), e.g. on a loaded policy's encoder.
        channel_order: ``"RGB"`` or ``"BGR"`` for the built-in transforms.
        input_range: Range of float inputs for the built-in transforms.
        seed: Seed of the random initialisation when ``checkpoint`` is ``None``.
        download: Allow downloading a remote checkpoint that is not cached yet.
        missing_checkpoint: What a checkpoint that cannot be found (and not downloaded) means:
            ``"error"`` (default) raises; ``"defer"`` builds placeholder weights and expects them
            from ``load_state_dict`` — a host re-running the constructor of a saved policy on
            another machine (Diffusion Policy's reload) has the weights in its own checkpoint.
            Until a state dict with every encoder weight is loaded, encoding raises.
        model: Internal: reuse the vision parts of an existing transformers ``Sam2Model`` /
            ``Sam2VideoModel`` (weights shared) instead of building new ones.

    Example:
        >>> enc = SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=256)  # doctest: +SKIP
        >>> pyr = enc(torch.rand(2, 3, 480, 640))  # doctest: +SKIP
        >>> pyr.s16.shape  # doctest: +SKIP
        torch.Size([2, 256, 16, 16])
    """

    def __init__(
        self,
        variant: str | Variant = "sam2.1_hiera_tiny",
        checkpoint: str | os.PathLike[str] | None = None,
        image_size: int | tuple[int, int] = 1024,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        freeze: bool = True,
        with_pos_enc: bool = False,
        fast_attention: bool = True,
        skip_padding: bool | str = "auto",
        micro_batch: int | str | None = "auto",
        precision: str = "fp32",
        backend: str = "torch",
        channel_order: str = "RGB",
        input_range: tuple[float, float] = (0.0, 1.0),
        seed: int = 0,
        download: bool = True,
        missing_checkpoint: str = "error",
        model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.frozen = False
        self.variant = get_variant(variant)
        self.image_size = check_image_size(image_size)
        self.with_pos_enc = with_pos_enc
        self.fast_attention = fast_attention
        self.skip_padding = _check_choice("skip_padding", skip_padding, (True, False, "auto"))
        self.micro_batch = _check_micro_batch(micro_batch)
        self.precision = _check_choice("precision", precision, PRECISIONS)
        self.transforms = SAM2Transforms(self.image_size, channel_order=channel_order, input_range=input_range)
        self.seed = seed
        self.checkpoint_path: str | None = None
        self._pending_checkpoint: str | None = None  # deferred: weights must come from load_state_dict
        _check_choice("missing_checkpoint", missing_checkpoint, ("error", "defer"))

        self._build_weights(checkpoint, download, missing_checkpoint, model)
        self._fpn_mode, self._fpn_fuse = fpn_settings(self.vision_encoder.config)
        if dtype is not None:
            self.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
        if device is not None:
            self.to(device)
            self.check_precision(torch.device(device))
        if freeze:
            self.freeze()
        self._openvino: OpenVINOBackend | None = None
        self.backend = backend

    @property
    def feature_info(self) -> list[dict[str, int | str]]:
        """timm-style description of the output levels: name, channels, stride."""
        return [{"module": n, "num_chs": _CHANNELS[n], "reduction": _STRIDES[n]} for n in LEVELS]

    def feature_shapes(self) -> dict[str, tuple[int, int, int]]:
        """``(C, h, w)`` of each level at this encoder's ``image_size``."""
        h, w = self.image_size
        return {n: (_CHANNELS[n], h // _STRIDES[n], w // _STRIDES[n]) for n in LEVELS}

    # ----------------------------------------------------------------------------------------
    # forward
    # ----------------------------------------------------------------------------------------

    def forward(self, images: ImageInput) -> FeaturePyramid:
        """Preprocess and encode a batch.

        Args:
            images: ``(B, 3, H, W)`` / ``(B, H, W, 3)`` uint8 or float (in ``input_range``), any
                ``H, W``; numpy arrays and lists are accepted too (see ``SAM2Transforms``).

        Returns:
            A ``FeaturePyramid`` with ``s4 (B, 32, S/4, S/4)``, ``s8 (B, 64, S/8, S/8)`` and
            ``s16 (B, 256, S/16, S/16)`` for ``image_size`` ``S``.
        """
        return self.encode(self.transforms(images))

    def _grad_context(self) -> contextlib.AbstractContextManager:
        if not self.frozen:
            return contextlib.nullcontext()
        # inference_mode where autograd is off anyway; not inside torch.compile, which cannot
        # trace into it ("Cannot set version_counter for inference tensor")
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return torch.no_grad()
        return torch.inference_mode()

    def encode(self, pixel_values: torch.Tensor) -> FeaturePyramid:
        """Encode already-normalised pixels (the output of ``self.transforms``).

        Args:
            pixel_values: ``(B, 3, H, W)`` with ``H, W`` multiples of 32.

        Returns:
            The ``FeaturePyramid`` at strides 4, 8 and 16 of ``(H, W)``.
        """
        self._check_not_pending()
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values must be (B, 3, H, W), got {tuple(pixel_values.shape)}")
        check_image_size(tuple(pixel_values.shape[-2:]))
        self.check_precision(pixel_values.device)
        if pixel_values.shape[0] == 0:
            return self._empty(pixel_values)
        if self.backend == "openvino":
            return self._openvino_encode(pixel_values)
        chunk = self.micro_batch_size(pixel_values.shape[0], pixel_values.shape[-2:], pixel_values.device)
        if chunk >= pixel_values.shape[0]:
            return self._encode(pixel_values)
        parts = [self._encode(part) for part in pixel_values.split(chunk)]
        pos = parts[0].pos_enc
        if pos is not None:
            pos = tuple(torch.cat(level) for level in zip(*(p.pos_enc for p in parts)))
        return FeaturePyramid(
            *(torch.cat(level) for level in zip(*parts)),
            pos_enc=pos,  # type: ignore[arg-type]
            s16_neck=torch.cat([p.s16_neck for p in parts]),
        )

    def _empty(self, pixel_values: torch.Tensor) -> FeaturePyramid:
        """The pyramid of an empty batch (the trunk cannot reshape zero tokens)."""
        h, w = pixel_values.shape[-2:]
        dtype = self.no_memory_embedding.dtype
        maps = [
            pixel_values.new_zeros((0, _CHANNELS[n], h // _STRIDES[n], w // _STRIDES[n]), dtype=dtype) for n in LEVELS
        ]
        pos = None
        if self.with_pos_enc:
            pos = tuple(pixel_values.new_zeros((0, 256, *m.shape[-2:]), dtype=dtype) for m in maps)
        return FeaturePyramid(*maps, pos_enc=pos, s16_neck=maps[2].new_zeros((0, 256, h // 16, w // 16)))

    def micro_batch_size(self, batch: int, hw: tuple[int, int] | torch.Size, device: torch.device) -> int:
        """How many images :meth:`encode` runs at once (see ``micro_batch``).

        Args:
            batch: Number of images ``B``.
            hw: Encoder input size ``(H, W)``.
            device: Where the pixels are.

        Returns:
            The chunk size, ``>= 1``; ``>= batch`` means one pass.
        """
        if self.micro_batch is None or batch <= 1:
            return max(batch, 1)
        if self.micro_batch != "auto":
            return int(self.micro_batch)
        if torch.device(device).type != "cpu":
            return batch
        return max(1, MICRO_BATCH_TOKENS // ((int(hw[0]) // 4) * (int(hw[1]) // 4)))

    def skips_padding(self, hw: tuple[int, int] | torch.Size, device: torch.device) -> bool:
        """Whether the trunk skips the window padding's projections for this input size and device."""
        if self.skip_padding == "auto":
            return torch.device(device).type == "cpu" and min(int(hw[0]), int(hw[1])) >= SKIP_PADDING_MIN_SIDE
        return bool(self.skip_padding)

    def check_precision(self, device: torch.device) -> None:
        """Refuse ``precision="bf16"`` on a device without native bf16 (see :func:`bf16_support`).

        Raises:
            ValueError: Naming the device and what it lacks.
        """
        if self.precision != "bf16":
            return
        device = torch.device(device)
        checked = self.__dict__.setdefault("_bf16_checked", set())
        if device.type in checked:
            return
        ok, reason = bf16_support(device)
        if not ok:
            raise ValueError(
                f"precision='bf16' needs native bfloat16 on {device.type}: {reason}; use precision='fp32' "
                "(emulated bf16 is slower than fp32 and changes the features)"
            )
        checked.add(device.type)

    def _encode(self, pixel_values: torch.Tensor) -> FeaturePyramid:
        with self._grad_context():
            weight = self.vision_encoder.backbone.patch_embed.projection.weight
            if not torch.is_autocast_enabled(pixel_values.device.type):
                pixel_values = pixel_values.to(weight.dtype)
            if self.precision == "bf16":
                with torch.autocast(pixel_values.device.type, dtype=torch.bfloat16):
                    stages = self._bf16_trunk(pixel_values)
                stages = [s.to(weight.dtype) for s in stages]
            else:
                stages = self.trunk(pixel_values)
            s4, s8, neck16 = self.neck(stages)
            return self._pyramid(self.conv_s0(s4), self.conv_s1(s8), neck16)

    def _pyramid(self, s4: torch.Tensor, s8: torch.Tensor, neck16: torch.Tensor) -> FeaturePyramid:
        """The pyramid of the projected levels and the stride-16 neck level (no-memory embedding added)."""
        s16 = neck16 + self.no_memory_embedding.view(1, -1, 1, 1).to(neck16.dtype)
        pos = self.position_encodings((s4, s8, s16)) if self.with_pos_enc else None
        return FeaturePyramid(s4, s8, s16, pos_enc=pos, s16_neck=neck16)

    def _bf16_trunk(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """The trunk under bf16 autocast with its frozen weights cast once (bit-identical, see weight_casts)."""
        if torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return self.trunk(pixel_values)
        casts = self.__dict__.get("_weight_casts")
        if casts is None:
            casts = self.__dict__["_weight_casts"] = FrozenWeightCasts(torch.bfloat16)
        return casts.call(self.vision_encoder.backbone, self.trunk, pixel_values)

    @property
    def backend(self) -> str:
        """``"torch"`` or ``"openvino"`` (see the class docs); setting it checks OpenVINO is installed."""
        return self.__dict__.get("_backend", "torch")  # an encoder pickled before the option: torch

    @backend.setter
    def backend(self, value: str) -> None:
        _check_choice("backend", value, BACKENDS)
        if value == "openvino":
            require_openvino()
            if not self.frozen:
                raise ValueError(
                    "backend='openvino' is inference only: it needs a frozen encoder (freeze=True, no finetune); "
                    "fine-tune with backend='torch'"
                )
        self._backend = value
        self._openvino = None

    def _openvino_encode(self, pixel_values: torch.Tensor) -> FeaturePyramid:
        """:meth:`encode` through OpenVINO: one pass per batch (or per ``micro_batch`` chunk when an int)."""
        runtime = self.__dict__.get("_openvino")
        if runtime is None or runtime.precision != self.precision:
            runtime = self._openvino = OpenVINOBackend(self.precision)
        runtime.check(self, pixel_values)
        chunk = pixel_values.shape[0] if self.micro_batch in (None, "auto") else int(self.micro_batch)
        parts = [runtime.run(self, part) for part in pixel_values.split(chunk)]
        levels = [level[0] if len(parts) == 1 else torch.cat(level) for level in zip(*parts)]
        with self._grad_context():
            return self._pyramid(*levels)

    def trunk(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Hiera trunk: the four stage outputs, each ``(B, h, w, C)`` (channels last), finest first."""
        backbone = self.vision_encoder.backbone
        if not self.fast_attention:
            return list(backbone(pixel_values).intermediate_hidden_states)
        return trunk_stages(backbone, pixel_values, self.skips_padding(pixel_values.shape[-2:], pixel_values.device))

    def neck(self, stages: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """FPN neck without position encodings, keeping the three finest levels (see :func:`hiera.fpn_neck`).

        Args:
            stages: Trunk outputs ``(B, h, w, C_i)``, finest first.

        Returns:
            ``(B, 256, h, w)`` maps at strides 4, 8 and 16.
        """
        return fpn_neck(self.vision_encoder.neck, stages, self._fpn_mode, self._fpn_fuse)

    def position_encodings(self, maps: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The neck's sine position encoding for each map, ``(B, 256, h, w)`` each."""
        encoding = self.vision_encoder.neck.position_encoding
        return tuple(encoding(m.shape, m.device, m.dtype).to(m.dtype) for m in maps)  # type: ignore[return-value]

    def extra_repr(self) -> str:
        return (
            f"variant={self.variant.name!r}, image_size={self.image_size}, frozen={self.frozen}, "
            f"precision={self.precision!r}, micro_batch={self.micro_batch!r}, skip_padding={self.skip_padding!r}"
            + (f", backend={self.backend!r}" if self.backend != "torch" else "")
        )


def bf16_support(device: str | torch.device = "cpu") -> tuple[bool, str]:
    """Whether ``device`` computes bfloat16 natively (what ``precision="bf16"`` needs).

    CUDA: ``torch.cuda.is_bf16_supported`` without emulation (Ampere or newer). x86 CPUs:
    AVX512-BF16 or AMX tiles (torch's CPU capability checks). ARM CPUs: the ``bf16`` feature in
    ``/proc/cpuinfo``. Other devices: no.

    Args:
        device: A device or its name.

    Returns:
        ``(supported, reason)``: the reason says what was found, e.g. ``"AVX512-BF16"`` or
        ``"this CPU has neither AVX512-BF16 nor AMX"``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False, "CUDA is not available"
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return True, f"{torch.cuda.get_device_name(device)} has bf16"
        return False, f"{torch.cuda.get_device_name(device)} has no native bf16 (needs compute capability >= 8.0)"
    if device.type != "cpu":
        return False, f"bf16 support on {device.type} is not checked by this package"
    import platform

    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i686", "x86"):
        cpu = torch.cpu
        found = [
            name
            for name, check in (("AVX512-BF16", "_is_avx512_bf16_supported"), ("AMX", "_is_amx_tile_supported"))
            if getattr(cpu, check, lambda: False)()
        ]
        if found:
            return True, " and ".join(found)
        return False, "this CPU has neither AVX512-BF16 nor AMX"
    if machine in ("aarch64", "arm64"):
        try:
            with open("/proc/cpuinfo") as f:
                flags = {w for line in f if line.lower().startswith("features") for w in line.split(":", 1)[1].split()}
        except OSError:
            return False, "cannot read /proc/cpuinfo to check the ARM bf16 feature"
        return ("bf16" in flags, "ARM bf16" if "bf16" in flags else "this ARM CPU lacks the bf16 feature")
    return False, f"bf16 support on {machine} CPUs is not checked by this package"


def _check_choice(name: str, value: object, choices: tuple) -> object:
    if not any(value is c or (isinstance(c, str) and isinstance(value, str) and value == c) for c in choices):
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _check_micro_batch(value: object) -> int | str | None:
    if value is None or value == "auto":
        return value  # type: ignore[return-value]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"micro_batch must be 'auto', None or an int >= 1, got {value!r}")
    return value
