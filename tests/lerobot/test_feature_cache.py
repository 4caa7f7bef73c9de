"""LeRobot feature cache: a recorded video LeRobotDataset through the policy's frozen trunk, then training from it.

Real LeRobot 0.6 (video-encoded dataset decoded by LeRobot itself), tiny SAM 2 at 64 px, seeded weights.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

lerobot = pytest.importorskip(
    "lerobot", reason="LeRobot 0.6 is not installed here (it needs Python >= 3.12); .ci/lerobot.sh runs these tests"
)
import torch  # noqa: E402
from lerobot.datasets import dataset_reader  # noqa: E402
from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata  # noqa: E402
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


# --------------------------------------------------------------------------------------------
# the cache's dataset view (CACHE/dataset): stock lerobot-train never decodes the cached cameras
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def top_cache(tmp_path_factory: pytest.TempPathFactory, dataset, policy) -> Path:
    """A float32 cache of the top camera only: the wrist camera stays live (decoded and encoded every step)."""
    out = tmp_path_factory.mktemp("caches") / "top"
    return build_lerobot_cache(dataset, policy.encoder, out, cameras=[CAMERAS[0]], dtype="float32", chunk_frames=CHUNK)


def decoded_cameras(root: Path, policy: SAM2DiffusionPolicy, monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Every call of LeRobot's video decoder while a DataLoader goes once through ``root`` as lerobot-train
    builds it (the policy's delta timestamps), counted by camera (``videos/<camera>/...``)."""
    calls: list[str] = []
    lock = threading.Lock()  # LeRobot decodes the cameras of an item in parallel threads
    decode = dataset_reader.decode_video_frames

    def counted(path, *args, **kwargs):
        with lock:
            calls.append(Path(path).parts[-3])
        return decode(path, *args, **kwargs)

    monkeypatch.setattr(dataset_reader, "decode_video_frames", counted)
    meta = LeRobotDatasetMetadata(REPO_ID, root=root)
    windows = LeRobotDataset(
        REPO_ID, root=root, delta_timestamps=resolve_delta_timestamps(policy.config, meta), return_uint8=True
    )
    for _ in torch.utils.data.DataLoader(windows, batch_size=4, num_workers=0):
        pass
    monkeypatch.undo()
    return Counter(calls)


def test_the_caches_dataset_view_has_no_video_of_a_cached_camera_and_lerobot_decodes_none(
    data, top_cache, policy, monkeypatch
):
    """``CACHE/dataset`` is the dataset without the cached cameras' video features: going through it as
    lerobot-train does decodes the live camera's video for every sample and the cached camera's never
    (every call of LeRobot's decoder counted; the source decodes both)."""
    view = top_cache / "dataset"
    top, wrist = CAMERAS
    assert top not in LeRobotDatasetMetadata(REPO_ID, root=view).video_keys
    assert sorted(p.name for p in (view / "videos").iterdir()) == [wrist]  # not even a file to decode
    assert decoded_cameras(data, policy, monkeypatch) == {top: 20, wrist: 20}
    assert decoded_cameras(view, policy, monkeypatch) == {wrist: 20}


def test_training_from_the_view_gives_the_same_loss_at_step_0_as_from_frames(data, dataset, cache):
    """The policy made on the view gets the cached cameras back in its input features (same features, same
    order as on the source); its batches carry no frame of them, and its loss equals the loss from frames
    (same weights, same rows, same noise), without a trunk pass. In eval mode (lerobot-train's eval split)
    the view's batches are served from the cache too."""
    view = cache / "dataset"
    from_frames = make_policy(config(), ds_meta=dataset.meta)
    from_view = make_policy(config(feature_cache=str(cache)), ds_meta=LeRobotDatasetMetadata(REPO_ID, root=view))
    assert list(from_view.config.input_features.items()) == list(from_frames.config.input_features.items())
    from_view.load_state_dict(from_frames.state_dict())
    frames_batch, view_batch = training_batch(data, from_frames, ROWS), training_batch(view, from_view, ROWS)
    assert [c for c in CAMERAS if c in view_batch] == []
    trunk_rows: list[int] = []
    embed = from_view.encoder.encoder.vision_encoder.backbone.patch_embed
    handle = embed.register_forward_pre_hook(lambda _m, args: trunk_rows.append(args[0].shape[0]))
    losses = []
    for policy, batch in ((from_frames, frames_batch), (from_view, view_batch)):
        policy.train()
        torch.manual_seed(0)
        losses.append(policy.forward(dict(batch))[0])
    from_view.eval()
    assert torch.isfinite(from_view.forward(dict(view_batch))[0])
    handle.remove()
    assert trunk_rows == []
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=0)


def test_rerunning_the_build_on_a_complete_cache_without_its_view_writes_the_view_and_nothing_else(
    tmp_path, dataset, policy, cache
):
    """A cache completed before its view existed (or whose view was deleted) gets it back from the same
    command, without encoding again: the same files with the same bytes, the same links."""
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy, symlinks=True)
    shutil.rmtree(copy / "dataset")
    build_lerobot_cache(dataset, policy.encoder, copy, dtype="float32", chunk_frames=CHUNK, on_chunk=pytest.fail)

    def contents(root: Path) -> dict[Path, bytes | str]:
        entries = [p for p in root.rglob("*") if p.is_symlink() or p.is_file()]
        return {p.relative_to(root): os.readlink(p) if p.is_symlink() else p.read_bytes() for p in entries}

    assert contents(copy) == contents(cache)
    assert (copy / "dataset" / "data").is_symlink()


