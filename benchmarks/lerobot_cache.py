"""LeRobot training steps per second: ``--policy.feature_cache`` vs encoding the frames every step.

A PushT LeRobotDataset is recorded with gym-pusht (a scripted pushing motion, the camera
video-encoded as LeRobot does), then the sam2_diffusion policy trains on it the way
``lerobot-train`` does (a DataLoader over the dataset with the policy's delta timestamps, uint8 /
255, the policy's preprocessor, forward, backward, AdamW step), data loading and video decoding
included, from frames and from the feature cache (same weights, same batches): ``cache`` trains
on the cache's dataset view (``--dataset.root=CACHE/dataset``, as the guide does: the cached camera's
video is never decoded), ``cache_decoding`` on the source dataset (its frames still decoded, only
checked). The cache's build time (``sam2-encoder lerobot-cache``) gives the break-even step.

    .ci/venv-lerobot/bin/python benchmarks/lerobot_cache.py          # tiny, 224, batch 16, 1 thread
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import add_output_args, machine_info, output_path, pyplot, write_json

from sam2_encoder import __version__

REPO_ID = "local/pusht_sam2_bench"


def record_pusht_video(root: Path, episodes: int, steps: int) -> Path:
    """``episodes`` PushT episodes of ``steps`` frames, the 96x96 camera stored as video."""
    import gym_pusht  # noqa: F401  (registers the env)
    import gymnasium as gym
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {
        "observation.image": {"dtype": "video", "shape": (96, 96, 3), "names": ["height", "width", "channel"]},
        "observation.state": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
        "action": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
    }
    dataset = LeRobotDataset.create(repo_id=REPO_ID, fps=10, features=features, root=root, use_videos=True)
    env = gym.make("gym_pusht/PushT-v0", obs_type="pixels_agent_pos")
    try:
        for episode in range(episodes):
            obs, info = env.reset(seed=episode)
            for step in range(steps):
                angle = 0.3 * step  # circle the block: a smooth, deterministic pushing motion
                target = info["block_pose"][:2] + 40.0 * np.array([np.cos(angle), np.sin(angle)])
                action = np.clip(obs["agent_pos"] + np.clip(target - obs["agent_pos"], -25, 25), 0, 512)
                action = action.astype(np.float32)
                dataset.add_frame(
                    {
                        "observation.image": obs["pixels"],
                        "observation.state": obs["agent_pos"].astype(np.float32),
                        "action": action,
                        "task": "Push the T-shaped block onto the target.",
                    }
                )
                obs, _, _, _, info = env.step(action)
            dataset.save_episode()
        dataset.finalize()
    finally:
        env.close()
    return root


def train_steps(policy: Any, root: Path, batch_size: int, steps: int, seed: int = 0) -> dict[str, float]:
    """Wall, CPU and data-loading seconds per step, as ``lerobot-train`` runs a step (after one warm-up step)."""
    from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata
    from lerobot.datasets.factory import resolve_delta_timestamps
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.policies.factory import make_pre_post_processors

    meta = LeRobotDatasetMetadata(REPO_ID, root=root)
    windows = LeRobotDataset(
        REPO_ID, root=root, delta_timestamps=resolve_delta_timestamps(policy.config, meta), return_uint8=True
    )
    preprocessor, _ = make_pre_post_processors(policy.config, dataset_stats=windows.meta.stats)
    loader = torch.utils.data.DataLoader(
        windows, batch_size=batch_size, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(seed)
    )
    optimizer = torch.optim.AdamW(policy.get_optim_params(), lr=1e-4)
    policy.train()
    torch.manual_seed(seed)
    batches = iter(loader)
    wall, cpu, data = [], [], []
    for i in range(steps + 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        for key in windows.meta.camera_keys:  # the view has none: its camera is cached
            batch[key] = batch[key].to(torch.float32) / 255.0
        batch = preprocessor(batch)
        loaded = time.perf_counter()
        loss, _ = policy.forward(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i:
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - cpu_start)
            data.append(loaded - start)
    return {"wall": float(np.mean(wall)), "cpu": float(np.mean(cpu)), "data": float(np.mean(data))}


def is_feature_file(path: Path, view: Path) -> bool:
    """A file of the cache itself, not of its dataset view (whose ``meta/`` is a copy of the dataset's)."""
    return path.is_file() and view not in path.parents


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Record, build the cache (timed), then interleave training rounds from frames and from the cache."""
    from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata
    from lerobot.policies.factory import make_policy

    from sam2_encoder.lerobot import SAM2DiffusionConfig
    from sam2_encoder.lerobot.feature_cache import build_lerobot_cache, open_dataset

    root = record_pusht_video(tmp / "pusht", args.episodes, args.episode_steps)
    dataset = open_dataset(REPO_ID, root)
    options = dict(
        device="cpu", push_to_hub=False, sam2_variant=args.variant, sam2_image_size=args.image_size, horizon=16
    )
    options["down_dims"] = tuple(args.down_dims)
    live = make_policy(SAM2DiffusionConfig(**options), ds_meta=dataset.meta)
    start, cpu_start = time.perf_counter(), time.process_time()
    cache = build_lerobot_cache(dataset, live.encoder, tmp / "features", chunk_frames=args.chunk_frames)
    build_s, build_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    view = Path(cache) / "dataset"  # lerobot-train --dataset.root=CACHE/dataset: no video of the cached camera
    cached = make_policy(
        SAM2DiffusionConfig(**options, feature_cache=str(cache)), ds_meta=LeRobotDatasetMetadata(REPO_ID, root=view)
    )
    cached.load_state_dict(live.state_dict())
    ways = {"frames": (live, root), "cache": (cached, view), "cache_decoding": (cached, root)}
    rounds: dict[str, list[dict[str, float]]] = {way: [] for way in ways}
    for _ in range(2):  # interleaved, to share the machine's noise
        for way, (policy, data) in ways.items():
            rounds[way].append(train_steps(policy, data, args.batch_size, args.steps // 2))
    mean = {k: {m: float(np.mean([r[m] for r in v])) for m in ("wall", "cpu", "data")} for k, v in rounds.items()}
    n_frames = int(dataset.meta.total_frames)
    saved = mean["frames"]["wall"] - mean["cache"]["wall"]
    return {
        "steps_per_s": {k: round(1 / v["wall"], 3) for k, v in mean.items()},
        "speedup": round(mean["frames"]["wall"] / mean["cache"]["wall"], 2),
        "speedup_decoding": round(mean["frames"]["wall"] / mean["cache_decoding"]["wall"], 2),
        "cpu_s_per_step": {k: round(v["cpu"], 3) for k, v in mean.items()},
        "speedup_cpu_time": round(mean["frames"]["cpu"] / mean["cache"]["cpu"], 2),
        "data_s_per_step": {k: round(v["data"], 3) for k, v in mean.items()},
        "cache_build_s": round(build_s, 2),
        "cache_build_cpu_s": round(build_cpu_s, 2),
        "cache_build_frames_per_s": round(n_frames / build_s, 2),
        "cache_mb": round(sum(p.stat().st_size for p in Path(cache).rglob("*") if is_feature_file(p, view)) / 2**20, 1),
        "view_mb": round(sum(p.lstat().st_size for p in view.rglob("*") if p.is_file()) / 2**20, 2),
        "dataset_frames": n_frames,
        "break_even_steps": round(build_s / saved, 1) if saved > 0 else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="sam2.1_hiera_tiny")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--episodes", type=int, default=4)
    p.add_argument("--episode-steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=8, help="timed training steps per way (two interleaved rounds)")
    p.add_argument("--down-dims", type=int, nargs="+", default=[512, 1024, 2048], help="UNet (LeRobot's default)")
    p.add_argument("--chunk-frames", type=int, default=8, help="frames per cache chunk (and per encoder batch)")
    p.add_argument("--threads", type=int, default=1)
    add_output_args(p, "lerobot_cache")
    args = p.parse_args()
    out = output_path(args, "lerobot_cache")  # before the run: a bad path fails now, not after it
    torch.set_num_threads(args.threads)
    machine = machine_info(torch.device("cpu")) | {"sam2_encoder": __version__}
    with tempfile.TemporaryDirectory() as tmp:
        results = run(args, Path(tmp))
    config = {k: v for k, v in vars(args).items() if k not in ("out", "record")}
    report = {"benchmark": "lerobot_cache", "machine": machine, "config": config, **results}
    write_json(report, out)
    print(json.dumps(report, indent=1))
    plot(report, out.with_suffix(".png"))


def plot(report: dict[str, Any], path: Path) -> None:
    """Steps/s from frames and from the cache, and the break-even step in the title."""
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(5.4, 3.4))
    steps = report["steps_per_s"]
    values = [steps["frames"], steps.get("cache_decoding", float("nan")), steps["cache"]]
    labels = ["decode + encode\nevery step", "feature_cache,\nframes decoded", "feature_cache +\nCACHE/dataset"]
    bars = ax.bar(labels, values, color=["#888", "#8b9", "#2a7"])
    ax.bar_label(bars, labels=[f"{v:.2f}/s" for v in values])
    c = report["config"]
    ax.set(
        ylabel="lerobot training steps per second",
        title=f"{c['variant']} @ {c['image_size']}, batch {c['batch_size']}, UNet {c['down_dims']}: "
        f"{report['speedup']}x\n"
        f"(cache built in {report['cache_build_s']} s, even after {report['break_even_steps']} steps)",
    )
    ax.title.set_fontsize(8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
