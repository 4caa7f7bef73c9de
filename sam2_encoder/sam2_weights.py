"""The weights of SAM 2's image encoder: built (seeded), loaded from a checkpoint or deferred, frozen, identified.

:class:`SAM2Weights` is the base of :class:`~sam2_encoder.image_encoder.SAM2ImageEncoder`: it owns
the modules that hold weights (``vision_encoder``, ``conv_s0``, ``conv_s1``, ``no_memory_embedding``;
state-dict keys as before) and every rule about where their values come from; the subclass encodes.
"""

from __future__ import annotations

import numbers
import os
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn
from transformers import Sam2VisionModel

from .checkpoints import check_state_dict, load_checkpoint, resolve_checkpoint
from .variants import Variant

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

__all__ = ["SAM2Weights", "build_seeded"]

T = TypeVar("T")


def build_seeded(factory: Callable[[], T], seed: int) -> T:
    """Call ``factory()`` with the global RNG seeded, leaving the caller's RNG state untouched.

    Raises:
        ValueError: For a seed that is not a whole number torch accepts (``-2**63 .. 2**64 - 1``).
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not -(2**63) <= seed < 2**64:
        raise ValueError(f"seed must be a whole number in [-2**63, 2**64), got {seed!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


class SAM2Weights(nn.Module):
    """SAM 2's image-encoder weights and where they come from (see the module docstring).

    Subclasses set ``variant``, ``image_size``, ``seed``, ``frozen``, ``checkpoint_path`` and
    ``_pending_checkpoint`` before calling :meth:`_build_weights`.
    """

    variant: Variant
    image_size: tuple[int, int]
    seed: int
    frozen: bool
    checkpoint_path: str | None
    _pending_checkpoint: str | None

    def _build_weights(
        self,
        checkpoint: str | os.PathLike[str] | None,
        download: bool,
        missing_checkpoint: str,
        model: nn.Module | None,
    ) -> None:
        """Build (or share from ``model``) the weight modules, then load ``checkpoint`` into them.

        ``checkpoint=None``: seeded random weights (a warning). A checkpoint that is not found is an
        error, or with ``missing_checkpoint="defer"`` placeholder weights until ``load_state_dict``.
        """
        seed = self.seed
        if model is not None:
            self.vision_encoder = model.vision_encoder
            self.conv_s0 = model.mask_decoder.conv_s0
            self.conv_s1 = model.mask_decoder.conv_s1
            self.no_memory_embedding = model.no_memory_embedding
        else:
            config = self.variant.vision_config(self.image_size)

            def build() -> None:
                self.vision_encoder = Sam2VisionModel(config)
                self.conv_s0 = nn.Conv2d(256, 32, kernel_size=1)
                self.conv_s1 = nn.Conv2d(256, 64, kernel_size=1)
                self.no_memory_embedding = nn.Parameter(torch.zeros(1, 1, 256))

            build_seeded(build, seed)
            if checkpoint is None:
                warnings.warn(
                    f"SAM2ImageEncoder({self.variant.name!r}) has no checkpoint: using seeded random weights "
                    f"(seed={seed}); pass checkpoint=... for trained features",
                    stacklevel=3,
                )
            else:
                try:
                    path = resolve_checkpoint(checkpoint, download_missing=download)
                except FileNotFoundError as e:
                    if missing_checkpoint == "error":
                        raise
                    self._pending_checkpoint = os.fspath(checkpoint)
                    warnings.warn(
                        f"{e}; {self.variant.name} gets placeholder weights that must be replaced by "
                        "load_state_dict (a saved policy) before encoding",
                        stacklevel=3,
                    )
                else:
                    self.load_sam2_weights(load_checkpoint(path, variant=self.variant), source=str(path))
                    self.checkpoint_path = str(path)

    _OWN_TO_HF = {"conv_s0.": "mask_decoder.conv_s0.", "conv_s1.": "mask_decoder.conv_s1."}

    def load_sam2_weights(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Load this encoder's weights from a full SAM 2 state dict in transformers' names.

        Args:
            state: A ``Sam2Model`` / ``Sam2VideoModel`` state dict (see ``load_checkpoint``).
            source: Named in error messages.

        Raises:
            CheckpointError: If keys are missing, unexpected or of the wrong shape for this variant.
        """
        own = self._weights_state_dict()
        hf_names = {self._hf_name(k): k for k in own}
        wanted = ("vision_encoder.", "mask_decoder.conv_s0.", "mask_decoder.conv_s1.", "no_memory_embedding")
        picked = {k: v for k, v in state.items() if k.startswith(wanted)}
        check_state_dict(picked, {h: own[k] for h, k in hf_names.items()}, self.variant, source=source)
        with torch.no_grad():
            for hf_key, own_key in hf_names.items():
                own[own_key].copy_(picked[hf_key])

    def _hf_name(self, key: str) -> str:
        for own, hf in self._OWN_TO_HF.items():
            if key.startswith(own):
                return hf + key[len(own) :]
        return key

    @property
    def pending_checkpoint(self) -> str | None:
        """The checkpoint not found at construction (``missing_checkpoint="defer"``), until loaded.

        ``None`` once a state dict with every encoder weight has replaced the placeholder weights
        (or when the checkpoint was found).
        """
        return self._pending_checkpoint

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self._pending_checkpoint is not None and all(prefix + k in state_dict for k in self._weights_state_dict()):
            self._pending_checkpoint = None
            self._weights_id = f"state_dict:{self.variant.name}"  # the file's hash is unknown here

    def _weights_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict(keep_vars=True).items() if not k.startswith("transforms.")}

    def _check_not_pending(self) -> None:
        if self._pending_checkpoint is not None:
            raise FileNotFoundError(
                f"{self.variant.name} was built without its checkpoint ({self._pending_checkpoint} was not found) "
                "and no saved state_dict was loaded since: pass an existing checkpoint= or load the saved policy"
            )

    # ----------------------------------------------------------------------------------------
    # freezing
    # ----------------------------------------------------------------------------------------

    def freeze(self) -> Self:
        """Freeze all weights and stay in eval mode (``.train()`` is then ignored)."""
        self.requires_grad_(False)
        self.frozen = True
        return super().train(False)

    def unfreeze(self) -> Self:
        """Make all weights trainable again."""
        self.requires_grad_(True)
        self.frozen = False
        return self

    def train(self, mode: bool = True) -> Self:
        """Set train mode, unless frozen (a frozen encoder stays in eval mode)."""
        return super().train(False if self.frozen else mode)

    @property
    def weights_id(self) -> str:
        """Identity of the loaded weights (:func:`~sam2_encoder.checkpoints.weights_identity`).

        ``sha256:<hex>`` of the checkpoint file (``sha256-shards:<hex>`` of a sharded folder),
        ``random:seed=N``, or ``state_dict:<variant>`` once a saved state dict replaced a deferred
        checkpoint. Feature caches record it, so features are never mixed across weights. Hashed
        on first use.
        """
        self._check_not_pending()
        if getattr(self, "_weights_id", None) is None:
            from .checkpoints import weights_identity

            self._weights_id = weights_identity(self.checkpoint_path, seed=self.seed)
        return self._weights_id
