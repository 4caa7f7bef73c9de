"""A simulated 10 Hz Diffusion Policy control loop: per-step latency with and without frame reuse.

Two cameras, ``n_obs_steps`` To = 2, batch 1 (one robot): each control step receives one new frame
per camera, builds the To-frame observation DP's ``predict_action`` gets, encodes it with
``SAM2ObsEncoder`` and runs a DDIM sampling loop on a stand-in denoiser. With ``reuse_frames`` the
encoder encodes only the newest frame per camera (the previous step's frames are matched by
content); without it, all To frames per camera, as DP and LeRobot do. Both variants see the same
frames and noise in the same step (interleaved), and their actions are compared for identity.

    python benchmarks/control_loop.py                  # tiny, 224, 2 cameras, 40 steps, 1 thread
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, machine_info, write_json
from diffusers import DDIMScheduler

from sam2_encoder import SAM2ObsEncoder, __version__
from sam2_encoder.diffusion_policy.synthetic import TinyDenoiser, global_cond
from sam2_encoder.scene import synthetic_scene


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="sam2.1_hiera_tiny")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--camera-hw", type=int, nargs=2, default=[240, 320])
    p.add_argument("--cameras", type=int, default=2)
    p.add_argument("--n-obs-steps", type=int, default=2)
    p.add_argument("--steps", type=int, default=40, help="control steps per variant")
    p.add_argument("--ddim-steps", type=int, default=16)
    p.add_argument("--hidden", type=int, default=1024, help="width of the stand-in denoiser")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(RESULTS / "control_loop.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    h, w = args.camera_hw
    cams = [f"camera_{i}" for i in range(args.cameras)]
    shape_meta = {"obs": {**{c: {"shape": [3, h, w], "type": "rgb"} for c in cams}, "robot_eef_pose": {"shape": [2]}}}
    reuse = SAM2ObsEncoder(shape_meta, variant=args.variant, image_size=args.image_size).to(device).eval()
    plain = copy.deepcopy(reuse)
    plain.reuse_frames = False
    to = args.n_obs_steps
    torch.manual_seed(0)
    denoiser = TinyDenoiser(16, 2, reuse.output_shape()[0] * to, hidden=args.hidden).to(device).eval()
    scheduler = DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    scheduler.set_timesteps(args.ddim_steps)

    def camera_frame(cam: int, t: int) -> torch.Tensor:  # uint8 HWC -> DP's [-1, 1] CHW
        frame = torch.from_numpy(synthetic_scene(h, w, seed=1000 * cam + t)).permute(2, 0, 1).float()
        return (frame / 255 * 2 - 1).to(device)

    def predict(encoder: SAM2ObsEncoder, history: deque, t: int) -> tuple[torch.Tensor, int]:
        obs = {c: torch.stack([frames[i] for frames in history])[None] for i, c in enumerate(cams)}
        obs["robot_eef_pose"] = torch.zeros(1, to, 2, device=device)
        rows = []
        hook = encoder.encoder.vision_encoder.backbone.patch_embed.register_forward_hook(
            lambda m, i, o: rows.append(len(i[0]))
        )
        with torch.no_grad():
            cond = global_cond(encoder, obs)
            g = torch.Generator(device=device).manual_seed(t)
            trajectory = torch.randn(1, 16, 2, generator=g, device=device)
            for step in scheduler.timesteps:
                trajectory = scheduler.step(
                    denoiser(trajectory, step[None].to(device), cond), step, trajectory
                ).prev_sample
        hook.remove()
        return trajectory[:, to - 1 : to - 1 + 8], sum(rows)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    history: deque = deque(maxlen=to)
    lat = {"reuse": [], "plain": []}
    rows = {"reuse": [], "plain": []}
    identical = True
    for t in range(args.steps + 2):
        history.append([camera_frame(i, t) for i in range(len(cams))])
        while len(history) < to:
            history.appendleft(history[0])  # DP pads the first step with copies
        results = {}
        for name, enc in (("reuse", reuse), ("plain", plain)) if t % 2 else (("plain", plain), ("reuse", reuse)):
            sync()
            start = time.perf_counter()
            actions, n_rows = predict(enc, history, t)
            sync()
            if t >= 2:  # the first steps warm up (and fill the reuse memory)
                lat[name].append(1000 * (time.perf_counter() - start))
                rows[name].append(n_rows)
            results[name] = actions
        identical &= bool(torch.equal(results["reuse"], results["plain"]))

    def stats(xs: list[float]) -> dict[str, float]:
        return {q: round(float(np.percentile(xs, int(q[1:]))), 2) for q in ("p50", "p90", "p99")} | {
            "mean": round(float(np.mean(xs)), 2)
        }

    report = {
        "benchmark": "control_loop",
        "machine": machine_info(device) | {"sam2_encoder": __version__},
        "config": {
            **{k: v for k, v in vars(args).items() if k != "out"},
            "denoiser": f"TinyDenoiser(hidden={args.hidden}), a stand-in for DP's ConditionalUnet1D",
        },
        "latency_ms": {name: stats(xs) for name, xs in lat.items()},
        "frames_encoded_per_step": {name: float(np.mean(r)) for name, r in rows.items()},
        "speedup_p50": round(float(np.percentile(lat["plain"], 50) / np.percentile(lat["reuse"], 50)), 3),
        "actions_identical": identical,
        "within_100ms_budget": {name: float(np.mean(np.array(xs) <= 100.0)) for name, xs in lat.items()},
        "per_step_ms": lat,
    }
    out = Path(args.out)
    write_json(report, out)
    print(json.dumps({k: v for k, v in report.items() if k != "per_step_ms"}, indent=1))
    plot(report, out.with_suffix(".png"))


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name, label in (("plain", "every frame encoded (DP / LeRobot)"), ("reuse", "frame reuse (ours)")):
        xs = report["per_step_ms"][name]
        ax.plot(range(len(xs)), xs, label=f"{label}: p50 {report['latency_ms'][name]['p50']:.0f} ms")
    ax.axhline(100, color="grey", ls="--", lw=1, label="10 Hz budget")
    c = report["config"]
    ax.set(
        xlabel="control step",
        ylabel="latency per step (ms)",
        title=f"{c['variant']} @ {c['image_size']}, {c['cameras']} cameras, To={c['n_obs_steps']}, "
        f"{c['ddim_steps']} DDIM steps, {report['machine']['device']} x{report['machine']['torch_threads']}",
    )
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
