"""Policy training steps per second: cached frozen SAM 2 features vs encoding on the fly.

Both loops train the same pooling heads and stand-in denoiser on the same synthetic replay
buffer (DP layout), same batch size, image size and To, data loading included; the only
difference is where the camera features come from: ``SAM2ObsEncoder`` on images every step, or
``CachedFeatureDataset`` serving the features ``sam2-encoder cache`` computed once.

    python benchmarks/cache.py                          # tiny, 224, batch 32, 1 thread
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from common import add_output_args, machine_info, output_path, write_json
from diffusers import DDPMScheduler

from sam2_encoder import SAM2ObsEncoder, __version__
from sam2_encoder.diffusion_policy.feature_cache import CachedFeatureDataset, build_cache
from sam2_encoder.diffusion_policy.synthetic import (
    ReplayImageDataset,
    TinyDenoiser,
    dp_normalise,
    global_cond,
    write_replay_buffer,
)

HORIZON, TO, TA = 16, 2, 8


def train_steps(encoder: SAM2ObsEncoder, dataset, batch_size: int, steps: int, seed: int = 0) -> tuple[float, float]:
    """Wall and process CPU seconds per training step (after one warm-up step), data loading included."""
    torch.manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(seed)
    )
    denoiser = TinyDenoiser(HORIZON, 2, encoder.output_shape()[0] * TO)
    params = [p for p in [*encoder.parameters(), *denoiser.parameters()] if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scheduler = DDPMScheduler(num_train_timesteps=100)
    encoder.train()
    batches = iter(loader)
    times, cpu = [], []
    for i in range(steps + 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        obs, action = dp_normalise(batch, TO)
        cond = global_cond(encoder, obs)
        noise = torch.randn_like(action)
        t = torch.randint(0, 100, (len(action),))
        loss = torch.nn.functional.mse_loss(denoiser(scheduler.add_noise(action, noise, t), t, cond), noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i:
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - cpu_start)
    return sum(times) / len(times), sum(cpu) / len(cpu)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="sam2.1_hiera_tiny")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--frame-size", type=int, default=96, help="replay-buffer frame side (PushT: 96)")
    p.add_argument("--episodes", type=int, default=4)
    p.add_argument("--episode-steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=8, help="timed training steps per variant")
    p.add_argument("--threads", type=int, default=1)
    add_output_args(p, "cache")
    args = p.parse_args()
    out = output_path(args, "cache")  # before the run: a bad path fails now, not after it
    torch.set_num_threads(args.threads)
    machine = machine_info(torch.device("cpu")) | {"sam2_encoder": __version__}
    shape_meta = {
        "obs": {"image": {"shape": [3, args.frame_size, args.frame_size], "type": "rgb"}, "agent_pos": {"shape": [2]}},
        "action": {"shape": [2]},
    }
    with tempfile.TemporaryDirectory() as tmp:
        replay = write_replay_buffer(Path(tmp) / "replay.zarr", args.episodes, args.episode_steps, args.frame_size)
        live = SAM2ObsEncoder(shape_meta, variant=args.variant, image_size=args.image_size)
        start, cpu_start = time.perf_counter(), time.process_time()
        cache = build_cache(replay, ["img"], live.encoder, out=Path(tmp) / "features.zarr", progress=False)
        build_s, build_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
        cached = SAM2ObsEncoder(shape_meta, variant=args.variant, image_size=args.image_size, feature_cache=str(cache))
        cached.load_state_dict(live.state_dict())
        dataset = ReplayImageDataset(replay, HORIZON, TO - 1, TA - 1)
        cached_dataset = CachedFeatureDataset(str(cache), {"image": "img"}, dataset=dataset, n_obs_steps=TO)
        n_frames = args.episodes * args.episode_steps
        # interleave two rounds of each to share the machine's noise
        rounds: dict[str, list[tuple[float, float]]] = {"on_the_fly": [], "cached": []}
        for _ in range(2):
            rounds["on_the_fly"].append(train_steps(live, dataset, args.batch_size, args.steps // 2))
            rounds["cached"].append(train_steps(cached, cached_dataset, args.batch_size, args.steps // 2))
    sec = {k: sum(w for w, _ in v) / len(v) for k, v in rounds.items()}
    cpu = {k: sum(c for _, c in v) / len(v) for k, v in rounds.items()}
    report = {
        "benchmark": "cache",
        "machine": machine,
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "record")},
        "steps_per_s": {k: round(1 / v, 3) for k, v in sec.items()},
        "speedup": round(sec["on_the_fly"] / sec["cached"], 2),
        # process CPU time per step: the cost without the waits for a core of a shared machine (1 thread)
        "cpu_s_per_step": {k: round(v, 3) for k, v in cpu.items()},
        "speedup_cpu_time": round(cpu["on_the_fly"] / cpu["cached"], 2),
        "cache_build_s": round(build_s, 2),
        "cache_build_frames_per_s": round(n_frames / build_s, 2),
        "cache_build_cpu_s": round(build_cpu_s, 2),
        "break_even_steps": round(build_s / (sec["on_the_fly"] - sec["cached"]), 1),
    }
    write_json(report, out)
    print(json.dumps(report, indent=1))
    plot(report, out.with_suffix(".png"))


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    names = ["on_the_fly", "cached"]
    values = [report["steps_per_s"][n] for n in names]
    bars = ax.bar(["encode every step", "feature cache"], values, color=["#888", "#2a7"])
    ax.bar_label(bars, labels=[f"{v:.2f}/s" for v in values])
    c = report["config"]
    ax.set(
        ylabel="training steps per second",
        title=f"{c['variant']} @ {c['image_size']}, batch {c['batch_size']}, To=2: {report['speedup']}x",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
