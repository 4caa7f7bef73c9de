"""Fidelity of ``precision="bf16"`` against fp32: per-level cosine and relative error, pooled features.

The same weights and frames through ``SAM2ImageEncoder(precision="fp32")`` and ``"bf16"`` (the Hiera
trunk under bfloat16 autocast; neck, heads and outputs float32), per level: the cosine similarity
of each image's map with its fp32 map (minimum and mean over images), the relative L2 error
``||bf16 - fp32|| / ||fp32||`` and the max abs difference against the level's magnitude. Then
the policy-facing vector: ``MultiCameraEncoder`` (spatial-softmax keypoints by default) fp32 vs bf16.
Goal: cosine >= 0.999 on every level.

Weights: by default the Meta-scaled seeded weights of the golden fixture
(``tests/fixtures/meta_weights.py``: ``randn / sqrt(fan_in)`` like trained layers), or a real
checkpoint with ``--checkpoint``. Frames: synthetic table-top scenes. Where the hardware has no
native bf16, torch emulates it (same bf16 rounding, fp32 accumulation): the numbers hold, the
speed does not; the JSON says which.

    python benchmarks/fidelity.py                      # tiny, 224 and 256 px, 8 frames
    python benchmarks/fidelity.py --checkpoint sam2.1_hiera_tiny --record
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from common import add_output_args, emulated_bf16, machine_info, output_path, write_json

from sam2_encoder import __version__
from sam2_encoder.camera_encoder import MultiCameraEncoder
from sam2_encoder.checkpoints import convert_meta_state_dict
from sam2_encoder.image_encoder import LEVELS, SAM2ImageEncoder, bf16_support
from sam2_encoder.scene import synthetic_scene

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"


def meta_scaled_state(variant: str) -> dict[str, torch.Tensor]:
    """The golden fixture's seeded Meta-format weights for ``variant``, in transformers' names."""
    from safetensors import safe_open

    sys.path.insert(0, str(FIXTURES))
    from meta_weights import meta_state_dict_from_manifest

    with safe_open(str(FIXTURES / "meta_golden.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["golden"])
    return convert_meta_state_dict(meta_state_dict_from_manifest(meta["manifests"][variant], 0))


def level_report(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Per-image cosine and relative L2 error of ``b`` against ``a`` (``(B, C, h, w)`` each), and max abs."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    cos = F.cosine_similarity(a, b, dim=1)
    rel = (b - a).norm(dim=1) / a.norm(dim=1)
    return {
        "cosine_min": round(float(cos.min()), 6),
        "cosine_mean": round(float(cos.mean()), 6),
        "rel_l2_error_max": round(float(rel.max()), 6),
        "max_abs_diff": round(float((b - a).abs().max()), 6),
        "fp32_abs_max": round(float(a.abs().max()), 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="sam2.1_hiera_tiny")
    p.add_argument("--checkpoint", default=None, help="real weights (default: Meta-scaled seeded weights)")
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 256])
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--camera-hw", type=int, nargs=2, default=[240, 320])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    add_output_args(p, "fidelity")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    native, why = bf16_support(device)
    frames = np.stack([synthetic_scene(*args.camera_hw, seed=100 + i) for i in range(args.frames)])
    state = None if args.checkpoint else meta_scaled_state(args.variant)
    rows: list[dict[str, Any]] = []
    with emulated_bf16(not native), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for size in args.sizes:
            encoders = {}
            for precision in ("fp32", "bf16"):
                enc = SAM2ImageEncoder(args.variant, checkpoint=args.checkpoint, image_size=size, precision=precision)
                if state is not None:
                    enc.load_sam2_weights(state, source="Meta-scaled seeded weights")
                encoders[precision] = enc.to(device)
            out, seconds = {}, {}
            for precision, enc in encoders.items():
                start = time.perf_counter()
                out[precision] = enc(frames)
                seconds[precision] = round((time.perf_counter() - start) / len(frames), 4)
            levels = {lv: level_report(out["fp32"][lv], out["bf16"][lv]) for lv in LEVELS}

            pooled = {}
            for precision in ("fp32", "bf16"):
                cams = MultiCameraEncoder(
                    {"cam": (3, *args.camera_hw)}, variant=args.variant, checkpoint=args.checkpoint, image_size=size,
                    precision=precision, seed=0,
                )  # fmt: skip
                if state is not None:
                    cams.encoder.load_sam2_weights(state, source="Meta-scaled seeded weights")
                cams = cams.to(device).eval()
                with torch.no_grad():
                    pooled[precision] = cams({"cam": torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255})
            rows.append(
                {
                    "size": size,
                    "levels": levels,
                    "cosine_goal_met": all(v["cosine_min"] >= 0.999 for v in levels.values()),
                    "pooled_multicamera_spatial_softmax": level_report(pooled["fp32"], pooled["bf16"]),
                    "seconds_per_image": seconds,
                }
            )
            print(f"{size} px: " + ", ".join(f"{lv} cos {v['cosine_min']}" for lv, v in levels.items()), flush=True)
    report = {
        "benchmark": "fidelity",
        "machine": machine_info(device) | {"sam2_encoder": __version__},
        "bf16": {"native": native, "why": why, "note": None if native else "emulated: timings are not bf16's"},
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"},
        "weights": args.checkpoint or "Meta-scaled seeded weights (tests/fixtures/meta_weights.py, seed 0)",
        "results": rows,
    }
    out_path = output_path(args, "fidelity")
    write_json(report, out_path)
    print(json.dumps(report["results"], indent=1))


if __name__ == "__main__":
    main()
