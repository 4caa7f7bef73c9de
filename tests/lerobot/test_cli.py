"""The stock ``lerobot-train`` / ``lerobot-eval`` commands with ``--policy.type=sam2_diffusion`` (offline, CPU).

A tiny LeRobotDataset is recorded from gym-pusht with a scripted policy, the policy is trained for
4 steps from a SAM 2 checkpoint file, that file is deleted, and the saved policy is evaluated on
pusht for 2 episodes and reloaded strictly. LeRobot 0.6 venv only (.ci/lerobot.sh).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "lerobot", reason="LeRobot 0.6 is not installed here (it needs Python >= 3.12); .ci/lerobot.sh runs these tests"
)
pytest.importorskip("gym_pusht", reason="gym-pusht is not installed: pip install 'lerobot[pusht]'")
try:
    importlib.metadata.distribution("lerobot_policy_sam2")
except importlib.metadata.PackageNotFoundError:
    pytest.skip(
        "the lerobot_policy_sam2 plugin is not installed: pip install ./integration/lerobot", allow_module_level=True
    )

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from sam2_encoder import SAM2ImageEncoder  # noqa: E402
from sam2_encoder.lerobot import SAM2DiffusionConfig, SAM2DiffusionPolicy  # noqa: E402

from .pusht_data import REPO_ID, record_pusht  # noqa: E402

BIN = Path(sys.executable).parent


def run(command: list[str], env: dict[str, str], log: Path) -> subprocess.CompletedProcess:
    """Run a console script; on failure show the end of its output."""
    proc = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    log.write_text(proc.stdout)
    assert proc.returncode == 0, f"{command[0]} failed ({proc.returncode}):\n{proc.stdout[-6000:]}"
    return proc


@pytest.fixture(scope="module")
def offline_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("hf")
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(home / "hf"),
        HF_LEROBOT_HOME=str(home / "lerobot"),
        WANDB_MODE="disabled",
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
    )
    return env


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, offline_env, meta_checkpoint: Path) -> dict[str, Path]:
    """``lerobot-train`` for 4 steps; the SAM 2 checkpoint file is deleted afterwards."""
    work = tmp_path_factory.mktemp("lerobot")
    data = record_pusht(work / "data", episodes=2, frames=24)
    ckpt = work / "sam2.1_hiera_tiny.pt"
    shutil.copy(meta_checkpoint, ckpt)
    out = work / "train"
    run(
        [
            str(BIN / "lerobot-train"),
            "--policy.type=sam2_diffusion",
            f"--dataset.repo_id={REPO_ID}",
            f"--dataset.root={data}",
            "--policy.device=cpu",
            "--policy.push_to_hub=false",
            f"--policy.sam2_checkpoint={ckpt}",
            "--policy.sam2_image_size=64",
            "--policy.down_dims=[32,64]",
            "--policy.num_train_timesteps=10",
            "--steps=4",
            "--batch_size=4",
            "--num_workers=0",
            "--save_freq=4",
            "--log_freq=1",
            "--wandb.enable=false",
            f"--output_dir={out}",
        ],
        offline_env,
        work / "train.log",
    )
    reference = SAM2ImageEncoder("sam2.1_hiera_tiny", checkpoint=ckpt, image_size=64).state_dict()
    ckpt.unlink()
    return {
        "work": work,
        "model": out / "checkpoints" / "last" / "pretrained_model",
        "log": work / "train.log",
        "sam2": reference,
    }


def test_lerobot_train_runs_and_saves_a_self_contained_policy(trained) -> None:
    log = trained["log"].read_text()
    assert "step:4 " in log and "Checkpoint policy after step 4" in log
    model = trained["model"]
    for name in ("config.json", "model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json"):
        assert (model / name).is_file(), name
    config = json.loads((model / "config.json").read_text())
    assert config["type"] == "sam2_diffusion" and config["normalization_mapping"]["VISUAL"] == "IDENTITY"
    pre = json.loads((model / "policy_preprocessor.json").read_text())
    norm = next(s for s in pre["steps"] if s["registry_name"] == "normalizer_processor")
    assert norm["config"]["norm_map"]["VISUAL"] == "IDENTITY"
    weights = load_file(str(model / "model.safetensors"))
    for key, value in trained["sam2"].items():  # the checkpoint's SAM 2 weights, frozen through training
        assert torch.equal(weights[f"encoder.encoder.{key}"], value), key


def test_lerobot_eval_runs_two_pusht_episodes_without_the_sam2_file(trained, offline_env) -> None:
    out = trained["work"] / "eval"
    run(
        [
            str(BIN / "lerobot-eval"),
            f"--policy.path={trained['model']}",
            "--policy.device=cpu",
            "--env.type=pusht",
            "--env.episode_length=30",
            "--eval.n_episodes=2",
            "--eval.batch_size=1",
            f"--output_dir={out}",
        ],
        offline_env,
        trained["work"] / "eval.log",
    )
    assert "Imported third-party plugin: lerobot_policy_sam2" in (trained["work"] / "eval.log").read_text()
    info = json.loads((out / "eval_info.json").read_text())
    assert info["overall"]["n_episodes"] == 2
    assert len(info["per_task"][0]["metrics"]["sum_rewards"]) == 2


def test_strict_reload_of_the_trained_policy(trained, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    policy = SAM2DiffusionPolicy.from_pretrained(trained["model"])
    assert isinstance(policy.config, SAM2DiffusionConfig) and not policy.training
    saved = load_file(str(trained["model"] / "model.safetensors"))
    state = policy.state_dict()
    assert set(saved) == set(state)
    for key, value in saved.items():
        assert torch.equal(state[key], value), key


def test_lerobot_train_resumes_without_the_sam2_file(trained, offline_env) -> None:
    """``--resume=true`` rebuilds the policy from the checkpoint (strict reload) and restores the optimizer groups."""
    train_config = trained["model"] / "train_config.json"
    run(
        [str(BIN / "lerobot-train"), "--resume=true", f"--config_path={train_config}", "--steps=5"],
        offline_env,
        trained["work"] / "resume.log",
    )
    log = (trained["work"] / "resume.log").read_text()
    assert "Resuming data order" in log and "step:5 " in log
    assert (trained["work"] / "train" / "checkpoints" / "000005" / "pretrained_model" / "model.safetensors").is_file()
