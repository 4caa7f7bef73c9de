"""Object tokens from tracked masks through upstream DP: `sam2-encoder masks` on a DP replay buffer, DP's own
train.py with train_diffusion_unet_sam2_masks_workspace, reload like eval.py (SAM 2 file and mask cache gone),
robot loop with masks in the obs, actions that depend on the masks."""

from __future__ import annotations

import json
import re
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ._dp import (
    NO_SIM_RUNNER,
    REAL_DEPS,
    assert_reload_and_robot_loop,
    guide_block,
    link_weights,
    load_like_eval,
    python_env,
    read_logs,
    run_train,
    tiny_overrides,
    write_real_dataset,
)
from .conftest import require

BLOCK = (40, 60, 200)  # the pusht-style block's colour in write_pusht_replay


def first_frame_prompts(replay: Path) -> dict:
    """What a user writes: a box around the block (object 1) and a background point (object 2) on each
    episode's first frame; the last episode is left unprompted (its masks are empty)."""
    import zarr

    root = zarr.open(str(replay), mode="r")
    ends = root["meta/episode_ends"][:]
    episodes = {}
    for e, start in enumerate(np.concatenate([[0], ends[:-1]]).tolist()):
        ys, xs = np.nonzero((root["data/img"][start] == BLOCK).all(-1))
        box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
        episodes[str(e)] = {"1": {"box": box}, "2": {"points": [[8, 88]], "labels": [1]}}
    episodes[str(len(ends) - 1)] = {}
    return {"objects": [1, 2], "episodes": episodes}


