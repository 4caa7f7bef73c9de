"""Object tokens at inference without masks in the obs: the obs encoder's own tracker (object_tracker=True).

Masks equal standalone StreamingPredictors fed the same frames; outputs equal the encoder given those masks;
one trunk pass per new frame (DP's (B, To) rows, sliding and skipping windows, repeated first frames);
stream restarts; crops; strict reload without the SAM 2 file; EMA deep copies; one clear error per bad input.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Sam2VideoModel

from sam2_encoder.checkpoints import CheckpointError
from sam2_encoder.diffusion_policy.obs_encoder import SAM2ObsEncoder
from sam2_encoder.scene import synthetic_scene
from sam2_encoder.streaming import StreamingPredictor

SIZE = 64
VARIANT = "sam2.1_hiera_tiny"
H, W = 48, 80
TO = 2
PROMPTS = {"image": {1: {"points": [[20, 20]], "labels": [1]}, 2: {"box": [40, 10, 75, 40]}}}
OTHER = {"image": {"3": {"points": [[60, 30], [10, 40]], "labels": [1, 0]}, "7": {"box": [2, 2, 30, 30]}}}
META = {
    "obs": {
        "image": {"shape": [3, H, W], "type": "rgb"},
        "image_masks": {"shape": [2, H, W], "type": "mask", "camera": "image"},
        "agent_pos": {"shape": [2], "type": "low_dim"},
    },
    "action": {"shape": [2]},
}


def video(n: int, seed: int = 1) -> list[np.ndarray]:
    """``n`` distinct (H, W, 3) uint8 frames of a scene panning right by one pixel per frame."""
    base = synthetic_scene(H, W + n, seed=seed)
    return [np.ascontiguousarray(base[:, i : i + W]) for i in range(n)]


def dp_obs(windows: list[list[np.ndarray]]) -> dict[str, torch.Tensor]:
    """What DP's predict_action hands the obs encoder: (B * To) rows b * To + t, images in [-1, 1]."""
    frames = [torch.from_numpy(f).permute(2, 0, 1) for window in windows for f in window]
    image = torch.stack(frames).float() / 255 * 2 - 1
    pos = torch.linspace(-1, 1, len(frames) * 2).reshape(len(frames), 2)
    return {"image": image, "agent_pos": pos}


def build(checkpoint, **kwargs) -> SAM2ObsEncoder:
    options = {"object_tracker": True, "object_prompts": PROMPTS, "n_obs_steps": TO, **kwargs}
    if not options["object_tracker"]:
        options = {k: v for k, v in options.items() if k not in ("object_tracker", "object_prompts")}
    enc = SAM2ObsEncoder(META, checkpoint=checkpoint, image_size=SIZE, num_keypoints=8, object_token_dim=16, **options)
    return enc.eval()


@pytest.fixture(scope="module")
def encoder(present_checkpoint: Path) -> SAM2ObsEncoder:
    return build(present_checkpoint)


def standalone(enc: SAM2ObsEncoder) -> StreamingPredictor:
    """A predictor with its own copy of the same SAM 2 weights, encoding every frame itself."""
    model = Sam2VideoModel(enc.tracker.model.config)
    model.load_state_dict(enc.tracker.model.state_dict())
    return StreamingPredictor(VARIANT, image_size=SIZE, model=model)


def prompted(pred: StreamingPredictor, frame: np.ndarray, prompts: dict) -> torch.Tensor:
    res = None
    for i, (obj_id, p) in enumerate(sorted(prompts.items(), key=lambda kv: int(kv[0]))):
        res = pred.add_prompt(frame if i == 0 else None, obj_id=int(obj_id), **p)
    return torch.stack([res.mask(i) for i in sorted(res.obj_ids)])


def tracked(pred: StreamingPredictor, frame: np.ndarray) -> torch.Tensor:
    res = pred.track(frame)
    return torch.stack([res.mask(i) for i in sorted(res.obj_ids)])


def trunk_calls(enc: SAM2ObsEncoder) -> list[int]:
    calls: list[int] = []
    enc.encoder.vision_encoder.backbone.patch_embed.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    return calls


def reference(enc: SAM2ObsEncoder, checkpoint: Path, **kwargs) -> SAM2ObsEncoder:
    """The same encoder without a tracker and without frame reuse: masks must come in the obs dict."""
    ref = build(checkpoint, object_tracker=False, reuse_frames=False, **kwargs)
    ref.load_state_dict({k: v for k, v in enc.state_dict().items() if not k.startswith("tracker.")}, strict=True)
    return ref


