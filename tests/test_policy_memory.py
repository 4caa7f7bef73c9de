"""Policy memory (memory="sam2"): SAM 2's memory bank conditions each camera on the episode's past.

- Training equals inference: a row's output computed from its bank frames in the batch equals the
  streaming output at the same frame (one new frame per call), within the trunk's batch-composition
  variance.
- The past reaches the output: with memory, a late frame's output changes when only the first
  frames change; without memory (or once the changed frames have left a bank without the first
  frame) it is exactly equal.
- The weights come from the full SAM 2 checkpoint, sit in the state dict and reload strictly
  without the file; streams restart at an episode start and on reset_memory().
"""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest
import torch

from sam2_encoder import MultiCameraEncoder
from sam2_encoder.config import MemoryConfig
from sam2_encoder.policy_memory import bank_frames, memory_key

from .conftest import perturb_

CAM, SIZE, TO = "cam", 64, 2
MASKS = "cam_masks"


def make(memory: str = "sam2", **options) -> MultiCameraEncoder:
    """A tiny memory encoder (seeded, perturbed memory weights: transformers zero-initialises some)."""
    options = {"image_size": SIZE, "pool": "avg", "n_obs_steps": TO, "memory_frames": 3, "memory_stride": 2, **options}
    enc = MultiCameraEncoder({CAM: (3, 48, 56)}, memory=memory, **options)
    if enc.memory is not None:
        perturb_(enc.memory, seed=1, scale=0.2)
    return enc.eval()


def episode(steps: int, seed: int) -> torch.Tensor:
    """``(steps, 3, 48, 56)`` frames in [0, 1]."""
    return torch.rand(steps, 3, 48, 56, generator=torch.Generator().manual_seed(seed))


def windows(frames: torch.Tensor) -> list[torch.Tensor]:
    """DP's windows of ``TO`` frames, the first frame repeated at the start: ``(TO, 3, H, W)`` per step."""
    return [torch.stack([frames[max(c - TO + 1 + t, 0)] for t in range(TO)]) for c in range(len(frames))]


def batch_of_windows(frames: torch.Tensor, enc: MultiCameraEncoder, masks: torch.Tensor | None = None) -> dict:
    """Every window of an episode as a training batch ``(steps, TO, ...)``, with each row's bank frames."""
    config = enc.config.policy_memory
    index = [[max(c - TO + 1 + t, 0) for t in range(TO)] for c in range(len(frames))]
    banks = [[bank_frames(i, config) for i in row] for row in index]
    obs = {CAM: frames[torch.tensor(index)], memory_key(CAM): frames[torch.tensor(banks)]}
    if masks is not None:
        obs[MASKS], obs[memory_key(MASKS)] = masks[torch.tensor(index)], masks[torch.tensor(banks)]
    return obs


