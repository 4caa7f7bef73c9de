"""One set of prompt rules: the same bad prompt gets the same error from every entry point.

Entry points: ``StreamingPredictor.add_prompt``, ``parse_object_prompts``, ``ObjectTracker``,
``MultiCameraEncoder(object_tracker=True, object_prompts=...)``, the mask cache's
``load_prompts``, and the ``sam2-encoder track`` / ``sam2-encoder masks`` commands (one
``error: ...`` line, exit status 2). Each names where the prompt came from, then says the same
thing: what was wrong, what it got, what it expected. Good prompts map through the camera view
(resize, centre crop) as the encoder always did.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sam2_encoder.camera_encoder import MultiCameraEncoder
from sam2_encoder.cli import main
from sam2_encoder.object_tracking import ObjectTracker, parse_object_prompts
from sam2_encoder.prompts import View, check_prompt, map_to_view, object_id
from sam2_encoder.streaming import StreamingPredictor

VARIANT = "sam2.1_hiera_tiny"
SIZE = 64
H, W = 48, 64
BOX = [0.0, 0.0, 4.0, 4.0]
LABELS = "labels must be one 1 (object) or 0 (background) per point, got"
POINTS = "points must be [[x, y], ...] of finite numbers, got"
OUTSIDE = "lies outside the 64x48 (W x H) frame: x must be in [0, 64] and y in [0, 48]"


@dataclass(frozen=True)
class Bad:
    """A bad prompt for object ``obj`` and the text every entry point's error contains."""

    name: str
    prompt: dict[str, Any]
    text: str
    obj: Any = 1
    keywords: bool = True  # expressible as add_prompt(points=, labels=, box=)
    cli: bool = False  # expressible as track --point X,Y / --box X0,Y0,X1,Y1


BAD = [
    Bad("label 1.0", {"points": [[10.0, 10.0]], "labels": [1.0]}, f"{LABELS} [1.0] for 1 point"),
    Bad("label 2", {"points": [[10.0, 10.0]], "labels": [2]}, f"{LABELS} [2] for 1 point"),
    Bad("label True", {"points": [[10.0, 10.0]], "labels": [True]}, f"{LABELS} [True] for 1 point"),
    Bad("labels per point", {"points": [[1.0, 1.0], [2.0, 2.0]], "labels": [1]}, f"{LABELS} [1] for 2 points"),
    Bad("labels without points", {"labels": [1], "box": BOX}, "labels without points: give one label per point"),
    Bad("point outside", {"points": [[70.0, 5.0]]}, f"point [[70.0, 5.0]] {OUTSIDE}", cli=True),
    Bad("point negative", {"points": [[-1.0, 5.0]]}, f"point [[-1.0, 5.0]] {OUTSIDE}", cli=True),
    Bad("point nan", {"points": [[math.nan, 5.0]]}, f"{POINTS} [[nan, 5.0]]", cli=True),
    Bad("point inf", {"points": [[3.0, math.inf]]}, f"{POINTS} [[3.0, inf]]", cli=True),
    Bad("point bool", {"points": [[1.0, True]]}, f"{POINTS} [[1.0, True]]"),
    Bad("point text", {"points": [["4", 5.0]]}, f"{POINTS} [['4', 5.0]]"),
    Bad("point 3 numbers", {"points": [[1.0, 2.0, 3.0]]}, f"{POINTS} [[1.0, 2.0, 3.0]]"),
    Bad(
        "box reversed",
        {"box": [30.0, 10.0, 20.0, 40.0]},
        "box must have x1 > x0 and y1 > y0, got [30.0, 10.0, 20.0, 40.0]",
        cli=True,
    ),
    Bad("box outside", {"box": [0.0, 0.0, 65.0, 10.0]}, f"box corner [[65.0, 10.0]] {OUTSIDE}", cli=True),
    Bad(
        "box 3 numbers", {"box": [1.0, 2.0, 3.0]}, "box must be [x0, y0, x1, y1] of finite numbers, got [1.0, 2.0, 3.0]"
    ),
    Bad("empty", {}, "empty prompt: give points [[x, y], ...] (with labels) or a box [x0, y0, x1, y1]"),
    Bad(
        "unknown key",
        {"point": [[1.0, 1.0]]},
        "unknown keys ['point']; a prompt is a mapping of ['points', 'labels', 'box']",
        keywords=False,
    ),
    Bad("bool id", {"box": BOX}, "object ids must be ints, got", obj=True),
    Bad("float id", {"box": BOX}, "object ids must be ints, got", obj=1.0),
]


