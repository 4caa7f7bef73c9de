"""``sam2-encoder encode [IMAGE ...]``: encode images (or a generated test scene), print shapes and time."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from .common import (
    CLIError,
    add_model_args,
    build_model,
    non_negative_int,
    plural,
    positive_int,
    remove_stale_partials,
    say,
)

__all__ = ["register", "run", "save_pyramid"]


def register(sub: Any) -> argparse.ArgumentParser:
    """Add the ``encode`` subcommand to a ``sam2-encoder`` subparsers object."""
    p = sub.add_parser("encode", help="encode images and print the feature pyramid shapes and timing")
    p.add_argument(
        "images",
        nargs="*",
        help="image files (8-bit images via Pillow, alpha dropped; .npy HxWx3 uint8); none: test scene",
    )
    add_model_args(p, image_size=1024)
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=1,
        help="images per encoder call; the images given are repeated to fill it (at least one call of all of them)",
    )
    p.add_argument("--repeat", type=positive_int, default=3, help="timed repetitions (median reported)")
    p.add_argument("--channel-order", default="RGB", choices=["RGB", "BGR"], help="channel order of the images")
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="bf16: Hiera trunk under bfloat16 autocast (needs native bf16, see `sam2-encoder doctor`)",
    )
    p.add_argument("--threads", type=non_negative_int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument(
        "--out", help="save the pyramid to this .safetensors file (float32; metadata: variant, size, weights, version)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
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
    from .frames import read_image

    out = _check_out(args.out) if args.out else None
    images = [read_image(Path(p)) for p in args.images]  # refused before the slow imports
    source = ", ".join(args.images) if args.images else "generated 480x640 test scene"
    say(f"encode: loading torch and {args.variant} at {args.image_size}x{args.image_size}")
    import numpy as np
    import torch

    from ..image_encoder import SAM2ImageEncoder
    from ..scene import synthetic_scene

    if args.threads:
        torch.set_num_threads(args.threads)
    images = images or [synthetic_scene()]
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
    times, pyramid = _timed(encoder, batch, args)
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
        save_pyramid(out, pyramid.as_dict(), _metadata(encoder, report, args))
        report["out"] = str(out)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['variant']} at {report['image_size'][0]}x{report['image_size'][1]} on {source}")
        for name, shape in report["shapes"].items():
            print(f"  {name:>4}: {tuple(shape)}")
        print(
            f"  {per_image_ms:.1f} ms per image (batch {len(batch)}, {args.device}, {args.dtype}, "
            f"{plural(report['threads'], 'thread')})"
        )
    return 0


def _timed(encoder: Any, batch: list[Any], args: argparse.Namespace) -> tuple[list[float], Any]:
    """One warm-up call, then ``--repeat`` timed calls of the whole batch; the progress bar counts images."""
    import torch
    from tqdm.auto import tqdm

    encoder(batch[:1])  # warm-up
    times = []
    total = args.repeat * len(batch)
    with tqdm(total=total, desc="encode", unit="image", disable=args.quiet or args.json or args.repeat < 3) as bar:
        for _ in range(args.repeat):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            pyramid = encoder(batch)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            bar.update(len(batch))
    return times, pyramid


def _metadata(encoder: Any, report: dict[str, Any], args: argparse.Namespace) -> dict[str, str]:
    """What ``--out`` records beside the tensors: what made them, so a file is never anonymous."""
    from .. import __version__

    height, width = report["image_size"]
    return {
        "sam2_encoder": __version__,
        "variant": encoder.variant.name,
        "image_size": f"{height}x{width}",
        "weights": encoder.weights_id,
        "checkpoint": str(args.checkpoint) if args.checkpoint is not None else "none (seeded random weights)",
        "input": report["input"],
        "batch": str(report["batch"]),
        "channel_order": args.channel_order,
        "precision": args.precision,
        "model_dtype": args.dtype,
        "levels": ",".join(report["shapes"]),
    }


def save_pyramid(out: Path, tensors: dict[str, Any], metadata: dict[str, str]) -> None:
    """Write ``{level: (B, C, H, W)}`` float32 tensors and ``metadata`` to ``out`` (a ``.safetensors`` file).

    Written beside ``out`` under a hidden name of this process and renamed into place (never
    half-written); the file gets the mode a new file of this user gets (``0o666`` less the umask;
    safetensors alone makes it ``0o600``). Hidden files of killed earlier runs are removed.
    """
    from safetensors.torch import save_file

    remove_stale_partials(out.parent, out.name, ".tmp")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        save_file({k: v.float().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
