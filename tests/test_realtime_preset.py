"""The real-time preset ``+sam2_realtime=cpu_bf16`` (issue 24), as a Diffusion Policy user composes it.

- It composes over DP's (stub) real-robot workspace and our SAM 2 workspace on top: every field it
  sets reaches ``policy.obs_encoder``, everything else stays as the workspace sets it.
- The encoder Hydra builds from it has the preset's options: bf16 trunk, frame reuse, 224 px.
- In a control loop (To = 2, two cameras) it encodes one new frame per camera and step; where the
  CPU has no native bf16 it refuses with one error naming what is missing.
- The presets ship once: ``config/`` (the package's Hydra configs) and the guide's copies are equal.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from sam2_encoder import SAM2ObsEncoder
from sam2_encoder.image_encoder import bf16_support

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "config" / "sam2_realtime" / "cpu_bf16.yaml"
DP_STUB = Path(__file__).parent / "dp_stub_config"
WORKSPACE = "train_diffusion_unet_real_sam2_workspace"


def compose_realtime(*overrides: str, preset: str = "cpu_bf16"):
    """DP's real-robot workspace with SAM 2 and a real-time preset, as ``train.py`` composes it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(DP_STUB), version_base=None):
        cfg = compose(config_name=WORKSPACE, overrides=[f"+sam2_realtime={preset}", *overrides])
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))


def test_the_preset_sets_its_fields_and_leaves_the_workspace_alone() -> None:
    pytest.importorskip("hydra")
    preset = yaml.safe_load(PRESET.read_text())
    cfg = compose_realtime()
    node = cfg.policy.obs_encoder
    assert node._target_ == "sam2_encoder.SAM2ObsEncoder"
    assert {k: node[k] for k in preset} == preset
    assert preset["precision"] == "bf16" and preset["reuse_frames"] is True and preset["image_size"] == 224
    # the workspace's own choices are kept: two 240x320 cameras, its crop, DP's n_obs_steps
    assert sorted(k for k, v in node.shape_meta.obs.items() if v.type == "rgb") == ["camera_0", "camera_1"]
    assert list(node.crop_shape) == [216, 288] and cfg.n_obs_steps == 2 and node.rgb_model is None


def test_the_encoder_built_from_the_preset_has_its_options() -> None:
    from hydra.utils import instantiate

    encoder: SAM2ObsEncoder = instantiate(compose_realtime().policy.obs_encoder)
    assert encoder.config.backbone.precision == "bf16" and encoder.encoder.precision == "bf16"
    assert encoder.reuse_frames and encoder.encoder.image_size == (224, 224) and encoder.encoder.frozen
    assert not encoder.use_compile


def test_a_control_loop_with_the_preset_encodes_one_new_frame_per_camera_and_step() -> None:
    """Steps 0-2 of a To = 2 loop: each call's trunk pass holds one frame per camera (bf16 where native)."""
    from hydra.utils import instantiate

    cfg = compose_realtime("policy.obs_encoder.image_size=64")  # the preset's path, at a test's size
    encoder: SAM2ObsEncoder = instantiate(cfg.policy.obs_encoder).eval()
    g = torch.Generator().manual_seed(0)
    frames = [{c: torch.rand(3, 240, 320, generator=g) * 2 - 1 for c in ("camera_0", "camera_1")} for _ in range(3)]
    windows = [(frames[0], frames[0]), (frames[0], frames[1]), (frames[1], frames[2])]  # DP pads step 0
    obs = [{c: torch.stack([w[c] for w in window]) for c in frames[0]} for window in windows]
    for o in obs:
        o["robot_eef_pose"] = torch.zeros(2, 2)
    native, why = bf16_support("cpu")
    if not native:
        with pytest.raises(ValueError, match=re.escape(f"precision='bf16' needs native bfloat16 on cpu: {why}")):
            encoder(obs[0])
        return
    rows: list[int] = []
    embed = encoder.encoder.vision_encoder.backbone.patch_embed
    handle = embed.register_forward_pre_hook(lambda _m, args: rows.append(args[0].shape[0]))
    with torch.no_grad():
        outputs = [encoder(o) for o in obs]
    handle.remove()
    assert rows == [2, 2, 2]
    assert all(out.shape == (2, encoder.output_shape()[0]) and torch.isfinite(out).all() for out in outputs)


def test_the_presets_ship_once() -> None:
    for preset in sorted(PRESET.parent.glob("*.yaml")):
        twin = REPO / "integration" / "diffusion_policy" / "config" / "sam2_realtime" / preset.name
        assert twin.read_bytes() == preset.read_bytes(), preset.name


def test_the_openvino_preset_runs_the_frozen_trunk_in_openvino() -> None:
    """``+sam2_realtime=cpu_openvino`` is cpu_bf16 plus ``backend: openvino``, and the built trunk runs there."""
    pytest.importorskip("hydra")
    pytest.importorskip("openvino", reason="the [openvino] extra is not installed")
    from hydra.utils import instantiate

    node = compose_realtime(preset="cpu_openvino").policy.obs_encoder
    bf16 = compose_realtime().policy.obs_encoder
    assert node.backend == "openvino" and {k: v for k, v in node.items() if k != "backend"} == {
        k: v for k, v in bf16.items() if k != "backend"
    }
    encoder: SAM2ObsEncoder = instantiate(node)
    assert encoder.encoder.backend == "openvino" and encoder.encoder.precision == "bf16"
