"""A simulated Diffusion Policy control loop: per-step latency by threads, precision, frame reuse and head.

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

``--heads`` adds one row per head (frame reuse on) to the same interleaved steps: the same frames,
noise and SAM 2 weights, each head with a denoiser sized for its condition (seeded alike). The
``pool`` head (s16, spatial softmax) is the reuse row itself; the others:

- ``coarse_to_fine_s8`` / ``coarse_to_fine_s4``: ``fuse="coarse_to_fine"``, readout at stride 8 / 4;
- ``object_tokens``: pooled head + 2 object tokens (64-d) per camera from masks *given* with the
  frames (a dataset's masks: two rectangles moving with the step);
- ``object_tokens_tracked``: the same policy with the masks from the tracker, as at inference: one
  ``StreamingPredictor`` per camera, prompted once at the start (a point and a box), then per step
  and camera ``track(frame, return_features=True)`` (the frame's ONE encoder pass, uint8 frame in)
  whose pyramid goes through the policy's ``fuse_levels`` and, with the tracked masks, into its heads.
  The tracker's SAM 2 image encoder holds the policy's weights; its mask decoder and memory are
  seeded random weights (the cost does not depend on them).

The trunk work is the same for every head with frame reuse (one new frame per camera per step),
so a head row's difference to the ``pool`` row is what the head (and, tracked, the tracker) costs.

``cpu_ms`` is the process CPU time per step: on a machine shared with other work, wall time
includes waiting for a core; with 1 thread the CPU time is what the step costs on its own (still
inflated by a busy sibling hyperthread or cache).

Fidelity of bf16: the actions of the same policy (same weights, frames and noise) in fp32 vs bf16
at every step, max abs and relative (L2) difference, and the encoder's condition vector's cosine.

    python benchmarks/control_loop.py                      # 1 and 2 threads, fp32 (+ bf16 if native)
    python benchmarks/control_loop.py --emulated-bf16      # + bf16 rows and fidelity on any CPU
    python benchmarks/control_loop.py --image-sizes 224 --threads 1 --precisions fp32 --heads pool \\
        coarse_to_fine_s8 coarse_to_fine_s4 object_tokens object_tokens_tracked --steps 30 \\
        --record --out benchmarks/results/control_loop_heads.json   # the recorded head costs
    python benchmarks/control_loop.py --record             # into benchmarks/results/ (quiet machine only)
    python benchmarks/control_loop.py --image-sizes 224 --threads 2 --steps 20 --levers --record
        # the lever table (control_levers.py): the bf16 real-time baseline vs each lever, one run
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from common import add_output_args, emulated_bf16, loadavg, machine_info, output_path, write_json
from control_levers import LEVERS, plot_levers, run_levers, table
from diffusers import DDIMScheduler
from plotting import plot_control_loop

from sam2_encoder import SAM2ObsEncoder, StreamingPredictor, __version__
from sam2_encoder.diffusion_policy.synthetic import TinyDenoiser, global_cond
from sam2_encoder.image_encoder import bf16_support
from sam2_encoder.scene import synthetic_scene

OBJECTS = {"num_objects": 2, "object_token_dim": 64}
HEADS: dict[str, dict[str, Any]] = {  # name -> SAM2ObsEncoder options
    "pool": {},
    "coarse_to_fine_s8": {"fuse": "coarse_to_fine", "fuse_stride": 8},
    "coarse_to_fine_s4": {"fuse": "coarse_to_fine", "fuse_stride": 4},
    "object_tokens": OBJECTS,
    "object_tokens_tracked": OBJECTS,
}


def stats(xs: list[float]) -> dict[str, float]:
    return {q: round(float(np.percentile(xs, int(q[1:]))), 2) for q in ("p50", "p90", "p99")} | {
        "mean": round(float(np.mean(xs)), 2)
    }


@dataclass
class Policy:
    """One timed variant of a configuration: its encoder, denoiser and (tracked) its trackers."""

    head: str
    encoder: SAM2ObsEncoder
    denoiser: torch.nn.Module
    frame_reuse: bool = True
    trackers: list[StreamingPredictor] = field(default_factory=list)
    tracked: deque = field(default_factory=deque)  # (features per camera, masks per camera) of the last To steps


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
        "--heads",
        nargs="+",
        default=[],
        choices=list(HEADS),
        help="add a row per head (frame reuse on) to every configuration; pool is the reuse row",
    )
    p.add_argument(
        "--skip-padding",
        choices=["auto", "on", "off"],
        default="auto",
        help="SAM2ImageEncoder.skip_padding (auto: on CPU from 128 px, where it is bit-identical)",
    )
    p.add_argument("--emulated-bf16", action="store_true", help="run bf16 rows where the CPU only emulates bf16")
    p.add_argument(
        "--levers",
        nargs="*",
        default=None,
        choices=[n for n in LEVERS if n not in ("baseline", "fp32")],
        help="the lever table instead of the rows (control_levers.py): the bf16 baseline at max(--threads) "
        "and fp32 vs each lever named (none named: all), at each --image-sizes",
    )
    p.add_argument("--device", default="cpu")
    add_output_args(p, "control_loop")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args()
    if args.levers is not None:
        lever_table(args)
        return
    device = torch.device(args.device)
    out = output_path(args, "control_loop")  # before the run: a bad path fails now, not after it
    native_bf16, bf16_reason = bf16_support(device)
    machine = machine_info(device) | {"sam2_encoder": __version__, "bf16": [native_bf16, bf16_reason]}
    skip_padding = {"auto": "auto", "on": True, "off": False}[args.skip_padding]

    h, w = args.camera_hw
    cams = [f"camera_{i}" for i in range(args.cameras)]
    mask_keys = {c: f"{c}_masks" for c in cams}
    shape_meta = {"obs": {**{c: {"shape": [3, h, w], "type": "rgb"} for c in cams}, "robot_eef_pose": {"shape": [2]}}}
    to = args.n_obs_steps
    denoisers: dict[int, torch.nn.Module] = {}

    def denoiser_for(encoder: SAM2ObsEncoder) -> torch.nn.Module:  # one per condition size, seeded alike
        cond_dim = encoder.output_shape()[0] * to
        if cond_dim not in denoisers:
            torch.manual_seed(0)
            denoisers[cond_dim] = TinyDenoiser(16, 2, cond_dim, hidden=args.hidden).to(device).eval()
        return denoisers[cond_dim]

    def head_policy(head: str, size: int, precision: str, base: SAM2ObsEncoder) -> Policy:
        options = HEADS[head] | ({"object_masks_key": mask_keys} if "num_objects" in HEADS[head] else {})
        enc = SAM2ObsEncoder(shape_meta, variant=args.variant, image_size=size, precision=precision, **options)
        enc.encoder.load_state_dict(base.encoder.state_dict())  # the same SAM 2 weights in every row
        enc = enc.to(device).eval()
        enc.encoder.skip_padding = skip_padding
        policy = Policy(head, enc, denoiser_for(enc))
        if head == "object_tokens_tracked":
            for _ in cams:  # one tracking session per camera stream
                pred = StreamingPredictor(args.variant, image_size=size, device=device, precision=precision)
                pred.model.vision_encoder.load_state_dict(base.encoder.vision_encoder.state_dict())
                pred.model.no_memory_embedding.data.copy_(
                    base.encoder.no_memory_embedding.data.view_as(pred.model.no_memory_embedding)
                )
                pred.encoder.skip_padding = skip_padding
                policy.trackers.append(pred)
        return policy

    configs: dict[tuple[int, str], dict[str, Policy]] = {}
    skipped: dict[str, str] = {}
    for size in args.image_sizes:
        for precision in args.precisions:
            if precision == "bf16" and not native_bf16 and not args.emulated_bf16:
                skipped["bf16"] = f"no native bf16 on {device.type} ({bf16_reason}); --emulated-bf16 measures it"
                continue
            with emulated_bf16(precision == "bf16" and not native_bf16):
                reuse = SAM2ObsEncoder(shape_meta, variant=args.variant, image_size=size, precision=precision)
                reuse = reuse.to(device).eval()
                reuse.encoder.skip_padding = skip_padding
                reuse.encoder.check_precision(device)
                plain = copy.deepcopy(reuse)
                plain.reuse_frames = False
                # "plain" first: the interleaving order of the two-row runs recorded before --heads
                policies = {"plain": Policy("pool", plain, denoiser_for(plain), frame_reuse=False)}
                policies["reuse"] = Policy("pool", reuse, denoiser_for(reuse))
                for head in args.heads:
                    if head != "pool":
                        policies[head] = head_policy(head, size, precision, reuse)
            configs[(size, precision)] = policies
    scheduler = DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    scheduler.set_timesteps(args.ddim_steps)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def camera_frame(cam: int, t: int) -> tuple[np.ndarray, torch.Tensor]:  # uint8 HWC, DP's [-1, 1] CHW
        frame = synthetic_scene(h, w, seed=1000 * cam + t)
        return frame, (torch.from_numpy(frame).permute(2, 0, 1).float() / 255 * 2 - 1).to(device)

    def dataset_masks(t: int) -> torch.Tensor:  # (K, H, W): two rectangles moving with the step
        m = torch.zeros(OBJECTS["num_objects"], h, w, device=device)
        m[0, 20 + t % 40 : 100 + t % 40, 30:150] = 1
        m[1, 120:200, 160 + t % 50 : 260 + t % 50] = 1
        return m

    def observe(policy: Policy, history: deque, t: int) -> dict[str, torch.Tensor]:
        """The policy's obs dict ``{key: (1, To, ...)}`` for step ``t`` (tracked: runs the trackers)."""
        if policy.trackers:
            step = [], []
            for i, pred in enumerate(policy.trackers):
                frame = history[-1][0][i][0]
                if t == 0:  # prompted once, on the episode's first frame
                    pred.add_prompt(frame, obj_id=1, points=[[w // 4, h // 4]], labels=[1])
                    res = pred.add_prompt(
                        None, obj_id=2, box=[w // 2, h // 2, w * 7 // 8, h * 7 // 8], return_features=True
                    )
                else:
                    res = pred.track(frame, return_features=True)  # the frame's one encoder pass
                step[0].append(policy.encoder.fuse_levels(res.features))
                step[1].append(res.masks[None])
            policy.tracked.append(step)
            while len(policy.tracked) > to:
                policy.tracked.popleft()
            while len(policy.tracked) < to:
                policy.tracked.appendleft(policy.tracked[0])  # DP pads the first step with copies
            obs = {c: torch.cat([f[i] for f, _ in policy.tracked])[None] for i, c in enumerate(cams)}
            obs |= {mask_keys[c]: torch.cat([m[i] for _, m in policy.tracked])[None] for i, c in enumerate(cams)}
        else:
            obs = {c: torch.stack([frames[i][1] for frames, _ in history])[None] for i, c in enumerate(cams)}
            if policy.encoder.object_masks:  # the same masks for every camera
                obs |= {mask_keys[c]: torch.stack([m for _, m in history])[None] for c in cams}
        obs["robot_eef_pose"] = torch.zeros(1, to, 2, device=device)
        return obs

    def predict(policy: Policy, history: deque, t: int) -> tuple[torch.Tensor, torch.Tensor, int, float]:
        rows = []
        hooks = [
            trunk.vision_encoder.backbone.patch_embed.register_forward_hook(lambda m, i, o: rows.append(len(i[0])))
            for trunk in [policy.encoder.encoder] + [pred.encoder for pred in policy.trackers]
        ]
        with torch.no_grad():
            start = time.perf_counter()
            cond = global_cond(policy.encoder, observe(policy, history, t))
            sync()
            encode_ms = 1000 * (time.perf_counter() - start)
            g = torch.Generator(device=device).manual_seed(t)
            trajectory = torch.randn(1, 16, 2, generator=g, device=device)
            for step in scheduler.timesteps:
                noise = policy.denoiser(trajectory, step[None].to(device), cond)
                trajectory = scheduler.step(noise, step, trajectory).prev_sample
        for hook in hooks:
            hook.remove()
        return trajectory[:, to - 1 : to - 1 + 8], cond, sum(rows), encode_ms

    def head_only_ms(policies: dict[str, Policy], history: deque, reps: int = 20) -> dict[str, dict[str, float]]:
        """Median ms (wall, CPU) of each policy's heads alone on one frame per camera (a step's head work with reuse).

        The heads read the newest frames' pyramid (encoded once, untimed) as precomputed features, with
        the step's given masks for object tokens. Untimed in the loop: a noise-free view of what the
        step rows' differences measure amid the trunk's run-to-run variation.
        """
        frames, masks = history[-1]
        with torch.no_grad():
            pyramid = policies["reuse"].encoder.encoder.encode(
                policies["reuse"].encoder.encoder.transforms(torch.stack([f for _, f in frames]).to(device))
            )
            out = {}
            for name, policy in policies.items():
                if not policy.frame_reuse:
                    continue
                features = policy.encoder.fuse_levels(pyramid)
                obs = {c: features[i : i + 1] for i, c in enumerate(cams)} | {
                    "robot_eef_pose": torch.zeros(1, 2, device=device)
                }
                obs |= {mask_keys[c]: masks[None] for c in cams} if policy.encoder.object_masks else {}
                wall, cpu = [], []
                for _ in range(reps + 1):
                    sync()
                    start, cpu_start = time.perf_counter(), time.process_time()
                    policy.encoder(obs)
                    sync()
                    wall.append(1000 * (time.perf_counter() - start))
                    cpu.append(1000 * (time.process_time() - cpu_start))
                out[name] = {
                    "wall_p50": round(float(np.median(wall[1:])), 3),
                    "cpu_p50": round(float(np.median(cpu[1:])), 3),
                }
        return out

    rows: list[dict[str, Any]] = []
    outputs: dict[tuple[int, str], list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for threads in args.threads:
        if device.type == "cpu":
            torch.set_num_threads(threads)
        for (size, precision), policies in configs.items():
            for policy in policies.values():  # a new episode: new tracking sessions, empty frame memory
                policy.encoder.forget_frames()
                policy.tracked.clear()
                for pred in policy.trackers:
                    pred.reset()
            names = list(policies)
            history: deque = deque(maxlen=to)
            lat: dict[str, list[float]] = {n: [] for n in names}
            encoded: dict[str, list[int]] = {n: [] for n in names}
            encode_ms: dict[str, list[float]] = {n: [] for n in names}
            cpu_ms: dict[str, list[float]] = {n: [] for n in names}
            identical = True
            kept: list[tuple[torch.Tensor, torch.Tensor]] = []
            load_start = loadavg()
            with emulated_bf16(precision == "bf16" and not native_bf16):
                for t in range(args.steps + 2):
                    history.append(([camera_frame(i, t) for i in range(len(cams))], dataset_masks(t)))
                    while len(history) < to:
                        history.appendleft(history[0])  # DP pads the first step with copies
                    results = {}
                    for name in names[t % len(names) :] + names[: t % len(names)]:  # rotated each step
                        sync()
                        start, cpu_start = time.perf_counter(), time.process_time()
                        actions, cond, n_rows, enc_ms = predict(policies[name], history, t)
                        sync()
                        if t >= 2:  # the first steps warm up (and fill the reuse memory / prompt the trackers)
                            lat[name].append(1000 * (time.perf_counter() - start))
                            cpu_ms[name].append(1000 * (time.process_time() - cpu_start))
                            encoded[name].append(n_rows)
                            encode_ms[name].append(enc_ms)
                        results[name] = (actions, cond)
                    identical &= bool(torch.equal(results["reuse"][0], results["plain"][0]))
                    kept.append(results["reuse"])
                tracked_vs_own: dict[str, float] = {}
                for name, policy in policies.items():  # untimed check: the tracker's pyramid is the policy's own
                    if policy.trackers:
                        own = {
                            c: torch.stack([frames[i][1] for frames, _ in history])[None] for i, c in enumerate(cams)
                        }
                        own |= {
                            mask_keys[c]: torch.cat([m[i] for _, m in policy.tracked])[None] for i, c in enumerate(cams)
                        }
                        own["robot_eef_pose"] = torch.zeros(1, to, 2, device=device)
                        with torch.no_grad():
                            diff = global_cond(policy.encoder, own) - results[name][1]
                        tracked_vs_own[name] = float(diff.abs().max())
                head_ms = head_only_ms(policies, history) if args.heads else {}
            outputs.setdefault((size, precision), kept)
            pool_p50 = float(np.percentile(lat["reuse"], 50))
            pool_cpu_p50 = float(np.percentile(cpu_ms["reuse"], 50))
            for name in ["reuse", "plain"] + names[2:]:
                policy = policies[name]
                row = {
                    "image_size": size,
                    "threads": threads,
                    "precision": precision + (" (emulated)" if precision == "bf16" and not native_bf16 else ""),
                    "frame_reuse": policy.frame_reuse,
                    "head": policy.head,
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
                if args.heads and policy.frame_reuse:
                    row |= {
                        "head_options": HEADS[policy.head],
                        "masks": "tracked" if policy.trackers else "given" if policy.encoder.object_masks else None,
                        "condition_dim": policy.encoder.output_shape()[0] * to,
                        "head_params": sum(p.numel() for p in policy.encoder.heads.parameters()),
                        "vs_pool_p50_ms": round(float(np.percentile(lat[name], 50)) - pool_p50, 2),
                        # CPU time: the difference without the waits for a core of a shared machine
                        "vs_pool_cpu_p50_ms": round(float(np.percentile(cpu_ms[name], 50)) - pool_cpu_p50, 2),
                    }
                if name in head_ms:
                    row["heads_alone_ms"] = head_ms[name]
                if name in tracked_vs_own:
                    row["condition_max_abs_diff_vs_policy_encoding_the_frames"] = tracked_vs_own[name]
                rows.append(row)
            summary = [f"{n} p50 {np.percentile(lat[n], 50):.1f} p99 {np.percentile(lat[n], 99):.1f}" for n in names]
            print(f"{size} px, threads {threads} {precision}: {'; '.join(summary)} ms (load {loadavg()})", flush=True)

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

    def describe(r: dict[str, Any]) -> str:
        head = "" if r["head"] == "pool" else f", head {r['head']}"
        return (
            f"{r['image_size']} px, {r['threads']} thread(s), {r['precision']}, "
            f"{'reuse' if r['frame_reuse'] else 'no reuse'}{head}"
        )

    report = {
        "benchmark": "control_loop",
        "machine": machine,
        "config": {
            **{k: v for k, v in vars(args).items() if k not in ("out", "record")},
            "denoiser": f"TinyDenoiser(hidden={args.hidden}), a stand-in for DP's ConditionalUnet1D, one per "
            "condition size",
        },
        "rows": rows,
        "skipped": skipped,
        "bf16_fidelity": fidelity,
        "meets_10hz_p50": [describe(r) for r in rows if r["meets_10hz_p50"]],
    }
    write_json(report, out)
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=1))
    for r in rows:
        head = f" {r['head']:<21}" if args.heads else ""
        extra = ""
        if "vs_pool_p50_ms" in r:
            extra = (
                f" {r['vs_pool_p50_ms']:+7.1f} ms vs pool (CPU time {r['vs_pool_cpu_p50_ms']:+.1f}; "
                f"heads alone {r['heads_alone_ms']['wall_p50']:.1f} ms, CPU {r['heads_alone_ms']['cpu_p50']:.1f})"
            )
        print(
            f"{r['image_size']} px {r['threads']} thread(s) {r['precision']:<16} reuse={r['frame_reuse']!s:<5}{head} "
            f"p50 {r['latency_ms']['p50']:7.1f}  p99 {r['latency_ms']['p99']:7.1f} ms{extra} "
            f"(encoder p50 {r['encoder_ms_p50']:.1f} ms; trunk passes/step {r['frames_encoded_per_step']:.1f}; "
            f"CPU time p50 {r['cpu_ms']['p50']:.1f} p99 {r['cpu_ms']['p99']:.1f})"
        )
    if not args.no_plots:
        plot_control_loop(report, out.with_suffix(".png"))


def lever_table(args: argparse.Namespace) -> None:
    """``--levers``: the lever table of ``control_levers.py`` at each image size, one JSON and one plot."""
    device = torch.device(args.device)
    out = output_path(args, "control_loop_levers")
    native_bf16, bf16_reason = bf16_support(device)
    machine = machine_info(device) | {"sam2_encoder": __version__, "bf16": [native_bf16, bf16_reason]}
    if not native_bf16 and not args.emulated_bf16:
        raise SystemExit(f"--levers compares bf16 levers: no native bf16 on {device.type} ({bf16_reason}); "
                         "--emulated-bf16 runs them for fidelity only")  # fmt: skip
    skip_padding = {"auto": "auto", "on": True, "off": False}[args.skip_padding]
    h, w = args.camera_hw
    cams = [f"camera_{i}" for i in range(args.cameras)]
    shape_meta = {"obs": {**{c: {"shape": [3, h, w], "type": "rgb"} for c in cams}, "robot_eef_pose": {"shape": [2]}}}
    scheduler = DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    scheduler.set_timesteps(args.ddim_steps)
    names = args.levers or [n for n in LEVERS if n not in ("baseline", "fp32")]
    rows, skipped, target = [], {}, {}
    for size in args.image_sizes:

        def make(size: int = size, **options) -> SAM2ObsEncoder:
            enc = SAM2ObsEncoder(shape_meta, variant=args.variant, image_size=size, **options).to(device).eval()
            enc.encoder.skip_padding = skip_padding
            enc.encoder.check_precision(device)
            return enc

        with emulated_bf16(not native_bf16):
            result = run_levers(
                names, make, size=size, threads=max(args.threads), camera_hw=(h, w), cameras=args.cameras,
                to=args.n_obs_steps, steps=args.steps, hidden=args.hidden, scheduler=scheduler, device=device,
            )  # fmt: skip
        rows += result["rows"]
        skipped |= {f"{name} ({size} px)": why for name, why in result["skipped"].items()}
        target[str(size)] = result["target"]
    report = {
        "benchmark": "control_loop_levers",
        "machine": machine,
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "record")}
        | {"denoiser": f"TinyDenoiser(hidden={args.hidden}), a stand-in for DP's ConditionalUnet1D"},
        "bf16_emulated": not native_bf16,
        "rows": rows,
        "skipped": skipped,
        "target": target,
        "pays": [f"{r['lever']} ({r['image_size']} px)" for r in rows if r["pays"]],
    }
    write_json(report, out)
    print(table(report))
    print(json.dumps({k: report[k] for k in ("skipped", "target", "pays")}, indent=1))
    if not args.no_plots:
        plot_levers(report, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
