from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sam2_encoder import SAM2Transforms

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def reference(x01: torch.Tensor, size: int) -> torch.Tensor:
    """Meta's image-predictor order: [0, 1] -> bilinear antialiased resize -> normalise."""
    x = F.interpolate(x01, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (x - MEAN) / STD


@pytest.fixture
def frames() -> torch.Tensor:
    return torch.randint(0, 256, (2, 3, 40, 72), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_uint8_chw_hwc_numpy_and_lists_agree(frames: torch.Tensor) -> None:
    t = SAM2Transforms(64)
    expected = reference(frames.float() / 255, 64)
    hwc = frames.permute(0, 2, 3, 1)
    torch.testing.assert_close(t(frames), expected, rtol=0, atol=0)
    torch.testing.assert_close(t(hwc), expected, rtol=0, atol=0)
    torch.testing.assert_close(t(hwc.numpy()), expected, rtol=0, atol=0)
    torch.testing.assert_close(t([hwc[0].numpy(), hwc[1].numpy()]), expected, rtol=0, atol=0)
    torch.testing.assert_close(t(frames[0]), expected[:1], rtol=0, atol=0)


def test_float_ranges_convert_exactly(frames: torch.Tensor) -> None:
    x01 = frames.float() / 255
    expected = SAM2Transforms(64)(x01)
    dp = x01 * 2 - 1  # Diffusion Policy's range normaliser
    torch.testing.assert_close(SAM2Transforms(64, input_range=(-1, 1))(dp), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(SAM2Transforms(64, input_range=(0, 255))(x01 * 255), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(SAM2Transforms(64)(frames), expected, rtol=0, atol=0)


def test_bgr_is_flipped(frames: torch.Tensor) -> None:
    torch.testing.assert_close(SAM2Transforms(64, channel_order="BGR")(frames.flip(1)), SAM2Transforms(64)(frames))


def test_same_size_skips_resize_and_keeps_values() -> None:
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(SAM2Transforms(64)(x), (x - MEAN) / STD, rtol=0, atol=0)
    assert SAM2Transforms((64, 96))(torch.rand(1, 3, 10, 10)).shape == (1, 3, 64, 96)


def test_follows_module_device_and_is_batched() -> None:
    t = SAM2Transforms(32)
    assert t(torch.rand(5, 3, 50, 50)).shape == (5, 3, 32, 32)
    assert list(t.state_dict()) == [], "no persistent buffers: nothing to load from checkpoints"


@pytest.mark.parametrize(
    ("images", "kwargs", "error", "match"),
    [
        (torch.rand(1, 4, 32, 32), {}, ValueError, r"3 colour channels; got shape \(1, 4, 32, 32\)"),
        (torch.rand(32, 32), {}, ValueError, r"got \(32, 32\)"),
        (torch.full((1, 3, 8, 8), float("nan")), {}, ValueError, "NaN"),
        (torch.full((1, 3, 8, 8), 2.0), {}, ValueError, r"\[2, 2\], outside input_range \(0.0, 1.0\)"),
        (torch.full((1, 3, 8, 8), 200.0), {}, ValueError, "pass uint8"),
        (-torch.rand(1, 3, 8, 8), {}, ValueError, r"input_range=\(-1, 1\)"),
        (torch.full((1, 3, 8, 8), 1.5), {"input_range": (-1, 1)}, ValueError, r"outside input_range \(-1.0, 1.0\)"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.int32), {}, TypeError, "uint8 or floating point, got torch.int32"),
        ("image.png", {}, TypeError, "got str"),
        (torch.rand(2, 3, 0, 8), {}, ValueError, r"no pixels: shape \(2, 3, 0, 8\)"),
    ],
)
def test_bad_input_errors(images, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        SAM2Transforms(32, **kwargs)(images)


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="channel_order must be 'RGB' or 'BGR', got 'rgb'"):
        SAM2Transforms(32, channel_order="rgb")
    with pytest.raises(ValueError, match="high > low"):
        SAM2Transforms(32, input_range=(1, -1))
    with pytest.raises(ValueError, match="multiple of 32"):
        SAM2Transforms(100)
    with pytest.raises(ValueError, match=r"input_range must be finite, got \(0, inf\)"):
        SAM2Transforms(64, input_range=(0, float("inf")))
    with pytest.raises(ValueError, match=r"tolerance must be finite and >= 0, got -1"):
        SAM2Transforms(64, tolerance=-1)


def test_empty_batches_give_empty_outputs() -> None:
    """B = 0 is a valid batch: (0, 3, S, S) out, for tensors, arrays and lists alike."""
    t = SAM2Transforms((64, 96))
    for empty in (
        torch.rand(0, 3, 40, 50),
        torch.zeros(0, 40, 50, 3, dtype=torch.uint8),
        np.zeros((0, 3, 8, 8), np.float32),
        [],
    ):
        out = t(empty)
        assert out.shape == (0, 3, 64, 96) and out.dtype == torch.float32


def test_numpy_image_size_and_tolerance_bounds() -> None:
    t = SAM2Transforms(np.int64(64), tolerance=np.float32(0.0))
    assert t.image_size == (64, 64) and type(t.image_size[0]) is int
    assert t(torch.ones(1, 3, 8, 8)).shape == (1, 3, 64, 64)  # exactly at the bound passes with tolerance 0
    with pytest.raises(ValueError, match="outside input_range"):
        t(torch.full((1, 3, 8, 8), 1.0 + 1e-6))


def test_validation_can_be_skipped() -> None:
    out = SAM2Transforms(32, validate=False)(np.full((8, 8, 3), 2.0, dtype=np.float32))
    assert torch.isfinite(out).all()