def streamed(enc: MultiCameraEncoder, frames: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
    """``(steps, TO, D)``: one inference call per control step."""
    out = []
    with torch.no_grad():
        for c, window in enumerate(windows(frames)):
            obs = {CAM: window}
            if masks is not None:
                obs[MASKS] = torch.stack([masks[max(c - TO + 1 + t, 0)] for t in range(TO)])
            out.append(enc(obs))
    return torch.stack(out)


def trunk_rows(enc: MultiCameraEncoder) -> list[int]:
    rows: list[int] = []
    enc.encoder.vision_encoder.backbone.patch_embed.register_forward_hook(lambda m, i, o: rows.append(len(i[0])))
    return rows


def test_bank_frames_keep_the_first_frame_and_pad_with_it() -> None:
    """Slot order: first frame, then t - k * stride for k = 1..frames, clamped to frame 0."""
    config = MemoryConfig(memory="sam2", memory_frames=3, memory_stride=2)
    assert bank_frames(0, config) == [0, 0, 0, 0]
    assert bank_frames(3, config) == [0, 1, 0, 0]
    assert bank_frames(9, config) == [0, 7, 5, 3]
    assert bank_frames(9, MemoryConfig(memory="sam2", memory_frames=2, memory_keep_first=False)) == [8, 7]


@pytest.mark.parametrize("source", ["frame", "objects"])
def test_the_training_batch_equals_streaming_at_every_frame(source: str) -> None:
    """Training mode from the bank frames in the batch == one call per control step (trunk batch variance)."""
    options = {"object_masks_key": MASKS, "memory_source": "objects"} if source == "objects" else {}
    enc = make(**options)
    frames = episode(9, seed=0)
    masks = None
    if source == "objects":
        masks = (torch.rand(9, 1, 48, 56, generator=torch.Generator().manual_seed(5)) > 0.5).float()
    live = streamed(enc, frames, masks)
    enc.train()
    with torch.no_grad():
        trained = enc(batch_of_windows(frames, enc, masks))
    # Not bit-identical: the batch encodes 9 * 2 * 5 frames in one pass, streaming one per call, and the convs
    # of SAM 2's memory encoder round by batch composition (72 maps at once vs one at a time: 5.3e-5 on values
    # up to 89 on this CPU; the memory attention is batch-exact, the trunk 4e-7). Measured here: 1.9e-5
    # (whole-frame masks) and 6e-4 (random binary object masks, logits +-10) on outputs up to 4; 7e-7 for
    # both when the trunk and the memory encoder take one frame at a time.
    assert trained.shape == live.shape == (9, TO, enc.output_shape()[0])
    assert (trained - live).abs().max() < (1e-4 if source == "frame" else 2e-3)
    assert not torch.equal(live[5], live[6])


def test_a_late_frame_depends_on_the_cue_frames_only_with_memory() -> None:
    """Change frames 0-1 only: frame 8's output changes with memory; equal without, and without the first frame."""
    frames = episode(9, seed=0)
    cue = frames.clone()
    cue[:2] = episode(2, seed=7)
    for memory, keep_first, changes in (("sam2", True, True), ("none", True, False), ("sam2", False, False)):
        enc = make(memory, memory_keep_first=keep_first)  # 3 past frames, stride 2: frames 6, 4, 2 at frame 8
        a, b = streamed(enc, frames)[8, -1], streamed(enc, cue)[8, -1]  # frame 8, the window's newest row
        assert (not torch.equal(a, b)) is changes, (memory, keep_first)
        if not changes:
            assert torch.equal(a, b)
        else:
            assert (a - b).abs().max() > 1e-3


def test_streaming_encodes_one_frame_per_call_and_equals_no_frame_memo() -> None:
    """With memory, each call's trunk pass holds the stream's new frame only; reuse_frames changes nothing."""
    enc = make()
    plain = make(reuse_frames=False)
    plain.load_state_dict(enc.state_dict(), strict=True)
    rows = trunk_rows(enc)
    frames = episode(6, seed=2)
    assert torch.equal(streamed(enc, frames), streamed(plain, frames))
    assert rows == [1] * 6


def test_an_episode_start_and_reset_memory_start_the_bank_over() -> None:
    """A window of one repeated new frame restarts its stream; reset_memory() restarts every stream."""
    enc = make()
    first, second = episode(5, seed=3), episode(5, seed=4)
    fresh = streamed(make(), second)
    streamed(enc, first)
    assert torch.equal(streamed(enc, second), fresh)  # second episode: starts with its frame repeated
    streamed(enc, first)
    enc.reset_memory()
    assert torch.equal(streamed(enc, second[:1].repeat(5, 1, 1, 1)), streamed(make(), second[:1].repeat(5, 1, 1, 1)))


def test_a_window_that_skips_frames_is_refused() -> None:
    enc = make()
    frames = episode(6, seed=0)
    with torch.no_grad():
        enc({CAM: windows(frames)[0]})
        enc({CAM: windows(frames)[1]})
        with pytest.raises(
            ValueError, match=r"row 0 \(stream 0, t=0\) is not frame 1 of its stream.*one new frame per call"
        ):
            enc({CAM: windows(frames)[4]})


def test_training_needs_the_bank_frames_in_the_batch() -> None:
    enc = make().train()
    with pytest.raises(KeyError, match=r"obs_dict is missing 'cam_memory', the bank frames \(N, 4, 3, H, W\)"):
        enc({CAM: torch.rand(2, 3, 48, 56)})
    with pytest.raises(
        ValueError, match=r"obs_dict\['cam_memory'\] .* has shape \(2, 3, 3, 48, 56\); expected \(2, 4, 3, 48, 56\)"
    ):
        enc({CAM: torch.rand(2, 3, 48, 56), memory_key(CAM): torch.rand(2, 3, 3, 48, 56)})


def test_memory_weights_come_from_the_checkpoint_and_reload_without_it(present_checkpoint: Path, tmp_path) -> None:
    """memory.* holds the checkpoint's memory encoder / attention; a reload with the file gone is strict and equal."""
    from safetensors.torch import load_file

    enc = MultiCameraEncoder({CAM: (3, 48, 56)}, image_size=SIZE, memory="sam2", checkpoint=present_checkpoint).eval()
    file = load_file(str(present_checkpoint))
    state = enc.state_dict()
    for name, value in enc.memory.memory_attention.state_dict().items():
        assert torch.equal(value, file[f"memory_attention.{name}"])
    assert torch.equal(state["memory.temporal_encoding"], file["memory_temporal_positional_encoding"])
    assert not any(p.requires_grad for p in enc.memory.parameters()) and not enc.memory.train().training
    gone = tmp_path / "moved.safetensors"
    with pytest.warns(UserWarning):
        again = MultiCameraEncoder({CAM: (3, 48, 56)}, image_size=SIZE, memory="sam2", checkpoint=gone, seed=5)
    again.load_state_dict(state, strict=True)
    frames = episode(4, seed=1)
    assert torch.equal(streamed(enc, frames), streamed(again.eval(), frames))


def test_copies_hold_no_banks_and_give_the_same_outputs() -> None:
    enc = make()
    frames = episode(4, seed=1)
    expected = streamed(enc, frames)
    for clone in (copy.deepcopy(enc), pickle.loads(pickle.dumps(enc))):
        assert clone.memory_streams.streams == []
        assert torch.equal(streamed(clone, frames), expected)


def test_a_robot_at_rest_is_a_new_frame_and_memory_step_says_so_explicitly() -> None:
    """Equal consecutive frames are new frames (content rule: only the whole last window again is not);
    memory_step(True / False) overrides the rule for the next call; n_obs_steps=1 never restarts by itself
    (a one-row window cannot tell a repeated call from a robot at rest: the host says which)."""
    frames = episode(6, seed=6)
    frames[3] = frames[2]  # at rest
    reference = make()
    enc = make()
    assert torch.equal(streamed(enc, frames), streamed(reference, frames))
    rest = torch.stack([frames[5], frames[5]])
    with torch.no_grad():
        first = enc({CAM: rest})  # frame 6 == frame 5: new (the window differs from the last one)
        assert enc.memory_streams.streams[0].count == 7
        assert torch.equal(enc({CAM: rest}), first) and enc.memory_streams.streams[0].count == 7  # same window
        enc.memory_step(True)  # ... unless the host says it is a new control step
        stepped = enc({CAM: rest})
        assert enc.memory_streams.streams[0].count == 8 and not torch.equal(stepped[-1], first[-1])
        enc.memory_step(False)
        assert torch.equal(enc({CAM: rest}), stepped) and enc.memory_streams.streams[0].count == 8
    single = make(n_obs_steps=1)
    with torch.no_grad():
        outs = [single({CAM: frames[c : c + 1]}) for c in range(6)]
    assert single.memory_streams.streams[0].count == 5  # one-row windows: frame 3 == frame 2 is the same call again
    single.reset_memory()
    with torch.no_grad():
        for c in range(6):
            single.memory_step(True)  # the host's word: every call is a control step
            outs[c] = single({CAM: frames[c : c + 1]})
    assert single.memory_streams.streams[0].count == 6 and not torch.equal(outs[2], outs[3])
    with pytest.raises(ValueError, match="memory_step: this encoder has no policy memory"):
        make("none").memory_step()
