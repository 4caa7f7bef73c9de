"""LeRobot feature cache: a recorded video LeRobotDataset through the policy's frozen trunk, then training from it.

Real LeRobot 0.6 (video-encoded dataset decoded by LeRobot itself), tiny SAM 2 at 64 px, seeded weights.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

lerobot = pytest.importorskip(
    "lerobot", reason="LeRobot 0.6 is not installed here (it needs Python >= 3.12); .ci/lerobot.sh runs these tests"
)
import torch  # noqa: E402
from lerobot.datasets.factory import resolve_delta_timestamps  # noqa: E402
from lerobot.datasets.lerobot_dataset import LeRobotDataset  # noqa: E402
from lerobot.policies.factory import make_policy, make_pre_post_processors  # noqa: E402
from torch.utils.data import default_collate  # noqa: E402

from sam2_encoder.cli import main as cli_main  # noqa: E402
from sam2_encoder.lerobot import SAM2DiffusionConfig, SAM2DiffusionPolicy  # noqa: E402
from sam2_encoder.lerobot.feature_cache import (  # noqa: E402
    CachedCameras,
    LeRobotCacheError,
    LeRobotFeatureCache,
    build_lerobot_cache,
    encode_frames,
    open_dataset,
    verify_lerobot_cache,
)

REPO_ID = "local/sam2_cache_tiny"
CAMERAS = ("observation.images.top", "observation.images.wrist")
CHUNK = 4
OPTIONS = dict(
    device="cpu",
    sam2_image_size=64,
    num_keypoints=8,
    horizon=8,
    n_action_steps=4,
    drop_n_last_frames=3,
    down_dims=(16, 32),
    kernel_size=3,
    n_groups=4,
    diffusion_step_embed_dim=16,
    num_train_timesteps=10,
    num_inference_steps=3,
    push_to_hub=False,
)


def record(root: Path, episodes: int, frames: int = 10) -> Path:
    """A video-encoded LeRobotDataset: two 48x64 cameras of moving squares, 2-d state and action."""
    features = {
        key: {"dtype": "video", "shape": (48, 64, 3), "names": ["height", "width", "channel"]} for key in CAMERAS
    }
    features["observation.state"] = {"dtype": "float32", "shape": (2,), "names": ["x", "y"]}
    features["action"] = {"dtype": "float32", "shape": (2,), "names": ["x", "y"]}
    dataset = LeRobotDataset.create(repo_id=REPO_ID, fps=10, features=features, root=root, use_videos=True)
    rng = np.random.default_rng(0)
    for episode in range(episodes):
        for step in range(frames):
            frame = {"observation.state": rng.random(2, dtype=np.float32), "action": rng.random(2, dtype=np.float32)}
            for c, key in enumerate(CAMERAS):
                image = np.full((48, 64, 3), 30 + 15 * c, np.uint8)
                image[8 + 2 * episode : 28, 4 + 4 * step : 20 + 4 * step, (step + c) % 3] = 220
                frame[key] = image
            dataset.add_frame({**frame, "task": "push"})
        dataset.save_episode()
    dataset.finalize()
    return root


def config(**overrides) -> SAM2DiffusionConfig:
    return SAM2DiffusionConfig(**{**OPTIONS, **overrides})


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two episodes of 10 frames (the first at dataset index 0, the second at 10)."""
    return record(tmp_path_factory.mktemp("lerobot_cache") / "data", episodes=2)


@pytest.fixture(scope="module")
def dataset(data: Path):
    return open_dataset(REPO_ID, data)


@pytest.fixture(scope="module")
def policy(dataset) -> SAM2DiffusionPolicy:
    """The policy ``lerobot-train`` makes for the dataset (seeded random SAM 2 weights)."""
    return make_policy(config(), ds_meta=dataset.meta)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory, dataset, policy) -> Path:
    """A float32 cache of both cameras, chunks of 4 frames (20 frames: 5 chunks)."""
    out = tmp_path_factory.mktemp("caches") / "features"
    return build_lerobot_cache(dataset, policy.encoder, out, dtype="float32", chunk_frames=CHUNK)


