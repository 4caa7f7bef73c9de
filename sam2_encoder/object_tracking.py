"""Object masks for a policy at inference: SAM 2 trackers fed with the policy's own encoder pass.

A policy trained with object tokens (:mod:`sam2_encoder.object_tokens`) needs ``K`` masks per
camera and frame. Datasets carry them; a live robot or a simulator does not. This module tracks
the objects itself, host-neutrally (no LeRobot or Diffusion Policy import):

* :func:`parse_object_prompts` checks first-frame prompts ``{camera: {obj_id: {"points": [[x, y],
  ...], "labels": [1, ...]} | {"box": [x0, y0, x1, y1]}}}`` (camera pixel coordinates, ``K`` ids
  per camera) against the frame sizes, with one clear error per problem (defined in
  :mod:`sam2_encoder.prompts`, the home of the prompt rules; importable from here too).
* :class:`TrackerModules` holds the parts of transformers' ``Sam2VideoModel`` a tracker needs
  beyond the image encoder (prompt encoder, mask decoder, memory attention / encoder, object
  pointers and embeddings) as an ``nn.Module`` whose state dict a policy saves with its own
  weights: a saved policy tracks without the original SAM 2 file. The vision trunk, the high-res
  projections (``conv_s0`` / ``conv_s1``) and the no-memory embedding are *shared* with the
  policy's :class:`SAM2ImageEncoder`, not copied: one set of weights, one encoder pass per frame.
* :class:`ObjectTracker` keeps one :class:`StreamingPredictor` per (batch row, camera). Each
  :meth:`ObjectTracker.step` takes the new frames and the policy's pyramids of those frames
  (``features=``, so the tracker never encodes) and returns ``(N, K, H, W)`` bool masks per
  camera; the first frame of each stream (after :meth:`ObjectTracker.reset`, or after new
  prompts) is prompted, later frames are tracked. Memory stays bounded (the predictor prunes).

Mask channel ``k`` of a camera is the object with the ``k``-th smallest id of that camera, the
layout the masks of a dataset must have too.

A robot loop around a :class:`~sam2_encoder.camera_encoder.MultiCameraEncoder` with object tokens
(Diffusion Policy's real-robot evaluation, say; ``frames``: ``(1, 3, H, W)`` float in [0, 1])::

    image_encoder = policy_encoder.encoder                      # frozen SAM2ImageEncoder
    modules = TrackerModules(image_encoder, checkpoint="checkpoints/sam2.1_hiera_tiny.pt")
    tracker = ObjectTracker(modules.model, "sam2.1_hiera_tiny", {"cam": (H, W)}, num_objects=2,
                            prompts={"cam": {1: {"points": [[320, 240]]}, 2: {"box": [10, 20, 200, 220]}}})
    for frames in camera:                                       # each control step
        t = image_encoder.transforms
        pyramid = image_encoder.encode(t.finish(t.to_rgb_unit(frames)))   # the one encoder pass
        masks = tracker.step({"cam": frames}, {"cam": pyramid})["cam"]    # (1, K, H, W) bool
        features = policy_encoder.fuse_levels(pyramid)                    # the head's input, no re-encode
        obs = policy_encoder({"cam": features, "cam_masks": masks})       # (1, D)

Neither host's policy does this by hand: the encoder's own tracker
(:class:`~sam2_encoder.obs_tracker.ObsTracker`, ``object_tracker=True``) runs one ``ObjectTracker``
per stream on the encoder's trunk pass, with the windows, restarts, crops and frame reuse of both
hosts; ``ObjectTracker`` is the piece for a loop of one's own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import Sam2VideoModel

from .checkpoints import check_state_dict, load_checkpoint, resolve_checkpoint
from .image_encoder import FeaturePyramid, SAM2ImageEncoder, build_seeded
from .prompts import Prompts, parse_object_prompts
from .streaming import StreamingPredictor
from .variants import Variant, get_variant

__all__ = ["ObjectTracker", "TrackerModules", "parse_object_prompts", "sam2_video_model"]

# Sam2VideoModel parts that belong to the image encoder (shared with the policy, never copied)
_SHARED_CHILDREN = ("vision_encoder",)
_SHARED_DECODER_CHILDREN = ("conv_s0", "conv_s1")
_SHARED_PARAMETERS = ("no_memory_embedding",)


def sam2_video_model(
    encoder: SAM2ImageEncoder,
    checkpoint: str | os.PathLike[str] | None,
    seed: int,
    download: bool,
    part: str,
) -> Sam2VideoModel:
    """The ``Sam2VideoModel`` (transformers) of the encoder's variant and (square) size, seeded, then loaded.

    The one build of SAM 2's video model behind the tracker and the policy memory: seeded random
    weights, replaced by ``checkpoint`` (a full SAM 2 checkpoint, checked against the model's
    names and shapes) unless it is ``None`` or the encoder's own checkpoint is deferred (the host's
    state dict brings every weight then).

    Args:
        encoder: The policy's image encoder (variant, size, checkpoint deferral).
        checkpoint: Full SAM 2 weights, or ``None`` for the seeded weights.
        seed: Seed of the random initialisation.
        download: Allow downloading ``checkpoint``.
        part: What the model is for, named in a checkpoint error (``"object tracker"``).

    Raises:
        CheckpointError: If the checkpoint lacks the video model's weights or has other shapes.
    """
    variant = encoder.variant
    model = build_seeded(lambda: Sam2VideoModel(variant.video_model_config(encoder.image_size[0])), seed)
    if checkpoint is not None and encoder.pending_checkpoint is None:
        path = resolve_checkpoint(checkpoint, download_missing=download)
        state = load_checkpoint(path, variant=variant)
        check_state_dict(state, model.state_dict(), variant, source=f"{path} ({part})")
        model.load_state_dict(state, strict=True)
    return model


class TrackerModules(nn.Module):
    """The tracker's own SAM 2 weights, sharing the image encoder's.

    Builds transformers' ``Sam2VideoModel`` for the encoder's variant and (square) size, loads
    ``checkpoint`` into it (a full SAM 2 checkpoint: the memory modules are needed), then makes
    its vision trunk, ``conv_s0`` / ``conv_s1`` and no-memory embedding the encoder's own modules.
    Only the tracker's parts are registered here (``parts.*``, ``mask_decoder.*``,
    ``embeddings.*``), so a host's state dict holds each weight once. The parts are frozen and
    stay in eval mode.

    Args:
        encoder: The policy's image encoder (frozen: the tracker's decoder and memory were trained
            on SAM 2's own features, and predictors built on the shared trunk freeze it).
        checkpoint: Full SAM 2 weights (see :func:`~sam2_encoder.checkpoints.resolve_checkpoint`),
            or ``None`` for seeded random weights (tests; or a host that loads its state dict next).
            Not read while the encoder's own checkpoint is deferred (``pending_checkpoint``: the file
            is absent and the host's state dict supplies every weight, the tracker's included).
        seed: Seed of the random initialisation.
        download: Allow downloading ``checkpoint``.

    Raises:
        ValueError: If the encoder is not square or not frozen.
        CheckpointError: If the checkpoint lacks tracker weights or has the wrong shapes.
    """

    def __init__(
        self,
        encoder: SAM2ImageEncoder,
        checkpoint: str | os.PathLike[str] | None = None,
        seed: int = 0,
        download: bool = False,
    ) -> None:
        super().__init__()
        height, width = encoder.image_size
        if height != width:
            raise ValueError(f"the SAM 2 tracker needs a square image size, the encoder has {height}x{width}")
        if any(p.requires_grad for p in encoder.parameters()):
            raise ValueError(
                "the SAM 2 tracker needs a frozen image encoder: its mask decoder and memory were trained on SAM 2's "
                "own features (and a predictor freezes the trunk it runs on)"
            )
        variant = encoder.variant
        model = sam2_video_model(encoder, checkpoint, seed, download, part="object tracker")
        model.vision_encoder = encoder.vision_encoder
        model.mask_decoder.conv_s0 = encoder.conv_s0
        model.mask_decoder.conv_s1 = encoder.conv_s1
        model.no_memory_embedding = encoder.no_memory_embedding
        self.parts = nn.ModuleDict(
            {n: m for n, m in model.named_children() if n not in _SHARED_CHILDREN + ("mask_decoder",)}
        )
        self.mask_decoder = nn.ModuleDict(
            {n: m for n, m in model.mask_decoder.named_children() if n not in _SHARED_DECODER_CHILDREN}
        )
        self.embeddings = nn.ParameterDict(
            {n: p for n, p in model.named_parameters(recurse=False) if n not in _SHARED_PARAMETERS}
        )
        self.requires_grad_(False)
        self._model = (model,)  # a tuple: the whole model is not registered (its trunk is the encoder's)
        self.image_size = height
        self.variant = variant
        super().train(False)

    @property
    def model(self) -> Sam2VideoModel:
        """The whole ``Sam2VideoModel`` (trunk shared with the encoder) for :class:`StreamingPredictor`."""
        return self._model[0]

    def train(self, mode: bool = True) -> TrackerModules:
        """Stay in eval mode: the tracker is never trained."""
        return super().train(False)


class ObjectTracker:
    """Track ``K`` prompted objects per (batch row, camera) on frames a policy has encoded.

    Args:
        model: A ``Sam2VideoModel`` (e.g. :attr:`TrackerModules.model`) whose vision trunk is the
            one that encodes the frames handed to :meth:`step`.
        variant: The model's SAM 2 variant name.
        frame_sizes: ``{camera: (H, W)}``: the cameras to track and their frame sizes.
        num_objects: ``K`` objects per camera.
        prompts: Default prompts for every row (see :func:`parse_object_prompts`); or set them
            later with :meth:`set_prompts`.

    A stream starts at the first :meth:`step` after :meth:`reset` (or after :meth:`set_prompts`
    for its row): that frame is prompted, the following ones are tracked. Masks: ``(N, K, H, W)``
    bool per camera, channel ``k`` = ``k``-th smallest object id.
    """

    def __init__(
        self,
        model: Sam2VideoModel,
        variant: str | Variant,
        frame_sizes: Mapping[str, Sequence[int]],
        num_objects: int,
        prompts: Mapping[str, Any] | None = None,
    ) -> None:
        if not frame_sizes:
            raise ValueError("ObjectTracker needs at least one camera: frame_sizes={camera: (H, W)}")
        self.model = model
        self.variant = get_variant(variant)
        self.frame_sizes = {str(k): (int(v[0]), int(v[1])) for k, v in sorted(frame_sizes.items())}
        for camera, (h, w) in self.frame_sizes.items():
            if h < 1 or w < 1:
                raise ValueError(f"camera {camera!r}: frame size must be at least 1x1, got {h}x{w}")
        if isinstance(num_objects, bool) or not isinstance(num_objects, int) or num_objects < 1:
            raise ValueError(f"num_objects must be a whole number >= 1, got {num_objects!r}")
        self.num_objects = num_objects
        self.image_size = int(model.config.image_size)
        self._default: Prompts = parse_object_prompts(prompts, self.frame_sizes, self.num_objects)
        self._rows: dict[int, Prompts] = {}
        self.reset()

    @property
    def cameras(self) -> list[str]:
        """The tracked cameras, sorted."""
        return list(self.frame_sizes)

    @property
    def num_rows(self) -> int | None:
        """Rows of the running streams (fixed by the first :meth:`step` after :meth:`reset`), else ``None``."""
        return self._num_rows

    def prompts(self, row: int = 0) -> Prompts:
        """The prompts a new stream of ``row`` starts from (``{}`` when none are set)."""
        return self._rows.get(row, self._default)

    def set_prompts(self, prompts: Mapping[str, Any], row: int | None = None) -> None:
        """Set first-frame prompts; the next :meth:`step` starts new streams from them.

        Args:
            prompts: ``{camera: {obj_id: prompt}}`` for every tracked camera (see
                :func:`parse_object_prompts`).
            row: Only this batch row (e.g. one robot of several); ``None``: every row (row-specific
                prompts set before are dropped).

        Raises:
            ValueError: For prompts that :func:`parse_object_prompts` refuses, or a negative row.
        """
        parsed = parse_object_prompts(prompts, self.frame_sizes, self.num_objects)
        if not parsed:
            raise ValueError("set_prompts needs prompts for every camera with object masks, got none")
        if row is None:
            self._default = parsed
            self._rows.clear()
            self._restart = set(range(self._num_rows or 0))
        else:
            if isinstance(row, bool) or not isinstance(row, int | np.integer) or row < 0:
                raise ValueError(f"row must be a batch row index >= 0, got {row!r}")
            self._rows[int(row)] = parsed
            self._restart.add(int(row))

    def reset(self) -> None:
        """End every stream (a new episode): the next :meth:`step` prompts its frames again."""
        self._predictors: dict[tuple[int, str], StreamingPredictor] = {}
        self._num_rows: int | None = None
        self._restart: set[int] = set()

    def state_nbytes(self) -> int:
        """Bytes held by every stream's tracking state."""
        return sum(p.state_nbytes() for p in self._predictors.values())

    @torch.no_grad()
    def step(
        self, frames: Mapping[str, torch.Tensor], pyramids: Mapping[str, FeaturePyramid]
    ) -> dict[str, torch.Tensor]:
        """Masks of the objects on the next frame of every stream.

        Args:
            frames: ``{camera: (N, 3, H, W)}`` float in [0, 1] or uint8: the frames (their pixels
                are not encoded again; they fix the stream's frame size).
            pyramids: ``{camera: FeaturePyramid}`` of those ``N`` frames from the image encoder the
                tracker shares (``image_size`` of the tracker, ``s16_neck`` kept).

        Returns:
            ``{camera: (N, K, H, W) bool}``.

        Raises:
            KeyError: For a tracked camera missing from ``frames`` or ``pyramids``.
            ValueError: For a frame of another size, another number of rows than the running
                streams, or a row without prompts.
        """
        n = None
        for camera in self.frame_sizes:
            for name, table in (("frames", frames), ("pyramids", pyramids)):
                if camera not in table:
                    raise KeyError(f"ObjectTracker.step: {name} has no {camera!r}; tracked cameras: {self.cameras}")
            x = frames[camera]
            h, w = self.frame_sizes[camera]
            if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != (3, h, w):
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(f"ObjectTracker.step: frames[{camera!r}] is {shape}; expected (N, 3, {h}, {w})")
            rows = len(pyramids[camera].s16)
            if rows != len(x):
                raise ValueError(f"ObjectTracker.step: {camera!r} has {len(x)} frames but a pyramid of {rows}")
            if n is not None and len(x) != n:
                raise ValueError(f"ObjectTracker.step: cameras have different batch sizes ({n} and {len(x)})")
            n = len(x)
        assert n is not None
        if self._num_rows is None:
            self._num_rows = n
            self._restart = set(range(n))
        elif n != self._num_rows:
            raise ValueError(
                f"ObjectTracker.step: {n} rows, but the running streams have {self._num_rows}; call reset() first"
            )
        for row in sorted(self._restart):
            if not self.prompts(row):
                raise ValueError(
                    f"no object prompts for batch row {row}: set them (set_prompts / the policy's object_prompts) "
                    "before the first frame"
                )
        out = {}
        for camera in self.frame_sizes:
            masks = [self._row(row, camera, frames[camera][row], pyramids[camera]) for row in range(n)]
            out[camera] = torch.stack(masks)
        self._restart.clear()
        return out

    def _row(self, row: int, camera: str, frame: torch.Tensor, pyramid: FeaturePyramid) -> torch.Tensor:
        """``(K, H, W)`` bool masks of one stream's next frame."""
        image = _uint8_hwc(frame)
        features = pyramid.select(slice(row, row + 1))
        pred = self._predictors.get((row, camera))
        if pred is None or row in self._restart:
            if pred is None:
                pred = StreamingPredictor(self.variant, image_size=self.image_size, model=self.model)
                self._predictors[(row, camera)] = pred
            pred.reset()
            prompts = self.prompts(row)[camera]
            result = None
            for i, (obj_id, p) in enumerate(prompts.items()):
                kwargs = {"points": p.get("points"), "labels": p.get("labels"), "box": p.get("box")}
                if i == 0:  # the stream's first frame, with the policy's features: no encoder pass
                    result = pred.add_prompt(image, obj_id=obj_id, features=features, **kwargs)
                else:  # more objects on the same frame
                    result = pred.add_prompt(None, obj_id=obj_id, **kwargs)
        else:
            result = pred.track(image, features=features)
        assert result is not None
        ids = sorted(result.obj_ids)
        return torch.stack([result.mask(obj_id) for obj_id in ids])


def _uint8_hwc(frame: torch.Tensor) -> torch.Tensor:
    """``(3, H, W)`` float in [0, 1] or uint8 -> ``(H, W, 3)`` uint8 (what the predictor checks)."""
    if frame.dtype != torch.uint8:
        frame = (frame.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return frame.permute(1, 2, 0)
