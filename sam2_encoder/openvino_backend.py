"""OpenVINO as the inference backend of a frozen ``SAM2ImageEncoder`` (``backend="openvino"``).

The trunk, the neck and the high-res projections (:class:`BackboneGraph`: pixels -> ``s4``,
``s8`` and the stride-16 neck level, float32) are exported once per input size to ONNX with a
dynamic batch (:func:`sam2_encoder.onnx_graph.to_onnx`, the exporter of ``sam2-encoder export``,
so the graph is the one a user's exported file holds) and read by ``openvino.convert_model``;
each batch size then gets its own static-shape compiled model (without OpenVINO's "snippets",
which at static shapes cost bf16 fidelity: see ``_request``), kept in a small cache
(:data:`MAX_COMPILED` models, least recently used dropped). Not ``torch.export`` straight into
OpenVINO: OpenVINO 2026.4 computes a one-head SDPA followed by its transpose wrongly (Hiera
tiny's first stage: off by 0.5), and the decomposed graph is 1.5x slower.
The no-memory embedding, the position encodings and the ``FeaturePyramid`` stay in torch, so the
encoder's outputs and everything above it (the frame memo, the obs encoders, the heads) are
unchanged. The precision hint is always set (OpenVINO picks bf16 by default on CPUs that have
it): ``precision="fp32"`` runs OpenVINO's f32 (within ``PARITY_RTOL`` of eager, tested),
``"bf16"`` its bf16 (a fidelity report, like eager bf16). The threads are torch's
(``torch.get_num_threads()`` when a model is compiled).

The models are rebuilt when a weight changes (``load_state_dict``: each parameter's version and
storage are part of the key) and are never pickled or deep-copied (Diffusion Policy's EMA copy
makes its own). OpenVINO is inference only: the backend runs frozen encoders, on the CPU, with
float32 weights, and refuses inputs that need gradients.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .onnx_graph import require, to_onnx

__all__ = ["BACKENDS", "MAX_COMPILED", "BackboneGraph", "OpenVINOBackend", "require_openvino"]

log = logging.getLogger(__name__)

BACKENDS = ("torch", "openvino")
# compiled models kept per encoder (one per batch size x input size x threads x precision)
MAX_COMPILED = 8
_HINTS = {"fp32": "f32", "bf16": "bf16"}


def require_openvino() -> Any:
    """``import openvino`` (and check the exporter's onnx / onnxscript), or one ImportError naming the extra."""
    try:
        for module in ("onnxscript", "onnx"):
            require(module)
        return require("openvino")
    except ImportError as e:
        raise ImportError(
            f"backend='openvino' needs the openvino extra: {str(e).split(';')[0]}; install it: "
            "pip install 'sam2-encoder[openvino]' (or use backend='torch')"
        ) from None


class BackboneGraph(nn.Module):
    """A ``SAM2ImageEncoder``'s trunk, neck and ``conv_s0`` / ``conv_s1`` in float32: what the backend compiles.

    Args:
        encoder: The encoder (its weights are shared, not copied); its ``precision`` is not applied
            here (OpenVINO's precision hint is).
    """

    input_names = ("pixel_values",)
    output_names = ("s4", "s8", "s16_neck")

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, 3, H, W)`` pixels -> ``s4 (B, 32, H/4, W/4)``, ``s8 (B, 64, H/8, W/8)``, ``s16_neck``.

        ``s16_neck``: ``(B, 256, H/16, W/16)``, the stride-16 level before the no-memory embedding
        (added in torch).
        """
        enc = self.encoder
        s4, s8, neck16 = enc.neck(enc.trunk(pixel_values))
        return enc.conv_s0(s4), enc.conv_s1(s8), neck16


def convert(encoder: nn.Module, hw: tuple[int, int]) -> Any:
    """The encoder's :class:`BackboneGraph` at input size ``hw`` as an ``openvino.Model`` with a dynamic batch."""
    ov = require_openvino()
    with tempfile.TemporaryDirectory(prefix="sam2_openvino_") as tmp, torch.inference_mode(False):
        path = Path(tmp) / "backbone.onnx"
        to_onnx(BackboneGraph(encoder), (torch.zeros(2, 3, *hw),), path)  # 2: a batch of 1 is specialised
        return ov.convert_model(str(path))  # read into memory: the file may go


