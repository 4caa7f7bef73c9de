"""How ``sam2_diffusion`` reads a LeRobot batch: windows or one observation, masks given or tracked.

A training batch (and an offline call) holds ``(B, n_obs_steps, *shape)`` windows; a control step
(``select_action``, the async server's ``predict_action_chunk``) holds one observation
``(B, *shape)`` that the policy queues. Object masks come with every batch of an episode or with
none (the policy's tracker then makes them). Each rule is one clear error naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

__all__ = ["is_window", "masks_tracked", "stack_steps"]


def stack_steps(
    batch: Mapping[str, Tensor],
    keys: Sequence[str],
    mask_keys: Mapping[str, str],
    shapes: Mapping[str, Sequence[int]],
    n_obs_steps: int,
    training: bool = False,
) -> dict[str, Tensor]:
    """``{key: (B, n_obs_steps, *shape)}`` for every key of ``keys`` (observations, then mask keys), checked.

    Args:
        batch: The LeRobot batch (``(B, *shape)`` is accepted as one step when ``n_obs_steps == 1``).
        keys: The keys the denoiser's condition reads.
        mask_keys: ``{camera: mask feature key}`` of the object tokens.
        shapes: ``{key: feature shape}``.
        n_obs_steps: Steps per window.
        training: For the message of a missing mask key.

    Raises:
        KeyError: A key missing (a mask key with where the masks come from).
        ValueError: A key of the wrong shape.
    """
    for camera, key in mask_keys.items():
        if key not in batch:
            where = (
                "training reads them from the dataset: record (num_objects, H, W) masks per frame under that key"
                if training
                else "without masks the policy tracks objects itself, in select_action (a stream of frames)"
            )
            raise KeyError(
                f"sam2_diffusion: batch is missing {key!r}, the object masks of camera {camera!r}; {where}; "
                f"got keys {sorted(batch)}"
            )
    observations = [key for key in keys if key not in set(mask_keys.values())]
    obs = {}
    for key in keys:
        if key not in batch:
            raise KeyError(f"sam2_diffusion: batch is missing {key!r}; expected {observations}, got {sorted(batch)}")
        x, ndim = batch[key], len(shapes[key])
        if x.dim() == ndim + 1 and n_obs_steps == 1:
            x = x.unsqueeze(1)
        if x.dim() != ndim + 2 or x.shape[1] != n_obs_steps:
            raise ValueError(
                f"sam2_diffusion: batch[{key!r}] has shape {tuple(x.shape)}; expected (B, n_obs_steps="
                f"{n_obs_steps}, {', '.join(map(str, shapes[key]))})"
            )
        obs[key] = x
    return obs


def is_window(batch: Mapping[str, Tensor], keys: Sequence[str], shapes: Mapping[str, Sequence[int]]) -> bool:
    """Whether ``batch`` holds ``(B, To, ...)`` windows (offline) rather than one observation ``(B, ...)``."""
    key = next((key for key in keys if key in batch), None)
    return key is not None and batch[key].dim() == len(shapes[key]) + 2


def masks_tracked(batch: Mapping[str, Tensor], mask_keys: Mapping[str, str], what: str) -> bool:
    """Whether this step's object masks come from the policy's tracker (the batch has none of them).

    Raises:
        KeyError: The batch has some of the mask keys but not all.
    """
    given = [key for key in mask_keys.values() if key in batch]
    if given and len(given) != len(mask_keys):
        raise KeyError(
            f"sam2_diffusion.{what}: the batch has object masks {given} but not "
            f"{sorted(set(mask_keys.values()) - set(given))}; give all of them or none (the policy then "
            "tracks the objects itself)"
        )
    return bool(mask_keys) and not given
