"""What a streaming SAM 2 session is given: checked frames, and prompts as points, box corners or a mask.

A frame must be ``(H, W, 3)`` uint8 of the stream's size (:func:`check_frame`). The rules a prompt
must follow are :mod:`sam2_encoder.prompts`' (checked here first); what this module adds is the
conversion transformers' video processor would do, and recording it in the session.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._hf import Sam2VideoInferenceSession, VideoSessionState
from .prompts import check_box, check_points, empty_prompt_message

__all__ = ["ArrayLike", "check_frame", "mask_input", "prompt_inputs", "record_inputs"]

ArrayLike = torch.Tensor | np.ndarray | Sequence
"""What frames, points, labels, boxes and masks may be given as."""


def check_frame(frame: ArrayLike, stream_size: tuple[int, int] | None) -> tuple[int, int]:
    """Validate a stream's frame and return its ``(H, W)``.

    Args:
        frame: ``(H, W, 3)`` uint8 frame (numpy or torch).
        stream_size: ``(H, W)`` of the stream's frames, fixed by its first frame; ``None`` before it.

    Raises:
        TypeError: For a frame that is not a ``(H, W, 3)`` uint8 array or tensor.
        ValueError: For an empty frame, or one of another size than the stream's.
    """
    if not isinstance(frame, torch.Tensor | np.ndarray):
        raise TypeError(f"frame must be a numpy array or torch tensor, got {type(frame).__name__}")
    shape = tuple(frame.shape)
    if len(shape) != 3 or shape[-1] != 3:
        hint = "; channels-first frames must be permuted to (H, W, 3)" if len(shape) == 3 and shape[0] == 3 else ""
        raise TypeError(f"frame must be (H, W, 3) with 3 colour channels last, got shape {shape}{hint}")
    dtype = frame.dtype
    if not (dtype == torch.uint8 if isinstance(frame, torch.Tensor) else dtype == np.uint8):
        raise TypeError(
            f"frame must be uint8 (0..255), got {dtype}; convert float frames in [0, 1] with "
            "(frame * 255).round() cast to uint8"
        )
    size = (int(shape[0]), int(shape[1]))
    if size[0] == 0 or size[1] == 0:
        raise ValueError(f"frame is empty: shape {shape} has no pixels (height and width must be at least 1)")
    if stream_size is not None and size != stream_size:
        raise ValueError(
            f"frame size changed mid-stream: got {size[0]}x{size[1]} (H x W), the stream started at "
            f"{stream_size[0]}x{stream_size[1]}; call reset() to start a new stream"
        )
    return size


def prompt_inputs(
    obj_id: int,
    frame_size: tuple[int, int],
    points: ArrayLike | None,
    labels: ArrayLike | None,
    box: ArrayLike | None,
    mask: ArrayLike | None,
    clear_old_points: bool,
    image_size: int,
    device: torch.device,
) -> dict[str, Any]:
    """Validate a prompt (:mod:`sam2_encoder.prompts`) and convert it to the session's inputs (encoder pixels)."""
    where = f"object {obj_id}"
    checked = check_points(points, labels, where, frame_size)
    if checked is None and box is None and mask is None:
        raise ValueError(f"{where}: {empty_prompt_message()} (or a mask=(H, W) bool)")
    if mask is not None and (checked is not None or box is not None):
        raise ValueError("a mask prompt cannot be combined with points or a box on the same frame")
    if mask is not None:
        return {"mask": mask_input(obj_id, mask, frame_size, image_size, device)}

    coords = []
    point_labels = []
    if box is not None:
        if not clear_old_points:
            raise ValueError("a box must come first: pass clear_old_points=True with a box prompt")
        coords.append(check_box(box, where, frame_size).reshape(2, 2))
        point_labels += [2, 3]  # SAM's top-left / bottom-right box corner labels
    if checked is not None:
        coords.append(checked[0])
        point_labels += checked[1]
    height, width = frame_size
    xy = torch.tensor(np.concatenate(coords), dtype=torch.float32)
    xy[:, 0] = xy[:, 0] * (image_size / width)
    xy[:, 1] = xy[:, 1] * (image_size / height)
    return {
        "point_coords": xy.view(1, 1, -1, 2),
        "point_labels": torch.tensor(point_labels, dtype=torch.int64).view(1, 1, -1),
        "clear_old": clear_old_points,
    }


def mask_input(
    obj_id: int, mask: ArrayLike, frame_size: tuple[int, int], image_size: int, device: torch.device
) -> torch.Tensor:
    """A frame-size mask as the session's ``(1, 1, S, S)`` float 0/1 mask input."""
    m = mask if isinstance(mask, torch.Tensor) else torch.from_numpy(np.asarray(mask))
    if m.dim() != 2 or tuple(m.shape) != frame_size:
        raise ValueError(f"mask must be (H, W) = {frame_size} like the frame, got shape {tuple(m.shape)}")
    if m.dtype != torch.bool:
        if m.is_floating_point() or m.is_complex():
            raise ValueError(f"mask must be bool (or 0/1 integers), got {m.dtype}")
        m = m != 0
    if not bool(m.any()):
        raise ValueError(
            f"empty prompt: the mask for object {obj_id} has no foreground pixels "
            f"(to stop tracking it, call remove_object({obj_id}))"
        )
    m = m.to(device, torch.float32)[None, None]
    if tuple(m.shape[-2:]) != (image_size, image_size):
        m = F.interpolate(m, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
        m = (m >= 0.5).float()
    return m


def record_inputs(
    session: Sam2VideoInferenceSession, state: VideoSessionState, obj_id: int, frame_idx: int, prompt: dict[str, Any]
) -> None:
    """Record a prompt in the session (what transformers' video processor does)."""
    obj_idx = session.obj_id_to_idx(obj_id)
    if "mask" in prompt:
        session.add_mask_inputs(obj_idx, frame_idx, prompt["mask"])
        session.remove_point_inputs(obj_idx, frame_idx)
    else:
        coords, labels = prompt["point_coords"], prompt["point_labels"]
        old = state.point_inputs(obj_idx, frame_idx)
        if not prompt["clear_old"] and old is not None:
            coords = torch.cat([old["point_coords"].to(coords.device), coords], dim=2)
            labels = torch.cat([old["point_labels"].to(labels.device), labels], dim=2)
        session.add_point_inputs(obj_idx, frame_idx, {"point_coords": coords, "point_labels": labels})
        session.remove_mask_inputs(obj_idx, frame_idx)
    state.set_new_inputs([obj_id])
