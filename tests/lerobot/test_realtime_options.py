"""The real-time option set of the LeRobot guide ("Real time on a CPU") is valid, as LeRobot parses it.

- The training flags parse into ``SAM2DiffusionConfig`` (draccus, as ``lerobot-train``) and give
  the encoder config of the DP preset ``+sam2_realtime=cpu_bf16``: 224 px, bf16, frame reuse.
- The deployment flags, given with ``--policy.path`` of a policy saved in fp32 (LeRobot's
  ``from_pretrained(..., cli_overrides=...)``, as ``lerobot-rollout``), load the same weights with
  bf16 and frame reuse; in a control loop of two cameras its trunk passes hold one new frame per
  camera and step and its actions stay within bf16 rounding of the fp32 policy's (where the CPU has
  native bf16; elsewhere the one error naming what is missing).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("lerobot")

import draccus  # noqa: E402

from sam2_encoder.image_encoder import bf16_support  # noqa: E402
from sam2_encoder.lerobot import SAM2DiffusionConfig, SAM2DiffusionPolicy  # noqa: E402
from tests.lerobot.test_policy import CAMERAS, TrunkCounter, frames, make_config  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "integration" / "lerobot" / "README.md"
PRESET = REPO / "config" / "sam2_realtime" / "cpu_bf16.yaml"
#: Flags that say where things are (paths, dataset, device), not what the policy is.
PLACE = {"type", "path", "device", "push_to_hub", "sam2_checkpoint"}


def guide_flags() -> tuple[list[str], list[str]]:
    """The ``--policy.*`` flags of the section's training and deployment commands, less ``PLACE``, as draccus args."""
    text = GUIDE.read_text()
    section = text[text.index("### Real time on a CPU") :].split("\n## ")[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 2, "expected the training and the deployment command"
    flags = [re.findall(r"--policy\.(\w+)=(\S+)", block) for block in blocks]
    return tuple([f"--{k}={v}" for k, v in found if k not in PLACE] for found in flags)  # type: ignore[return-value]


def test_the_training_flags_give_the_dp_presets_encoder_options() -> None:
    train, _ = guide_flags()
    cfg = draccus.parse(config_class=SAM2DiffusionConfig, args=[*train, "--device=cpu"])
    encoder = cfg.encoder_config()
    assert (encoder.backbone.image_size, encoder.backbone.precision, encoder.reuse_frames) == (224, "bf16", True)
    preset = yaml.safe_load(PRESET.read_text())
    assert encoder.backbone.compile is preset["compile"] is False
    assert (preset["image_size"], preset["precision"], preset["reuse_frames"]) == (224, "bf16", True)


def test_the_deployment_flags_load_an_fp32_policy_in_bf16_with_frame_reuse(tmp_path: Path) -> None:
    _, deploy = guide_flags()
    assert "--precision=bf16" in deploy and "--reuse_frames=true" in deploy
    trained = SAM2DiffusionPolicy(make_config(n_action_steps=1, reuse_frames=False)).eval()
    trained.save_pretrained(tmp_path)
    cfg = SAM2DiffusionConfig.from_pretrained(tmp_path, cli_overrides=[*deploy, "--device=cpu"])
    assert (cfg.precision, cfg.reuse_frames) == ("bf16", True)
    policy = SAM2DiffusionPolicy.from_pretrained(tmp_path, config=cfg).eval()
    assert policy.encoder.encoder.precision == "bf16"
    native, why = bf16_support("cpu")
    if not native:
        with pytest.raises(ValueError, match=re.escape(f"precision='bf16' needs native bfloat16 on cpu: {why}")):
            policy.select_action(frames(0))
        return
    runs = {}
    for name, p in (("fp32", trained), ("bf16", policy)):
        counter = TrunkCounter(p)
        p.reset()
        torch.manual_seed(0)
        with torch.inference_mode():
            runs[name] = (torch.stack([p.select_action(frames(step)) for step in range(4)]), counter.rows)
    assert runs["bf16"][1] == [len(CAMERAS)] * 4  # one new frame per camera and step
    assert runs["fp32"][1] == [2 * len(CAMERAS)] * 4
    torch.testing.assert_close(runs["bf16"][0], runs["fp32"][0], atol=2e-2, rtol=0)
