"""Policy memory with the stock ``lerobot-train`` / ``lerobot-eval`` (offline, CPU).

``--policy.memory=sam2``: LeRobot's own dataset loads each sample's bank frames (the config's
``observation_delta_indices``), training runs 2 steps from a SAM 2 checkpoint file, the file is
deleted, the saved policy reloads strictly (the memory's weights are in ``model.safetensors``) and
``lerobot-eval`` runs a pusht episode with the policy's own banks, fed one frame per control step.
LeRobot 0.6 venv only (.ci/lerobot.sh).
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
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

from sam2_encoder.lerobot import SAM2DiffusionPolicy  # noqa: E402
from sam2_encoder.lerobot.memory_history import FIRST_FRAME  # noqa: E402

from .deploy_checkpoint import BIN, offline_env, run, tiny_train_command  # noqa: E402
from .pusht_data import REPO_ID, record_pusht  # noqa: E402

MEMORY = ["--policy.memory=sam2", "--policy.memory_frames=2", "--policy.memory_stride=3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, meta_checkpoint: Path) -> dict[str, Path]:
    """``lerobot-train`` 2 steps with memory on two recorded pusht episodes; the SAM 2 file is then deleted."""
    work = tmp_path_factory.mktemp("lerobot_memory")
    data = record_pusht(work / "data", episodes=2, frames=16)
    ckpt = work / "sam2.1_hiera_tiny.pt"
    shutil.copy(meta_checkpoint, ckpt)
    command = tiny_train_command(data, REPO_ID, ckpt, work / "train", 2, *MEMORY)
    run(command, offline_env(work / "home"), work / "train.log", cwd=work)
    ckpt.unlink()
    return {"work": work, "model": work / "train" / "checkpoints" / "last" / "pretrained_model"}


def test_lerobot_train_with_memory_saves_the_memory_options_and_weights(trained) -> None:
    assert "step:2 " in (trained["work"] / "train.log").read_text()
    config = json.loads((trained["model"] / "config.json").read_text())
    assert (config["memory"], config["memory_frames"], config["memory_stride"]) == ("sam2", 2, 3)
    assert config["memory_keep_first"] is True and config["memory_source"] == "frame"
    weights = load_file(str(trained["model"] / "model.safetensors"))
    assert any(key.startswith("encoder.memory.memory_attention.") for key in weights)
    assert any(key.startswith("encoder.memory.memory_encoder.") for key in weights)


def test_the_trained_policy_with_memory_reloads_strictly_without_the_sam2_file(
    trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    policy = SAM2DiffusionPolicy.from_pretrained(trained["model"])
    saved = load_file(str(trained["model"] / "model.safetensors"))
    state = policy.state_dict()
    assert set(saved) == set(state) and all(torch.equal(state[k], v) for k, v in saved.items())
    # the window (-1, 0), its banks (first frame, -4, -7) and (first frame, -3, -6)
    assert policy.config.observation_delta_indices == [FIRST_FRAME, -7, -6, -4, -3, -1, 0]


def test_lerobot_eval_runs_a_pusht_episode_with_the_policys_own_banks(trained) -> None:
    out = trained["work"] / "eval"
    run(
        [
            str(BIN / "lerobot-eval"),
            f"--policy.path={trained['model']}",
            "--policy.device=cpu",
            "--env.type=pusht",
            "--env.episode_length=12",
            "--eval.n_episodes=1",
            "--eval.batch_size=1",
            f"--output_dir={out}",
        ],
        offline_env(trained["work"] / "home"),
        trained["work"] / "eval.log",
        cwd=trained["work"],
    )
    info = json.loads((out / "eval_info.json").read_text())
    assert info["overall"]["n_episodes"] == 1
