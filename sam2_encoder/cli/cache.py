"""``sam2-encoder cache REPLAY.zarr --keys ...``: encode a Diffusion Policy replay buffer into a zarr feature cache.

Resumable, and sharded across ranks when launched by ``torchrun``. Needs zarr (``sam2-encoder[dp]``).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from .common import add_model_args, build_model, non_negative_int, positive_int

__all__ = ["register", "run"]


def register(sub: Any) -> argparse.ArgumentParser:
    """Add the ``cache`` subcommand to a ``sam2-encoder`` subparsers object."""
    p = sub.add_parser(
        "cache",
        help="encode a Diffusion Policy replay buffer into a zarr feature cache (resumable; shards under torchrun)",
    )
    p.add_argument("replay", help="replay buffer .zarr (data/<key> (N,H,W,3) uint8, meta/episode_ends)")
    p.add_argument("--keys", action="append", required=True, help="image key under data/ (repeat for cameras)")
    add_model_args(p, image_size=224, model_dtype=False)
    p.add_argument("--levels", nargs="+", default=["s16"], choices=["s4", "s8", "s16"])
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="storage dtype of features")
    p.add_argument("--out", help="cache folder (default: beside the replay buffer)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="frames per chunk and per encoder batch")
    p.add_argument("--channel-order", default="RGB", choices=["RGB", "BGR"])
    p.add_argument("--download", action="store_true", help="allow downloading the checkpoint")
    p.add_argument("--threads", type=non_negative_int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``sam2-encoder cache`` with parsed arguments; returns the exit status."""
    import torch

    from ..diffusion_policy.feature_cache import build_cache, default_cache_path
    from ..image_encoder import SAM2ImageEncoder

    if args.threads:
        torch.set_num_threads(args.threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = args.device
    barrier = None
    if world > 1:  # launched by torchrun: shard chunks across ranks
        import torch.distributed as dist

        cuda = device.startswith("cuda")
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        if cuda:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            torch.cuda.set_device(device)
        barrier = dist.barrier
    try:
        encoder = build_model(
            SAM2ImageEncoder,
            args,
            "features",
            announce=rank == 0,
            device=device,
            channel_order=args.channel_order,
            download=args.download,
        )
        out = args.out or default_cache_path(args.replay, encoder.variant.name, args.image_size)
        start = time.perf_counter()
        path = build_cache(
            args.replay,
            args.keys,
            encoder,
            out=out,
            levels=args.levels,
            dtype=args.dtype,
            chunk_frames=args.batch_size,
            progress=not args.quiet,
            rank=rank,
            world_size=world,
            barrier=barrier,
        )
        if rank == 0:
            print(f"feature cache ready: {path} ({time.perf_counter() - start:.1f} s, {world} process(es))")
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0