class OpenVINOBackend:
    """Compiled OpenVINO models of one encoder, by input shape, and the pass through them.

    Args:
        precision: ``"fp32"`` or ``"bf16"`` (OpenVINO's ``INFERENCE_PRECISION_HINT`` f32 / bf16).
    """

    def __init__(self, precision: str = "fp32") -> None:
        if precision not in _HINTS:
            raise ValueError(f"precision must be one of {tuple(_HINTS)}, got {precision!r}")
        self.precision = precision
        self.runs = 0  # images passed through OpenVINO (what a test of the frame memo observes)
        self._weights_key: tuple | None = None
        self._models: dict[tuple[int, int], Any] = {}  # converted models, by (H, W)
        self._compiled: OrderedDict[tuple, Any] = OrderedDict()  # (B, H, W, threads) -> infer request

    @property
    def compiled_shapes(self) -> list[tuple[int, int, int, int]]:
        """``(batch, H, W, threads)`` of the compiled models kept, least recently used first."""
        return list(self._compiled)

    def check(self, encoder: nn.Module, pixel_values: torch.Tensor) -> None:
        """Refuse what OpenVINO cannot run as the eager encoder would.

        Raises:
            ValueError: For pixels off the CPU, weights that are not float32, an encoder that is not
                frozen (fine-tuning, train mode), or pixels that need gradients.
        """
        weight = encoder.no_memory_embedding
        if pixel_values.device.type != "cpu" or weight.device.type != "cpu":
            raise ValueError(
                f"backend='openvino' runs on the CPU; got pixels on {pixel_values.device} and weights on "
                f"{weight.device} (use backend='torch' on {pixel_values.device.type})"
            )
        if weight.dtype != torch.float32:
            raise ValueError(
                f"backend='openvino' compiles float32 weights, got {weight.dtype} (leave dtype at float32; "
                "precision='bf16' runs OpenVINO in bf16)"
            )
        if not encoder.frozen or encoder.training or any(p.requires_grad for p in encoder.parameters()):
            raise ValueError(
                "backend='openvino' is inference only: it needs a frozen encoder (freeze=True, no finetune, no "
                "trainable weights, not in train mode); fine-tune with backend='torch'"
            )
        if pixel_values.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                "backend='openvino' is inference only: the pixels require grad, and no gradient flows through "
                "OpenVINO; detach them or use backend='torch'"
            )

    def run(self, encoder: nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One pass of ``(B, 3, H, W)`` float32 CPU pixels: ``s4``, ``s8``, ``s16_neck`` as new float32 tensors."""
        request = self._request(encoder, tuple(pixel_values.shape))
        x = pixel_values.detach().to(torch.float32).contiguous()
        outputs = []
        ov = require_openvino()
        for i, port in enumerate(request.model_outputs):
            out = torch.empty(tuple(port.get_shape()), dtype=torch.float32)
            request.set_output_tensor(i, ov.Tensor(out.numpy(), shared_memory=True))
            outputs.append(out)
        request.infer({0: x.numpy()}, share_inputs=True)
        self.runs += x.shape[0]
        return outputs[0], outputs[1], outputs[2]

    def _request(self, encoder: nn.Module, shape: tuple[int, ...]) -> Any:
        """The infer request of the static model of this shape and thread count (compiled on first use)."""
        self._check_weights(encoder)
        batch, _, h, w = shape
        threads = torch.get_num_threads()
        key = (batch, h, w, threads)
        if key in self._compiled:
            self._compiled.move_to_end(key)
            return self._compiled[key]
        ov = require_openvino()
        t0 = time.perf_counter()
        if (h, w) not in self._models:
            self._models[(h, w)] = convert(encoder, (h, w))
        model = self._models[(h, w)].clone()
        model.reshape({model.inputs[0]: ov.PartialShape([batch, 3, h, w])})
        config = {
            "INFERENCE_PRECISION_HINT": _HINTS[self.precision],
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads,
            # static shapes let OpenVINO 2026.4 fuse attention into snippets whose bf16 moves the stride-16
            # level 10x more (224 px: cosine 0.9943, rel-L2 11% vs 0.99994, 1%); without them the same as raw
            "SNIPPETS_MODE": "DISABLE",
        }
        compiled = ov.Core().compile_model(model, "CPU", config)
        request = compiled.create_infer_request()
        self._compiled[key] = request
        while len(self._compiled) > MAX_COMPILED:
            self._compiled.popitem(last=False)
        log.info("OpenVINO %s model for %s compiled in %.1f s", self.precision, key, time.perf_counter() - t0)
        return request

    def _check_weights(self, encoder: nn.Module) -> None:
        """Drop every model when a weight or buffer changed since they were built."""
        tensors = [*encoder.parameters(), *encoder.buffers()]
        key = tuple((t.data_ptr(), t._version) for t in tensors)
        if key != self._weights_key:
            self.clear()
            self._weights_key = key

    def clear(self) -> None:
        """Drop the converted and compiled models (built again on the next call)."""
        self._weights_key = None
        self._models.clear()
        self._compiled.clear()

    def __getstate__(self) -> dict[str, Any]:
        return {"precision": self.precision}  # models are not pickled or deep-copied: they are built again

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["precision"])
