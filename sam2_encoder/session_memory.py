"""What a streaming SAM 2 session keeps: the pruning that bounds it, and its size in bytes.

Used by :class:`~sam2_encoder.streaming.StreamingPredictor` after every frame; the rules are SAM 2's
own reads (memory frames, object pointers, conditioning frames), so pruning changes no output.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from ._hf import Sam2VideoInferenceSession, VideoSessionState

__all__ = ["prune_session", "session_nbytes"]


def prune_session(
    state: VideoSessionState, frame_idx: int, num_maskmem: int, max_object_pointers: int, max_cond_frames: int
) -> None:
    """Drop every piece of session state SAM 2 can no longer read once ``frame_idx`` is done.

    Frame ``t`` reads (``t`` = the next frame, or ``frame_idx`` itself for a correction
    click): memory features of the selected conditioning frames and of non-conditioning
    frames ``t-1 .. t-(num_maskmem-1)``; object pointers of every conditioning frame up to
    ``t`` and of non-conditioning frames ``t-1 .. t-(max_object_pointers-1)``; masks, inputs and
    "tracked" flags of frame ``t`` only (when it is re-run). Everything older goes.

    Args:
        state: The session's state (``_hf.VideoSessionState``).
        frame_idx: The frame just processed.
        num_maskmem: The model's memory frames (``num_maskmem``).
        max_object_pointers: ``max_object_pointers_in_encoder``.
        max_cond_frames: ``max_cond_frame_num`` (``<= 0``: every conditioning frame).
    """
    oldest_pointer = frame_idx - (max_object_pointers - 1)
    oldest_memory = frame_idx - (num_maskmem - 1)
    state.forget_processed_frames()
    for obj_idx, outputs in state.outputs().items():
        non_cond = outputs["non_cond_frame_outputs"]
        for t in [t for t in non_cond if t < oldest_pointer]:
            del non_cond[t]
        cond = outputs["cond_frame_outputs"]
        if max_cond_frames > 0:
            selected = set(sorted((t for t in cond if t <= frame_idx), reverse=True)[:max_cond_frames])
        else:
            selected = set(cond)
        for table in (non_cond, cond):
            for t, entry in table.items():
                entry.pop("high_res_masks", None)  # only read within the frame's own step
                if t != frame_idx:
                    entry.pop("pred_masks", None)  # re-read only when the same frame is re-run
                # memories outside the recent window are read only from selected conditioning frames
                if t < oldest_memory and (table is non_cond or t not in selected):
                    entry.pop("maskmem_features", None)
                    entry.pop("maskmem_pos_enc", None)
        for table in state.per_frame_tables(obj_idx):
            for t in [t for t in table if t != frame_idx]:
                del table[t]


def _tensors(value: Any, seen: set[int]) -> Iterator[torch.Tensor]:
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item, seen)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _tensors(item, seen)
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        for item in vars(value).values():
            yield from _tensors(item, seen)


def session_nbytes(session: Sam2VideoInferenceSession) -> int:
    """Bytes of tensor storage a transformers video inference session holds.

    Walks every attribute of the session (frames, vision-feature cache, prompts, per-object
    outputs) and counts each underlying storage once, so views into one batched tensor count as
    the memory they keep alive.
    """
    total = 0
    storages: set[tuple[str, int]] = set()
    for tensor in _tensors(session, set()):
        storage = tensor.untyped_storage()
        key = (str(tensor.device), storage.data_ptr())
        if key not in storages and storage.nbytes():
            storages.add(key)
            total += storage.nbytes()
    return total
