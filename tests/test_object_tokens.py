"""Object tokens: exact area resizing and mask pooling, known scenes, the tracker-to-policy path, memo, errors."""

from __future__ import annotations

import math
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch

from sam2_encoder.camera_encoder import MultiCameraEncoder
from sam2_encoder.object_tokens import ObjectTokens, area_matrix, masked_average, resize_masks_area
from sam2_encoder.scene import synthetic_scene
from sam2_encoder.streaming import StreamingPredictor

SIZE = 64
VARIANT = "sam2.1_hiera_tiny"


def count_calls(module: torch.nn.Module) -> list[int]:
    """Batch sizes of every call of ``module`` (the trunk's patch embedding: one entry per trunk pass)."""
    calls: list[int] = []
    module.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    return calls


# --------------------------------------------------------------------------------------------
# exact references, written as explicit loops
# --------------------------------------------------------------------------------------------


def area_reference(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    """Mean of ``mask`` over each cell of an ``h x w`` grid, pixels as unit squares (explicit loops)."""
    big_h, big_w = mask.shape
    out = np.zeros((h, w))
    ch, cw = big_h / h, big_w / w
    for i in range(h):
        for j in range(w):
            total = 0.0
            for y in range(big_h):
                oy = min((i + 1) * ch, y + 1) - max(i * ch, y)
                if oy <= 0:
                    continue
                for x in range(big_w):
                    ox = min((j + 1) * cw, x + 1) - max(j * cw, x)
                    if ox > 0:
                        total += oy * ox * mask[y, x]
            out[i, j] = total / (ch * cw)
    return out


def tokens_reference(features: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mask-weighted average per object (explicit loops); zero token for an empty mask."""
    n, c, h, w = features.shape
    k = masks.shape[1]
    tokens = np.zeros((n, k, c))
    present = np.zeros((n, k), dtype=bool)
    for b in range(n):
        for o in range(k):
            weights = area_reference(masks[b, o], h, w)
            mass = weights.sum()
            present[b, o] = mass > 0
            if mass == 0:
                continue
            for ch in range(c):
                acc = 0.0
                for i in range(h):
                    for j in range(w):
                        acc += weights[i, j] * features[b, ch, i, j]
                tokens[b, o, ch] = acc / mass
    return tokens, present


@pytest.mark.parametrize("in_size, out_size", [(7, 3), (48, 4), (5, 5), (3, 7), (50, 14)])
def test_area_matrix_equals_explicit_overlaps(in_size: int, out_size: int) -> None:
    a = area_matrix(in_size, out_size, torch.float64)
    for i in range(out_size):
        lo, hi = i * in_size / out_size, (i + 1) * in_size / out_size
        for j in range(in_size):
            expected = max(0.0, min(hi, j + 1) - max(lo, j)) / (hi - lo)
            assert a[i, j].item() == pytest.approx(expected, abs=1e-12)
    torch.testing.assert_close(a.sum(1), torch.ones(out_size, dtype=torch.float64))


def test_mask_pooling_equals_hand_computed_reference() -> None:
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64)
    masks = torch.rand(2, 3, 10, 13, generator=g, dtype=torch.float64)  # soft masks, non-integer ratios
    masks[0, 1] = (masks[0, 1] > 0.7).double()  # a binary one
    masks[1, 2] = 0  # an empty one
    masks[1, 0] = 0
    masks[1, 0, 9, 12] = 1  # a single pixel in a corner: a sliver of one cell
    ref_tokens, ref_present = tokens_reference(features.numpy(), masks.numpy())

    resized = resize_masks_area(masks, (3, 4))
    for b in range(2):
        for o in range(3):
            np.testing.assert_allclose(resized[b, o].numpy(), area_reference(masks[b, o].numpy(), 3, 4), atol=1e-12)
    tokens, present = masked_average(features, resized)
    np.testing.assert_allclose(tokens.numpy(), ref_tokens, atol=1e-12)
    assert present.tolist() == ref_present.tolist() == [[True, True, True], [True, True, False]]
    torch.testing.assert_close(tokens[1, 0], features[1, :, 2, 3])  # the sliver's token is its cell's feature
    assert torch.equal(tokens[1, 2], torch.zeros(5, dtype=torch.float64))

    zero = ObjectTokens(5, 3, absent="zero").double()
    out = zero(features, masks).reshape(2, 3, 5)
    np.testing.assert_allclose(out.numpy(), ref_tokens, atol=1e-12)
    learned = ObjectTokens(5, 3, token_dim=4, absent="learned").double()
    out = learned(features, masks).reshape(2, 3, 4)
    torch.testing.assert_close(out[1, 2], learned.absent)  # the empty mask gets the learned embedding
    expected = learned.proj(torch.from_numpy(ref_tokens[0, 0]))
    torch.testing.assert_close(out[0, 0], expected)
    assert learned.output_dim == 12 and zero.output_dim == 15


# --------------------------------------------------------------------------------------------
# a synthetic scene with known masks through the real encoder
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene_encoder() -> MultiCameraEncoder:
    """Tokens only (no readout, no projection, zero for absent) so they can be compared with the pyramid."""
    return MultiCameraEncoder(
        {"cam": (3, SIZE, SIZE)},
        image_size=SIZE,
        object_masks_key="cam_masks",
        num_objects=4,
        object_tokens="replace",
        object_absent="zero",
    ).eval()


def test_synthetic_scene_with_known_masks_gives_expected_tokens(scene_encoder: MultiCameraEncoder) -> None:
    image = torch.from_numpy(synthetic_scene(SIZE, SIZE)).permute(2, 0, 1)[None].float() / 255
    masks = torch.zeros(1, 4, SIZE, SIZE, dtype=torch.bool)
    masks[0, 0, 0:32, 16:48] = True  # exactly s16 cells rows 0-1, columns 1-2 (16 px cells at 64 px)
    masks[0, 1] = True  # the whole image: the global average
    masks[0, 2, 40:48, 8:16] = True  # half of cell (2, 0), top half
    with torch.no_grad():
        s16 = scene_encoder.encoder(image).s16[0]  # (256, 4, 4)
        tokens = scene_encoder({"cam": image, "cam_masks": masks}).reshape(4, 256)
    torch.testing.assert_close(tokens[0], s16[:, 0:2, 1:3].mean(dim=(1, 2)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tokens[1], s16.mean(dim=(1, 2)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tokens[2], s16[:, 2, 0], atol=1e-5, rtol=1e-5)  # a part of one cell: that cell
    assert torch.equal(tokens[3], torch.zeros(256))  # empty mask
    assert scene_encoder.output_shape() == (4 * 256,)


# --------------------------------------------------------------------------------------------
# tracker -> policy: each frame is encoded once
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(present_checkpoint: Path) -> Path:
    """The shared tiny checkpoint whose objects stay present (conftest)."""
    return present_checkpoint


@pytest.mark.parametrize("fuse", ["pool", "coarse_to_fine"])
def test_tracker_to_policy_path_encodes_each_frame_once(checkpoint: Path, fuse: str) -> None:
    h, w, to = 48, 80, 2
    base = synthetic_scene(h, w + 6, seed=1)
    video = [np.ascontiguousarray(base[:, i : i + w]) for i in range(6)]
    pred = StreamingPredictor(VARIANT, checkpoint=checkpoint, image_size=SIZE)
    policy = MultiCameraEncoder(
        {"cam": (3, h, w)},
        checkpoint=checkpoint,
        image_size=SIZE,
        fuse=fuse,
        object_masks_key="cam_masks",
        num_objects=2,
        object_level="s8" if fuse == "coarse_to_fine" else "s16",
    ).eval()
    tracker_calls = count_calls(pred.model.vision_encoder.backbone.patch_embed)
    policy_calls = count_calls(policy.encoder.vision_encoder.backbone.patch_embed)

    pred.add_prompt(video[0], obj_id=1, points=[[20, 20]], labels=[1])
    first = pred.add_prompt(None, obj_id=2, box=[40, 10, 75, 40], return_features=True)
    features = deque([policy.fuse_levels(first.features)] * to, maxlen=to)  # DP pads the first step
    masks = deque([first.masks[None]] * to, maxlen=to)
    pixels = deque([torch.from_numpy(video[0]).permute(2, 0, 1)[None].float() / 255] * to, maxlen=to)
    for frame in video[1:]:
        res = pred.track(frame, return_features=True)  # the one encoder pass of this frame
        assert res.obj_ids == [1, 2] and res.masks.any()
        features.append(policy.fuse_levels(res.features))
        masks.append(res.masks[None])
        pixels.append(torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255)
        with torch.no_grad():
            out = policy({"cam": torch.cat(list(features)), "cam_masks": torch.cat(list(masks))})
        assert out.shape == (to, policy.output_shape()[0])
    assert tracker_calls == [1] * len(video), "the tracker encodes each frame once"
    assert policy_calls == [], "the policy reads the tracker's features: no second encoder pass"

    # the same as the policy encoding the frames itself (its own pass, same weights)
    with torch.no_grad():
        own = policy({"cam": torch.cat(list(pixels)), "cam_masks": torch.cat(list(masks))})
    torch.testing.assert_close(out, own, atol=1e-5, rtol=1e-5)
    assert policy_calls == [to]


# --------------------------------------------------------------------------------------------
# frame memo, crops, errors
# --------------------------------------------------------------------------------------------


def test_frame_memo_matches_frames_and_their_masks() -> None:
    kwargs = dict(image_size=SIZE, object_masks_key="m", num_objects=2, object_token_dim=8)
    enc = MultiCameraEncoder({"cam": (3, 40, 40)}, **kwargs).eval()
    plain = MultiCameraEncoder({"cam": (3, 40, 40)}, reuse_frames=False, **kwargs).eval()
    plain.load_state_dict(enc.state_dict())
    calls = count_calls(enc.encoder.vision_encoder.backbone.patch_embed)
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(4, 3, 40, 40, generator=g)
    masks = torch.rand(4, 2, 40, 40, generator=g) > 0.6
    with torch.no_grad():
        for t in range(3):  # a control loop with To = 2
            obs = {"cam": frames[t : t + 2], "m": masks[t : t + 2]}
            torch.testing.assert_close(enc(obs), plain(obs), atol=1e-5, rtol=1e-5)
        assert calls == [2, 1, 1], "each frame encoded once"
        # the remembered frame with other masks is not a hit: its tokens must follow the new masks
        other = masks[3:4].clone()
        other[0, 0] = ~other[0, 0]
        obs = {"cam": frames[2:4], "m": torch.cat([masks[2:3], other])}
        out = enc(obs)
        assert calls[-1] == 1  # frame 2 with its old masks was a hit; frame 3 with new masks was not
        torch.testing.assert_close(out, plain(obs), atol=1e-5, rtol=1e-5)


def test_masks_get_the_images_resize_and_random_crop() -> None:
    enc = MultiCameraEncoder(
        {"cam": (3, 40, 48)},
        image_size=SIZE,
        resize_shape=(36, 44),
        crop_shape=(28, 30),
        object_masks_key="m",
        num_objects=3,
    ).train()
    g = torch.Generator().manual_seed(1)
    images = torch.rand(6, 3, 40, 48, generator=g)
    torch.manual_seed(0)
    pixels, masks = enc._preprocess("cam", images, images.clone())  # masks equal to the image's channels
    assert masks.shape == (6, 3, 28, 30)
    # every row got its own random crop, and its masks the same one
    assert torch.equal(pixels, enc.encoder.transforms.finish(masks))
    assert len({tuple(m[0, :2, :2].flatten().tolist()) for m in masks}) > 1


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(object_masks_key="m"), ValueError, r"names one key but there are 2 cameras"),
        (dict(object_masks_key={"cam_x": "m"}), ValueError, r"cameras \['cam_x'\] that are not among"),
        (dict(object_masks_key={"a": "pos"}), ValueError, r"distinct from each other and from the camera / low-dim"),
        (dict(object_masks_key={"a": "m", "b": "m"}), ValueError, r"distinct"),
        (dict(object_masks_key={"a": "m"}, levels=["s8"], object_level="s16"), ValueError, r"coarsest of levels"),
        (dict(object_masks_key={"a": "m"}, object_level="s32"), ValueError, r"object_level must be one of"),
        (dict(object_masks_key={"a": "m"}, object_tokens="both"), ValueError, r"'append' or 'replace'"),
        (dict(object_masks_key={"a": "m"}, object_absent="nan"), ValueError, r"'learned' or 'zero'"),
        (dict(object_masks_key={"a": "m"}, share_heads=True), ValueError, r"share_heads=True needs object masks"),
        (dict(object_masks_key={"a": "m"}, num_objects=0), ValueError, r"num_objects must be a whole number >= 1"),
    ],
)
def test_bad_object_token_options(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        MultiCameraEncoder({"a": (3, 32, 32), "b": (3, 32, 32)}, {"pos": (2,)}, image_size=SIZE, **kwargs)


@pytest.mark.parametrize(
    "masks, error, match",
    [
        (None, KeyError, r"missing 'm', the object masks of camera 'cam'"),
        (
            torch.zeros(2, 3, 32, 32, dtype=torch.bool),
            ValueError,
            r"has shape \(2, 3, 32, 32\); expected \(2, 2, 32, 32\)",
        ),
        (torch.zeros(2, 2, 16, 16, dtype=torch.bool), ValueError, r"then the camera's H, W"),
        (torch.zeros(2, 2, 32, 32, dtype=torch.uint8), TypeError, r"bool or float in \[0, 1\], got torch.uint8"),
        (torch.full((2, 2, 32, 32), 1.5), ValueError, r"must lie in \[0, 1\]; found 1.5"),
        (torch.full((2, 2, 32, 32), float("nan")), ValueError, r"must lie in \[0, 1\]; found nan"),
        (np.zeros((2, 2, 32, 32), dtype=bool), TypeError, r"must be a torch.Tensor, got ndarray"),
    ],
)
def test_bad_masks(masks, error: type, match: str) -> None:
    enc = MultiCameraEncoder({"cam": (3, 32, 32)}, image_size=SIZE, object_masks_key="m", num_objects=2)
    obs = {"cam": torch.rand(2, 3, 32, 32)}
    if masks is not None:
        obs["m"] = masks
    with pytest.raises(error, match=match):
        enc(obs)


def test_cameras_without_masks_keep_their_plain_head_and_output_size() -> None:
    enc = MultiCameraEncoder(
        {"a": (3, 32, 32), "b": (3, 32, 32)},
        {"pos": (2,)},
        image_size=SIZE,
        object_masks_key={"b": "b_masks"},
        num_objects=3,
        object_token_dim=16,
    )
    assert type(enc.head_for("a")).__name__ == "SpatialSoftmax"
    assert type(enc.head_for("b")).__name__ == "CameraHead"
    assert enc.output_shape() == (64 + 64 + 3 * 16 + 2,)
    g = torch.Generator().manual_seed(0)
    obs = {"a": torch.rand(2, 3, 32, 32, generator=g), "b": torch.rand(2, 3, 32, 32, generator=g)}
    obs |= {"pos": torch.rand(2, 2, generator=g), "b_masks": torch.rand(2, 3, 32, 32, generator=g)}
    out = enc(obs)
    assert out.shape == (2, enc.output_shape()[0]) and math.isfinite(out.sum().item())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_objects": 2.5}, "num_objects must be a whole number >= 1, got 2.5"),
        ({"num_objects": "2"}, "num_objects must be a whole number >= 1, got '2'"),
        ({"num_objects": True}, "num_objects must be a whole number >= 1, got True"),
        ({"num_objects": 0}, "num_objects must be a whole number >= 1, got 0"),
        ({"object_token_dim": 0}, "object_token_dim must be a whole number >= 1, got 0"),
        ({"object_token_dim": -3}, "object_token_dim must be a whole number >= 1, got -3"),
        ({"object_masks_key": ""}, "object_masks_key is an empty string"),
        ({"object_masks_key": {"cam": 5}}, "must map each camera to a non-empty obs key (a string), got {'cam': 5}"),
        ({"seed": 2.5}, "seed must be a whole number in [-2**63, 2**64), got 2.5"),
    ],
)
def test_bad_object_token_options_get_one_clear_error(options: dict, message: str) -> None:
    options = {"object_masks_key": "m", **options}
    with pytest.raises(ValueError) as info:
        MultiCameraEncoder({"cam": (3, 40, 40)}, image_size=SIZE, **options)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((8, 0), "num_objects must be a whole number >= 1, got 0"),
        ((8, 2.0), "num_objects must be a whole number >= 1, got 2.0"),
        ((0, 2), "in_channels must be a whole number >= 1, got 0"),
        ((8, 2, 0), "token_dim must be a whole number >= 1 or None, got 0"),
    ],
)
def test_object_tokens_module_checks_its_sizes(args: tuple, message: str) -> None:
    with pytest.raises(ValueError) as info:
        ObjectTokens(*args)
    assert message in str(info.value)
