"""The control step's levers side by side (``control_loop.py --levers``): each against one baseline, one run.

The step of ``control_loop.py`` (two cameras, To = 2, frame reuse: one new frame per camera per
step, a DDIM loop on the stand-in denoiser) in several configurations that see the same frames
and noise in the same step, their order rotated each step (interleaved rounds). The baseline is
the real-time configuration: the Hiera trunk in bf16 with its frozen weights cast once, neck and
heads in fp32, both cameras' new frames in ONE trunk pass, 2 intra-op threads. Each lever changes
one thing (``LEVERS``); ``fp32`` is the exact path and the fidelity reference.

Per lever: p50 / p90 / p99 wall and CPU ms per step, the encoder's share, the speed-up over the
baseline, and fidelity against ``fp32`` as ``benchmarks/fidelity.py`` reports it: per level (s4,
s8, s16) the cosine and relative L2 error of the new frames' maps over every timed step, the
condition vector's cosine and the actions' max abs / relative L2 difference. A lever *pays* when
its p50 is at least ``PAYS_FRACTION`` below the baseline's and its levels keep cosine >= 0.999.
A lever that cannot run here (no padding to skip at this size, a backend that is not installed,
a failed ``torch.compile``) is listed under ``skipped`` with the reason.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from fidelity import level_report

from sam2_encoder import SAM2ObsEncoder
from sam2_encoder.diffusion_policy.synthetic import TinyDenoiser, global_cond
from sam2_encoder.image_encoder import LEVELS, FeaturePyramid, SAM2ImageEncoder
from sam2_encoder.scene import synthetic_scene

__all__ = ["LEVERS", "PAYS_FRACTION", "run_levers"]

LEVERS: dict[str, str] = {
    "baseline": "bf16 trunk, frozen weights cast to bf16 once; neck + heads fp32; 2 cameras in one trunk pass; "
    "2 intra-op threads",
    "fp32": "the exact fp32 encoder (the fidelity reference)",
    "no_weight_casts": "bf16 by plain autocast: the trunk's weights cast on every call",
    "bf16_neck_heads": "the neck, conv_s0 / conv_s1 and the heads under bf16 autocast too",
    "camera_per_thread": "one camera per thread: 2 Python threads, each a batch-1 trunk pass on 1 intra-op thread",
    "micro_batch_1": "the cameras' frames through the trunk one after the other (micro_batch=1)",
    "one_thread": "the whole step on 1 intra-op thread",
    "skip_padding_off": "skip_padding=False (the window padding's projections computed)",
    "channels_last": "encoder weights and pixels in channels-last memory format",
    "compile": "torch.compile of the encoder pass (inductor, static shapes), bf16",
    "openvino": "the trunk through OpenVINO (backend='openvino' of SAM2ImageEncoder)",
}
PAYS_FRACTION = 0.03  # a lever pays when its p50 is at least 3% below the baseline's
COSINE_GOAL = 0.999


@dataclass
class Lever:
    """One timed configuration: its obs encoder, thread count and the context of its encoder call."""

    name: str
    encoder: SAM2ObsEncoder
    threads: int
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    setup_s: float = 0.0
    last: FeaturePyramid | None = None  # the trunk pass of the latest call
    pyramids: list[FeaturePyramid] = field(default_factory=list)
    outputs: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (actions, condition)
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    encode: list[float] = field(default_factory=list)
    first_call_s: float | None = None


def _capture(lever: Lever) -> Lever:
    """Keep each call's trunk-pass pyramid on the lever (for the per-level fidelity)."""
    inner = lever.encoder._encode_pyramid

    def encode(pixels: torch.Tensor) -> FeaturePyramid:
        lever.last = inner(pixels)
        return lever.last

    lever.encoder._encode_pyramid = encode
    return lever


class _PlainAutocast:
    """Stands in for the encoder's weight-cast holder: the trunk under plain autocast (casts on every call)."""

    def call(self, module: torch.nn.Module, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)


def _cat(parts: Sequence[FeaturePyramid]) -> FeaturePyramid:
    return FeaturePyramid(*(torch.cat(level) for level in zip(*parts)), s16_neck=torch.cat([p.s16_neck for p in parts]))


