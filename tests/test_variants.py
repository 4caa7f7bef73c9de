from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Sam2VideoModel

from sam2_encoder.variants import VARIANTS, check_image_size, get_variant

PARAMS_M = {"tiny": 38.9, "small": 46.0, "base_plus": 80.8, "large": 224.4}  # Meta's published sizes


def test_eight_variants_with_urls_and_hub_ids() -> None:
    assert len(VARIANTS) == 8
    v = get_variant("sam2.1_hiera_base_plus")
    assert v.url == "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_base_plus.pt"
    assert v.hub_id == "facebook/sam2.1-hiera-base-plus"
    assert get_variant("sam2_hiera_large").url.endswith("/072824/sam2_hiera_large.pt")


@pytest.mark.parametrize(
    "alias",
    [
        "sam2.1_hiera_tiny",
        "facebook/sam2.1-hiera-tiny",
        "sam2.1-hiera-tiny",
        "sam2.1_hiera_t",
        "sam2.1_hiera_tiny.pt",
        "SAM2.1_HIERA_T.yaml",
    ],
)
def test_aliases(alias: str) -> None:
    assert get_variant(alias).name == "sam2.1_hiera_tiny"


def test_unknown_variant_lists_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown SAM 2 variant 'sam3_hiera_tiny'; known variants: sam2_hiera_tiny"):
        get_variant("sam3_hiera_tiny")


@pytest.mark.parametrize("name", list(VARIANTS))
def test_parameter_counts(name: str) -> None:
    with torch.device("meta"):
        model = Sam2VideoModel(get_variant(name).video_model_config(1024))
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(millions - PARAMS_M[get_variant(name).size]) < 0.1


def test_check_image_size() -> None:
    assert check_image_size(224) == (224, 224)
    assert check_image_size((192, 256)) == (192, 256)
    with pytest.raises(ValueError, match=r"got 200; nearest valid sizes: 192, 192"):
        check_image_size(200)
    with pytest.raises(ValueError, match="int or"):
        check_image_size((64, 64, 3))


def test_check_image_size_takes_numpy_integers_and_refuses_the_rest() -> None:
    assert check_image_size(np.int64(224)) == (224, 224)
    assert check_image_size(np.array([192, 256])) == (192, 256)
    assert check_image_size((np.int32(64), 96)) == (64, 96)
    assert all(type(s) is int for s in check_image_size(np.int64(224)))
    for bad in (224.0, True, "224", None, (64,), np.float64(64)):
        with pytest.raises(ValueError, match="image_size must be an int or"):
            check_image_size(bad)


def test_model_configs_take_numpy_sizes_and_refuse_non_square() -> None:
    v = get_variant("sam2.1_hiera_tiny")
    assert type(v.image_model_config(np.int64(64)).prompt_encoder_config.image_size) is int
    assert v.video_model_config(np.int64(64)).image_size == 64
    with pytest.raises(ValueError, match=r"the video model takes a square image_size, got \(64, 96\)"):
        v.video_model_config((64, 96))
