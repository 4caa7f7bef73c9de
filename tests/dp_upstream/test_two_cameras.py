"""Two cameras + a low-dim key (our task yaml over DP's RealPushTImageDataset), obs_as_global_cond=False:
DP's train.py, reload like eval.py, robot loop."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from ._dp import (
    NO_SIM_RUNNER,
    REAL_DEPS,
    TEST_CONFIG,
    assert_reload_and_robot_loop,
    link_weights,
    read_logs,
    run_train,
    tiny_overrides,
)
from .conftest import require

SHAPE_META = {
    "obs": {
        "front": {"shape": [3, 48, 64], "type": "rgb"},
        "wrist": {"shape": [3, 48, 64], "type": "rgb"},
        "robot_eef_pose": {"shape": [2], "type": "low_dim"},
    },
    "action": {"shape": [2]},
}


@pytest.fixture(scope="module")
def trained(dp_dir: Path, meta_weights: Path, tmp_path_factory: pytest.TempPathFactory):
    require(REAL_DEPS, "DP real-robot dataset extras")
    from ._dp import write_real_dataset

    root = tmp_path_factory.mktemp("two_cameras")
    dataset = write_real_dataset(root / "dataset", SHAPE_META)
    weights = link_weights(meta_weights, root)
    out = root / "outputs"
    args = [
        "--config-name=train_diffusion_unet_sam2_workspace",
        f"hydra.searchpath=[file://{TEST_CONFIG}]",
        "task=two_camera_image",
        f"task.dataset_path={dataset}",
        "obs_as_global_cond=false",
        f"policy.obs_encoder.checkpoint={weights}",
        "policy.obs_encoder.crop_shape=[40,56]",
        *NO_SIM_RUNNER,
        *tiny_overrides(out, batch=2),
    ]
    output, seconds = run_train(dp_dir, args, out)
    return {"out": out, "weights": weights, "dataset": dataset, "output": output, "seconds": seconds}


def test_two_cameras_train(trained) -> None:
    logs = read_logs(trained["out"])
    epochs = [entry for entry in logs if "val_loss" in entry]
    assert [entry["epoch"] for entry in epochs] == [0, 1], logs
    assert all(np.isfinite(entry["train_loss"]) for entry in epochs)
    assert (trained["out"] / "checkpoints" / "latest.ckpt").is_file()


def test_two_cameras_reload_and_robot_loop(trained, monkeypatch: pytest.MonkeyPatch) -> None:
    import zarr
    from diffusion_policy.common.replay_buffer import ReplayBuffer

    from ._dp import shape_meta_hash

    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: (_ for _ in ()).throw(OSError("network")))
    with zarr.ZipStore(str(trained["dataset"] / f"{shape_meta_hash(SHAPE_META)}.zarr.zip"), mode="r") as store:
        buffer = ReplayBuffer.copy_from_store(src_store=store, store=zarr.MemoryStore())
    stream = {key: buffer[key][:25] for key in SHAPE_META["obs"]}
    assert_reload_and_robot_loop(
        trained["out"] / "checkpoints" / "latest.ckpt", [trained["weights"]], stream, trained["out"]
    )
