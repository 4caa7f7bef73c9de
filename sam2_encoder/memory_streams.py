"""The policy memory at inference: one bank per stream, fed one new frame per call from the call's trunk pass.

A call holds ``n = B * n_obs_steps`` rows, ``b * n_obs_steps + t`` (Diffusion Policy's layout; ``t =
n_obs_steps - 1`` the newest frame). Each call is one control step: its newest frame is the stream's
next frame, whose memory is encoded once and kept; every row is conditioned on the bank of its own
frame (:func:`~sam2_encoder.policy_memory.bank_frames`), the same bank a dataset row of that frame
gets in training. The older rows of a window are frames the stream saw in earlier calls: their
conditioned maps are kept and reused, so each call encodes one frame per stream and camera.

A stream starts over (frame 0) at its first call, after :meth:`MemoryStreams.end` (``reset_memory``,
``reset_objects``, ``train()`` / ``eval()``), when the number of streams changes, and when a window is
one repeated frame other than the stream's last frame (an episode start in both hosts). A window whose
older rows are not the stream's previous frames is refused: the bank needs every frame, in order.

With the object tracker and no masks in the obs dict, the call's plan is matched with the tracker's
(:mod:`~sam2_encoder.memory_tracking`): the same trunk pass serves both, and a new frame's memory
stores the masks the tracker gives it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from .config import MemoryConfig
from .image_encoder import FeaturePyramid
from .policy_memory import MemoryModules, bank_frames

__all__ = ["MemoryPlan", "MemoryStreams"]


class MemoryPlan:
    """What a call needs encoded: ``rows`` ``(M,)`` (each a stream's new newest frame), and each row's frame index.

    ``index[b][t]``: the episode frame index of row ``b * n_obs_steps + t``; ``new[b]``: whether stream
    ``b``'s newest frame is new (then it is encoded: ``rows`` in stream order).
    """

    def __init__(self, rows: torch.Tensor, index: list[list[int]], new: list[bool]) -> None:
        self.rows = rows
        self.index = index
        self.new = new


class _Stream:
    """One stream's frames seen (the window's last frames), their memories and conditioned maps."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every frame: the next frame is frame 0."""
        self.count = 0  # frames seen
        self.frames: dict[int, dict[str, torch.Tensor]] = {}  # recent frame index -> {camera: (3, H, W)}
        self.memories: dict[int, dict[str, torch.Tensor]] = {}  # frame index -> {camera: (64, h, w)}
        self.maps: dict[int, dict[str, torch.Tensor]] = {}  # recent frame index -> {camera: heads' input}