@pytest.fixture(scope="module")
def trained(dp_dir: Path, pusht_zarr: Path, meta_weights: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("masks")
    weights = link_weights(meta_weights, root)
    prompts = root / "prompts.json"
    prompts.write_text(json.dumps(first_frame_prompts(pusht_zarr)))
    masks = root / "pusht_img_masks.zarr"
    # the guide's masks command, at the tiny test size
    cmd = ["sam2-encoder", "masks", str(pusht_zarr), "--key", "img", "--prompts", str(prompts),
           "--checkpoint", str(weights), "--image-size", "64", "--out", str(masks), "--quiet"]  # fmt: skip
    result = subprocess.run(cmd, env=python_env(cache_dir=root / "sam2_cache"), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    verified = subprocess.run(["sam2-encoder", "masks", "--verify", str(masks)], capture_output=True, text=True)
    assert verified.returncode == 0 and "every frame's masks match their checksum" in verified.stdout, verified
    out = root / "outputs"
    args = [
        "--config-name=train_diffusion_unet_sam2_masks_workspace",
        "task=pusht_image",
        f"task.dataset.zarr_path={pusht_zarr}",
        f"object_masks={masks}",
        "num_objects=2",
        f"policy.obs_encoder.checkpoint={weights}",
        *NO_SIM_RUNNER,
        *tiny_overrides(out, epochs=1, steps=2),
    ]
    output, seconds = run_train(dp_dir, args, out)
    return {"out": out, "weights": weights, "masks": masks, "output": output, "seconds": seconds,
            "masks_output": result.stdout + result.stderr}  # fmt: skip


def test_masks_workspace_trains(trained, tmp_path: Path) -> None:
    import shutil

    from sam2_encoder.diffusion_policy.mask_cache import MaskCache, MaskCacheError, verify_mask_cache
    from sam2_encoder.diffusion_policy.zarr_io import chunk_path

    assert "mask cache ready" in trained["masks_output"]
    masks = MaskCache(trained["masks"]).masks(range(60))
    assert masks[:40].any() and not masks[40:].any(), "tracked in episodes 0 and 1, none in the unprompted one"
    # under DP's zarr 2.18 too, an altered chunk is named on its first read and by --verify
    damaged = Path(shutil.copytree(trained["masks"], tmp_path / "damaged.zarr"))
    frame = int(np.flatnonzero(masks.any(axis=(1, 2, 3)))[0])
    chunk = chunk_path(damaged, "masks", (frame, 0, 0, 0))
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    where = f"masks chunk {frame} (frame {frame}, episode 0)"
    with pytest.raises(MaskCacheError, match=re.escape(where)):
        MaskCache(damaged).masks([frame])
    problems = verify_mask_cache(damaged)
    assert len(problems) == 1 and problems[0].startswith(where), problems
    logs = read_logs(trained["out"])
    epochs = [entry for entry in logs if "val_loss" in entry]
    assert [entry["epoch"] for entry in epochs] == [0] and np.isfinite(epochs[0]["train_loss"]), logs
    assert (trained["out"] / "checkpoints" / "latest.ckpt").is_file()


def test_masks_reload_predict_and_robot_loop(trained, pusht_zarr: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    import zarr

    from sam2_encoder.diffusion_policy.mask_cache import MaskCache

    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: (_ for _ in ()).throw(OSError("network")))
    checkpoint = trained["out"] / "checkpoints" / "latest.ckpt"
    root = zarr.open(str(pusht_zarr), mode="r")
    masks = MaskCache(trained["masks"]).masks(range(20)).astype(np.float32)  # episode 0
    stream = {"image": root["data/img"][:20], "agent_pos": root["data/state"][:20, :2], "image_masks": masks}
    away = trained["masks"].with_name("masks.away")
    trained["masks"].rename(away)  # the eval machine has no mask cache either
    try:
        # strict reload without the SAM 2 file, then a robot loop fed with masks, as eval_real_robot.py would
        assert_reload_and_robot_loop(checkpoint, [trained["weights"]], stream, trained["out"], steps=6)
        policy, cfg, _ = load_like_eval(checkpoint, trained["out"] / "eval_masks")
    finally:
        away.rename(trained["masks"])
    assert cfg.task.shape_meta.obs.image_masks.type == "mask" and policy.obs_encoder.num_objects == 2
    obs = {
        "image": torch.from_numpy(np.moveaxis(stream["image"][:2], -1, 1) / 255).float()[None],
        "agent_pos": torch.from_numpy(stream["agent_pos"][:2])[None],
        "image_masks": torch.from_numpy(masks[:2])[None],
    }
    actions = []
    for variant in (obs, {**obs, "image_masks": torch.zeros_like(obs["image_masks"])}, obs):
        torch.manual_seed(0)
        with torch.no_grad():
            actions.append(policy.predict_action(variant)["action"])
    assert actions[0].shape == (1, cfg.n_action_steps, 2) and torch.isfinite(actions[0]).all()
    assert torch.equal(actions[0], actions[2]), "same masks, same seed: same actions"
    assert not torch.allclose(actions[0], actions[1]), "the object tokens read the masks"
    with pytest.raises(KeyError, match=r"obs_dict is missing 'image_masks', the object masks of camera 'image'"):
        policy.predict_action({k: v for k, v in obs.items() if k != "image_masks"})


def test_masks_dataset_is_a_dp_dataset(trained) -> None:
    """The saved cfg's dataset node builds DP's PushTImageDataset wrapped: split, normaliser, actions."""
    import dill
    import hydra
    import torch
    from diffusion_policy.dataset.base_dataset import BaseImageDataset

    with open(trained["out"] / "checkpoints" / "latest.ckpt", "rb") as f:
        cfg = torch.load(f, pickle_module=dill)["cfg"]
    dataset = hydra.utils.instantiate(cfg.task.dataset)
    inner = dataset.dataset
    assert isinstance(dataset, BaseImageDataset) and type(inner).__name__ == "PushTImageDataset"
    val, inner_val = dataset.get_validation_dataset(), inner.get_validation_dataset()
    assert type(val) is type(dataset) and len(val) == len(inner_val) > 0 and len(dataset) == len(inner)
    item = val[0]
    assert item["obs"]["image_masks"].shape == (cfg.horizon, 2, 96, 96)
    assert torch.equal(item["obs"]["image"], inner_val[0]["obs"]["image"])
    normalizer, reference = dataset.get_normalizer(), inner.get_normalizer()
    masks = item["obs"]["image_masks"]
    assert torch.equal(normalizer["image_masks"].normalize(masks), masks)  # identity
    for key in ("action", "agent_pos", "image"):
        x = item["action"] if key == "action" else item["obs"][key]
        assert torch.equal(normalizer[key].normalize(x), reference[key].normalize(x)), key
    with pytest.raises(NotImplementedError):  # forwarded: DP's PushTImageDataset has no get_all_actions
        dataset.get_all_actions()


def test_the_guides_reload_snippet_works_on_the_masks_checkpoint(trained, dp_dir: Path) -> None:
    """Step 4 of the guide's masks section: step 5's reload block, run on this checkpoint."""
    block = guide_block("predict_action(obs)")
    smoke = "data/outputs/sam2_smoke/checkpoints/latest.ckpt"
    assert block.count(smoke) == 1
    checkpoint = trained["out"] / "checkpoints" / "latest.ckpt"
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.replace(smoke, str(checkpoint))],
        cwd=trained["out"], env=python_env([dp_dir], cache_dir=trained["out"] / "sam2_cache"),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"predict_action: \(1, 8, 2\) \[[-\d.]+, [-\d.]+\]", result.stdout), result.stdout


