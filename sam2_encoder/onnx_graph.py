"""A graph module to an ONNX file with a dynamic batch: ``torch.onnx.export(dynamo=True)`` with our settings.

The one place the package calls torch's ONNX exporter: :mod:`sam2_encoder.export` (files for
robots) and :mod:`sam2_encoder.openvino_backend` (the encoder's OpenVINO backend) both export
through :func:`to_onnx`. A graph module has ``input_names`` / ``output_names`` and a positional
``forward``; dim 0 of every input is the batch, named ``batch``. Knows nothing of the encoder
itself: modules with a ``micro_batch`` option run one pass while exporting (the batch is symbolic).

The exporter's packages are optional (``pip install 'sam2-encoder[export]'``): :func:`require`
imports one, or raises one ImportError naming the extra.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["EXTRAS", "ExportError", "batch_dims", "eval_flags", "export_settings", "require", "to_onnx"]

#: ``{module: (import name, the extra that installs it)}``.
EXTRAS = {
    "onnx": ("onnx", "export"),
    "onnxruntime": ("onnxruntime", "export"),
    "onnxscript": ("onnxscript", "export"),
    "openvino": ("openvino", "openvino"),
}


class ExportError(ValueError):
    """A module or option that cannot be exported, or an export whose outputs are not the eager ones."""


def require(module: str) -> Any:
    """Import an optional runtime, or one ImportError naming the extra that installs it."""
    name, extra = EXTRAS[module]
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ImportError(
            f"{module} is not installed ({e}); install the export extra: pip install 'sam2-encoder[{extra}]'"
        ) from None


@contextlib.contextmanager
def export_settings(graph: nn.Module) -> Iterator[None]:
    """One pass over the whole batch (no micro-batch chunks: the batch is symbolic), eval mode, quiet logs."""
    encoders = [m for m in graph.modules() if hasattr(type(m), "micro_batch_size") and hasattr(m, "micro_batch")]
    saved = [(e, e.micro_batch) for e in encoders]
    quiet = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision is not installed"
    level = quiet.level
    try:
        for e in encoders:
            e.micro_batch = None
        quiet.setLevel(logging.ERROR)
        with eval_flags(graph), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)  # torch.export's own
            yield
    finally:
        for e, value in saved:
            e.micro_batch = value
        quiet.setLevel(level)


@contextlib.contextmanager
def eval_flags(module: nn.Module) -> Iterator[None]:
    """Eval mode for ``module`` and every submodule, then each one's own ``training`` flag back.

    The flags are set directly, not through ``train()`` / ``eval()``: a ``MultiCameraEncoder``'s
    ``train()`` forgets its remembered frames and ends its object streams, and a graph module's
    own flag (``True`` when built) is not the wrapped encoder's. So exporting or checking an
    encoder leaves it exactly in the mode it was in.
    """
    saved = [(m, m.training) for m in module.modules()]
    try:
        for m, _ in saved:
            m.training = False
        yield
    finally:
        for m, flag in saved:
            m.training = flag


def batch_dims(graph: nn.Module, count: int, batch: Any) -> tuple:
    """``dynamic_shapes``: dim 0 of every input is ``batch`` (grouped as one argument for ``forward(*inputs)``)."""
    dims = tuple({0: batch} for _ in range(count))
    kinds = [p.kind for p in inspect.signature(graph.forward).parameters.values()]
    return (dims,) if kinds == [inspect.Parameter.VAR_POSITIONAL] else dims


def to_onnx(graph: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, opset: int | None = None) -> None:
    """Export ``graph`` on example ``inputs`` (batch >= 2: torch.export specialises a batch of 1) to ``path``.

    Raises:
        ExportError: When the exporter fails, or keeps a fixed batch size (one line each).
        ImportError: Without onnxscript / onnx, naming the extra.
    """
    require("onnxscript")
    require("onnx")
    from torch.export import Dim

    batch = Dim("batch", min=1, max=4096)
    names = list(graph.input_names)
    try:
        with export_settings(graph), torch.no_grad():
            torch.onnx.export(
                graph,
                inputs,
                str(path),
                dynamo=True,
                input_names=names,
                output_names=list(graph.output_names),
                dynamic_shapes=batch_dims(graph, len(inputs), batch),
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
    except Exception as e:  # noqa: BLE001 - torch.export / onnxscript raise many types; one message here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"torch.onnx.export of {type(graph).__name__} failed: {type(e).__name__}: {first}") from e
    model = require("onnx").load(str(path), load_external_data=False)
    fixed = [i.name for i in model.graph.input if not i.type.tensor_type.shape.dim[0].dim_param]
    if fixed:  # the exporter falls back to tracing one batch size when torch.export fails: refuse that file
        raise ExportError(
            f"torch.onnx.export of {type(graph).__name__} fixed the batch size of {fixed} (torch.export could not "
            "keep it dynamic); nothing written"
        )