def training_batch(data: Path, policy: SAM2DiffusionPolicy, rows: list[int]) -> dict:
    """What ``lerobot-train`` hands the policy for dataset ``rows``: windows, uint8 / 255, the preprocessor."""
    cfg = policy.config
    windows = LeRobotDataset(
        REPO_ID, root=data, delta_timestamps=resolve_delta_timestamps(cfg, policy_meta(data)), return_uint8=True
    )
    batch = default_collate([windows[i] for i in rows])
    for key in windows.meta.camera_keys:
        batch[key] = batch[key].to(torch.float32) / 255.0
    preprocessor, _ = make_pre_post_processors(cfg, dataset_stats=windows.meta.stats)
    return preprocessor(batch)


def policy_meta(data: Path):
    return open_dataset(REPO_ID, data).meta


ROWS = [0, 1, 10, 13, 19]  # episode starts (padded windows), inside, and an episode's last frame


def test_served_features_equal_the_policys_encoding_of_lerobots_decoded_frames(data, policy, cache):
    """Each window step of a training batch gets the cached features of the frame LeRobot decoded for it.

    The reference is the policy's own view + trunk + fusion on the batch's frames (LeRobot's decoding,
    delta timestamps, episode-edge padding); the difference is only the batch composition (float32,
    batches of 4 frames in the cache vs the whole batch here).
    """
    batch = training_batch(data, policy, ROWS)
    assert batch["observation.images.top_is_pad"][0].tolist() == [True, False]  # episode start: frame repeated
    policy.train()
    cameras = CachedCameras(cache, policy.encoder, policy.config.observation_delta_indices, policy_meta(data))
    served = cameras.substitute(batch)
    for camera in CAMERAS:
        frames = batch[camera]  # (B, 2, 3, 48, 64)
        expected = encode_frames(policy.encoder, camera, frames.flatten(0, 1)).reshape(*frames.shape[:2], -1, 4, 4)
        assert served[camera].shape == (len(ROWS), 2, *policy.encoder.feature_shape)
        torch.testing.assert_close(served[camera], expected, rtol=0, atol=1e-5)


def test_training_from_the_cache_gives_the_same_loss_at_step_0_without_a_trunk_pass(data, dataset, cache):
    """Same weights, same batch, same noise: the loss from cached features equals the loss from frames."""
    from_frames = make_policy(config(), ds_meta=dataset.meta)
    from_cache = make_policy(config(feature_cache=str(cache)), ds_meta=dataset.meta)
    from_cache.load_state_dict(from_frames.state_dict())
    batch = training_batch(data, from_frames, ROWS)
    trunk_rows: list[int] = []
    embed = from_cache.encoder.encoder.vision_encoder.backbone.patch_embed
    handle = embed.register_forward_pre_hook(lambda _m, args: trunk_rows.append(args[0].shape[0]))
    losses = []
    for policy in (from_frames, from_cache):
        policy.train()
        torch.manual_seed(0)
        losses.append(policy.forward(dict(batch))[0])
    handle.remove()
    assert trunk_rows == []
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=0)


def test_the_saved_policy_runs_on_raw_frames_without_its_cache(tmp_path, data, dataset, cache):
    """``feature_cache`` is a training option: the reloaded policy acts on camera frames, the cache gone."""
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    policy = make_policy(config(feature_cache=str(copy)), ds_meta=dataset.meta)
    policy.save_pretrained(tmp_path / "model")
    shutil.rmtree(copy)
    reloaded = SAM2DiffusionPolicy.from_pretrained(tmp_path / "model")
    reloaded.eval()
    obs = {key: torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(1)) for key in CAMERAS}
    obs["observation.state"] = torch.zeros(1, 2)
    assert reloaded.config.feature_cache == str(copy)
    assert reloaded.select_action(obs).shape == (1, 2)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"sam2_image_size": 32}, "encoder.image_size: cache [64, 64], policy [32, 32]"),
        ({"sam2_variant": "sam2.1_hiera_small"}, "encoder.variant: cache 'sam2.1_hiera_tiny'"),
        ({"levels": ["s8", "s16"]}, "encoder.levels: cache ['s16'], policy ['s8', 's16']"),
    ],
)
def test_a_cache_for_another_policy_is_refused_naming_what_differs(dataset, cache, overrides, named):
    """``make_policy`` with ``feature_cache`` refuses a cache built with other SAM 2 settings, by field."""
    with pytest.raises(LeRobotCacheError, match=rf"built for another policy or dataset \(.*{_re(named)}"):
        make_policy(config(feature_cache=str(cache), **overrides), ds_meta=dataset.meta)