def test_masks_equal_standalone_predictors_outputs_equal_given_masks_one_pass_per_new_frame(
    present_checkpoint: Path,
) -> None:
    enc = build(present_checkpoint)
    enc.set_object_prompts(OTHER, row=1)  # a second environment with its own objects
    ref = reference(enc, present_checkpoint)
    streams = [video(4, seed=1), video(4, seed=2)]
    preds = [standalone(enc), standalone(enc)]
    calls = trunk_calls(enc)
    expected: list[list[torch.Tensor]] = [[], []]
    worst = 0.0
    for k in range(4):  # a robot loop: the window slides by one frame per call, the first frame repeated at k=0
        windows = [[s[max(k - 1, 0)], s[k]] for s in streams]
        obs = dp_obs(windows)
        with torch.no_grad():
            out = enc(obs)
            given = ref({**obs, "image_masks": enc.tracked_masks["image"]})
        for b, (pred, prompts) in enumerate(zip(preds, (PROMPTS, OTHER))):
            frame = streams[b][k]
            expected[b].append(prompted(pred, frame, prompts["image"]) if k == 0 else tracked(pred, frame))
            window = torch.stack([expected[b][max(k - 1, 0)], expected[b][k]])
            assert torch.equal(enc.tracked_masks["image"][b * TO : (b + 1) * TO], window), (k, b)
        assert out.shape == (4, enc.output_shape()[0])
        worst = max(worst, (out - given).abs().max().item())
        assert torch.allclose(out, given, rtol=0, atol=1e-5), (k, (out - given).abs().max())
    assert any(m.any() for e in expected for m in e), "objects present: the comparison is not of empty masks"
    assert calls == [2] * 4, "one trunk pass per call, one new frame per stream (the repeated first frame once)"
    assert worst < 1e-5


def test_skipping_windows_track_every_frame_and_a_new_episode_restarts(present_checkpoint: Path) -> None:
    """DP's sim runner calls every n_action_steps (> To) steps: windows share no frame; an episode starts with
    its first frame repeated To times (MultiStepWrapper), which restarts the stream with object_restart='auto'."""
    enc = build(present_checkpoint)
    ref = reference(enc, present_checkpoint)
    first, second = video(9, seed=1), video(4, seed=3)
    pred = standalone(enc)
    calls = trunk_calls(enc)
    schedule = [[first[0], first[0]], [first[3], first[4]], [first[7], first[8]], [second[0], second[0]],
                [second[2], second[3]]]  # fmt: skip
    expected = [
        [prompted(pred, first[0], PROMPTS["image"])] * 2,
        [tracked(pred, first[3]), tracked(pred, first[4])],
        [tracked(pred, first[7]), tracked(pred, first[8])],
    ]
    pred = standalone(enc)
    expected.append([prompted(pred, second[0], PROMPTS["image"])] * 2)
    expected.append([tracked(pred, second[2]), tracked(pred, second[3])])
    for window, masks in zip(schedule, expected):
        obs = dp_obs([window])
        with torch.no_grad():
            out = enc(obs)
            given = ref({**obs, "image_masks": enc.tracked_masks["image"]})
        assert torch.equal(enc.tracked_masks["image"], torch.stack(masks))
        assert torch.allclose(out, given, rtol=0, atol=1e-5)
    assert calls == [1, 2, 2, 1, 2]


def test_restart_rules_reset_and_prompts(present_checkpoint: Path) -> None:
    frames = video(5, seed=4)
    enc = build(present_checkpoint)

    def masks(window, e=enc) -> torch.Tensor:
        with torch.no_grad():
            e(dp_obs([window]))
        return e.tracked_masks["image"]

    start = masks([frames[0], frames[0]])
    masks([frames[0], frames[1]])
    calls = trunk_calls(enc)
    again = masks([frames[0], frames[1]])  # the same window again: nothing new, nothing encoded or tracked
    assert calls == []
    still = masks([frames[1], frames[1]])  # a still scene: its last frame repeated is no new episode
    assert calls == [] and torch.equal(still[0], again[1]) and torch.equal(still[1], again[1])
    enc.reset_objects()
    assert torch.equal(masks([frames[0], frames[0]]), start), "after reset_objects the stream is prompted again"
    enc.set_object_prompts({"image": OTHER["image"]})
    pred = standalone(enc)
    assert torch.equal(masks([frames[2], frames[3]]), torch.stack([prompted(pred, frames[2], OTHER["image"]),
                                                                    tracked(pred, frames[3])]))  # fmt: skip
    manual = build(present_checkpoint, object_restart="manual")
    masks([frames[0], frames[0]], manual)
    pred = standalone(manual)
    prompted(pred, frames[0], PROMPTS["image"])
    # no new episode without reset_objects: the repeated frame is tracked on
    assert torch.equal(masks([frames[4], frames[4]], manual)[1], tracked(pred, frames[4]))
    calls = trunk_calls(enc)
    with torch.no_grad():
        enc(dp_obs([[frames[0], frames[1]], [frames[2], frames[3]]]))  # two streams now: both start over
    assert calls == [4] and len(enc.obs_tracker.streams) == 2
    enc.train()  # train() / eval() end the streams too
    assert enc.obs_tracker.streams == []


