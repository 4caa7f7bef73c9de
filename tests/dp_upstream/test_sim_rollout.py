"""With the guide's simulator extras (gym 0.21, pygame, pymunk 6.2.1, ...), DP's own pusht rollouts run
on the SAM 2 policy inside train.py, and DP's top-k checkpoint (ranked by the rollout score) is saved."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._dp import SIM_DEPS, link_weights, read_logs, run_train, tiny_overrides
from .conftest import require


def test_pusht_rollout_in_train_py(dp_dir: Path, pusht_zarr: Path, meta_weights: Path, tmp_path: Path) -> None:
    require(SIM_DEPS, "DP pusht simulator extras")
    out = tmp_path / "outputs"
    args = [
        "--config-name=train_diffusion_unet_sam2_workspace",
        "task=pusht_image",
        f"task.dataset.zarr_path={pusht_zarr}",
        f"policy.obs_encoder.checkpoint={link_weights(meta_weights, tmp_path)}",
        "task.env_runner.n_train=1",
        "task.env_runner.n_train_vis=1",
        "task.env_runner.n_test=1",
        "task.env_runner.n_test_vis=0",
        "task.env_runner.max_steps=16",
        "training.rollout_every=1",
        *tiny_overrides(out, epochs=1, steps=1),
    ]
    run_train(dp_dir, args, out)
    final = read_logs(out)[-1]
    assert 0.0 <= final["test/mean_score"] <= 1.0 and np.isfinite(final["train/mean_score"]), final
    assert [p.name for p in (out / "checkpoints").glob("epoch=0000-test_mean_score=*.ckpt")], "top-k checkpoint"
    assert list((out / "media").glob("*.mp4")), "the rollout video DP records (av)"
