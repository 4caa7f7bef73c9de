"""The encoder's object tracker: masks at inference from SAM 2 streams fed with the encoder's own trunk pass.

A policy trained with object tokens needs ``K`` masks per tracked camera and frame; at inference
nobody gives them. :class:`ObsTracker` makes them, for both hosts (Diffusion Policy's obs encoder
and LeRobot's ``sam2_diffusion``, which both call ``MultiCameraEncoder.forward``):

* **Layout.** A call brings ``n`` rows ``b * n_obs_steps + t``: stream ``b`` (a batch row: one
  environment / robot) with its last ``n_obs_steps`` frames, ``t = n_obs_steps - 1`` the newest.
  Diffusion Policy hands its ``(B, To)`` window this way; LeRobot's policy hands the window its
  observation queue holds at every ``select_action`` step (one new frame per step).
* **Frames.** Each stream keeps its last window (frames, fused features, masks). A frame of the
  window that the stream tracked at its last call keeps its features and masks; a frame equal to
  the one before it in the window is copied; every other frame is new: it goes through the
  encoder's ONE trunk pass (:meth:`plan` lists them) and is tracked in order (:meth:`advance`).
* **Restarts** (the stream is prompted again on its window's first frame): the first call, after
  :meth:`end` (``reset_objects``, ``train()`` / ``eval()``) or :meth:`set_prompts`, when the number
  of streams changes, and, with ``restart="auto"`` and ``n_obs_steps >= 2``, when a window is one
  frame repeated that the stream did not track last (an episode's first window: Diffusion
  Policy's ``MultiStepWrapper`` and LeRobot's queue both repeat the first observation).
* **View.** Prompts are given in camera pixels and moved into each camera's view
  (:class:`~sam2_encoder.camera_view.CameraView`: resize, centre crop); masks are in the view.
* **Policy memory.** With ``memory="sam2"`` the same trunk pass feeds the memory banks, which store
  each new frame with the masks tracked here (:mod:`~sam2_encoder.memory_tracking`).

Each stream's SAM 2 predictors are an :class:`~sam2_encoder.object_tracking.ObjectTracker` of one
row on the shared :class:`~sam2_encoder.object_tracking.TrackerModules`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .camera_view import CameraView
from .containers import to_plain
from .image_encoder import FeaturePyramid
from .object_tracking import ObjectTracker, TrackerModules
from .prompts import Prompts, parse_object_prompts

__all__ = ["ObsTracker", "TrackPlan", "parse_view_prompts"]


def parse_view_prompts(spec: Any, views: Mapping[str, CameraView], num_objects: int, what: str) -> Prompts:
    """Prompts in camera pixels, checked against the frames and the part of them each view shows.

    Args:
        spec: ``{camera: {obj_id: prompt}}`` (plain or OmegaConf containers), ``None`` / ``{}``: none.
        views: ``{camera: CameraView}`` of every tracked camera.
        num_objects: ``K`` ids per camera.
        what: The option's name, for messages.

    Returns:
        ``{camera: {obj_id: prompt}}`` in camera pixels (see :func:`~sam2_encoder.prompts.parse_object_prompts`).
    """
    sizes = {camera: view.frame_hw for camera, view in views.items()}
    parsed = parse_object_prompts(to_plain(spec), sizes, num_objects, what)
    for camera, objects in parsed.items():
        views[camera].check_prompts(objects, f"{what}[{camera!r}]")
    return parsed


class TrackPlan:
    """Where each row of a tracked call comes from: ``sources[b][t] = (kind, index)`` and the rows to encode.

    ``kind``: ``"old"`` (position ``index`` of the stream's last window), ``"same"`` (equal to
    position ``index`` of this window), ``"prompt"`` / ``"new"`` (encoded row ``index`` of
    ``encode``, prompted or tracked). ``encode``: ``(M,)`` rows of the call for the trunk pass.
    """

    def __init__(self, sources: list[list[tuple[str, int]]], encode: torch.Tensor) -> None:
        self.sources = sources
        self.encode = encode


class _Stream:
    """One stream's predictors and its last window: frames, fused features and masks per camera."""

    def __init__(self) -> None:
        self.tracker: ObjectTracker | None = None
        self.frames: dict[str, torch.Tensor] = {}
        self.features: dict[str, torch.Tensor] = {}
        self.masks: dict[str, torch.Tensor] = {}

    def start(self, owner: ObsTracker, prompts: Prompts) -> None:
        """Begin again from ``prompts`` (camera pixels): the next tracked frame is prompted."""
        if self.tracker is None:
            sizes = {c: view.shape for c, view in owner.views.items()}
            self.tracker = ObjectTracker(owner.modules.model, owner.modules.variant, sizes, owner.num_objects)
        self.tracker.reset()
        self.tracker.set_prompts({c: owner.views[c].map_prompts(objects) for c, objects in prompts.items()})
        self.frames, self.features, self.masks = {}, {}, {}


