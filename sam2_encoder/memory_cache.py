"""Cached policy memory for a frozen encoder: a training row without the trunk or the memory encoder.

With ``memory="sam2"`` (:mod:`sam2_encoder.policy_memory`) a training row from frames passes its
frame and its ``F`` bank frames through the trunk and the memory encoder (``F + 1`` trunk frames a
row). With a frozen trunk (the memory modules are always frozen) what a row needs of each frame is
the same every epoch, so it is computed once per frame (:func:`frame_memory_maps`) and cached:

* the frame's **features** ``(C, h, w)``, the encoder's ``feature_shape``: the heads' input with the
  s16 channels (the last 256, in both ``fuse`` layouts) holding the stride-16 neck features
  ``s16_neck``, the memory attention's queries, in place of the conditioned s16; the finer levels
  (pooled or packed) are the parts the memory does not change;
* the frame's **memory** ``(64, h, w)`` (:meth:`MemoryModules.memories` of its ``s16_neck`` and mask):
  the bank's keys and values; with ``memory_source="objects"`` made with the frame's object masks.

A training row is then memory attention(the s16 channels of its features, the memories of its bank
frames) -> the s16 channels -> heads (:class:`CachedMemoryCall`): the obs dict holds
``obs[camera]`` ``(N, *feature_shape)`` and ``obs[memory_key(camera)]`` ``(N, F, 64, h, w)``. Which
frames form a bank (``memory_frames``, ``memory_stride``, ``memory_keep_first``) is chosen when
reading, so one cache serves every bank layout. What changes the stored values, and so must match
the encoder (:func:`memory_cache_problems`): the trunk (variant, image size, weights), the levels the
heads read, ``memory_source`` and the memory encoder's weights (:func:`memory_weights_digest`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .image_encoder import SAM2ImageEncoder
from .policy_memory import MemoryModules, memory_key
from .pooling import fuse_levels, pack_pyramid

__all__ = [
    "MEMORY_ARRAYS",
    "S16_CHANNELS",
    "CachedMemoryCall",
    "cached_features",
    "frame_memory_maps",
    "holds_cached_memory",
    "memory_cache_levels",
    "memory_cache_problems",
    "memory_spec",
    "memory_weights_digest",
]

S16_CHANNELS = 256
"""Channels of the s16 level: the last ones of the heads' input in both ``fuse`` layouts."""

MEMORY_ARRAYS = ("s16_neck", "memory")
"""The per-frame maps a memory cache stores beside the finer levels: ``(256, h, w)`` and ``(64, h, w)``."""


def memory_cache_levels(levels: Sequence[str], fuse: str) -> list[str]:
    """The maps a memory cache stores for heads reading ``levels`` with ``fuse``, finest first.

    ``fuse="pool"``: the finer levels of ``levels``, then :data:`MEMORY_ARRAYS`; ``"coarse_to_fine"``
    packs s4, s8 and s16: ``["s4", "s8", "s16_neck", "memory"]``.

    Raises:
        ValueError: If the heads do not read s16 (the level the memory conditions).
    """
    if fuse == "coarse_to_fine":
        return ["s4", "s8", *MEMORY_ARRAYS]
    if "s16" not in levels:
        raise ValueError(
            f"the policy memory conditions the s16 level, which levels={list(levels)} does not read: a memory "
            "cache needs 's16' in levels (or fuse='coarse_to_fine')"
        )
    return [lv for lv in ("s4", "s8") if lv in levels] + list(MEMORY_ARRAYS)


