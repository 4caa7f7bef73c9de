"""The stock ``lerobot-rollout`` runs a trained ``sam2_diffusion`` checkpoint on the ``pusht_sim`` robot (offline, CPU).

Sync backend (``select_action`` once per tick), base strategy, a short bounded run; ``rtc`` is refused
(``supports_rtc()`` is False). LeRobot 0.6 venv only (.ci/lerobot.sh).
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest

pytest.importorskip(
    "lerobot", reason="LeRobot 0.6 is not installed here (it needs Python >= 3.12); .ci/lerobot.sh runs these tests"
)
pytest.importorskip("gym_pusht", reason="gym-pusht is not installed: pip install 'lerobot[pusht]'")
for _dist in ("lerobot_policy_sam2", "lerobot_robot_pusht"):
    try:
        importlib.metadata.distribution(_dist)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"the {_dist} plugin is not installed (.ci/lerobot.sh installs it)", allow_module_level=True)

import subprocess  # noqa: E402

from .deploy_checkpoint import BIN, offline_env, run, trained_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, meta_checkpoint: Path) -> Path:
    return trained_checkpoint(tmp_path_factory, meta_checkpoint)


def rollout_command(model: Path, work: Path, *extra: str) -> list[str]:
    return [
        str(BIN / "lerobot-rollout"),
        "--robot.type=pusht_sim",
        "--robot.episode_length=6",
        f"--robot.calibration_dir={work / 'calib'}",
        f"--policy.path={model}",
        "--policy.device=cpu",
        "--task=Push the T-shaped block onto the target.",
        "--fps=10",
        "--play_sounds=false",
        "--return_to_initial_position=false",
        *extra,
    ]


def test_lerobot_rollout_sync_runs_the_policy_on_the_robot(model: Path, tmp_path: Path) -> None:
    """Both plugins are imported; the policy acts on the robot for the whole run; the robot finishes episodes."""
    log = run(
        rollout_command(model, tmp_path, "--inference.type=sync", "--duration=8"),
        offline_env(tmp_path / "home"),
        tmp_path / "rollout.log",
        cwd=tmp_path,
        timeout=400,
    )
    # both plugins found (lerobot-rollout logs their import before it sets up logging)
    assert "Policy loaded: type=sam2_diffusion, device=cpu" in log
    assert "Robot connected: pusht_sim" in log
    assert "pusht_sim episode 0 finished: 6 steps" in log  # 6 actions reached the robot
    assert "Duration limit reached" in log and "Rollout finished" in log
    assert re.search(r"pusht_sim disconnected after [1-9]\d* finished episodes", log)


def test_lerobot_rollout_rtc_is_refused_with_the_reason(model: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        rollout_command(model, tmp_path, "--inference.type=rtc", "--duration=2"),
        env=offline_env(tmp_path / "home"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "RTC inference is not supported by policy type 'sam2_diffusion'" in proc.stdout