class ObsTracker:
    """Object streams per batch row, fed with the encoder's trunk pass (see the module docstring).

    Args:
        modules: The tracker's SAM 2 weights (sharing the encoder's trunk).
        views: ``{camera: CameraView}`` of the tracked cameras (the cameras with object masks).
        num_objects: ``K`` objects per camera; mask channel ``k`` is the ``k``-th smallest id.
        n_obs_steps: Rows per stream in a call (``None``: 1).
        restart: ``"auto"`` or ``"manual"`` (see the module docstring).
        prompts: Default first-frame prompts, from :func:`parse_view_prompts` (``{}``: none yet).
    """

    def __init__(
        self,
        modules: TrackerModules,
        views: Mapping[str, CameraView],
        num_objects: int,
        n_obs_steps: int | None = None,
        restart: str = "auto",
        prompts: Prompts | None = None,
    ) -> None:
        self.modules = modules
        self.views = dict(views)
        self.num_objects = num_objects
        self.n_obs_steps = n_obs_steps or 1
        self.restart = restart
        self.prompts: Prompts = dict(prompts or {})
        self.row_prompts: dict[int, Prompts] = {}
        self.streams: list[_Stream] = []
        self._restart: set[int] = set()

    def detached(self) -> ObsTracker:
        """The same tracker without running streams (what a copy or a pickle of the encoder holds)."""
        twin = ObsTracker(self.modules, self.views, self.num_objects, self.n_obs_steps, self.restart, self.prompts)
        twin.row_prompts = dict(self.row_prompts)
        return twin

    def end(self) -> None:
        """End every stream: the next call prompts each stream's window again (prompts are kept)."""
        self.streams = []
        self._restart = set()

    def set_prompts(self, spec: Mapping[str, Any], row: int | None = None) -> None:
        """New first-frame prompts (camera pixels) for every stream, or for stream ``row`` only.

        Raises:
            ValueError: For prompts that do not fit the cameras or views, none at all, or a bad row.
        """
        parsed = parse_view_prompts(spec, self.views, self.num_objects, "set_object_prompts")
        if not parsed:
            raise ValueError("set_object_prompts needs prompts for every camera with object masks, got none")
        if row is None:
            self.prompts = parsed
            self.row_prompts.clear()
            self.end()
        else:
            if isinstance(row, bool) or not isinstance(row, int) or row < 0:
                raise ValueError(f"set_object_prompts: row must be a stream index >= 0, got {row!r}")
            self.row_prompts[row] = parsed
            self._restart.add(row)

    def plan(self, frames: Mapping[str, torch.Tensor], n: int) -> TrackPlan:
        """Which rows of this call are new frames of their streams; (re)starts the streams that restart.

        Args:
            frames: ``{camera: (n, 3, h, w)}`` float in [0, 1], in each camera's view.
            n: Rows of the call.

        Raises:
            ValueError: For ``n`` not a multiple of ``n_obs_steps``, or a restarting stream without prompts.
        """
        to = self.n_obs_steps
        if n % to:
            raise ValueError(
                f"object tracker: {n} rows is not a multiple of n_obs_steps={to} (rows are b * n_obs_steps + t: "
                "each stream brings its last n_obs_steps frames)"
            )
        if len(self.streams) != n // to:
            self.streams = [_Stream() for _ in range(n // to)]
            self._restart = set(range(n // to))
        sources: list[list[tuple[str, int]]] = []
        encode: list[int] = []
        for b, stream in enumerate(self.streams):
            restart, row_sources = self._window(frames, b, stream, encode)
            sources.append(row_sources)
            if restart:
                prompts = self.row_prompts.get(b, self.prompts)
                if not prompts:
                    raise ValueError(
                        f"object tracker: no object prompts for stream {b}: set object_prompts (camera pixels) or call "
                        "set_object_prompts(...) before the first frame"
                    )
                stream.start(self, prompts)
        self._restart.clear()
        device = next(iter(frames.values())).device
        return TrackPlan(sources, torch.tensor(encode, dtype=torch.long, device=device))

    def _window(
        self, frames: Mapping[str, torch.Tensor], b: int, stream: _Stream, encode: list[int]
    ) -> tuple[bool, list[tuple[str, int]]]:
        """Whether stream ``b`` restarts, and its rows' sources (new rows appended to ``encode``)."""
        to = self.n_obs_steps
        rows = range(b * to, (b + 1) * to)
        restart = b in self._restart or not stream.frames
        keep = 0  # frames at the start of the window that the stream tracked at its last call
        if not restart:
            keep = self._kept(frames, rows, stream)
            repeated = to > 1 and all(_same(frames, r, rows[0]) for r in rows)
            if keep == 0 and repeated and self.restart == "auto":
                restart = True
        row_sources = []
        for t, r in enumerate(rows):
            if not restart and t < keep:
                row_sources.append(("old", to - keep + t))
            elif t > 0 and _same(frames, r, r - 1):
                row_sources.append(("same", t - 1))
            else:
                row_sources.append(("prompt" if restart and t == 0 else "new", len(encode)))
                encode.append(r)
        return restart, row_sources

    def _kept(self, frames: Mapping[str, torch.Tensor], rows: Sequence[int], stream: _Stream) -> int:
        """How many frames at the start of the window are the last ones of the stream's previous window."""
        to = self.n_obs_steps
        for shift in range(to + 1):
            k = to - shift
            if all(_same(frames, rows[t], shift + t, stream) for t in range(k)):
                return k
        return 0

    def advance(
        self,
        plan: TrackPlan,
        frames: Mapping[str, torch.Tensor],
        pyramids: Mapping[str, FeaturePyramid],
        fuse: Callable[[FeaturePyramid], torch.Tensor],
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Track every new frame in stream order.

        Args:
            plan: This call's :meth:`plan`.
            frames: ``{camera: (n, 3, h, w)}`` as given to :meth:`plan`.
            pyramids: ``{camera: FeaturePyramid}`` of the rows ``plan.encode`` (empty when none).
            fuse: The heads' input from a pyramid (``MultiCameraEncoder.fuse_levels``).

        Returns:
            ``({camera: (n, *feature_shape)}, {camera: (n, K, h, w) bool})``.
        """
        fused = {c: fuse(p) for c, p in pyramids.items()}
        features: dict[str, list[torch.Tensor]] = {c: [] for c in frames}
        masks: dict[str, list[torch.Tensor]] = {c: [] for c in frames}
        for b, (stream, row_sources) in enumerate(zip(self.streams, plan.sources)):
            self._advance_stream(b, stream, row_sources, frames, pyramids, fused)
            for c in frames:
                features[c].append(stream.features[c])
                masks[c].append(stream.masks[c])
        return {c: torch.cat(v) for c, v in features.items()}, {c: torch.cat(v) for c, v in masks.items()}

    def _advance_stream(
        self,
        b: int,
        stream: _Stream,
        row_sources: list[tuple[str, int]],
        frames: Mapping[str, torch.Tensor],
        pyramids: Mapping[str, FeaturePyramid],
        fused: Mapping[str, torch.Tensor],
    ) -> None:
        """Stream ``b``'s window: its new frames tracked, its features and masks gathered (stored on it)."""
        to = self.n_obs_steps
        window_f: dict[str, list[torch.Tensor]] = {c: [] for c in frames}
        window_m: dict[str, list[torch.Tensor]] = {c: [] for c in frames}
        for t, (kind, index) in enumerate(row_sources):
            if kind in ("prompt", "new"):
                r = b * to + t
                assert stream.tracker is not None
                step = stream.tracker.step(
                    {c: frames[c][r : r + 1] for c in frames},
                    {c: pyramids[c].select(slice(index, index + 1)) for c in frames},
                )
            for c in frames:
                if kind == "old":
                    f, m = stream.features[c][index], stream.masks[c][index]
                elif kind == "same":
                    f, m = window_f[c][index], window_m[c][index]
                else:
                    f, m = fused[c][index], step[c][0]
                window_f[c].append(f)
                window_m[c].append(m)
        stream.frames = {c: frames[c][b * to : (b + 1) * to] for c in frames}
        stream.features = {c: torch.stack(window_f[c]) for c in frames}
        stream.masks = {c: torch.stack(window_m[c]) for c in frames}


def _same(frames: Mapping[str, torch.Tensor], a: int, b: int, old: _Stream | None = None) -> bool:
    """Whether row ``a`` of this call equals row ``b`` of this call (or of ``old``'s last window), every camera."""
    return all(torch.equal(frames[c][a], (frames[c] if old is None else old.frames[c])[b]) for c in frames)
