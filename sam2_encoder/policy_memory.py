"""Policy memory from SAM 2's own memory bank (SAM2Act+-style): a camera's features conditioned on its past.

Diffusion Policy and LeRobot condition on the last ``n_obs_steps`` frames only. With ``memory="sam2"``
(:class:`~sam2_encoder.config.MemoryConfig`) each camera's stride-16 features are conditioned, before
the heads, on a bank of the episode's past frames, with SAM 2's own memory modules (SAM2Act+, Fang et
al., ICML 2025, does this over its own predictions)::

    frame -> trunk (the one pass) -> s16 neck ------------------------------+
                                        |                                  v
                                        +-> memory encoder (+ mask) -> bank -> memory attention -> s16 -> heads

* A frame's **memory** is SAM 2's memory encoder on its stride-16 neck features (before the
  no-memory embedding, as SAM 2's tracker encodes new memory) and a mask: the whole frame
  (``memory_source="frame"``) or the union of its object masks (``"objects"``), mapped to logits
  as SAM 2 does (``mask * 20 - 10``). It is a per-frame quantity: encoded once per frame.
* The **bank** of frame ``t`` (:func:`bank_frames`) is the episode's first frame
  (``memory_keep_first``, SAM 2's conditioning frame: what lets a cue at the start reach late frames)
  and frames ``t - k * memory_stride`` for ``k = 1 .. memory_frames``, each clamped to frame 0: at the
  episode start the bank is padded with the first frame, so its size is constant. Slot ``k`` gets
  SAM 2's temporal encoding of offset ``k``, the first frame that of the conditioning frame.
* **Memory attention** (SAM 2's 4 layers, RoPE, no object pointers) maps the current neck features
  and the bank to the new ``s16`` level, which replaces SAM 2's ``s16 + no-memory embedding``.

Training equals inference: in training the obs dict holds each row's bank frames under
:func:`memory_key` ``(N, F, 3, H, W)`` (a dataset wrapper gives them:
:class:`~sam2_encoder.diffusion_policy.memory_dataset.MemoryDataset`), and with
``memory_source="objects"`` their masks under ``memory_key(mask_key)``; at inference without
that key, per-stream banks (:class:`~sam2_encoder.memory_streams.MemoryStreams`) are fed one new
frame per call from the call's own trunk pass.

The weights (:class:`MemoryModules`) come from a full SAM 2 checkpoint (or seeded random weights),
frozen and in eval mode; they are in the encoder's state dict (``memory.*``), so a saved policy
reloads without the SAM 2 file. With ``memory_lora_rank > 0`` LoRA adapts the memory attention's
q/k/v/out projections (:data:`MEMORY_LORA_TARGETS`; ``B`` starts at zero, so the output at the start
is the frozen one); those LoRA weights are the only trainable ones, in the state dict under
``memory.memory_attention.*.lora_a`` / ``lora_b``. The memory encoder stays frozen (a frame's memory
is a fixed per-frame quantity) and the modules stay in eval mode: SAM 2's memory attention has
dropout (0.1 after each attention and in the MLP, and on the attention weights), which would make
a training pass differ from the streaming inference the policy runs.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .config import MemoryConfig
from .finetune import LoRALinear, wrap_lora
from .image_encoder import SAM2ImageEncoder
from .object_tracking import sam2_video_model
from .sam2_weights import build_seeded

__all__ = ["MEMORY_LORA_TARGETS", "MemoryModules", "bank_frames", "bank_slots", "memory_key"]

#: The linear layers of each memory attention layer that ``memory_lora_rank`` adapts: ``{attention:
#: projections}`` (transformers' ``Sam2VideoMemoryAttentionLayer`` names).
MEMORY_LORA_TARGETS = {
    "self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "cross_attn_image": ("q_proj", "k_proj", "v_proj", "o_proj"),
}


def memory_key(key: str) -> str:
    """The obs key of the bank frames of camera (or mask key) ``key`` in training: ``f"{key}_memory"``."""
    return f"{key}_memory"


def bank_frames(t: int, config: MemoryConfig) -> list[int]:
    """Episode frame indices of frame ``t``'s bank, in slot order (the first frame first).

    Args:
        t: The frame's index in its episode (0 = the first frame).
        config: The memory options.

    Returns:
        ``[0] * keep_first + [max(t - k * memory_stride, 0) for k in 1 .. memory_frames]``.
    """
    first = [0] if config.memory_keep_first else []
    return first + [max(t - k * config.memory_stride, 0) for k in range(1, config.memory_frames + 1)]


def bank_slots(config: MemoryConfig, num_maskmem: int = 7) -> list[int]:
    """Index of each bank slot in SAM 2's temporal encodings (transformers' order).

    The first frame is SAM 2's conditioning frame (offset 0: the last encoding), past frame ``k``
    has offset ``k`` (encoding ``k - 1``).
    """
    first = [num_maskmem - 1] if config.memory_keep_first else []
    return first + list(range(config.memory_frames))


class MemoryModules(nn.Module):
    """SAM 2's memory encoder, memory attention and temporal encodings, for one encoder.

    Built from transformers' ``Sam2VideoModel`` for the encoder's variant and (square) size, loaded
    from ``checkpoint`` (a full SAM 2 checkpoint), keeping only the memory parts. Frozen, in eval
    mode through ``train()`` (SAM 2's memory attention has dropout). With
    ``config.memory_lora_rank > 0`` the memory attention's :data:`MEMORY_LORA_TARGETS` are
    :class:`~sam2_encoder.finetune.LoRALinear` (``A`` drawn with ``seed``, ``B`` zero), whose LoRA
    weights alone train (:meth:`lora_parameters`).

    Args:
        encoder: The policy's image encoder (its size; its checkpoint deferral is honoured).
        config: The memory options (bank layout, mask source).
        checkpoint: Full SAM 2 weights, or ``None`` for seeded random weights. Not read while the
            encoder's checkpoint is deferred (``pending_checkpoint``: the host's state dict brings it).
        seed: Seed of the random initialisation.
        download: Allow downloading ``checkpoint``.

    Raises:
        ValueError: If the encoder is not square.
        CheckpointError: If the checkpoint lacks the memory weights or has other shapes.
    """

    def __init__(
        self,
        encoder: SAM2ImageEncoder,
        config: MemoryConfig,
        checkpoint: str | os.PathLike[str] | None = None,
        seed: int = 0,
        download: bool = False,
    ) -> None:
        super().__init__()
        height, width = encoder.image_size
        if height != width:
            raise ValueError(f"SAM 2's memory needs a square image size, the encoder has {height}x{width}")
        model = sam2_video_model(encoder, checkpoint, seed, download, part="policy memory")
        self.memory_encoder = model.memory_encoder
        self.memory_attention = model.memory_attention
        self.temporal_encoding = model.memory_temporal_positional_encoding  # (num_maskmem, 1, 1, 64)
        self.position_encoding = model.vision_encoder.neck.position_encoding  # the s16 sine encoding (no weights)
        self.mask_scale = float(model.config.sigmoid_scale_for_mem_enc)
        self.mask_bias = float(model.config.sigmoid_bias_for_mem_enc)
        self.register_buffer(
            "slots", torch.tensor(bank_slots(config, model.config.num_maskmem), dtype=torch.long), persistent=False
        )
        self.config = config
        self.image_size = height
        self.requires_grad_(False)
        super().train(False)
        if config.memory_lora_rank:
            build_seeded(lambda: self._add_lora(config.memory_lora_rank, config.memory_lora_alpha), seed)

    def _add_lora(self, rank: int, alpha: float) -> None:
        for layer in self.memory_attention.layers:
            for attention, names in MEMORY_LORA_TARGETS.items():
                wrap_lora(getattr(layer, attention), names, rank, alpha)

    def lora_parameters(self) -> list[nn.Parameter]:
        """The memory attention's LoRA weights (``lora_a``, ``lora_b`` per layer), ``[]`` when frozen."""
        return [p for m in self.memory_attention.modules() if isinstance(m, LoRALinear) for p in (m.lora_a, m.lora_b)]

    @property
    def bank_size(self) -> int:
        """Frames per bank ``F``."""
        return len(self.slots)

    def train(self, mode: bool = True) -> MemoryModules:
        """Stay in eval mode (no dropout), with or without LoRA: training computes what inference does."""
        return super().train(False)

    def memories(self, s16_neck: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """SAM 2 memories of ``M`` frames.

        Args:
            s16_neck: ``(M, 256, h, w)`` stride-16 neck features (``FeaturePyramid.s16_neck``).
            masks: ``(M, K, H', W')`` object masks in [0, 1] (their union is stored), or ``None``
                for the whole frame.

        Returns:
            ``(M, 64, h, w)``.
        """
        size = self.image_size
        if masks is None:
            mask = s16_neck.new_ones((len(s16_neck), 1, size, size))
        else:
            mask = masks.to(s16_neck.dtype).amax(dim=1, keepdim=True)
            if mask.shape[-2:] != (size, size):
                mask = F.interpolate(mask, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        features, _ = self.memory_encoder(s16_neck, mask * self.mask_scale + self.mask_bias)
        return features

    def condition(self, s16_neck: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        """The current features conditioned on their banks through SAM 2's memory attention.

        Args:
            s16_neck: ``(N, 256, h, w)`` the current frames' neck features.
            bank: ``(N, F, 64, h, w)`` each row's bank (:meth:`memories` of its bank frames, slot order).

        Returns:
            ``(N, 256, h, w)``: the new ``s16`` level.
        """
        n, channels, h, w = s16_neck.shape
        dtype, device = s16_neck.dtype, s16_neck.device
        current = s16_neck.flatten(2).permute(2, 0, 1)  # (hw, N, 256)
        pos = self.position_encoding(torch.Size((1, channels, h, w)), device, dtype).to(dtype)
        pos = pos.flatten(2).permute(2, 0, 1).expand(-1, n, -1)
        slots, dim = bank.shape[1], bank.shape[2]
        spatial = self.memory_encoder.position_encoding(torch.Size((1, dim, h, w)), device, dtype).to(dtype)
        mem_pos = spatial + self.temporal_encoding[self.slots].to(dtype).reshape(slots, dim, 1, 1)  # (F, 64, h, w)
        mem_pos = mem_pos.permute(0, 2, 3, 1).reshape(-1, 1, dim).expand(-1, n, -1)  # (F*hw, N, 64)
        memory = bank.permute(1, 3, 4, 0, 2).reshape(-1, n, dim)  # (F*hw, N, 64), slot-major like SAM 2
        out = self.memory_attention(
            current_vision_features=current,
            memory=memory,
            current_vision_position_embeddings=pos,
            memory_posision_embeddings=mem_pos,
            num_object_pointer_tokens=0,
        )  # (1, N, hw, 256)
        return out.reshape(n, h * w, channels).transpose(1, 2).reshape(n, channels, h, w)
