"""Policy memory with the object tracker (memory="sam2", object tokens, object_tracker=True, no masks in the obs).

- One trunk pass serves both: each new frame is encoded once, for the tracker and the memory bank.
- The spec: streaming with the tracker equals streaming with the tracker's masks (``tracked_masks``) given in
  the obs dict, bit-equal (the same computation: the memory stores the masks the tracker gives each frame with
  memory_source="objects", the whole frame with "frame"; the heads get those masks as object tokens); and
  training with those masks as the dataset's masks and the bank frames equals the tracked stream at every
  frame within tests/test_policy_memory.py's tolerance (the memory encoder's batch variance).
- An episode start (one repeated frame) and reset_objects() restart the tracker and the banks together
  (equal to a fresh encoder); reset_memory() restarts the banks only, still equal to the given-masks path.
- The frame memo is bypassed with memory: reuse_frames True / False give equal outputs and trunk frames.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from sam2_encoder import MultiCameraEncoder
from sam2_encoder.policy_memory import memory_key
from sam2_encoder.scene import synthetic_scene

from .test_policy_memory import batch_of_windows, windows

CAM, MASKS, SIZE, TO, H, W = "cam", "cam_masks", 64, 2, 48, 56
PROMPTS = {CAM: {1: {"points": [[20, 20]], "labels": [1]}, 2: {"box": [30, 10, 50, 40]}}}


def options(checkpoint: Path, source: str, **extra) -> dict:
    return dict(
        image_size=SIZE, pool="avg", n_obs_steps=TO, memory="sam2", memory_frames=3, memory_stride=2,
        memory_source=source, object_masks_key=MASKS, num_objects=2, object_token_dim=8, num_keypoints=8,
        checkpoint=checkpoint, **extra,
    )  # fmt: skip


def build(checkpoint: Path, source: str, **extra) -> tuple[MultiCameraEncoder, MultiCameraEncoder]:
    """A tracker + memory encoder (the checkpoint's seeded, perturbed weights) and the same weights without a
    tracker (masks must come in the obs dict)."""
    enc = MultiCameraEncoder(
        {CAM: (3, H, W)}, object_tracker=True, object_prompts=PROMPTS, **options(checkpoint, source, **extra)
    )
    ref = MultiCameraEncoder({CAM: (3, H, W)}, **options(checkpoint, source, reuse_frames=False))
    ref.load_state_dict({k: v for k, v in enc.state_dict().items() if not k.startswith("tracker.")}, strict=True)
    return enc.eval(), ref.eval()


@pytest.fixture(scope="module", params=["objects", "frame"])
def encoders(request, present_checkpoint: Path) -> tuple[MultiCameraEncoder, MultiCameraEncoder]:
    return build(present_checkpoint, request.param)


def video(steps: int, seed: int) -> torch.Tensor:
    """``(steps, 3, H, W)`` in [0, 1]: a scene panning right by one pixel per frame."""
    base = synthetic_scene(H, W + steps, seed=seed)
    frames = [torch.from_numpy(np.ascontiguousarray(base[:, i : i + W])).permute(2, 0, 1) for i in range(steps)]
    return torch.stack(frames).float() / 255


def trunk_frames(enc: MultiCameraEncoder) -> list[int]:
    rows: list[int] = []
    enc.encoder.vision_encoder.backbone.patch_embed.register_forward_pre_hook(lambda m, i: rows.append(len(i[0])))
    return rows


def tracked_stream(
    enc: MultiCameraEncoder, frames: torch.Tensor, ref: MultiCameraEncoder | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(steps, TO, D)`` outputs and ``(steps, K, H, W)`` each frame's tracked masks; one call per control step.

    With ``ref``: every call is checked bit-equal to ``ref`` given the tracker's masks in the obs dict.
    """
    out, masks = [], []
    with torch.no_grad():
        for window in windows(frames):
            out.append(enc({CAM: window}))
            masks.append(enc.tracked_masks[CAM][-1])
            if ref is not None:
                given = ref({CAM: window, MASKS: enc.tracked_masks[CAM].float()})
                assert torch.equal(out[-1], given), (len(out) - 1, (out[-1] - given).abs().max())
    return torch.stack(out), torch.stack(masks)


def test_tracked_memory_equals_memory_given_the_tracked_masks_one_trunk_pass_per_frame(encoders) -> None:
    """Bit-equal to the given-masks memory path at every call; one trunk frame per new frame (tracker + bank)."""
    enc, ref = copy.deepcopy(encoders[0]), copy.deepcopy(encoders[1])
    rows = trunk_frames(enc)
    frames = video(6, seed=1)
    _, masks = tracked_stream(enc, frames, ref)
    assert 0 < masks.float().mean() < 1, "objects and background: the stored masks are not the whole frame"
    assert rows == [1] * 6, "the episode start's repeated frame once, then one new frame per call"
    assert enc.memory_streams.streams[0].count == 6
    window = frames[-1:].repeat(TO, 1, 1, 1)  # frame 6 == frame 5
    with torch.no_grad():  # a robot at rest, a new control step: the tracker copies frame 5, the bank encodes it
        enc.memory_step(True)
        ref.memory_step(True)
        assert torch.equal(enc({CAM: window}), ref({CAM: window, MASKS: enc.tracked_masks[CAM].float()}))
    assert rows == [1] * 7 and enc.memory_streams.streams[0].count == 7


def test_training_on_the_tracked_masks_equals_the_tracked_stream_at_every_frame(encoders) -> None:
    """The dataset's masks = the tracker's: training mode with the bank frames == streaming with the tracker."""
    enc = copy.deepcopy(encoders[0])
    frames = video(9, seed=2)
    live, masks = tracked_stream(enc, frames)
    enc.train()
    with torch.no_grad():
        trained = enc(batch_of_windows(frames, enc, masks.float()))
    objects = enc.config.policy_memory.memory_source == "objects"
    assert trained.shape == live.shape == (9, TO, enc.output_shape()[0])
    assert (trained - live).abs().max() < (2e-3 if objects else 1e-4)  # test_policy_memory's tolerance
    assert not torch.equal(live[5], live[6])


def test_an_episode_start_and_reset_objects_restart_tracker_and_memory_together(encoders) -> None:
    """A new episode (its first frame repeated) or reset_objects(): the run equals a fresh encoder's;
    reset_memory() restarts the banks only, and the run still equals the given-masks path."""
    enc, ref = copy.deepcopy(encoders[0]), copy.deepcopy(encoders[1])
    first, second = video(5, seed=3), video(5, seed=4)
    fresh = tracked_stream(copy.deepcopy(encoders[0]), second)
    tracked_stream(enc, first)
    for got, expected in zip(tracked_stream(enc, second), fresh):  # the episode start restarts both
        assert torch.equal(got, expected)
    tracked_stream(enc, first[:3])
    enc.reset_objects()
    for got, expected in zip(tracked_stream(enc, second[2:]), tracked_stream(copy.deepcopy(encoders[0]), second[2:])):
        assert torch.equal(got, expected)
    tracked_stream(enc, first[:3], ref)
    enc.reset_memory()
    ref.reset_memory()
    with torch.no_grad():  # the banks start over on this window (one repeated frame), the tracker keeps tracking
        window = first[3:4].repeat(TO, 1, 1, 1)
        assert torch.equal(enc({CAM: window}), ref({CAM: window, MASKS: enc.tracked_masks[CAM].float()}))
    assert enc.memory_streams.streams[0].count == 1


def test_reuse_frames_changes_neither_outputs_nor_trunk_frames_with_memory_and_the_tracker(
    encoders, present_checkpoint: Path
) -> None:
    """The frame memo is bypassed with memory (the banks keep the older rows' maps): equal with and without it."""
    enc = copy.deepcopy(encoders[0])
    plain, _ = build(present_checkpoint, enc.config.policy_memory.memory_source, reuse_frames=False)
    plain.load_state_dict(enc.state_dict(), strict=True)
    counts = trunk_frames(enc), trunk_frames(plain)
    frames = video(5, seed=5)
    for got, expected in zip(tracked_stream(enc, frames), tracked_stream(plain, frames)):
        assert torch.equal(got, expected)
    assert counts[0] == counts[1] == [1] * 5


def test_bank_frames_in_a_tracked_call_are_refused(encoders) -> None:
    enc = copy.deepcopy(encoders[0])
    obs = {CAM: torch.rand(TO, 3, H, W), memory_key(CAM): torch.rand(TO, 4, 3, H, W)}
    with torch.no_grad(), pytest.raises(ValueError, match=r"bank frames 'cam_memory' but no object masks 'cam_masks'"):
        enc(obs)