def test_a_view_whose_source_dataset_moved_is_named_by_verify(tmp_path, policy):
    """The view links to the source dataset: once it is moved, ``--verify`` names each broken link."""
    source = record(tmp_path / "data", episodes=1)
    out = build_lerobot_cache(open_dataset(REPO_ID, source), policy.encoder, tmp_path / "features", chunk_frames=CHUNK)
    assert verify_lerobot_cache(out) == []
    source.rename(tmp_path / "moved")
    problems = verify_lerobot_cache(out)
    assert any(p.startswith(f"{out / 'dataset' / 'data'}: links to {source / 'data'}") for p in problems), problems
    assert all("the source dataset moved or was deleted" in p for p in problems)


def record_pusht_video(root: Path, episodes: int, frames: int) -> Path:
    """gym-pusht episodes (the scripted pushing motion of ``pusht_data``), the 96x96 camera stored as video."""
    import gym_pusht  # noqa: F401  (registers the env)
    import gymnasium as gym

    from .pusht_data import REPO_ID as PUSHT
    from .pusht_data import TASK, scripted_action

    features = {
        "observation.image": {"dtype": "video", "shape": (96, 96, 3), "names": ["height", "width", "channel"]},
        "observation.state": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
        "action": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
    }
    dataset = LeRobotDataset.create(repo_id=PUSHT, fps=10, features=features, root=root, use_videos=True)
    env = gym.make("gym_pusht/PushT-v0", obs_type="pixels_agent_pos")
    try:
        for episode in range(episodes):
            obs, info = env.reset(seed=episode)
            for step in range(frames):
                action = scripted_action(obs["agent_pos"], info["block_pose"], step)
                state = obs["agent_pos"].astype(np.float32)
                frame = {"observation.image": obs["pixels"], "observation.state": state, "action": action}
                dataset.add_frame({**frame, "task": TASK})
                obs, _, _, _, info = env.step(action)
            dataset.save_episode()
        dataset.finalize()
    finally:
        env.close()
    return root


def test_the_guides_two_commands_train_without_decoding_and_lerobot_eval_runs_the_policy_on_frames(tmp_path):
    """The guide on a video PushT dataset: ``sam2-encoder lerobot-cache``, then stock ``lerobot-train
    --dataset.root=CACHE/dataset --policy.feature_cache=CACHE``, whose dataset holds no video to decode;
    the saved config lists the camera, and stock ``lerobot-eval`` runs the policy on PushT's raw frames
    with the cache deleted."""
    pytest.importorskip("gym_pusht", reason="gym-pusht is not installed: pip install 'lerobot[pusht]'")
    from .pusht_data import REPO_ID as PUSHT

    source = record_pusht_video(tmp_path / "pusht", episodes=2, frames=12)
    cache = tmp_path / "pusht.sam2_cache"
    options = {**OPTIONS, "sam2_image_size": 64}
    policy_options = [f"{k}={list(v) if isinstance(v, tuple) else v}".replace(" ", "") for k, v in options.items()]
    command = ["lerobot-cache", "--repo-id", PUSHT, "--root", str(source), "--out", str(cache), "--quiet"]
    assert cli_main([*command, *[a for o in policy_options for a in ("--policy", o)]]) == 0
    assert not (cache / "dataset" / "videos" / "observation.image").exists()  # nothing for LeRobot to decode
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_LEROBOT_HOME=str(tmp_path / "lerobot"), OMP_NUM_THREADS="1")
    bin_dir = Path(sys.executable).parent
    train = [str(bin_dir / "lerobot-train"), "--policy.type=sam2_diffusion", *[f"--policy.{o}" for o in policy_options]]
    train += [f"--dataset.repo_id={PUSHT}", f"--dataset.root={cache / 'dataset'}", f"--policy.feature_cache={cache}"]
    train += ["--steps=2", "--batch_size=4", "--num_workers=0", "--save_freq=2", "--wandb.enable=false"]
    proc = subprocess.run(
        [*train, f"--output_dir={tmp_path / 'train'}"], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    model = tmp_path / "train" / "checkpoints" / "last" / "pretrained_model"
    features = json.loads((model / "config.json").read_text())["input_features"]
    assert features["observation.image"] == {"type": "VISUAL", "shape": [3, 96, 96]}
    shutil.rmtree(cache)
    evaluate = [str(bin_dir / "lerobot-eval"), f"--policy.path={model}", "--policy.device=cpu", "--env.type=pusht"]
    evaluate += [
        "--env.episode_length=8",
        "--eval.n_episodes=1",
        "--eval.batch_size=1",
        f"--output_dir={tmp_path / 'eval'}",
    ]
    proc = subprocess.run(evaluate, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((tmp_path / "eval" / "eval_info.json").read_text())["overall"]["n_episodes"] == 1
