from __future__ import annotations

import copy
import pickle

import pytest
import torch
from transformers import Sam2Model, Sam2VideoModel

from sam2_encoder import FeaturePyramid, SAM2ImageEncoder
from sam2_encoder.variants import get_variant

from .conftest import perturb_


def hf_reference(model: Sam2Model | Sam2VideoModel, x: torch.Tensor) -> list[torch.Tensor]:
    """transformers' own path: get_image_features + no_memory_embedding, reshaped from the input size."""
    with torch.no_grad():
        maps = list(model.get_image_features(x).fpn_hidden_states)
        maps[-1] = maps[-1] + model.no_memory_embedding
    h, w = x.shape[-2:]
    return [m.permute(1, 2, 0).reshape(x.shape[0], -1, h // s, w // s) for m, s in zip(maps, (4, 8, 16))]


@pytest.fixture(scope="module")
def hf_tiny() -> Sam2Model:
    torch.manual_seed(0)
    return perturb_(Sam2Model(get_variant("sam2.1_hiera_tiny").image_model_config(256))).eval()


@pytest.mark.parametrize("hw", [(256, 256), (224, 224), (64, 96), (192, 256)])
@pytest.mark.parametrize("fast", [True, False])
def test_matches_transformers(hf_tiny: Sam2Model, hw: tuple[int, int], fast: bool) -> None:
    encoder = SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=hw, fast_attention=fast)
    encoder.load_sam2_weights(hf_tiny.state_dict())
    x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(3))
    pyramid = encoder.encode(x)
    for got, expected in zip(pyramid, hf_reference(hf_tiny, x)):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert pyramid.shapes == {
        "s4": (2, 32, hw[0] // 4, hw[1] // 4),
        "s8": (2, 64, hw[0] // 8, hw[1] // 8),
        "s16": (2, 256, hw[0] // 16, hw[1] // 16),
    }


def test_forward_preprocesses_then_encodes(hf_tiny: Sam2Model) -> None:
    encoder = SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=64)
    encoder.load_sam2_weights(hf_tiny.state_dict())
    frames = torch.randint(0, 256, (3, 90, 120, 3), dtype=torch.uint8)
    pyramid = encoder(frames)
    expected = encoder.encode(encoder.transforms(frames))
    for a, b in zip(pyramid, expected):
        assert torch.equal(a, b)
    assert pyramid.s16.shape == (3, 256, 4, 4)


def test_position_encodings_match_transformers(hf_tiny: Sam2Model) -> None:
    encoder = SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=64, with_pos_enc=True)
    encoder.load_sam2_weights(hf_tiny.state_dict())
    x = torch.randn(1, 3, 64, 64)
    pyramid = encoder.encode(x)
    with torch.no_grad():
        expected = hf_tiny.get_image_features(x).fpn_position_encoding
    for got, ref, s in zip(pyramid.pos_enc, expected, (4, 8, 16)):
        torch.testing.assert_close(got, ref.permute(1, 2, 0).reshape(1, 256, 64 // s, 64 // s), rtol=0, atol=0)
    assert SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=64).encode(x).pos_enc is None


def test_frozen_stays_eval_and_gradless() -> None:
    encoder = SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=64)
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training and not any(m.training for m in encoder.modules())
    out = encoder(torch.rand(1, 3, 64, 64))
    assert not out.s16.requires_grad
    with torch.no_grad():
        assert encoder(torch.rand(1, 3, 64, 64)).s16.is_inference()

    trainable = SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=64, freeze=False)
    trainable.train()
    assert trainable.training
    loss = trainable(torch.rand(1, 3, 64, 64)).s16.square().mean()
    loss.backward()
    assert trainable.vision_encoder.backbone.patch_embed.projection.weight.grad is not None


def test_seeded_random_init_is_deterministic_and_warns() -> None:
    with pytest.warns(UserWarning, match="no checkpoint"):
        a = SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=64, seed=5)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    b = SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=64, seed=5)
    assert torch.equal(torch.rand(1), before), "building must not consume the caller's RNG"
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_feature_info_and_shapes() -> None:
    encoder = SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=(64, 96))
    assert [(f["module"], f["num_chs"], f["reduction"]) for f in encoder.feature_info] == [
        ("s4", 32, 4),
        ("s8", 64, 8),
        ("s16", 256, 16),
    ]
    assert encoder.feature_shapes() == {"s4": (32, 16, 24), "s8": (64, 8, 12), "s16": (256, 4, 6)}


@pytest.mark.parametrize("size", [200, 240, 0, (64, 100)])
def test_bad_image_size_is_refused_up_front(size) -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=size)


def test_encode_checks_pixel_shape() -> None:
    encoder = SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=64)
    with pytest.raises(ValueError, match=r"multiple of 32.*\(64, 100\)"):
        encoder.encode(torch.zeros(1, 3, 64, 100))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\), got \(1, 4, 64, 64\)"):
        encoder.encode(torch.zeros(1, 4, 64, 64))


def test_feature_pyramid_container() -> None:
    maps = [torch.zeros(2, c, s, s) for c, s in ((32, 8), (64, 4), (256, 2))]
    pyramid = FeaturePyramid(*maps)
    assert len(pyramid) == 3 and [m.shape[1] for m in pyramid] == [32, 64, 256]
    assert pyramid["s8"] is maps[1] and pyramid[2] is maps[2]
    assert pyramid.to(torch.float64).s4.dtype == torch.float64
    assert pyramid.select(slice(0, 1)).s16.shape == (1, 256, 2, 2)
    with pytest.raises(KeyError, match="unknown level 's32'"):
        pyramid["s32"]


def test_deepcopy_pickle_and_bf16() -> None:
    encoder = SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=64)
    x = torch.rand(1, 3, 64, 64)
    ref = encoder(x).s16
    for clone in (copy.deepcopy(encoder), pickle.loads(pickle.dumps(encoder))):
        assert torch.equal(clone(x).s16, ref)
        assert clone.frozen and not clone.training
    half = SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=64, dtype=torch.bfloat16)
    assert half(x).s16.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = encoder(x).s16
    assert torch.isfinite(auto).all()
    torch.testing.assert_close(auto.float(), ref, atol=0.15, rtol=0.1)


def test_shares_weights_with_a_video_model(tiny_video_state) -> None:
    video = Sam2VideoModel(get_variant("sam2.1_hiera_tiny").video_model_config(64))
    video.load_state_dict(tiny_video_state)
    encoder = SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=64, model=video)
    assert encoder.vision_encoder is video.vision_encoder
    assert encoder.no_memory_embedding is video.no_memory_embedding
    x = torch.randn(1, 3, 64, 64)
    for got, expected in zip(encoder.encode(x), hf_reference(video, x)):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