def test_a_cache_of_another_dataset_is_refused_naming_what_differs(tmp_path, cache):
    """A dataset with other episodes (here: one episode, 10 frames) does not get another dataset's features."""
    other = open_dataset(REPO_ID, record(tmp_path / "other", episodes=1))
    with pytest.raises(LeRobotCacheError, match=r"dataset\.total_episodes: cache 2, dataset 1.*dataset\.total_frames"):
        make_policy(config(feature_cache=str(cache)), ds_meta=other.meta)


def _re(text: str) -> str:
    import re

    return re.escape(text)


def test_augmented_frames_are_refused_on_cached_cameras(data, dataset, cache):
    """A batch whose frames were changed after decoding (image augmentation) is refused, not silently ignored."""
    policy = make_policy(config(feature_cache=str(cache)), ds_meta=dataset.meta)
    batch = training_batch(data, policy, ROWS)
    batch["observation.images.wrist"] = (batch["observation.images.wrist"] * 0.8).clamp(0, 1)  # ColorJitter-like
    policy.train()
    with pytest.raises(LeRobotCacheError, match=r"'observation\.images\.wrist'.*image_transforms\.enable=true"):
        policy.forward(batch)


def test_random_crops_and_fine_tuning_are_refused_with_a_cache():
    """A cache holds one view per frame of a frozen trunk: random crops and freeze=false are refused."""
    with pytest.raises(ValueError, match="crop_is_random=true crops at random"):
        config(feature_cache="c", resize_shape=(48, 64), crop_ratio=0.9, crop_is_random=True)
    with pytest.raises(ValueError, match="freeze=false fine-tunes the trunk"):
        config(feature_cache="c", freeze=False)


def test_a_float16_cache_serves_the_float32_features_rounded_to_float16(tmp_path, dataset, policy, cache):
    """The default storage dtype: every served value is the float32 feature rounded to float16, nothing else."""
    half = build_lerobot_cache(dataset, policy.encoder, tmp_path / "half", chunk_frames=CHUNK)
    rows = np.arange(len(LeRobotFeatureCache(cache))).reshape(-1, 2)
    for camera in CAMERAS:
        full = LeRobotFeatureCache(cache).read(f"features/{camera}", rows)
        assert torch.equal(LeRobotFeatureCache(half).read(f"features/{camera}", rows), full.half().float())


def test_a_damaged_chunk_is_named_on_first_read(tmp_path, cache):
    """Altered bytes in one chunk file: the first read of that chunk names array, chunk and frames."""
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    chunk = copy / "features" / "observation.images.top" / "1.0.0.0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    reader = LeRobotFeatureCache(copy)
    reader.read("features/observation.images.top", np.array([[0, 1]]))  # chunk 0 is fine
    with pytest.raises(LeRobotCacheError, match=r"features/observation\.images\.top chunk 1 \(frames 4-7\)"):
        reader.read("features/observation.images.top", np.array([[2, 5]]))
    assert any("chunk 1 (frames 4-7)" in p for p in verify_lerobot_cache(copy))


KILLED_BUILD = """
import os, signal, sys
from lerobot.policies.factory import make_policy
from sam2_encoder.lerobot import SAM2DiffusionConfig
from sam2_encoder.lerobot.feature_cache import build_lerobot_cache, open_dataset
dataset = open_dataset({repo!r}, {root!r})
policy = make_policy(SAM2DiffusionConfig(**{options!r}), ds_meta=dataset.meta)
kill = lambda written: written == 2 and os.kill(os.getpid(), signal.SIGKILL)
build_lerobot_cache(dataset, policy.encoder, {out!r}, dtype="float32", chunk_frames={chunk}, on_chunk=kill)
"""


