"""Encoder speed: ours vs transformers' stock pipeline, bare get_image_features, a per-image loop, Meta's code.

Every configuration (variant x image size x batch) runs these methods side by side, interleaved in
rounds (A B C, B C A, ...; medians reported), on the same seeded weights:

- ``ours_e2e``: ``SAM2ImageEncoder(frames)`` from raw uint8 ``(B, H, W, 3)`` camera frames
  (transforms + ``encode``);
- ``hf_stock``: transformers' stock pipeline from the same frames: ``Sam2Processor`` +
  ``Sam2Model.get_image_features`` + ``no_memory_embedding``, maps reshaped to ``(B, C, h, w)``;
- ``hf_per_image``: the same, one frame at a time (how forks in the wild call it);
- ``ours_encode`` vs ``hf_bare``: ``encode()`` vs ``get_image_features`` (+ no-memory embedding) on
  the same already-normalised tensors;
- ``meta``: Meta's reference (``sam2==1.1.0``: ``forward_image`` + ``_prepare_backbone_features`` +
  ``no_mem_embed``) on the same tensors, in a helper process of an interpreter that has it
  (``--meta-python``), with Meta's own seeded weights loaded into a second copy of ours for the
  comparison.

Then optimisations, each on/off against the same baseline (positional encodings, fused attention,
channels_last, ``inference_mode`` vs ``no_grad``, one batched pass vs a per-image loop, SDPA
backend; on CUDA also bf16 autocast and pinned-memory copies), ``torch.compile`` of ``encode``
(static shapes, compile time apart), and the efficiency against the machine: encoder FLOPs
(``torch.utils.flop_counter``) per second over a large matmul's FLOP/s at the same dtype and thread
count.

transformers' ``Sam2ImageProcessor`` imports torchvision. PyPI's torchvision wheel (a CUDA build)
does not load its compiled ops next to CPU torch; the pure-python transforms the processor uses
import once two operator schemas are declared, which this script does (nothing installed is
edited). ``--torchvision-path`` adds a folder that has torchvision (e.g. another venv's
site-packages) at the END of ``sys.path``. Without torchvision the stock methods are skipped and
the JSON says why.

    python benchmarks/encoder.py                             # the default full CPU run (~12 min, 1 thread)
    python benchmarks/encoder.py --cpu-bf16 --meta-python ../venv_meta/bin/python \
        --torchvision-path ../venv_meta/lib/python3.11/site-packages  # + CPU bf16 and Meta's code
    python benchmarks/encoder.py --sizes 256 --batches 8 --no-compile --no-opts   # the goal config only
    python benchmarks/encoder.py --device cuda --threads 8   # GPU: adds bf16, pinned memory, SDPA backends

Prints one JSON document, writes ``encoder.json`` and draws ``encoder_throughput.png`` (images/s
vs batch) and ``encoder_latency.png`` (latency vs size) into ``benchmarks/results/local/``
(git-ignored), or into ``benchmarks/results/`` with ``--record`` (the committed results: run on a
quiet machine; the JSON records the load averages). Meta's reference lives in
``meta_reference.py``, transformers' stock pipeline in ``hf_reference.py``, the plots in
``plotting.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import (
    External,
    add_output_args,
    emulated_bf16,
    flops_per_image,
    interleave,
    loadavg,
    machine_info,
    matmul_throughput,
    output_path,
    summarize,
    sync_fn,
    write_json,
)
from hf_reference import hf_features, make_processor, stock_pixels
from meta_reference import MetaReference, import_torchvision, start_meta
from plotting import plot_encoder, plot_encoder_goal

STRIDES = (4, 8, 16)
METHODS: dict[str, str] = {
    "ours_e2e": "ours: SAM2ImageEncoder(frames), transforms + encode from raw uint8 (B, H, W, 3) frames",
    "hf_stock": "transformers: Sam2Processor + Sam2Model.get_image_features + no_memory_embedding, from the "
    "same raw frames (batched)",
    "hf_per_image": "transformers, one frame at a time: Sam2Processor + get_image_features per frame, then "
    "concatenated (how forks call it)",
    "ours_encode": "ours: SAM2ImageEncoder.encode on already-normalised (B, 3, S, S) tensors",
    "hf_bare": "transformers: Sam2Model.get_image_features + no_memory_embedding on the same normalised tensors",
    "meta": "Meta sam2==1.1.0: forward_image + _prepare_backbone_features + no_mem_embed on the same "
    "normalised tensors, timed in a helper process (Meta's own seeded init, loaded into a second copy of ours "
    "for the exactness check)",
}
GOAL = {"size": 256, "batch": 8, "e2e_vs_stock": 1.5, "encode_vs_bare": 1.15}
_T0 = time.perf_counter()


def log(msg: str) -> None:
    """A progress line on stderr with the elapsed time."""
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def max_abs_diff(a: Iterable[torch.Tensor], b: Iterable[torch.Tensor]) -> float:
    """Largest absolute difference over matching maps."""
    return max(float((x.float() - y.float().to(x.device)).abs().max()) for x, y in zip(a, b, strict=True))


def make_frames(n: int, height: int, width: int, seed: int) -> np.ndarray:
    """``n`` distinct deterministic uint8 RGB camera frames ``(n, H, W, 3)``."""
    from sam2_encoder.scene import synthetic_scene

    return np.stack([synthetic_scene(height, width, seed=seed + i) for i in range(n)])


def quiet_encoder(variant: str, size: int, seed: int, **kwargs: Any) -> Any:
    """``SAM2ImageEncoder`` with seeded random weights, without the no-checkpoint warning."""
    from sam2_encoder import SAM2ImageEncoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SAM2ImageEncoder(variant, image_size=size, seed=seed, **kwargs)


def build_pair(variant: str, size: int, device: torch.device, seed: int) -> tuple[Any, Any]:
    """A seeded transformers ``Sam2Model`` and ours with the same weights (``load_sam2_weights``)."""
    from transformers import Sam2Model

    from sam2_encoder import get_variant
    from sam2_encoder.image_encoder import build_seeded

    config = get_variant(variant).image_model_config(size)
    hf = build_seeded(lambda: Sam2Model(config), seed).eval().to(device)
    ours = quiet_encoder(variant, size, seed + 1)
    ours.load_sam2_weights(hf.state_dict(), source="transformers Sam2Model")
    return hf, ours.to(device)


def in_mode(fn: Callable[[], Any], mode: str = "inference") -> Callable[[], Any]:
    """``fn`` run under ``torch.inference_mode`` (``"inference"``), ``torch.no_grad`` or grad enabled."""

    def run() -> Any:
        if mode == "inference":
            with torch.inference_mode():
                return fn()
        with torch.inference_mode(False), torch.set_grad_enabled(mode == "grad"):
            return fn()

    return run


def toggled(obj: Any, fn: Callable[[], Any], **attrs: Any) -> Callable[[], Any]:
    """``fn`` run with attributes of ``obj`` temporarily set (restored afterwards)."""

    def run() -> Any:
        old = {k: getattr(obj, k) for k in attrs}
        for k, v in attrs.items():
            setattr(obj, k, v)
        try:
            return fn()
        finally:
            for k, v in old.items():
                setattr(obj, k, v)

    return run


def within(fn: Callable[[], Any], make_context: Callable[[], contextlib.AbstractContextManager]) -> Callable[[], Any]:
    """``fn`` run inside a fresh context from ``make_context``."""

    def run() -> Any:
        with make_context():
            return fn()

    return run


def ratio(slow: float | None, fast: float | None) -> float | None:
    return None if not slow or not fast else round(slow / fast, 3)


def verdict(rel: float | None, noise: float, *spreads: Sequence[float]) -> str:
    """``helps``/``hurts``/``neutral`` for a speed ratio (> 1 is faster).

    The neutral band is ``noise`` or, if larger, the relative interquartile range of any of the
    timing samples in ``spreads`` (run-to-run noise measured in this very run).
    """
    if rel is None:
        return "n/a"
    band = max([noise] + [rel_iqr(t) for t in spreads])
    if rel > 1 + band:
        return "helps"
    if rel < 1 - band:
        return "hurts"
    return f"neutral (within +-{band:.0%} noise)"


def rel_iqr(times: Sequence[float]) -> float:
    """Interquartile range over median of a timing sample (0 for fewer than 3 values)."""
    if len(times) < 3:
        return 0.0
    q1, med, q3 = np.percentile(np.asarray(times, dtype=float), [25, 50, 75])
    return float((q3 - q1) / med)


# ------------------------------------------------------------------------------------------------
# the grid: ours vs transformers vs Meta
# ------------------------------------------------------------------------------------------------


def grid_methods(
    hf: Any, ours: Any, processor: Any, frames: np.ndarray, pv: torch.Tensor, device: torch.device
) -> dict[str, Callable[[], Any]]:
    """The compared pipelines on one batch (raw ``frames`` and normalised ``pv``), as zero-argument calls."""
    methods: dict[str, Callable[[], Any]] = {
        "ours_e2e": lambda: ours(frames),
        "ours_encode": lambda: ours.encode(pv),
        "hf_bare": lambda: hf_features(hf, pv),
    }
    if processor is not None:
        methods["hf_stock"] = lambda: hf_features(hf, stock_pixels(processor, frames, device))

        def per_image() -> tuple[torch.Tensor, ...]:
            outs = [hf_features(hf, stock_pixels(processor, frame, device)) for frame in frames]
            return tuple(torch.cat(level) for level in zip(*outs))

        methods["hf_per_image"] = per_image
    return methods


def run_grid(
    args: argparse.Namespace,
    device: torch.device,
    frames_pool: np.ndarray,
    processor_ok: bool,
    meta: MetaReference | None,
    peak_gflops: float,
) -> tuple[list[dict], list[dict], dict[str, dict[int, int]]]:
    """Time every method at every variant x size x batch; check outputs against each other."""
    from sam2_encoder import convert_meta_state_dict

    sync = sync_fn(device)
    results: list[dict] = []
    skipped: list[dict] = []
    flops: dict[str, dict[int, int]] = {}
    wanted = set(args.methods)
    limit = args.max_batch_pixels
    if limit is None:
        limit = 2_200_000 if device.type == "cpu" else 0
    for variant in args.variants:
        meta_state = None
        if meta is not None and "meta" in wanted:
            meta_state = convert_meta_state_dict(meta.init(variant, args.seed + 2))
        flops[variant] = {}
        for size in args.sizes:
            todo = [b for b in args.batches if not (limit and b * size * size > limit)]
            for b in args.batches:
                if b not in todo:
                    skipped.append(
                        {
                            "variant": variant,
                            "size": size,
                            "batch": b,
                            "reason": f"{b}x{size}x{size} = {b * size * size} pixels per batch > --max-batch-pixels "
                            f"{limit} on {device.type} (one call would take too long for the default run)",
                        }
                    )
            if not todo:
                continue
            hf, ours = build_pair(variant, size, device, args.seed)
            flops[variant][size] = flops_per_image(ours)
            processor = make_processor(size) if processor_ok else None
            ours_meta = None
            if meta_state is not None and size in args.meta_sizes:
                ours_meta = quiet_encoder(variant, size, args.seed).to(device)
                ours_meta.load_sam2_weights(meta_state, source="Meta sam2 state dict")
            for b in todo:
                log(f"{variant} {size}x{size} batch {b} (load {loadavg()})")
                frames = frames_pool[:b]
                with torch.inference_mode():
                    pv = ours.transforms(frames).contiguous()
                methods = grid_methods(hf, ours, processor, frames, pv, device)
                use_meta = ours_meta is not None and "meta" in wanted and b <= args.meta_max_batch
                if use_meta:
                    meta.set_input("pv", pv)  # type: ignore[union-attr]
                    methods["meta"] = lambda: External(*meta.time("pv"))  # type: ignore[union-attr]
                methods = {k: in_mode(v) if k != "meta" else v for k, v in methods.items() if k in wanted}
                rounds = args.rounds
                if (size, b) == (GOAL["size"], GOAL["batch"]):
                    rounds = max(rounds, args.goal_rounds)
                try:
                    samples = interleave(methods, rounds, args.warmup, sync=sync)
                except torch.OutOfMemoryError as err:
                    skipped.append({"variant": variant, "size": size, "batch": b, "reason": f"out of memory: {err}"})
                    torch.cuda.empty_cache()
                    continue
                row: dict[str, Any] = {
                    "variant": variant,
                    "size": size,
                    "batch": b,
                    "frame_hw": list(frames.shape[1:3]),
                    "gflops_per_image": round(flops[variant][size] / 1e9, 3),
                    "load_average": loadavg(),
                    "methods": {k: summarize(s, b) for k, s in samples.items()},
                }
                med = {k: v["median_s"] for k, v in row["methods"].items()}
                row["speedup"] = {
                    "ours_e2e_vs_hf_stock": ratio(med.get("hf_stock"), med.get("ours_e2e")),
                    "ours_encode_vs_hf_bare": ratio(med.get("hf_bare"), med.get("ours_encode")),
                    "ours_e2e_vs_hf_per_image": ratio(med.get("hf_per_image"), med.get("ours_e2e")),
                    "ours_encode_vs_meta": ratio(med.get("meta"), med.get("ours_encode")),
                }
                first = {k: s.first_output for k, s in samples.items()}
                diffs: dict[str, Any] = {}
                with torch.inference_mode():
                    if "ours_encode" in first and "hf_bare" in first:
                        diffs["ours_encode_vs_hf_bare"] = max_abs_diff(first["ours_encode"], first["hf_bare"])
                    if "ours_e2e" in first and "ours_encode" in first:
                        diffs["ours_e2e_vs_ours_encode"] = max_abs_diff(first["ours_e2e"], first["ours_encode"])
                    if processor is not None:
                        stock_pv = stock_pixels(processor, frames, device)
                        diffs["pixels_ours_vs_hf_processor"] = float((stock_pv - pv).abs().max())
                        if "ours_e2e" in first and "hf_stock" in first:
                            diffs["ours_e2e_vs_hf_stock"] = max_abs_diff(first["ours_e2e"], first["hf_stock"])
                        if "hf_stock" in first and "hf_per_image" in first:
                            diffs["hf_per_image_vs_hf_stock"] = max_abs_diff(first["hf_per_image"], first["hf_stock"])
                    if use_meta:
                        meta_feats = meta.features("pv")  # type: ignore[union-attr]
                        diffs["meta_vs_ours_with_meta_weights"] = max_abs_diff(ours_meta.encode(pv), meta_feats)  # type: ignore[union-attr]
                        meta.drop("pv")  # type: ignore[union-attr]
                row["max_abs_diff"] = diffs
                fl = flops[variant][size]
                row["efficiency"] = {
                    k: {
                        "gflops_per_s": round(fl * row["methods"][k]["images_per_s"] / 1e9, 2),
                        "fraction_of_matmul_peak": round(fl * row["methods"][k]["images_per_s"] / 1e9 / peak_gflops, 3),
                    }
                    for k in ("ours_encode", "hf_bare", "ours_e2e", "hf_stock", "meta")
                    if k in row["methods"]
                }
                results.append(row)
                log(
                    "  "
                    + ", ".join(f"{k} {v['ms_per_image']:.1f} ms/img" for k, v in row["methods"].items())
                    + f" | speedups {row['speedup']} | diffs {diffs}"
                )
                del samples, first
            del hf, ours, ours_meta
    return results, skipped, flops


# ------------------------------------------------------------------------------------------------
# optimisations on/off
# ------------------------------------------------------------------------------------------------


def run_optimisations(args: argparse.Namespace, device: torch.device, frames_pool: np.ndarray) -> dict[str, Any]:
    """Each optimisation against one baseline (``encode`` as shipped), side by side in one interleaved run."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    variant, size, b = args.variants[0], args.opt_size, args.opt_batch
    log(f"optimisations at {variant} {size}x{size} batch {b}")
    hf, ours = build_pair(variant, size, device, args.seed)
    frames = frames_pool[:b]
    with torch.inference_mode():
        pv = ours.transforms(frames).contiguous()
    pv_cl = pv.contiguous(memory_format=torch.channels_last)
    ours_cl = copy.deepcopy(ours).to(memory_format=torch.channels_last)
    what: dict[str, str] = {
        "baseline": "encode() as shipped: inference_mode, no positional encodings, fused attention, NCHW input, "
        "micro_batch='auto', skip_padding='auto'",
        "one_pass": "micro_batch=None: the whole batch in one pass",
        "no_padding_skip": "skip_padding=False: project the zero tokens that pad attention windows",
        "plain_path": "micro_batch=None and skip_padding=False (the defaults before micro-batching)",
        "with_pos_enc": "with_pos_enc=True: also compute the neck's sine positional encodings (off by default)",
        "transformers_attention": "fast_attention=False: transformers' own Hiera forward (computes an unused "
        "attention-weight tensor)",
        "channels_last_input": "input in channels_last memory format (weights as is)",
        "channels_last_model": "input and conv weights in channels_last (model.to(memory_format=channels_last))",
        "no_grad": "called with autograd on: the frozen encoder runs under torch.no_grad instead of inference_mode",
        **{f"micro_batch_{c}": f"micro_batch={c}: the batch in chunks of {c} images" for c in args.opt_chunks if c < b},
        "sdpa_math": "SDPA restricted to the math backend (default picks the fused kernel)",
        "hf_bare_inference_mode": "transformers get_image_features under torch.inference_mode",
        "hf_bare_no_grad": "transformers get_image_features under torch.no_grad",
    }
    methods: dict[str, Callable[[], Any]] = {
        "baseline": in_mode(lambda: ours.encode(pv)),
        "one_pass": in_mode(toggled(ours, lambda: ours.encode(pv), micro_batch=None)),
        "no_padding_skip": in_mode(toggled(ours, lambda: ours.encode(pv), skip_padding=False)),
        "plain_path": in_mode(toggled(ours, lambda: ours.encode(pv), micro_batch=None, skip_padding=False)),
        "with_pos_enc": in_mode(toggled(ours, lambda: ours.encode(pv), with_pos_enc=True)),
        "transformers_attention": in_mode(toggled(ours, lambda: ours.encode(pv), fast_attention=False)),
        "channels_last_input": in_mode(lambda: ours.encode(pv_cl)),
        "channels_last_model": in_mode(lambda: ours_cl.encode(pv_cl)),
        "no_grad": in_mode(lambda: ours.encode(pv), mode="grad"),
        **{
            f"micro_batch_{c}": in_mode(toggled(ours, lambda: ours.encode(pv), micro_batch=c))
            for c in args.opt_chunks
            if c < b
        },
        "sdpa_math": in_mode(within(lambda: ours.encode(pv), lambda: sdpa_kernel(SDPBackend.MATH))),
        "hf_bare_inference_mode": in_mode(lambda: hf_features(hf, pv)),
        "hf_bare_no_grad": in_mode(lambda: hf_features(hf, pv), mode="no_grad"),
    }
    if device.type == "cuda" or args.cpu_bf16:

        def autocast() -> contextlib.AbstractContextManager:
            return torch.autocast(device.type, dtype=torch.bfloat16)

        from sam2_encoder.image_encoder import bf16_support  # after import_torchvision (transformers caches it)

        native, why = bf16_support(device)
        what["bf16"] = (
            f"precision='bf16': the Hiera trunk under bf16 autocast ({'native' if native else 'EMULATED'}: {why})"
        )
        what["hf_bare_bf16_autocast"] = "transformers get_image_features under torch.autocast(bfloat16)"

        def bf16_encode() -> Any:
            with emulated_bf16(not native):
                return toggled(ours, lambda: ours.encode(pv), precision="bf16")()

        methods["bf16"] = in_mode(bf16_encode)
        methods["hf_bare_bf16_autocast"] = in_mode(within(lambda: hf_features(hf, pv), autocast))
    if device.type == "cuda":
        for backend in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
            be = getattr(SDPBackend, backend)
            name = f"sdpa_{backend.lower()}_bf16"
            what[name] = f"bf16 autocast with SDPA restricted to {backend}"

            def run_backend(be: SDPBackend = be) -> Any:
                with sdpa_kernel(be), torch.autocast("cuda", dtype=torch.bfloat16):
                    return ours.encode(pv)

            methods[name] = in_mode(run_backend)
        methods.pop("sdpa_math")
        for backend in ("EFFICIENT_ATTENTION", "MATH"):
            be = getattr(SDPBackend, backend)
            name = f"sdpa_{backend.lower()}_fp32"
            what[name] = f"fp32 with SDPA restricted to {backend}"
            methods[name] = in_mode(within(lambda: ours.encode(pv), lambda be=be: sdpa_kernel(be)))
    # The warm-up round, one call each: keeps the outputs, and a method that cannot run here (an SDPA
    # backend this GPU lacks) is reported instead of timed.
    errors: dict[str, str] = {}
    outputs: dict[str, Any] = {}
    for name in list(methods):
        for _ in range(max(args.warmup, 1)):
            try:
                outputs[name] = methods[name]()
            except RuntimeError as err:
                errors[name] = f"{type(err).__name__}: {str(err).splitlines()[0]}"
                methods.pop(name)
                break
    samples = interleave(methods, args.opt_rounds, 0, sync=sync_fn(device), keep_first_output=False)
    out: dict[str, Any] = {
        "variant": variant,
        "size": size,
        "batch": b,
        "load_average": loadavg(),
        "legend": "speed_vs_reference = reference median / this median (> 1: this setting is faster than the "
        "reference); verdict: helps/hurts beyond a noise band (--noise, or the interquartile range of either "
        "sample if larger), else neutral",
        "results": {},
    }
    for name, s in samples.items():
        summary = summarize(s, b)
        ref_name = "hf_bare_inference_mode" if name.startswith("hf_") else "baseline"
        ref, ref_out = float(np.median(samples[ref_name].wall)), outputs[ref_name]
        rel = ratio(ref, summary["median_s"])
        entry = {"what": what[name], **summary, "speed_vs_reference": rel}
        entry["reference"] = ref_name
        if name != ref_name:
            entry["verdict"] = verdict(rel, args.noise, s.wall, samples[ref_name].wall)
        with torch.inference_mode():
            entry["max_abs_diff_vs_reference"] = max_abs_diff(outputs[name], ref_out)
        out["results"][name] = entry
    out["not_run"] = errors
    if device.type != "cuda":
        out["skipped_on_cpu"] = {
            "pinned_memory": "CUDA only: host-to-device copies",
            "sdpa_backends": "CUDA backends (flash, efficient, cuDNN) only; on CPU: math vs the default fused kernel",
        }
        if not args.cpu_bf16:
            out["skipped_on_cpu"]["bf16"] = "CUDA only by default (--cpu-bf16 measures it on CPU)"
    if device.type == "cuda":
        out["pinned_memory"] = run_pinned(args, device, ours, frames)
    return out


