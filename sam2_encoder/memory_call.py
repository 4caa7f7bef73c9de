"""One forward call's policy memory: which camera rows join the trunk pass, and their heads' input after it.

:class:`MemoryCall` is the memory's part of ``MultiCameraEncoder.forward`` (see
:mod:`sam2_encoder.policy_memory`). In training (and whenever the obs dict holds
``memory_key(camera)``), each row's bank frames ``(N, F, 3, H, W)`` join the one trunk pass with the
current frames, their memories are encoded and the current features conditioned on them. At inference
without that key, :class:`~sam2_encoder.memory_streams.MemoryStreams` picks each stream's new frame
(the only rows encoded), keeps its memory and conditions every row on its own frame's bank. With the
object tracker and no masks in the obs dict,
:class:`~sam2_encoder.memory_tracking.TrackedMemoryCall` serves the call: the tracker and the
streams share the trunk pass, and each new frame's memory stores the masks the tracker gives it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .image_encoder import FeaturePyramid
from .memory_cache import CachedMemoryCall, holds_cached_memory
from .memory_tracking import TrackedMemoryCall
from .policy_memory import memory_key

__all__ = ["MemoryCall"]


class MemoryCall:
    """The memory cameras of one forward call (every camera of an encoder with ``memory="sam2"``).

    Args:
        enc: The ``MultiCameraEncoder`` (its views, trunk transforms, heads, ``memory`` weights and
            ``memory_streams``).
        obs_dict: The call's inputs.
        lead: The batch dims; ``n`` their product.
        n: Rows.
        masks: ``{camera: (n, K, H, W)}`` the given object masks (checked).
        tracking: The object tracker makes this call's masks (the obs dict has none).

    Raises:
        KeyError: In training (or with autograd on) without the bank frames ``memory_key(camera)``.
        ValueError: For bank frames (or masks) of the wrong shape, precomputed features, or bank
            frames in a tracked call.
    """

    def __init__(
        self,
        enc: Any,
        obs_dict: Mapping[str, torch.Tensor],
        lead: tuple[int, ...],
        n: int,
        masks: Mapping[str, torch.Tensor],
        tracking: bool = False,
    ) -> None:
        self.enc, self.n = enc, n
        self.cached = CachedMemoryCall(enc, obs_dict, lead, n, masks) if holds_cached_memory(enc, obs_dict) else None
        if self.cached is not None:  # a memory cache's features and bank memories (memory_cache): no trunk pass
            return
        bank = enc.memory.bank_size
        self.objects = enc.config.policy_memory.memory_source == "objects"
        self.history = all(memory_key(key) in obs_dict for key in enc.rgb_keys)
        if not self.history and (enc.training or torch.is_grad_enabled()):
            missing = [memory_key(k) for k in enc.rgb_keys if memory_key(k) not in obs_dict]
            raise KeyError(
                f"obs_dict is missing {missing[0]!r}, the bank frames (N, {bank}, 3, H, W) of camera "
                f"{enc.rgb_keys[0]!r}: with memory='sam2', training reads each row's past frames from the batch "
                "(MemoryDataset gives them); only inference (eval, under torch.no_grad()) keeps its own banks"
            )
        self.inputs: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}  # camera -> (frames, masks)
        self.past: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}  # camera -> bank (frames, masks)
        for key in enc.rgb_keys:
            x = obs_dict[key]
            x = x.reshape(n, *x.shape[len(lead) :])
            if tuple(x.shape[1:]) == enc.feature_shape:
                raise ValueError(
                    f"obs_dict[{key!r}] holds precomputed features {tuple(x.shape)}; with memory='sam2' the encoder "
                    f"needs camera {key!r}'s frames (3, H, W) to condition them on their bank"
                )
            m = masks.get(key)
            self.inputs[key] = (x, m)
            if self.history:
                past = _bank_input(obs_dict, memory_key(key), lead, (bank, *enc.rgb_shapes[key]))
                past_masks = None
                if self.objects and m is not None:
                    shape = (bank, *m.shape[1:])
                    past_masks = _bank_input(obs_dict, memory_key(enc.object_masks[key]), lead, shape).to(m.dtype)
                self.past[key] = (past, past_masks)
        self.plan = None
        self.tracking: TrackedMemoryCall | None = None
        if tracking and self.history:
            raise ValueError(
                f"obs_dict holds the bank frames {memory_key(enc.rgb_keys[0])!r} but no object masks "
                f"{next(iter(enc.object_masks.values()))!r}: the object tracker streams one call per control step and "
                "does not track a batch's bank frames; give the masks (and their bank masks), or drop the bank frames"
            )
        if tracking:
            self.tracking = TrackedMemoryCall(enc, {key: x for key, (x, _) in self.inputs.items()}, n)
        elif not self.history:
            self.plan = enc.memory_streams.plan({key: x for key, (x, _) in self.inputs.items()})

    def pixels(self) -> list[torch.Tensor]:
        """The trunk inputs, one per camera: every row and its bank frames, or the streams' new frames."""
        enc = self.enc
        if self.cached is not None:
            return []
        if self.tracking is not None:
            return self.tracking.pixels()
        self.fitted = {key: enc._preprocess(key, x, m) for key, (x, m) in self.inputs.items()}
        if self.plan is not None:
            return [p[self.plan.rows] for p, _ in self.fitted.values()]
        self.fitted_past = {key: enc._preprocess(key, x, m) for key, (x, m) in self.past.items()}
        return [torch.cat([self.fitted[key][0], self.fitted_past[key][0]]) for key in self.inputs]

    def outputs(self, pyramids: Sequence[FeaturePyramid]) -> dict[str, torch.Tensor]:
        """``{camera: (n, D_camera)}`` from the pyramids of :meth:`pixels`, in its order."""
        enc, n = self.enc, self.n
        if self.cached is not None:
            return self.cached.outputs()
        if self.tracking is not None:
            return self.tracking.outputs(pyramids)
        if self.plan is not None:
            frames = {key: x for key, (x, _) in self.inputs.items()}
            rows = self.plan.rows
            memory_masks = {
                k: (m[rows] if self.objects and m is not None else None) for k, (_, m) in self.fitted.items()
            }
            features = enc.memory_streams.advance(
                self.plan, frames, dict(zip(self.inputs, pyramids)), memory_masks, enc.fuse_levels
            )
            return {key: enc._head(key, features[key], m) for key, (_, m) in self.fitted.items()}
        out = {}
        bank = enc.memory.bank_size
        for (key, (_, m)), pyramid in zip(self.fitted.items(), pyramids):
            current, past = pyramid.select(slice(0, n)), pyramid.select(slice(n, None))
            memories = enc.memory.memories(past.s16_neck, self.fitted_past[key][1])
            banks = memories.reshape(n, bank, *memories.shape[1:])
            s16 = enc.memory.condition(current.s16_neck, banks)
            fused = enc.fuse_levels(FeaturePyramid(current.s4, current.s8, s16, s16_neck=current.s16_neck))
            out[key] = enc._head(key, fused, m)
        return out


def _bank_input(obs_dict: Mapping[str, torch.Tensor], key: str, lead: tuple[int, ...], shape: tuple[int, ...]):
    """``obs_dict[key]`` of shape ``(*lead, *shape)`` as ``(n * F, *shape[1:])``, else one error naming it."""
    if key not in obs_dict:
        raise KeyError(
            f"obs_dict is missing {key!r}, the bank's object masks {(*lead, *shape)} (memory_source='objects')"
        )
    value = obs_dict[key]
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != (*lead, *shape):
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(
            f"obs_dict[{key!r}] (bank frames of the policy memory) has shape {got}; expected {(*lead, *shape)}: "
            f"the batch dims, then the bank's {shape[0]} frames (the first frame, then memory_frames past ones)"
        )
    return value.reshape(-1, *shape[1:])
