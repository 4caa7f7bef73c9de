"""A policy to deploy: a dataset recorded from the ``pusht_sim`` robot, and ``lerobot-train`` for 2 steps on it.

The dataset's features are the robot's own (``observation.images.top``, ``observation.state`` /
``action`` named ``x.pos``, ``y.pos``), as ``lerobot-record`` would write them, so the checkpoint runs
on the robot with no rename map (``lerobot-rollout`` and the async robot client). The checkpoint is
trained once per test session (kept under pytest's base temp folder) and shared by the deployment tests.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .pusht_data import TASK, scripted_action

BIN = Path(sys.executable).parent
REPO_ID = "local/pusht_sim_robot_tiny"


def offline_env(home: Path) -> dict[str, str]:
    """The environment of an offline LeRobot command: hub and datasets offline, caches under ``home``."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(home / "hf"),
        HF_LEROBOT_HOME=str(home / "lerobot"),
        WANDB_MODE="disabled",
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
        PYTHONUNBUFFERED="1",
    )
    return env


def run(command: list[str], env: dict[str, str], log: Path, cwd: Path, timeout: float = 600) -> str:
    """Run a command to completion (bounded); on failure show the end of its output."""
    proc = subprocess.run(
        command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout
    )
    log.write_text(proc.stdout)
    assert proc.returncode == 0, f"{Path(command[0]).name} failed ({proc.returncode}):\n{proc.stdout[-6000:]}"
    return proc.stdout


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def record_with_robot(root: Path, episodes: int = 2, frames: int = 16) -> Path:
    """Drive ``pusht_sim`` with the scripted pusher and record what it observes and is sent (PNG frames)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.robots import RobotConfig, make_robot_from_config
    from lerobot.utils.feature_utils import build_dataset_frame, hw_to_dataset_features
    from lerobot.utils.import_utils import register_third_party_plugins

    register_third_party_plugins()
    config = RobotConfig.get_choice_class("pusht_sim")(calibration_dir=root.parent / "calib", episode_length=frames)
    robot = make_robot_from_config(config)
    features = {
        **hw_to_dataset_features(robot.observation_features, "observation", use_video=False),
        **hw_to_dataset_features(robot.action_features, "action", use_video=False),
    }
    dataset = LeRobotDataset.create(
        repo_id=REPO_ID, fps=10, features=features, root=root, robot_type=robot.name, use_videos=False
    )
    robot.connect()
    try:
        for _ in range(episodes):
            for step in range(frames):
                obs = robot.get_observation()
                agent = np.array([obs["x.pos"], obs["y.pos"]])
                block = np.array(robot.env.unwrapped.block.position)
                target = scripted_action(agent, block, step)
                action = {"x.pos": float(target[0]), "y.pos": float(target[1])}
                frame = {**build_dataset_frame(features, obs, "observation")}
                frame.update(build_dataset_frame(features, action, "action"), task=TASK)
                dataset.add_frame(frame)
                robot.send_action(action)  # the last one ends the robot's episode: the next starts
            dataset.save_episode()
        dataset.finalize()
    finally:
        robot.disconnect()
    return root


def tiny_train_command(data: Path, repo_id: str, sam2: Path, out: Path, steps: int, *options: str) -> list[str]:
    """The stock ``lerobot-train`` command of the tests' tiny policy (64 px, a small UNet, CPU, offline).

    Args:
        data: The dataset root; ``repo_id`` its id.
        sam2: The SAM 2 checkpoint file.
        out: The output folder (checkpoints under ``out/checkpoints``).
        steps: Training steps; the checkpoint is saved at the last one.
        *options: More ``--policy.*`` options (memory, object masks, ...).
    """
    return [
        str(BIN / "lerobot-train"),
        "--policy.type=sam2_diffusion",
        f"--dataset.repo_id={repo_id}",
        f"--dataset.root={data}",
        "--policy.device=cpu",
        "--policy.push_to_hub=false",
        f"--policy.sam2_checkpoint={sam2}",
        "--policy.sam2_image_size=64",
        "--policy.down_dims=[32,64]",
        "--policy.num_train_timesteps=10",
        *options,
        f"--steps={steps}",
        "--batch_size=4",
        "--num_workers=0",
        f"--save_freq={steps}",
        "--log_freq=1",
        "--wandb.enable=false",
        f"--output_dir={out}",
    ]


def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory, meta_checkpoint: Path) -> Path:
    """``OUT/checkpoints/last/pretrained_model`` of a 2-step ``lerobot-train`` on the robot's data (once a session)."""
    work = tmp_path_factory.getbasetemp() / "sam2_deploy"
    model = work / "train" / "checkpoints" / "last" / "pretrained_model"
    if (model / "model.safetensors").is_file():
        return model
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    data = record_with_robot(work / "data")
    sam2 = work / "sam2.1_hiera_tiny.pt"
    shutil.copy(meta_checkpoint, sam2)
    command = tiny_train_command(data, REPO_ID, sam2, work / "train", steps=2)
    run(command, offline_env(work / "home"), work / "train.log", cwd=work)
    sam2.unlink()  # the checkpoint is self-contained
    return model
