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
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ._checks import whole_number
from .camera_view import CameraView
from .downloads import CheckpointError
from .finetune import configure_finetuning
from .frame_memo import FrameMemo, MemoLookup, memo_rows
from .heads import CameraHead
from .image_encoder import LEVELS, FeaturePyramid, SAM2ImageEncoder, build_seeded
from .object_tokens import ObjectTokens, check_masks, object_mask_keys
from .object_tracking import TrackerModules
from .obs_tracker import ObsTracker, TrackPlan, parse_view_prompts
from .pooling import CoarseToFine, build_pool, check_pool_options, coarse_to_fine_shape, fuse_levels, pack_pyramid
from .transforms import UINT8_HINT

__all__ = ["MultiCameraEncoder", "whole_dims"]


class MultiCameraEncoder(nn.Module):
    """Observation encoder with a SAM 2 trunk shared by all cameras.

    Args:
        cameras: ``{key: (3, H, W)}``: the image inputs.
        low_dim: ``{key: shape}``: values appended to the camera features as they are.
        variant: Released SAM 2 model name.
        checkpoint: Weights (see ``SAM2ImageEncoder``); ``None``: seeded random weights.
        image_size: SAM 2 input side (multiple of 32); every camera is resized to it.
        levels: Pyramid levels feeding the heads (``"s4"``, ``"s8"``, ``"s16"``); several levels
            are fused by average-pooling the finer ones to the coarsest selected grid and
            concatenating channels.
        pool: Head type: ``spatial_softmax``, ``attention``, ``avg`` or ``conv``.
        num_keypoints: Keypoints of the ``spatial_softmax`` head (unused by the others).
        pool_kwargs: Extra head options (``temperature``, ``num_heads``, ``hidden_channels``...);
            an option the chosen head does not take is an error.
        feature_dim: Output size per camera (``None``: the head's natural size, e.g.
            ``2 * num_keypoints`` for spatial softmax).
        share_heads: One head for all cameras instead of one per camera.
        fuse: How the pyramid reaches the head: ``"pool"`` (``levels`` average-pooled to the
            coarsest selected grid) or ``"coarse_to_fine"`` (s16 upsampled x2 and fused with s8,
            then with s4, see :class:`~sam2_encoder.pooling.CoarseToFine`; ``levels`` is then all
            three and the head's input is the packed pyramid ``(1024, S/16, S/16)``).
        fuse_stride: Stride of the map the readout sees with ``"coarse_to_fine"``: 8 or 4.
        fuse_channels: ``(C_8, C_4)`` widths of the coarse-to-fine maps.
        object_masks_key: Obs key of per-frame object masks ``(N, K, H, W)`` (bool or float in
            [0, 1], the camera's ``H, W``): a key (one camera) or ``{camera: key}``. Each camera
            with masks gets ``num_objects`` tokens, see :mod:`sam2_encoder.object_tokens`.
        num_objects: ``K``, the objects per camera.
        object_level: Pyramid level the tokens pool (``"s4"``, ``"s8"``, ``"s16"``); with
            ``fuse="pool"`` it must be the coarsest of ``levels``.
        object_tokens: ``"append"`` (after the camera's readout) or ``"replace"`` (tokens only).
        object_token_dim: Project each token to this size (``None``: the level's channels);
            ``feature_dim`` sizes the readout only.
        object_absent: Token of an empty mask: ``"learned"`` embedding or ``"zero"``.
        object_tracker: Track the objects at inference: in eval mode under ``torch.no_grad()``,
            an obs dict WITHOUT the mask keys gets its masks from one SAM 2 tracker per (stream,
            camera), fed with the policy's own trunk pass (each new frame is encoded once, for
            the tracker and the heads). Needs object tokens, ``freeze=True`` and a full SAM 2
            checkpoint (memory modules); the tracker's weights (:class:`~sam2_encoder.
            object_tracking.TrackerModules`, frozen, never trained) are in this module's state
            dict (``tracker.*``), so a saved policy tracks without the SAM 2 file. Training and
            obs dicts that carry masks are unchanged. Streams: see :meth:`reset_objects`. The
            last tracked call's masks: ``tracked_masks`` ``{camera: (n, K, h, w) bool}`` in the
            view the trunk sees (after ``resize_shape`` and the centre ``crop_shape``).
        object_prompts: First-frame prompts of the tracker, ``{camera: {obj_id: {"points":
            [[x, y], ...], "labels": [1, ...]} | {"box": [x0, y0, x1, y1]}}}`` in camera pixels
            (the obs image's ``W x H``, before ``resize_shape`` / ``crop_shape``; with a crop they
            must lie inside the centre crop the encoder sees at inference). ``num_objects`` ids per
            camera with masks; mask channel ``k`` is the ``k``-th smallest id. ``None``: set them
            later with :meth:`set_object_prompts`.
        n_obs_steps: Rows per stream in a call: the rows are ``b * n_obs_steps + t`` (Diffusion
            Policy flattens ``(B, To)`` this way), ``t = n_obs_steps - 1`` the newest frame.
            ``None``: 1 (every row its own stream, one frame per call).
        object_restart: When a stream starts over (prompted again): ``"auto"`` (default): at the
            first call, after :meth:`reset_objects` / :meth:`set_object_prompts`, when the number
            of streams changes, on ``train()`` / ``eval()``, and when a stream's ``n_obs_steps``
            frames are all one frame that is not the last frame it tracked (Diffusion Policy's
            ``MultiStepWrapper`` repeats an episode's first observation that way); ``"manual"``:
            the same without the last rule.
        freeze: Keep the SAM 2 weights frozen (default). ``False`` fine-tunes them (see ``finetune``).
        finetune: With ``freeze=False``: ``"all"`` (default), ``"last_blocks"`` or ``"lora"``.
        finetune_blocks: Trainable Hiera blocks for ``"last_blocks"``.
        lora_rank: LoRA rank for ``"lora"``.
        lora_alpha: LoRA alpha for ``"lora"``.
        trunk_lr_scale: Learning-rate multiplier of the trunk's group in :meth:`param_groups`.
        input_range: Range of incoming float images (``(0, 1)``; Diffusion Policy's normaliser gives
            ``(-1, 1)``).
        channel_order: ``"RGB"`` or ``"BGR"``.
        resize_shape: Optional ``(H, W)`` resize before cropping (Diffusion Policy's option).
        crop_shape: Optional ``(H, W)`` crop: random in train mode when ``random_crop``, centre
            otherwise (unlike Diffusion Policy, ``random_crop=False`` still crops).
        random_crop: Random crops in train mode.
        compile: ``torch.compile`` the encoder pass (static shapes).
        fast_attention: See ``SAM2ImageEncoder``.
        precision: ``"fp32"`` (default) or ``"bf16"``: the Hiera trunk under bfloat16 autocast where
            the hardware has native bf16 (see ``SAM2ImageEncoder``); heads stay float32.
        seed: Seed of the random parts (heads, random SAM 2 weights).
        download: Allow downloading a remote checkpoint. Off by default so that a host's reload
            (which re-runs this constructor) never touches the network. A checkpoint that is not
            found gives placeholder weights and a warning: a host's reload replaces them with its
            saved state dict; used before that, the encoder raises (nothing runs on them).
        reuse_frames: At inference (eval mode, autograd off), reuse the features of frames seen in
            the previous call instead of encoding them again: with ``n_obs_steps`` To, a control
            loop then encodes each camera frame once instead of To times. A frame repeated within
            one call (the first step of an episode, whose queue holds the first frame To times) is
            encoded once too. Frames (with their object masks) are matched by exact content and
            get the features they were given one call earlier or by their first copy, i.e. equal to
            encoding every frame up to the float rounding of batched kernels, which can depend on
            the batch size (bit-identical in our tests and benchmark).

    Shapes:
        ``forward({key: (N, *shape)}) -> (N, D)`` with ``D = output_shape()[0]``; extra leading
        dims (``(B, T, ...)``) are flattened and restored. A camera input of the feature shape
        ``(N, *feature_shape)`` (precomputed features) skips the trunk.
    """

    def __init__(
        self,
        cameras: Mapping[str, Sequence[int]],
        low_dim: Mapping[str, Sequence[int]] | None = None,
        variant: str = "sam2.1_hiera_tiny",
        checkpoint: str | os.PathLike[str] | None = None,
        image_size: int = 224,
        levels: Sequence[str] | str = ("s16",),
        pool: str = "spatial_softmax",
        num_keypoints: int = 32,
        pool_kwargs: Mapping[str, Any] | None = None,
        feature_dim: int | None = None,
        share_heads: bool = False,
        fuse: str = "pool",
        fuse_stride: int = 8,
        fuse_channels: Sequence[int] = (64, 32),
        object_masks_key: str | Mapping[str, str] | None = None,
        num_objects: int = 1,
        object_level: str = "s16",
        object_tokens: str = "append",
        object_token_dim: int | None = None,
        object_absent: str = "learned",
        freeze: bool = True,
        finetune: str | None = None,
        finetune_blocks: int = 2,
        lora_rank: int = 8,
        lora_alpha: float = 16.0,
        trunk_lr_scale: float = 0.1,
        input_range: Sequence[float] = (0.0, 1.0),
        channel_order: str = "RGB",
        resize_shape: Sequence[int] | None = None,
        crop_shape: Sequence[int] | None = None,
        random_crop: bool = True,
        compile: bool = False,
        fast_attention: bool = True,
        seed: int = 0,
        download: bool = False,
        reuse_frames: bool = True,
        precision: str = "fp32",
        object_tracker: bool = False,
        object_prompts: Mapping[str, Any] | None = None,
        n_obs_steps: int | None = None,
        object_restart: str = "auto",
    ) -> None:
        super().__init__()
        self.rgb_shapes = _check_cameras(cameras)
        self.low_dim_shapes = {k: whole_dims(low_dim[k], f"low_dim[{k!r}]") for k in sorted(low_dim or {})}
        self.levels = (levels,) if isinstance(levels, str) else tuple(levels)
        unknown = [lv for lv in self.levels if lv not in LEVELS]
        if unknown or not self.levels:
            raise ValueError(f"levels must be a non-empty subset of {LEVELS}, got {list(self.levels)}")
        self.levels = tuple(lv for lv in LEVELS if lv in self.levels)  # finest first
        if fuse not in ("pool", "coarse_to_fine"):
            raise ValueError(f"fuse must be 'pool' or 'coarse_to_fine', got {fuse!r}")
        if fuse == "coarse_to_fine":
            if self.levels not in (("s16",), LEVELS):
                raise ValueError(
                    f"fuse='coarse_to_fine' reads s4, s8 and s16 itself; got levels={list(self.levels)} "
                    "(leave levels at its default or give all three)"
                )
            self.levels = LEVELS
        self.fuse = fuse
        self.object_masks = object_mask_keys(object_masks_key, self.rgb_shapes, self.low_dim_shapes)
        self.num_objects = whole_number(num_objects, "num_objects")
        if object_token_dim is not None:
            whole_number(object_token_dim, "object_token_dim")
        if self.object_masks:
            if object_level not in LEVELS:
                raise ValueError(f"object_level must be one of {LEVELS}, got {object_level!r}")
            if fuse == "pool" and object_level != self.levels[-1]:
                raise ValueError(
                    f"object_level={object_level!r} with fuse='pool' needs it to be the coarsest of levels "
                    f"{list(self.levels)} (finer levels are pooled away); use object_level={self.levels[-1]!r} "
                    "or fuse='coarse_to_fine', which keeps every level"
                )
            if object_tokens not in ("append", "replace"):
                raise ValueError(f"object_tokens must be 'append' or 'replace', got {object_tokens!r}")
            if share_heads and set(self.object_masks) != set(self.rgb_shapes):
                raise ValueError(
                    f"share_heads=True needs object masks for every camera {list(self.rgb_shapes)}, "
                    f"got them for {list(self.object_masks)}"
                )
        self.object_level = object_level
        if freeze and finetune is not None:
            raise ValueError(f"finetune={finetune!r} needs freeze=False")
        self.resize_shape = whole_dims(resize_shape, "resize_shape", 2) if resize_shape is not None else None
        self.crop_shape = whole_dims(crop_shape, "crop_shape", 2) if crop_shape is not None else None
        if not (isinstance(trunk_lr_scale, int | float) and math.isfinite(trunk_lr_scale) and trunk_lr_scale >= 0):
            raise ValueError(f"trunk_lr_scale must be a finite number >= 0, got {trunk_lr_scale!r}")
        if feature_dim is not None:
            whole_number(feature_dim, "feature_dim")
        self.random_crop = random_crop
        self.trunk_lr_scale = trunk_lr_scale
        self.use_compile = compile
        self._check_crop()
        # the object tracker's options, checked before SAM 2 is built
        self.n_obs_steps = None if n_obs_steps is None else whole_number(n_obs_steps, "n_obs_steps")
        if not isinstance(object_tracker, bool):
            raise ValueError(f"object_tracker must be true or false, got {object_tracker!r}")
        self.object_tracker = object_tracker
        self.object_restart = object_restart
        self.tracked_masks: dict[str, torch.Tensor] = {}  # the last tracked call's masks, in the view
        views = {camera: self.view(camera) for camera in self.object_masks}
        prompts = {}
        if object_tracker:
            self._check_tracking(freeze, object_restart)
            prompts = parse_view_prompts(object_prompts, views, self.num_objects, "object_prompts")
        elif object_prompts:
            raise ValueError(
                "object_prompts are given but object_tracker is false: set object_tracker=true to track them"
            )

        self.encoder = SAM2ImageEncoder(
            variant,
            checkpoint=checkpoint,
            image_size=image_size,
            freeze=True,
            fast_attention=fast_attention,
            channel_order=channel_order,
            input_range=tuple(input_range),
            seed=seed,
            download=download,
            precision=precision,
            missing_checkpoint="defer",  # a host's reload brings the weights in its own state dict
        )
        if not freeze:
            configure_finetuning(self.encoder, finetune or "all", finetune_blocks, lora_rank, lora_alpha)

        shapes = self.encoder.feature_shapes()
        channels = sum(shapes[lv][0] for lv in self.levels)
        _, height, width = shapes[self.levels[-1]]
        self.feature_shape = (channels, height, width)
        # the packed pyramid: each level folded onto the s16 grid (see pooling.pack_pyramid)
        layout = tuple((lv, shapes[lv][0], shapes[lv][1] // shapes["s16"][1]) for lv in LEVELS)
        if fuse == "coarse_to_fine":
            self.feature_shape = (sum(c * f * f for _, c, f in layout), height, width)
            channels, height, width = coarse_to_fine_shape(height, width, fuse_stride, fuse_channels)
        kwargs = dict(pool_kwargs or {})
        if pool == "spatial_softmax":
            kwargs.setdefault("num_keypoints", num_keypoints)
            whole_number(kwargs["num_keypoints"], "num_keypoints")
        projected = {"output_dim": feature_dim} if feature_dim and pool != "spatial_softmax" else {}
        check_pool_options(pool, {**kwargs, **projected})

        def make_readout() -> nn.Module:
            if pool == "spatial_softmax":  # keypoint coordinates, optionally projected
                head = build_pool(pool, channels, height, width, **kwargs)
                return _Projected(head, feature_dim) if feature_dim else head
            extra = {"output_dim": feature_dim} if feature_dim else {}
            return build_pool(pool, channels, height, width, **kwargs, **extra)

        def make_head(with_objects: bool) -> nn.Module:
            if fuse == "pool" and not with_objects:
                return make_readout()  # the plain head (state-dict keys as before these options)
            readout = None if with_objects and object_tokens == "replace" else make_readout()
            level_channels = shapes[object_level][0]
            upsample = readout is not None and fuse == "coarse_to_fine"
            k = self.num_objects
            return CameraHead(
                readout,
                CoarseToFine([c for _, c, _ in layout], fuse_stride, fuse_channels) if upsample else None,
                ObjectTokens(level_channels, k, object_token_dim, object_absent) if with_objects else None,
                object_level=object_level,
                object_channels=level_channels,
                packed=fuse == "coarse_to_fine",
                layout=layout,
            )

        if share_heads:
            names = {"shared": bool(self.object_masks)}
        else:
            names = {_module_key(k): k in self.object_masks for k in self.rgb_shapes}
        self.heads = build_seeded(lambda: nn.ModuleDict({n: make_head(o) for n, o in names.items()}), seed)
        self.share_heads = share_heads
        self.reuse_frames = reuse_frames
        self._memo = FrameMemo()
        self._compiled = None
        self.tracker: TrackerModules | None = None  # the tracker's weights (state dict: tracker.*)
        self.obs_tracker: ObsTracker | None = None  # its streams per batch row
        if object_tracker:
            try:  # (not read while the encoder's checkpoint is deferred: the state dict brings both)
                self.tracker = TrackerModules(self.encoder, checkpoint=checkpoint, seed=seed, download=download)
            except CheckpointError as e:
                raise CheckpointError(
                    f"{e}\nobject_tracker=True: the encoder's object tracker needs a full SAM 2 checkpoint (memory "
                    "attention / encoder); pass one, or set object_tracker=false and give the masks in every obs dict"
                ) from e
            self.obs_tracker = ObsTracker(
                self.tracker, views, self.num_objects, self.n_obs_steps, object_restart, prompts
            )

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
        every frame still to encode; track; heads; append the low-dim values.

        Args:
            obs_dict: ``{key: (N, *shape)}`` for every camera and low-dim key (extra keys are
                ignored); images float in ``input_range``, or, for cameras with precomputed
                features, ``(N, *feature_shape)``.

        Returns:
            ``(N, D)``: per row, each camera's head output (keys sorted), then the low-dim
            values flattened (keys sorted).
        """
        lead, n = self._batch_dims(obs_dict)
        if n == 0:  # an empty batch: (*lead, D) with no rows, nothing encoded
            return torch.zeros(
                *lead, self.output_shape()[0], dtype=self._head_dtype(), device=obs_dict[self.rgb_keys[0]].device
            )
        tracking = self._tracks(obs_dict)
        masks = {} if tracking else self._object_masks(obs_dict, lead, n)  # {camera: (n, K, H, W) float}
        call = self._sort_cameras(obs_dict, lead, n, masks, tracking)
        todo = [(key, *_rows((x, m), None if hit is None else hit.missing)) for key, x, m, hit in call.pending]
        inputs = [self._preprocess(key, x, m) for key, x, m in todo if len(x)]  # [(pixels, fitted masks)]
        plan = self.obs_tracker.plan(call.tracked, n) if call.tracked and self.obs_tracker is not None else None
        late = len(call.tracked) if plan is not None and len(plan.encode) else 0  # trunk inputs of tracked cameras
        pixels = [p for p, _ in inputs]
        if late:  # the tracked cameras' new frames join the same trunk pass
            pixels += [self.encoder.transforms.finish(call.tracked[key][plan.encode]) for key in call.tracked]
        pyramids = self._trunk_pass(pixels)
        outputs = dict(call.outputs)
        if plan is not None:
            outputs.update(self._track(plan, call.tracked, pyramids[len(pyramids) - late :]))
        outputs.update(self._memo_heads(call, todo, pyramids[: len(pyramids) - late], [m for _, m in inputs]))
        return self._join(outputs, obs_dict, lead, n)

    def _sort_cameras(
        self,
        obs_dict: Mapping[str, torch.Tensor],
        lead: tuple[int, ...],
        n: int,
        masks: Mapping[str, torch.Tensor],
        tracking: bool,
    ) -> _Call:
        """Each camera's rows: precomputed features (heads now), tracked frames, or frames for the memo."""
        memo = self._memo if self.reuse_frames and not self.training and not torch.is_grad_enabled() else None
        if memo is not None and not memo.tie(self, obs_dict[self.rgb_keys[0]].device.type):
            memo = None  # (tie forgets outputs of other weights or another autocast state)
        call = _Call(memo)
        for key in self.rgb_keys:
            x = obs_dict[key]
            x = x.reshape(n, *x.shape[len(lead) :])
            m = masks.get(key)
            features = tuple(x.shape[1:]) == self.feature_shape
            if tracking and key in self.object_masks:
                if features:
                    raise ValueError(
                        f"obs_dict[{key!r}] holds precomputed features {tuple(x.shape)}, but the object tracker needs "
                        f"camera {key!r}'s frames (3, H, W); give the frames, or the masks under "
                        f"{self.object_masks[key]!r}"
                    )
                call.tracked[key] = self._preprocess(key, x, None, finish=False)[0]  # [0, 1], in the view
            elif features:  # precomputed by `sam2-encoder cache` or a tracker
                call.outputs[key] = self._head(key, x, m)
            else:  # a remembered row must match the frame and, with object tokens, its masks
                call.pending.append((key, x, m, memo.lookup(key, memo_rows(x, m)) if memo is not None else None))
        return call

    def _trunk_pass(self, pixels: Sequence[torch.Tensor]) -> list[FeaturePyramid]:
        """ONE trunk pass over every ``(M_i, 3, S, S)`` input; one pyramid per input, in order."""
        if not pixels:
            return []
        pyramid = self._encode_pyramid(torch.cat(list(pixels), dim=0))
        starts = [sum(len(p) for p in pixels[:i]) for i in range(len(pixels) + 1)]
        return [pyramid.select(slice(a, b)) for a, b in zip(starts[:-1], starts[1:])]

    def _track(
        self, plan: TrackPlan, frames: Mapping[str, torch.Tensor], pyramids: Sequence[FeaturePyramid]
    ) -> dict[str, torch.Tensor]:
        """The tracked cameras' head outputs; their masks are kept in ``tracked_masks``."""
        assert self.obs_tracker is not None
        features, masks = self.obs_tracker.advance(plan, frames, dict(zip(frames, pyramids)), self.fuse_levels)
        self.tracked_masks = masks
        return {key: self._head(key, features[key], masks[key].to(features[key].dtype)) for key in frames}

    def _memo_heads(
        self,
        call: _Call,
        todo: Sequence[tuple[str, torch.Tensor, torch.Tensor | None]],
        pyramids: Sequence[FeaturePyramid],
        fitted: Sequence[torch.Tensor | None],
    ) -> dict[str, torch.Tensor]:
        """Head outputs of the frame cameras: encoded rows, merged with the remembered ones."""
        outputs: dict[str, torch.Tensor] = {}
        encoded = iter(zip(pyramids, fitted))  # the masks, resized and cropped like the images
        for (key, x, m, hit), (_, rows, _) in zip(call.pending, todo):
            fresh = None
            if len(rows):
                pyramid, fm = next(encoded)
                fresh = self._head(key, self.fuse_levels(pyramid), fm)
            if hit is None:
                outputs[key] = fresh
            else:
                assert call.memo is not None
                outputs[key] = hit.merge(fresh)
                call.memo.store(key, memo_rows(x, m), outputs[key], hit)
        return outputs

    def _join(
        self, outputs: Mapping[str, torch.Tensor], obs_dict: Mapping[str, torch.Tensor], lead: tuple[int, ...], n: int
    ) -> torch.Tensor:
        """``(*lead, D)``: the cameras' outputs (keys sorted), then the low-dim values flattened (keys sorted)."""
        parts = [outputs[key] for key in self.rgb_keys]
        for key in self.low_dim_keys:
            value = obs_dict[key].reshape(n, -1).to(parts[0].dtype)
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"obs_dict[{key!r}] (low-dim input) contains NaN or inf: {_first_bad(value)}")
            parts.append(value)
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
        self.forget_frames()

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

    def _check_tracking(self, freeze: bool, restart: str) -> None:
        if not self.object_masks:
            raise ValueError(
                "object_tracker=True needs object tokens: set object_masks_key (or a `type: mask` entry in shape_meta) "
                "and num_objects; without object tokens there is nothing to track"
            )
        if not freeze:
            raise ValueError(
                "object_tracker=True needs freeze=True: the tracker's mask decoder and memory were trained on SAM 2's "
                "own features, and a fine-tuned trunk feeds it others; fine-tune with masks from the dataset and give "
                "them in every obs dict at inference (object_tracker=false)"
            )
        if restart not in ("auto", "manual"):
            raise ValueError(f"object_restart must be 'auto' or 'manual', got {restart!r}")

    def _tracks(self, obs_dict: Mapping[str, torch.Tensor]) -> bool:
        """Whether this call's masks come from the tracker (the obs dict has none) or from the obs dict."""
        if self.obs_tracker is None:
            return False
        keys = list(self.object_masks.values())
        given = [key for key in keys if key in obs_dict]
        if given and len(given) != len(keys):
            raise KeyError(
                f"obs_dict has object masks {given} but not {sorted(set(keys) - set(given))}; give all of them or none "
                "(the encoder's object tracker then makes them)"
            )
        if given:
            return False
        if self.training or torch.is_grad_enabled():
            raise KeyError(
                f"obs_dict is missing {keys[0]!r}, the object masks of camera {next(iter(self.object_masks))!r}; the "
                "object tracker runs at inference only (eval mode, under torch.no_grad()): training reads the masks "
                f"from the dataset; got keys {sorted(obs_dict)}"
            )
        return True

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
        heads = [p for p in self.heads.parameters() if p.requires_grad]
        trunk = [p for p in self.encoder.parameters() if p.requires_grad]
        groups = [{"params": heads, "lr": lr, "weight_decay": weight_decay, "name": "heads"}]
        if trunk:
            groups.append(
                {"params": trunk, "lr": lr * self.trunk_lr_scale, "weight_decay": weight_decay, "name": "trunk"}
            )
        return groups

    def train(self, mode: bool = True) -> MultiCameraEncoder:
        """Set train mode (the frozen trunk stays in eval), forget remembered frames, end object streams."""
        self.forget_frames()
        if self.obs_tracker is not None:
            self.obs_tracker.end()
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
        state["tracked_masks"] = {}
        return state

    # ----------------------------------------------------------------------------------------
    # input handling
    # ----------------------------------------------------------------------------------------

    def _batch_dims(self, obs_dict: Mapping[str, torch.Tensor]) -> tuple[tuple[int, ...], int]:
        lead: tuple[int, ...] | None = None
        for key, shape in {**self.rgb_shapes, **self.low_dim_shapes}.items():
            if key not in obs_dict:
                raise KeyError(
                    f"obs_dict is missing {key!r}; expected keys {sorted({**self.rgb_shapes, **self.low_dim_shapes})}, "
                    f"got {sorted(obs_dict)}"
                )
            value = obs_dict[key]
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"obs_dict[{key!r}] must be a torch.Tensor, got {type(value).__name__}")
            if key in self.rgb_shapes and tuple(value.shape[-3:]) == self.feature_shape:
                shape = self.feature_shape
                if value.dtype != self._head_dtype():
                    raise TypeError(
                        f"obs_dict[{key!r}] holds precomputed features {tuple(value.shape)} of dtype {value.dtype}; "
                        f"the heads take {self._head_dtype()} (FeatureCache.fused returns float32): convert them with "
                        f".to({self._head_dtype()})"
                    )
            if value.dim() < len(shape) + 1 or tuple(value.shape[value.dim() - len(shape) :]) != shape:
                expected = f"(N, {', '.join(map(str, shape))})"
                if key in self.rgb_shapes:
                    expected += f" or cached features (N, {', '.join(map(str, self.feature_shape))})"
                raise ValueError(f"obs_dict[{key!r}] has shape {tuple(value.shape)}; expected {expected}")
            this = tuple(value.shape[: value.dim() - len(shape)])
            if lead is None:
                lead = this
            elif this != lead:
                raise ValueError(f"obs_dict[{key!r}] has batch dims {this}, other keys have {lead}")
        assert lead is not None
        return lead, math.prod(lead)

    def _head_dtype(self) -> torch.dtype:
        """The dtype of the heads' weights (what precomputed features must be)."""
        weight = next(self.heads.parameters(), None)
        return weight.dtype if weight is not None else torch.get_default_dtype()

    def _head(self, key: str, x: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        head = self.head_for(key)
        return head(x) if masks is None else head(x, masks)

    def _object_masks(
        self, obs_dict: Mapping[str, torch.Tensor], lead: tuple[int, ...], n: int
    ) -> dict[str, torch.Tensor]:
        """``{camera: (n, K, H, W) float}`` for the cameras with object masks, checked."""
        out = {}
        for camera, key in self.object_masks.items():
            if key not in obs_dict:
                raise KeyError(
                    f"obs_dict is missing {key!r}, the object masks of camera {camera!r}; got keys {sorted(obs_dict)}"
                )
            _, h, w = self.rgb_shapes[camera]
            value = obs_dict[key]
            if isinstance(value, torch.Tensor) and tuple(value.shape) == (*lead, self.num_objects, h, w):
                value = value.reshape(n, self.num_objects, h, w)
            elif isinstance(value, torch.Tensor):
                expected = ", ".join(map(str, (*lead, self.num_objects, h, w)))
                raise ValueError(
                    f"obs_dict[{key!r}] (object masks of camera {camera!r}) has shape {tuple(value.shape)}; expected "
                    f"({expected}): the batch dims, num_objects={self.num_objects}, then the camera's H, W"
                )
            out[camera] = check_masks(value, key, (self.num_objects, h, w))
        return out

    def _preprocess(
        self, key: str, x: torch.Tensor, masks: torch.Tensor | None = None, finish: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images to SAM 2 pixels ``(M, 3, S, S)``; object masks through the same resize and crop.

        ``finish=False`` stops before SAM 2's resize and normalisation: RGB in [0, 1], resized and cropped.
        """
        if not x.is_floating_point():
            raise TypeError(
                f"obs_dict[{key!r}] is {x.dtype}; expected float images in input_range "
                f"{self.encoder.transforms.input_range} (Diffusion Policy's normaliser output)"
            )
        t = self.encoder.transforms
        try:
            x = t.to_rgb_unit(x)
        except ValueError as e:  # this encoder takes float images only: rescaling is the fix
            message = str(e).replace(UINT8_HINT, f"; scale 0..255 images to input_range {t.input_range}")
            raise ValueError(f"obs_dict[{key!r}]: {message}") from e
        if masks is not None:  # one tensor through resize and crop: the masks get the images' crops
            x = torch.cat([x, masks.to(x.dtype)], dim=1)
        x = self.view(key).apply(x, self.training)
        if masks is not None:
            x, masks = x[:, :3].contiguous(), x[:, 3:]
        return (t.finish(x) if finish else x), masks

    def _check_crop(self) -> None:
        """Raise if a crop is larger than a camera (see :class:`~sam2_encoder.camera_view.CameraView`)."""
        for key in self.rgb_shapes:
            self.view(key)

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        """Random crop per image in train mode (if ``random_crop``), centre crop otherwise."""
        return self.view(self.rgb_keys[0]).crop(x, self.training)

    def extra_repr(self) -> str:
        extra = f", fuse={self.fuse!r}" if self.fuse != "pool" else ""
        if self.object_masks:
            extra += f", object_masks={self.object_masks}, num_objects={self.num_objects}"
        return f"cameras={self.rgb_keys}, low_dim={self.low_dim_keys}, levels={list(self.levels)}{extra}"


class _Call:
    """One forward call's cameras: head outputs of precomputed features, frames for the memo, tracked frames."""

    def __init__(self, memo: FrameMemo | None) -> None:
        self.memo = memo  # the frame memo when this call may use it
        self.outputs: dict[str, torch.Tensor] = {}  # precomputed features: head outputs (n, D_key)
        self.pending: list[tuple[str, torch.Tensor, torch.Tensor | None, MemoLookup | None]] = []  # frames
        self.tracked: dict[str, torch.Tensor] = {}  # tracked cameras: (n, 3, h, w) in [0, 1], in the view


def _children(modules: list[nn.Module]) -> tuple[int, ...]:
    """Identities of every child of each module: changes when a submodule is replaced."""
    return tuple(id(c) for m in modules for c in m._modules.values())


class _Projected(nn.Module):
    """A head followed by a linear projection to ``output_dim``."""

    def __init__(self, head: nn.Module, output_dim: int) -> None:
        super().__init__()
        self.head = head
        self.proj = nn.Linear(head.output_dim, output_dim)
        self.output_dim = output_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.head(x))


def _first_bad(value: torch.Tensor) -> str:
    """Where the first non-finite entry of a ``(N, D)`` tensor is, and its value."""
    row, col = (~torch.isfinite(value)).nonzero()[0].tolist()
    return f"row {row}, entry {col} is {value[row, col].item()}"


def _rows(
    tensors: tuple[torch.Tensor, torch.Tensor | None], rows: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``tensors`` restricted to ``rows`` (all rows when ``None``); ``None`` entries stay ``None``."""
    if rows is None:
        return tensors
    return tuple(t if t is None else t[rows] for t in tensors)  # type: ignore[return-value]


def _module_key(key: str) -> str:
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
    return out


def whole_dims(value: object, what: str, length: int | None = None) -> tuple[int, ...]:
    """A shape given as whole numbers >= 1 (Python or numpy integers, or integral floats like 32.0).

    Raises:
        ValueError: Naming ``what`` and the value, for anything else (a bare number, a string,
            bools, fractions, zero or negative sizes, or a length other than ``length``).
    """
    import numbers

    if isinstance(value, str | bytes) or not isinstance(value, Sequence | torch.Size) and not hasattr(value, "tolist"):
        raise ValueError(f"{what} must be a list of whole numbers >= 1, got {value!r}")
    items = value.tolist() if hasattr(value, "tolist") else list(value)
    if not isinstance(items, list):
        raise ValueError(f"{what} must be a list of whole numbers >= 1, got {value!r}")
    out = []
    for item in items:
        whole = isinstance(item, numbers.Integral) or isinstance(item, float) and item.is_integer()
        if isinstance(item, bool) or not whole or item < 1:
            raise ValueError(f"{what} must be whole numbers >= 1, got {list(items)!r}")
        out.append(int(item))
    if length is not None and len(out) != length:
        raise ValueError(f"{what} must be {length} whole numbers (H, W), got {list(items)!r}")
    return tuple(out)
