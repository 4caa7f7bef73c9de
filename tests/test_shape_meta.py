"""Diffusion Policy's shape_meta: whole-number shapes, and object masks declared as ``type: mask`` entries."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch

from sam2_encoder.camera_encoder import MultiCameraEncoder
from sam2_encoder.diffusion_policy.obs_encoder import SAM2ObsEncoder, parse_mask_meta, parse_shape_meta

SIZE = 32
META = {
    "obs": {
        "image": {"shape": [3, SIZE, 40], "type": "rgb"},
        "image_masks": {"shape": [2, SIZE, 40], "type": "mask", "camera": "image"},
        "agent_pos": {"shape": [2], "type": "low_dim"},
    },
    "action": {"shape": [2]},
}


@pytest.fixture(autouse=True)
def _no_random_weight_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*seeded random weights")
        yield


def test_shapes_are_whole_numbers_in_any_integer_form() -> None:
    meta = {
        "obs": {
            "c": {"shape": [3.0, np.int64(32), 32], "type": "rgb"},  # 32.0: YAML / JSON floats of whole numbers
            "pos": {"shape": np.array([2])},
        }
    }
    assert parse_shape_meta(meta) == ({"c": (3, 32, 32)}, {"pos": (2,)})
    assert all(type(v) is int for v in parse_shape_meta(meta)[0]["c"])
    for bad in ([3, 32.5, 32], [3, True, 32], [3, "32", 32], [3, 0, 32]):
        message = f"shape_meta.obs.c.shape must be whole numbers >= 1, got {bad!r}"
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_shape_meta({"obs": {"c": {"shape": bad, "type": "rgb"}}})


def test_mask_entries_are_kept_out_of_low_dim_and_feed_object_tokens() -> None:
    rgb, low_dim = parse_shape_meta(META)
    assert rgb == {"image": (3, SIZE, 40)} and low_dim == {"agent_pos": (2,)}
    assert parse_mask_meta(META) == {"image": ("image_masks", (2, SIZE, 40))}

    enc = SAM2ObsEncoder(META, image_size=SIZE).eval()
    assert enc.object_masks == {"image": "image_masks"} and enc.num_objects == 2
    assert enc.low_dim_keys == ["agent_pos"]
    explicit = MultiCameraEncoder(
        {"image": (3, SIZE, 40)},
        {"agent_pos": (2,)},
        image_size=SIZE,
        input_range=(-1.0, 1.0),
        object_masks_key="image_masks",
        num_objects=2,
    ).eval()
    explicit.load_state_dict(enc.state_dict(), strict=True)  # the same module tree
    assert enc.output_shape() == explicit.output_shape()
    assert (
        enc.output_shape()[0]
        == explicit.output_shape()[0]
        > SAM2ObsEncoder(
            {"obs": {k: v for k, v in META["obs"].items() if k != "image_masks"}}, image_size=SIZE
        ).output_shape()[0]
    )

    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(4, 2, SIZE, 40, dtype=torch.bool)
    masks[:, 0, 4:20, 6:30] = True
    masks[:2, 1, 10:, 20:] = True  # object 2 absent in the last two frames
    obs = {
        "image": torch.rand(4, 3, SIZE, 40, generator=g) * 2 - 1,
        "agent_pos": torch.rand(4, 2, generator=g) * 2 - 1,
        "image_masks": masks,
    }
    with torch.no_grad():
        out = enc(obs)
        assert out.shape == (4, enc.output_shape()[0])
        assert torch.equal(out, explicit(obs))
        moved = dict(obs, image_masks=torch.roll(masks, 3, dims=-1))
        assert not torch.equal(enc(moved), out), "the masks change the output"
    # the object-token layers train with the head
    enc.train()
    enc(obs).pow(2).sum().backward()
    grads = {n for n, p in enc.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert "heads.image.objects.absent" in grads, sorted(grads)  # the learned token of the absent object


def test_one_camera_needs_no_camera_attribute_and_the_options_may_repeat_shape_meta() -> None:
    obs = {"c": {"shape": [3, SIZE, SIZE], "type": "rgb"}, "c_masks": {"shape": [1, SIZE, SIZE], "type": "mask"}}
    assert parse_mask_meta({"obs": obs}) == {"c": ("c_masks", (1, SIZE, SIZE))}
    enc = SAM2ObsEncoder({"obs": obs}, image_size=SIZE, object_masks_key="c_masks", num_objects=1)
    assert enc.object_masks == {"c": "c_masks"} and enc.num_objects == 1
    enc = SAM2ObsEncoder({"obs": obs}, image_size=SIZE, object_masks_key={"c": "c_masks"}, num_objects=None)
    assert enc.object_masks == {"c": "c_masks"}
    plain = SAM2ObsEncoder({"obs": {"c": obs["c"]}}, image_size=SIZE, num_objects=None)  # null: no masks, default
    assert plain.object_masks == {} and plain.num_objects == 1


def test_hydra_config_with_masks_in_shape_meta_instantiates_and_reloads_strictly() -> None:
    pytest.importorskip("hydra")
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {
            "shape_meta": META,
            "policy": {
                "obs_encoder": {
                    "_target_": "sam2_encoder.SAM2ObsEncoder",
                    "shape_meta": "${shape_meta}",
                    "image_size": SIZE,
                    "object_masks_key": None,
                    "num_objects": None,
                    "object_token_dim": 16,
                }
            },
        }
    )
    enc = instantiate(cfg.policy.obs_encoder)  # ListConfig shapes, DictConfig entries
    assert enc.object_masks == {"image": "image_masks"} and enc.num_objects == 2
    again = instantiate(OmegaConf.create(OmegaConf.to_yaml(cfg)).policy.obs_encoder)
    again.load_state_dict(enc.state_dict(), strict=True)
