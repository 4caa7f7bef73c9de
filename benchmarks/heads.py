"""What the heads cost in a control step: pooled vs coarse-to-fine (stride 8, 4) vs object tokens.

The control loop of ``control_loop.py`` (two cameras, To = 2, batch 1, frame reuse on, 16 DDIM
steps of a stand-in denoiser sized for each head's condition), one encoder per head on the same
SAM 2 weights, interleaved step by step on the same frames (and, for object tokens, the same
masks: K rectangles per camera). The trunk work is the same for every head (one new frame per
camera per step), so the difference in step time is the head's cost.

    python benchmarks/heads.py                       # 224 px, 1 thread
    python benchmarks/heads.py --image-size 128 --threads 2 --record
"""

from __future__ import annotations

import argparse
import json
import time
from collections import deque
from typing import Any

import numpy as np
import torch
from common import add_output_args, loadavg, machine_info, output_path, pyplot, write_json
from diffusers import DDIMScheduler

from sam2_encoder import SAM2ObsEncoder, __version__
from sam2_encoder.diffusion_policy.synthetic import TinyDenoiser, global_cond
from sam2_encoder.scene import synthetic_scene

HEADS: dict[str, dict[str, Any]] = {
    "pooled (s16, spatial softmax)": {},
    "coarse_to_fine stride 8": {"fuse": "coarse_to_fine", "fuse_stride": 8},
    "coarse_to_fine stride 4": {"fuse": "coarse_to_fine", "fuse_stride": 4},
    "pooled + 2 object tokens": {"num_objects": 2, "object_token_dim": 64},
}


def stats(xs: list[float]) -> dict[str, float]:
    return {q: round(float(np.percentile(xs, int(q[1:]))), 2) for q in ("p50", "p90", "p99")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="sam2.1_hiera_tiny")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--camera-hw", type=int, nargs=2, default=[240, 320])
    p.add_argument("--steps", type=int, default=30, help="timed control steps per head")
    p.add_argument("--ddim-steps", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    add_output_args(p, "heads")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args()
    out = output_path(args, "heads")
    torch.set_num_threads(args.threads)
    h, w = args.camera_hw
    cams = ["camera_0", "camera_1"]
    to = 2
    shape_meta = {"obs": {**{c: {"shape": [3, h, w], "type": "rgb"} for c in cams}, "pos": {"shape": [2]}}}
    encoders, denoisers = {}, {}
    for name, options in HEADS.items():
        masks = {"object_masks_key": {c: f"{c}_masks" for c in cams}} if "num_objects" in options else {}
        enc = SAM2ObsEncoder(shape_meta, variant=args.variant, image_size=args.image_size, **options, **masks).eval()
        if encoders:  # the same SAM 2 weights in every encoder
            enc.encoder.load_state_dict(next(iter(encoders.values())).encoder.state_dict())
        encoders[name] = enc
        torch.manual_seed(0)
        denoisers[name] = TinyDenoiser(16, 2, enc.output_shape()[0] * to, hidden=1024).eval()
    scheduler = DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    scheduler.set_timesteps(args.ddim_steps)

    def frame(cam: int, t: int) -> torch.Tensor:
        image = torch.from_numpy(synthetic_scene(h, w, seed=1000 * cam + t)).permute(2, 0, 1).float()
        return image / 255 * 2 - 1

    def masks(t: int) -> torch.Tensor:  # (K, H, W): two rectangles moving with t
        m = torch.zeros(2, h, w)
        m[0, 20 + t % 40 : 100 + t % 40, 30:150] = 1
        m[1, 120:200, 160 + t % 50 : 260 + t % 50] = 1
        return m

    history: deque = deque(maxlen=to)
    lat: dict[str, list[float]] = {name: [] for name in HEADS}
    load_start = loadavg()
    for t in range(args.steps + 2):
        history.append(([frame(i, t) for i in range(len(cams))], masks(t)))
        while len(history) < to:
            history.appendleft(history[0])
        obs = {c: torch.stack([f[i] for f, _ in history])[None] for i, c in enumerate(cams)}
        obs |= {f"{c}_masks": torch.stack([m for _, m in history])[None] for c in cams}
        obs["pos"] = torch.zeros(1, to, 2)
        names = list(HEADS) if t % 2 else list(HEADS)[::-1]
        for name in names:
            start = time.perf_counter()
            with torch.no_grad():
                cond = global_cond(encoders[name], obs)
                g = torch.Generator().manual_seed(t)
                trajectory = torch.randn(1, 16, 2, generator=g)
                for step in scheduler.timesteps:
                    noise = denoisers[name](trajectory, step[None], cond)
                    trajectory = scheduler.step(noise, step, trajectory).prev_sample
            if t >= 2:  # warm-up steps fill the frame memory
                lat[name].append(1000 * (time.perf_counter() - start))
    pooled = float(np.percentile(lat[list(HEADS)[0]], 50))
    rows = [
        {
            "head": name,
            "options": HEADS[name],
            "condition_dim": encoders[name].output_shape()[0] * to,
            "head_params": sum(p.numel() for p in encoders[name].heads.parameters()),
            "latency_ms": stats(lat[name]),
            "vs_pooled_p50_ms": round(float(np.percentile(lat[name], 50)) - pooled, 2),
        }
        for name in HEADS
    ]
    report = {
        "benchmark": "heads",
        "machine": machine_info(torch.device("cpu")) | {"sam2_encoder": __version__},
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "record")}
        | {"cameras": 2, "n_obs_steps": to, "frame_reuse": True, "load_average_start": load_start},
        "rows": rows,
    }
    write_json(report, out)
    for r in rows:
        print(
            f"{r['head']:<32} p50 {r['latency_ms']['p50']:7.1f}  p99 {r['latency_ms']['p99']:7.1f} ms  "
            f"({r['vs_pooled_p50_ms']:+.1f} ms vs pooled; {r['head_params']} head params)"
        )
    if not args.no_plots:
        plt = pyplot()
        if plt is not None:
            fig, ax = plt.subplots(figsize=(7, 3))
            ax.barh([r["head"] for r in rows], [r["latency_ms"]["p50"] for r in rows], color="tab:blue")
            ax.set_xlabel(f"ms per control step (p50), {args.image_size} px, {args.threads} thread(s)")
            ax.invert_yaxis()
            fig.tight_layout()
            fig.savefig(out.with_suffix(".png"), dpi=120)
    print(json.dumps({"out": str(out)}))


if __name__ == "__main__":
    main()
