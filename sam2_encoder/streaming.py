"""Streaming SAM 2 video tracking with bounded memory: prompt once, then ``track()`` per live frame.

:class:`StreamingPredictor` drives transformers' ``Sam2VideoModel`` and its
``Sam2VideoInferenceSession`` in streaming mode (a session without a video, one
``model(inference_session=..., frame_idx=..., frame=...)`` call per frame); the tracking logic is
transformers' own. What this module adds:

* **Bounded state.** After every frame it drops what SAM 2 can no longer read
  (:func:`~sam2_encoder.session_memory.prune_session`): past pixels, emitted low-res and full-size
  masks, memory features of non-conditioning frames older than ``num_maskmem - 1`` frames, whole
  non-conditioning entries older than ``max_object_pointers_in_encoder - 1`` frames and stale
  per-frame bookkeeping. It keeps
  every conditioning (prompted) frame, or the memory features of only the closest
  ``max_cond_frame_num`` of them when that limit is set (their object pointers are always read).
  The session then stays at a constant size however long the stream runs, and every output is
  bit-identical to transformers' unpruned session.
* **One encoder pass per frame.** Frames are preprocessed by :class:`SAM2Transforms` and encoded
  by :class:`SAM2ImageEncoder` sharing the video model's vision weights; the features are handed
  to the session through its per-frame vision-feature cache
  (:class:`~sam2_encoder.session_features.SessionFeatures`), so the session never runs the vision
  encoder itself. A caller that already encoded the frame (a policy) passes its
  :class:`FeaturePyramid` and no encoder runs at all; ``return_features=True`` hands the tracker's
  pyramid to the policy instead.
* Prompts in frame pixel coordinates, results at the frame's resolution, and clear errors.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import Sam2VideoModel

from ._hf import Sam2VideoInferenceSession, VideoSessionState
from .checkpoints import check_state_dict, load_checkpoint, resolve_checkpoint
from .image_encoder import FeaturePyramid, SAM2ImageEncoder, build_seeded
from .prompts import object_id
from .session_features import SessionFeatures, SessionLevels
from .session_inputs import ArrayLike, check_frame, prompt_inputs, record_inputs
from .session_memory import prune_session, session_nbytes
from .variants import Variant, check_image_size, get_variant

__all__ = ["StreamingPredictor", "TrackResult", "session_nbytes"]


@dataclass
class TrackResult:
    """The tracker's output for one frame.

    Attributes:
        frame_idx: Index of the frame in the stream (0 for the first frame).
        obj_ids: Ids of the tracked objects, in the order of the other fields' first axis.
        masks: ``(N, H, W)`` bool masks at the input frame's resolution (logits > 0).
        mask_logits: ``(N, S/4, S/4)`` low-resolution mask logits for encoder input size ``S``.
        scores: ``(N,)`` object score logits: above 0 means SAM 2 thinks the object is visible.
        features: The frame's :class:`FeaturePyramid` (``s4 (1, 32, S/4, S/4)``,
            ``s8 (1, 64, S/8, S/8)``, ``s16 (1, 256, S/16, S/16)``) when asked for with
            ``return_features=True``; else ``None``.
    """

    frame_idx: int
    obj_ids: list[int]
    masks: torch.Tensor
    mask_logits: torch.Tensor
    scores: torch.Tensor
    features: FeaturePyramid | None = None

    @classmethod
    def from_logits(
        cls,
        frame_idx: int,
        obj_ids: list[int],
        logits: torch.Tensor,
        scores: torch.Tensor,
        frame_size: tuple[int, int],
        features: FeaturePyramid | None = None,
    ) -> TrackResult:
        """A frame's result from the session's ``(N, 1, S/4, S/4)`` mask logits and ``N`` score logits.

        The masks are the logits upsampled (bilinear) to ``frame_size`` and thresholded at 0.
        """
        with torch.inference_mode():
            masks = F.interpolate(logits.float(), size=frame_size, mode="bilinear", align_corners=False) > 0
        return cls(
            frame_idx=frame_idx,
            obj_ids=obj_ids,
            masks=masks[:, 0],
            mask_logits=logits[:, 0],
            scores=scores.reshape(-1),
            features=features,
        )

    def mask(self, obj_id: int) -> torch.Tensor:
        """The ``(H, W)`` bool mask of one object.

        Raises:
            KeyError: If the object is not tracked.
        """
        if obj_id not in self.obj_ids:
            raise KeyError(f"object {obj_id} is not in this result; tracked objects: {self.obj_ids}")
        return self.masks[self.obj_ids.index(obj_id)]


class StreamingPredictor:
    """Prompt objects on a live frame, then track them frame by frame at constant memory.

    Args:
        variant: A released model name (``"sam2.1_hiera_tiny"``; see ``variants.VARIANTS``).
        checkpoint: Meta ``.pt`` / safetensors / HF folder path, URL, variant name or hub id (see
            :func:`sam2_encoder.checkpoints.resolve_checkpoint`), or ``None`` for seeded random
            weights (a warning is issued).
        image_size: Encoder input side ``S`` (square, a multiple of 32). Frames of any size are
            resized to it; masks come back at the frame's size.
        device: Where the model and the tracking state live.
        dtype: Weight and state dtype (``torch.float32`` by default).
        precision: ``"fp32"`` (default) or ``"bf16"``: encode frames with the Hiera trunk under
            bfloat16 autocast (see :class:`SAM2ImageEncoder`; needs native bf16, else
            ``ValueError``); tracking itself stays in ``dtype``.
        channel_order: ``"RGB"`` or ``"BGR"`` (OpenCV frames).
        seed: Seed of the random initialisation when ``checkpoint`` is ``None``.
        download: Allow downloading a remote checkpoint that is not cached yet.
        model: An existing transformers ``Sam2VideoModel`` built for ``image_size`` to use (weights
            shared) instead of building one; ``checkpoint`` is then ignored.

    Example:
        >>> pred = StreamingPredictor("sam2.1_hiera_tiny", checkpoint="sam2.1_hiera_tiny")  # doctest: +SKIP
        >>> pred.add_prompt(frame0, obj_id=1, points=[[320, 240]], labels=[1])  # doctest: +SKIP
        >>> for frame in camera:  # doctest: +SKIP
        ...     res = pred.track(frame)  # res.masks: (N, H, W) bool
    """

    def __init__(
        self,
        variant: str | Variant = "sam2.1_hiera_tiny",
        checkpoint: str | os.PathLike[str] | None = None,
        image_size: int = 1024,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        channel_order: str = "RGB",
        seed: int = 0,
        download: bool = True,
        model: Sam2VideoModel | None = None,
        precision: str = "fp32",
    ) -> None:
        self.variant = get_variant(variant)
        height, width = check_image_size(image_size)
        if height != width:
            raise ValueError(f"the video model needs a square image_size, got {image_size!r}")
        self.image_size = height
        if model is None:
            model = load_video_model(self.variant, self.image_size, checkpoint, seed, download)
        elif model.config.image_size != self.image_size:
            raise ValueError(
                f"model was built for image_size {model.config.image_size}, but image_size={self.image_size} was asked"
            )
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        if dtype is not None:
            model.to(dtype)
        if device is not None:
            model.to(device)
        self.model: Sam2VideoModel = model.eval().requires_grad_(False)
        self.encoder = SAM2ImageEncoder(
            self.variant,
            image_size=self.image_size,
            model=model,
            device=self.device,
            freeze=True,
            channel_order=channel_order,
            precision=precision,
        )
        self._frame_features = SessionFeatures(model, self.encoder, self.image_size)
        # Stands in for the frame's pixels in the session: features go through the session's vision
        # cache, so the pixels are never read (an empty tensor makes any read fail loudly).
        self._no_pixels = torch.empty(0, device=self.device, dtype=self.dtype)
        self.reset()

    # ----------------------------------------------------------------------------------------
    # properties
    # ----------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """Device of the model and the tracking state."""
        return self.model.no_memory_embedding.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the model and the tracking state."""
        return self.model.no_memory_embedding.dtype

    @property
    def num_maskmem(self) -> int:
        """Memory frames SAM 2 attends to: the conditioning ones plus the last ``num_maskmem - 1``."""
        return self.model.config.num_maskmem

    @property
    def max_object_pointers(self) -> int:
        """Object pointers SAM 2 reads: all conditioning frames' plus the last ``max_object_pointers - 1``."""
        return self.model.config.max_object_pointers_in_encoder

    @property
    def max_cond_frames(self) -> int:
        """How many conditioning frames' memories are attended to (``-1``: all)."""
        return self.model.config.max_cond_frame_num

    @property
    def obj_ids(self) -> list[int]:
        """Ids of the objects being tracked, in output order."""
        return list(self.session.obj_ids)

    @property
    def frame_idx(self) -> int | None:
        """Index of the last processed frame, or ``None`` before the first one."""
        return self._frame_idx

    @property
    def frame_size(self) -> tuple[int, int] | None:
        """``(H, W)`` of the stream's frames, fixed by the first frame; ``None`` before it."""
        return self._frame_size

    # ----------------------------------------------------------------------------------------
    # public API
    # ----------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every object, prompt and frame; the next frame starts a new stream at index 0."""
        self.session = Sam2VideoInferenceSession(
            inference_device=self.device,
            inference_state_device=self.device,
            video_storage_device=self.device,
            dtype=self.dtype,
        )
        self._state = VideoSessionState(self.session)
        self._frame_idx: int | None = None
        self._frame_size: tuple[int, int] | None = None

    def add_prompt(
        self,
        frame: ArrayLike | None = None,
        obj_id: int = 1,
        points: ArrayLike | None = None,
        labels: ArrayLike | None = None,
        box: ArrayLike | None = None,
        mask: ArrayLike | None = None,
        *,
        clear_old_points: bool = True,
        features: FeaturePyramid | None = None,
        return_features: bool = False,
    ) -> TrackResult:
        """Prompt an object and segment the frame.

        With ``frame`` given, the frame is the stream's next frame: it becomes a conditioning
        frame for ``obj_id`` (a new object, or a re-prompt of a tracked one) and every other
        object is tracked on it. With ``frame=None`` the prompt refines the current (last
        processed) frame: a correction click on a tracked object, or another object prompted on
        the same frame. Either way the frame's masks for all objects are returned.

        Args:
            frame: ``(H, W, 3)`` uint8 frame (numpy or torch), or ``None`` for the current frame.
            obj_id: Any integer naming the object.
            points: ``(K, 2)`` click coordinates ``(x, y)`` in frame pixels.
            labels: ``(K,)`` labels, 1 for the object and 0 for background; all 1 when omitted.
            box: ``(4,)`` box ``(x0, y0, x1, y1)`` in frame pixels (may be combined with points).
            mask: ``(H, W)`` bool mask at the frame's size (not combined with points or a box).
            clear_old_points: Replace this object's earlier points on the same frame (``True``)
                or add to them (``False``, for accumulating correction clicks; not with a box).
            features: The frame's pyramid from a :class:`SAM2ImageEncoder` at the same
                ``image_size`` (batch 1), to skip the encoder. Only with a new ``frame``.
            return_features: Return the frame's pyramid in the result.

        Returns:
            The frame's :class:`TrackResult`.

        Raises:
            ValueError: For an empty prompt, a prompt outside the frame, a mask of the wrong
                size, labels that do not match the points, a frame of another size than the
                stream's, or ``frame=None`` before any frame.
            TypeError: For a frame that is not ``(H, W, 3)`` uint8.
        """
        try:
            obj_id = object_id(obj_id, "obj_id")
        except ValueError as e:
            raise TypeError(str(e)) from None
        if frame is None:
            frame_idx, frame_size = self._current_frame(features)
        else:
            frame_size = check_frame(frame, self._frame_size)
            frame_idx = 0 if self._frame_idx is None else self._frame_idx + 1
        prompt = prompt_inputs(
            obj_id, frame_size, points, labels, box, mask, clear_old_points, self.image_size, self.device
        )
        encoded = None if frame is None else self._frame_features.encode(frame, features, return_features)
        record_inputs(self.session, self._state, obj_id, frame_idx, prompt)
        return self._step(frame_idx, frame_size, encoded, return_features)

    def track(
        self,
        frame: ArrayLike,
        features: FeaturePyramid | None = None,
        return_features: bool = False,
    ) -> TrackResult:
        """Track every prompted object on the stream's next frame.

        Args:
            frame: ``(H, W, 3)`` uint8 frame (numpy or torch) of the stream's size, in the
                predictor's ``channel_order``.
            features: The frame's pyramid from a :class:`SAM2ImageEncoder` at the same
                ``image_size`` (batch 1): the encoder is skipped. ``s16`` carries the no-memory
                embedding, which is subtracted again, so results can differ from the tracker's own
                encoding at the float-rounding level (masks agree in practice).
            return_features: Return the frame's pyramid in the result (for a policy).

        Returns:
            The frame's :class:`TrackResult`.

        Raises:
            RuntimeError: If no object was prompted yet.
            ValueError: If the frame's size differs from the stream's, or ``features`` do not fit.
            TypeError: For a frame that is not ``(H, W, 3)`` uint8.
        """
        if not self.session.obj_ids:
            raise RuntimeError(
                "track() needs at least one object: call add_prompt(frame, obj_id=..., points=... | box=... | "
                "mask=...) first" + (" (every object was removed)" if self._frame_idx is not None else "")
            )
        frame_size = check_frame(frame, self._frame_size)
        assert self._frame_idx is not None
        frame_idx = self._frame_idx + 1
        encoded = self._frame_features.encode(frame, features, return_features)
        return self._step(frame_idx, frame_size, encoded, return_features)

    def remove_object(self, obj_id: int) -> None:
        """Stop tracking an object and free its state.

        Raises:
            KeyError: If the object is not tracked.
        """
        if not self._state.has_object(obj_id):
            raise KeyError(f"object {obj_id} is not tracked; tracked objects: {self.obj_ids}")
        self._state.remove_object(obj_id)

    def state_nbytes(self) -> int:
        """Bytes held by the tracking session's tensors (features, memories, pointers, prompts)."""
        return session_nbytes(self.session)

    # ----------------------------------------------------------------------------------------
    # internals
    # ----------------------------------------------------------------------------------------

    def _current_frame(self, features: FeaturePyramid | None) -> tuple[int, tuple[int, int]]:
        """The current frame's index and ``(H, W)``, for a prompt that refines it (``frame=None``)."""
        if self._frame_idx is None or self._frame_size is None:
            raise ValueError(
                "add_prompt(frame=None) refines the current frame, but no frame was processed yet; "
                "pass the first frame: add_prompt(frame, obj_id=..., points=...)"
            )
        if features is not None:
            raise ValueError("features belong to a new frame; the current frame is already encoded")
        return self._frame_idx, self._frame_size

    def _step(
        self,
        frame_idx: int,
        frame_size: tuple[int, int],
        encoded: tuple[SessionLevels, FeaturePyramid | None] | None,
        return_features: bool,
    ) -> TrackResult:
        """Run the session on a frame (new when ``encoded`` is given, else the current one)."""
        session = self.session
        pyramid = None
        if encoded is not None:
            levels, pyramid = encoded
            self._frame_features.store(self._state, frame_idx, levels)
            self._frame_size = frame_size
            self._frame_idx = frame_idx
        elif return_features:
            pyramid = self._frame_features.pyramid(self._state, frame_idx)
        # `frame` keeps the session in streaming mode; frame_idx is explicit because pruning
        # empties the session's frame store.
        out = self.model(inference_session=session, frame_idx=frame_idx, frame=self._no_pixels)
        prune_session(self._state, frame_idx, self.num_maskmem, self.max_object_pointers, self.max_cond_frames)
        return TrackResult.from_logits(
            frame_idx, list(out.object_ids), out.pred_masks, out.object_score_logits, frame_size, pyramid
        )


