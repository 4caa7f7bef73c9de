"""Export for robots: the image encoder and a policy's observation encoder to ONNX and OpenVINO IR.

What is exported is exactly what the eager module computes, as a graph of positional tensors:

- :class:`ImageEncoderGraph`: ``SAM2ImageEncoder.encode`` (trunk, neck, ``conv_s0`` / ``conv_s1``,
  no-memory embedding), optionally behind the transforms (uint8 or float camera frames of a fixed
  size -> SAM 2 pixels), with the outputs ``s4``, ``s8``, ``s16``.
- :class:`ObsEncoderGraph`: a ``MultiCameraEncoder`` (DP's ``SAM2ObsEncoder``, the LeRobot policy's
  encoder): camera frames, then object masks, then low-dim inputs -> the ``(N, D)`` condition.

Both have a dynamic batch dimension (named ``batch``); everything else is fixed at export. The
exporter is ``torch.onnx.export(dynamo=True)`` (onnxscript); each antialiased bilinear resize of
the exported graph (camera frame -> view -> ``image_size``) is then rewritten as two MatMuls with
torch's exact weights (:func:`resize_matrix`), since runtimes disagree on ``Resize(antialias=1)``.
The object tracker (``object_tracker=True``) is refused: its memory bank is state across calls.
After
writing, the file is run in the runtime on a seeded input and compared with eager
(:func:`check_parity`): the largest absolute difference per output must stay within
``PARITY_RTOL * max(1, max |eager|)`` (measured: 2.5e-5 on values up to 14.5, i.e. 1.7e-6 of
the magnitude, for sam2.1 tiny at 128 px with Meta-scaled weights, in ONNX Runtime 1.32 and
OpenVINO 2026.4 f32). A file that fails the check is never left at the output path: files are
written under a temporary name and renamed into place only once checked.

OpenVINO's bf16 (``INFERENCE_PRECISION_HINT=bf16``, opt-in, CPUs with AVX512-BF16 or AMX) is
reported as fidelity (cosine and relative L2 per output, as ``benchmarks/fidelity.py`` does),
not as parity. Note that OpenVINO picks bf16 *by default* on such CPUs: :func:`load_runtime`
always sets the precision hint.

The runtimes are optional: ``pip install "sam2-encoder[export]"`` (onnx, onnxruntime, onnxscript)
and ``"sam2-encoder[openvino]"``; they are imported inside the functions that need them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .image_encoder import LEVELS, SAM2ImageEncoder, bf16_support
from .obs_inputs import to_pixels
from .onnx_graph import ExportError, eval_flags, require, to_onnx
from .transforms import SAM2Transforms

__all__ = [
    "FORMATS",
    "IMAGE_INPUTS",
    "PARITY_RTOL",
    "RUNTIMES",
    "ExportError",
    "ExportResult",
    "ImageEncoderGraph",
    "ObsEncoderGraph",
    "ParityReport",
    "RuntimeModel",
    "check_parity",
    "export_graph",
    "export_image_encoder",
    "export_obs_encoder",
    "load_runtime",
    "resize_matrix",
]

FORMATS = ("onnx", "openvino")
IMAGE_INPUTS = ("pixels", "uint8", "float")
RUNTIMES = ("onnxruntime", "openvino")
# Largest |runtime - eager| allowed per output, as a fraction of max(1, max |eager|): 60x the
# 1.7e-6 measured (see the module docstring), room for other CPUs' kernels, far below any real change.
PARITY_RTOL = 1e-4
# bf16 (OpenVINO's precision hint) is reported, and counts as passing at this cosine (benchmarks/fidelity.py's goal)
BF16_MIN_COSINE = 0.999


# --------------------------------------------------------------------------------------------
# graphs: the exported modules
# --------------------------------------------------------------------------------------------


def resize_matrix(src: int, dst: int) -> torch.Tensor:
    """The ``(dst, src)`` matrix of SAM 2's bilinear antialiased resize along one axis.

    The resize is linear and separable, so resizing an identity image along one axis yields its
    weights: ``resize(x) = R_h @ x @ R_w.T`` equals ``F.interpolate(x, mode="bilinear",
    antialias=True)`` up to float rounding. Exported as two MatMuls, it runs in every runtime
    (ONNX's ``Resize`` with ``antialias`` is not implemented alike: OpenVINO 2026.4 is off by up to 1.8).

    Args:
        src: Input length along the axis.
        dst: Output length.

    Returns:
        ``(dst, src)`` float32.
    """
    eye = torch.eye(src, dtype=torch.float32)[None, None]
    if src == dst:
        return eye[0, 0]
    return F.interpolate(eye, size=(dst, src), mode="bilinear", align_corners=False, antialias=True)[0, 0]


class ImageEncoderGraph(nn.Module):
    """A ``SAM2ImageEncoder`` as one tensor in, ``(s4, s8, s16)`` out: what is exported.

    Args:
        encoder: A float32 encoder on the CPU (its weights are shared, not copied).
        input: ``"pixels"``: ``(B, 3, S, S)`` float32 SAM 2 pixels (the output of
            ``encoder.transforms``), as ``encoder.encode`` takes. ``"uint8"``: ``(B, 3, H, W)``
            uint8 camera frames (``(B, H, W, 3)`` with ``layout="HWC"``), 0..255, in the
            encoder's ``channel_order``. ``"float"``: the same as float32 in the encoder's
            ``input_range``. Frames are resized to ``image_size`` and normalised as
            ``encoder(images)`` does (no range check: that needs data-dependent control flow).
        input_size: ``(H, W)`` of the camera frames for ``"uint8"`` / ``"float"`` (fixed in the
            graph); default: the encoder's ``image_size`` (no resize).
        layout: ``"CHW"`` (default) or ``"HWC"`` (OpenCV frames) for ``"uint8"`` / ``"float"``.

    Raises:
        ExportError: For an encoder that cannot be exported or a bad option (one line each).
    """

    output_names = LEVELS

    def __init__(
        self,
        encoder: SAM2ImageEncoder,
        input: str = "pixels",
        input_size: int | tuple[int, int] | None = None,
        layout: str = "CHW",
    ) -> None:
        super().__init__()
        check_exportable(encoder)
        if input not in IMAGE_INPUTS:
            raise ExportError(f"input must be one of {IMAGE_INPUTS}, got {input!r}")
        if layout not in ("CHW", "HWC"):
            raise ExportError(f"layout must be 'CHW' or 'HWC', got {layout!r}")
        self.encoder = encoder
        self.input = input
        self.layout = layout if input != "pixels" else "CHW"
        self.input_size = _check_input_size(encoder.image_size if input_size is None else input_size)
        if input == "pixels" and self.input_size != encoder.image_size:
            raise ExportError(
                f"input='pixels' takes SAM 2 pixels at image_size {encoder.image_size}, got input_size "
                f"{self.input_size}; use input='uint8' or 'float' to resize camera frames in the graph"
            )
        t = encoder.transforms
        self.transforms = SAM2Transforms(
            encoder.image_size, channel_order=t.channel_order, input_range=t.input_range, validate=False
        )

    @property
    def input_names(self) -> tuple[str, ...]:
        """``("pixel_values",)`` or ``("images",)``."""
        return ("pixel_values",) if self.input == "pixels" else ("images",)

    def example_inputs(self, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Seeded inputs of this graph's kind: ``(batch, 3, H, W)`` (or HWC) uint8 / float32."""
        g = torch.Generator().manual_seed(seed)
        h, w = self.input_size
        shape = (batch, h, w, 3) if self.layout == "HWC" else (batch, 3, h, w)
        if self.input == "uint8":
            return (torch.randint(0, 256, shape, generator=g, dtype=torch.uint8),)
        if self.input == "float":
            low, high = self.transforms.input_range
            return (torch.rand(shape, generator=g) * (high - low) + low,)
        return (torch.randn(shape, generator=g),)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Camera frames -> ``(B, 3, S, S)`` SAM 2 pixels, as ``encoder.transforms`` does."""
        if self.input == "pixels":
            return images
        x = images.permute(0, 3, 1, 2) if self.layout == "HWC" else images
        x = self.transforms.to_rgb_unit(x)
        return self.transforms.finish(x)  # the resize is exported as MatMuls (see _matmul_resizes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode a batch.

        Args:
            images: See ``input``.

        Returns:
            ``s4 (B, 32, S/4, S/4)``, ``s8 (B, 64, S/8, S/8)``, ``s16 (B, 256, S/16, S/16)``.
        """
        pyramid = self.encoder.encode(self.preprocess(images))
        return pyramid.s4, pyramid.s8, pyramid.s16

    def reference(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """What eager computes for the same inputs: ``encoder(images)`` / ``encoder.encode(pixels)``."""
        (images,) = inputs
        if self.input == "pixels":
            pyramid = self.encoder.encode(images)
        else:
            x = images.permute(0, 3, 1, 2) if self.layout == "HWC" else images
            pyramid = self.encoder(x)
        return pyramid.as_dict()


def check_exportable(encoder: SAM2ImageEncoder) -> None:
    """Refuse an encoder whose graph would not be its fp32 CPU computation.

    Raises:
        ExportError: For ``precision="bf16"`` (export fp32; run bf16 in OpenVINO), weights that
            are not float32, weights off the CPU, or a deferred checkpoint not loaded yet.
    """
    if not isinstance(encoder, SAM2ImageEncoder):
        raise ExportError(f"expected a SAM2ImageEncoder, got {type(encoder).__name__}")
    if encoder.pending_checkpoint is not None:
        raise ExportError(
            f"{encoder.variant.name} has placeholder weights ({encoder.pending_checkpoint} was not found): "
            "load the saved state_dict before exporting"
        )
    if encoder.precision != "fp32":
        raise ExportError(
            f"precision={encoder.precision!r} is not exported (autocast is not a graph); export the fp32 encoder "
            "and run it in OpenVINO with precision='bf16'"
        )
    weight = encoder.no_memory_embedding
    if weight.dtype != torch.float32 or weight.device.type != "cpu":
        raise ExportError(
            f"export needs float32 weights on the CPU, got {weight.dtype} on {weight.device}: "
            "export encoder.float().cpu() (or a copy of it)"
        )


def _check_input_size(size: object) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) and not isinstance(size, bool) else size
    try:
        h, w = (int(v) for v in pair)  # type: ignore[union-attr]
        ok = all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in pair)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        ok = False
    if not ok or h < 1 or w < 1:
        raise ExportError(f"input_size must be a side or (height, width) of whole numbers >= 1, got {size!r}")
    return h, w


