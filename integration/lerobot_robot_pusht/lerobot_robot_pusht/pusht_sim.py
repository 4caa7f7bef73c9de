"""``PushTSim``: a LeRobot ``Robot`` whose hardware is the gym-pusht simulator.

Observation: ``x.pos``, ``y.pos`` (the agent's position, simulator units in [0, 512]) and one camera
(the sim's render, ``(height, width, 3)`` uint8). Action: ``x.pos``, ``y.pos``, the agent's target
position (clipped to [0, 512]); each :meth:`PushTSim.send_action` advances the simulator one step.
The keys end in ``.pos`` like a real arm's joints, so ``lerobot-rollout`` and the async
``robot_client`` treat them as state and action.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from lerobot.robots.robot import Robot
from lerobot.utils.errors import DeviceAlreadyConnectedError, DeviceNotConnectedError

from .config_pusht_sim import PushTSimConfig

logger = logging.getLogger(__name__)

JOINTS = ("x", "y")
LOW, HIGH = 0.0, 512.0


class PushTSim(Robot):
    """gym-pusht as a robot: connect starts an episode, each action is one simulator step.

    Episodes restart on their own (after ``episode_length`` actions or on success); the result of
    each is logged (``pusht_sim episode K finished: N steps, success=..., coverage=...``) and kept in
    :attr:`finished`.

    Args:
        config: The robot's options (:class:`PushTSimConfig`).
    """

    config_class = PushTSimConfig
    name = "pusht_sim"

    def __init__(self, config: PushTSimConfig) -> None:
        super().__init__(config)
        self.config = config
        self.env: Any = None
        self.episode = 0
        self.steps = 0
        self.finished: list[dict[str, Any]] = []
        self._obs: dict[str, np.ndarray] | None = None

    @property
    def observation_features(self) -> dict[str, Any]:
        """``{"x.pos": float, "y.pos": float, camera: (height, width, 3)}``."""
        features: dict[str, Any] = {f"{joint}.pos": float for joint in JOINTS}
        features[self.config.camera] = (self.config.height, self.config.width, 3)
        return features

    @property
    def action_features(self) -> dict[str, Any]:
        """``{"x.pos": float, "y.pos": float}``: the agent's target position."""
        return {f"{joint}.pos": float for joint in JOINTS}

    @property
    def is_connected(self) -> bool:
        """Whether the simulator is running."""
        return self.env is not None

    @property
    def is_calibrated(self) -> bool:
        """Always ``True``: a simulator needs no calibration."""
        return True

    def connect(self, calibrate: bool = True) -> None:
        """Start the simulator and the first episode.

        Raises:
            DeviceAlreadyConnectedError: When already connected.
        """
        if self.is_connected:
            raise DeviceAlreadyConnectedError(f"{self} is already connected")
        import gym_pusht  # noqa: F401  (registers gym_pusht/PushT-v0)
        import gymnasium as gym

        self.env = gym.make(
            "gym_pusht/PushT-v0",
            obs_type="pixels_agent_pos",
            observation_width=self.config.width,
            observation_height=self.config.height,
            max_episode_steps=self.config.episode_length,
        )
        self.episode = 0
        self._start_episode()
        logger.info(
            "pusht_sim connected (gym-pusht, camera %r, %dx%d)",
            self.config.camera,
            self.config.width,
            self.config.height,
        )

    def calibrate(self) -> None:
        """Nothing to calibrate."""

    def configure(self) -> None:
        """Nothing to configure."""

    def get_observation(self) -> dict[str, Any]:
        """The agent's position and the current render.

        Returns:
            ``{"x.pos": float, "y.pos": float, camera: (height, width, 3) uint8}``.
        """
        obs = self._require_obs()
        out: dict[str, Any] = {f"{joint}.pos": float(obs["agent_pos"][i]) for i, joint in enumerate(JOINTS)}
        out[self.config.camera] = obs["pixels"].copy()
        return out

    def send_action(self, action: dict[str, Any]) -> dict[str, Any]:
        """Move the agent towards ``action`` for one simulator step.

        Args:
            action: ``{"x.pos": float, "y.pos": float}``, the target position.

        Returns:
            The action sent, clipped to the workspace [0, 512].

        Raises:
            KeyError: When ``action`` lacks ``x.pos`` or ``y.pos``.
        """
        self._require_obs()
        missing = [key for key in self.action_features if key not in action]
        if missing:
            raise KeyError(f"pusht_sim.send_action: missing {missing}; got keys {sorted(action)}")
        target = np.clip(np.array([float(action[key]) for key in self.action_features], np.float32), LOW, HIGH)
        self._obs, _, terminated, truncated, info = self.env.step(target)
        self.steps += 1
        if terminated or truncated:
            self._finish_episode(info)
        return {key: float(target[i]) for i, key in enumerate(self.action_features)}

    def disconnect(self) -> None:
        """Close the simulator.

        Raises:
            DeviceNotConnectedError: When not connected.
        """
        if not self.is_connected:
            raise DeviceNotConnectedError(f"{self} is not connected")
        self.env.close()
        self.env = None
        self._obs = None
        logger.info("pusht_sim disconnected after %d finished episodes", len(self.finished))

    def _require_obs(self) -> dict[str, np.ndarray]:
        if self._obs is None:
            raise DeviceNotConnectedError(f"{self} is not connected: call connect() first")
        return self._obs

    def _start_episode(self) -> None:
        seed = None if self.config.seed is None else self.config.seed + self.episode
        self._obs, _ = self.env.reset(seed=seed)
        self.steps = 0

    def _finish_episode(self, info: dict[str, Any]) -> None:
        result = {
            "episode": self.episode,
            "steps": self.steps,
            "success": bool(info.get("is_success", False)),
            "coverage": float(info.get("coverage", 0.0)),
        }
        self.finished.append(result)
        logger.info(
            "pusht_sim episode %d finished: %d steps, success=%s, coverage=%.3f",
            result["episode"],
            result["steps"],
            result["success"],
            result["coverage"],
        )
        self.episode += 1
        self._start_episode()
