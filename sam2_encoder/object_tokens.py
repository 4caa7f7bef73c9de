"""Object tokens: pool SAM 2 features inside per-object masks.

Given ``K`` object masks per frame (from a dataset, or from :class:`StreamingPredictor` fed with
the policy's own encoder pass), each object becomes one token: the mask-weighted average of a
pyramid level's features.

* **Resizing, exactly.** A mask ``(H, W)`` is brought to the level's grid ``(h, w)`` by *area*:
  pixels are unit squares and a grid cell's weight is the mean of the mask over the cell's
  rectangle, counting pixels cut by the cell's border by their covered fraction. For a binary mask
  that is the fraction of the cell the object covers, for any ``H/h`` (not only integer ratios),
  and the weights of all cells sum to ``mask.sum() * h * w / (H * W)``. It is separable:
  ``A_h @ mask @ A_w.T`` with :func:`area_matrix` rows that sum to 1.
* **Pooling.** ``token_k = sum_ij a_kij * F_ij / sum_ij a_kij`` with ``a_k`` the resized mask.
* **Empty masks.** A mask without a positive pixel (an object absent or lost by the tracker)
  gives the zero token before projection; :class:`ObjectTokens` then emits either zeros
  (``absent="zero"``) or a learned "absent" embedding (``absent="learned"``), so the policy can
  tell "not there" from "there with small features".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

__all__ = ["ObjectTokens", "area_matrix", "check_masks", "masked_average", "object_mask_keys", "resize_masks_area"]


def object_mask_keys(
    spec: str | Mapping[str, str] | None,
    cameras: Mapping[str, Sequence[int]],
    other_keys: Iterable[str] = (),
) -> dict[str, str]:
    """Resolve the ``object_masks_key`` option into ``{camera: obs key}`` (cameras sorted).

    Args:
        spec: ``None`` (no object tokens), one key (allowed with one camera), or ``{camera: key}``.
        cameras: The encoder's cameras.
        other_keys: Other obs keys of the encoder (low-dim), which a mask key must not reuse.

    Raises:
        ValueError: For an unknown camera, a key used twice or shared with a camera / low-dim input,
            or one key with several cameras.
    """
    if spec is None:
        return {}
    if isinstance(spec, str):
        if not spec:
            raise ValueError("object_masks_key is an empty string; give the obs key of the object masks, or None")
        if len(cameras) != 1:
            raise ValueError(
                f"object_masks_key={spec!r} names one key but there are {len(cameras)} cameras {sorted(cameras)}; "
                "give {camera: masks key}"
            )
        spec = {next(iter(cameras)): spec}
    if not isinstance(spec, Mapping) or not spec:
        raise ValueError(f"object_masks_key must be a key or a non-empty {{camera: key}} mapping, got {spec!r}")
    unknown = sorted(set(spec) - set(cameras))
    if unknown:
        raise ValueError(f"object_masks_key names cameras {unknown} that are not among {sorted(cameras)}")
    bad = {camera: key for camera, key in spec.items() if not isinstance(key, str) or not key}
    if bad:
        raise ValueError(f"object_masks_key must map each camera to a non-empty obs key (a string), got {bad}")
    keys = list(spec.values())
    taken = sorted(set(keys) & (set(cameras) | set(other_keys)))
    if len(set(keys)) != len(keys) or taken:
        raise ValueError(
            f"object mask keys must be distinct from each other and from the camera / low-dim keys, got {dict(spec)}"
        )
    return {camera: str(spec[camera]) for camera in sorted(spec)}


def area_matrix(in_size: int, out_size: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The ``(out_size, in_size)`` area-resampling matrix along one axis.

    Row ``i`` averages the input over ``[i * in/out, (i + 1) * in/out)`` in pixel units: entry
    ``j`` is the overlap of pixel ``[j, j + 1)`` with that interval, divided by its length. Rows
    sum to 1. Computed in float64, then cast.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got in_size={in_size}, out_size={out_size}")
    edges = torch.arange(out_size + 1, dtype=torch.float64) * (in_size / out_size)
    lo, hi = edges[:-1, None], edges[1:, None]
    j = torch.arange(in_size, dtype=torch.float64)[None]
    overlap = (torch.minimum(hi, j + 1) - torch.maximum(lo, j)).clamp(min=0)
    return (overlap * (out_size / in_size)).to(dtype=dtype, device=device)


def resize_masks_area(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area-resize masks to a grid (see the module docstring).

    Args:
        masks: ``(N, K, H, W)`` float in [0, 1].
        size: ``(h, w)``.

    Returns:
        ``(N, K, h, w)``: the mean of each mask over each cell.
    """
    h_in, w_in = masks.shape[-2:]
    if (h_in, w_in) == tuple(size):
        return masks
    a_h = area_matrix(h_in, size[0], masks.dtype, masks.device)
    a_w = area_matrix(w_in, size[1], masks.dtype, masks.device)
    return torch.einsum("ih,nkhw,jw->nkij", a_h, masks, a_w)


