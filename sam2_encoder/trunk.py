"""The SAM 2 trunk an observation encoder shares between its cameras: built from the config, and its optimizer groups.

:func:`build_trunk` makes the :class:`~sam2_encoder.image_encoder.SAM2ImageEncoder` of an
:class:`~sam2_encoder.config.EncoderConfig` (its backbone and view parts), frozen or prepared for
fine-tuning (its fine-tuning part); :func:`optimizer_groups` gives the heads and the trainable
trunk weights their own learning rates.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .config import EncoderConfig
from .finetune import configure_finetuning
from .image_encoder import SAM2ImageEncoder

__all__ = ["build_trunk", "optimizer_groups"]


def build_trunk(config: EncoderConfig) -> SAM2ImageEncoder:
    """The SAM 2 image encoder of ``config``: its variant, weights and preprocessing, frozen unless fine-tuned.

    A missing checkpoint file is deferred (``pending_checkpoint``): a host's reload brings the
    weights in its own state dict.

    Args:
        config: The encoder's options.

    Returns:
        The trunk; with ``freeze=False`` its trainable weights follow ``finetune`` (``all`` by default).
    """
    backbone, view, tune = config.backbone, config.view, config.finetuning
    trunk = SAM2ImageEncoder(
        backbone.variant,
        checkpoint=backbone.checkpoint,
        image_size=backbone.image_size,
        freeze=True,
        fast_attention=backbone.fast_attention,
        channel_order=view.channel_order,
        input_range=view.input_range,
        seed=backbone.seed,
        download=backbone.download,
        precision=backbone.precision,
        backend=backbone.backend,
        missing_checkpoint="defer",
    )
    if not tune.freeze:
        configure_finetuning(trunk, tune.finetune or "all", tune.finetune_blocks, tune.lora_rank, tune.lora_alpha)
    return trunk


def optimizer_groups(
    heads: nn.Module, trunk: nn.Module, lr: float, weight_decay: float, trunk_lr_scale: float
) -> list[dict[str, Any]]:
    """Optimizer groups: ``heads`` at ``lr``, the trainable weights of ``trunk`` at ``lr * trunk_lr_scale``.

    Args:
        heads: The readout heads (their trainable weights form the ``"heads"`` group).
        trunk: The SAM 2 trunk (the ``"trunk"`` group, omitted when nothing in it trains).
        lr: Base learning rate.
        weight_decay: Weight decay of both groups.
        trunk_lr_scale: The trunk's learning-rate multiplier.

    Returns:
        A list for ``torch.optim.AdamW(...)``.
    """
    trained_heads = [p for p in heads.parameters() if p.requires_grad]
    groups = [{"params": trained_heads, "lr": lr, "weight_decay": weight_decay, "name": "heads"}]
    trainable = [p for p in trunk.parameters() if p.requires_grad]
    if trainable:
        groups.append({"params": trainable, "lr": lr * trunk_lr_scale, "weight_decay": weight_decay, "name": "trunk"})
    return groups
