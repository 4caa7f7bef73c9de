"""``sam2-encoder cache REPLAY.zarr --keys ...``: encode a Diffusion Policy replay buffer into a zarr feature cache.

Resumable, and sharded across ranks when launched by ``torchrun``. ``sam2-encoder cache --verify
CACHE.zarr`` checks a whole cache (every chunk against its checksum) and lists each problem.
Needs zarr (``sam2-encoder[dp]``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from .common import CLIError, add_model_args, build_model, non_negative_int, positive_int

__all__ = ["register", "report_problems", "run"]

_NEEDS_ZARR = "the cache command needs zarr: pip install 'sam2-encoder[dp]'"


def register(sub: Any) -> argparse.ArgumentParser:
    """Add the ``cache`` subcommand to a ``sam2-encoder`` subparsers object."""
    p = sub.add_parser(
        "cache",
        help="encode a Diffusion Policy replay buffer into a zarr feature cache (resumable; shards under torchrun), "
        "or --verify one",
    )
    p.add_argument("replay", nargs="?", help="replay buffer .zarr (data/<key> (N,H,W,3) uint8, meta/episode_ends)")
    p.add_argument("--keys", action="append", help="image key under data/ (repeat for cameras)")
    p.add_argument("--verify", metavar="CACHE", help="check every chunk of an existing cache; exit 2 if any is bad")
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


def _verify(path: str) -> int:
    try:
        from ..diffusion_policy.feature_cache import verify_cache
    except ImportError as e:
        raise CLIError(f"{_NEEDS_ZARR} ({e})") from e
    return report_problems(path, verify_cache(path), "cache", "every chunk matches its checksum")


def report_problems(path: str, problems: list[str], what: str, whole: str) -> int:
    """Print a ``--verify`` result: one ``error:`` line per problem and a summary; the exit status.

    Args:
        path: The checked cache.
        problems: What the check found (empty: the cache is whole).
        what: The kind of cache, for the advice (``"cache"``, ``"mask cache"``).
        whole: What is printed for a whole cache.

    Returns:
        0 for a whole cache, 2 otherwise.
    """
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        print(f"{path}: {len(problems)} problem(s); delete the {what} and rebuild it", file=sys.stderr)
        return 2
    print(f"{path}: {whole}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``sam2-encoder cache`` with parsed arguments; returns the exit status.

    Raises:
        CLIError: For a missing replay buffer or key, ``--verify`` mixed with a build, or no zarr.
    """
    if args.verify is not None:
        if args.replay is not None or args.keys:
            raise CLIError("--verify CACHE checks an existing cache: give no replay buffer or --keys with it")
        return _verify(args.verify)
    if args.replay is None:
        raise CLIError("give the replay buffer to encode (REPLAY.zarr) and --keys, or --verify CACHE")
    if not args.keys:
        raise CLIError(f"name the image keys of {args.replay} to encode with --keys KEY (repeatable)")
    if not os.path.exists(args.replay):
        raise CLIError(f"replay buffer not found: {args.replay}")
    import torch

    try:
        from ..diffusion_policy.feature_cache import build_cache, default_cache_path
    except ImportError as e:
        raise CLIError(f"{_NEEDS_ZARR} ({e})") from e
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
        try:
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
        except KeyError as e:  # a key not in the replay buffer: its message is the first argument
            raise CLIError(str(e.args[0]) if e.args else str(e)) from e
        if rank == 0:
            print(f"feature cache ready: {path} ({time.perf_counter() - start:.1f} s, {world} process(es))")
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0
