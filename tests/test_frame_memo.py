"""Frame memo of MultiCameraEncoder: frames repeated within one call are encoded once; forget_frames()."""

from __future__ import annotations

import pytest
import torch

from sam2_encoder.camera_encoder import MultiCameraEncoder

CAMERAS = {"cam_a": (3, 40, 40), "cam_b": (3, 48, 64)}


def make(**kwargs) -> MultiCameraEncoder:
    kwargs.setdefault("image_size", 64)
    return MultiCameraEncoder(CAMERAS, low_dim={"state": (2,)}, **kwargs).eval()


def pair(**kwargs) -> tuple[MultiCameraEncoder, MultiCameraEncoder]:
    """The encoder under test and the same weights with ``reuse_frames=False`` (encodes every row)."""
    enc = make(**kwargs)
    plain = make(reuse_frames=False, **kwargs)
    plain.load_state_dict(enc.state_dict(), strict=True)
    return enc, plain


def trunk_rows(enc: MultiCameraEncoder) -> list[int]:
    """Images per trunk pass (hook on the patch embedding)."""
    rows: list[int] = []
    enc.encoder.vision_encoder.backbone.patch_embed.register_forward_hook(lambda m, i, o: rows.append(len(i[0])))
    return rows


def frames(n: int, seed: int) -> dict[str, torch.Tensor]:
    """``n`` distinct frames per camera (float [0, 1]) and states."""
    g = torch.Generator().manual_seed(seed)
    out = {key: torch.rand(n, *shape, generator=g) for key, shape in CAMERAS.items()}
    out["state"] = torch.rand(n, 2, generator=g)
    return out


def pick(pool: dict[str, torch.Tensor], index: list[list[int]]) -> dict[str, torch.Tensor]:
    """``(B, To, ...)`` observations: row ``b``, step ``t`` is frame ``index[b][t]`` of ``pool``."""
    idx = torch.tensor(index)
    return {key: value[idx] for key, value in pool.items()}


def test_repeated_frames_within_a_call_are_encoded_once_with_identical_outputs() -> None:
    """Episode start (To=3: the first frame three times), then a control loop; every output bit-equal."""
    enc, plain = pair()
    rows = trunk_rows(enc)
    pool = frames(8, seed=0)
    calls = [
        [[0, 0, 0], [1, 1, 1]],  # two envs at the start of an episode: 2 distinct frames per camera
        [[0, 0, 2], [1, 1, 3]],  # one new frame per env
        [[2, 4, 4], [5, 5, 4]],  # frame 4 three times in two envs, frame 5 twice; frame 2 remembered
        [[6, 6, 6], [7, 2, 7]],  # new episodes; frame 2 remembered
    ]
    with torch.no_grad():
        for index in calls:
            obs = pick(pool, index)
            assert torch.equal(enc(obs), plain(obs)), index
    # per call: the distinct frames not seen in the previous call, x 2 cameras, in ONE trunk pass.
    # (Batch sizes matter for the last bits: at 64 px this CPU's trunk rounds s16 differently in
    # passes of 1-3, 4-15 and 16+ images, the batch-composition rounding of tests/test_numerics.py.
    # Every pass here, deduplicated (4) or not (12), is in the same range, so the outputs are equal.)
    assert rows == [2 * 2, 2 * 2, 2 * 2, 2 * 2]