def test_a_build_killed_with_sigkill_resumes_to_a_byte_identical_cache(tmp_path, data, dataset, policy, cache):
    """kill -9 after 2 of 5 chunks: the cache is refused as incomplete; the same build again completes it
    with exactly the bytes of an uninterrupted build."""
    out = tmp_path / "features"
    script = KILLED_BUILD.format(repo=REPO_ID, root=str(data), options=OPTIONS, out=str(out), chunk=CHUNK)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-3000:]
    with pytest.raises(LeRobotCacheError, match=r"incomplete \(2 of 5 chunks done"):
        LeRobotFeatureCache(out)
    build_lerobot_cache(dataset, policy.encoder, out, dtype="float32", chunk_frames=CHUNK)
    files = sorted(p.relative_to(cache) for p in cache.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert [(cache / f).read_bytes() for f in files] == [(out / f).read_bytes() for f in files]


def test_the_command_builds_the_cache_the_library_builds(tmp_path, data, cache, capsys):
    """``sam2-encoder lerobot-cache`` with lerobot-train's policy options gives the same bytes; --verify passes."""
    out = tmp_path / "features"
    policy_options = [f"{k}={list(v) if isinstance(v, tuple) else v}".replace(" ", "") for k, v in OPTIONS.items()]
    args = ["lerobot-cache", "--repo-id", REPO_ID, "--root", str(data), "--out", str(out), "--dtype", "float32"]
    args += ["--batch-size", str(CHUNK), "--quiet", *[a for o in policy_options for a in ("--policy", o)]]
    assert cli_main(args) == 0
    assert "LeRobot feature cache ready" in capsys.readouterr().out
    files = sorted(p.relative_to(cache) for p in cache.rglob("*") if p.is_file())
    assert [(cache / f).read_bytes() for f in files] == [(out / f).read_bytes() for f in files]
    assert cli_main(["lerobot-cache", "--verify", str(out)]) == 0
    assert cli_main(["lerobot-cache", "--repo-id", REPO_ID, "--out", str(out), "--policy", "nope=1"]) == 2
    assert "sam2_diffusion has no option 'nope'" in capsys.readouterr().err


def test_stock_lerobot_train_trains_from_the_cache(tmp_path, data, cache):
    """``lerobot-train --policy.feature_cache=CACHE`` (unmodified) trains and saves a policy that acts on frames."""
    options = [f"--policy.{k}={list(v) if isinstance(v, tuple) else v}".replace(" ", "") for k, v in OPTIONS.items()]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_LEROBOT_HOME=str(tmp_path / "lerobot"), OMP_NUM_THREADS="1")
    command = [str(Path(sys.executable).parent / "lerobot-train"), "--policy.type=sam2_diffusion", *options]
    command += [f"--dataset.repo_id={REPO_ID}", f"--dataset.root={data}", f"--policy.feature_cache={cache}"]
    command += ["--steps=2", "--batch_size=4", "--num_workers=0", "--save_freq=2", "--wandb.enable=false"]
    proc = subprocess.run(
        [*command, f"--output_dir={tmp_path / 'train'}"], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reloaded = SAM2DiffusionPolicy.from_pretrained(tmp_path / "train" / "checkpoints" / "last" / "pretrained_model")
    assert reloaded.config.feature_cache == str(cache)
    obs = {key: torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(2)) for key in CAMERAS}
    obs["observation.state"] = torch.zeros(1, 2)
    reloaded.eval()
    assert reloaded.select_action(obs).shape == (1, 2)


def test_two_torchrun_ranks_build_the_same_cache_as_one_process(tmp_path, data, cache):
    """``torchrun --nproc_per_node=2 ... lerobot-cache`` shares chunks round-robin: the bytes of one process."""
    out = tmp_path / "features"
    policy_options = [f"{k}={list(v) if isinstance(v, tuple) else v}".replace(" ", "") for k, v in OPTIONS.items()]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "sam2_encoder.cli", "lerobot-cache", "--repo-id", REPO_ID, "--root", str(data)]
    command += ["--out", str(out), "--dtype", "float32", "--batch-size", str(CHUNK), "--quiet"]
    command += [a for o in policy_options for a in ("--policy", o)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("LeRobot feature cache ready") == 1  # rank 0 reports
    files = sorted(p.relative_to(cache) for p in cache.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert [(cache / f).read_bytes() for f in files] == [(out / f).read_bytes() for f in files]