# --------------------------------------------------------------------------------------------
# entry points: each sends one bad prompt and returns the error's text


@pytest.fixture(scope="module")
def predictor(present_checkpoint: Path) -> StreamingPredictor:
    return StreamingPredictor(VARIANT, checkpoint=present_checkpoint, image_size=SIZE)


def _error(call: Callable[[], object], types: tuple[type[BaseException], ...] = (ValueError,)) -> str:
    with pytest.raises(types) as caught:
        call()
    return str(caught.value)


def via_streaming(bad: Bad, ctx: dict[str, Any]) -> str:
    pred = ctx["predictor"]
    pred.reset()
    frame = np.zeros((H, W, 3), np.uint8)
    return _error(lambda: pred.add_prompt(frame, obj_id=bad.obj, **bad.prompt), (ValueError, TypeError))


def via_parse(bad: Bad, ctx: dict[str, Any]) -> str:
    return _error(lambda: parse_object_prompts({"cam": {bad.obj: bad.prompt}}, {"cam": (H, W)}, 1))


def via_object_tracker(bad: Bad, ctx: dict[str, Any]) -> str:
    model = ctx["predictor"].model
    return _error(lambda: ObjectTracker(model, VARIANT, {"cam": (H, W)}, 1, prompts={"cam": {bad.obj: bad.prompt}}))


def via_encoder(bad: Bad, ctx: dict[str, Any]) -> str:
    def build() -> MultiCameraEncoder:
        return MultiCameraEncoder(
            {"image": (3, H, W)},
            image_size=SIZE,
            checkpoint=ctx["checkpoint"],
            object_masks_key="image_masks",
            num_objects=1,
            object_token_dim=16,
            object_tracker=True,
            object_prompts={"image": {bad.obj: bad.prompt}},
        )

    return _error(build)


def via_load_prompts(bad: Bad, ctx: dict[str, Any]) -> str:
    from sam2_encoder.diffusion_policy.mask_cache import load_prompts

    table = {"objects": [1], "episodes": {"0": {bad.obj: bad.prompt}}}
    return _error(lambda: load_prompts(table, 1, frame_shape=(H, W)))


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, errors
    return errors[0]


def via_cli_masks(bad: Bad, ctx: dict[str, Any]) -> str:
    pytest.importorskip("zarr")
    from sam2_encoder.diffusion_policy.synthetic import write_replay_buffer

    tmp = ctx["tmp_path"]
    replay = write_replay_buffer(tmp / "r.zarr", episodes=1, steps=2, size=(H, W))
    prompts = tmp / "p.json"
    prompts.write_text(json.dumps({"objects": [1], "episodes": {"0": {bad.obj: bad.prompt}}}))
    return _cli(["masks", str(replay), "--key", "img", "--prompts", str(prompts), "--image-size", "64"], ctx["capsys"])


def via_cli_track(bad: Bad, ctx: dict[str, Any]) -> str:
    clip = ctx["tmp_path"] / "clip.npy"
    np.save(clip, np.zeros((2, H, W, 3), np.uint8))
    argv = ["track", str(clip), "--image-size", "64", "--quiet"]
    argv += [f"--point={x},{y}" for x, y in bad.prompt.get("points", [])]
    if "box" in bad.prompt:
        argv.append("--box=" + ",".join(map(str, bad.prompt["box"])))
    return _cli(argv, ctx["capsys"])


ENTRY_POINTS = {
    "StreamingPredictor.add_prompt": via_streaming,
    "parse_object_prompts": via_parse,
    "ObjectTracker": via_object_tracker,
    "MultiCameraEncoder": via_encoder,
    "mask_cache.load_prompts": via_load_prompts,
    "sam2-encoder masks": via_cli_masks,
    "sam2-encoder track": via_cli_track,
}


def _expressible(entry: str, bad: Bad) -> bool:
    if entry == "StreamingPredictor.add_prompt":
        return bad.keywords
    if entry == "sam2-encoder track":
        return bad.cli
    return True


ROWS = [(entry, bad) for bad in BAD for entry in ENTRY_POINTS if _expressible(entry, bad)]