def test_the_same_frame_with_other_masks_is_not_a_copy() -> None:
    """With object tokens, a row is a copy only when the frame AND its masks are equal."""
    kwargs = {"object_masks_key": {"cam_a": "masks_a"}, "num_objects": 2, "object_token_dim": 8}
    enc, plain = pair(**kwargs)
    rows = trunk_rows(enc)
    pool = frames(2, seed=1)
    g = torch.Generator().manual_seed(2)
    masks = torch.rand(3, 2, 40, 40, generator=g) > 0.5
    obs = pick(pool, [[0, 0, 0, 1]])
    # frame 0 three times: masks 0, 0, 1 -> two distinct (frame, masks) rows for cam_a; frame 1 with masks 2
    obs["masks_a"] = masks[torch.tensor([[0, 0, 1, 2]])]
    with torch.no_grad():
        out, expected = enc(obs), plain(obs)
    assert torch.equal(out, expected)
    assert rows == [3 + 2], "cam_a: (frame 0, masks 0), (frame 0, masks 1), (frame 1, masks 2); cam_b: frames 0, 1"
    tokens = out[0, :, : enc.head_for("cam_a").output_dim]
    assert torch.equal(tokens[0], tokens[1]) and not torch.equal(tokens[1], tokens[2])


def test_a_fingerprint_collision_is_caught_by_exact_equality() -> None:
    """Rows with equal fingerprints but different pixels are each encoded (within a call and across calls)."""
    enc, plain = pair()
    rows = trunk_rows(enc)
    enc._memo._fingerprint = lambda key, x: torch.zeros(len(x), dtype=torch.float64)  # every row collides
    pool = frames(3, seed=3)
    with torch.no_grad():
        for index in ([[0, 1, 0, 2]], [[2, 1, 1, 0]]):
            obs = pick(pool, index)
            assert torch.equal(enc(obs), plain(obs)), index
    # a collision only costs encodes: each row is compared with the FIRST row of equal fingerprint
    # (frame 0 in the previous call, frame 2 in this one), so only frame 0 is served
    assert rows == [3 * 2, 3 * 2], "first call: frames 0, 1, 2; second call: frames 2, 1, 1 (0 remembered)"


def test_training_and_autograd_encode_every_row() -> None:
    """Deduplication is part of frame reuse: off in train mode and with autograd (gradients per row)."""
    enc = make()
    rows = trunk_rows(enc)
    obs = pick(frames(1, seed=4), [[0, 0]])
    enc(obs)  # autograd on
    enc.train()
    with torch.no_grad():
        enc(obs)
    assert rows == [4, 4]


def test_forget_frames_clears_the_memo() -> None:
    enc, plain = pair()
    rows = trunk_rows(enc)
    obs = pick(frames(2, seed=5), [[0, 1]])
    with torch.no_grad():
        first = enc(obs)
        assert enc._memo.frames and torch.equal(enc(obs), first)
        enc.forget_frames()
        assert not enc._memo.frames and not enc._memo.outputs
        again = enc(obs)
    assert rows == [4, 4], "encoded, remembered, encoded again after forget_frames()"
    assert torch.equal(again, first) and torch.equal(again, plain(obs))
    assert enc.training is False, "forget_frames() leaves the mode alone"


@pytest.mark.parametrize("fuse", ["coarse_to_fine"])
def test_repeated_frames_with_the_coarse_to_fine_head(fuse: str) -> None:
    enc, plain = pair(fuse=fuse, fuse_stride=4)
    rows = trunk_rows(enc)
    obs = pick(frames(2, seed=6), [[0, 0], [1, 0]])
    with torch.no_grad():
        assert torch.equal(enc(obs), plain(obs))
    assert rows == [2 * 2]


def test_autocast_state_is_part_of_what_is_remembered() -> None:
    """Features computed in fp32 are not reused under bf16 autocast (nor the other way round)."""
    enc, plain = pair()
    rows = trunk_rows(enc)
    obs = pick(frames(2, seed=6), [[0, 1]])
    with torch.no_grad():
        fp32 = enc(obs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = enc(obs)
            assert torch.equal(low, plain(obs)), "encoded under autocast, like an encoder without a memo"
            assert torch.equal(enc(obs), low), "remembered under the same autocast state"
        assert not torch.equal(low, fp32)
        assert torch.equal(enc(obs), plain(obs)), "back in fp32: encoded again, not the bf16 features"
    assert rows == [4, 4, 4], "fp32, bf16 (a new autocast state), bf16 remembered, fp32 again"
