"""Fine-tuning modes for the Hiera trunk (all weights, the last N blocks, or LoRA on attention), and LoRA itself.

:class:`LoRALinear` and :func:`wrap_lora` are also what puts LoRA on the policy memory's attention
(:class:`~sam2_encoder.policy_memory.MemoryModules`, ``memory_lora_rank``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import nn

from ._checks import whole_number

__all__ = ["FINETUNE_MODES", "LoRALinear", "apply_lora", "check_lora_alpha", "configure_finetuning", "wrap_lora"]

FINETUNE_MODES = ("all", "last_blocks", "lora")


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update ``(alpha / rank) * B @ A``.

    ``B`` starts at zero, so the wrapped layer initially computes exactly what ``base`` does.

    Args:
        base: The linear layer to adapt (kept, frozen).
        rank: Rank of the update.
        alpha: Scale numerator; the update is multiplied by ``alpha / rank``.

    Shapes:
        ``(..., in_features) -> (..., out_features)``.
    """

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0) -> None:
        super().__init__()
        rank = whole_number(rank, "LoRA rank (lora_rank)")
        alpha = check_lora_alpha(alpha)
        self.base = base.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scale = alpha / rank

    @property
    def in_features(self) -> int:
        """Input features of the wrapped layer."""
        return self.base.in_features

    @property
    def out_features(self) -> int:
        """Output features of the wrapped layer."""
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``base(x) + scale * x @ A^T @ B^T``."""
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale


def wrap_lora(module: nn.Module, names: Sequence[str], rank: int, alpha: float) -> list[nn.Parameter]:
    """Replace the ``nn.Linear`` children ``names`` of ``module`` by :class:`LoRALinear` (once).

    A child that is already a :class:`LoRALinear` is kept as it is.

    Args:
        module: The module holding the linear layers.
        names: Attribute names of the layers to adapt.
        rank: LoRA rank.
        alpha: LoRA alpha.

    Returns:
        The LoRA parameters of those layers (``lora_a``, ``lora_b`` of each, in ``names`` order).
    """
    params = []
    for name in names:
        layer = getattr(module, name)
        if not isinstance(layer, LoRALinear):
            layer = LoRALinear(layer, rank, alpha)
            setattr(module, name, layer)
        params += [layer.lora_a, layer.lora_b]
    return params


def apply_lora(blocks: nn.ModuleList, rank: int, alpha: float) -> list[nn.Parameter]:
    """Wrap every Hiera block's attention ``qkv`` and ``proj`` in :class:`LoRALinear`.

    Args:
        blocks: The trunk's ``Sam2MultiScaleBlock`` list.
        rank: LoRA rank.
        alpha: LoRA alpha.

    Returns:
        The new trainable LoRA parameters.
    """
    return [p for block in blocks for p in wrap_lora(block.attn, ("qkv", "proj"), rank, alpha)]


def configure_finetuning(
    encoder: nn.Module, mode: str, num_blocks: int = 2, rank: int = 8, alpha: float = 16.0
) -> None:
    """Make part of a ``SAM2ImageEncoder`` trainable.

    Args:
        encoder: The image encoder (initially frozen).
        mode: ``"all"``; ``"last_blocks"`` (the last ``num_blocks`` Hiera blocks, the neck and the
            high-res projections); or ``"lora"`` (LoRA on every block's attention ``qkv`` and
            ``proj``; everything else stays frozen).
        num_blocks: Blocks made trainable for ``"last_blocks"``.
        rank: LoRA rank.
        alpha: LoRA alpha.

    Raises:
        ValueError: For an unknown mode, a block count outside ``1..len(blocks)``, a LoRA rank that
            is not a whole number >= 1, or a LoRA alpha that is not a finite number > 0 (checked
            before anything is changed).
    """
    if mode not in FINETUNE_MODES:
        raise ValueError(f"unknown finetune mode {mode!r}; choose one of {', '.join(FINETUNE_MODES)}")
    blocks = encoder.vision_encoder.backbone.blocks
    # every option checked before the encoder is touched: a refused call changes nothing
    if mode == "lora":
        rank = whole_number(rank, "LoRA rank (lora_rank)")
        alpha = check_lora_alpha(alpha)
    if mode == "last_blocks":
        num_blocks = whole_number(num_blocks, "finetune_blocks")
        if num_blocks > len(blocks):
            raise ValueError(
                f"finetune_blocks must be in 1..{len(blocks)} for {encoder.variant.name}, got {num_blocks}"
            )
    encoder.unfreeze()
    if mode == "all":
        return
    encoder.requires_grad_(False)
    if mode == "lora":
        apply_lora(blocks, rank, alpha)
        return
    for block in blocks[len(blocks) - num_blocks :]:
        block.requires_grad_(True)
    for module in (encoder.vision_encoder.neck, encoder.conv_s0, encoder.conv_s1):
        module.requires_grad_(True)
    encoder.no_memory_embedding.requires_grad_(True)


def check_lora_alpha(value: object, option: str = "lora_alpha") -> float:
    """``value`` as a finite float > 0.

    Raises:
        ValueError: ``"LoRA alpha (<option>) must be a finite number > 0, got <value>"``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"LoRA alpha ({option}) must be a finite number > 0, got {value!r}")
    return float(value)