class ObsEncoderGraph(nn.Module):
    """A policy's observation encoder (``MultiCameraEncoder``) as positional tensors in, ``condition`` out.

    Inputs, in this order (the names are the obs keys):

    1. each camera, keys sorted (``rgb_keys``): ``(N, 3, H, W)`` float32 in the encoder's ``input_range``;
    2. each camera's object masks, cameras sorted (with object tokens): ``(N, K, H, W)`` float32 in [0, 1];
    3. each low-dim key, sorted (``low_dim_keys``): ``(N, *shape)`` float32.

    Output ``condition``: ``(N, D)`` with ``D = output_shape()[0]``, what ``forward(obs_dict)``
    returns for those rows (eval mode: centre crop). A host with observation steps (``(B, T, ...)``)
    flattens them into ``N = B * T`` rows and the condition back (``reshape(B, -1)``), as the
    policies do. The graph applies the encoder's steps without its input checks (data-dependent
    control flow cannot be exported): the same view (resize, centre crop) per camera, one trunk
    pass, the heads, the low-dim values appended; :func:`check_parity` compares it with
    ``forward(obs_dict)``.

    Args:
        obs_encoder: A ``MultiCameraEncoder`` (DP's ``SAM2ObsEncoder``, the LeRobot policy's ``encoder``).
        given_masks: For an encoder with ``object_tracker=True``: export the graph that takes the
            object masks as inputs (the tracker then runs outside the graph). Without it such an
            encoder is refused.

    Raises:
        ExportError: For the object tracker (see ``given_masks``) or an image encoder that cannot be exported.
    """

    output_names = ("condition",)

    def __init__(self, obs_encoder: nn.Module, given_masks: bool = False) -> None:
        super().__init__()
        from .camera_encoder import MultiCameraEncoder

        if not isinstance(obs_encoder, MultiCameraEncoder):
            raise ExportError(f"expected a MultiCameraEncoder (or SAM2ObsEncoder), got {type(obs_encoder).__name__}")
        if obs_encoder.object_tracker and not given_masks:
            raise ExportError(
                "object_tracker=True cannot be exported: SAM 2's memory attention and memory encoder carry each "
                "stream's memory bank of past frames from call to call (state a stateless graph cannot hold, "
                "pruned by Python logic); export the graph that takes the object masks as inputs instead "
                "(given_masks=True, CLI --given-masks) and run the tracker outside it"
            )
        check_exportable(obs_encoder.encoder)
        self.obs_encoder = obs_encoder
        t = obs_encoder.encoder.transforms
        self.transforms = SAM2Transforms(
            t.image_size, channel_order=t.channel_order, input_range=t.input_range, validate=False
        )
        self.cameras = list(obs_encoder.rgb_keys)
        self.mask_keys = {c: obs_encoder.object_masks[c] for c in self.cameras if c in obs_encoder.object_masks}
        self.low_dim = list(obs_encoder.low_dim_keys)

    @property
    def input_names(self) -> tuple[str, ...]:
        """The obs keys: cameras (sorted), their object-mask keys, low-dim keys (sorted)."""
        return (*self.cameras, *self.mask_keys.values(), *self.low_dim)

    def example_inputs(self, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Seeded inputs: frames in ``input_range``, binary masks of random boxes, normal low-dim values."""
        g = torch.Generator().manual_seed(seed)
        enc = self.obs_encoder
        low, high = self.transforms.input_range
        frames = [torch.rand(batch, *enc.rgb_shapes[c], generator=g) * (high - low) + low for c in self.cameras]
        masks = []
        for camera in self.mask_keys:
            _, h, w = enc.rgb_shapes[camera]
            corner = torch.rand(batch, enc.num_objects, 2, 1, 1, generator=g)
            ys, xs = torch.arange(h).view(h, 1) / h, torch.arange(w).view(1, w) / w
            inside = (ys >= corner[:, :, 0]) & (ys < corner[:, :, 0] + 0.4) & (xs >= corner[:, :, 1])
            masks.append((inside & (xs < corner[:, :, 1] + 0.4)).float())
        lows = [torch.randn(batch, *enc.low_dim_shapes[k], generator=g) for k in self.low_dim]
        return (*frames, *masks, *lows)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` from the inputs in ``input_names`` order."""
        enc = self.obs_encoder
        frames = dict(zip(self.cameras, inputs))
        masks = dict(zip(self.mask_keys, inputs[len(self.cameras) :]))
        lows = inputs[len(self.cameras) + len(self.mask_keys) :]
        pixels, fitted = [], {}
        for camera, x in frames.items():  # forward's own preprocessing, with transforms that skip the range check
            p, fitted[camera] = to_pixels(self.transforms, enc.view(camera), camera, x, masks.get(camera), False)
            pixels.append(p)
        pyramid = enc.encoder.encode(torch.cat(pixels, dim=0))
        features = enc.fuse_levels(pyramid).unflatten(0, (len(self.cameras), -1))  # (cameras, N, ...)
        parts = []
        for camera, f in zip(self.cameras, features):
            head = enc.head_for(camera)
            m = fitted[camera]
            parts.append(head(f) if m is None else head(f, m.to(f.dtype)))
        parts += [v.reshape(v.shape[0], -1).to(parts[0].dtype) for v in lows]
        return torch.cat(parts, dim=-1)

    def reference(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"condition": obs_encoder(obs_dict)}`` for the same inputs (eval mode, no autograd)."""
        with eval_flags(self.obs_encoder), torch.no_grad():
            return {"condition": self.obs_encoder(dict(zip(self.input_names, inputs)))}


# --------------------------------------------------------------------------------------------
# runtimes
# --------------------------------------------------------------------------------------------


class RuntimeModel:
    """An exported file loaded in ONNX Runtime or OpenVINO on the CPU; call it with numpy arrays.

    Args:
        path: A ``.onnx`` file (either runtime) or an OpenVINO ``.xml`` (OpenVINO).
        runtime: ``"onnxruntime"`` or ``"openvino"``.
        precision: ``"f32"`` or ``"bf16"`` (OpenVINO only; needs native bf16).
        threads: CPU threads (0: the runtime's default).
    """

    def __init__(self, path: str | os.PathLike[str], runtime: str, precision: str = "f32", threads: int = 0) -> None:
        self.path, self.runtime, self.precision = Path(path), runtime, precision
        if runtime not in RUNTIMES:
            raise ExportError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        if precision not in ("f32", "bf16"):
            raise ExportError(f"precision must be 'f32' or 'bf16', got {precision!r}")
        if runtime == "onnxruntime":
            if precision != "f32":
                raise ExportError("ONNX Runtime runs this graph in f32 only; bf16 is OpenVINO's precision='bf16'")
            ort = require("onnxruntime")
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self.input_names = [i.name for i in self._session.get_inputs()]
            self.output_names = [o.name for o in self._session.get_outputs()]
        else:
            if precision == "bf16":
                ok, why = bf16_support("cpu")
                if not ok:
                    raise ExportError(f"OpenVINO precision='bf16' needs native bf16 on this CPU: {why}")
            ov = require("openvino")
            # precision always set (bf16 is its default on CPUs that have it); latency: one request at a time
            config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
            if threads:
                config["INFERENCE_NUM_THREADS"] = threads
            core = ov.Core()
            model = core.read_model(str(path))
            declared = {name for port in (*model.inputs, *model.outputs) for name in port.get_names()}
            self._compiled = core.compile_model(model, "CPU", config)
            self.input_names = [_port_name(i, declared) for i in self._compiled.inputs]
            self.output_names = [_port_name(o, declared) for o in self._compiled.outputs]

    def __call__(self, *inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Run the model on positional inputs (in ``input_names`` order); returns ``{output name: array}``."""
        if len(inputs) != len(self.input_names):
            raise ValueError(
                f"{self.path.name} takes {len(self.input_names)} inputs {self.input_names}, got {len(inputs)}"
            )
        feed = {name: np.ascontiguousarray(x) for name, x in zip(self.input_names, inputs)}
        if self.runtime == "onnxruntime":
            return dict(zip(self.output_names, self._session.run(None, feed)))
        result = self._compiled(feed)
        return {name: np.asarray(result[out]) for name, out in zip(self.output_names, self._compiled.outputs)}


def _port_name(port: Any, declared: set[str]) -> str:
    """The file's name of an OpenVINO port: a compiled port may carry more (``{'s16', 'add_1891'}``), in a set."""
    names = sorted(port.get_names())
    return next((n for n in names if n in declared), names[0])


def load_runtime(
    path: str | os.PathLike[str], runtime: str | None = None, precision: str = "f32", threads: int = 0
) -> RuntimeModel:
    """Load an exported model: ``.xml`` in OpenVINO, ``.onnx`` in ONNX Runtime unless ``runtime`` says otherwise."""
    if runtime is None:
        runtime = "openvino" if Path(path).suffix == ".xml" else "onnxruntime"
    return RuntimeModel(path, runtime, precision=precision, threads=threads)


# --------------------------------------------------------------------------------------------
# parity
# --------------------------------------------------------------------------------------------


@dataclass
class ParityReport:
    """How one runtime's outputs compare with eager on one seeded batch.

    Attributes:
        runtime: ``"onnxruntime"``, ``"openvino f32"`` or ``"openvino bf16"``.
        batch: The batch size checked.
        max_abs_diff: Per output, ``max |runtime - eager|``.
        abs_max: Per output, ``max |eager|`` (the scale of the values).
        tolerance: Per output, the allowed ``max_abs_diff`` (f32 only).
        fidelity: bf16 only: per output, ``cosine_min`` and ``rel_l2_error_max`` over the batch.
    """

    runtime: str
    batch: int
    max_abs_diff: dict[str, float]
    abs_max: dict[str, float]
    tolerance: dict[str, float] = field(default_factory=dict)
    fidelity: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """f32: every output within its tolerance; bf16: every output's cosine >= ``BF16_MIN_COSINE``."""
        if self.fidelity:
            return all(v["cosine_min"] >= BF16_MIN_COSINE for v in self.fidelity.values())
        return all(self.max_abs_diff[k] <= self.tolerance[k] for k in self.max_abs_diff)

    def line(self) -> str:
        """One line for people: the runtime, the batch and each output's numbers."""
        if self.fidelity:
            parts = [
                f"{k} cos {v['cosine_min']:.6f} rel-L2 {v['rel_l2_error_max']:.2e} (max abs {self.max_abs_diff[k]:.2e})"
                for k, v in self.fidelity.items()
            ]
        else:
            parts = [
                f"{k} {self.max_abs_diff[k]:.2e} (values up to {self.abs_max[k]:.3g}, allowed {self.tolerance[k]:.1e})"
                for k in self.max_abs_diff
            ]
        return f"{self.runtime}, batch {self.batch}: max abs diff " + "; ".join(parts)


def _compare(runtime: str, batch: int, got: Mapping[str, np.ndarray], ref: Mapping[str, torch.Tensor]) -> ParityReport:
    diff, scale, tol, fid = {}, {}, {}, {}
    for name, expected in ref.items():
        a = expected.detach().double().cpu()
        b = torch.from_numpy(np.asarray(got[name])).double()
        if tuple(a.shape) != tuple(b.shape):
            raise ExportError(f"{runtime}: output {name!r} has shape {tuple(b.shape)}, eager {tuple(a.shape)}")
        diff[name] = float((a - b).abs().max()) if a.numel() else 0.0
        scale[name] = float(a.abs().max()) if a.numel() else 0.0
        tol[name] = PARITY_RTOL * max(1.0, scale[name])
        if runtime.endswith("bf16"):
            a2, b2 = a.flatten(1), b.flatten(1)
            cos = F.cosine_similarity(a2, b2, dim=1)
            rel = (b2 - a2).norm(dim=1) / a2.norm(dim=1).clamp_min(1e-30)
            fid[name] = {"cosine_min": float(cos.min()), "rel_l2_error_max": float(rel.max())}
    return ParityReport(runtime, batch, diff, scale, tol, fid)


def check_parity(
    graph: nn.Module,
    path: str | os.PathLike[str],
    runtimes: Sequence[str] = ("onnxruntime",),
    batches: Sequence[int] = (1, 3),
    seed: int = 0,
) -> list[ParityReport]:
    """Run an exported file on seeded inputs in each runtime and compare with the eager graph.

    Args:
        graph: The exported module (:class:`ImageEncoderGraph` or ``ObsEncoderGraph``): its
            ``example_inputs(batch, seed)`` and ``reference(*inputs)`` are used.
        path: The exported ``.onnx`` or ``.xml``.
        runtimes: Any of ``"onnxruntime"`` (``.onnx`` only), ``"openvino f32"``, ``"openvino bf16"``.
        batches: Batch sizes to check (two different ones show the batch is dynamic).
        seed: Seed of the inputs.

    Returns:
        One report per runtime and batch.
    """
    reports = []
    models = {}
    for runtime in runtimes:
        name, _, precision = runtime.partition(" ")
        models[runtime] = load_runtime(path, name, precision or "f32")
    for batch in batches:
        inputs = graph.example_inputs(batch, seed + batch)
        with torch.no_grad(), eval_flags(graph):
            ref = graph.reference(*inputs)
        arrays = [x.numpy() for x in inputs]
        for runtime, model in models.items():
            reports.append(_compare(runtime, batch, model(*arrays), ref))
    return reports


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------


@dataclass
class ExportResult:
    """What :func:`export_graph` wrote and measured.

    Attributes:
        path: The file written (``.onnx``, or the ``.xml`` of an OpenVINO IR with its ``.bin`` beside it).
        format: ``"onnx"`` or ``"openvino"``.
        inputs: Input name -> ``(shape with "batch" first, dtype)``.
        outputs: The output names.
        parity: The checks run (empty when ``check=False``).
    """

    path: Path
    format: str
    inputs: dict[str, tuple[tuple[int | str, ...], str]]
    outputs: tuple[str, ...]
    parity: list[ParityReport]

    def summary(self) -> list[str]:
        """Lines for people: the file, the inputs and outputs, and each parity check."""
        ins = ", ".join(f"{k} {tuple(s)} {d}" for k, (s, d) in self.inputs.items())
        lines = [f"wrote {self.path} ({self.format}): inputs {ins}; outputs {', '.join(self.outputs)}"]
        lines += ["  " + ("ok   " if r.ok else "FAIL ") + r.line() for r in self.parity]
        return lines


def _check_out(path: Path, fmt: str) -> Path:
    suffix = {"onnx": ".onnx", "openvino": ".xml"}[fmt]
    if path.is_dir():
        raise ExportError(f"output {path} is a folder; give a {suffix} file name")
    if path.suffix != suffix:
        raise ExportError(f"output {path}: format {fmt!r} writes a {suffix} file name, got {path.name!r}")
    if not path.parent.is_dir():
        raise ExportError(f"output {path}: the folder {path.parent} does not exist")
    return path


def _matmul_resizes(path: Path) -> int:
    """Replace each antialiased bilinear ``Resize`` of an ONNX file by two MatMuls (:func:`resize_matrix`).

    ONNX Runtime implements ``Resize(antialias=1)`` (within 1.3e-5 of torch), OpenVINO 2026.4 does
    not (off by up to 1.8) and TensorRT has no antialias: the MatMuls compute torch's weights
    exactly, everywhere. Only resizes whose input and output heights and widths are static are
    replaced (every one in these graphs: the frame sizes are fixed at export).

    Returns:
        The number of resizes replaced.
    """
    onnx = require("onnx")
    from onnx import helper, numpy_helper, shape_inference

    model = onnx.load(str(path))
    graph = shape_inference.infer_shapes(model).graph
    shapes = {}
    for info in (*graph.value_info, *graph.input, *graph.output):
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    nodes, count = [], 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        src, dst = shapes.get(node.input[0] if node.input else ""), shapes.get(node.output[0])
        if (
            node.op_type != "Resize"
            or not attrs.get("antialias")
            or attrs.get("mode") != b"linear"
            or not src
            or not dst
            or len(src) != 4
            or None in (*src[-2:], *dst[-2:])
        ):
            nodes.append(node)
            continue
        (in_h, in_w), (out_h, out_w) = src[-2:], dst[-2:]
        name = f"antialias_resize_{count}"
        rows_t = numpy_helper.from_array(resize_matrix(in_h, out_h).T.contiguous().numpy(), f"{name}_rows_t")
        cols_t = numpy_helper.from_array(resize_matrix(in_w, out_w).T.contiguous().numpy(), f"{name}_cols_t")
        model.graph.initializer.extend([rows_t, cols_t])
        # x @ R_w.T, then the same along H through transposes: a constant second operand in both MatMuls
        # (OpenVINO 2026.4's read_model fails to compile a constant first operand followed by the normalisation)
        nodes += [
            helper.make_node("MatMul", [node.input[0], cols_t.name], [f"{name}_w"], name=f"{name}_w"),
            helper.make_node("Transpose", [f"{name}_w"], [f"{name}_wt"], name=f"{name}_wt", perm=[0, 1, 3, 2]),
            helper.make_node("MatMul", [f"{name}_wt", rows_t.name], [f"{name}_h"], name=f"{name}_h"),
            helper.make_node("Transpose", [f"{name}_h"], [node.output[0]], name=f"{name}_ht", perm=[0, 1, 3, 2]),
        ]
        count += 1
    if count:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        onnx.save(model, str(path))
    return count


def _to_openvino(onnx_path: Path, xml_path: Path) -> None:
    ov = require("openvino")
    model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(xml_path), compress_to_fp16=False)  # f32 weights: its default halves them


def export_graph(
    graph: nn.Module,
    path: str | os.PathLike[str],
    format: str = "onnx",
    check: bool = True,
    bf16: bool = False,
    batches: Sequence[int] = (1, 3),
    opset: int | None = None,
) -> ExportResult:
    """Export a graph module to ONNX or OpenVINO IR, check parity, then rename into place.

    Args:
        graph: :class:`ImageEncoderGraph` or ``ObsEncoderGraph``.
        path: Output ``.onnx`` (format ``"onnx"``) or ``.xml`` (``"openvino"``, ``.bin`` beside it),
            in an existing folder. Written under a temporary name; renamed only once checked.
        format: ``"onnx"`` or ``"openvino"``.
        check: Run the parity check (ONNX Runtime for ONNX, OpenVINO f32 for IR) on ``batches``.
        bf16: Also report OpenVINO bf16 fidelity (needs openvino and native bf16; not a pass/fail of parity).
        batches: Batch sizes of the check.
        opset: ONNX opset (default: the exporter's).

    Returns:
        The :class:`ExportResult`.

    Raises:
        ExportError: For a bad option, an export that fails, or outputs outside the tolerance
            (nothing is left at ``path`` then).
        ImportError: When the runtime needed is not installed, naming the extra.
    """
    if format not in FORMATS:
        raise ExportError(f"format must be one of {FORMATS}, got {format!r}")
    path = _check_out(Path(path), format)
    inputs = graph.example_inputs(2)  # 2, not 1: torch.export specialises a batch of 1
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp")
    tmp_onnx, tmp_xml = tmp.with_suffix(".onnx"), tmp.with_suffix(".xml")
    written = [tmp_onnx] if format == "onnx" else [tmp_xml, tmp_xml.with_suffix(".bin")]
    try:
        if format == "openvino":
            require("openvino")
        to_onnx(graph, inputs, tmp_onnx, opset)
        _matmul_resizes(tmp_onnx)
        if format == "openvino":
            _to_openvino(tmp_onnx, tmp_xml)
        target = written[0]
        runtimes = (["onnxruntime"] if format == "onnx" else ["openvino f32"]) if check else []
        if bf16:
            runtimes.append("openvino bf16")
        reports = check_parity(graph, target, runtimes, batches) if runtimes else []
        bad = [r for r in reports if not r.ok and not r.fidelity]
        if bad:
            raise ExportError(f"{path.name}: outputs differ from eager beyond the tolerance: {bad[0].line()}")
        if format == "openvino":
            tmp_xml.with_suffix(".bin").replace(path.with_suffix(".bin"))  # the weights first, the .xml last
        target.replace(path)
    finally:
        for p in {tmp_onnx, *written}:
            p.unlink(missing_ok=True)
    shapes = {
        name: (("batch", *x.shape[1:]), str(x.dtype).removeprefix("torch."))
        for name, x in zip(graph.input_names, inputs)
    }
    return ExportResult(path, format, shapes, tuple(graph.output_names), reports)


def export_image_encoder(
    encoder: SAM2ImageEncoder,
    path: str | os.PathLike[str],
    format: str = "onnx",
    input: str = "pixels",
    input_size: int | tuple[int, int] | None = None,
    layout: str = "CHW",
    check: bool = True,
    bf16: bool = False,
) -> ExportResult:
    """Export a ``SAM2ImageEncoder`` (optionally with its transforms) with outputs ``s4``, ``s8``, ``s16``.

    Args:
        encoder: A float32 CPU encoder at the ``image_size`` to export (any multiple of 32).
        path: Output ``.onnx`` or ``.xml``.
        format: ``"onnx"`` or ``"openvino"``.
        input: ``"pixels"`` (SAM 2 pixels, ``(B, 3, S, S)`` float32), ``"uint8"`` or ``"float"``
            camera frames (see :class:`ImageEncoderGraph`).
        input_size: ``(H, W)`` of the camera frames (``"uint8"`` / ``"float"``).
        layout: ``"CHW"`` or ``"HWC"`` camera frames.
        check: Parity check in the runtime (batches 1 and 3).
        bf16: Also report OpenVINO bf16 fidelity.

    Returns:
        The :class:`ExportResult`.

    Example:
        >>> enc = SAM2ImageEncoder("sam2.1_hiera_tiny", "sam2.1_hiera_tiny", image_size=224)  # doctest: +SKIP
        >>> export_image_encoder(enc, "sam2_tiny_224.onnx", input="uint8", input_size=(480, 640))  # doctest: +SKIP
    """
    graph = ImageEncoderGraph(encoder, input=input, input_size=input_size, layout=layout)
    return export_graph(graph, path, format=format, check=check, bf16=bf16)


def export_obs_encoder(
    obs_encoder: nn.Module,
    path: str | os.PathLike[str],
    format: str = "onnx",
    given_masks: bool = False,
    check: bool = True,
    bf16: bool = False,
) -> ExportResult:
    """Export a policy's observation encoder (``MultiCameraEncoder``) with the output ``condition``.

    Args:
        obs_encoder: ``MultiCameraEncoder``, DP's ``SAM2ObsEncoder`` or the LeRobot policy's ``encoder``
            (float32, CPU).
        path: Output ``.onnx`` or ``.xml``.
        format: ``"onnx"`` or ``"openvino"``.
        given_masks: With ``object_tracker=True``: export the graph taking the masks as inputs.
        check: Parity check against ``obs_encoder(obs_dict)`` in the runtime (batches 1 and 3).
        bf16: Also report OpenVINO bf16 fidelity.

    Returns:
        The :class:`ExportResult`; the inputs are named by the obs keys (see :class:`ObsEncoderGraph`).
    """
    graph = ObsEncoderGraph(obs_encoder, given_masks=given_masks)
    return export_graph(graph, path, format=format, check=check, bf16=bf16)