def _per_camera_threads(encoder: SAM2ObsEncoder, pool: ThreadPoolExecutor, cameras: int) -> None:
    """The trunk pass split by camera (the pixels are camera after camera), one camera per pool thread.

    Each thread encodes with its own copy of the SAM 2 encoder (the same weights): the bf16 weight
    casts swap a module's parameters during the call, so one module cannot serve two threads at once.
    """
    copies = [copy.deepcopy(encoder.encoder) for _ in range(cameras)]

    def encode(pixels: torch.Tensor) -> FeaturePyramid:
        if len(pixels) % cameras:
            return copies[0].encode(pixels)
        parts = pixels.chunk(cameras)
        return _cat([f.result() for f in [pool.submit(c.encode, p) for c, p in zip(copies, parts)]])

    encoder._encode_pyramid = encode


def _channels_last(encoder: SAM2ObsEncoder) -> None:
    encoder.encoder.to(memory_format=torch.channels_last)
    inner = encoder._encode_pyramid
    encoder._encode_pyramid = lambda pixels: inner(pixels.contiguous(memory_format=torch.channels_last))


def padded_tokens(encoder: SAM2ImageEncoder, size: int) -> int:
    """How many zero tokens the trunk's attention windows pad at ``size`` px (what ``skip_padding`` skips)."""
    blocks = [m for m in encoder.vision_encoder.backbone.modules() if hasattr(m, "window_size")]
    blocks = [b for b in blocks if hasattr(b, "layer_norm1")]
    padded = []

    def hook(block: torch.nn.Module, args: tuple) -> None:
        _, h, w, _ = args[0].shape
        win = block.window_size
        padded.append(0 if win <= 0 else (h + (-h) % win) * (w + (-w) % win) - h * w)

    handles = [b.layer_norm1.register_forward_pre_hook(lambda m, a, b=b: hook(b, a)) for b in blocks]
    try:
        with torch.no_grad():
            encoder.trunk(torch.zeros(1, 3, size, size))
    finally:
        for handle in handles:
            handle.remove()
    return sum(padded)


def build_levers(
    names: Sequence[str], make: Callable[..., SAM2ObsEncoder], threads: int, cameras: int, size: int
) -> tuple[dict[str, Lever], dict[str, str], ThreadPoolExecutor]:
    """The levers asked for (plus ``baseline`` and ``fp32``), each built on the baseline's weights.

    Args:
        names: Lever names (keys of ``LEVERS``).
        make: ``make(**options)`` builds a ``SAM2ObsEncoder`` (eval, on the device) with these options.
        threads: The baseline's intra-op threads.
        cameras: Number of cameras.
        size: Encoder input side.

    Returns:
        ``({name: Lever}, {skipped name: reason}, the camera threads' pool)``.
    """
    base = make(precision="bf16")
    levers: dict[str, Lever] = {}
    skipped: dict[str, str] = {}
    pool = ThreadPoolExecutor(cameras, thread_name_prefix="camera", initializer=torch.set_num_threads, initargs=(1,))

    def add(name: str, encoder: SAM2ObsEncoder, lever_threads: int = threads, **kw: Any) -> None:
        levers[name] = Lever(name, encoder, lever_threads, **kw)

    def like_base(**options: Any) -> SAM2ObsEncoder:
        enc = make(**options)
        enc.load_state_dict(base.state_dict())
        return enc

    add("baseline", base)
    add("fp32", like_base(precision="fp32"))
    for name in [n for n in names if n not in levers]:
        start = time.perf_counter()
        reason = _add_lever(name, base, like_base, add, pool, cameras, size)
        if reason:
            skipped[name] = reason
        else:
            levers[name].setup_s = round(time.perf_counter() - start, 2)
    for lever in levers.values():
        _capture(lever)
    return levers, skipped, pool


