"""Record a tiny local LeRobotDataset from gym-pusht with a scripted policy (no hub, no network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO_ID = "local/pusht_sam2_tiny"
TASK = "Push the T-shaped block onto the target."


def scripted_action(agent: np.ndarray, block: np.ndarray, step: int) -> np.ndarray:
    """Move towards a point circling the block (a deterministic, smooth pushing motion)."""
    angle = 0.3 * step
    target = block[:2] + 40.0 * np.array([np.cos(angle), np.sin(angle)])
    move = np.clip(target - agent, -25.0, 25.0)
    return np.clip(agent + move, 0.0, 512.0).astype(np.float32)


def record_pusht(root: Path, episodes: int = 2, frames: int = 24, seed: int = 0) -> Path:
    """Write ``episodes`` episodes of ``frames`` frames to ``root`` (images stored as PNG, no video).

    Returns:
        ``root``, a LeRobotDataset readable with ``--dataset.repo_id=local/pusht_sam2_tiny --dataset.root=root``.
    """
    import gym_pusht  # noqa: F401  (registers the env)
    import gymnasium as gym
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {
        "observation.image": {"dtype": "image", "shape": (96, 96, 3), "names": ["height", "width", "channel"]},
        "observation.state": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
        "action": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
    }
    dataset = LeRobotDataset.create(repo_id=REPO_ID, fps=10, features=features, root=root, use_videos=False)
    env = gym.make("gym_pusht/PushT-v0", obs_type="pixels_agent_pos")
    try:
        for episode in range(episodes):
            obs, info = env.reset(seed=seed + episode)
            for step in range(frames):
                action = scripted_action(obs["agent_pos"], info["block_pose"], step)
                dataset.add_frame(
                    {
                        "observation.image": obs["pixels"],
                        "observation.state": obs["agent_pos"].astype(np.float32),
                        "action": action,
                        "task": TASK,
                    }
                )
                obs, _, _, _, info = env.step(action)
            dataset.save_episode()
        dataset.finalize()
    finally:
        env.close()
    return root