def test_one_frame_per_stream_is_tracked_on(present_checkpoint: Path) -> None:
    """With n_obs_steps=1 each call brings one new frame per stream: it is tracked, not prompted again
    (object_restart='auto' needs n_obs_steps >= 2 to see an episode start in a repeated frame)."""
    enc = build(present_checkpoint, n_obs_steps=1)
    frames = video(3, seed=8)
    pred = standalone(enc)
    expected = [prompted(pred, frames[0], PROMPTS["image"]), tracked(pred, frames[1]), tracked(pred, frames[2])]
    for frame, masks in zip(frames, expected):
        with torch.no_grad():
            enc(dp_obs([[frame]]))
        assert torch.equal(enc.tracked_masks["image"][0], masks)


def test_crop_prompts_in_camera_pixels(present_checkpoint: Path) -> None:
    """With DP's crop_shape the trunk sees the centre crop at inference: prompts (camera pixels) are moved into
    it, masks are the crop's; given back padded to the camera frame they give the same output."""
    crop = (40, 64)
    top, left = (H - crop[0]) // 2, (W - crop[1]) // 2
    inside = {"image": {1: {"points": [[20, 20]], "labels": [1]}, 2: {"box": [40, 10, 70, 40]}}}
    enc = build(present_checkpoint, crop_shape=list(crop), object_prompts=inside)
    ref = reference(enc, present_checkpoint, crop_shape=list(crop))
    frames = video(3, seed=5)
    pred = standalone(enc)
    moved = {
        1: {"points": [[20 - left, 20 - top]], "labels": [1]},
        2: {"box": [40 - left, 10 - top, 70 - left, 40 - top]},
    }
    cropped = [np.ascontiguousarray(f[top : top + crop[0], left : left + crop[1]]) for f in frames]
    expected = [prompted(pred, cropped[0], moved), tracked(pred, cropped[1]), tracked(pred, cropped[2])]
    for k in range(3):
        obs = dp_obs([[frames[max(k - 1, 0)], frames[k]]])
        with torch.no_grad():
            out = enc(obs)
            got = enc.tracked_masks["image"]
            assert got.shape == (2, 2, *crop)
            assert torch.equal(got, torch.stack([expected[max(k - 1, 0)], expected[k]]))
            full = torch.zeros(2, 2, H, W, dtype=torch.bool)
            full[:, :, top : top + crop[0], left : left + crop[1]] = got
            assert torch.allclose(out, ref({**obs, "image_masks": full}), rtol=0, atol=1e-5)
    outside = {"image": {1: {"points": [[2, 20]]}, 2: {"box": [40, 10, 70, 40]}}}
    with pytest.raises(ValueError, match=r"outside the part of the frame the encoder sees.*x must be in \[8, 72\]"):
        enc.set_object_prompts(outside)


def test_strict_reload_without_the_sam2_file_and_deep_copies(encoder: SAM2ObsEncoder, tmp_path: Path) -> None:
    state = encoder.state_dict()
    assert any(k.startswith("tracker.parts.memory_attention.") for k in state)
    assert not any(k.startswith("tracker.") and "vision_encoder" in k for k in state), "the trunk is stored once"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fresh = build(tmp_path / "gone" / "sam2.1_hiera_tiny.pt")  # DP's reload on a machine without the file
    assert any("not found" in str(w.message) for w in caught)
    fresh.load_state_dict(state, strict=True)
    twin = copy.deepcopy(encoder)  # DP's EMA model
    assert twin.tracker.model.vision_encoder is twin.encoder.vision_encoder
    assert twin.tracker.model.vision_encoder is not encoder.tracker.model.vision_encoder
    frames = video(3, seed=6)
    encoder.reset_objects()
    for k in range(3):
        obs = dp_obs([[frames[max(k - 1, 0)], frames[k]]])
        with torch.no_grad():
            outs = [e(obs) for e in (encoder, fresh, twin)]
        masks = [e.tracked_masks["image"] for e in (encoder, fresh, twin)]
        assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
        assert torch.equal(masks[0], masks[1]) and torch.equal(masks[0], masks[2])


