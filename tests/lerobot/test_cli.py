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

from .deploy_checkpoint import tiny_train_command  # noqa: E402
from .pusht_data import MASKS, REPO_ID, record_pusht  # noqa: E402

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
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two recorded pusht episodes, with the agent's and the block's masks (:data:`MASKS`)."""
    return record_pusht(tmp_path_factory.mktemp("pusht") / "data", episodes=2, frames=24, masks=True)


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, offline_env, meta_checkpoint: Path, dataset: Path
) -> dict[str, Path]:
    """``lerobot-train`` for 4 steps; the SAM 2 checkpoint file is deleted afterwards."""
    work = tmp_path_factory.mktemp("lerobot")
    data = dataset
    ckpt = work / "sam2.1_hiera_tiny.pt"
    shutil.copy(meta_checkpoint, ckpt)
    out = work / "train"
    run(
        tiny_train_command(data, REPO_ID, ckpt, out, 4),
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
    # the dataset's mask feature is not read by this policy: it is not normalised (LeRobot would fail on bools)
    assert MASKS in config["input_features"] and MASKS not in norm["config"]["normalize_observation_keys"]
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


# ------------------------------------------------------------------------------------------------
# object tokens: masks from the dataset in training, the policy's own tracker in lerobot-eval
# ------------------------------------------------------------------------------------------------

# eval prompts: the environment's objects start anywhere, so a fixed left / right half box each
# (a robot would call policy.set_object_prompts with a person's clicks or a detector's boxes)
EVAL_PROMPTS = '{"observation.image": {"1": {"box": [0, 0, 48, 96]}, "2": {"box": [48, 0, 96, 96]}}}'


@pytest.fixture(scope="module")
def trained_objects(
    tmp_path_factory: pytest.TempPathFactory, offline_env, meta_checkpoint: Path, dataset: Path
) -> dict[str, Path]:
    """``lerobot-train`` 2 steps with object tokens from the dataset's masks; the SAM 2 file is then deleted."""
    work = tmp_path_factory.mktemp("lerobot_objects")
    ckpt = work / "sam2.1_hiera_tiny.pt"
    shutil.copy(meta_checkpoint, ckpt)
    out = work / "train"
    run(
        tiny_train_command(
            dataset,
            REPO_ID,
            ckpt,
            out,
            2,
            f'--policy.object_masks={{"observation.image": "{MASKS}"}}',
            "--policy.num_objects=2",
            "--policy.object_token_dim=16",
        ),
        offline_env,
        work / "train.log",
    )
    ckpt.unlink()
    return {"work": work, "model": out / "checkpoints" / "last" / "pretrained_model", "log": work / "train.log"}


def test_lerobot_train_with_dataset_masks_keeps_them_out_of_normalisation(trained_objects) -> None:
    assert "step:2 " in trained_objects["log"].read_text()
    model = trained_objects["model"]
    config = json.loads((model / "config.json").read_text())
    assert config["object_masks"] == {"observation.image": MASKS} and config["num_objects"] == 2
    assert config["input_features"][MASKS]["shape"] == [2, 96, 96]
    pre = json.loads((model / "policy_preprocessor.json").read_text())
    norm = next(s for s in pre["steps"] if s["registry_name"] == "normalizer_processor")
    assert MASKS not in norm["config"]["features"]
    assert MASKS not in norm["config"]["normalize_observation_keys"]
    assert "observation.state" in norm["config"]["normalize_observation_keys"]
    stats = load_file(str(model / (norm["state_file"])))
    assert not any(key.startswith(MASKS) for key in stats) and any(k.startswith("observation.state") for k in stats)
    weights = load_file(str(model / "model.safetensors"))
    assert any(key.startswith("encoder.tracker.parts.memory_attention.") for key in weights), "tracker weights saved"


def test_lerobot_eval_tracks_the_objects_itself_and_the_policy_reloads_strictly(
    trained_objects, offline_env, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = trained_objects["work"] / "eval"
    run(
        [
            str(BIN / "lerobot-eval"),
            f"--policy.path={trained_objects['model']}",
            "--policy.device=cpu",
            f"--policy.object_prompts={EVAL_PROMPTS}",  # chosen at evaluation time
            "--env.type=pusht",
            "--env.episode_length=8",
            "--eval.n_episodes=1",
            "--eval.batch_size=1",
            f"--output_dir={out}",
        ],
        offline_env,
        trained_objects["work"] / "eval.log",
    )
    info = json.loads((out / "eval_info.json").read_text())
    assert info["overall"]["n_episodes"] == 1
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    policy = SAM2DiffusionPolicy.from_pretrained(trained_objects["model"])
    saved = load_file(str(trained_objects["model"] / "model.safetensors"))
    state = policy.state_dict()
    assert set(saved) == set(state) and all(torch.equal(state[k], v) for k, v in saved.items())
    # training saved no prompts: the episode above ran on --policy.object_prompts (without them the
    # policy stops with "no object prompts for stream 0")
    assert policy.object_tracker is not None and policy.config.object_prompts == {}
    with pytest.raises(ValueError, match="no object prompts for stream 0"):
        policy.select_action({"observation.image": torch.rand(1, 3, 96, 96), "observation.state": torch.zeros(1, 2)})