def load_video_model(
    variant: Variant, image_size: int, checkpoint: str | os.PathLike[str] | None, seed: int, download: bool
) -> Sam2VideoModel:
    """A ``Sam2VideoModel`` for ``variant`` at ``image_size``, with a checkpoint's weights loaded strictly.

    Args:
        variant: The released model.
        image_size: The encoder input side ``S`` (square).
        checkpoint: What :func:`~sam2_encoder.checkpoints.resolve_checkpoint` takes, or ``None`` for
            seeded random weights (a warning names the seed).
        seed: Seed of the random initialisation.
        download: Allow downloading a remote checkpoint that is not cached yet.

    Raises:
        FileNotFoundError: If the checkpoint is not found (or not downloaded, with ``download=False``).
        CheckpointError: If it is not a valid SAM 2 checkpoint, or its weights do not fit the variant.
    """
    config = variant.video_model_config(image_size)
    model = build_seeded(lambda: Sam2VideoModel(config), seed)
    if checkpoint is None:
        warnings.warn(
            f"StreamingPredictor({variant.name!r}) has no checkpoint: using seeded random weights "
            f"(seed={seed}); pass checkpoint=... for meaningful masks",
            stacklevel=3,
        )
        return model
    path = resolve_checkpoint(checkpoint, download_missing=download)
    state = load_checkpoint(path, variant=variant)
    check_state_dict(state, model.state_dict(), variant, source=str(path))
    model.load_state_dict(state, strict=True)
    return model
