"""What our Diffusion Policy dataset wrappers share, and DP's base class mixed in without importing DP.

:class:`DPDatasetWrapper` is the forwarding both wrappers need (``CachedFeatureDataset`` serves
cached features, ``MaskDataset`` cached object masks): build or take the wrapped DP dataset, check
its sampler, forward every other attribute to it, give the buffer frames of each sample, the
validation split and a normaliser with identity entries for the keys the wrapper serves.

DP's image workspace asserts ``isinstance(dataset, BaseImageDataset)``. A wrapper class gets DP's
base mixed in on first use (through its module's ``__getattr__``, :func:`serve_dp_class`), so
that importing our modules never imports DP, while Hydra's ``_target_`` and pickle both find the
class by name: a module sets ``__getattr__ = dp_classes(globals(), {"DPName": Wrapper})``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["DPDatasetWrapper", "dp_classes", "sequence_frames", "serve_dp_class", "with_dp_base"]


def sequence_frames(indices_row: Sequence[int], sequence_length: int) -> np.ndarray:
    """Buffer frame of every step of one sample of Diffusion Policy's ``SequenceSampler``.

    Args:
        indices_row: ``(buffer_start, buffer_end, sample_start, sample_end)``.
        sequence_length: Steps per sample.

    Returns:
        ``(sequence_length,)`` frame indices; padded steps repeat the first / last frame, as the
        sampler pads.
    """
    buffer_start, buffer_end, sample_start, sample_end = (int(v) for v in indices_row)
    frames = np.empty(sequence_length, dtype=np.int64)
    frames[:sample_start] = buffer_start
    frames[sample_end:] = buffer_end - 1
    frames[sample_start:sample_end] = np.arange(buffer_start, buffer_end)
    return frames


class DPDatasetWrapper(torch.utils.data.Dataset):
    """Base of a dataset that adds or replaces obs keys of a wrapped Diffusion Policy dataset.

    The wrapped dataset has ``sampler.indices`` / ``sampler.sequence_length`` like DP's
    ``SequenceSampler``, items ``{"obs": {...}, "action": ...}``, ``get_normalizer()`` and
    ``get_validation_dataset()``. Attributes the wrapper does not have are the wrapped dataset's.
    Subclasses set :attr:`served_keys` (the obs keys whose values they serve, normalised through
    the identity) and implement ``__getitem__`` with :meth:`sample_frames`.

    Wrappers compose: ``dataset_target`` may be a list of import paths, outermost first, ending
    with the DP dataset class, e.g. ``[CachedFeatureDataset, PushTImageDataset]`` under a
    ``DPMaskDataset`` serves cached features and cached masks together. Each wrapper takes its own
    arguments from ``dataset_kwargs`` and hands the rest on, with the rest of the list.

    Args:
        dataset: The DP dataset to wrap, or ``None`` to build ``dataset_target(**dataset_kwargs)``.
        dataset_target: Import path of the DP dataset class (from Hydra configs, where the
            wrapper's node is merged over the task's dataset node, whose arguments arrive as kwargs),
            or a list of paths: our wrappers (outermost first), then the DP dataset class.
        dataset_kwargs: Arguments of ``dataset_target`` (of the whole chain).

    Raises:
        ValueError: If neither ``dataset`` nor ``dataset_target`` is given, or ``dataset`` with
            ``dataset_target`` or its arguments, or a list whose entries before the last are not
            our dataset wrappers.
        TypeError: If the dataset has no DP-style sampler.
    """

    served_keys: tuple[str, ...] = ()

    def __init__(
        self,
        dataset: Any = None,
        dataset_target: str | Sequence[str] | None = None,
        dataset_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if dataset is not None and (dataset_target is not None or dataset_kwargs):
            given = sorted(dataset_kwargs or {}) if dataset_target is None else ["dataset_target"]
            raise ValueError(
                f"{type(self).__name__} got dataset= and also {given}, which would be ignored: give the dataset, "
                "or dataset_target= with its arguments"
            )
        if dataset is None:
            if dataset_target is None:
                raise ValueError(f"{type(self).__name__} needs dataset= or dataset_target=")
            dataset = _build_chain(type(self).__name__, dataset_target, dict(dataset_kwargs or {}))
        sampler = getattr(dataset, "sampler", None)
        if sampler is None or not hasattr(sampler, "indices"):
            raise TypeError(f"{type(dataset).__name__} has no DP-style sampler with .indices")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def sample_frames(self, idx: int) -> np.ndarray:
        """``(sequence_length,)`` replay-buffer frames of sample ``idx`` (see :func:`sequence_frames`)."""
        sampler = self.dataset.sampler
        return sequence_frames(sampler.indices[idx], sampler.sequence_length)

    def get_validation_dataset(self) -> DPDatasetWrapper:
        """The wrapped dataset's validation split, served the same way (same class, same caches)."""
        clone = copy.copy(self)
        clone.dataset = self.dataset.get_validation_dataset()
        return clone

    def get_normalizer(self, *args: Any, **kwargs: Any):
        """The wrapped dataset's normaliser with :attr:`served_keys` mapped through the identity."""
        from diffusion_policy.model.common.normalizer import SingleFieldLinearNormalizer

        normalizer = self.dataset.get_normalizer(*args, **kwargs)
        for key in self.served_keys:
            normalizer[key] = SingleFieldLinearNormalizer.create_identity()
        return normalizer


def _build_chain(owner: str, dataset_target: Any, kwargs: dict[str, Any]) -> Any:
    """``dataset_target(**kwargs)``; a list builds its first class with the rest as its ``dataset_target``."""
    from hydra.utils import get_class

    if isinstance(dataset_target, str):
        return get_class(dataset_target)(**kwargs)
    targets = list(dataset_target) if isinstance(dataset_target, Sequence) else None
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(
            f"{owner}: dataset_target must be an import path or a non-empty list of them (our wrappers, then the DP "
            f"dataset class), got {dataset_target!r}"
        )
    if len(targets) == 1:
        return get_class(targets[0])(**kwargs)
    cls = get_class(targets[0])
    if not (isinstance(cls, type) and issubclass(cls, DPDatasetWrapper)):
        raise ValueError(
            f"{owner}: dataset_target {targets} lists {targets[0]} before the end, which is not one of our dataset "
            "wrappers (CachedFeatureDataset, MaskDataset); only the last entry is the DP dataset class"
        )
    rest = targets[1:]
    return cls(dataset_target=rest[0] if len(rest) == 1 else rest, **kwargs)


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


def dp_classes(module_globals: dict[str, Any], classes: Mapping[str, type]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that serves ``classes`` (``{name: wrapper}``) with DP's base mixed in.

    Each is created on first use (:func:`serve_dp_class`), so that DP is imported only by the
    configs that ask for it; any other name raises ``AttributeError`` as a module does.
    """
    module = module_globals["__name__"]

    def __getattr__(name: str) -> Any:
        if name in classes:
            return serve_dp_class(module_globals, name, classes[name])
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
