"""The eight released SAM 2 / SAM 2.1 models and their transformers configs.

Architecture numbers follow Meta's published YAML configs (``sam2/configs/sam2*/...``);
download locations follow Meta's ``checkpoints/download_ckpts.sh``. A wrong number here
is caught by the Meta parity test (``tests/test_meta_parity.py``).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from dataclasses import dataclass

from transformers import (
    Sam2Config,
    Sam2HieraDetConfig,
    Sam2VideoConfig,
    Sam2VisionConfig,
)

__all__ = [
    "VARIANTS",
    "Variant",
    "check_image_size",
    "get_variant",
    "variant_names",
]

_META_BASE_URL = {
    "sam2": "https://dl.fbaipublicfiles.com/segment_anything_2/072824",
    "sam2.1": "https://dl.fbaipublicfiles.com/segment_anything_2/092824",
}
_HF_SIZE_NAME = {"tiny": "tiny", "small": "small", "base_plus": "base-plus", "large": "large"}


@dataclass(frozen=True)
class Variant:
    """One released SAM 2 model: Hiera trunk numbers plus where its weights live.

    Attributes:
        family: ``"sam2"`` (July 2024) or ``"sam2.1"`` (September 2024).
        size: ``"tiny"``, ``"small"``, ``"base_plus"`` or ``"large"``.
        embed_dim: Channels of the first Hiera stage (doubled at each later stage).
        num_heads: Attention heads of the first stage (doubled at each later stage).
        stages: Hiera blocks per stage.
        global_att_blocks: Indices of blocks with global (not windowed) attention.
        window_spec: Attention window size per stage.
        window_pos_embed_bkg: Spatial size of the interpolated background position embedding.
        sha256: Published sha256 of Meta's ``.pt`` file, or ``None`` where none is published.
    """

    family: str
    size: str
    embed_dim: int
    num_heads: int
    stages: tuple[int, int, int, int]
    global_att_blocks: tuple[int, ...]
    window_spec: tuple[int, int, int, int] = (8, 4, 14, 7)
    window_pos_embed_bkg: tuple[int, int] = (7, 7)
    sha256: str | None = None

    @property
    def name(self) -> str:
        """Canonical name, equal to Meta's checkpoint file stem (``sam2.1_hiera_tiny``)."""
        return f"{self.family}_hiera_{self.size}"

    @property
    def filename(self) -> str:
        """Meta's checkpoint file name."""
        return f"{self.name}.pt"

    @property
    def url(self) -> str:
        """Meta's public download URL for the ``.pt`` checkpoint."""
        return f"{_META_BASE_URL[self.family]}/{self.filename}"

    @property
    def hub_id(self) -> str:
        """Hugging Face hub id of the converted weights (``facebook/sam2.1-hiera-tiny``)."""
        return f"facebook/{self.family}-hiera-{_HF_SIZE_NAME[self.size]}"

    @property
    def channels(self) -> list[int]:
        """Channels of the four Hiera stages, finest first."""
        return [self.embed_dim * 2**i for i in range(4)]

    def backbone_config(self, image_size: int | tuple[int, int] = 1024) -> Sam2HieraDetConfig:
        """The transformers Hiera config for this variant.

        Args:
            image_size: Input side (or ``(H, W)``), each a multiple of 32.

        Returns:
            A ``Sam2HieraDetConfig``.
        """
        h, w = check_image_size(image_size)
        return Sam2HieraDetConfig(
            hidden_size=self.embed_dim,
            num_attention_heads=self.num_heads,
            image_size=[h, w],
            blocks_per_stage=list(self.stages),
            embed_dim_per_stage=self.channels,
            num_attention_heads_per_stage=[self.num_heads * 2**i for i in range(4)],
            window_size_per_stage=list(self.window_spec),
            global_attention_blocks=list(self.global_att_blocks),
            window_positional_embedding_background_size=list(self.window_pos_embed_bkg),
        )

    def vision_config(self, image_size: int | tuple[int, int] = 1024) -> Sam2VisionConfig:
        """The transformers vision (Hiera + FPN neck) config for this variant.

        Args:
            image_size: Input side (or ``(H, W)``), each a multiple of 32.

        Returns:
            A ``Sam2VisionConfig`` whose feature sizes match ``image_size``.
        """
        h, w = check_image_size(image_size)
        return Sam2VisionConfig(
            backbone_config=self.backbone_config((h, w)),
            backbone_channel_list=self.channels[::-1],
            backbone_feature_sizes=[[h // s, w // s] for s in (4, 8, 16)],
            fpn_hidden_size=256,
            fpn_top_down_levels=[2, 3],
            num_feature_levels=3,
            fpn_interpolation_mode="nearest",  # Meta's configs; read by our neck
            fuse_type="sum",
        )

    def image_model_config(self, image_size: int = 1024) -> Sam2Config:
        """Config of transformers' image-only ``Sam2Model`` (square ``image_size``).

        Raises:
            ValueError: For an invalid or non-square ``image_size``.
        """
        size = _square(image_size, "the image model config")
        return Sam2Config(
            vision_config=self.vision_config(size),
            prompt_encoder_config={"image_size": size, "patch_size": 16},
        )

    def video_model_config(self, image_size: int = 1024) -> Sam2VideoConfig:
        """Config of transformers' ``Sam2VideoModel`` (square ``image_size``).

        SAM 2.0 checkpoints lack the occlusion spatial embedding and the temporal projection of
        object pointers, so those are disabled for the ``sam2`` family.

        Raises:
            ValueError: For an invalid or non-square ``image_size``.
        """
        size = _square(image_size, "the video model")
        is_21 = self.family == "sam2.1"
        return Sam2VideoConfig(
            vision_config=self.vision_config(size),
            prompt_encoder_config={"image_size": size, "patch_size": 16},
            image_size=size,
            memory_attention_rope_feat_sizes=[size // 16, size // 16],
            enable_occlusion_spatial_embedding=is_21,
            enable_temporal_pos_encoding_for_object_pointers=is_21,
        )


def _variants() -> dict[str, Variant]:
    arch = {
        "tiny": dict(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9)),
        "small": dict(embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13)),
        "base_plus": dict(
            embed_dim=112,
            num_heads=2,
            stages=(2, 3, 16, 3),
            global_att_blocks=(12, 16, 20),
            window_pos_embed_bkg=(14, 14),
        ),
        "large": dict(
            embed_dim=144,
            num_heads=2,
            stages=(2, 6, 36, 4),
            global_att_blocks=(23, 33, 43),
            window_spec=(8, 4, 16, 8),
        ),
    }
    out = {}
    for family in ("sam2", "sam2.1"):
        for size, spec in arch.items():
            v = Variant(family=family, size=size, sha256=_SHA256.get(f"{family}_hiera_{size}"), **spec)
            out[v.name] = v
    return out


# Published sha256 of Meta's checkpoint files (see checkpoints/download_ckpts.sh).
_SHA256: dict[str, str] = {}

VARIANTS: dict[str, Variant] = _variants()

_SHORT = {"t": "tiny", "s": "small", "b+": "base_plus", "b": "base_plus", "base-plus": "base_plus", "l": "large"}


def variant_names() -> list[str]:
    """Canonical names of the eight released models."""
    return list(VARIANTS)


def get_variant(name: str | Variant) -> Variant:
    """Look a variant up by name.

    Accepts the canonical name (``sam2.1_hiera_tiny``), a hub id or its tail
    (``facebook/sam2.1-hiera-tiny``), Meta's config stem (``sam2.1_hiera_t``) or a
    checkpoint file name (``sam2.1_hiera_tiny.pt``).

    Args:
        name: The name to resolve, or a ``Variant`` (returned as is).

    Returns:
        The matching ``Variant``.

    Raises:
        ValueError: If the name matches no released model; the message lists the known ones.
    """
    if isinstance(name, Variant):
        return name
    key = str(name).strip().lower().removeprefix("facebook/").removesuffix(".pt").removesuffix(".yaml")
    if key.startswith("sam2") and "hiera" in key:
        family, _, size = key.replace("-hiera-", "_hiera_").partition("_hiera_")
        size = _SHORT.get(size, size).replace("-", "_")
        canonical = f"{family}_hiera_{size}"
        if canonical in VARIANTS:
            return VARIANTS[canonical]
    raise ValueError(f"unknown SAM 2 variant {name!r}; known variants: {', '.join(VARIANTS)}")


def _as_side(value: object) -> int | None:
    """An int side from an int or a numpy integer (never a bool or a float); else ``None``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def check_image_size(image_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """Validate an encoder input size.

    Args:
        image_size: A side length, or ``(H, W)``: Python or numpy integers (floats, bools and
            strings are refused, not rounded).

    Returns:
        ``(H, W)`` as Python ints.

    Raises:
        ValueError: If ``image_size`` is not an integer or a pair of integers, or a side is not a
            positive multiple of 32 (Hiera tiles an 8x8 window position embedding over the
            stride-4 grid, so other sizes fail inside the trunk).
    """
    given = image_size
    if getattr(image_size, "ndim", None) == 0:  # a 0-d numpy array or tensor
        image_size = image_size.item()  # type: ignore[union-attr]
    if isinstance(image_size, str | bytes) or not isinstance(image_size, numbers.Number | Iterable):
        raise ValueError(f"image_size must be an int or (H, W) ints, got {given!r}")
    hw = (image_size, image_size) if isinstance(image_size, numbers.Number) else tuple(image_size)
    sides = [_as_side(s.item() if getattr(s, "ndim", None) == 0 else s) for s in hw]
    if len(sides) != 2 or None in sides:
        raise ValueError(f"image_size must be an int or (H, W) ints, got {given!r}")
    bad = [s for s in sides if s <= 0 or s % 32]
    if bad:
        raise ValueError(
            f"image_size must be a positive multiple of 32 on each side, got {given!r}; "
            f"nearest valid sizes: {', '.join(str(max(32, 32 * round(s / 32))) for s in sides)}"
        )
    return sides[0], sides[1]


def _square(image_size: int | tuple[int, int], what: str) -> int:
    height, width = check_image_size(image_size)
    if height != width:
        raise ValueError(f"{what} takes a square image_size, got {image_size!r}")
    return height
