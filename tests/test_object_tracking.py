"""Object tracking for a policy: prompt parsing, tracker weights shared with the encoder, masks equal
to a standalone StreamingPredictor's, no second encoder pass, bounded memory, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Sam2VideoModel

from sam2_encoder.image_encoder import SAM2ImageEncoder
from sam2_encoder.object_tracking import ObjectTracker, TrackerModules, parse_object_prompts
from sam2_encoder.scene import synthetic_scene
from sam2_encoder.streaming import StreamingPredictor

SIZE = 64
VARIANT = "sam2.1_hiera_tiny"
H, W = 48, 80
PROMPTS = {"cam": {1: {"points": [[20, 20]], "labels": [1]}, 2: {"box": [40, 10, 75, 40]}}}
OTHER = {"cam": {"3": {"points": [[60, 30], [10, 40]], "labels": [1, 0]}, "7": {"box": [2, 2, 30, 30]}}}


def video(n: int, seed: int = 1) -> list[np.ndarray]:
    """``n`` (H, W, 3) uint8 frames of a scene panning right by one pixel per frame."""
    base = synthetic_scene(H, W + n, seed=seed)
    return [np.ascontiguousarray(base[:, i : i + W]) for i in range(n)]


def as_batch(frames: list[np.ndarray]) -> torch.Tensor:
    """Frames of several rows as a policy sees them: ``(N, 3, H, W)`` float in [0, 1]."""
    return torch.stack([torch.from_numpy(f).permute(2, 0, 1) for f in frames]).float() / 255


@pytest.fixture(scope="module")
def encoder(present_checkpoint: Path) -> SAM2ImageEncoder:
    return SAM2ImageEncoder(VARIANT, checkpoint=present_checkpoint, image_size=SIZE)


@pytest.fixture(scope="module")
def modules(encoder: SAM2ImageEncoder, present_checkpoint: Path) -> TrackerModules:
    return TrackerModules(encoder, checkpoint=present_checkpoint)


def standalone(modules: TrackerModules) -> StreamingPredictor:
    """A predictor with its own copy of the same weights, encoding frames itself."""
    model = Sam2VideoModel(modules.model.config)
    model.load_state_dict(modules.model.state_dict())
    return StreamingPredictor(VARIANT, image_size=SIZE, model=model)


def prompt(pred: StreamingPredictor, frame: np.ndarray, prompts: dict) -> torch.Tensor:
    res = None
    for i, (obj_id, p) in enumerate(sorted(prompts.items(), key=lambda kv: int(kv[0]))):
        res = pred.add_prompt(frame if i == 0 else None, obj_id=int(obj_id), **p)
    return torch.stack([res.mask(i) for i in sorted(res.obj_ids)])


def trunk_calls(encoder: SAM2ImageEncoder) -> list[int]:
    calls: list[int] = []
    encoder.vision_encoder.backbone.patch_embed.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    return calls


# --------------------------------------------------------------------------------------------
# prompts
# --------------------------------------------------------------------------------------------


def test_prompts_are_normalised() -> None:
    parsed = parse_object_prompts(OTHER, {"cam": (H, W)}, 2)
    assert parsed == {
        "cam": {
            3: {"points": [[60.0, 30.0], [10.0, 40.0]], "labels": [1, 0]},
            7: {"box": [2.0, 2.0, 30.0, 30.0]},
        }
    }
    assert parse_object_prompts({"cam": {1: {"points": [5, 5]}}}, {"cam": (H, W)}, 1)["cam"][1]["labels"] == [1]
    assert parse_object_prompts(None, {"cam": (H, W)}, 2) == {} == parse_object_prompts({}, {"cam": (H, W)}, 2)


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            {"top": PROMPTS["cam"]},
            r"names cameras \['top'\] that get no object masks; cameras with object masks: \['cam'\]",
        ),
        ({"cam": PROMPTS["cam"], "top": {}}, r"names cameras \['top'\]"),
        ({"cam": {1: {"points": [[1, 1]]}}}, r"prompts 1 objects \[1\]; expected num_objects=2"),
        ({"cam": {1: {"points": [[1, 1]]}, "1": {"box": [0, 0, 4, 4]}}}, r"names object 1 twice"),
        ({"cam": {"a": {"points": [[1, 1]]}, 2: {"box": [0, 0, 4, 4]}}}, r"object ids must be ints, got 'a'"),
        (
            {"cam": {1: {"point": [[1, 1]]}, 2: {"box": [0, 0, 4, 4]}}},
            r"\[1\]: unknown keys \['point'\]; a prompt is a mapping of",
        ),
        ({"cam": {1: {}, 2: {"box": [0, 0, 4, 4]}}}, r"\[1\]: empty prompt: give points"),
        (
            {"cam": {1: {"points": [[81, 5]]}, 2: {"box": [0, 0, 4, 4]}}},
            r"point \[\[81.0, 5.0\]\] lies outside the 80x48",
        ),
        ({"cam": {1: {"points": [[5, -1]]}, 2: {"box": [0, 0, 4, 4]}}}, r"outside the 80x48 \(W x H\) frame"),
        ({"cam": {1: {"points": [[1, 1]]}, 2: {"box": [0, 0, 4, 49]}}}, r"box corner \[\[4.0, 49.0\]\] lies outside"),
        ({"cam": {1: {"points": [[1, 1]]}, 2: {"box": [5, 0, 4, 4]}}}, r"x1 > x0 and y1 > y0"),
        ({"cam": {1: {"points": [[1, 1]], "labels": [1, 1]}, 2: {"box": [0, 0, 4, 4]}}}, r"one 1 \(object\) or 0"),
        ({"cam": {1: {"points": [[1, 1]], "labels": [2]}, 2: {"box": [0, 0, 4, 4]}}}, r"one 1 \(object\) or 0"),
        ({"cam": {1: {"labels": [1]}, 2: {"box": [0, 0, 4, 4]}}}, r"\[1\]: labels without points"),
        (
            {"cam": {1: {"points": [["x", 1]]}, 2: {"box": [0, 0, 4, 4]}}},
            r"points must be \[\[x, y\], ...\] of finite numbers, got \[\['x', 1\]\]",
        ),
        (
            {"cam": {1: {"points": [[np.nan, 1]]}, 2: {"box": [0, 0, 4, 4]}}},
            r"points must be \[\[x, y\], ...\] of finite numbers, got \[\[nan, 1\]\]",
        ),
        ({"cam": [1, 2]}, r"object_prompts\['cam'\] must be \{obj_id: prompt\}"),
    ],
)
def test_bad_prompts_give_one_clear_error(spec, message) -> None:
    with pytest.raises(ValueError, match=message):
        parse_object_prompts(spec, {"cam": (H, W)}, 2)


def test_a_camera_without_prompts_is_named() -> None:
    with pytest.raises(ValueError, match=r"no prompts for cameras \['wrist'\]"):
        parse_object_prompts(PROMPTS, {"cam": (H, W), "wrist": (H, W)}, 2)


def test_an_empty_frame_is_one_clear_error(modules: TrackerModules) -> None:
    pred = StreamingPredictor(VARIANT, image_size=SIZE, model=modules.model)
    with pytest.raises(ValueError, match=r"frame is empty: shape \(64, 0, 3\) has no pixels"):
        pred.add_prompt(np.zeros((64, 0, 3), np.uint8), obj_id=1, points=[[1, 1]])
    with pytest.raises(ValueError, match=r"frame is empty"):
        pred.add_prompt(np.zeros((0, 5, 3), np.uint8), obj_id=1, box=[0, 0, 1, 1])


# --------------------------------------------------------------------------------------------
# tracker weights
# --------------------------------------------------------------------------------------------


def test_tracker_shares_the_encoder_weights_and_holds_only_its_own(
    encoder: SAM2ImageEncoder, modules: TrackerModules, present_checkpoint: Path
) -> None:
    model = modules.model
    assert model.vision_encoder is encoder.vision_encoder
    assert model.mask_decoder.conv_s0 is encoder.conv_s0 and model.mask_decoder.conv_s1 is encoder.conv_s1
    assert model.no_memory_embedding is encoder.no_memory_embedding
    own = modules.state_dict()
    assert not any(k.split(".")[-2:-1] == ["conv_s0"] or "vision_encoder" in k for k in own)
    assert not any("no_memory_embedding" in k for k in own)
    # every Sam2VideoModel weight is either the encoder's or the tracker's, and equals the checkpoint's
    from safetensors.torch import load_file

    saved = load_file(str(present_checkpoint))
    full = model.state_dict()
    assert set(full) == set(saved)
    for key, value in saved.items():
        assert torch.equal(full[key], value), key
    ptrs = {v.data_ptr() for v in encoder.state_dict().values()} | {v.data_ptr() for v in own.values()}
    assert all(v.data_ptr() in ptrs for v in full.values())
    assert not any(p.requires_grad for p in modules.parameters())
    assert not modules.train().training


def test_tracker_weights_reload_strictly_without_the_checkpoint(
    encoder: SAM2ImageEncoder, modules: TrackerModules
) -> None:
    fresh_encoder = SAM2ImageEncoder(VARIANT, image_size=SIZE, seed=3)
    fresh = TrackerModules(fresh_encoder, seed=3)  # random weights, no file
    fresh_encoder.load_state_dict(encoder.state_dict(), strict=True)
    fresh.load_state_dict(modules.state_dict(), strict=True)
    mine, theirs = fresh.model.state_dict(), modules.model.state_dict()
    assert set(mine) == set(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_tracker_refuses_a_trainable_encoder_and_a_checkpoint_without_memory(tiny_video_state, tmp_path) -> None:
    trainable = SAM2ImageEncoder(VARIANT, image_size=SIZE, freeze=False)
    with pytest.raises(ValueError, match="needs a frozen image encoder"):
        TrackerModules(trainable)
    from safetensors.torch import save_file

    image_only = {k: v.contiguous() for k, v in tiny_video_state.items() if not k.startswith("memory_")}
    path = tmp_path / "sam2.1_hiera_tiny_image_only.safetensors"
    save_file(image_only, str(path))
    with pytest.raises(Exception, match=r"object tracker.*memory_attention|memory_attention.*object tracker"):
        TrackerModules(SAM2ImageEncoder(VARIANT, image_size=SIZE), checkpoint=path)


# --------------------------------------------------------------------------------------------
# tracking on the policy's encoder pass
# --------------------------------------------------------------------------------------------


def test_masks_equal_a_standalone_predictor_and_frames_are_encoded_once(
    encoder: SAM2ImageEncoder, modules: TrackerModules
) -> None:
    rows = [video(6, seed=1), video(6, seed=2)]
    tracker = ObjectTracker(modules.model, VARIANT, {"cam": (H, W)}, 2, PROMPTS)
    tracker.set_prompts(OTHER, row=1)  # a second robot with its own objects
    refs = [standalone(modules), standalone(modules)]
    calls = trunk_calls(encoder)
    seen_objects = False
    for t in range(6):
        x = as_batch([rows[0][t], rows[1][t]])
        with torch.no_grad():
            pyramid = encoder.encode(encoder.transforms(x))  # the policy's one pass for both rows
        masks = tracker.step({"cam": x}, {"cam": pyramid})["cam"]
        assert masks.shape == (2, 2, H, W) and masks.dtype == torch.bool
        for row, (ref, prompts) in enumerate(zip(refs, (PROMPTS, OTHER))):
            if t == 0:
                expected = prompt(ref, rows[row][0], prompts["cam"])
            else:
                res = ref.track(rows[row][t])
                expected = torch.stack([res.mask(i) for i in sorted(res.obj_ids)])
            assert torch.equal(masks[row], expected), (t, row)
        seen_objects |= bool(masks.any())
    assert seen_objects, "the weights keep objects present: the comparison is not of empty masks"
    assert calls == [2] * 6, "one trunk pass per step (both rows), none by the tracker"


def test_reset_and_new_prompts_start_new_streams(encoder: SAM2ImageEncoder, modules: TrackerModules) -> None:
    frames = video(4)
    tracker = ObjectTracker(modules.model, VARIANT, {"cam": (H, W)}, 2, PROMPTS)

    def step(t: int) -> torch.Tensor:
        x = as_batch([frames[t]])
        with torch.no_grad():
            return tracker.step({"cam": x}, {"cam": encoder.encode(encoder.transforms(x))})["cam"][0]

    first = step(0)
    step(1)
    tracker.reset()
    assert tracker.num_rows is None
    assert torch.equal(step(0), first), "after reset the next frame is prompted again"
    tracker.set_prompts(OTHER)  # every row: the next frame starts a new stream from these prompts
    ref = standalone(modules)
    assert torch.equal(step(2), prompt(ref, frames[2], OTHER["cam"]))
    res = ref.track(frames[3])
    assert torch.equal(step(3), torch.stack([res.mask(i) for i in sorted(res.obj_ids)]))


def test_memory_stays_bounded_over_a_long_episode(encoder: SAM2ImageEncoder, modules: TrackerModules) -> None:
    frames = video(28)
    tracker = ObjectTracker(modules.model, VARIANT, {"cam": (H, W)}, 2, PROMPTS)
    sizes = []
    for frame in frames:
        x = as_batch([frame])
        with torch.no_grad():
            tracker.step({"cam": x}, {"cam": encoder.encode(encoder.transforms(x))})
        sizes.append(tracker.state_nbytes())
    assert sizes[18] == sizes[27] > 0


def test_tracker_errors(encoder: SAM2ImageEncoder, modules: TrackerModules) -> None:
    frames = video(2)
    x = as_batch([frames[0]])
    with torch.no_grad():
        pyramid = encoder.encode(encoder.transforms(x))
    tracker = ObjectTracker(modules.model, VARIANT, {"cam": (H, W)}, 2)
    with pytest.raises(ValueError, match=r"no object prompts for batch row 0"):
        tracker.step({"cam": x}, {"cam": pyramid})
    tracker.reset()
    tracker.set_prompts(PROMPTS)
    with pytest.raises(KeyError, match=r"pyramids has no 'cam'"):
        tracker.step({"cam": x}, {})
    with pytest.raises(ValueError, match=r"frames\['cam'\] is \(1, 3, 48, 79\); expected \(N, 3, 48, 80\)"):
        tracker.step({"cam": x[..., :79]}, {"cam": pyramid})
    tracker.step({"cam": x}, {"cam": pyramid})
    two = torch.cat([x, x])
    with pytest.raises(ValueError, match=r"2 frames but a pyramid of 1"):
        tracker.step({"cam": two}, {"cam": pyramid})
    with pytest.raises(ValueError, match=r"2 rows, but the running streams have 1; call reset\(\) first"):
        tracker.step({"cam": two}, {"cam": pyramid.map(lambda t: torch.cat([t, t]))})
    with pytest.raises(ValueError, match=r"row must be a batch row index >= 0"):
        tracker.set_prompts(PROMPTS, row=-1)
    with pytest.raises(ValueError, match=r"expected num_objects=2"):
        ObjectTracker(modules.model, VARIANT, {"cam": (H, W)}, 2, {"cam": {1: {"points": [[1, 1]]}}})
    for bad in (0, 2.5, "2", True):
        with pytest.raises(ValueError, match=rf"num_objects must be a whole number >= 1, got {bad!r}"):
            ObjectTracker(modules.model, VARIANT, {"cam": (H, W)}, bad)