@pytest.mark.parametrize("entry, bad", ROWS, ids=[f"{entry}-{bad.name}" for entry, bad in ROWS])
def test_a_bad_prompt_gets_the_same_error_from_every_entry_point(
    entry: str, bad: Bad, predictor: StreamingPredictor, present_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    """Each entry point refuses the prompt with one error whose text (after "where") is the shared one."""
    ctx = {"predictor": predictor, "checkpoint": present_checkpoint, "tmp_path": tmp_path, "capsys": capsys}
    message = ENTRY_POINTS[entry](bad, ctx)
    assert bad.text in message, message


def test_every_bad_prompt_is_sent_through_every_entry_point_that_can_express_it() -> None:
    """The table covers each entry point; only add_prompt (keywords) and track (--point/--box) skip some."""
    assert {entry for entry, _ in ROWS} == set(ENTRY_POINTS)
    for entry in ("parse_object_prompts", "ObjectTracker", "MultiCameraEncoder", "mask_cache.load_prompts"):
        assert sum(e == entry for e, _ in ROWS) == len(BAD)
    assert sum(e == "sam2-encoder track" for e, _ in ROWS) == 6


def test_errors_name_where_the_prompt_came_from(predictor: StreamingPredictor) -> None:
    """The part before the shared text names the option / camera / object, or the file's episode and object."""
    from sam2_encoder.diffusion_policy.mask_cache import load_prompts

    bad = {"points": [[70.0, 5.0]]}
    shared = f"point [[70.0, 5.0]] {OUTSIDE}"
    frame = np.zeros((H, W, 3), np.uint8)
    assert _error(lambda: predictor.add_prompt(frame, obj_id=3, **bad)).startswith(f"object 3: {shared}")
    spec = {"cam": {3: bad}}
    assert _error(lambda: parse_object_prompts(spec, {"cam": (H, W)}, 1)).startswith(
        f"object_prompts['cam'][3]: {shared}"
    )
    table = {"objects": [3], "episodes": {"0": {"3": bad}}}
    assert _error(lambda: load_prompts(table, 1, frame_shape=(H, W))).startswith(
        f"prompts: episode 0 object 3: {shared}"
    )


# --------------------------------------------------------------------------------------------
# good prompts


def test_good_prompts_are_normalised_the_same_everywhere() -> None:
    """Labels as ints (numpy / torch too), one bare [x, y] pair, JSON string ids: all accepted, as floats and ints."""
    want = {"points": [[10.0, 20.0]], "labels": [0], "box": [1.0, 2.0, 30.0, 40.0]}
    for points, labels in (
        ([10, 20], [0]),
        (np.array([[10, 20]]), np.array([0])),
        (torch.tensor([[10.0, 20]]), torch.tensor([0])),
    ):
        assert check_prompt({"points": points, "labels": labels, "box": [1, 2, 30, 40]}, "", (H, W)) == want
    assert check_prompt({"points": [[64, 48], [0, 0]]}, "", (H, W)) == {
        "points": [[64.0, 48.0], [0.0, 0.0]],
        "labels": [1, 1],
    }
    assert object_id(np.int64(7)) == 7 and object_id(" -2 ", text=True) == -2
    assert parse_object_prompts({"cam": {"2": {"box": [1, 2, 30, 40]}}}, {"cam": (H, W)}, 1) == {
        "cam": {2: {"box": want["box"]}}
    }


def test_prompts_map_through_the_resize_and_centre_crop_as_the_encoder_did() -> None:
    """A camera point (x, y) lands at (x * rw / W - left, y * rh / H - top) in the view; the box by its corners."""
    view = View.of((48, 80), (64, 96), (64, 64))  # resize 48x80 -> 64x96, centre crop 64x64: 16 columns cut each side
    assert (view.scale_y, view.scale_x, view.top, view.left, view.height, view.width) == (
        64 / 48,
        96 / 80,
        0,
        16,
        64,
        64,
    )
    moved = map_to_view({1: {"points": [[20.0, 30.0]], "labels": [1]}, 2: {"box": [40.0, 10.0, 60.0, 40.0]}}, view)
    assert moved == {
        1: {"points": [[20.0 * 1.2 - 16, 30.0 * (64 / 48)]], "labels": [1]},
        2: {"box": [40.0 * 1.2 - 16, 10.0 * (64 / 48), 60.0 * 1.2 - 16, 40.0 * (64 / 48)]},
    }
    assert view.bounds() == (16 / 1.2, 0.0, 80 / 1.2, 48.0)
    assert view.outside({"points": [[5.0, 5.0], [20.0, 5.0]]}) == [[5.0, 5.0]]
    assert View.of((48, 80), None, None).is_identity((48, 80)) and not view.is_identity((48, 80))
