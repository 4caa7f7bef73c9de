"""Policy memory with the object tracker: one trunk pass per new frame feeds both, the bank stores the tracked masks.

An inference call of an encoder with ``memory="sam2"``, object tokens and ``object_tracker=True``
whose obs dict has no masks is served by :class:`TrackedMemoryCall`:

1. the tracker (:class:`~sam2_encoder.obs_tracker.ObsTracker`) and the memory streams
   (:class:`~sam2_encoder.memory_streams.MemoryStreams`) each plan the call: the tracker lists the
   frames it has not tracked yet, the memory each stream's new newest frame;
2. the union of those rows goes through the ONE trunk pass (a memory row whose frame the tracker
   encodes too, e.g. a window of one repeated frame, reuses the tracker's row: each new frame once);
3. the tracker tracks its rows, giving every row's masks (``tracked_masks``, in the view);
4. the memory streams store each new frame's memory with the masks the tracker gave that frame
   (``memory_source="objects"``; the whole frame with ``"frame"``) and condition every row;
5. the heads get the memory-conditioned features and the tracked masks (object tokens).

This is the computation of the given-masks memory path (:class:`~sam2_encoder.memory_call.MemoryCall`)
with the tracker's masks in the obs dict: the two give equal outputs (bit-equal where the trunk
pass holds the same frames). Restarts: both streams restart at an episode start (a window of one
repeated new frame, with ``object_restart="auto"``) and on ``reset_objects()``; ``reset_memory()``
restarts the banks only, ``set_object_prompts`` the tracker only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .image_encoder import FeaturePyramid
from .memory_streams import MemoryPlan
from .obs_tracker import TrackPlan

__all__ = ["TrackedMemoryCall", "trunk_rows"]


def trunk_rows(track: TrackPlan, memory: MemoryPlan, n_obs_steps: int) -> tuple[list[int], list[int]]:
    """The rows of a tracked camera's trunk pass, and where each memory row's frame sits in them.

    Args:
        track: The tracker's plan (``encode``: the rows it tracks, first in the pass).
        memory: The memory streams' plan (``rows``: each stream's new newest frame).
        n_obs_steps: Rows per stream.

    Returns:
        ``(rows, memory_at)``: the call's rows to encode (the tracker's, then memory rows it does not
        encode), and for each row of ``memory.rows`` its position in ``rows``. A memory row the
        tracker copies from an earlier row of its window (``"same"``) uses that row's encoding.
    """
    rows = track.encode.tolist()
    memory_at = []
    for r in memory.rows.tolist():
        b, t = divmod(r, n_obs_steps)
        kind, index = track.sources[b][t]
        while kind == "same":  # equal to an earlier row of this window
            kind, index = track.sources[b][index]
        if kind == "old":  # tracked at an earlier call: the tracker keeps no pyramid of it
            rows.append(r)
            index = len(rows) - 1
        memory_at.append(index)  # "prompt" / "new": position `index` of track.encode, the start of rows
    return rows, memory_at


class TrackedMemoryCall:
    """One inference call with memory and the object tracker (see the module docstring).

    Args:
        enc: The ``MultiCameraEncoder`` (its views, trunk transforms, heads, ``obs_tracker`` and
            ``memory_streams``).
        frames: ``{camera: (n, 3, H, W)}`` every camera's frames as given (``input_range``).
        n: Rows of the call (``B * n_obs_steps``).

    Raises:
        ValueError: For rows that are not ``B * n_obs_steps``, a window the memory cannot take (see
            :meth:`MemoryStreams.plan <sam2_encoder.memory_streams.MemoryStreams.plan>`), or a
            restarting tracker stream without prompts.
    """

    def __init__(self, enc: Any, frames: Mapping[str, torch.Tensor], n: int) -> None:
        self.enc = enc
        self.frames = dict(frames)
        self.views = {key: enc._preprocess(key, x, None, finish=False)[0] for key, x in self.frames.items()}
        self.tracked = [key for key in self.frames if key in enc.object_masks]
        self.track_plan = enc.obs_tracker.plan({key: self.views[key] for key in self.tracked}, n)
        self.memory_plan = enc.memory_streams.plan(self.frames)
        rows, memory_at = trunk_rows(self.track_plan, self.memory_plan, enc.obs_tracker.n_obs_steps)
        device = self.memory_plan.rows.device
        self.rows = torch.tensor(rows, dtype=torch.long, device=device)
        self.memory_at = torch.tensor(memory_at, dtype=torch.long, device=device)

    def pixels(self) -> list[torch.Tensor]:
        """The trunk inputs, one per camera: a tracked camera's :func:`trunk_rows`, another's new memory rows."""
        finish = self.enc.encoder.transforms.finish
        rows = {key: self.rows if key in self.tracked else self.memory_plan.rows for key in self.views}
        return [finish(view)[rows[key].to(view.device)] for key, view in self.views.items()]

    def outputs(self, pyramids: Sequence[FeaturePyramid]) -> dict[str, torch.Tensor]:
        """``{camera: (n, D_camera)}`` from the pyramids of :meth:`pixels`; the masks go to ``tracked_masks``."""
        enc = self.enc
        pyramid = dict(zip(self.views, pyramids))
        track_at = torch.arange(len(self.track_plan.encode))
        tracker_pyramids = {k: pyramid[k].select(track_at) for k in self.tracked} if len(track_at) else {}
        tracked = {key: self.views[key] for key in self.tracked}
        _, masks = enc.obs_tracker.advance(self.track_plan, tracked, tracker_pyramids, enc.fuse_levels)
        enc.tracked_masks = masks
        objects = enc.config.policy_memory.memory_source == "objects"
        rows = self.memory_plan.rows
        memory_masks = {k: (masks[k][rows] if objects and k in masks else None) for k in self.views}
        memory_pyramids = {k: pyramid[k].select(self.memory_at) if k in masks else pyramid[k] for k in self.views}
        features = enc.memory_streams.advance(
            self.memory_plan, self.frames, memory_pyramids, memory_masks, enc.fuse_levels
        )
        return {
            key: enc._head(key, features[key], masks[key].to(features[key].dtype) if key in masks else None)
            for key in self.views
        }
