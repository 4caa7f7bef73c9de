"""``sam2-encoder cache REPLAY.zarr --key KEY --memory sam2``: the policy memory's feature cache.

For a frozen encoder with ``memory="sam2"``: each frame goes through the trunk and SAM 2's memory
encoder once, and the cache holds what a training row needs without either (the finer levels,
``s16_neck`` and the frame's memory; :mod:`sam2_encoder.diffusion_policy.memory_cache`). The memory
weights come from ``--checkpoint`` (a full SAM 2 checkpoint) as the policy's do, or are seeded with
it omitted. ``--memory-source objects`` stores each frame's memory with its object masks, read from
a mask cache per camera (``--memory-masks KEY=MASKS.zarr``, from ``sam2-encoder masks``). The bank
layout (``memory_frames``, ``memory_stride``, ``memory_keep_first``) is chosen by the dataset when
training, so it is not an option here. ``--verify`` checks a memory cache as any feature cache.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from .common import CLIError, build_model, needs_zarr, plural, say, torchrun_group

__all__ = ["add_memory_args", "run_memory"]


def add_memory_args(p: argparse.ArgumentParser) -> None:
    """``--memory``, ``--memory-source`` and ``--memory-masks`` on the ``cache`` subcommand."""
    p.add_argument(
        "--memory",
        default="none",
        choices=["none", "sam2"],
        help="sam2: cache the policy memory's inputs (s16_neck and SAM 2's memory of each frame) for an encoder "
        "with memory=sam2, so training skips the trunk and the memory encoder",
    )
    p.add_argument(
        "--memory-source",
        default="frame",
        choices=["frame", "objects"],
        help="with --memory sam2: mask of each frame's memory, the whole frame or its object masks (--memory-masks)",
    )
    p.add_argument(
        "--memory-masks",
        action="append",
        metavar="KEY=MASKS.zarr",
        help="with --memory-source objects: the mask cache of camera KEY (`sam2-encoder masks`); repeat per --key",
    )


def check_memory_arguments(args: argparse.Namespace) -> dict[str, str]:
    """``{key: mask cache}`` of ``--memory-masks``, after checking the memory options go together.

    Raises:
        CLIError: For memory options without ``--memory sam2``, ``--prompts`` with it, or masks
            that do not go with ``--memory-source``.
    """
    masks: dict[str, str] = {}
    for entry in args.memory_masks or []:
        key, sep, path = entry.partition("=")
        if not sep or not key or not path:
            raise CLIError(f"--memory-masks {entry!r}: expected KEY=MASKS.zarr (a --key camera and its mask cache)")
        if key not in args.keys:
            raise CLIError(f"--memory-masks {entry}: {key} is not one of the --key cameras {', '.join(args.keys)}")
        masks[key] = path
    if args.memory == "none":
        given = "--memory-source objects" if args.memory_source != "frame" else "--memory-masks" if masks else None
        if given:
            raise CLIError(f"{given} goes with --memory sam2 (the policy memory's cache)")
        return masks
    if args.prompts is not None:
        raise CLIError("--memory sam2 tracks no objects (--prompts): make the mask cache with `sam2-encoder masks`")
    if args.memory_source == "frame" and masks:
        raise CLIError("--memory-masks goes with --memory-source objects (the frame source stores no masks)")
    missing = [k for k in args.keys if k not in masks]
    if args.memory_source == "objects" and missing:
        raise CLIError(
            f"--memory-source objects stores each frame's memory with its object masks: give --memory-masks "
            f"{missing[0]}=MASKS.zarr (from `sam2-encoder masks`) for every --key"
        )
    return masks


def run_memory(args: argparse.Namespace, masks: dict[str, str]) -> int:
    """``cache --memory sam2``: build (or resume) the policy memory's feature cache.

    Raises:
        CLIError: For a key not in the replay buffer, or no zarr.
    """
    say(f"cache: loading torch, zarr and {args.variant} at {args.image_size}x{args.image_size} (with the memory)")
    import torch

    try:
        from ..diffusion_policy.memory_cache import build_memory_cache, default_memory_cache_path
    except ImportError as e:
        raise needs_zarr("cache", e) from e
    from ..config import MemoryConfig
    from ..image_encoder import SAM2ImageEncoder
    from ..policy_memory import MemoryModules

    if args.threads:
        torch.set_num_threads(args.threads)
    with torchrun_group(args.device) as (device, rank, world, barrier):
        encoder = build_model(
            SAM2ImageEncoder,
            args,
            "features",
            announce=rank == 0,
            device=device,
            channel_order=args.channel_order,
            download=args.download,
        )
        config = MemoryConfig("sam2", memory_source=args.memory_source)
        memory = MemoryModules(encoder, config, args.checkpoint, download=args.download).to(device)
        out = args.out or default_memory_cache_path(args.replay, encoder.variant.name, args.image_size)
        start = time.perf_counter()
        path = _build(build_memory_cache, args, encoder, memory, out, masks, rank, world, barrier)
        if rank == 0:
            seconds = time.perf_counter() - start
            print(f"memory feature cache ready: {path} ({seconds:.1f} s, {plural(world, 'process', 'processes')})")
    return 0


def _build(build: Any, args: argparse.Namespace, encoder, memory, out, masks, rank, world, barrier) -> Any:
    try:
        return build(
            args.replay,
            args.keys,
            encoder,
            memory,
            out=out,
            levels=args.levels,
            dtype=args.dtype,
            chunk_frames=args.batch_size,
            masks=masks or None,
            progress=not args.quiet,
            rank=rank,
            world_size=world,
            barrier=barrier,
        )
    except KeyError as e:  # a key not in the replay buffer: its message is the first argument
        raise CLIError(str(e.args[0]) if e.args else str(e)) from e
    except ValueError as e:  # levels without s16, masks that do not fit
        raise CLIError(str(e)) from e
