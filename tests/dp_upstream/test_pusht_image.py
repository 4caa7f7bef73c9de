"""The guide's steps 3-5 run verbatim: DP's own train.py with SAM 2 on pusht_image, the reload
snippet, then a reload like eval.py on an "eval machine" and a robot loop like eval_real_robot.py."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import numpy as np
import pytest

from ._dp import (
    REAL_DEPS,
    SIM_DEPS,
    assert_reload_and_robot_loop,
    read_logs,
    run_guide_block,
    write_guards,
)


@pytest.fixture(scope="module")
def smoke(dp_dir: Path, pusht_zarr: Path, meta_weights: Path, tmp_path_factory: pytest.TempPathFactory):
    """Step 5's training command, verbatim, with the sim / real-robot extras blocked and no network.

    The data and weights sit where steps 4 puts them (``data/pusht/pusht_cchi_v7_replay.zarr``:
    our synthetic pusht-style buffer; ``checkpoints/sam2.1_hiera_tiny.pt``: a Meta-format file of
    seeded weights, since tests never download).
    """
    data = dp_dir / "data" / "pusht" / "pusht_cchi_v7_replay.zarr"
    if not data.exists():
        data.parent.mkdir(parents=True, exist_ok=True)
        data.symlink_to(pusht_zarr, target_is_directory=True)
    weights = dp_dir / "checkpoints" / "sam2.1_hiera_tiny.pt"
    weights.parent.mkdir(exist_ok=True)
    weights.hardlink_to(meta_weights)
    guards = write_guards(tmp_path_factory.mktemp("guards"), sorted(set(SIM_DEPS) | set(REAL_DEPS)))
    output, seconds = run_guide_block("hydra.run.dir=data/outputs/sam2_smoke", dp_dir, [guards])
    return {
        "out": dp_dir / "data" / "outputs" / "sam2_smoke",
        "weights": weights,
        "output": output,
        "seconds": seconds,
        "guards": guards,
    }


def test_guide_training_command(smoke) -> None:
    logs = read_logs(smoke["out"])
    epochs = [entry for entry in logs if "val_loss" in entry]
    assert [entry["epoch"] for entry in epochs] == [0, 1], logs
    assert all(np.isfinite(entry["train_loss"]) and np.isfinite(entry["val_loss"]) for entry in epochs)
    assert np.isfinite(epochs[0]["train_action_mse_error"])  # predict_action on a training batch ran
    assert (smoke["out"] / "checkpoints" / "latest.ckpt").is_file()
    assert "number of parameters: 3.613460e+05" in smoke["output"]  # what the guide says it prints
    assert "Traceback" not in smoke["output"]


def test_guide_predict_snippet(smoke, dp_dir: Path) -> None:
    output, _ = run_guide_block("predict_action(obs)", dp_dir, [smoke["guards"]])
    match = re.search(r"predict_action: \(1, 8, 2\) \[(-?[\d.]+), (-?[\d.]+)\]", output)
    assert match, output[-3000:]
    assert all(np.isfinite(float(v)) for v in match.groups())


def test_reload_like_eval_and_robot_loop(smoke, pusht_zarr: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import zarr

    def no_network(*args, **kwargs):
        raise OSError("network access during reload")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    root = zarr.open(str(pusht_zarr), mode="r")
    stream = {"image": root["data/img"][:25], "agent_pos": root["data/state"][:25, :2]}
    assert_reload_and_robot_loop(smoke["out"] / "checkpoints" / "latest.ckpt", [smoke["weights"]], stream, smoke["out"])


def test_plugin_visible_to_dp_train_py(dp_dir: Path) -> None:
    """The guide's check: `python train.py --info searchpath` lists our configs (provider sam2-encoder)."""
    import subprocess
    import sys

    from ._dp import python_env

    result = subprocess.run(
        [sys.executable, "train.py", "--info", "searchpath"],
        cwd=dp_dir,
        env=python_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "sam2-encoder" in line]
    assert len(rows) == 1 and "pkg://sam2_encoder" in rows[0], result.stdout
