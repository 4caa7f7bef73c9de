"""A simulated Diffusion Policy control loop: per-step latency by threads, precision and frame reuse.

Two cameras, ``n_obs_steps`` To = 2, batch 1 (one robot): each control step receives one new frame
per camera, builds the To-frame observation DP's ``predict_action`` gets, encodes it with
``SAM2ObsEncoder`` and runs a DDIM sampling loop on a stand-in denoiser. With ``reuse_frames`` the
encoder encodes only the newest frame per camera (the previous step's frames are matched by
content); without it, all To frames per camera, as DP and LeRobot do.

Rows: every combination of ``--threads`` (1 and 2), ``--precisions`` (fp32, bf16) and reuse on/off,
p50 / p90 / p99 per step. Within a (threads, precision) row pair the two variants see the same
frames and noise in the same step (interleaved) and their actions must be identical. bf16 runs the
Hiera trunk under bfloat16 autocast (``precision="bf16"``); where the hardware lacks native bf16
the bf16 rows are skipped (the JSON says why) unless ``--emulated-bf16`` measures them anyway (torch
emulates bf16 there: the numerics are bf16's, the timings say nothing about native bf16).

``cpu_ms`` is the process CPU time per step: on a machine shared with other work, wall time
includes waiting for a core; with 1 thread the CPU time is what the step costs on its own (still
inflated by a busy sibling hyperthread or cache).

Fidelity of bf16: the actions of the same policy (same weights, frames and noise) in fp32 vs bf16
at every step, max abs and relative (L2) difference, and the encoder's condition vector's cosine.

    python benchmarks/control_loop.py                      # 1 and 2 threads, fp32 (+ bf16 if native)
    python benchmarks/control_loop.py --emulated-bf16      # + bf16 rows and fidelity on any CPU
    python benchmarks/control_loop.py --record             # into benchmarks/results/ (quiet machine only)
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections import deque
from typing import Any

import numpy as np
import torch
from common import add_output_args, emulated_bf16, loadavg, machine_info, output_path, write_json
from diffusers import DDIMScheduler
from plotting import plot_control_loop

from sam2_encoder import SAM2ObsEncoder, __version__
from sam2_encoder.diffusion_policy.synthetic import TinyDenoiser, global_cond
from sam2_encoder.image_encoder import bf16_support
from sam2_encoder.scene import synthetic_scene


def stats(xs: list[float]) -> dict[str, float]:
    return {q: round(float(np.percentile(xs, int(q[1:]))), 2) for q in ("p50", "p90", "p99")} | {
        "mean": round(float(np.mean(xs)), 2)
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="sam2.1_hiera_tiny")
    p.add_argument("--image-sizes", type=int, nargs="+", default=[224], help="encoder input sides (rows each)")
    p.add_argument("--camera-hw", type=int, nargs=2, default=[240, 320])
    p.add_argument("--cameras", type=int, default=2)
    p.add_argument("--n-obs-steps", type=int, default=2)
    p.add_argument("--steps", type=int, default=30, help="timed control steps per row")
    p.add_argument("--ddim-steps", type=int, default=16)
    p.add_argument("--hidden", type=int, default=1024, help="width of the stand-in denoiser")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument(
        "--skip-padding",
        choices=["auto", "on", "off"],
        default="auto",
        help="SAM2ImageEncoder.skip_padding (auto: on CPU from 128 px, where it is bit-identical)",
    )
    p.add_argument("--emulated-bf16", action="store_true", help="run bf16 rows where the CPU only emulates bf16")
    p.add_argument("--device", default="cpu")
    add_output_args(p, "control_loop")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args()
    device = torch.device(args.device)
    out = output_path(args, "control_loop")  # before the run: a bad path fails now, not after it
    native_bf16, bf16_reason = bf16_support(device)

    h, w = args.camera_hw
    cams = [f"camera_{i}" for i in range(args.cameras)]
    shape_meta = {"obs": {**{c: {"shape": [3, h, w], "type": "rgb"} for c in cams}, "robot_eef_pose": {"shape": [2]}}}
    to = args.n_obs_steps
    encoders: dict[tuple[int, str], dict[str, SAM2ObsEncoder]] = {}
    skipped: dict[str, str] = {}
    for size in args.image_sizes:
        for precision in args.precisions:
            if precision == "bf16" and not native_bf16 and not args.emulated_bf16:
                skipped["bf16"] = f"no native bf16 on {device.type} ({bf16_reason}); --emulated-bf16 measures it"
                continue
            with emulated_bf16(precision == "bf16" and not native_bf16):
                reuse = SAM2ObsEncoder(shape_meta, variant=args.variant, image_size=size, precision=precision)
                reuse = reuse.to(device).eval()
                reuse.encoder.skip_padding = {"auto": "auto", "on": True, "off": False}[args.skip_padding]
                reuse.encoder.check_precision(device)
            plain = copy.deepcopy(reuse)
            plain.reuse_frames = False
            encoders[(size, precision)] = {"reuse": reuse, "plain": plain}
    torch.manual_seed(0)
    cond_dim = next(iter(encoders.values()))["reuse"].output_shape()[0] * to  # the same at every size
    denoiser = TinyDenoiser(16, 2, cond_dim, hidden=args.hidden).to(device).eval()
    scheduler = DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    scheduler.set_timesteps(args.ddim_steps)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def camera_frame(cam: int, t: int) -> torch.Tensor:  # uint8 HWC -> DP's [-1, 1] CHW
        frame = torch.from_numpy(synthetic_scene(h, w, seed=1000 * cam + t)).permute(2, 0, 1).float()
        return (frame / 255 * 2 - 1).to(device)

    def predict(encoder: SAM2ObsEncoder, history: deque, t: int) -> tuple[torch.Tensor, torch.Tensor, int, float]:
        obs = {c: torch.stack([frames[i] for frames in history])[None] for i, c in enumerate(cams)}
        obs["robot_eef_pose"] = torch.zeros(1, to, 2, device=device)
        rows = []
        hook = encoder.encoder.vision_encoder.backbone.patch_embed.register_forward_hook(
            lambda m, i, o: rows.append(len(i[0]))
        )
        with torch.no_grad():
            start = time.perf_counter()
            cond = global_cond(encoder, obs)
            sync()
            encode_ms = 1000 * (time.perf_counter() - start)
            g = torch.Generator(device=device).manual_seed(t)
            trajectory = torch.randn(1, 16, 2, generator=g, device=device)
            for step in scheduler.timesteps:
                trajectory = scheduler.step(
                    denoiser(trajectory, step[None].to(device), cond), step, trajectory
                ).prev_sample
        hook.remove()
        return trajectory[:, to - 1 : to - 1 + 8], cond, sum(rows), encode_ms

    rows: list[dict[str, Any]] = []
    outputs: dict[tuple[int, str], list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for threads in args.threads:
        if device.type == "cpu":
            torch.set_num_threads(threads)
        for (size, precision), pair in encoders.items():
            history: deque = deque(maxlen=to)
            lat: dict[str, list[float]] = {"reuse": [], "plain": []}
            encoded: dict[str, list[int]] = {"reuse": [], "plain": []}
            encode_ms: dict[str, list[float]] = {"reuse": [], "plain": []}
            cpu_ms: dict[str, list[float]] = {"reuse": [], "plain": []}
            identical = True
            kept: list[tuple[torch.Tensor, torch.Tensor]] = []
            load_start = loadavg()
            with emulated_bf16(precision == "bf16" and not native_bf16):
                for t in range(args.steps + 2):
                    history.append([camera_frame(i, t) for i in range(len(cams))])
                    while len(history) < to:
                        history.appendleft(history[0])  # DP pads the first step with copies
                    results = {}
                    order = ("reuse", "plain") if t % 2 else ("plain", "reuse")
                    for name in order:
                        sync()
                        start, cpu_start = time.perf_counter(), time.process_time()
                        actions, cond, n_rows, enc_ms = predict(pair[name], history, t)
                        sync()
                        if t >= 2:  # the first steps warm up (and fill the reuse memory)
                            lat[name].append(1000 * (time.perf_counter() - start))
                            cpu_ms[name].append(1000 * (time.process_time() - cpu_start))
                            encoded[name].append(n_rows)
                            encode_ms[name].append(enc_ms)
                        results[name] = (actions, cond)
                    identical &= bool(torch.equal(results["reuse"][0], results["plain"][0]))
                    kept.append(results["reuse"])
            outputs.setdefault((size, precision), kept)
            for name in ("reuse", "plain"):
                rows.append(
                    {
                        "image_size": size,
                        "threads": threads,
                        "precision": precision + (" (emulated)" if precision == "bf16" and not native_bf16 else ""),
                        "frame_reuse": name == "reuse",
                        "latency_ms": stats(lat[name]),
                        "cpu_ms": stats(cpu_ms[name]),
                        "frames_encoded_per_step": float(np.mean(encoded[name])),
                        "encoder_ms_p50": round(float(np.percentile(encode_ms[name], 50)), 2),
                        "within_100ms_budget": float(np.mean(np.array(lat[name]) <= 100.0)),
                        "meets_10hz_p50": bool(np.percentile(lat[name], 50) <= 100.0),
                        "actions_identical_reuse_vs_plain": identical,
                        "load_average_start_end": [load_start, loadavg()],
                        "per_step_ms": [round(x, 2) for x in lat[name]],
                    }
                )
            r = rows[-2]["latency_ms"]
            print(
                f"{size} px, threads {threads} {precision}: reuse p50 {r['p50']} p99 {r['p99']} ms; "
                f"plain p50 {rows[-1]['latency_ms']['p50']} ms (load {loadavg()})",
                flush=True,
            )

    fidelity: dict[str, Any] = {}
    for size in args.image_sizes:
        if (size, "fp32") not in outputs or (size, "bf16") not in outputs:
            continue
        a32 = torch.stack([a for a, _ in outputs[(size, "fp32")]])
        a16 = torch.stack([a for a, _ in outputs[(size, "bf16")]])
        c32 = torch.cat([c for _, c in outputs[(size, "fp32")]])
        c16 = torch.cat([c for _, c in outputs[(size, "bf16")]])
        diff = (a32 - a16).flatten(1)
        fidelity[str(size)] = {
            "what": "the same policy (weights, frames, DDIM noise) with the encoder in fp32 vs bf16, every step",
            "action_max_abs_diff": float(diff.abs().max()),
            "action_rel_l2_diff_max": float((diff.norm(dim=1) / a32.flatten(1).norm(dim=1)).max()),
            "action_abs_max": float(a32.abs().max()),
            "condition_cosine_min": float(torch.nn.functional.cosine_similarity(c32, c16, dim=1).min()),
            "condition_rel_l2_diff_max": float(((c32 - c16).norm(dim=1) / c32.norm(dim=1)).max()),
        }

    report = {
        "benchmark": "control_loop",
        "machine": machine_info(device) | {"sam2_encoder": __version__, "bf16": [native_bf16, bf16_reason]},
        "config": {
            **{k: v for k, v in vars(args).items() if k not in ("out", "record")},
            "denoiser": f"TinyDenoiser(hidden={args.hidden}), a stand-in for DP's ConditionalUnet1D",
        },
        "rows": rows,
        "skipped": skipped,
        "bf16_fidelity": fidelity,
        "meets_10hz_p50": [
            f"{r['image_size']} px, {r['threads']} thread(s), {r['precision']}, "
            f"{'reuse' if r['frame_reuse'] else 'no reuse'}"
            for r in rows
            if r["meets_10hz_p50"]
        ],
    }
    write_json(report, out)
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=1))
    for r in rows:
        print(
            f"{r['image_size']} px {r['threads']} thread(s) {r['precision']:<16} reuse={r['frame_reuse']!s:<5} "
            f"p50 {r['latency_ms']['p50']:7.1f}  p99 {r['latency_ms']['p99']:7.1f} ms "
            f"(encoder p50 {r['encoder_ms_p50']:.1f} ms; "
            f"CPU time p50 {r['cpu_ms']['p50']:.1f} p99 {r['cpu_ms']['p99']:.1f})"
        )
    if not args.no_plots:
        plot_control_loop(report, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
