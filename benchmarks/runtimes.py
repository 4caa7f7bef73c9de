"""Runtimes side by side: our encoder (eager fp32, bf16, torch.compile) vs ONNX Runtime and OpenVINO f32 / bf16.

One run, the same weights and the same SAM 2 pixels for every method, interleaved rounds (A B C,
B C A, ...; medians reported), for each image size x batch x thread count:

- ``ours_fp32``: ``SAM2ImageEncoder.encode`` (the package's defaults: fused attention, micro-batches);
- ``ours_bf16``: the same with ``precision="bf16"`` (needs native bf16);
- ``ours_compiled``: ``torch.compile(encode, dynamic=False)`` (compile time reported apart);
- ``ours_openvino_fp32`` / ``ours_openvino_bf16``: ``SAM2ImageEncoder(backend="openvino")`` with that
  precision: our encoder's API with its trunk in OpenVINO, a static model per batch size (compile
  time reported apart as ``compile_s``; bf16: native only);
- ``onnxruntime``: the ONNX file of ``sam2_encoder.export`` (torch.onnx dynamo exporter) in ONNX Runtime;
- ``openvino_f32`` / ``openvino_bf16``: the same file in OpenVINO with that precision hint (bf16: native only).

Every row reports ms/image and the max abs difference against ``ours_fp32``; bf16 rows also the
fidelity per level (cosine and relative L2, as ``benchmarks/fidelity.py``). Then, per point, the
fastest path our package offers against the fastest runtime. On CUDA (``--device cuda``) the rows
are eager, compiled, and ONNX Runtime's CUDA / TensorRT providers where installed. A row whose
hardware or package is missing is skipped with the reason.

Weights: the Meta-scaled seeded weights of the golden fixture (values at a trained model's scale),
or ``--checkpoint``.

    python benchmarks/runtimes.py --record          # the full CPU run: 224/256 px, batch 1/8, 1/2 threads
    python benchmarks/runtimes.py --sizes 64 --batches 1 2 --threads 1 --rounds 2 --warmup 1   # smoke run

Writes ``runtimes.json`` and ``runtimes.png`` into ``benchmarks/results/local/`` (git-ignored), or
``benchmarks/results/`` with ``--record`` (run on a quiet machine; the JSON has the load averages).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import add_output_args, interleave, loadavg, machine_info, output_path, pyplot, summarize, write_json

OURS = ("ours_fp32", "ours_bf16", "ours_compiled", "ours_openvino_fp32", "ours_openvino_bf16")
RUNTIME_METHODS = ("onnxruntime", "openvino_f32", "openvino_bf16", "ort_cuda", "ort_tensorrt")
_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def versions() -> dict[str, str | None]:
    """Versions of the runtimes (``None``: not installed)."""
    import importlib

    out: dict[str, str | None] = {}
    for name in ("onnx", "onnxscript", "onnxruntime", "openvino"):
        try:
            out[name] = importlib.import_module(name).__version__
        except ImportError:
            out[name] = None
    return out


def build_encoders(
    args: argparse.Namespace, size: int, device: torch.device, bf16: bool
) -> tuple[dict[str, Any], dict[str, str]]:
    """fp32 (and bf16) encoders with the same weights, eager and ``backend="openvino"`` (CPU runs).

    Returns:
        ``{"fp32" | "bf16" | "openvino_fp32" | "openvino_bf16": encoder}`` and ``{row: why skipped}``.
    """
    from fidelity import meta_scaled_state

    from sam2_encoder import SAM2ImageEncoder

    state = None if args.checkpoint else meta_scaled_state(args.variant)
    out, skipped = {}, {}
    kinds = [(p, "torch") for p in ("fp32", "bf16") if p == "fp32" or bf16]
    if device.type == "cpu":
        kinds += [(p, "openvino") for p in ("fp32", "bf16") if p == "fp32" or bf16]
    else:
        skipped["ours_openvino_fp32"] = skipped["ours_openvino_bf16"] = "a CUDA run (backend='openvino' is CPU only)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for precision, backend in kinds:
            name = precision if backend == "torch" else f"openvino_{precision}"
            try:
                enc = SAM2ImageEncoder(
                    args.variant, checkpoint=args.checkpoint, image_size=size, precision=precision, backend=backend
                )
            except ImportError as e:
                skipped[f"ours_{name}"] = str(e)
                continue
            if state is not None:
                enc.load_sam2_weights(state, source="Meta-scaled seeded weights")
            out[name] = enc.to(device)
    return out, skipped


def compile_backends(encoders: dict[str, Any], batch: int) -> dict[str, float]:
    """Compile the OpenVINO backends' models for this batch size (torch's thread count) before timing: seconds each."""
    seconds = {}
    for name in ("openvino_fp32", "openvino_bf16"):
        if name in encoders:
            enc = encoders[name]
            t0 = time.perf_counter()
            with torch.inference_mode():
                enc.encode(torch.zeros(batch, 3, *enc.image_size))
            seconds[f"ours_{name}"] = round(time.perf_counter() - t0, 2)
    return seconds


def fidelity(ref: dict[str, torch.Tensor], got: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per level: min cosine and max relative L2 over the batch, and max abs difference."""
    out = {}
    for level, a in ref.items():
        a2 = a.detach().double().cpu().flatten(1)
        b2 = torch.as_tensor(np.asarray(got[level])).double().flatten(1)
        cos = torch.nn.functional.cosine_similarity(a2, b2, dim=1)
        rel = (b2 - a2).norm(dim=1) / a2.norm(dim=1)
        out[level] = {
            "cosine_min": round(float(cos.min()), 6),
            "rel_l2_error_max": round(float(rel.max()), 6),
            "max_abs_diff": float((b2 - a2).abs().max()),
            "fp32_abs_max": round(float(a2.abs().max()), 4),
        }
    return out