def test_bad_inputs_give_one_clear_error(encoder: SAM2ObsEncoder, present_checkpoint: Path, tiny_video_state,
                                         tmp_path: Path) -> None:  # fmt: skip
    no_masks = {"obs": {k: v for k, v in META["obs"].items() if k != "image_masks"}, "action": META["action"]}
    with pytest.raises(ValueError, match="object_tracker=True needs object tokens"):
        SAM2ObsEncoder(no_masks, checkpoint=present_checkpoint, image_size=SIZE, object_tracker=True)
    with pytest.raises(ValueError, match="object_tracker=True needs freeze=True"):
        build(present_checkpoint, freeze=False)
    with pytest.raises(ValueError, match="object_prompts are given but object_tracker is false"):
        SAM2ObsEncoder(META, image_size=SIZE, object_prompts=PROMPTS)
    with pytest.raises(ValueError, match="object_restart must be 'auto' or 'manual', got 'never'"):
        build(present_checkpoint, object_restart="never")
    with pytest.raises(ValueError, match=r"n_obs_steps must be a whole number >= 1, got 0"):
        build(present_checkpoint, n_obs_steps=0)
    with pytest.raises(ValueError, match=r"object_prompts\['image'\]\[1\]: point \[\[90.0, 20.0\]\] lies outside"):
        build(present_checkpoint, object_prompts={"image": {1: {"points": [[90, 20]]}, 2: {"box": [1, 1, 9, 9]}}})
    with pytest.raises(ValueError, match=r"prompts 1 objects \[1\]; expected num_objects=2"):
        build(present_checkpoint, object_prompts={"image": {1: {"points": [[9, 20]]}}})
    with pytest.raises(ValueError, match=r"names cameras \['wrist'\] that get no object masks"):
        encoder.set_object_prompts({"wrist": PROMPTS["image"], **PROMPTS})
    with pytest.raises(ValueError, match="set_object_prompts: row must be a stream index >= 0, got -1"):
        encoder.set_object_prompts(PROMPTS, row=-1)
    plain = build(present_checkpoint, object_tracker=False)
    with pytest.raises(ValueError, match="set_object_prompts: this encoder has no object tracker"):
        plain.set_object_prompts(PROMPTS)
    from safetensors.torch import save_file

    image_only = tmp_path / "sam2.1_hiera_tiny_image_only.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_video_state.items() if not k.startswith("memory_")}, str(image_only))
    with pytest.raises(CheckpointError, match="the encoder's object tracker needs a full SAM 2 checkpoint"):
        build(image_only)

    frames = video(2, seed=7)
    obs = dp_obs([[frames[0], frames[1]]])
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"3 rows is not a multiple of n_obs_steps=2"):
            encoder({k: v[:3] for k, v in dp_obs([[frames[0], frames[1]]] * 2).items()})
        unprompted = build(present_checkpoint, object_prompts=None)
        with pytest.raises(ValueError, match="no object prompts for stream 0: set object_prompts"):
            unprompted(obs)
    encoder.train()
    with pytest.raises(KeyError, match=r"missing 'image_masks'.*the object tracker runs at inference only"):
        encoder(obs)
    encoder.eval()
    with pytest.raises(KeyError, match=r"missing 'image_masks'.*the object tracker runs at inference only"):
        encoder(obs)  # autograd on
    two = {"obs": {**META["obs"], "wrist": {"shape": [3, H, W], "type": "rgb"},
                   "wrist_masks": {"shape": [2, H, W], "type": "mask", "camera": "wrist"}}}  # fmt: skip
    both = SAM2ObsEncoder(two, checkpoint=present_checkpoint, image_size=SIZE, object_tracker=True, n_obs_steps=TO,
                          object_prompts={"image": PROMPTS["image"], "wrist": OTHER["image"]}).eval()  # fmt: skip
    with torch.no_grad(), pytest.raises(KeyError, match=r"masks \['image_masks'\] but not \['wrist_masks'\]"):
        both({**obs, "wrist": obs["image"], "image_masks": torch.zeros(2, 2, H, W)})
    features = torch.zeros(2, *encoder.feature_shape)
    with torch.no_grad(), pytest.raises(ValueError, match="holds precomputed features .* the object tracker needs"):
        encoder({**obs, "image": features})
