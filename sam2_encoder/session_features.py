"""A stream's frames as a SAM 2 video session's vision features: encode once, hand over, read back.

The session never runs its vision encoder: :class:`SessionFeatures` encodes each new frame with a
:class:`~sam2_encoder.image_encoder.SAM2ImageEncoder` sharing the video model's weights (or takes a
caller's :class:`~sam2_encoder.image_encoder.FeaturePyramid`), flattens the levels to the layout of
the session's per-frame vision-feature cache and stores them there with the coarsest level's
position encoding. The current frame's pyramid can be rebuilt from that cache for a caller.

Used by :class:`~sam2_encoder.streaming.StreamingPredictor`.
"""

from __future__ import annotations

import torch
from transformers import Sam2VideoModel

from ._hf import VideoSessionState
from .image_encoder import FeaturePyramid, SAM2ImageEncoder
from .session_inputs import ArrayLike

__all__ = ["SessionFeatures", "SessionLevels"]

SessionLevels = list[torch.Tensor]
"""``[s4 (HW, 1, 32), s8 (HW, 1, 64), s16 (HW, 1, 256)]``: a frame's levels as the session stores them
(``s16`` without the no-memory embedding), each flattened to ``(h*w, 1, C)``."""


class SessionFeatures:
    """Encode a stream's frames into the session's vision-feature cache, and read them back as a pyramid.

    Args:
        model: The ``Sam2VideoModel`` the session runs (its no-memory embedding and neck position
            encoding are read; its device and dtype are the features').
        encoder: A :class:`SAM2ImageEncoder` sharing ``model``'s vision weights, built for ``image_size``.
        image_size: The encoder input side ``S`` (square).
    """

    def __init__(self, model: Sam2VideoModel, encoder: SAM2ImageEncoder, image_size: int) -> None:
        self.model = model
        self.encoder = encoder
        self.image_size = image_size
        # The session reads the position encoding of the coarsest level only (memory attention); it
        # depends on the shape alone, so it is computed once instead of per frame.
        side = image_size // 16
        with torch.inference_mode():
            pos = model.vision_encoder.neck.position_encoding(torch.Size((1, 256, side, side)), self.device, self.dtype)
            self.s16_pos = pos.to(self.dtype).flatten(2).permute(2, 0, 1)

    @property
    def device(self) -> torch.device:
        """Device of the model and of the features."""
        return self.model.no_memory_embedding.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the model and of the features."""
        return self.model.no_memory_embedding.dtype

    def encode(
        self, frame: ArrayLike, features: FeaturePyramid | None, return_features: bool
    ) -> tuple[SessionLevels, FeaturePyramid | None]:
        """The session's vision features of a new frame, and its pyramid if asked for.

        Args:
            frame: ``(H, W, 3)`` uint8 frame (already checked), encoded unless ``features`` is given.
            features: The frame's pyramid (batch 1) from a :class:`SAM2ImageEncoder` at the same
                ``image_size``, or ``None`` to encode ``frame``.
            return_features: Also return the pyramid.

        Returns:
            ``(levels, pyramid)``: the :data:`SessionLevels`, and the pyramid or ``None``.

        Raises:
            TypeError: If ``features`` is not a :class:`FeaturePyramid`.
            ValueError: If ``features`` do not have one frame's shapes at ``image_size``.
        """
        with torch.inference_mode():
            if features is None:
                pyramid = self.encoder.encode(self.encoder.transforms(frame).to(self.dtype))
            else:
                pyramid = self.check(features)
            s16 = pyramid.s16_neck
            if s16 is None:  # a pyramid from elsewhere: undo the no-memory embedding (exact up to an ulp)
                s16 = pyramid.s16 - self.model.no_memory_embedding.view(1, -1, 1, 1).to(pyramid.s16.dtype)
        levels = [level.flatten(2).permute(2, 0, 1) for level in (pyramid.s4, pyramid.s8, s16)]
        return levels, (pyramid if return_features else None)

    def check(self, features: FeaturePyramid) -> FeaturePyramid:
        """A caller's pyramid of one frame on the model's device and dtype, owning its storage.

        Raises:
            TypeError: If ``features`` is not a :class:`FeaturePyramid`.
            ValueError: If its shapes are not one frame's at ``image_size``.
        """
        if not isinstance(features, FeaturePyramid):
            raise TypeError(f"features must be a FeaturePyramid from SAM2ImageEncoder, got {type(features).__name__}")
        expected = {name: (1, *shape) for name, shape in self.encoder.feature_shapes().items()}
        got = features.shapes
        if got != expected:
            raise ValueError(
                f"features do not fit this predictor (image_size={self.image_size}, one frame): got shapes {got}, "
                f"expected {expected}; encode the frame with SAM2ImageEncoder(image_size={self.image_size}) and pass "
                "pyramid.select(slice(i, i + 1)) for frame i of a batch"
            )

        def own(level: torch.Tensor) -> torch.Tensor:
            level = level.to(self.device, self.dtype)
            if level.untyped_storage().nbytes() > level.nbytes:
                level = level.clone()  # a slice of a batch: do not keep the whole batch alive in the session
            return level

        return features.map(own)

    def store(self, state: VideoSessionState, frame_idx: int, levels: SessionLevels) -> None:
        """Hand a frame's levels to the session's vision-feature cache, so its model skips the encoder."""
        state.cache_features(frame_idx, {"vision_feats": levels, "vision_pos_embeds": [None, None, self.s16_pos]})

    def pyramid(self, state: VideoSessionState, frame_idx: int) -> FeaturePyramid:
        """The features the session holds for a frame, as a pyramid (``s16`` with the no-memory embedding)."""
        cached = state.cached_features(frame_idx)
        side = self.image_size
        maps = []
        for level, stride in zip(cached["vision_feats"], (4, 8, 16)):
            maps.append(level.permute(1, 2, 0).reshape(1, -1, side // stride, side // stride))
        neck = maps[2]
        with torch.inference_mode():
            maps[2] = neck + self.model.no_memory_embedding.view(1, -1, 1, 1).to(neck.dtype)
        return FeaturePyramid(*maps, s16_neck=neck)