def _add_lever(
    name: str,
    base: SAM2ObsEncoder,
    like_base: Callable[..., SAM2ObsEncoder],
    add: Callable[..., None],
    pool: ThreadPoolExecutor,
    cameras: int,
    size: int,
) -> str | None:
    """Build lever ``name`` from the baseline encoder and ``add`` it; returns why it cannot run here, or ``None``."""
    if name == "compile":
        add(name, like_base(precision="bf16", compile=True))
        return None
    if name == "openvino":
        if "backend" not in inspect.signature(SAM2ImageEncoder).parameters:
            return "SAM2ImageEncoder has no backend option (backend='openvino' has not landed)"
        enc = copy.deepcopy(base)
        try:
            enc.encoder.backend = "openvino"  # settable on a built encoder, e.g. a loaded policy's
        except Exception as error:  # noqa: BLE001 - the row records why it cannot run
            return f"backend='openvino' failed: {type(error).__name__}: {error}"
        add(name, enc)
        return None
    enc = copy.deepcopy(base)  # the same weights; the weight casts are made again
    options: dict[str, Any] = {}
    if name == "no_weight_casts":
        enc.encoder.__dict__["_weight_casts"] = _PlainAutocast()
    elif name == "bf16_neck_heads":
        device_type = enc.encoder.no_memory_embedding.device.type
        options["context"] = lambda: torch.autocast(device_type, torch.bfloat16)
    elif name == "camera_per_thread":
        _per_camera_threads(enc, pool, cameras)
    elif name == "micro_batch_1":
        enc.encoder.micro_batch = 1
    elif name == "one_thread":
        options["lever_threads"] = 1
    elif name == "skip_padding_off":
        if not padded_tokens(enc.encoder, size):
            return f"Hiera's windows tile {size} px exactly: no padded tokens, skip_padding changes nothing"
        enc.encoder.skip_padding = False
    elif name == "channels_last":
        _channels_last(enc)
    else:
        raise ValueError(f"unknown lever {name!r}; levers are {list(LEVERS)}")
    add(name, enc, **options)
    return None


def _sample(denoiser: torch.nn.Module, scheduler: Any, cond: torch.Tensor, t: int, to: int) -> torch.Tensor:
    """DDIM from the step's seeded noise: the 8 actions from the To-th on, ``(1, 8, 2)``."""
    g = torch.Generator(device=cond.device).manual_seed(t)
    trajectory = torch.randn(1, 16, 2, generator=g, device=cond.device)
    for step in scheduler.timesteps:
        noise = denoiser(trajectory, step[None].to(cond.device), cond)
        trajectory = scheduler.step(noise, step, trajectory).prev_sample
    return trajectory[:, to - 1 : to - 1 + 8]


def _step(lever: Lever, obs: dict[str, torch.Tensor], denoiser: torch.nn.Module, scheduler: Any, t: int, to: int):
    """One timed control step of ``lever``: (wall ms, CPU ms, encoder ms, actions, condition)."""
    torch.set_num_threads(lever.threads)
    start, cpu_start = time.perf_counter(), time.process_time()
    with torch.no_grad():
        with lever.context():
            cond = global_cond(lever.encoder, obs)
        cond = cond.float()
        encode_ms = 1000 * (time.perf_counter() - start)
        actions = _sample(denoiser, scheduler, cond, t, to)
    return 1000 * (time.perf_counter() - start), 1000 * (time.process_time() - cpu_start), encode_ms, actions, cond


def time_levers(
    levers: dict[str, Lever],
    camera_hw: tuple[int, int],
    cameras: int,
    to: int,
    steps: int,
    denoiser: torch.nn.Module,
    scheduler: Any,
    device: torch.device,
) -> dict[str, str]:
    """Interleaved control steps (order rotated each step); the first 2 steps warm up (and compile).

    Returns:
        ``{lever: why}`` for the levers that raised (dropped from ``levers``; baseline and fp32 must run).
    """
    failed: dict[str, str] = {}
    h, w = camera_hw
    history: deque = deque(maxlen=to)
    for lever in levers.values():
        lever.encoder.forget_frames()
    names = list(levers)
    for t in range(steps + 2):
        history.append(
            [
                (torch.from_numpy(synthetic_scene(h, w, seed=1000 * c + t)).permute(2, 0, 1).float() / 255 * 2 - 1)
                for c in range(cameras)
            ]
        )
        while len(history) < to:
            history.appendleft(history[0])  # DP pads the first step with copies
        obs = {f"camera_{c}": torch.stack([f[c] for f in history])[None].to(device) for c in range(cameras)}
        obs["robot_eef_pose"] = torch.zeros(1, to, 2, device=device)
        for name in names[t % len(names) :] + names[: t % len(names)]:
            lever = levers[name]
            try:
                wall, cpu, enc_ms, actions, cond = _step(lever, obs, denoiser, scheduler, t, to)
            except Exception as error:
                if name in ("baseline", "fp32"):
                    raise
                failed[name] = f"failed at step {t}: {type(error).__name__}: {str(error).splitlines()[0][:300]}"
                continue
            if t == 0:
                lever.first_call_s = round(wall / 1000, 2)
            if t >= 2:
                lever.wall.append(wall)
                lever.cpu.append(cpu)
                lever.encode.append(enc_ms)
                lever.outputs.append((actions, cond))
                lever.pyramids.append(lever.last.map(lambda x: x.float()))
        names = [n for n in names if n not in failed]
    for name in failed:
        del levers[name]
    return failed