def test_masks_over_dp_real_robot_dataset(trained, tmp_path: Path) -> None:
    """DP's RealPushTImageDataset takes a shape_meta with our mask entry (it skips the type) and, wrapped,
    its get_all_actions, normaliser and split come through DPMaskDataset (masks of a buffer of as many frames)."""
    require(REAL_DEPS, "DP real-robot dataset extras")
    import torch
    from diffusion_policy.dataset.base_dataset import BaseImageDataset
    from diffusion_policy.dataset.real_pusht_image_dataset import RealPushTImageDataset
    from omegaconf import OmegaConf

    from sam2_encoder.diffusion_policy.mask_cache import DPMaskDataset

    meta = {  # 3 episodes x 20 steps, like the pusht buffer the masks were tracked on
        "obs": {
            "camera_1": {"shape": [3, 96, 96], "type": "rgb"},
            "camera_1_masks": {"shape": [2, 96, 96], "type": "mask", "camera": "camera_1"},
            "robot_eef_pose": {"shape": [2], "type": "low_dim"},
        },
        "action": {"shape": [2]},
    }
    inner = RealPushTImageDataset(
        shape_meta=OmegaConf.create(meta), dataset_path=str(write_real_dataset(tmp_path / "real", meta)),
        horizon=4, pad_before=1, pad_after=1, use_cache=True, val_ratio=0.4,
    )  # fmt: skip
    dataset = DPMaskDataset(trained["masks"], "camera_1_masks", dataset=inner, shape=[2, 96, 96])
    assert isinstance(dataset, BaseImageDataset)
    # forwarded to DP's RealPushTImageDataset.get_all_actions, which fails on its own at 5ba07ac with a cached
    # replay buffer (torch.from_numpy of a zarr array); DP's base class would raise NotImplementedError instead
    with pytest.raises(TypeError, match="expected np.ndarray") as info:
        dataset.get_all_actions()
    assert info.traceback[-1].path.name == "real_pusht_image_dataset.py"
    assert info.traceback[-1].name == "get_all_actions"
    with pytest.raises(TypeError, match="expected np.ndarray"):
        inner.get_all_actions()
    item = dataset[5]
    assert item["obs"]["camera_1_masks"].shape == (4, 2, 96, 96) and "camera_1" in item["obs"]
    masks = item["obs"]["camera_1_masks"]
    assert torch.equal(dataset.get_normalizer()["camera_1_masks"].normalize(masks), masks)
    val = dataset.get_validation_dataset()
    assert type(val) is DPMaskDataset and len(val) == len(inner.get_validation_dataset()) > 0
