"""Policy memory through upstream DP: DP's own train.py with train_diffusion_unet_sam2_memory_workspace trains on
batches that carry each step's bank frames and rolls out with DP's own PushTImageRunner (n_action_steps=1, the
preset's value); the checkpoint reloads strictly like eval.py on a machine without the SAM 2 file, and a fresh
PushTImageRunner drives the encoder's own banks: one new frame per environment per call, every stream advancing.
Another n_action_steps is refused when the policy is built, with one error naming it."""

from __future__ import annotations

import socket
import warnings
from pathlib import Path

import numpy as np
import pytest

from ._dp import SIM_DEPS, count_trunk_frames, link_weights, load_like_eval, read_logs, run_train, tiny_overrides
from .conftest import require

PRESET = "train_diffusion_unet_sam2_memory_workspace"
STEPS = 12  # rollout length: one policy call per step with n_action_steps=1
SMALL_RUNNER = [
    "task.env_runner.n_train=1",
    "task.env_runner.n_train_vis=0",
    "task.env_runner.n_test=1",
    "task.env_runner.n_test_vis=0",
    f"task.env_runner.max_steps={STEPS}",
]
MEMORY = ["memory_frames=2", "memory_stride=2"]  # bank of frame t: [0, t - 2, t - 4]


@pytest.fixture(scope="module")
def trained(dp_dir: Path, pusht_zarr: Path, meta_weights: Path, tmp_path_factory: pytest.TempPathFactory):
    """One train.py run of the memory preset on pusht: 1 epoch of 2 steps, then DP's rollout (rollout_every=1)."""
    require(SIM_DEPS, "DP pusht simulator extras")
    root = tmp_path_factory.mktemp("memory")
    weights = link_weights(meta_weights, root)
    out = root / "outputs"
    args = [
        f"--config-name={PRESET}",
        "task=pusht_image",
        f"task.dataset.zarr_path={pusht_zarr}",
        f"policy.obs_encoder.checkpoint={weights}",
        *MEMORY,
        *SMALL_RUNNER,
        "training.rollout_every=1",
        *tiny_overrides(out, epochs=1, steps=2),
    ]
    output, seconds = run_train(dp_dir, args, out)
    return {"out": out, "weights": weights, "output": output, "seconds": seconds}


def test_memory_preset_trains_on_bank_frames_and_rolls_out_in_train_py(trained) -> None:
    """The batches carry obs.image_memory (training refuses a batch without it), and DP's rollout scores."""
    import dill
    import torch

    out = trained["out"]
    final = read_logs(out)[-1]
    assert np.isfinite(final["train_loss"]) and 0.0 <= final["test/mean_score"] <= 1.0, final
    with open(out / "checkpoints" / "latest.ckpt", "rb") as f:
        payload = torch.load(f, pickle_module=dill)
    cfg = payload["cfg"]
    assert cfg.n_action_steps == 1 and cfg.task.env_runner.n_action_steps == 1 and cfg.task.dataset.pad_after == 0
    assert cfg.task.dataset._target_.endswith("memory_dataset.DPMemoryDataset")
    # the normaliser was fitted on batches with the bank frames: DP saves an entry per obs key it saw
    saved = payload["state_dicts"]["model"]
    assert "normalizer.params_dict.image_memory.scale" in saved
    assert torch.equal(saved["normalizer.params_dict.image_memory.scale"], saved["normalizer.params_dict.image.scale"])

    # DP's loader over the saved dataset config: each step's bank (first frame + 2 past), the camera's shape
    import hydra

    dataset = hydra.utils.instantiate(cfg.task.dataset)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=2)))
    assert tuple(batch["obs"]["image_memory"].shape) == (2, cfg.horizon, 3, 3, 96, 96)
    # the first sample's last step: its bank starts with the episode's first frame, the sample's padded step 0
    # (DP's dataset serves float64 frames, the bank float32: the normaliser casts both to float32)
    first, padded = batch["obs"]["image_memory"][0, -1, 0], batch["obs"]["image"][0, 0].float()
    assert torch.allclose(first, padded, rtol=0, atol=1e-7)


def test_memory_checkpoint_reloads_strictly_without_the_sam2_file(trained, monkeypatch) -> None:
    """eval.py on another machine: no SAM 2 file, no network; the memory's weights come from the checkpoint."""
    import torch

    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: (_ for _ in ()).throw(OSError("network")))
    weights = trained["weights"]
    away = weights.with_name(weights.name + ".away")
    weights.rename(away)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            policy, cfg, payload = load_like_eval(trained["out"] / "checkpoints" / "latest.ckpt", trained["out"] / "e")
    finally:
        away.rename(weights)
    assert any(str(weights) in str(w.message) and "not found" in str(w.message) for w in caught)
    saved = payload["state_dicts"]["ema_model"]
    assert any(k.startswith("obs_encoder.memory.memory_encoder.") for k in saved), sorted(saved)[:20]
    assert any(k.startswith("obs_encoder.memory.memory_attention.") for k in saved)
    state = policy.state_dict()
    assert sorted(saved) == sorted(state)
    assert all(torch.equal(saved[k], state[k]) for k in saved)
    assert policy.obs_encoder.memory.bank_size == 3 and policy.n_action_steps == 1


def test_dp_runner_drives_the_memory_banks_one_frame_per_call(trained, monkeypatch) -> None:
    """A fresh PushTImageRunner on the reloaded policy: obs without bank frames, so the encoder keeps its banks;
    each call encodes one new frame per environment (2 environments) and every stream sees all STEPS frames."""
    import hydra

    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: (_ for _ in ()).throw(OSError("network")))
    policy, cfg, _ = load_like_eval(trained["out"] / "checkpoints" / "latest.ckpt", trained["out"] / "e2")
    encoder = policy.obs_encoder
    frames = count_trunk_frames(policy)
    keys: list[list[str]] = []
    encoder.register_forward_hook(lambda module, a, output: keys.append(sorted(a[0])))
    runner = hydra.utils.instantiate(cfg.task.env_runner, output_dir=str(trained["out"] / "eval_runner"))
    log = runner.run(policy)
    assert 0.0 <= log["test/mean_score"] <= 1.0
    assert keys == [["agent_pos", "image"]] * STEPS  # DP's obs: no image_memory, the encoder's own banks
    assert frames == [2] * STEPS, frames  # the first window repeats frame 0 (encoded once), then one new frame
    assert [stream.count for stream in encoder.memory_streams.streams] == [STEPS, STEPS]


def test_memory_preset_refuses_n_action_steps_other_than_1(dp_dir: Path, meta_weights: Path) -> None:
    """DP's default n_action_steps=8 would skip 7 frames between calls: one error naming n_action_steps."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(dp_dir / "diffusion_policy" / "config"), version_base=None):
        cfg = compose(
            config_name=PRESET,
            overrides=["task=pusht_image", "n_action_steps=8", "policy.obs_encoder.image_size=64",
                       f"policy.obs_encoder.checkpoint={meta_weights}", *MEMORY],
        )  # fmt: skip
    assert cfg.task.env_runner.n_action_steps == 8
    with pytest.raises(InstantiationException, match=r"n_action_steps=8 with memory='sam2'.*set n_action_steps=1"):
        instantiate(cfg.policy.obs_encoder)
