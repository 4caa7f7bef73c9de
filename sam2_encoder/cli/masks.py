"""``sam2-encoder masks REPLAY.zarr --key KEY --prompts PROMPTS.json``: track every episode's objects into a mask cache.

Prompts each episode's first frame from a small JSON file (points / boxes per episode and object, see
:mod:`sam2_encoder.diffusion_policy.mask_cache`), tracks the rest of the episode with the streaming
predictor and stores ``(N, K, H, W)`` bool masks beside the replay buffer, for object tokens
(``MaskDataset``). Resumable: rerun the same command after an interruption and only the episodes
not yet finished are tracked, after the finished ones are read back against their checksums (damaged
ones are tracked again). ``sam2-encoder masks --verify CACHE.zarr`` checks a whole mask cache (every
frame against its CRC-32) and lists each problem. Needs zarr (``sam2-encoder[dp]``).

``--key`` is spelled as in ``sam2-encoder cache``; ``--keys`` is the same option (one camera here).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from .common import (
    CLIError,
    EpisodeProgress,
    add_model_args,
    build_model,
    needs_zarr,
    non_negative_int,
    say,
    verify_cache_folder,
)

__all__ = ["register", "run"]


def register(sub: Any) -> argparse.ArgumentParser:
    """Add the ``masks`` subcommand to a ``sam2-encoder`` subparsers object."""
    p = sub.add_parser(
        "masks",
        help="track objects through every episode of a Diffusion Policy replay buffer from first-frame prompts "
        "into a zarr mask cache (resumable), or --verify one",
        description="Track objects through every episode of a Diffusion Policy replay buffer, prompted on each "
        "episode's first frame from a JSON file, into a zarr mask cache for object tokens. Resumable: rerun the "
        "same command after an interruption. --verify CACHE checks every frame of an existing mask cache against its "
        "checksum.",
    )
    p.add_argument("replay", nargs="?", help="replay buffer .zarr (data/<key> (N,H,W,3) uint8, meta/episode_ends)")
    p.add_argument("--verify", metavar="CACHE", help="check every frame of a mask cache; exit 2 if any is bad")
    p.add_argument(
        "--key",
        "--keys",
        dest="key",
        metavar="KEY",
        help="camera key under data/ (required to build; one camera; --keys is the same option)",
    )
    p.add_argument(
        "--prompts",
        help='JSON: {"objects": [ids], "episodes": {"0": {"<id>": {"points": [[x, y]], "labels": [1]} | '
        '{"box": [x0, y0, x1, y1]}}, ...}} with every episode listed ({} for none), frame pixels',
    )
    add_model_args(p, image_size=1024)
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="bf16: encode frames with the Hiera trunk under bfloat16 autocast (needs native bf16)",
    )
    p.add_argument("--out", help="mask cache folder (default: REPLAY.<key>_masks.zarr beside the replay buffer)")
    p.add_argument("--download", action="store_true", help="allow downloading the checkpoint")
    p.add_argument("--threads", type=non_negative_int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def _check_build_args(args: argparse.Namespace) -> None:
    """The arguments of a build, before anything is imported: ``--key``, ``--prompts`` (a file), the replay buffer.

    Raises:
        CLIError: For the first one missing.
    """
    for name, value in (("--key", args.key), ("--prompts", args.prompts)):
        if not value:
            raise CLIError(f"the following arguments are required: {name} (or --verify CACHE to check a mask cache)")
    if args.replay is None:
        raise CLIError("give the replay buffer to track (REPLAY.zarr) with --key and --prompts, or --verify CACHE")
    if not os.path.exists(args.replay):
        raise CLIError(f"replay buffer not found: {args.replay}")
    if not os.path.isfile(args.prompts):
        raise CLIError(f"--prompts {args.prompts}: no such file")


def run(args: argparse.Namespace) -> int:
    """Run ``sam2-encoder masks`` with parsed arguments; returns the exit status.

    Everything is checked before the model is built or anything is written (replay buffer, key,
    every prompt against the frame size, an existing ``--out``); a new cache appears whole, and
    a run that fails before finishing an episode leaves nothing behind.

    Raises:
        CLIError: For a missing replay buffer, prompts file or key, ``--verify`` mixed with a build,
            or no zarr.
    """
    if args.verify is not None:
        if args.replay is not None or args.key or args.prompts:
            raise CLIError("--verify CACHE checks an existing mask cache: give no replay buffer, --key or --prompts")
        return verify_cache_folder("masks", args.verify)
    _check_build_args(args)
    say(f"masks: loading torch, zarr and {args.variant} at {args.image_size}x{args.image_size}")
    try:
        from ..diffusion_policy.mask_cache import build_mask_cache, check_mask_inputs, default_mask_path
    except ImportError as e:
        raise needs_zarr("masks", e) from e
    import torch

    from ..checkpoints import weights_identity
    from ..streaming import StreamingPredictor

    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or default_mask_path(args.replay, args.key)
    try:  # everything but the model, before building it
        check_mask_inputs(args.replay, args.key, args.prompts, out)
    except KeyError as e:  # a key not in the replay buffer: its message is the first argument
        raise CLIError(str(e.args[0]) if e.args else str(e)) from e
    predictor = build_model(
        StreamingPredictor,
        args,
        "masks",
        device=args.device,
        dtype=getattr(torch, args.dtype),
        precision=args.precision,
        download=args.download,
    )
    began = time.perf_counter()
    with EpisodeProgress(out, f"masks {os.path.basename(str(out))}", args.quiet) as progress:
        path = build_mask_cache(
            args.replay,
            args.key,
            args.prompts,
            out,
            predictor,
            weights_identity(args.checkpoint),
            on_episode=progress.step,
            on_start=progress.start,
            on_damaged=progress.damaged,
        )
    print(f"mask cache ready: {path} ({time.perf_counter() - began:.1f} s)")
    return 0