def _stats(xs: list[float]) -> dict[str, float]:
    return {q: round(float(np.percentile(xs, int(q[1:]))), 2) for q in ("p50", "p90", "p99")} | {
        "mean": round(float(np.mean(xs)), 2)
    }


def fidelity_vs(lever: Lever, reference: Lever) -> dict[str, Any]:
    """Per-level cosine / relative L2 of the new frames' maps and the actions' difference, vs ``reference``."""
    pairs = list(zip(lever.pyramids, reference.pyramids))
    if any(a.s4.shape != b.s4.shape for a, b in pairs):
        raise RuntimeError(f"lever {lever.name!r} encoded other frames than {reference.name!r}")
    levels = {
        lv: level_report(torch.cat([b[lv] for _, b in pairs]), torch.cat([a[lv] for a, _ in pairs])) for lv in LEVELS
    }
    a = torch.cat([x for x, _ in lever.outputs]).flatten(1)
    r = torch.cat([x for x, _ in reference.outputs]).flatten(1)
    c, rc = torch.cat([x for _, x in lever.outputs]), torch.cat([x for _, x in reference.outputs])
    return {
        "levels": levels,
        "cosine_goal_met": all(v["cosine_min"] >= COSINE_GOAL for v in levels.values()),
        "condition_cosine_min": round(float(F.cosine_similarity(c.double(), rc.double(), dim=1).min()), 7),
        "action_max_abs_diff": float((a - r).abs().max()),
        "action_rel_l2_diff_max": float(((a - r).norm(dim=1) / r.norm(dim=1)).max()),
        "action_abs_max": float(r.abs().max()),
    }


def lever_rows(levers: dict[str, Lever]) -> list[dict[str, Any]]:
    """One row per lever: timings, speed-up over the baseline, fidelity vs fp32, identity with the baseline."""
    base, ref = levers["baseline"], levers["fp32"]
    base_p50 = float(np.percentile(base.wall, 50))
    rows = []
    for name, lever in levers.items():
        p50 = float(np.percentile(lever.wall, 50))
        same = all(torch.equal(a, b) for (a, _), (b, _) in zip(lever.outputs, base.outputs))
        fidelity = fidelity_vs(lever, ref)
        row = {
            "lever": name,
            "what": LEVERS[name],
            "threads": lever.threads,
            "latency_ms": _stats(lever.wall),
            "cpu_ms": _stats(lever.cpu),
            "encoder_ms_p50": round(float(np.percentile(lever.encode, 50)), 2),
            "vs_baseline_p50_ms": round(p50 - base_p50, 2),
            "speedup_vs_baseline_p50": round(base_p50 / p50, 3),
            "actions_identical_to_baseline": same,
            "fidelity_vs_fp32": fidelity,
            "pays": name not in ("baseline", "fp32")
            and p50 <= (1 - PAYS_FRACTION) * base_p50
            and fidelity["cosine_goal_met"],
            "setup_s": lever.setup_s,
            "first_call_s": lever.first_call_s,
            "meets_10hz_p50": p50 <= 100.0,
            "per_step_ms": [round(x, 2) for x in lever.wall],
        }
        rows.append(row)
    return rows


