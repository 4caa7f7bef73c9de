"""The cached-feature workspace: `sam2-encoder cache` on a DP replay buffer, DP's train.py with
train_diffusion_unet_sam2_cached_workspace, reload like eval.py (cache and SAM 2 file gone), robot loop."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ._dp import (
    NO_SIM_RUNNER,
    assert_reload_and_robot_loop,
    link_weights,
    python_env,
    read_logs,
    run_train,
    tiny_overrides,
)


@pytest.fixture(scope="module")
def trained(dp_dir: Path, pusht_zarr: Path, meta_weights: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cached")
    weights = link_weights(meta_weights, root)
    cache = root / "pusht_sam2.zarr"
    # the guide's cache command, at the tiny test size
    cmd = [
        "sam2-encoder",
        "cache",
        str(pusht_zarr),
        "--keys",
        "img",
        "--image-size",
        "64",
        "--checkpoint",
        str(weights),
        "--levels",
        "s16",
        "--dtype",
        "float16",
        "--out",
        str(cache),
    ]
    result = subprocess.run(cmd, env=python_env(cache_dir=root / "sam2_cache"), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    out = root / "outputs"
    args = [
        "--config-name=train_diffusion_unet_sam2_cached_workspace",
        "task=pusht_image",
        f"task.dataset.zarr_path={pusht_zarr}",
        f"feature_cache={cache}",
        f"policy.obs_encoder.checkpoint={weights}",
        *NO_SIM_RUNNER,
        *tiny_overrides(out),
    ]
    output, seconds = run_train(dp_dir, args, out)
    return {
        "out": out,
        "weights": weights,
        "cache": cache,
        "output": output,
        "seconds": seconds,
        "cache_output": result.stdout + result.stderr,
    }


def test_cached_workspace_trains(trained) -> None:
    assert "feature cache ready" in trained["cache_output"]
    logs = read_logs(trained["out"])
    epochs = [entry for entry in logs if "val_loss" in entry]
    assert [entry["epoch"] for entry in epochs] == [0, 1], logs
    assert all(np.isfinite(entry["train_loss"]) for entry in epochs)
    assert (trained["out"] / "checkpoints" / "latest.ckpt").is_file()


def test_cached_reload_and_robot_loop(trained, pusht_zarr: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import zarr

    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: (_ for _ in ()).throw(OSError("network")))
    root = zarr.open(str(pusht_zarr), mode="r")
    stream = {"image": root["data/img"][:25], "agent_pos": root["data/state"][:25, :2]}
    assert_reload_and_robot_loop(
        trained["out"] / "checkpoints" / "latest.ckpt", [trained["weights"], trained["cache"]], stream, trained["out"]
    )
