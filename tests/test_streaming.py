"""StreamingPredictor: identity with transformers' unbounded session, bounded state, errors, CLI."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Sam2VideoProcessor
from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

from sam2_encoder.checkpoints import CheckpointError
from sam2_encoder.cli.common import CLIError
from sam2_encoder.cli.frames import iter_frames
from sam2_encoder.cli.track import register
from sam2_encoder.cli.track import run as main_track
from sam2_encoder.image_encoder import SAM2ImageEncoder
from sam2_encoder.scene import synthetic_scene
from sam2_encoder.streaming import StreamingPredictor, TrackResult, session_nbytes

SIZE = 64
H, W = 48, 80
VARIANT = "sam2.1_hiera_tiny"


@pytest.fixture(scope="module")
def checkpoint(present_checkpoint: Path) -> Path:
    """The shared tiny checkpoint whose objects stay present (conftest)."""
    return present_checkpoint


@pytest.fixture(scope="module")
def predictor(checkpoint) -> StreamingPredictor:
    return StreamingPredictor(VARIANT, checkpoint=checkpoint, image_size=SIZE)


@pytest.fixture
def pred(predictor) -> StreamingPredictor:
    predictor.reset()
    return predictor


def frames(n: int, height: int = H, width: int = W, seed: int = 0) -> list[np.ndarray]:
    """A scene sliding right by one pixel per frame."""
    base = synthetic_scene(height, width + n, seed=seed)
    return [np.ascontiguousarray(base[:, i : i + width]) for i in range(n)]


# --------------------------------------------------------------------------------------------
# identity with transformers' unbounded streaming session
# --------------------------------------------------------------------------------------------


class Reference:
    """transformers' own streaming session, unpruned, prompted through its video processor's code."""

    def __init__(self, pred: StreamingPredictor) -> None:
        self.model = pred.model
        self.transforms = pred.encoder.transforms
        self.session = Sam2VideoInferenceSession(dtype=torch.float32)
        # The processor's prompt handling needs no image processor (building one needs torchvision).
        self.processor = Sam2VideoProcessor.__new__(Sam2VideoProcessor)
        self.processor.target_size = SIZE
        self.processor.point_pad_value = -10
        self.frame_idx = -1

    def pixels(self, frame: np.ndarray) -> torch.Tensor:
        return self.transforms(frame).contiguous()

    def prompt(self, frame: np.ndarray | None, obj_id: int, **inputs) -> torch.Tensor:
        if frame is not None:
            self.frame_idx += 1
        self.processor.add_inputs_to_inference_session(
            self.session, frame_idx=self.frame_idx, obj_ids=obj_id, original_size=(H, W), **inputs
        )
        if frame is None:
            return self.model(inference_session=self.session, frame_idx=self.frame_idx)
        return self.model(inference_session=self.session, frame=self.pixels(frame))

    def track(self, frame: np.ndarray):
        self.frame_idx += 1
        return self.model(inference_session=self.session, frame=self.pixels(frame))


def assert_same(ours: TrackResult, ref, where: str) -> None:
    assert ours.obj_ids == list(ref.object_ids), where
    assert torch.equal(ours.mask_logits, ref.pred_masks[:, 0]), where
    assert torch.equal(ours.scores, ref.object_score_logits.reshape(-1)), where
    expected = torch.nn.functional.interpolate(ref.pred_masks, size=(H, W), mode="bilinear", align_corners=False) > 0
    assert torch.equal(ours.masks, expected[:, 0]), where


def run_script(pred: StreamingPredictor, ref: Reference, script: dict[int, Callable], n: int) -> list[TrackResult]:
    results = []
    mask = np.zeros((H, W), dtype=bool)
    mask[10:30, 50:75] = True
    video = frames(n)
    for i, frame in enumerate(video):
        step = script.get(i)
        if step is None:
            ours, theirs = pred.track(frame), ref.track(frame)
        else:
            ours, theirs = step(pred, ref, frame, mask)
        assert_same(ours, theirs, f"frame {i}")
        results.append(ours)
    return results


def test_identity_with_unbounded_session(pred: StreamingPredictor) -> None:
    """Points, a second object by mask and a third by box mid-stream, a refinement click, a re-prompt."""
    ref = Reference(pred)
    first_points = dict(points=[[20, 20], [70, 40]], labels=[1, 0])

    def start(p, r, frame, mask):
        p.add_prompt(frame, obj_id=1, **first_points)
        r.prompt(frame, 1, input_points=[[first_points["points"]]], input_labels=[[first_points["labels"]]])
        # a second object on the same frame
        return p.add_prompt(None, obj_id=7, mask=mask), r.prompt(None, 7, input_masks=mask)

    def new_object(p, r, frame, mask):
        box = [5, 5, 45, 40]
        return p.add_prompt(frame, obj_id=3, box=box), r.prompt(frame, 3, input_boxes=[[box]])

    def refine(p, r, frame, mask):
        p.track(frame)
        r.track(frame)
        click = dict(points=[[30, 10]], labels=[0])
        ours = p.add_prompt(None, obj_id=1, **click)
        # transformers re-runs the frame it already holds; frame= keeps it in streaming mode
        r.processor.add_inputs_to_inference_session(
            r.session, frame_idx=r.frame_idx, obj_ids=1, input_points=[[click["points"]]],
            input_labels=[[click["labels"]]], original_size=(H, W),
        )  # fmt: skip
        return ours, r.model(inference_session=r.session, frame_idx=r.frame_idx, frame=r.pixels(frame))

    def reprompt(p, r, frame, mask):
        return p.add_prompt(frame, obj_id=3, points=[[60, 30]]), r.prompt(
            frame, 3, input_points=[[[[60, 30]]]], input_labels=[[[1]]]
        )

    results = run_script(pred, ref, {0: start, 12: new_object, 25: refine, 31: reprompt}, n=42)
    assert results[-1].obj_ids == [1, 7, 3]
    assert results[-1].frame_idx == 41 and pred.frame_idx == 41
    assert all(r.masks.any() for r in results), "the objects must stay present for the test to mean something"
    assert results[-1].masks.shape == (3, H, W) and results[-1].masks.dtype == torch.bool
    assert results[-1].mask_logits.shape == (3, SIZE // 4, SIZE // 4)
    # the unbounded session kept every frame; ours kept a constant window
    assert session_nbytes(ref.session) > 5 * pred.state_nbytes()
    outputs = pred.session.output_dict_per_obj[0]
    assert min(outputs["non_cond_frame_outputs"]) == 41 - (pred.max_object_pointers - 1)
    assert sorted(outputs["cond_frame_outputs"]) == [0]
    assert pred.session.processed_frames == {}


def test_identity_with_few_conditioning_frames(checkpoint) -> None:
    """With max_cond_frame_num set, memories of unselected conditioning frames are dropped, pointers kept."""
    pred = StreamingPredictor(VARIANT, checkpoint=checkpoint, image_size=SIZE)
    pred.model.config.max_cond_frame_num = 2
    ref = Reference(pred)

    def prompt_at(x):
        def step(p, r, frame, mask):
            return p.add_prompt(frame, obj_id=1, points=[[x, 20]]), r.prompt(
                frame, 1, input_points=[[[[x, 20]]]], input_labels=[[[1]]]
            )

        return step

    run_script(pred, ref, {0: prompt_at(20), 3: prompt_at(30), 6: prompt_at(40), 9: prompt_at(50)}, n=24)
    cond = pred.session.output_dict_per_obj[0]["cond_frame_outputs"]
    assert sorted(cond) == [0, 3, 6, 9]
    assert ["maskmem_features" in cond[t] for t in (0, 3, 6, 9)] == [False, False, True, True]
    assert all("object_pointer" in cond[t] for t in cond)


# --------------------------------------------------------------------------------------------
# bounded state
# --------------------------------------------------------------------------------------------


def test_state_is_bounded(pred: StreamingPredictor) -> None:
    video = frames(8, seed=3)
    pred.add_prompt(video[0], obj_id=1, points=[[40, 24]])
    sizes = {}
    for i in range(1, 201):
        pred.track(video[i % len(video)])
        sizes[i] = pred.state_nbytes()
    assert sizes[20] == sizes[200]
    assert max(sizes[i] for i in range(20, 201)) == sizes[20]
    # the window fills up over the first max_object_pointers frames, then stays put
    assert sizes[1] < sizes[20]
    outputs = pred.session.output_dict_per_obj[0]
    assert len(outputs["non_cond_frame_outputs"]) == pred.max_object_pointers
    with_memory = [t for t, out in outputs["non_cond_frame_outputs"].items() if "maskmem_features" in out]
    assert with_memory == list(range(200 - (pred.num_maskmem - 1), 201))
    assert list(pred.session.frames_tracked_per_obj[0]) == [200]


def test_reset_remove_object_and_frame_size(pred: StreamingPredictor) -> None:
    video = frames(4)
    empty = pred.state_nbytes()
    pred.add_prompt(video[0], obj_id=1, points=[[20, 20]])
    pred.add_prompt(None, obj_id=2, box=[40, 10, 70, 40])
    both = pred.track(video[1])
    pred.remove_object(1)
    assert pred.obj_ids == [2]
    alone = pred.track(video[2])
    assert alone.obj_ids == [2] and alone.masks.shape == (1, H, W)
    with pytest.raises(KeyError, match=r"object 1 is not tracked; tracked objects: \[2\]"):
        pred.remove_object(1)
    assert both.mask(2).shape == (H, W)
    with pytest.raises(KeyError, match="object 5 is not in this result"):
        both.mask(5)
    pred.remove_object(2)
    with pytest.raises(RuntimeError, match="every object was removed"):
        pred.track(video[3])
    pred.reset()
    assert pred.frame_idx is None and pred.frame_size is None and pred.state_nbytes() == empty
    # a new stream may have another frame size
    other = frames(2, height=60, width=60)
    assert pred.add_prompt(other[0], obj_id=4, points=[[30, 30]]).frame_idx == 0
    assert pred.track(other[1]).masks.shape == (1, 60, 60)


# --------------------------------------------------------------------------------------------
# shared features: one encoder pass per frame
# --------------------------------------------------------------------------------------------


def _count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]

    def hook(*_):
        calls[0] += 1

    module.register_forward_hook(hook)
    return calls


def test_one_encoder_pass_per_frame(checkpoint) -> None:
    pred = StreamingPredictor(VARIANT, checkpoint=checkpoint, image_size=SIZE)
    twin = StreamingPredictor(VARIANT, checkpoint=checkpoint, image_size=SIZE, model=pred.model)
    policy = SAM2ImageEncoder(VARIANT, checkpoint=checkpoint, image_size=SIZE)  # the policy's own encoder
    tracker_calls = _count_calls(pred.model.vision_encoder.backbone.patch_embed)
    policy_calls = _count_calls(policy.vision_encoder.backbone.patch_embed)
    video = frames(6)

    first = pred.add_prompt(video[0], obj_id=1, points=[[20, 20]], return_features=True)
    assert tracker_calls[0] == 1
    # the pyramid handed to a policy is SAM2ImageEncoder's output for the same pixels
    expected = policy(video[0])
    for name in ("s4", "s8", "s16"):
        assert torch.equal(first.features[name], expected[name]), name
    refined = pred.add_prompt(None, obj_id=1, points=[[20, 20], [60, 30]], labels=[1, 0], return_features=True)
    assert tracker_calls[0] == 1, "a refinement click must not re-encode the frame"
    assert all(torch.equal(a, b) for a, b in zip(refined.features, first.features))

    twin.add_prompt(video[0], obj_id=1, points=[[20, 20]])
    twin.add_prompt(None, obj_id=1, points=[[20, 20], [60, 30]], labels=[1, 0])
    tracker_calls[0] = policy_calls[0] = 0
    for frame in video[1:]:
        pyramid = policy(frame)  # the policy encodes the frame once ...
        shared = pred.track(frame, features=pyramid)  # ... and the tracker reuses it
        own = twin.track(frame)
        assert torch.equal(shared.masks, own.masks)
        assert torch.equal(shared.mask_logits, own.mask_logits)
        assert torch.equal(shared.scores, own.scores)
    assert policy_calls[0] == len(video) - 1
    assert tracker_calls[0] == len(video) - 1, "only the twin (no shared features) ran the tracker's encoder"

    batch = policy(np.stack(video[:2]))
    with pytest.raises(ValueError, match=r"features do not fit.*'s16': \(2, 256, 4, 4\).*select"):
        pred.track(video[0], features=batch)
    assert pred.track(video[0], features=batch.select(slice(1, 2))).frame_idx == len(video)


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


def test_errors(pred: StreamingPredictor) -> None:
    video = frames(2)
    with pytest.raises(RuntimeError, match=r"track\(\) needs at least one object: call add_prompt"):
        pred.track(video[0])
    with pytest.raises(ValueError, match="no frame was processed yet"):
        pred.add_prompt(None, obj_id=1, points=[[1, 1]])
    with pytest.raises(ValueError, match="object 1: empty prompt: give points"):
        pred.add_prompt(video[0], obj_id=1)
    with pytest.raises(ValueError, match="object 1: empty prompt: give points"):
        pred.add_prompt(video[0], obj_id=1, points=np.zeros((0, 2)))
    with pytest.raises(ValueError, match="empty prompt: the mask for object 2 has no foreground"):
        pred.add_prompt(video[0], obj_id=2, mask=np.zeros((H, W), dtype=bool))
    with pytest.raises(ValueError, match=r"object 1: point \[\[81.0, 5.0\]\] lies outside the 80x48 \(W x H\) frame"):
        pred.add_prompt(video[0], obj_id=1, points=[[10, 5], [81, 5]])
    with pytest.raises(ValueError, match=r"box corner \[\[70.0, 50.0\]\] lies outside"):
        pred.add_prompt(video[0], obj_id=1, box=[10, 10, 70, 50])
    with pytest.raises(ValueError, match="x1 > x0"):
        pred.add_prompt(video[0], obj_id=1, box=[30, 10, 20, 40])
    with pytest.raises(ValueError, match=r"mask must be \(H, W\) = \(48, 80\).*got shape \(64, 64\)"):
        pred.add_prompt(video[0], obj_id=1, mask=np.ones((64, 64), dtype=bool))
    with pytest.raises(ValueError, match="cannot be combined"):
        pred.add_prompt(video[0], obj_id=1, points=[[1, 1]], mask=np.ones((H, W), dtype=bool))
    with pytest.raises(
        ValueError, match=r"labels must be one 1 \(object\) or 0 \(background\) per point, got \[1\] for 2 points"
    ):
        pred.add_prompt(video[0], obj_id=1, points=[[1, 1], [2, 2]], labels=[1])
    with pytest.raises(ValueError, match=r"labels must be one 1 \(object\) or 0 \(background\) per point, got \[2\]"):
        pred.add_prompt(video[0], obj_id=1, points=[[1, 1]], labels=[2])
    with pytest.raises(ValueError, match="finite"):
        pred.add_prompt(video[0], obj_id=1, points=[[float("nan"), 1]])
    with pytest.raises(TypeError, match="obj_id: object ids must be ints, got 'cup'"):
        pred.add_prompt(video[0], obj_id="cup", points=[[1, 1]])
    with pytest.raises(TypeError, match="must be uint8.*got float32"):
        pred.add_prompt(video[0].astype(np.float32) / 255, obj_id=1, points=[[1, 1]])
    with pytest.raises(TypeError, match=r"3 colour channels last, got shape \(48, 80, 4\)"):
        pred.add_prompt(np.zeros((H, W, 4), np.uint8), obj_id=1, points=[[1, 1]])
    with pytest.raises(TypeError, match=r"got shape \(3, 48, 80\); channels-first"):
        pred.add_prompt(torch.zeros(3, H, W, dtype=torch.uint8), obj_id=1, points=[[1, 1]])
    with pytest.raises(TypeError, match=r"got shape \(48, 80\)"):
        pred.add_prompt(np.zeros((H, W), np.uint8), obj_id=1, points=[[1, 1]])
    assert pred.frame_idx is None and pred.obj_ids == [], "failed prompts must leave no trace"

    pred.add_prompt(torch.from_numpy(video[0]), obj_id=1, points=[[10, 10]])
    with pytest.raises(
        ValueError, match=r"frame size changed mid-stream: got 64x80 \(H x W\), the stream started at 48x80"
    ):
        pred.track(np.zeros((64, W, 3), np.uint8))
    with pytest.raises(ValueError, match="features belong to a new frame"):
        pred.add_prompt(None, obj_id=1, points=[[1, 1]], features=object())
    with pytest.raises(TypeError, match="FeaturePyramid"):
        pred.track(video[1], features={"s4": None})
    assert pred.frame_idx == 0
    assert pred.track(video[1]).frame_idx == 1


def test_construction_errors(tiny_video_state, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    with pytest.raises(ValueError, match="square image_size"):
        StreamingPredictor(VARIANT, image_size=(64, 96))
    with pytest.raises(ValueError, match="multiple of 32"):
        StreamingPredictor(VARIANT, image_size=100)
    broken = {k: v.contiguous() for k, v in tiny_video_state.items() if not k.startswith("memory_attention.layers.3")}
    save_file(broken, str(tmp_path / "broken.safetensors"))
    with pytest.raises(CheckpointError, match=r"does not fit sam2.1_hiera_tiny: \d+ missing keys: memory_attention"):
        StreamingPredictor(VARIANT, checkpoint=tmp_path / "broken.safetensors", image_size=SIZE)
    with pytest.warns(UserWarning, match="no checkpoint: using seeded random weights"):
        pred = StreamingPredictor(VARIANT, image_size=SIZE)
    with pytest.raises(ValueError, match="built for image_size 64, but image_size=128"):
        StreamingPredictor(VARIANT, image_size=128, model=pred.model)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sam2-encoder")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_track_folder(checkpoint, tmp_path: Path, capsys) -> None:
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    video = frames(5)
    for i, frame in enumerate(video[:4]):
        Image.fromarray(frame).save(folder / f"frame{i}.png")
    np.save(folder / "frame10.npy", video[4])  # natural order: after frame3.png
    out = tmp_path / "out"
    args = _parse(
        ["track", str(folder), "--point", "20,20", "--negative", "70,40", "--box", "5,5,45,40",
         "--checkpoint", str(checkpoint), "--image-size", str(SIZE), "--out", str(out), "--quiet"]
    )  # fmt: skip
    assert args.func is main_track
    assert main_track(args) == 0
    assert "tracked 5 frames" in capsys.readouterr().out
    names = ["frame0", "frame1", "frame2", "frame3", "frame10"]  # the input frames' names, in natural order
    assert sorted(p.name for p in (out / "masks").glob("*.png")) == sorted(f"{n}.png" for n in names)
    masks = [out / "masks" / f"{n}.png" for n in names]
    report = json.loads((out / "track.json").read_text())
    assert report["frames"] == 5 and report["image_size"] == SIZE
    assert report["prompt"] == {"points": [[20.0, 20.0], [70.0, 40.0]], "labels": [1, 0], "box": [5.0, 5.0, 45.0, 40.0]}

    # the CLI's masks are the library's masks
    pred = StreamingPredictor(VARIANT, checkpoint=checkpoint, image_size=SIZE)
    results = [pred.add_prompt(video[0], obj_id=1, points=[[20, 20], [70, 40]], labels=[1, 0], box=[5, 5, 45, 40])]
    results += [pred.track(frame) for frame in video[1:]]
    for path, result in zip(masks, results):
        assert np.array_equal(np.asarray(Image.open(path)) > 0, result.mask(1).numpy())
    assert any(r.mask(1).any() for r in results)
    overlay = np.asarray(Image.open(out / "overlay" / "frame0.png"))
    assert overlay.shape == (H, W, 3) and not np.array_equal(overlay, video[0])


def test_cli_inputs_and_errors(tmp_path: Path, capsys) -> None:
    stack = np.stack(frames(3))
    np.save(tmp_path / "clip.npy", stack)
    loaded, count = iter_frames(tmp_path / "clip.npy")
    assert count == 3 and all(np.array_equal(a, b) for a, b in zip(loaded, stack))
    with pytest.raises(CLIError, match="give at least one --point"):
        main_track(_parse(["track", str(tmp_path / "clip.npy"), "--image-size", "64"]))
    with pytest.raises(CLIError, match="input not found"):
        iter_frames(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CLIError, match="holds no frames"):
        iter_frames(tmp_path / "empty")
    with pytest.raises(SystemExit):
        _parse(["track", "x", "--point", "1;2;3"])
    args = _parse(["track", str(tmp_path / "clip.npy"), "--point", "90,10", "--image-size", "64", "--quiet"])
    with pytest.raises(CLIError, match=r"frame 0: --point 90,10: point \[\[90.0, 10.0\]\] lies outside the 80x48"):
        main_track(args)


def test_cli_reads_video_files(checkpoint, tmp_path: Path) -> None:
    av = pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for frame in frames(4):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    decoded, _ = iter_frames(path)
    decoded = list(decoded)
    assert len(decoded) == 4 and decoded[0].shape == (H, W, 3)
    out = tmp_path / "out"
    args = _parse(["track", str(path), "--point", "20,20", "--checkpoint", str(checkpoint), "--image-size", "64",
                   "--out", str(out), "--quiet", "--no-overlay"])  # fmt: skip
    assert main_track(args) == 0
    assert len(list((out / "masks").glob("*.png"))) == 4 and not (out / "overlay").exists()


def test_bfloat16_state(checkpoint) -> None:
    pred = StreamingPredictor(VARIANT, checkpoint=checkpoint, image_size=SIZE, dtype="bfloat16")
    video = frames(3)
    first = pred.add_prompt(video[0], obj_id=1, points=[[20, 20]], return_features=True)
    assert first.features.s16.dtype == first.mask_logits.dtype == first.scores.dtype == torch.bfloat16
    result = pred.track(video[1], features=first.features)
    assert result.masks.dtype == torch.bool and result.masks.shape == (1, H, W)
    assert pred.track(video[2]).frame_idx == 2