def as_arrays(out: Any) -> dict[str, np.ndarray]:
    """A pyramid or a runtime's output dict as ``{level: array}``."""
    if isinstance(out, dict):
        return {k: np.asarray(v) for k, v in out.items()}
    return {k: v.detach().float().cpu().numpy() for k, v in out.as_dict().items()}


def inference(fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        with torch.inference_mode():
            return fn()

    return run


def compile_encode(encoder: Any, pixels: torch.Tensor) -> tuple[Callable[[torch.Tensor], Any] | None, dict[str, Any]]:
    """``torch.compile(encoder.encode, dynamic=False)`` for this shape; the first call's time apart."""
    try:
        from torch import _dynamo

        _dynamo.reset()
        compiled = torch.compile(encoder.encode, dynamic=False)
        t0 = time.perf_counter()
        with torch.no_grad():  # dynamo does not trace into inference_mode on every torch version
            compiled(pixels)
        info: dict[str, Any] = {"first_call_s": round(time.perf_counter() - t0, 2)}
    except Exception as e:  # noqa: BLE001 - a missing C++ compiler etc. is a result, not a crash
        return None, {
            "skipped": f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        }

    def run(x: torch.Tensor) -> Any:
        with torch.no_grad():
            return compiled(x)

    return run, info


def runtime_methods(
    onnx_path: Path, args: argparse.Namespace, threads: int, device: torch.device, bf16: tuple[bool, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The runtimes loaded for this thread count: ``{name: RuntimeModel}``, ``{name: why skipped}``."""
    from sam2_encoder.export import load_runtime

    models: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    wanted = {"onnxruntime": ("onnxruntime", "f32"), "openvino_f32": ("openvino", "f32")}
    if bf16[0]:
        wanted["openvino_bf16"] = ("openvino", "bf16")
    else:
        skipped["openvino_bf16"] = f"no native bf16: {bf16[1]}"
    if device.type == "cpu":
        skipped["ort_cuda"] = skipped["ort_tensorrt"] = f"a CPU run; {cuda_status()}"
    else:
        skipped.update({k: "a CUDA run (OpenVINO rows are CPU rows)" for k in wanted})
        wanted = {}
        models.update(cuda_providers(onnx_path, skipped))
    for name, (runtime, precision) in wanted.items():
        try:
            models[name] = load_runtime(onnx_path, runtime, precision=precision, threads=threads)
        except ImportError as e:
            skipped[name] = str(e)
    return models, skipped


def cuda_status() -> str:
    """Why there are no CUDA rows in a CPU run: no GPU here, or the command to get them."""
    if not torch.cuda.is_available():
        return "no GPU: torch.cuda.is_available() is False on this machine (CUDA rows need --device cuda on a GPU)"
    return f"--device cuda for eager / compiled on {torch.cuda.get_device_name()} and ONNX Runtime's CUDA / TensorRT"


def cuda_providers(onnx_path: Path, skipped: dict[str, str]) -> dict[str, Any]:
    """ONNX Runtime sessions on the CUDA and TensorRT providers, where this onnxruntime has them (untested here)."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        skipped["ort_cuda"] = skipped["ort_tensorrt"] = f"onnxruntime is not installed: {e}"
        return {}
    have = ort.get_available_providers()
    out = {}
    for name, provider in (("ort_cuda", "CUDAExecutionProvider"), ("ort_tensorrt", "TensorrtExecutionProvider")):
        if provider not in have:
            skipped[name] = f"{provider} is not in this onnxruntime ({have}); install onnxruntime-gpu"
            continue
        session = ort.InferenceSession(str(onnx_path), providers=[provider, "CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        out[name] = lambda x, s=session, n=names: dict(zip(n, s.run(None, {"pixel_values": x})))
    return out


def measure_point(
    args: argparse.Namespace,
    encoders: dict[str, Any],
    runtimes: dict[str, Any],
    compiled: dict[str, Any],
    batch: int,
    threads: int,
) -> dict[str, Any]:
    """One size x batch x threads point: every available method interleaved, diffs against ours_fp32."""
    enc = encoders["fp32"]
    h, w = enc.image_size
    g = torch.Generator().manual_seed(args.seed + batch)
    pixels = (torch.rand(batch, 3, h, w, generator=g) - 0.45) / 0.226  # the range of normalised frames
    device_pixels = pixels.to(enc.no_memory_embedding.device)
    array = pixels.numpy()
    methods: dict[str, Callable[[], Any]] = {"ours_fp32": inference(lambda: enc.encode(device_pixels))}
    for name in ("bf16", "openvino_fp32", "openvino_bf16"):
        if name in encoders:
            methods[f"ours_{name}"] = inference(lambda e=encoders[name]: e.encode(device_pixels))
    if compiled.get("fn") is not None:
        methods["ours_compiled"] = lambda: compiled["fn"](device_pixels)
    for name, model in runtimes.items():
        methods[name] = lambda m=model: m(array)
    samples = interleave(methods, args.rounds, args.warmup, progress=None)
    ref = samples["ours_fp32"].first_output.as_dict()
    row: dict[str, Any] = {"batch": batch, "threads": threads, "methods": {}}
    for name, s in samples.items():
        entry = summarize(s, batch)
        if not args.keep_times:
            entry.pop("times_s", None)
        got = as_arrays(s.first_output)
        entry["max_abs_diff_vs_ours_fp32"] = max(float(np.abs(got[k] - ref[k].cpu().numpy()).max()) for k in ref)
        if "bf16" in name:
            entry["fidelity_vs_fp32"] = fidelity(ref, got)
        row["methods"][name] = entry
    row["methods"]["ours_compiled"] = row["methods"].get("ours_compiled", {}) | {
        k: v for k, v in compiled.items() if k != "fn"
    }
    row["fastest"] = fastest(row["methods"])
    return row


def fastest(methods: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The fastest of ours and of the runtimes at one point, and their ratio (> 1: ours is faster)."""

    def best(names: tuple[str, ...]) -> tuple[str | None, float | None]:
        timed = [(methods[n]["ms_per_image"], n) for n in names if "ms_per_image" in methods.get(n, {})]
        return (min(timed)[1], min(timed)[0]) if timed else (None, None)

    ours, ours_ms = best(OURS)
    runtime, runtime_ms = best(RUNTIME_METHODS)
    speed = None if not ours_ms or not runtime_ms else round(runtime_ms / ours_ms, 3)
    return {
        "ours": ours,
        "ours_ms_per_image": ours_ms,
        "runtime": runtime,
        "runtime_ms_per_image": runtime_ms,
        "ours_speed_vs_runtime": speed,
        "goal_met": None if speed is None else speed >= 1.0,
    }


def run_size(args: argparse.Namespace, size: int, device: torch.device, bf16: tuple[bool, str]) -> dict[str, Any]:
    """Export once at this size, then every batch x threads point."""
    from sam2_encoder.export import ImageEncoderGraph, export_graph

    encoders, ours_skipped = build_encoders(args, size, device, bf16[0])
    out: dict[str, Any] = {"size": size, "points": []}
    with tempfile.TemporaryDirectory(prefix="runtimes_") as tmp:
        onnx_path = Path(tmp) / f"{args.variant}_{size}.onnx"
        t0 = time.perf_counter()
        try:
            cpu_encoder = encoders["fp32"].cpu()
            export = export_graph(ImageEncoderGraph(cpu_encoder), onnx_path, batches=(1,))
            encoders["fp32"].to(device)
            out["export"] = {"seconds": round(time.perf_counter() - t0, 1), "parity": [r.line() for r in export.parity]}
        except ImportError as e:
            out["export"] = {"skipped": str(e)}
            onnx_path = None
        log(f"{size} px: exported in {time.perf_counter() - t0:.1f} s")
        for batch in args.batches:
            compiled: dict[str, Any] = {"skipped": "--no-compile (see the note)"}
            if not args.no_compile:
                torch.set_num_threads(max(args.threads))
                pixels = torch.zeros(batch, 3, size, size, device=device)
                fn, compiled = compile_encode(encoders["fp32"], pixels)
                compiled["fn"] = fn
            for threads in args.threads:
                torch.set_num_threads(threads)
                runtimes, skipped = runtime_methods(onnx_path, args, threads, device, bf16) if onnx_path else ({}, {})
                compile_s = compile_backends(encoders, batch)
                point = measure_point(args, encoders, runtimes, compiled, batch, threads)
                for name, seconds in compile_s.items():
                    point["methods"][name]["compile_s"] = seconds  # export + convert (first at a size) + compile
                point["load_average_after"] = loadavg()  # a shared machine: how loaded it was while measuring
                no_bf16 = {k: f"no native bf16: {bf16[1]}" for k in ("ours_bf16", "ours_openvino_bf16")}
                point["skipped"] = skipped | ours_skipped | ({} if "bf16" in encoders else no_bf16)
                out["points"].append(point)
                f = point["fastest"]
                log(
                    f"{size} px batch {batch} threads {threads}: "
                    + ", ".join(
                        f"{k} {v['ms_per_image']:.1f}" for k, v in point["methods"].items() if "ms_per_image" in v
                    )
                    + f" ms/img; fastest ours {f['ours']} vs {f['runtime']}: x{f['ours_speed_vs_runtime']}"
                )
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    """Grouped bars: ms/image per method at every size x batch x threads point."""
    plt = pyplot()
    if plt is None:
        return
    points = [(r["size"], p) for r in report["results"] for p in r["points"]]
    names = [m for m in (*OURS, *RUNTIME_METHODS) if any("ms_per_image" in p["methods"].get(m, {}) for _, p in points)]
    colors = dict(zip((*OURS, *RUNTIME_METHODS), plt.get_cmap("tab10").colors))
    fig, ax = plt.subplots(figsize=(max(9, 1.3 * len(points) + 2), 4.8))
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(points))]
        ys = [p["methods"].get(name, {}).get("ms_per_image", np.nan) for _, p in points]
        ax.bar(xs, ys, width, color=colors[name], label=name)
    labels = [f"{size}px\nb{p['batch']} t{p['threads']}" for size, p in points]
    ax.set_xticks(range(len(points)), labels, fontsize=8)
    ax.set(ylabel="ms / image (median)", title="SAM 2 image encoder: ours vs exported runtimes (lower is faster)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    m = report["machine"]
    v = report["machine"]["runtimes"]
    fig.suptitle(
        f"{report['variant']}, {report['weights']}\n{m['cpu']}, torch {m['torch']}, "
        f"onnxruntime {v['onnxruntime']}, openvino {str(v['openvino']).split('-')[0]}, bf16: {report['bf16']['why']}",
        fontsize=7,
        y=0.995,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="sam2.1_hiera_tiny")
    p.add_argument("--checkpoint", default=None, help="real weights (default: Meta-scaled seeded weights)")
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 256])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=10, help="timed rounds (medians reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-compile", action="store_true", help="no torch.compile rows (compiling takes minutes)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda for eager/compiled vs ONNX Runtime CUDA/TensorRT")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-times", action="store_true", help="keep every round's time in the JSON")
    p.add_argument("--note", default=None, help="free text kept in the JSON (why rows are missing)")
    add_output_args(p, "runtimes")
    p.add_argument("--plot", default=None, help="plot path (default: beside the JSON; '' for none)")
    args = p.parse_args()

    from sam2_encoder.image_encoder import bf16_support

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible to torch")
    out = output_path(args, "runtimes")
    torch.set_num_threads(max(args.threads))
    info = machine_info(device) | {"runtimes": versions()}
    bf16 = bf16_support(device)
    results = [run_size(args, size, device, bf16) for size in args.sizes]
    report = {
        "benchmark": "runtimes",
        "command": "python benchmarks/runtimes.py " + " ".join(sys.argv[1:]),
        "note": args.note,
        "variant": args.variant,
        "weights": args.checkpoint or "Meta-scaled seeded weights (tests/fixtures/meta_weights.py, seed 0)",
        "input": "SAM 2 pixels (B, 3, S, S) float32, the same tensor for every method",
        "device": str(device),
        "machine": info,
        "bf16": {"native": bf16[0], "why": bf16[1]},
        "cuda": {"run": device.type == "cuda"} | ({} if device.type == "cuda" else {"skipped": cuda_status()}),
        "results": results,
        "goal": {
            "rule": "the fastest path of ours (eager fp32 / bf16, compiled, backend='openvino' fp32 / bf16) at least "
            "as fast as the fastest runtime",
            "met_at": sum(bool(pt["fastest"]["goal_met"]) for r in results for pt in r["points"]),
            "points": sum(len(r["points"]) for r in results),
        },
    }
    report["machine"]["load_average_at_end"] = loadavg()
    report["seconds"] = round(time.perf_counter() - _T0, 1)
    write_json(report, out)
    if args.plot != "":
        plot(report, Path(args.plot or out.with_suffix(".png")))
    print(json.dumps(report["goal"] | {"json": str(out)}, indent=1))


if __name__ == "__main__":
    main()
