"""Record a tiny local LeRobotDataset from gym-pusht with a scripted policy (no hub, no network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO_ID = "local/pusht_sam2_tiny"
TASK = "Push the T-shaped block onto the target."
MASKS = "observation.masks"  # (2, 96, 96) bool: agent (object 1), T block (object 2); no "image" in the key


def scripted_action(agent: np.ndarray, block: np.ndarray, step: int) -> np.ndarray:
    """Move towards a point circling the block (a deterministic, smooth pushing motion)."""
    angle = 0.3 * step
    target = block[:2] + 40.0 * np.array([np.cos(angle), np.sin(angle)])
    move = np.clip(target - agent, -25.0, 25.0)
    return np.clip(agent + move, 0.0, 512.0).astype(np.float32)


def object_masks(env, size: int = 96) -> np.ndarray:
    """Exact masks of the agent and the T block rendered from the simulator state (what the frame shows).

    Returns:
        ``(2, size, size)`` bool: channel 0 the agent (a disc), channel 1 the T block (its two
        polygons), in the frame's pixels (the simulator's 512 x 512 units scaled like the render).
    """
    import cv2

    sim = env.unwrapped
    scale = size / 512
    masks = np.zeros((2, size, size), np.uint8)
    for shape in sim.agent.shapes:
        x, y = (np.array(sim.agent.position) * scale).tolist()
        cv2.circle(masks[0], (round(x), round(y)), max(1, round(shape.radius * scale)), 1, thickness=-1)
    for shape in sim.block.shapes:
        corners = np.array([sim.block.local_to_world(v) for v in shape.get_vertices()]) * scale
        cv2.fillPoly(masks[1], [np.round(corners).astype(np.int32)], 1)
    return masks.astype(bool)


def record_pusht(root: Path, episodes: int = 2, frames: int = 24, seed: int = 0, masks: bool = False) -> Path:
    """Write ``episodes`` episodes of ``frames`` frames to ``root`` (images stored as PNG, no video).

    With ``masks``, every frame also gets :data:`MASKS`, the agent's and the block's exact masks
    from the simulator state (:func:`object_masks`), stored as a bool array feature.

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
    if masks:
        features[MASKS] = {"dtype": "bool", "shape": (2, 96, 96), "names": ["object", "height", "width"]}
    dataset = LeRobotDataset.create(repo_id=REPO_ID, fps=10, features=features, root=root, use_videos=False)
    env = gym.make("gym_pusht/PushT-v0", obs_type="pixels_agent_pos")
    try:
        for episode in range(episodes):
            obs, info = env.reset(seed=seed + episode)
            for step in range(frames):
                action = scripted_action(obs["agent_pos"], info["block_pose"], step)
                frame = {
                    "observation.image": obs["pixels"],
                    "observation.state": obs["agent_pos"].astype(np.float32),
                    "action": action,
                    "task": TASK,
                }
                if masks:
                    frame[MASKS] = object_masks(env)
                dataset.add_frame(frame)
                obs, _, _, _, info = env.step(action)
            dataset.save_episode()
        dataset.finalize()
    finally:
        env.close()
    return root