def masked_average(features: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted average of a feature map under each of ``K`` weight maps.

    Args:
        features: ``(N, C, h, w)``.
        weights: ``(N, K, h, w)``, non-negative (resized masks).

    Returns:
        ``(tokens (N, K, C), present (N, K) bool)``: ``tokens[n, k] = sum(w * F) / sum(w)`` where
        ``sum(w) > 0``, exactly zero where the weights are all zero (``present`` False).
    """
    weights = weights.to(features.dtype)
    mass = weights.sum(dim=(-2, -1))  # (N, K)
    present = mass > 0
    total = torch.einsum("nkhw,nchw->nkc", weights, features)
    tokens = total / torch.where(present, mass, torch.ones_like(mass))[..., None]
    return tokens, present


def check_masks(masks: torch.Tensor, key: str, expected: tuple[int, ...]) -> torch.Tensor:
    """Validate object masks and return them as float.

    Args:
        masks: ``(N, K, H, W)`` bool, or float in [0, 1].
        key: The obs key, for messages.
        expected: ``(K, H, W)``.

    Returns:
        ``(N, K, H, W)`` float32 (or the input's float dtype).

    Raises:
        TypeError: For a tensor that is neither bool nor floating point.
        ValueError: For another shape, or float values outside [0, 1] / not finite.
    """
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"obs_dict[{key!r}] (object masks) must be a torch.Tensor, got {type(masks).__name__}")
    if masks.dim() != 1 + len(expected) or tuple(masks.shape[1:]) != tuple(expected):
        raise ValueError(
            f"obs_dict[{key!r}] (object masks) has shape {tuple(masks.shape)}; expected "
            f"(N, {', '.join(map(str, expected))}) = (N, num_objects, H, W) of the camera"
        )
    if masks.dtype == torch.bool:
        return masks.float()
    if not masks.is_floating_point():
        raise TypeError(f"obs_dict[{key!r}] (object masks) must be bool or float in [0, 1], got {masks.dtype}")
    if masks.numel() and not bool(((masks >= 0) & (masks <= 1)).all()):
        bad = masks[~((masks >= 0) & (masks <= 1))][0].item()
        raise ValueError(f"obs_dict[{key!r}] (object masks) must lie in [0, 1]; found {bad}")
    return masks


class ObjectTokens(nn.Module):
    """``K`` object tokens from a feature map and ``K`` masks.

    Args:
        in_channels: ``C`` of the pooled feature map.
        num_objects: ``K``.
        token_dim: Project each token to this size with a shared linear layer (``None``: keep ``C``).
        absent: ``"learned"``: an object with an empty mask gets a learned embedding;
            ``"zero"``: it gets zeros.

    Shapes:
        ``features (N, C, h, w), masks (N, K, H, W) float in [0, 1] -> (N, K * D)`` with ``D =
        token_dim or C``; tokens in object order.
    """

    def __init__(
        self, in_channels: int, num_objects: int, token_dim: int | None = None, absent: str = "learned"
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_objects", num_objects), ("token_dim", token_dim)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(
                    f"{name} must be a whole number >= 1{' or None' if name == 'token_dim' else ''}, got {value!r}"
                )
        if absent not in ("learned", "zero"):
            raise ValueError(f"absent must be 'learned' or 'zero', got {absent!r}")
        dim = token_dim or in_channels
        self.proj = nn.Linear(in_channels, dim) if token_dim else nn.Identity()
        if absent == "learned":
            self.absent = nn.Parameter(torch.randn(dim) * 0.02)
        else:
            self.register_parameter("absent", None)
        self.num_objects = num_objects
        self.token_dim = dim
        self.output_dim = num_objects * dim

    def forward(self, features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """``(N, C, h, w), (N, K, H, W) -> (N, K * D)``."""
        weights = resize_masks_area(masks.to(features.dtype), tuple(features.shape[-2:]))
        tokens, present = masked_average(features, weights)
        tokens = self.proj(tokens)
        fill = self.absent if self.absent is not None else tokens.new_zeros(())
        tokens = torch.where(present[..., None], tokens, fill.to(tokens.dtype))
        return tokens.flatten(1)
