"""Cached features and tracked masks together through upstream DP: `sam2-encoder cache --prompts` on a DP replay
buffer (one encoder pass per frame fills both caches), DP's own train.py with
train_diffusion_unet_sam2_cached_masks_workspace (DPMaskDataset over CachedFeatureDataset over DP's
PushTImageDataset), reload like eval.py (SAM 2 file and both caches gone), robot loop with masks."""

from __future__ import annotations

import json
import shutil
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
from .test_object_masks import first_frame_prompts


@pytest.fixture(scope="module")
def trained(dp_dir: Path, pusht_zarr: Path, meta_weights: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cached_masks")
    weights = link_weights(meta_weights, root)
    replay = Path(shutil.copytree(pusht_zarr, root / "pusht.zarr"))  # the masks go beside it by default
    prompts = root / "prompts.json"
    prompts.write_text(json.dumps(first_frame_prompts(replay)))
    cache = root / "pusht_sam2.zarr"
    # the guide's command, at the tiny test size
    cmd = ["sam2-encoder", "cache", str(replay), "--keys", "img", "--prompts", str(prompts), "--image-size", "64",
           "--checkpoint", str(weights), "--levels", "s16", "--dtype", "float16", "--out", str(cache),
           "--quiet"]  # fmt: skip
    result = subprocess.run(cmd, env=python_env(cache_dir=root / "sam2_cache"), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    masks = root / "pusht.img_masks.zarr"
    assert f"feature cache ready: {cache}" in result.stdout and f"mask cache ready: {masks}" in result.stdout, result
    for command in ("cache", "masks"):
        verified = subprocess.run(["sam2-encoder", command, "--verify", str(cache if command == "cache" else masks)],
                                  capture_output=True, text=True)  # fmt: skip
        assert verified.returncode == 0 and "match" in verified.stdout, verified
    out = root / "outputs"
    args = [
        "--config-name=train_diffusion_unet_sam2_cached_masks_workspace",
        "task=pusht_image",
        f"task.dataset.zarr_path={replay}",
        f"feature_cache={cache}",
        f"object_masks={masks}",
        "num_objects=2",
        f"policy.obs_encoder.checkpoint={weights}",
        *NO_SIM_RUNNER,
        *tiny_overrides(out, epochs=1, steps=2),
    ]
    output, _ = run_train(dp_dir, args, out)
    return {"out": out, "weights": weights, "cache": cache, "masks": masks, "replay": replay, "output": output}


def test_cached_masks_workspace_trains(trained) -> None:
    import dill
    import hydra
    import torch
    from diffusion_policy.dataset.base_dataset import BaseImageDataset

    logs = read_logs(trained["out"])
    epochs = [entry for entry in logs if "val_loss" in entry]
    assert [entry["epoch"] for entry in epochs] == [0] and np.isfinite(epochs[0]["train_loss"]), logs
    with open(trained["out"] / "checkpoints" / "latest.ckpt", "rb") as f:
        cfg = torch.load(f, pickle_module=dill)["cfg"]
    dataset = hydra.utils.instantiate(cfg.task.dataset)  # what train.py trained on: features and masks
    assert isinstance(dataset, BaseImageDataset)
    assert [type(d).__name__ for d in (dataset, dataset.dataset, dataset.dataset.dataset)] == [
        "DPMaskDataset", "CachedFeatureDataset", "PushTImageDataset"]  # fmt: skip
    item = dataset.get_validation_dataset()[0]
    assert item["obs"]["image"].shape == (cfg.horizon, 256, 4, 4)  # cached s16 features at 64 px
    assert item["obs"]["image_masks"].shape == (cfg.horizon, 2, 96, 96)
    normalizer = dataset.get_normalizer()
    for key in ("image", "image_masks"):
        assert torch.equal(normalizer[key].normalize(item["obs"][key]), item["obs"][key]), key  # identity


def test_cached_masks_reload_and_robot_loop(trained, monkeypatch: pytest.MonkeyPatch) -> None:
    import zarr

    from sam2_encoder.diffusion_policy.mask_cache import MaskCache

    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: (_ for _ in ()).throw(OSError("network")))
    root = zarr.open(str(trained["replay"]), mode="r")
    masks = MaskCache(trained["masks"]).masks(range(20)).astype(np.float32)  # episode 0
    stream = {"image": root["data/img"][:20], "agent_pos": root["data/state"][:20, :2], "image_masks": masks}
    away = trained["masks"].with_name("masks.away")
    trained["masks"].rename(away)  # the eval machine has neither cache: images are encoded live, masks come with them
    try:
        checkpoint = trained["out"] / "checkpoints" / "latest.ckpt"
        assert_reload_and_robot_loop(
            checkpoint, [trained["weights"], trained["cache"]], stream, trained["out"], steps=6
        )
    finally:
        away.rename(trained["masks"])
