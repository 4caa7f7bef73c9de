"""``sam2-encoder encode [IMAGE ...]``: encode images (or a generated test scene), print shapes and time."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from .common import CLIError, add_model_args, build_model, non_negative_int, positive_int

__all__ = ["register", "run"]


def register(sub: Any) -> argparse.ArgumentParser:
    """Add the ``encode`` subcommand to a ``sam2-encoder`` subparsers object."""
    p = sub.add_parser("encode", help="encode images and print the feature pyramid shapes and timing")
    p.add_argument(
        "images",
        nargs="*",
        help="image files (8-bit images via Pillow, alpha dropped; .npy HxWx3 uint8); none: test scene",
    )
    add_model_args(p, image_size=1024)
    p.add_argument("--batch-size", type=positive_int, default=1)
    p.add_argument("--repeat", type=positive_int, default=3, help="timed repetitions (median reported)")
    p.add_argument("--channel-order", default="RGB", choices=["RGB", "BGR"])
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="bf16: Hiera trunk under bfloat16 autocast (needs native bf16, see `sam2-encoder doctor`)",
    )
    p.add_argument("--threads", type=non_negative_int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", help="save the pyramid to this .safetensors file")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.set_defaults(func=run)
    return p


def _check_out(text: str) -> Path:
    """``--out``: a ``.safetensors`` file name in an existing folder (checked before encoding)."""
    out = Path(text)
    if out.suffix != ".safetensors":
        raise CLIError(f"--out {out}: expected a .safetensors file name")
    if out.is_dir():
        raise CLIError(f"--out {out} is a folder; give a .safetensors file name")
    if not out.parent.is_dir():
        raise CLIError(f"--out {out}: the folder {out.parent} does not exist")
    return out


def run(args: argparse.Namespace) -> int:
    """Run ``sam2-encoder encode`` with parsed arguments; returns the exit status."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from ..image_encoder import SAM2ImageEncoder
    from ..scene import synthetic_scene
    from .frames import read_image

    out = _check_out(args.out) if args.out else None
    if args.threads:
        torch.set_num_threads(args.threads)
    images = [read_image(Path(p)) for p in args.images] or [synthetic_scene()]
    source = ", ".join(args.images) if args.images else "generated 480x640 test scene"
    encoder = build_model(
        SAM2ImageEncoder,
        args,
        "features",
        device=args.device,
        dtype=getattr(torch, args.dtype),
        channel_order=args.channel_order,
        precision=args.precision,
    )
    batch = [images[i % len(images)] for i in range(max(args.batch_size, len(images)))]
    encoder(batch[:1])  # warm-up
    times = []
    for _ in tqdm(range(args.repeat), desc="encode", disable=args.repeat < 3 or args.json):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        pyramid = encoder(batch)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    per_image_ms = 1000 * float(np.median(times)) / len(batch)
    report = {
        "variant": encoder.variant.name,
        "image_size": list(encoder.image_size),
        "input": source,
        "batch": len(batch),
        "shapes": {k: list(v) for k, v in pyramid.shapes.items()},
        "ms_per_image": round(per_image_ms, 2),
        "device": args.device,
        "dtype": args.dtype,
        "precision": args.precision,
        "threads": torch.get_num_threads(),
    }
    if out is not None:
        from safetensors.torch import save_file

        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            save_file({k: v.float().contiguous().cpu() for k, v in pyramid.as_dict().items()}, str(tmp))
            tmp.replace(out)
        finally:
            tmp.unlink(missing_ok=True)
        report["out"] = str(out)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['variant']} at {report['image_size'][0]}x{report['image_size'][1]} on {source}")
        for name, shape in report["shapes"].items():
            print(f"  {name:>4}: {tuple(shape)}")
        print(
            f"  {per_image_ms:.1f} ms per image (batch {len(batch)}, {args.device}, {args.dtype}, "
            f"{report['threads']} threads)"
        )
    return 0
