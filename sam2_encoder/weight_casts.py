"""bf16 copies of a frozen trunk's Linear / Conv weights, cast once instead of on every call.

Under autocast, ``F.linear`` / ``conv2d`` cast their weight and bias to bfloat16 on each call;
torch caches those casts only for weights that need gradients, so a frozen trunk pays a cast of
all its ~27M (tiny) weights per call, whatever the batch. :class:`FrozenWeightCasts` keeps the
casts and hands them to the call through ``torch.func.functional_call``: autocast then finds the
weights already in bfloat16, so every output is bit-identical to plain autocast (the same rounding,
done once). Copies are renewed when a weight changes (``load_state_dict``, an optimizer step, a
move to another device). Cost: one bf16 copy of those weights (54 MB for tiny, 430 MB for large).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["FrozenWeightCasts"]


class _Call(nn.Module):
    """``fn(*args)`` as the forward of a module holding ``module`` (what ``functional_call`` reparametrises)."""

    def __init__(self, module: nn.Module, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.module = module
        self.fn = fn

    def forward(self, *args: Any) -> Any:
        return self.fn(*args)


class FrozenWeightCasts:
    """Cast copies of ``module``'s frozen Linear / Conv weights and biases, kept while the weights stay.

    Args:
        dtype: The autocast dtype (``torch.bfloat16``).
    """

    def __init__(self, dtype: torch.dtype = torch.bfloat16) -> None:
        self.dtype = dtype
        self._key: tuple | None = None
        self._copies: dict[str, torch.Tensor] = {}

    def copies(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """``{parameter name: cast copy}`` of every frozen Linear / Conv parameter of ``module``."""
        params = {
            f"{name}.{pname}" if name else pname: p
            for name, sub in module.named_modules()
            if isinstance(sub, nn.Linear | nn.Conv1d | nn.Conv2d)
            for pname, p in sub.named_parameters(recurse=False)
            if not p.requires_grad and p.dtype != self.dtype
        }
        key = tuple((n, p.data_ptr(), p._version, p.device) for n, p in params.items())
        if key != self._key:
            with torch.inference_mode(False), torch.no_grad():  # normal tensors, even when called in inference
                self._copies = {n: p.detach().to(self.dtype) for n, p in params.items()}
            self._key = key
        return self._copies

    def call(self, module: nn.Module, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` with ``module``'s frozen Linear / Conv weights replaced by their cast copies.

        ``fn`` reads ``module``'s parameters by attribute (any function of the module does).
        """
        copies = {f"module.{name}": t for name, t in self.copies(module).items()}
        return torch.func.functional_call(_Call(module, fn), copies, args, strict=False, tie_weights=False)

    def __getstate__(self) -> dict[str, Any]:
        return {"dtype": self.dtype}  # copies are not saved, pickled or deep-copied: they are made again

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["dtype"])

    def clear(self) -> None:
        """Drop the copies (they are made again on the next call)."""
        self._key, self._copies = None, {}