def frame_memory_maps(
    encoder: SAM2ImageEncoder,
    modules: MemoryModules,
    images: torch.Tensor,
    masks: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Every map a memory cache stores of ``M`` frames, from one trunk pass.

    Args:
        encoder: The frozen image encoder (the policy encoder's ``.encoder``).
        modules: Its memory modules (the policy encoder's ``.memory``).
        images: ``(M, H, W, 3)`` / ``(M, 3, H, W)`` uint8 or float frames (see ``SAM2ImageEncoder``).
        masks: ``(M, K, H', W')`` object masks in [0, 1] (``memory_source="objects"``), or ``None``.

    Returns:
        ``{"s4": (M, 32, S/4, S/4), "s8": (M, 64, S/8, S/8), "s16_neck": (M, 256, S/16, S/16),
        "memory": (M, 64, S/16, S/16)}``.
    """
    pyramid = encoder(images)
    memory = modules.memories(pyramid.s16_neck, masks if modules.config.memory_source == "objects" else None)
    return {"s4": pyramid.s4, "s8": pyramid.s8, "s16_neck": pyramid.s16_neck, "memory": memory}


def cached_features(maps: Mapping[str, torch.Tensor], levels: Sequence[str], fuse: str) -> torch.Tensor:
    """The cached features of frames: the heads' input with ``s16_neck`` in the s16 channels.

    Args:
        maps: ``{level: (M, C, h, w)}`` holding the finer levels read and ``"s16_neck"``.
        levels: The encoder's ``levels`` (``fuse="pool"``; must hold s16).
        fuse: The encoder's ``fuse``: ``"pool"`` or ``"coarse_to_fine"``.

    Returns:
        ``(M, *feature_shape)``.
    """
    stored = [lv for lv in memory_cache_levels(levels, fuse) if lv != "memory"]
    parts = [maps[lv] for lv in stored]
    return pack_pyramid(parts) if fuse == "coarse_to_fine" else fuse_levels(parts)


def memory_weights_digest(modules: MemoryModules) -> str:
    """``"sha256:..."`` of the memory encoder's weights (what a frame's stored memory depends on).

    Over every tensor of ``modules.memory_encoder.state_dict()`` in name order: its name, dtype,
    shape and values. The memory attention is applied in training, so it is not part of it.
    """
    digest = hashlib.sha256()
    for name, value in sorted(modules.memory_encoder.state_dict().items()):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return f"sha256:{digest.hexdigest()}"


def memory_spec(modules: MemoryModules) -> dict[str, Any]:
    """What a memory cache records of the memory options that change its values."""
    return {"memory_source": modules.config.memory_source, "memory_weights": memory_weights_digest(modules)}


def memory_cache_problems(
    spec: Mapping[str, Any],
    encoder: SAM2ImageEncoder,
    levels: Sequence[str],
    fuse: str,
    modules: MemoryModules | None = None,
) -> list[str]:
    """Each way a memory cache's recorded ``spec`` disagrees with an encoder, or ``[]``.

    Args:
        spec: The cache's attributes (the feature cache's, with ``memory`` from :func:`memory_spec`).
        encoder: The image encoder (a policy encoder's ``.encoder``): variant, image size, weights.
        levels: The levels its heads read (``levels``).
        fuse: Its ``fuse`` (``"pool"`` or ``"coarse_to_fine"``).
        modules: Its memory modules (a policy encoder's ``.memory``): ``memory_source`` and the
            memory weights are checked too; ``None`` checks the trunk's settings only.

    Returns:
        One ``"<setting> <value> in the cache vs <value> in the encoder"`` line per disagreement.
    """
    recorded = spec.get("memory")
    if not isinstance(recorded, Mapping):
        return ["memory: the cache holds no policy-memory features (it was built without --memory sam2)"]
    pairs = [
        ("variant", spec.get("variant"), encoder.variant.name),
        ("image_size", list(spec.get("image_size") or []), list(encoder.image_size)),
        ("weights", spec.get("weights"), encoder.weights_id),
    ]
    if modules is not None:
        pairs.append(("memory_source", recorded.get("memory_source"), modules.config.memory_source))
        pairs.append(("memory_weights", recorded.get("memory_weights"), memory_weights_digest(modules)))
    problems = [
        f"{name} {ours!r} in the cache vs {theirs!r} in the encoder" for name, ours, theirs in pairs if ours != theirs
    ]
    missing = [lv for lv in memory_cache_levels(levels, fuse) if lv not in (spec.get("levels") or [])]
    if missing:
        problems.append(
            f"levels {spec.get('levels')} in the cache lack {missing} (the encoder reads levels={list(levels)} "
            f"with fuse={fuse!r})"
        )
    return problems


def holds_cached_memory(enc: Any, obs_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether a call's banks are cached memories ``(..., F, 64, h, w)`` rather than frames ``(..., F, 3, H, W)``."""
    grid = tuple(enc.feature_shape[1:])
    for key in enc.rgb_keys:
        bank = obs_dict.get(memory_key(key))
        if isinstance(bank, torch.Tensor) and bank.dim() >= 4 and tuple(bank.shape[-2:]) == grid:
            if bank.shape[-3] == _memory_channels(enc.memory):
                return True
    return False


def _memory_channels(modules: MemoryModules) -> int:
    return int(modules.memory_encoder.projection.out_channels)


class CachedMemoryCall:
    """One forward call from cached memory features: memory attention and heads, no trunk pass.

    Args:
        enc: The ``MultiCameraEncoder`` with ``memory="sam2"``.
        obs_dict: Every camera's cached features ``(*lead, *feature_shape)`` and its bank's
            cached memories under ``memory_key(camera)`` ``(*lead, F, 64, h, w)``.
        lead: The batch dims; ``n`` their product.
        n: Rows.
        masks: ``{camera: (n, K, H, W)}`` the given object masks (for object tokens).

    Raises:
        ValueError: Naming the key, the shape seen and the one expected: a camera given as frames
            beside cached memories, or a bank of the wrong shape.
    """

    def __init__(
        self,
        enc: Any,
        obs_dict: Mapping[str, torch.Tensor],
        lead: tuple[int, ...],
        n: int,
        masks: Mapping[str, torch.Tensor],
    ) -> None:
        self.enc, self.masks = enc, masks
        memory_cache_levels(enc.levels, enc.fuse)  # the heads read s16 (the last channels): else one error
        c, h, w = enc.feature_shape
        bank = (enc.memory.bank_size, _memory_channels(enc.memory), h, w)
        self.inputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for key in enc.rgb_keys:
            x, past = obs_dict[key], obs_dict.get(memory_key(key))
            if tuple(x.shape) != (*lead, c, h, w):
                raise ValueError(
                    f"obs_dict[{key!r}] has shape {tuple(x.shape)}; with cached memories under {memory_key(key)!r} "
                    f"it must hold camera {key!r}'s cached features {(*lead, c, h, w)} (a memory cache's features)"
                )
            if not isinstance(past, torch.Tensor) or tuple(past.shape) != (*lead, *bank):
                got = tuple(past.shape) if isinstance(past, torch.Tensor) else type(past).__name__
                raise ValueError(
                    f"obs_dict[{memory_key(key)!r}] (cached memories of camera {key!r}'s bank) has shape {got}; "
                    f"expected {(*lead, *bank)}: the batch dims, the bank's {bank[0]} frames, then a memory (64, h, w)"
                )
            self.inputs[key] = (x.reshape(n, c, h, w), past.reshape(n, *bank))

    def outputs(self) -> dict[str, torch.Tensor]:
        """``{camera: (n, D_camera)}``: each row's s16 channels conditioned on its bank, then the heads."""
        enc, out = self.enc, {}
        for key, (x, bank) in self.inputs.items():
            s16 = enc.memory.condition(x[:, -S16_CHANNELS:], bank.to(x.dtype))
            out[key] = enc._head(key, torch.cat([x[:, :-S16_CHANNELS], s16], dim=1), self.masks.get(key))
        return out