def run_pinned(args: argparse.Namespace, device: torch.device, ours: Any, frames: np.ndarray) -> dict[str, Any]:
    """Pageable vs pinned host memory for uint8 frames: the copy alone and ours end to end."""
    pageable = torch.from_numpy(frames)
    pinned = pageable.pin_memory()
    b = frames.shape[0]
    methods = {
        "copy_pageable": lambda: pageable.to(device, non_blocking=True),
        "copy_pinned": lambda: pinned.to(device, non_blocking=True),
        "e2e_pageable": in_mode(lambda: ours(pageable)),
        "e2e_pinned": in_mode(lambda: ours(pinned)),
    }
    samples = interleave(methods, max(args.rounds, 5), args.warmup, sync=sync_fn(device), keep_first_output=False)
    res = {k: summarize(s, b) for k, s in samples.items()}
    mb = frames.nbytes / 1e6
    for k in ("copy_pageable", "copy_pinned"):
        res[k]["gb_per_s"] = round(mb / 1e3 / res[k]["median_s"], 2)
    res["frames_mb"] = round(mb, 2)
    res["e2e_speed_pinned_vs_pageable"] = ratio(res["e2e_pageable"]["median_s"], res["e2e_pinned"]["median_s"])
    return res


def run_compile(args: argparse.Namespace, device: torch.device, frames_pool: np.ndarray) -> dict[str, Any]:
    """``torch.compile(encoder.encode, dynamic=False)``: compile time apart, then eager vs compiled."""
    variant, size, b = args.variants[0], args.compile_size, args.compile_batch
    log(f"torch.compile at {variant} {size}x{size} batch {b}")
    ours = quiet_encoder(variant, size, args.seed).to(device)
    with torch.inference_mode():
        pv = ours.transforms(frames_pool[:b]).contiguous()
    res: dict[str, Any] = {
        "variant": variant,
        "size": size,
        "batch": b,
        "how": "torch.compile(enc.encode, dynamic=False) on a cold inductor cache, called under "
        "torch.inference_mode like the eager timings (falls back to autograd-on, where the frozen encoder runs "
        "under no_grad, if that fails; 'mode' says which ran)",
    }
    try:
        from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

        for mode in ("inference", "grad"):
            try:
                with tempfile.TemporaryDirectory(prefix="inductor_") as cache, temporary_cache_dir(cache):
                    _compile_and_time(args, device, ours, pv, res, mode)
                res["mode"] = {"inference": "torch.inference_mode", "grad": "autograd on (encoder: no_grad)"}[mode]
                break
            except Exception as err:  # noqa: BLE001 - a missing compiler etc. is a result, not a crash
                res[f"error_{mode}"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    except ImportError as err:
        res["error"] = f"{type(err).__name__}: {err}"
    return res


def _compile_and_time(
    args: argparse.Namespace, device: torch.device, ours: Any, pv: torch.Tensor, res: dict, mode: str
) -> None:
    """Compile (cold inductor cache: compile time is real) and time eager vs compiled into ``res``."""
    from torch import _dynamo
    from torch._dynamo.utils import counters

    b = pv.shape[0]
    _dynamo.reset()
    counters.clear()
    compiled = torch.compile(ours.encode, dynamic=False)
    sync = sync_fn(device)
    eager_first = time.perf_counter()
    eager_out = in_mode(lambda: ours.encode(pv), mode)()
    eager_first = time.perf_counter() - eager_first
    t0 = time.perf_counter()
    out = in_mode(lambda: compiled(pv), mode)()
    if sync:
        sync()
    res["first_call_s"] = round(time.perf_counter() - t0, 2)
    res["compile_s_estimate"] = round(res["first_call_s"] - eager_first, 2)
    res["max_abs_diff_vs_eager"] = max_abs_diff(out, eager_out)
    res["graph_breaks"] = sum(counters["graph_break"].values())
    samples = interleave(
        {"eager": in_mode(lambda: ours.encode(pv), mode), "compiled": in_mode(lambda: compiled(pv), mode)},
        max(args.rounds, 5),
        args.warmup,
        sync=sync,
        keep_first_output=False,
    )
    res["eager"] = summarize(samples["eager"], b)
    res["compiled"] = summarize(samples["compiled"], b)
    res["speed_compiled_vs_eager"] = ratio(res["eager"]["median_s"], res["compiled"]["median_s"])
    res["verdict"] = verdict(
        res["speed_compiled_vs_eager"], args.noise, samples["eager"].wall, samples["compiled"].wall
    )


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------


def goals(results: Sequence[dict], variant: str) -> dict[str, Any]:
    """The issue's goals at batch 8, size 256 on this device."""
    row = next(
        (r for r in results if (r["variant"], r["size"], r["batch"]) == (variant, GOAL["size"], GOAL["batch"])), None
    )
    if row is None:
        return {"status": f"not measured (needs size {GOAL['size']} and batch {GOAL['batch']} in the run)"}
    e2e, enc = row["speedup"]["ours_e2e_vs_hf_stock"], row["speedup"]["ours_encode_vs_hf_bare"]
    return {
        "config": {"variant": variant, "size": GOAL["size"], "batch": GOAL["batch"]},
        "ours_e2e_vs_hf_stock": {
            "target": GOAL["e2e_vs_stock"],
            "measured": e2e,
            "met": None if e2e is None else e2e >= GOAL["e2e_vs_stock"],
        },
        "ours_encode_vs_hf_bare": {
            "target": GOAL["encode_vs_bare"],
            "measured": enc,
            "met": None if enc is None else enc >= GOAL["encode_vs_bare"],
        },
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--variants", nargs="+", default=["sam2.1_hiera_tiny"], help="released model names")
    p.add_argument("--sizes", nargs="+", type=int, default=[224, 256, 512, 1024], help="encoder input sides")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (CPU)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per configuration (medians reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--frame-hw", nargs=2, type=int, default=[480, 640], metavar=("H", "W"), help="raw frame size")
    p.add_argument(
        "--max-batch-pixels",
        type=int,
        default=None,
        help="skip configurations with batch*size^2 above this (default: 2.2M on CPU, which skips 512x32 and "
        "1024x8/32; no limit on CUDA; 0 = no limit)",
    )
    p.add_argument("--no-opts", action="store_true", help="skip the optimisation on/off section")
    p.add_argument("--opt-size", type=int, default=256)
    p.add_argument("--opt-rounds", type=int, default=5, help="timed rounds of the optimisation section")
    p.add_argument("--opt-batch", type=int, default=8)
    p.add_argument(
        "--opt-chunks",
        nargs="+",
        type=int,
        default=[1, 2, 4],
        help="micro-batch sizes compared with one batched pass (1 = per-image loop)",
    )
    p.add_argument("--cpu-bf16", action="store_true", help="also measure bf16 autocast on CPU")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--compile-size", type=int, default=None, help="default: 224 on CPU, 256 on CUDA")
    p.add_argument("--compile-batch", type=int, default=None, help="default: 1 on CPU, 8 on CUDA")
    p.add_argument(
        "--meta-python",
        default=None,
        help="python of a venv with sam2==1.1.0 for Meta's reference (default: $SAM2_META_PYTHON, or this "
        "interpreter if it has sam2)",
    )
    p.add_argument("--meta-max-batch", type=int, default=8, help="largest batch at which Meta's code is timed")
    p.add_argument(
        "--goal-rounds", type=int, default=7, help=f"timed rounds at the goal configuration ({GOAL['size']}, batch 8)"
    )
    p.add_argument("--meta-sizes", nargs="+", type=int, default=[256], help="sizes at which Meta's code is timed")
    p.add_argument(
        "--torchvision-path",
        default=os.environ.get("SAM2_BENCH_TORCHVISION_PATH"),
        help="folder with torchvision appended to sys.path for transformers' image processor",
    )
    p.add_argument("--noise", type=float, default=0.03, help="relative band called 'neutral' in verdicts")
    p.add_argument("--seed", type=int, default=0)
    add_output_args(p, "encoder")
    p.add_argument("--no-plots", action="store_true", help="write the JSON only")
    p.add_argument("--plot-size", type=int, default=256, help="image size of the throughput plot")
    p.add_argument("--latency-batches", nargs="+", type=int, default=[1, 8])
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    device = (
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if args.device == "auto"
        else torch.device(args.device)
    )
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    args.compile_size = args.compile_size or (224 if device.type == "cpu" else 256)
    args.compile_batch = args.compile_batch or (1 if device.type == "cpu" else 8)
    start = time.perf_counter()

    tv = import_torchvision(args.torchvision_path)  # before transformers, which caches what it found
    import transformers

    transformers.logging.set_verbosity_error()
    processor_ok = tv["available"]
    if processor_ok:
        try:
            make_processor(64)
        except Exception as err:  # noqa: BLE001 - reported in the JSON
            processor_ok, tv["available"], tv["reason"] = False, False, f"Sam2Processor failed: {err}"
    if not processor_ok:
        log(f"transformers' stock processor unavailable: {tv['reason']}; hf_stock and hf_per_image skipped")

    info = machine_info(device)
    log(f"machine: {info['cpu']}, {info['cpu_count']} cores, {torch.get_num_threads()} thread(s), load {loadavg()}")
    peaks = {"float32_start": matmul_throughput(device, torch.float32)}
    if device.type == "cuda" or args.cpu_bf16:
        peaks["bfloat16_start"] = matmul_throughput(device, torch.bfloat16)
    frames_pool = make_frames(max(args.batches + [args.opt_batch, args.compile_batch]), *args.frame_hw, seed=args.seed)

    with tempfile.TemporaryDirectory(prefix="encoder_bench_") as tmp:
        meta, meta_info = (None, {"status": "not requested (--methods)"})
        if "meta" in args.methods:
            meta, meta_info = start_meta(args.meta_python, args.threads, device, Path(tmp))
        try:
            peak = peaks["float32_start"]["gflops_best"]
            results, skipped, flops = run_grid(args, device, frames_pool, processor_ok, meta, peak)
        finally:
            if meta is not None:
                meta_info.update(meta.info, status="measured")
                meta.close()
    opts = None if args.no_opts else run_optimisations(args, device, frames_pool)
    peaks["float32_end"] = matmul_throughput(device, torch.float32)
    compiled = None if args.no_compile else run_compile(args, device, frames_pool)
    peak = max(peaks["float32_start"]["gflops_best"], peaks["float32_end"]["gflops_best"])
    for row in results:  # efficiency against the best matmul throughput seen in the run
        for eff in row["efficiency"].values():
            eff["fraction_of_matmul_peak"] = round(eff["gflops_per_s"] / peak, 3)
    if opts and "bf16" in opts["results"] and "bfloat16_start" in peaks:
        fl = flops[args.variants[0]].get(args.opt_size)
        if fl:
            r = opts["results"]["bf16"]
            r["fraction_of_bf16_matmul_peak"] = round(
                fl * r["images_per_s"] / 1e9 / peaks["bfloat16_start"]["gflops_best"], 3
            )
    info["load_average_at_end"] = loadavg()

    notes = [
        "All timed calls run under torch.inference_mode (the optimisation section measures no_grad apart); "
        "rounds are interleaved with a rotating start (A B C, B C A, ...); medians over --rounds.",
        "hf_stock/hf_per_image include transformers' image processor; it rounds to uint8 after resizing "
        "(Meta's image predictor and ours do not), so their features differ from ours by design: "
        "see max_abs_diff.pixels_ours_vs_hf_processor. ours_encode vs hf_bare see identical inputs.",
        "hf_* include reshaping (hw, B, C) to (B, C, h, w) like transformers' get_image_embeddings.",
        "transformers' neck recomputes its sine positional encodings on every call (an lru_cache of size 1 "
        "thrashing over the FPN shapes) and its attention computes an unused attention-weight tensor; ours "
        "skips both (with_pos_enc=False, fast_attention=True).",
        "Efficiency = encoder FLOPs per image (torch.utils.flop_counter, multiply-add = 2 FLOPs) x images/s "
        "over the best FLOP/s of a large matmul on this device, dtype and thread count.",
    ]
    for variant, per_size in flops.items():
        if 224 in per_size and 256 in per_size:
            notes.append(
                f"{variant}: {per_size[256] / 1e9:.1f} GFLOP per image at 256 vs {per_size[224] / 1e9:.1f} at 224, "
                f"{per_size[256] / 256**2 / (per_size[224] / 224**2):.2f}x the FLOPs per pixel: at 256 the "
                "stride-16 and stride-32 maps (16x16, 8x8) are padded to whole attention windows (14, 7); "
                "multiples of 224 fit them exactly."
            )
    if device.type == "cpu" and info["cpu_count"] and info["cpu_count"] <= args.threads + 1:
        notes.append(
            f"The machine has {info['cpu_count']} cores; load averages at start/end and per configuration "
            "are recorded, and cpu_per_wall < threads means the process waited for a core."
        )
    report: dict[str, Any] = {
        "benchmark": "encoder",
        "command": "python benchmarks/encoder.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "device": device.type,
        "machine": info,
        "settings": {
            "variants": args.variants,
            "sizes": args.sizes,
            "batches": args.batches,
            "threads": torch.get_num_threads(),
            "rounds": args.rounds,
            "goal_rounds": args.goal_rounds,
            "opt_rounds": args.opt_rounds,
            "warmup": args.warmup,
            "frame_hw": args.frame_hw,
            "seed": args.seed,
            "dtype": "float32",
            "weights": "seeded random transformers Sam2Model weights loaded into ours (load_sam2_weights)",
        },
        "methods": {k: v for k, v in METHODS.items() if k in args.methods},
        "stock_processor": {"class": "transformers.Sam2Processor(Sam2ImageProcessor)", "torchvision": tv},
        "meta_reference": meta_info,
        "matmul_peak": peaks,
        "flops_per_image": {v: {str(s): f for s, f in d.items()} for v, d in flops.items()},
        "results": results,
        "skipped": skipped,
        "goals": goals(results, args.variants[0]),
        "optimisations": opts,
        "torch_compile": compiled,
        "notes": notes,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    out = output_path(args, "encoder")
    write_json(report, out)
    if not args.no_plots:
        report["plots"] = plot_encoder(report, out.parent, args.plot_size, args.latency_batches)
        report["plots"].append(plot_encoder_goal(report, out.with_suffix(".png")))
        write_json(report, out)
    print(json.dumps(report, indent=1))
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
