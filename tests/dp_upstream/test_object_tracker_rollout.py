"""Object tokens at inference without masks in the obs, through upstream DP: a policy trained by DP's own train.py
with the masks workspace and the obs encoder's tracker switched on by Hydra overrides, rolled out by DP's own
PushTImageRunner (its obs carry no masks) inside train.py, then reloaded like eval.py on a machine without the
SAM 2 file and the mask cache and run by a fresh PushTImageRunner: one trunk pass per new frame, masks tracked."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ._dp import SIM_DEPS, link_weights, load_like_eval, python_env, read_logs, run_train, tiny_overrides
from .conftest import require
from .test_object_masks import first_frame_prompts

# camera pixels of pusht's 96x96 frames, inside the 76x76 centre crop the encoder sees at inference
PROMPTS = "{image: {1: {box: [30, 30, 60, 60]}, 2: {points: [[48, 20]], labels: [1]}}}"


def test_dp_runner_rolls_out_a_masks_policy_that_tracks_itself(
    dp_dir: Path, pusht_zarr: Path, meta_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require(SIM_DEPS, "DP pusht simulator extras")
    import hydra
    import torch

    weights = link_weights(meta_weights, tmp_path)
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(first_frame_prompts(pusht_zarr)))
    masks = tmp_path / "pusht_img_masks.zarr"
    cmd = ["sam2-encoder", "masks", str(pusht_zarr), "--key", "img", "--prompts", str(prompts),
           "--checkpoint", str(weights), "--image-size", "64", "--out", str(masks), "--quiet"]  # fmt: skip
    result = subprocess.run(cmd, env=python_env(cache_dir=tmp_path / "sam2_cache"), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    out = tmp_path / "outputs"
    args = [
        "--config-name=train_diffusion_unet_sam2_masks_workspace",
        "task=pusht_image",
        f"task.dataset.zarr_path={pusht_zarr}",
        f"object_masks={masks}",
        "num_objects=2",
        f"policy.obs_encoder.checkpoint={weights}",
        "policy.obs_encoder.object_tracker=true",
        f"policy.obs_encoder.object_prompts={PROMPTS}",
        "task.env_runner.n_train=1", "task.env_runner.n_train_vis=0",
        "task.env_runner.n_test=1", "task.env_runner.n_test_vis=0",
        "task.env_runner.max_steps=16",
        "training.rollout_every=1",
        *tiny_overrides(out, epochs=1, steps=1),
    ]  # fmt: skip
    run_train(dp_dir, args, out)
    final = read_logs(out)[-1]
    assert 0.0 <= final["test/mean_score"] <= 1.0 and np.isfinite(final["train/mean_score"]), final

    # eval.py on another machine: no SAM 2 file, no mask cache, no network; the tracker comes from the checkpoint
    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: (_ for _ in ()).throw(OSError("network")))
    away = [(p, p.with_name(p.name + ".away")) for p in (weights, masks)]
    for src, dst in away:
        src.rename(dst)
    try:
        policy, cfg, payload = load_like_eval(out / "checkpoints" / "latest.ckpt", out / "eval")
    finally:
        for src, dst in away:
            dst.rename(src)
    encoder = policy.obs_encoder
    saved = payload["state_dicts"]["ema_model"]
    assert any(k.startswith("obs_encoder.tracker.parts.memory_attention.") for k in saved)
    assert sorted(saved) == sorted(policy.state_dict())
    assert encoder.object_tracker and encoder.n_obs_steps == cfg.n_obs_steps == 2
    assert encoder.object_prompts["image"][1] == {"box": [30.0, 30.0, 60.0, 60.0]}

    frames: list[int] = []
    seen: list[tuple[list[str], tuple[int, ...]]] = []
    trunk = [m for name, m in encoder.named_modules() if name.endswith("backbone.patch_embed")]
    trunk[0].register_forward_pre_hook(lambda module, a: frames.append(int(a[0].shape[0])))
    encoder.register_forward_hook(
        lambda module, a, output: seen.append((sorted(a[0]), tuple(module.tracked_masks["image"].shape)))
    )
    runner = hydra.utils.instantiate(cfg.task.env_runner, output_dir=str(out / "eval_runner"))
    log = runner.run(policy)
    assert 0.0 <= log["test/mean_score"] <= 1.0
    # 2 environments, 16 steps, a prediction every 8: the first window repeats the episode's first frame (one
    # frame per environment encoded, prompted), the second brings 2 new frames per environment (tracked)
    assert frames == [2, 4], frames
    assert seen == [(["agent_pos", "image"], (4, 2, 76, 76))] * 2, seen
    assert torch.is_tensor(encoder.tracked_masks["image"]) and encoder.tracked_masks["image"].dtype == torch.bool
