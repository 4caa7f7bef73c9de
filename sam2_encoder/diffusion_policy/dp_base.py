"""Our dataset wrappers as Diffusion Policy datasets, without importing DP until asked.

DP's image workspace asserts ``isinstance(dataset, BaseImageDataset)``. A wrapper class that
forwards to a DP dataset gets DP's base mixed in on first use (through its module's
``__getattr__``), so that importing our modules never imports DP, while Hydra's ``_target_`` and
pickle both find the class by name.
"""

from __future__ import annotations

from typing import Any

__all__ = ["serve_dp_class", "with_dp_base"]


def with_dp_base(cls: type, name: str, module: str) -> type:
    """``cls`` with DP's ``BaseImageDataset`` mixed in, named ``name`` in ``module``.

    Args:
        cls: A wrapper whose instances hold the wrapped DP dataset in ``self.dataset``.
        name: The new class's name (the module attribute it is served as).
        module: The module that serves it (for pickle and Hydra).

    Returns:
        The subclass; methods of ``cls`` come first, ``get_all_actions`` forwards to the wrapped
        dataset (DP's base would raise).
    """
    from diffusion_policy.dataset.base_dataset import BaseImageDataset

    def get_all_actions(self: Any) -> Any:
        return self.dataset.get_all_actions()

    return type(name, (cls, BaseImageDataset), {"__module__": module, "get_all_actions": get_all_actions})


def serve_dp_class(module_globals: dict[str, Any], name: str, cls: type) -> type:
    """Create ``with_dp_base(cls, name, ...)`` once and keep it as the module attribute ``name``.

    For a module's ``__getattr__``: later look-ups (Hydra, pickle) find the attribute directly.
    """
    served = with_dp_base(cls, name, module_globals["__name__"])
    module_globals[name] = served
    return served
