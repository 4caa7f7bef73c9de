"""The ``pusht_sim`` robot plugin (integration/lerobot_robot_pusht): gym-pusht as a LeRobot robot.

LeRobot finds it the way it finds any third-party robot (``register_third_party_plugins`` imports
the ``lerobot_robot_pusht`` distribution; ``make_robot_from_config`` finds ``PushTSim`` beside its
config). LeRobot 0.6 venv only (.ci/lerobot.sh).
"""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path

import pytest

pytest.importorskip(
    "lerobot", reason="LeRobot 0.6 is not installed here (it needs Python >= 3.12); .ci/lerobot.sh runs these tests"
)
pytest.importorskip("gym_pusht", reason="gym-pusht is not installed: pip install 'lerobot[pusht]'")
try:
    importlib.metadata.distribution("lerobot_robot_pusht")
except importlib.metadata.PackageNotFoundError:
    pytest.skip(
        "the lerobot_robot_pusht plugin is not installed: pip install ./integration/lerobot_robot_pusht",
        allow_module_level=True,
    )

import numpy as np  # noqa: E402
from lerobot.robots import RobotConfig, make_robot_from_config  # noqa: E402
from lerobot.utils.errors import DeviceNotConnectedError  # noqa: E402
from lerobot.utils.feature_utils import hw_to_dataset_features  # noqa: E402
from lerobot.utils.import_utils import register_third_party_plugins  # noqa: E402


def make_robot(tmp_path: Path, **options):
    """``--robot.type=pusht_sim`` built the way LeRobot's scripts build a robot from its config."""
    register_third_party_plugins()
    config_class = RobotConfig.get_choice_class("pusht_sim")
    return make_robot_from_config(config_class(calibration_dir=tmp_path, **options))


def test_discovered_as_a_third_party_robot(tmp_path: Path) -> None:
    """The distribution ``lerobot_robot_pusht`` registers ``pusht_sim``; LeRobot's factory builds ``PushTSim``."""
    robot = make_robot(tmp_path)
    assert type(robot).__name__ == "PushTSim" and robot.name == "pusht_sim"
    assert "pusht_sim" in RobotConfig.get_known_choices()
    assert not robot.is_connected and robot.is_calibrated


def test_declared_features_are_what_lerobot_treats_as_state_action_and_camera(tmp_path: Path) -> None:
    robot = make_robot(tmp_path, camera="front", width=64, height=48)
    assert robot.observation_features == {"x.pos": float, "y.pos": float, "front": (48, 64, 3)}
    assert robot.action_features == {"x.pos": float, "y.pos": float}
    features = hw_to_dataset_features(robot.observation_features, "observation")
    assert features["observation.state"]["names"] == ["x.pos", "y.pos"]
    assert features["observation.images.front"]["shape"] == (48, 64, 3)


def test_connect_observe_act_disconnect(tmp_path: Path) -> None:
    """Observations match the declared features; an action moves the agent towards its target, clipped to [0, 512]."""
    robot = make_robot(tmp_path, width=64, height=64)
    with pytest.raises(DeviceNotConnectedError):
        robot.get_observation()
    robot.connect()
    try:
        obs = robot.get_observation()
        assert set(obs) == set(robot.observation_features)
        frame = obs["top"]
        assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8 and frame.std() > 0
        start = np.array([obs["x.pos"], obs["y.pos"]])
        target = np.clip(start + [60.0, -60.0], 0, 512)
        for _ in range(5):
            sent = robot.send_action({"x.pos": float(target[0]), "y.pos": float(target[1])})
        after = robot.get_observation()
        moved = np.array([after["x.pos"], after["y.pos"]])
        assert np.linalg.norm(target - moved) < np.linalg.norm(target - start)
        assert not np.array_equal(after["top"], frame)  # the render follows the agent
        assert robot.send_action({"x.pos": 900.0, "y.pos": -3.0}) == {"x.pos": 512.0, "y.pos": 0.0}
        with pytest.raises(KeyError, match="y.pos"):
            robot.send_action({"x.pos": 1.0})
        assert sent == {"x.pos": float(target[0]), "y.pos": float(target[1])}
    finally:
        robot.disconnect()
    assert not robot.is_connected
    with pytest.raises(DeviceNotConnectedError):
        robot.send_action({"x.pos": 1.0, "y.pos": 1.0})


def test_episodes_restart_after_episode_length_and_are_logged(tmp_path: Path, caplog) -> None:
    """After ``episode_length`` actions the episode's result is logged and the next episode (seed + 1) starts."""
    robot = make_robot(tmp_path, episode_length=3, seed=7)
    first = make_robot(tmp_path, episode_length=3, seed=8)
    robot.connect()
    first.connect()
    try:
        with caplog.at_level(logging.INFO):
            for _ in range(3):
                robot.send_action({"x.pos": 256.0, "y.pos": 256.0})
        assert [r["steps"] for r in robot.finished] == [3] and robot.episode == 1
        assert "pusht_sim episode 0 finished: 3 steps" in caplog.text
        # the second episode starts where a fresh robot seeded 8 starts
        assert np.array_equal(robot.get_observation()["top"], first.get_observation()["top"])
    finally:
        robot.disconnect()
        first.disconnect()


def test_bad_options_give_one_clear_error(tmp_path: Path) -> None:
    register_third_party_plugins()
    config_class = RobotConfig.get_choice_class("pusht_sim")
    with pytest.raises(ValueError, match=r"--robot.width=0; expected a positive integer"):
        config_class(width=0)
    with pytest.raises(ValueError, match=r"--robot.camera='a.b'"):
        config_class(camera="a.b")
