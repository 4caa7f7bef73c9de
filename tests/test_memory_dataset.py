"""MemoryDataset: each step of a DP sample carries its bank frames, the ones the encoder keeps at inference.

- The banks follow ``bank_frames`` inside each episode (DP's padded steps repeat the edge frame).
- An encoder trained on its samples gives, at every frame, the output of the control loop (one call per
  frame, the encoder's own banks), within the memory encoder's batch variance.
- The synthetic memory task shows its cue in the first frames only: later frames are equal across cues.
"""

from __future__ import annotations

import numpy as np
import torch

from sam2_encoder import MultiCameraEncoder
from sam2_encoder.diffusion_policy.memory_dataset import MemoryDataset
from sam2_encoder.diffusion_policy.synthetic import ReplayImageDataset, write_memory_buffer
from sam2_encoder.policy_memory import memory_key

from .conftest import perturb_


def test_the_cue_is_in_the_first_frames_only_and_decides_the_action(tmp_path) -> None:
    data = ReplayImageDataset(write_memory_buffer(tmp_path / "m.zarr", episodes=2, steps=6, size=32), horizon=1)
    img, action = data.replay_buffer["img"], data.replay_buffer["action"]
    top = img[:, :4].reshape(12, -1, 3).mean(axis=1)
    assert (top[[0, 1], 0] > 150).all() and (top[[6, 7], 2] > 150).all()  # red cue, then blue cue
    assert (top[[2, 3, 4, 5, 8, 9, 10, 11]] == 40).all()  # no cue afterwards
    assert np.all(action[:6] == 0.5) and np.all(action[6:] == -0.5)


def test_banks_follow_the_rule_inside_each_episode(tmp_path) -> None:
    zarr = write_memory_buffer(tmp_path / "m.zarr", episodes=3, steps=10, size=32)
    data = MemoryDataset(
        ReplayImageDataset(zarr, horizon=4, pad_before=1, pad_after=1), memory_frames=2, memory_stride=3
    )
    assert data.sample_frames(12).tolist() == [12, 13, 14, 15]
    assert data.bank_indices(12).tolist() == [[10, 10, 10], [10, 10, 10], [10, 11, 10], [10, 12, 10]]
    item = data[12]
    assert item["obs"][memory_key("image")].shape == (4, 3, 3, 32, 32)
    frames = torch.from_numpy(np.moveaxis(data.replay_buffer["img"], -1, 1).astype(np.float32) / 255)
    assert torch.equal(item["obs"][memory_key("image")][2], frames[[10, 11, 10]])
    assert data.get_normalizer()[memory_key("image")] == data.get_normalizer()["image"]


def test_dataset_rows_equal_the_control_loop(tmp_path) -> None:
    """Samples of one episode through the encoder in train mode == one inference call per frame."""
    zarr = write_memory_buffer(tmp_path / "m.zarr", episodes=2, steps=8, size=48)
    data = MemoryDataset(
        ReplayImageDataset(zarr, horizon=1, pad_before=0, pad_after=0), memory_frames=2, memory_stride=2
    )
    enc = MultiCameraEncoder(
        {"image": (3, 48, 48)},
        image_size=64,
        pool="avg",
        memory="sam2",
        memory_frames=2,
        memory_stride=2,
        n_obs_steps=1,
    )
    perturb_(enc.memory, seed=1, scale=0.2)
    items = [data[i] for i in range(8, 16)]  # the second episode
    batch = {k: torch.stack([it["obs"][k][0] for it in items]) for k in ("image", memory_key("image"))}
    enc.train()
    with torch.no_grad():
        trained = enc(batch)
        enc.eval()
        live = torch.cat([enc({"image": batch["image"][i : i + 1]}) for i in range(8)])
    assert (trained - live).abs().max() < 1e-4  # memory encoder conv batch variance (tests/test_policy_memory.py)


def test_memory_workspace_preset_composes_and_builds(tmp_path) -> None:
    """Our memory DP workspace over DP's (stub) configs: the dataset wrapper and the encoder agree on the bank."""
    import importlib.util
    from pathlib import Path

    import pytest

    pytest.importorskip("hydra")
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    zarr = write_memory_buffer(tmp_path / "m.zarr", episodes=2, steps=8, size=48)
    stub = Path(__file__).parent / "dp_stub_config"
    overrides = [
        "memory_frames=2",
        "memory_stride=2",
        "policy.obs_encoder.image_size=64",
        "task.shape_meta.obs.image.shape=[3,48,48]",
        "policy.obs_encoder.crop_shape=[40,40]",
        "horizon=4",
        f"task.dataset.zarr_path={zarr}",
        "task.dataset.dataset_target=sam2_encoder.diffusion_policy.synthetic.ReplayImageDataset",
    ]
    with initialize_config_dir(config_dir=str(stub), version_base=None):
        cfg = compose(config_name="train_diffusion_unet_sam2_memory_workspace", overrides=overrides)
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    if importlib.util.find_spec("diffusion_policy") is None:  # core CI: no DP, so no DP base class to mix in
        cfg.task.dataset._target_ = "sam2_encoder.diffusion_policy.memory_dataset.MemoryDataset"
    dataset = instantiate(cfg.task.dataset)
    encoder = instantiate(cfg.policy.obs_encoder)
    assert encoder.memory.bank_size == 3 and dataset.memory == encoder.config.policy_memory
    assert cfg.n_action_steps == 1 and cfg.task.dataset.pad_after == 0  # one policy call per control step
    item = dataset[5]
    obs = {k: v[: cfg.n_obs_steps] * 2 - 1 for k, v in item["obs"].items() if k != "agent_pos"}
    obs["agent_pos"] = item["obs"]["agent_pos"][: cfg.n_obs_steps]
    assert obs[memory_key("image")].shape == (cfg.n_obs_steps, 3, 3, 48, 48)
    assert encoder.train()(obs).shape == (cfg.n_obs_steps, encoder.output_shape()[0])


def test_an_encoder_with_memory_refuses_n_action_steps_other_than_1() -> None:
    """DP calls the policy every n_action_steps steps: with memory only 1 (or unknown, None) is accepted."""
    import pytest

    from sam2_encoder import SAM2ObsEncoder

    meta = {"obs": {"image": {"shape": [3, 32, 32], "type": "rgb"}}, "action": {"shape": [2]}}
    options = {"image_size": 64, "pool": "avg", "memory_frames": 1}
    with pytest.raises(ValueError, match=r"n_action_steps=8 with memory='sam2'.*set n_action_steps=1"):
        SAM2ObsEncoder(meta, memory="sam2", n_action_steps=8, **options)
    for n_action_steps in (1, None):
        assert SAM2ObsEncoder(meta, memory="sam2", n_action_steps=n_action_steps, **options).memory is not None
    assert SAM2ObsEncoder(meta, n_action_steps=8, **options).memory is None  # without memory: any value
