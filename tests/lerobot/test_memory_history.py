"""Policy memory's training history comes from LeRobot's own, unmodified ``LeRobotDataset``.

- With ``memory="sam2"``, ``observation_delta_indices`` names each window frame once and every
  bank frame once: the episode's first frame (``memory_keep_first``, delta ``FIRST_FRAME``) and the
  frames ``k * memory_stride`` before each window frame; without memory it is LeRobot's window.
- The dataset built by LeRobot's factory from those deltas gives each sample its window and, per
  window frame, the bank frames clamped into the episode: before the episode start a bank frame is
  the episode's first frame (what the streaming bank holds there).
- What LeRobot cannot serve is refused at configuration with one error: memory with a
  ``feature_cache``, ``memory_source="objects"`` without ``object_masks``, an episode too long for
  the first-frame delta, and the encoder's own bad values.

LeRobot 0.6 venv only (.ci/lerobot.sh).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip(
    "lerobot", reason="LeRobot 0.6 is not installed here (it needs Python >= 3.12); .ci/lerobot.sh runs these tests"
)
pytest.importorskip("gym_pusht", reason="gym-pusht is not installed: pip install 'lerobot[pusht]'")

import torch  # noqa: E402
from lerobot.configs import FeatureType, PolicyFeature  # noqa: E402
from lerobot.datasets.factory import resolve_delta_timestamps  # noqa: E402
from lerobot.datasets.lerobot_dataset import LeRobotDataset  # noqa: E402

from sam2_encoder.lerobot import SAM2DiffusionConfig  # noqa: E402
from sam2_encoder.lerobot.memory_history import FIRST_FRAME, MemoryLayout, check_episode_lengths, episode_lengths  # noqa: E402
from sam2_encoder.policy_memory import memory_key  # noqa: E402

from .pusht_data import REPO_ID, record_pusht  # noqa: E402

CAMERA = "observation.image"
FRAMES = 12  # per episode


def make_config(**overrides) -> SAM2DiffusionConfig:
    features = {
        CAMERA: PolicyFeature(FeatureType.VISUAL, (3, 96, 96)),
        "observation.state": PolicyFeature(FeatureType.STATE, (2,)),
    }
    options = dict(
        device="cpu",
        input_features=features,
        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
        sam2_image_size=64,
        horizon=8,
        n_action_steps=4,
        down_dims=(16, 32),
        push_to_hub=False,
        memory="sam2",
        memory_frames=2,
        memory_stride=3,
    )
    options.update(overrides)
    return SAM2DiffusionConfig(**options)


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_pusht(tmp_path_factory.mktemp("pusht") / "data", episodes=2, frames=FRAMES)


def test_delta_indices_name_the_window_and_every_bank_frame_once() -> None:
    """To=2, 2 past frames 3 apart, the first frame kept: window -1, 0; banks (first, -4, -7) and (first, -3, -6)."""
    cfg = make_config()
    assert cfg.observation_delta_indices == [FIRST_FRAME, -7, -6, -4, -3, -1, 0]
    layout = MemoryLayout.build(cfg.n_obs_steps, cfg.encoder_config(load_checkpoint=False).policy_memory)
    deltas = layout.deltas
    assert [deltas[i] for i in layout.window] == [-1, 0]
    assert [[deltas[i] for i in bank] for bank in layout.bank] == [[FIRST_FRAME, -4, -7], [FIRST_FRAME, -3, -6]]
    # stride 1: the banks overlap the window; each frame is still loaded once
    cfg = make_config(memory_stride=1, memory_keep_first=False)
    assert cfg.observation_delta_indices == [-3, -2, -1, 0]
    # the action window is LeRobot's, unchanged by memory
    assert cfg.action_delta_indices == make_config(memory="none").action_delta_indices
    assert make_config(memory="none").observation_delta_indices == [-1, 0]


def test_lerobot_dataset_gives_each_sample_its_banks_clamped_to_the_episode_start(dataset_root: Path) -> None:
    """Every sample of both episodes: window and bank frames are the dataset's frames at the clamped indices."""
    cfg = make_config()
    plain = LeRobotDataset(REPO_ID, root=dataset_root)  # one frame per index
    assert episode_lengths(plain.meta) == [FRAMES, FRAMES]
    dataset = LeRobotDataset(REPO_ID, root=dataset_root, delta_timestamps=resolve_delta_timestamps(cfg, plain.meta))
    layout = MemoryLayout.build(cfg.n_obs_steps, cfg.encoder_config(load_checkpoint=False).policy_memory)
    for idx in range(len(dataset)):
        start = (idx // FRAMES) * FRAMES
        item = dataset[idx]
        batch = {key: item[key][None] for key in (CAMERA, "observation.state")}
        window = layout.split(batch, [CAMERA, "observation.state"], [CAMERA])
        bank = window[memory_key(CAMERA)]
        assert window[CAMERA].shape == (1, 2, 3, 96, 96) and window["observation.state"].shape == (1, 2, 2)
        assert bank.shape == (1, 2, 3, 3, 96, 96)
        for t, step in enumerate((-1, 0)):
            frame = max(start, idx + step)
            assert torch.equal(window[CAMERA][0, t], plain[frame][CAMERA]), (idx, step)
            expected = [start] + [max(start, frame - k * 3) for k in (1, 2)]  # the encoder's slot order
            for slot, source in enumerate(expected):
                assert torch.equal(bank[0, t, slot], plain[source][CAMERA]), (idx, step, slot)


def test_an_episode_longer_than_the_first_frame_delta_is_refused() -> None:
    """``memory_keep_first`` reads the first frame at ``FIRST_FRAME``: a longer episode would not reach it."""
    check_episode_lengths([12, -FIRST_FRAME - 1])
    with pytest.raises(ValueError, match=r"episode 1 has 1048576 frames: split it, or set memory_keep_first=false"):
        check_episode_lengths([12, -FIRST_FRAME])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"feature_cache": "/tmp/cache"}, r"encodes the memory of every bank frame .* \(no feature_cache\)"),
        ({"memory_source": "objects"}, r"memory_source='objects' .* object_masks is empty: set object_masks="),
        ({"memory_frames": 7}, r"memory_frames must be at most 6"),
        ({"memory": "lstm"}, r"memory must be one of \('none', 'sam2'\), got 'lstm'"),
    ],
)
def test_memory_options_lerobot_cannot_serve_give_one_clear_error(options, message) -> None:
    with pytest.raises(ValueError, match=message):
        make_config(**options)