def run_levers(
    names: Sequence[str],
    make: Callable[..., SAM2ObsEncoder],
    *,
    size: int,
    threads: int,
    camera_hw: tuple[int, int],
    cameras: int,
    to: int,
    steps: int,
    hidden: int,
    scheduler: Any,
    device: torch.device,
) -> dict[str, Any]:
    """Build, time and compare the levers at one image size; returns ``{"rows", "skipped", "target"}``."""
    torch.set_num_threads(threads)
    levers, skipped, pool = build_levers(names, make, threads, cameras, size)
    try:
        torch.manual_seed(0)
        cond_dim = levers["baseline"].encoder.output_shape()[0] * to
        denoiser = TinyDenoiser(16, 2, cond_dim, hidden=hidden).to(device).eval()
        skipped |= time_levers(levers, camera_hw, cameras, to, steps, denoiser, scheduler, device)
    finally:
        pool.shutdown()
        torch.set_num_threads(threads)
    rows = [{"image_size": size} | r for r in lever_rows(levers)]
    base = rows[0]["latency_ms"]
    return {
        "rows": rows,
        "skipped": skipped,
        "target": {
            "what": "p50 <= 100 ms and p99 <= 130 ms per step with the baseline (issue 24)",
            "met": base["p50"] <= 100.0 and base["p99"] <= 130.0,
        },
    }


def table(report: dict[str, Any]) -> str:
    """The lever table as Markdown (what README's control-loop section quotes)."""
    lines = [
        "| lever | p50 / p99 ms | CPU ms p50 | encoder ms p50 | vs baseline | cosine vs fp32 s4 / s8 / s16 "
        "| actions vs fp32 (max abs) | pays |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lat, fid = r["latency_ms"], r["fidelity_vs_fp32"]
        cos = " / ".join(f"{fid['levels'][lv]['cosine_min']:.6f}" for lv in LEVELS)
        lines.append(
            f"| {r['lever']} | {lat['p50']:.1f} / {lat['p99']:.1f} | {r['cpu_ms']['p50']:.1f} | "
            f"{r['encoder_ms_p50']:.1f} | {r['speedup_vs_baseline_p50']:.2f}x | {cos} | "
            f"{fid['action_max_abs_diff']:.1e} | {'yes' if r['pays'] else 'no'} |"
        )
    lines += [f"| {name} | skipped: {why} | | | | | | |" for name, why in report["skipped"].items()]
    return "\n".join(lines)


def plot_levers(report: dict[str, Any], path: Any) -> str | None:
    """``control_loop_levers.png``: p50 (bar) and p99 (grey) per lever, CPU time marked, the 100 ms budget."""
    from common import pyplot

    plt = pyplot()
    if plt is None:
        return None
    rows = report["rows"]
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(rows) + 1.8))
    ys = list(range(len(rows)))
    ax.barh(ys, [r["latency_ms"]["p99"] for r in rows], color="lightgrey", label="p99")
    fixed = {"baseline": "tab:blue", "fp32": "tab:grey"}
    colors = [fixed.get(r["lever"], "tab:green" if r["pays"] else "tab:orange") for r in rows]
    ax.barh(ys, [r["latency_ms"]["p50"] for r in rows], color=colors, label="p50 (green: pays, orange: does not)")
    ax.scatter([r["cpu_ms"]["p50"] for r in rows], ys, marker="|", s=300, color="black", label="CPU time p50", zorder=3)
    for y, r in zip(ys, rows):
        cos = min(v["cosine_min"] for v in r["fidelity_vs_fp32"]["levels"].values())
        ax.text(
            r["latency_ms"]["p99"], y, f" {r['latency_ms']['p50']:.0f} ms, {r['speedup_vs_baseline_p50']:.2f}x, "
            f"cos >= {cos:.5f}", va="center", fontsize=7,
        )  # fmt: skip
    ax.axvline(100, color="grey", ls="--", lw=1, label="10 Hz budget")
    ax.set_yticks(ys, [r["lever"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.5 * max(r["latency_ms"]["p99"] for r in rows))
    m, c = report["machine"], report["config"]
    ax.set(xlabel=f"ms per control step ({c['cameras']} cameras, To={c['n_obs_steps']}, {c['ddim_steps']} DDIM steps)")
    ax.set_title(
        f"Levers at {rows[0]['image_size']} px vs the baseline, interleaved; {m['cpu']} (bf16: {m['bf16'][1]}), "
        f"load at start {m.get('load_average_at_start')}", fontsize=8,
    )  # fmt: skip
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
