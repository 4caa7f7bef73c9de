"""``MultiCameraEncoder``: several cameras (and low-dim values) through one SAM 2 trunk into one vector.

The host-neutral core of the policy encoders: Diffusion Policy's ``SAM2ObsEncoder`` and LeRobot's
``SAM2DiffusionPolicy`` build on it. ``forward(obs)`` takes ``obs[key]`` of shape ``(N, 3, H, W)``
for every camera (float in ``input_range``) and ``(N, *shape)`` for every low-dim key, and returns
``(N, D)`` in the same row order: each camera's head output (keys sorted), then the low-dim values
flattened (keys sorted); ``output_shape()`` returns ``(D,)`` without running the model.

Images are mapped from ``input_range`` to [0, 1] exactly, optionally resized / cropped, then
preprocessed the SAM 2 way. Every camera and time step goes through the trunk in ONE batched pass.

With object tokens and ``object_tracker=True``, an inference call whose obs dict has no masks
gets them from SAM 2 trackers (one stream per batch row, ``n_obs_steps`` rows per stream) fed
with that same trunk pass (see ``object_tracker`` below).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .camera_view import CameraView
from .config import EncoderConfig, whole_dims
from .downloads import CheckpointError
from .frame_memo import FrameMemo, MemoLookup, memo_rows
from .heads import HeadBuilder
from .image_encoder import LEVELS, FeaturePyramid, SAM2ImageEncoder
from .memory_call import MemoryCall
from .memory_streams import MemoryStreams
from .object_tokens import object_mask_keys
from .object_tracking import TrackerModules
from .obs_inputs import batch_dims, given_masks, low_dim_values, to_pixels, tracks_call
from .obs_tracker import ObsTracker, TrackPlan, parse_view_prompts
from .policy_memory import MemoryModules
from .pooling import fuse_levels, pack_pyramid
from .trunk import build_trunk, optimizer_groups

__all__ = ["EncoderConfig", "MultiCameraEncoder", "whole_dims"]


class MultiCameraEncoder(nn.Module):
    """Observation encoder with a SAM 2 trunk shared by all cameras.

    Args:
        cameras: ``{key: (3, H, W)}``: the image inputs. Two keys that differ only by ``.`` vs
            ``_`` are refused (their heads would share one module name).
        low_dim: ``{key: shape}``: values appended to the camera features as they are.
        config: Every other option, validated: an :class:`~sam2_encoder.config.EncoderConfig`
            (its parts and :func:`~sam2_encoder.config.option_docs` describe each option).
        **options: The same options flat instead (``variant=..., pool="avg", crop_shape=(84, 84)``,
            see :meth:`EncoderConfig.from_flat <sam2_encoder.config.EncoderConfig.from_flat>`);
            not together with ``config``.

    Options that need the cameras are checked here: ``object_masks_key`` against the cameras and
    low-dim keys, ``share_heads`` with object tokens on every camera, a crop no larger than a
    camera (after ``resize_shape``), and the tracker's ``object_prompts`` inside the frames (and
    the centre crop) the encoder sees at inference.

    With ``object_tracker=True``, an inference call (eval mode, autograd off) whose obs dict has
    no masks gets them from one SAM 2 tracker per (stream, camera), fed with the policy's own
    trunk pass (each new frame is encoded once, for the tracker and the heads). The tracker's
    weights (:class:`~sam2_encoder.object_tracking.TrackerModules`, frozen) are in this module's
    state dict (``tracker.*``), so a saved policy tracks without the SAM 2 file. Streams: see
    :meth:`reset_objects`; the last tracked call's masks: ``tracked_masks`` ``{camera: (n, K, h,
    w) bool}`` in the view the trunk sees. With ``memory="sam2"`` too, the same pass feeds the
    memory banks, which store the tracked masks (:mod:`~sam2_encoder.memory_tracking`).

    Shapes:
        ``forward({key: (N, *shape)}) -> (N, D)`` with ``D = output_shape()[0]``; extra leading
        dims (``(B, T, ...)``) are flattened and restored. A camera input of the feature shape
        ``(N, *feature_shape)`` (precomputed features) skips the trunk.
    """

    def __init__(
        self,
        cameras: Mapping[str, Sequence[int]],
        low_dim: Mapping[str, Sequence[int]] | None = None,
        config: EncoderConfig | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        config = _config(config, options)
        self.config = config
        backbone, view, readout, objects = config.backbone, config.view, config.readout, config.objects
        self.rgb_shapes = _check_cameras(cameras)
        self.low_dim_shapes = {k: whole_dims(low_dim[k], f"low_dim[{k!r}]") for k in sorted(low_dim or {})}
        self.levels = readout.levels
        self.fuse = readout.fuse
        self.object_masks = object_mask_keys(objects.object_masks_key, self.rgb_shapes, self.low_dim_shapes)
        self.num_objects = objects.num_objects
        head_names = _head_names(self.rgb_shapes, self.object_masks, readout.share_heads)
        self.object_level = objects.object_level
        self.resize_shape = view.resize_shape
        self.crop_shape = view.crop_shape
        self.random_crop = view.random_crop
        self.trunk_lr_scale = config.finetuning.trunk_lr_scale
        self.use_compile = backbone.compile
        for key in self.rgb_shapes:  # a crop larger than a camera raises (see CameraView)
            self.view(key)
        # the object tracker's options (checked by config.tracking)
        tracking = config.tracking
        self.n_obs_steps = tracking.n_obs_steps
        self.object_tracker = tracking.object_tracker
        self.object_restart = tracking.object_restart
        self.tracked_masks: dict[str, torch.Tensor] = {}  # the last tracked call's masks, in the view
        views = {camera: self.view(camera) for camera in self.object_masks}
        prompts = parse_view_prompts(tracking.object_prompts, views, self.num_objects, "object_prompts")

        self.encoder = build_trunk(config)
        builder = HeadBuilder(readout, objects, self.encoder.feature_shapes())
        self.feature_shape = builder.feature_shape
        self.heads = builder.build(head_names, backbone.seed)
        self.share_heads = readout.share_heads
        self.reuse_frames = config.reuse_frames
        self._memo = FrameMemo()
        self._compiled = None
        # the tracker's weights (state dict: tracker.*) and its streams per batch row
        self.tracker, self.obs_tracker = _build_tracker(self.encoder, config, views, prompts)
        # the policy memory's weights (state dict: memory.*) and its banks per stream (memory="sam2")
        self.memory, self.memory_streams = _build_memory(self.encoder, config)

    # ----------------------------------------------------------------------------------------
    # encoder API
    # ----------------------------------------------------------------------------------------

    @property
    def rgb_keys(self) -> list[str]:
        """Camera keys, sorted."""
        return list(self.rgb_shapes)

    @property
    def low_dim_keys(self) -> list[str]:
        """Low-dim keys, sorted."""
        return list(self.low_dim_shapes)

    def head_for(self, key: str) -> nn.Module:
        """The pooling head used for camera ``key``."""
        return self.heads["shared" if self.share_heads else _module_key(key)]

    def output_shape(self) -> tuple[int]:
        """``(D,)``: the size of one output row, computed without running the model."""
        rgb = sum(self.head_for(k).output_dim for k in self.rgb_keys)
        low = sum(math.prod(s) for s in self.low_dim_shapes.values())
        return (rgb + low,)

    def forward(self, obs_dict: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Encode a batch of observations.

        Steps: check the inputs; sort the cameras (precomputed features, frames for the frame memo,
        frames for the object tracker); preprocess through each camera's view; ONE trunk pass for
        every frame still to encode; track; heads (:class:`_ForwardCall`); append the low-dim values.

        Args:
            obs_dict: ``{key: (N, *shape)}`` for every camera and low-dim key (extra keys are
                ignored); images float in ``input_range``, or, for cameras with precomputed
                features, ``(N, *feature_shape)``.

        Returns:
            ``(N, D)``: per row, each camera's head output (keys sorted), then the low-dim
            values flattened (keys sorted).
        """
        lead, n = batch_dims(obs_dict, self.rgb_shapes, self.low_dim_shapes, self.feature_shape, self._head_dtype())
        if n == 0:  # an empty batch: (*lead, D) with no rows, nothing encoded
            return torch.zeros(
                *lead, self.output_shape()[0], dtype=self._head_dtype(), device=obs_dict[self.rgb_keys[0]].device
            )
        tracking = self._tracks(obs_dict)
        masks = {} if tracking else given_masks(obs_dict, self.object_masks, self.rgb_shapes, self.num_objects, lead, n)
        outputs = _ForwardCall(self, obs_dict, lead, n, masks, tracking).run()
        return self._join(outputs, obs_dict, lead, n)

    def _trunk_pass(self, pixels: Sequence[torch.Tensor]) -> list[FeaturePyramid]:
        """ONE trunk pass over every ``(M_i, 3, S, S)`` input; one pyramid per input, in order."""
        if not pixels:
            return []
        pyramid = self._encode_pyramid(torch.cat(list(pixels), dim=0))
        starts = [sum(len(p) for p in pixels[:i]) for i in range(len(pixels) + 1)]
        return [pyramid.select(slice(a, b)) for a, b in zip(starts[:-1], starts[1:])]

    def _join(
        self, outputs: Mapping[str, torch.Tensor], obs_dict: Mapping[str, torch.Tensor], lead: tuple[int, ...], n: int
    ) -> torch.Tensor:
        """``(*lead, D)``: the cameras' outputs (keys sorted), then the low-dim values flattened (keys sorted)."""
        parts = [outputs[key] for key in self.rgb_keys]
        parts += low_dim_values(obs_dict, self.low_dim_keys, n, parts[0].dtype)
        return torch.cat(parts, dim=-1).reshape(*lead, -1)

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """SAM 2 pass plus level selection/fusion.

        Args:
            pixels: ``(M, 3, S, S)`` SAM 2-normalised pixels.

        Returns:
            ``(M, C, h, w)`` with ``C`` the summed channels of the selected levels.
        """
        return self.fuse_levels(self._encode_pyramid(pixels))

    def _encode_pyramid(self, pixels: torch.Tensor) -> FeaturePyramid:
        """The one SAM 2 trunk pass (compiled with ``compile=True``)."""
        if self.use_compile:
            if self._compiled is None:
                self._compiled = torch.compile(self.encoder.encode, dynamic=False)
            return self._compiled(pixels)
        return self.encoder.encode(pixels)

    def fuse_levels(self, pyramid: FeaturePyramid) -> torch.Tensor:
        """The heads' input from a pyramid: what a camera input of ``feature_shape`` holds.

        With ``fuse="pool"``: the configured levels, finer ones average-pooled to the coarsest
        grid, concatenated. With ``"coarse_to_fine"``: the packed pyramid
        (:func:`~sam2_encoder.pooling.pack_pyramid`). Pass a tracker's pyramid
        (``StreamingPredictor.track(frame, return_features=True).features``) through this to feed
        the policy without a second encoder pass.

        Args:
            pyramid: The encoder output (``M`` frames).

        Returns:
            ``(M, *feature_shape)``.
        """
        if self.fuse == "coarse_to_fine":
            return pack_pyramid([pyramid[lv] for lv in LEVELS])
        return fuse_levels([pyramid[lv] for lv in self.levels])

    # ----------------------------------------------------------------------------------------
    # object tracker (object_tracker=True): sam2_encoder.obs_tracker.ObsTracker
    # ----------------------------------------------------------------------------------------

    def set_object_prompts(self, prompts: Mapping[str, Any], row: int | None = None) -> None:
        """Set the tracker's first-frame prompts at run time (a person's clicks, a detector).

        The next inference call without masks starts new streams from them (every stream, or
        stream ``row`` only), prompted on that call's oldest frame of the stream; later restarts
        (:meth:`reset_objects`, a new episode) keep them.

        Args:
            prompts: ``{camera: {obj_id: {"points": [[x, y], ...], "labels": [1, ...]} | {"box":
                [x0, y0, x1, y1]}}}`` in camera pixels, ``num_objects`` ids for every camera with
                object masks (see ``object_prompts``).
            row: One stream (batch index ``b`` of ``b * n_obs_steps + t``), or ``None`` for all.

        Raises:
            ValueError: Without ``object_tracker``, for a bad row, or for prompts that do not fit
                the cameras (outside the frame or the centre crop, wrong ids, ...).
        """
        self._require_tracker("set_object_prompts").set_prompts(prompts, row)

    def reset_objects(self) -> None:
        """End every object stream (a new episode): the next call prompts each stream's frames again.

        Diffusion Policy's ``policy.reset()`` does not reach the obs encoder: call
        ``policy.obs_encoder.reset_objects()`` beside it in a robot loop. DP's simulator runners
        need no call with ``object_restart="auto"`` (an episode's first window repeats its first
        frame). Also forgets the frame memo (:meth:`forget_frames`). Prompts are kept.
        """
        if self.obs_tracker is not None:
            self.obs_tracker.end()
        self.reset_memory()
        self.forget_frames()

    def reset_memory(self) -> None:
        """End every memory stream (a new episode): the next inference call starts each bank at frame 0.

        With ``memory="sam2"``; ``reset_objects()``, ``train()`` / ``eval()`` call it too, and a window of
        one repeated new frame (an episode start in both hosts) starts its stream over by itself.
        """
        if self.memory_streams is not None:
            self.memory_streams.end()

    def memory_step(self, new: bool | None = True) -> None:
        """Say whether the next inference call is a new control step for the memory banks (``memory="sam2"``).

        Args:
            new: ``True``: each stream's newest row is a new frame, even if it equals the last one (a
                robot at rest); ``False``: no new frame (the same observation again: its rows reuse the
                banks); ``None``: decided by content (new unless the window is the stream's last window).
                Applies to the next call only.
        """
        self._require_memory("memory_step").step = new

    def _require_memory(self, what: str) -> MemoryStreams:
        if self.memory_streams is None:
            raise ValueError(f"{what}: this encoder has no policy memory (memory='none'); build it with memory='sam2'")
        return self.memory_streams

    @property
    def object_prompts(self) -> dict[str, Any]:
        """The tracker's default first-frame prompts ``{camera: {obj_id: prompt}}`` (camera pixels; ``{}``: none)."""
        return self.obs_tracker.prompts if self.obs_tracker is not None else {}

    def view(self, camera: str) -> CameraView:
        """Camera ``camera``'s view: its resize and crop (frames, masks, prompt points)."""
        _, height, width = self.rgb_shapes[camera]
        return CameraView((height, width), self.resize_shape, self.crop_shape, self.random_crop, name=camera)

    def _require_tracker(self, what: str) -> ObsTracker:
        if self.obs_tracker is None:
            raise ValueError(
                f"{what}: this encoder has no object tracker (object_tracker=false"
                + ("" if self.object_masks else ", and no object tokens")
                + "); build it with object_tracker=true"
            )
        return self.obs_tracker

    def _tracks(self, obs_dict: Mapping[str, torch.Tensor]) -> bool:
        """Whether this call's masks come from the tracker (the obs dict has none) or from the obs dict."""
        return self.obs_tracker is not None and tracks_call(obs_dict, self.object_masks, self.training)

    # ----------------------------------------------------------------------------------------
    # training helpers
    # ----------------------------------------------------------------------------------------

    def param_groups(self, lr: float, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """Optimizer groups: heads at ``lr``, trainable SAM 2 weights at ``lr * trunk_lr_scale``.

        Args:
            lr: Base learning rate.
            weight_decay: Weight decay for both groups.

        Returns:
            A list for ``torch.optim.AdamW(...)``; the trunk group is omitted when frozen.
        """
        return optimizer_groups(self.heads, self.encoder, lr, weight_decay, self.trunk_lr_scale)

    def train(self, mode: bool = True) -> MultiCameraEncoder:
        """Set train mode (the frozen trunk stays in eval), forget remembered frames, end object streams."""
        self.forget_frames()
        if self.obs_tracker is not None:
            self.obs_tracker.end()
        self.reset_memory()
        return super().train(mode)

    def forget_frames(self) -> None:
        """Forget the frames (and their outputs) remembered by ``reuse_frames`` from the last call.

        Call it where an inference stream ends, e.g. at the start of a new episode (LeRobot's
        ``policy.reset()`` does): the next call then encodes all its distinct frames. Outputs never
        depend on it (frames are matched by exact content, and remembered outputs are dropped when
        a weight changes); it releases the remembered frames and avoids matching frames across
        episodes. ``train()`` / ``eval()`` forget too.
        """
        self._memo.clear()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_compiled"] = None  # compiled graphs neither pickle nor deep-copy
        state["_memo"] = FrameMemo()  # remembered frames belong to one inference stream
        if self.obs_tracker is not None:  # object streams too (prompts kept)
            state["obs_tracker"] = self.obs_tracker.detached()
        if self.memory_streams is not None:  # memory banks too
            state["memory_streams"] = self.memory_streams.detached()
        state["tracked_masks"] = {}
        return state

    # ----------------------------------------------------------------------------------------
    # input handling
    # ----------------------------------------------------------------------------------------

    def _head_dtype(self) -> torch.dtype:
        """The dtype of the heads' weights (what precomputed features must be)."""
        weight = next(self.heads.parameters(), None)
        return weight.dtype if weight is not None else torch.get_default_dtype()

    def _head(self, key: str, x: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        head = self.head_for(key)
        return head(x) if masks is None else head(x, masks)

    def _preprocess(
        self, key: str, x: torch.Tensor, masks: torch.Tensor | None = None, finish: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images to SAM 2 pixels through camera ``key``'s view (see :func:`~sam2_encoder.obs_inputs.to_pixels`)."""
        return to_pixels(self.encoder.transforms, self.view(key), key, x, masks, self.training, finish)

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        """Random crop per image in train mode (if ``random_crop``), centre crop otherwise."""
        return self.view(self.rgb_keys[0]).crop(x, self.training)

    def extra_repr(self) -> str:
        extra = f", fuse={self.fuse!r}" if self.fuse != "pool" else ""
        if self.object_masks:
            extra += f", object_masks={self.object_masks}, num_objects={self.num_objects}"
        return f"cameras={self.rgb_keys}, low_dim={self.low_dim_keys}, levels={list(self.levels)}{extra}"


class _ForwardCall:
    """One forward call: each camera sorted by how it is served, then ONE trunk pass, tracking and heads.

    A camera holds precomputed features (heads only), frames of a tracked camera (the object
    tracker's plan picks the new ones), or frames for the frame memo (the rows it does not remember
    are encoded). Every frame still to encode goes through the trunk in one pass.
    """

    def __init__(
        self,
        enc: MultiCameraEncoder,
        obs_dict: Mapping[str, torch.Tensor],
        lead: tuple[int, ...],
        n: int,
        masks: Mapping[str, torch.Tensor],
        tracking: bool,
    ) -> None:
        self.enc, self.n = enc, n
        memo = enc._memo if enc.reuse_frames and not enc.training and not torch.is_grad_enabled() else None
        if memo is not None and not memo.tie(enc, obs_dict[enc.rgb_keys[0]].device.type):
            memo = None  # (tie forgets outputs of other weights or another autocast state)
        self.memo = memo
        self.outputs: dict[str, torch.Tensor] = {}  # head outputs (n, D_key)
        self.pending: list[tuple[str, torch.Tensor, torch.Tensor | None, MemoLookup | None]] = []  # memo cameras
        self.tracked: dict[str, torch.Tensor] = {}  # tracked cameras: (n, 3, h, w) in [0, 1], in the view
        self.memory = MemoryCall(enc, obs_dict, lead, n, masks, tracking) if enc.memory is not None else None
        for key in enc.rgb_keys if self.memory is None else ():  # (the memory serves every camera)
            x = obs_dict[key]
            x = x.reshape(n, *x.shape[len(lead) :])
            m = masks.get(key)
            features = tuple(x.shape[1:]) == enc.feature_shape
            if tracking and key in enc.object_masks:
                if features:
                    raise ValueError(
                        f"obs_dict[{key!r}] holds precomputed features {tuple(x.shape)}, but the object tracker needs "
                        f"camera {key!r}'s frames (3, H, W); give the frames, or the masks under "
                        f"{enc.object_masks[key]!r}"
                    )
                self.tracked[key] = enc._preprocess(key, x, None, finish=False)[0]
            elif features:  # precomputed by `sam2-encoder cache` or a tracker
                self.outputs[key] = enc._head(key, x, m)
            else:  # a remembered row must match the frame and, with object tokens, its masks
                self.pending.append((key, x, m, memo.lookup(key, memo_rows(x, m)) if memo is not None else None))

    def run(self) -> dict[str, torch.Tensor]:
        """``{camera: (n, D_camera)}``: preprocess, ONE trunk pass, track, heads."""
        enc = self.enc
        todo = [(key, *_rows((x, m), None if hit is None else hit.missing)) for key, x, m, hit in self.pending]
        inputs = [enc._preprocess(key, x, m) for key, x, m in todo if len(x)]  # [(pixels, fitted masks)]
        tracker = enc.obs_tracker
        plan = tracker.plan(self.tracked, self.n) if self.tracked and tracker is not None else None
        late = len(self.tracked) if plan is not None and len(plan.encode) else 0  # trunk inputs of tracked cameras
        pixels = [p for p, _ in inputs]
        memory = self.memory.pixels() if self.memory is not None else []
        pixels += memory
        if late:  # the tracked cameras' new frames join the same trunk pass
            pixels += [enc.encoder.transforms.finish(self.tracked[key][plan.encode]) for key in self.tracked]
        pyramids = enc._trunk_pass(pixels)
        if plan is not None:
            self.outputs.update(self._track(plan, pyramids[len(pyramids) - late :]))
        if self.memory is not None:
            self.outputs.update(self.memory.outputs(pyramids[len(inputs) : len(inputs) + len(memory)]))
        self.outputs.update(self._memo_heads(todo, pyramids[: len(inputs)], [m for _, m in inputs]))
        return self.outputs

    def _track(self, plan: TrackPlan, pyramids: Sequence[FeaturePyramid]) -> dict[str, torch.Tensor]:
        """The tracked cameras' head outputs; their masks are kept in the encoder's ``tracked_masks``."""
        enc, frames = self.enc, self.tracked
        assert enc.obs_tracker is not None
        features, masks = enc.obs_tracker.advance(plan, frames, dict(zip(frames, pyramids)), enc.fuse_levels)
        enc.tracked_masks = masks
        return {key: enc._head(key, features[key], masks[key].to(features[key].dtype)) for key in frames}

    def _memo_heads(
        self,
        todo: Sequence[tuple[str, torch.Tensor, torch.Tensor | None]],
        pyramids: Sequence[FeaturePyramid],
        fitted: Sequence[torch.Tensor | None],
    ) -> dict[str, torch.Tensor]:
        """Head outputs of the memo cameras: encoded rows, merged with the remembered ones."""
        outputs: dict[str, torch.Tensor] = {}
        encoded = iter(zip(pyramids, fitted))  # the masks, resized and cropped like the images
        for (key, x, m, hit), (_, rows, _) in zip(self.pending, todo):
            fresh = None
            if len(rows):
                pyramid, fm = next(encoded)
                fresh = self.enc._head(key, self.enc.fuse_levels(pyramid), fm)
            if hit is None:
                outputs[key] = fresh
            else:
                assert self.memo is not None
                outputs[key] = hit.merge(fresh)
                self.memo.store(key, memo_rows(x, m), outputs[key], hit)
        return outputs


def _build_tracker(
    encoder: SAM2ImageEncoder, config: EncoderConfig, views: Mapping[str, CameraView], prompts: Mapping[str, Any]
) -> tuple[TrackerModules | None, ObsTracker | None]:
    """The object tracker's weights and its streams, with ``object_tracker=True`` (else ``(None, None)``).

    The weights are not read while the encoder's checkpoint is deferred: the state dict brings both.
    """
    backbone, tracking = config.backbone, config.tracking
    if not tracking.object_tracker:
        return None, None
    try:
        modules = TrackerModules(
            encoder, checkpoint=backbone.checkpoint, seed=backbone.seed, download=backbone.download
        )
    except CheckpointError as e:
        raise CheckpointError(
            f"{e}\nobject_tracker=True: the encoder's object tracker needs a full SAM 2 checkpoint (memory "
            "attention / encoder); pass one, or set object_tracker=false and give the masks in every obs dict"
        ) from e
    streams = ObsTracker(
        modules, views, config.objects.num_objects, tracking.n_obs_steps, tracking.object_restart, prompts
    )
    return modules, streams


def _build_memory(
    encoder: SAM2ImageEncoder, config: EncoderConfig
) -> tuple[MemoryModules | None, MemoryStreams | None]:
    """The policy memory's weights and its inference banks, with ``memory="sam2"`` (else ``(None, None)``)."""
    memory, backbone = config.policy_memory, config.backbone
    if not memory.enabled:
        return None, None
    modules = MemoryModules(encoder, memory, backbone.checkpoint, backbone.seed, backbone.download)
    return modules, MemoryStreams(modules, memory, config.tracking.n_obs_steps)


def _rows(
    tensors: tuple[torch.Tensor, torch.Tensor | None], rows: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``tensors`` restricted to ``rows`` (all rows when ``None``); ``None`` entries stay ``None``."""
    if rows is None:
        return tensors
    return tuple(t if t is None else t[rows] for t in tensors)  # type: ignore[return-value]


def _config(config: EncoderConfig | None, options: Mapping[str, Any]) -> EncoderConfig:
    """The encoder's config: ``config`` as given, or built from flat ``options`` (not both)."""
    if config is None:
        return EncoderConfig.from_flat(**options)
    if not isinstance(config, EncoderConfig):
        raise TypeError(
            f"MultiCameraEncoder(cameras, low_dim, config): config must be an EncoderConfig, got "
            f"{type(config).__name__} {config!r}; pass the other options by name (variant=..., pool=...)"
        )
    if options:
        raise TypeError(
            f"MultiCameraEncoder takes an EncoderConfig or flat options, not both: got config and {sorted(options)}; "
            "use dataclasses.replace on the config's parts, or EncoderConfig.from_flat(**{**config.flat(), ...})"
        )
    return config


def _head_names(cameras: Mapping[str, Any], object_masks: Mapping[str, str], share_heads: bool) -> dict[str, bool]:
    """``{head module name: takes object tokens}``: one ``"shared"`` head, or one per camera.

    Raises:
        ValueError: ``share_heads`` with object masks for some cameras only.
    """
    if not share_heads:
        return {_module_key(k): k in object_masks for k in cameras}
    if object_masks and set(object_masks) != set(cameras):
        raise ValueError(
            f"share_heads=True needs object masks for every camera {list(cameras)}, got them for {list(object_masks)}"
        )
    return {"shared": bool(object_masks)}


def _module_key(key: str) -> str:
    """The name of camera ``key``'s head in ``heads`` (module names cannot contain '.')."""
    return key.replace(".", "_")


def _check_cameras(cameras: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, int, int]]:
    """``{key: (3, H, W)}`` in sorted key order, or one clear error."""
    if not cameras:
        raise ValueError("at least one camera is needed: cameras={key: (3, H, W)}")
    out: dict[str, tuple[int, int, int]] = {}
    for key in sorted(cameras):
        shape = whole_dims(cameras[key], f"camera {key!r}: shape")
        if len(shape) != 3 or shape[0] != 3:
            raise ValueError(f"camera {key!r}: shape must be [3, H, W], got {list(shape)}")
        out[key] = shape  # type: ignore[assignment]
    names: dict[str, list[str]] = {}
    for key in out:
        names.setdefault(_module_key(key), []).append(key)
    clashes = [keys for keys in names.values() if len(keys) > 1]
    if clashes:
        raise ValueError(
            f"cameras {clashes[0]} would share one head: a head's module name replaces '.' by '_' "
            f"(both are {_module_key(clashes[0][0])!r}); rename one of them"
        )
    return out