class MemoryStreams:
    """Per-stream memory banks for a :class:`MemoryModules`, at inference.

    Args:
        modules: The memory weights.
        config: The memory options (bank layout).
        n_obs_steps: Rows per stream in a call (``None``: 1).
    """

    def __init__(self, modules: MemoryModules, config: MemoryConfig, n_obs_steps: int | None) -> None:
        self.modules = modules
        self.config = config
        self.n_obs_steps = n_obs_steps or 1
        self.streams: list[_Stream] = []
        self.step: bool | None = None  # the next call's step (see MultiCameraEncoder.memory_step)
        # frames whose memory a later frame may still need: the first, and the last stride * frames + window
        self.keep = config.memory_stride * config.memory_frames + self.n_obs_steps

    def end(self) -> None:
        """End every stream: the next call starts each at frame 0."""
        self.streams = []

    def detached(self) -> MemoryStreams:
        """A copy with no streams (for pickling and deep copies: banks belong to one run)."""
        copy = MemoryStreams.__new__(MemoryStreams)
        copy.__dict__.update(self.__dict__)
        copy.streams = []
        return copy

    def plan(self, frames: Mapping[str, torch.Tensor]) -> MemoryPlan:
        """Match a call's windows to the streams: which newest frames are new, each row's frame index.

        A stream's newest frame is new unless the window is the stream's last window again, or the
        host said so for this call (:attr:`step`, consumed here).

        Args:
            frames: ``{camera: (n, 3, H, W)}`` the call's frames as given (compared exactly).

        Raises:
            ValueError: For rows that are not ``B * n_obs_steps``, or a window whose older rows are
                not the stream's previous frames.
        """
        to = self.n_obs_steps
        n = len(next(iter(frames.values())))
        if n % to:
            raise ValueError(
                f"policy memory: a call has {n} rows, not a multiple of n_obs_steps={to} (rows are b * n_obs_steps + t)"
            )
        if len(self.streams) != n // to:
            self.streams = [_Stream() for _ in range(n // to)]
        rows, index, new = [], [], []
        step, self.step = self.step, None
        for b, stream in enumerate(self.streams):
            window = [{c: x[b * to + t] for c, x in frames.items()} for t in range(to)]
            is_new = self._start_or_step(stream, window, step)
            last = stream.count - 1 if not is_new else stream.count
            index.append([max(last - (to - 1 - t), 0) for t in range(to)])
            self._check_window(b, stream, window, index[-1], is_new)
            new.append(is_new)
            if is_new:
                rows.append(b * to + to - 1)
        return MemoryPlan(torch.tensor(rows, dtype=torch.long), index, new)

    def _start_or_step(self, stream: _Stream, window: list[dict[str, torch.Tensor]], step: bool | None) -> bool:
        """Restart the stream where the window begins an episode; whether its newest frame is new.

        ``step``: the host's word for this call (``True``: a new frame even if equal to the last one,
        ``False``: no new frame); ``None``: new unless the window is the stream's last window again.
        """
        to, newest = self.n_obs_steps, window[-1]
        if step is False:
            return False
        if step is None and stream.count:
            last = [stream.frames.get(max(stream.count - to + t, 0)) for t in range(to)]
            if all(seen is not None and _same(seen, row) for seen, row in zip(last, window)):
                return False  # the same window again (a repeated call)
        seen = stream.frames.get(stream.count - 1)
        repeated = to > 1 and all(_same(row, newest) for row in window)
        if stream.count and repeated and not (seen is not None and _same(seen, newest)):
            stream.reset()  # one repeated new frame: an episode start
        return True

    def _check_window(
        self, b: int, stream: _Stream, window: list[dict[str, torch.Tensor]], index: list[int], is_new: bool
    ) -> None:
        for t, (row, i) in enumerate(zip(window[:-1], index[:-1])):
            seen = stream.frames.get(i) if i < stream.count else window[-1]
            if seen is None or not _same(seen, row):
                raise ValueError(
                    f"policy memory: row {b * self.n_obs_steps + t} (stream {b}, t={t}) is not frame {i} of its "
                    "stream, the frame seen there: the memory needs every frame of an episode in order, one new frame "
                    "per call (call the encoder every control step, or reset_memory() at a new episode)"
                )

    def advance(
        self,
        plan: MemoryPlan,
        frames: Mapping[str, torch.Tensor],
        pyramids: Mapping[str, FeaturePyramid],
        masks: Mapping[str, torch.Tensor | None],
        fuse: Callable[[FeaturePyramid], torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """Store the new frames' memories, condition them, and gather every row's heads' input.

        Args:
            plan: This call's :meth:`plan`.
            frames: ``{camera: (n, 3, H, W)}`` as given to :meth:`plan`.
            pyramids: ``{camera: FeaturePyramid}`` of the rows ``plan.rows``.
            masks: ``{camera: (M, K, h, w) masks of those rows in the view, or None}`` (the memory's mask).
            fuse: The heads' input from a pyramid (``MultiCameraEncoder.fuse_levels``).

        Returns:
            ``{camera: (n, *feature_shape)}``.
        """
        fresh = [b for b, is_new in enumerate(plan.new) if is_new]
        for camera, pyramid in pyramids.items():
            if not fresh:
                break
            memories = self.modules.memories(pyramid.s16_neck, masks.get(camera))
            for j, b in enumerate(fresh):
                i = plan.index[b][-1]
                stream = self.streams[b]
                stream.memories.setdefault(i, {})[camera] = memories[j]
                stream.frames.setdefault(i, {})[camera] = frames[camera][plan.rows[j]]
            banks = torch.stack(
                [
                    torch.stack(
                        [self.streams[b].memories[f][camera] for f in bank_frames(plan.index[b][-1], self.config)]
                    )
                    for b in fresh
                ]
            )
            s16 = self.modules.condition(pyramid.s16_neck, banks)
            fused = fuse(FeaturePyramid(pyramid.s4, pyramid.s8, s16, s16_neck=pyramid.s16_neck))
            for j, b in enumerate(fresh):
                self.streams[b].maps.setdefault(plan.index[b][-1], {})[camera] = fused[j]
        for b in fresh:
            stream = self.streams[b]
            stream.count = plan.index[b][-1] + 1
            self._prune(stream)
        return {
            camera: torch.stack(
                [self.streams[b].maps[i][camera] for b in range(len(self.streams)) for i in plan.index[b]]
            )
            for camera in frames
        }

    def _prune(self, stream: _Stream) -> None:
        """Keep the first frame's memory and the memories / frames a later call may still need."""
        low = stream.count - self.keep
        for table in (stream.memories, stream.frames, stream.maps):
            for i in [i for i in table if i < low and i != 0]:
                del table[i]
        for table in (stream.frames, stream.maps):  # the window's frames only
            for i in [i for i in table if i < stream.count - self.n_obs_steps]:
                del table[i]


def _same(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    """Whether two frames (``{camera: (3, H, W)}``) are equal in every camera."""
    return all(torch.equal(a[c], b[c]) for c in a)
