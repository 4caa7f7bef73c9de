"""``sam2-encoder cache REPLAY.zarr --key KEY ...``: encode a Diffusion Policy replay buffer into a zarr feature cache.

Resumable, and sharded across ranks when launched by ``torchrun``. ``sam2-encoder cache --verify
CACHE.zarr`` checks a whole cache (every chunk against its checksum) and lists each problem.
Needs zarr (``sam2-encoder[dp]``).

With ``--prompts P.json`` (the prompts file of ``sam2-encoder masks``) SAM 2's tracker follows the
prompted objects through every episode of one camera (``--mask-key``, default: the only ``--key``)
and its encoder pass of each frame is also the frame's cached features: one pass per frame gives
the feature cache and a mask cache beside it (``--masks-out``, default as ``sam2-encoder masks``:
``REPLAY.<key>_masks.zarr``). Other ``--key`` cameras are cached as without ``--prompts``.

``--key`` is spelled as in ``sam2-encoder masks``; the older ``--keys`` is the same option.

With ``--memory sam2`` the cache holds a frozen encoder's policy-memory inputs instead
(:mod:`.cache_memory`): training with ``memory="sam2"`` then skips the trunk and the memory encoder.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from .cache_memory import add_memory_args, check_memory_arguments, run_memory
from .common import (
    CLIError,
    EpisodeProgress,
    add_model_args,
    build_model,
    needs_zarr,
    non_negative_int,
    plural,
    positive_int,
    report_problems,
    say,
    torchrun_group,
    verify_cache_folder,
)

__all__ = ["register", "report_problems", "run"]  # report_problems: from .common, where it now lives


def register(sub: Any) -> argparse.ArgumentParser:
    """Add the ``cache`` subcommand to a ``sam2-encoder`` subparsers object."""
    p = sub.add_parser(
        "cache",
        help="encode a Diffusion Policy replay buffer into a zarr feature cache (resumable; shards under torchrun), "
        "or --verify one",
    )
    p.add_argument("replay", nargs="?", help="replay buffer .zarr (data/<key> (N,H,W,3) uint8, meta/episode_ends)")
    p.add_argument(
        "--key",
        "--keys",
        dest="keys",
        action="append",
        metavar="KEY",
        help="camera key under data/ (repeat for several cameras; --keys is the same option)",
    )
    p.add_argument("--verify", metavar="CACHE", help="check every chunk of an existing cache; exit 2 if any is bad")
    add_model_args(p, image_size=224, model_dtype=False)
    p.add_argument("--levels", nargs="+", default=["s16"], choices=["s4", "s8", "s16"], help="pyramid levels to store")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="storage dtype of features")
    p.add_argument("--out", help="cache folder (default: beside the replay buffer)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="frames per chunk and per encoder batch")
    p.add_argument("--channel-order", default="RGB", choices=["RGB", "BGR"], help="channel order of the frames")
    p.add_argument("--download", action="store_true", help="allow downloading the checkpoint")
    p.add_argument(
        "--prompts",
        metavar="P.json",
        help="also track objects from first-frame prompts (the JSON of `sam2-encoder masks`) through every episode "
        "of one camera into a mask cache; the tracker's encoder pass of each frame is also its cached features",
    )
    p.add_argument("--mask-key", help="the --key camera the prompts are for (default: the only --key)")
    p.add_argument(
        "--masks-out", help="mask cache folder with --prompts (default: REPLAY.<mask-key>_masks.zarr beside the replay)"
    )
    add_memory_args(p)
    p.add_argument("--threads", type=non_negative_int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``sam2-encoder cache`` with parsed arguments; returns the exit status.

    Raises:
        CLIError: For a missing replay buffer or key, ``--verify`` mixed with a build, or no zarr.
    """
    if args.verify is not None:
        _check_verify_arguments(args)
        return verify_cache_folder("cache", args.verify)
    _check_build_arguments(args)
    memory_masks = check_memory_arguments(args)
    if args.memory == "sam2":
        return run_memory(args, memory_masks)
    if args.prompts is not None:
        return _run_with_masks(args)
    say(f"cache: loading torch, zarr and {args.variant} at {args.image_size}x{args.image_size}")
    import torch

    try:
        from ..diffusion_policy.feature_cache import build_cache, default_cache_path
    except ImportError as e:
        raise needs_zarr("cache", e) from e
    from ..image_encoder import SAM2ImageEncoder

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
            seconds = time.perf_counter() - start
            print(f"feature cache ready: {path} ({seconds:.1f} s, {plural(world, 'process', 'processes')})")
    return 0


def _tracking_options(args: argparse.Namespace) -> dict[str, str | None]:
    return {"--prompts": args.prompts, "--mask-key": args.mask_key, "--masks-out": args.masks_out}


def _check_verify_arguments(args: argparse.Namespace) -> None:
    """``--verify CACHE`` takes no build argument."""
    if args.replay is not None or args.keys:
        raise CLIError("--verify CACHE checks an existing cache: give no replay buffer or --key with it")
    given = [name for name, value in _tracking_options(args).items() if value is not None]
    if given:
        raise CLIError(
            f"--verify CACHE checks an existing feature cache: give no {given[0]} with it "
            "(`sam2-encoder masks --verify MASKS` checks a mask cache)"
        )


def _check_build_arguments(args: argparse.Namespace) -> None:
    """A replay buffer that exists, distinct ``--key`` cameras, tracking options only with ``--prompts``."""
    if args.replay is None:
        raise CLIError("give the replay buffer to encode (REPLAY.zarr) and --key, or --verify CACHE")
    if not args.keys:
        raise CLIError(f"name the image keys of {args.replay} to encode with --key KEY (repeatable)")
    if not os.path.exists(args.replay):
        raise CLIError(f"replay buffer not found: {args.replay}")
    if len(set(args.keys)) != len(args.keys):
        twice = sorted({k for k in args.keys if args.keys.count(k) > 1})
        raise CLIError(f"--key {' '.join(twice)} given more than once")
    if args.prompts is None:
        for name, value in _tracking_options(args).items():
            if value is not None:
                raise CLIError(f"{name} {value} goes with --prompts P.json (the objects to track)")


def _run_with_masks(args: argparse.Namespace) -> int:
    """``cache --prompts``: the feature cache and a mask cache from one encoder pass per frame."""
    mask_key = _check_mask_arguments(args)
    say(f"cache: loading torch, zarr and {args.variant} at {args.image_size}x{args.image_size} (with the tracker)")
    try:
        from ..diffusion_policy.mask_cache import check_mask_inputs, default_mask_path
        from ..diffusion_policy.tracked_cache import build_cache_with_masks
    except ImportError as e:
        raise needs_zarr("cache", e) from e
    out = args.out  # default: beside the replay buffer, named after the model (as without --prompts)
    masks_out = args.masks_out or default_mask_path(args.replay, mask_key)
    if out is not None and os.path.abspath(out) == os.path.abspath(masks_out):
        raise CLIError(f"--out and --masks-out are both {out}: the feature cache and the mask cache need two folders")
    try:  # everything but the model, before building it
        check_mask_inputs(args.replay, mask_key, args.prompts, masks_out)
    except KeyError as e:
        raise CLIError(str(e.args[0]) if e.args else str(e)) from e
    import torch

    from ..checkpoints import weights_identity
    from ..streaming import StreamingPredictor

    if args.threads:
        torch.set_num_threads(args.threads)
    predictor = build_model(
        StreamingPredictor,
        args,
        "features and masks",
        device=args.device,
        channel_order=args.channel_order,
        download=args.download,
    )
    weights = weights_identity(args.checkpoint)  # what SAM2ImageEncoder.weights_id says for the same checkpoint
    # seeded random weights of the video model are not SAM2ImageEncoder's seeded ones: say so in the feature cache
    feature_weights = weights if args.checkpoint is not None else f"{weights}:video_model"
    began = time.perf_counter()
    with EpisodeProgress(masks_out, f"track {mask_key}", args.quiet) as progress:
        try:
            path, masks_path = build_cache_with_masks(
                args.replay,
                args.keys,
                predictor,
                args.prompts,
                weights,
                feature_weights=feature_weights,
                mask_key=mask_key,
                out=out,
                masks_out=masks_out,
                levels=args.levels,
                dtype=args.dtype,
                chunk_frames=args.batch_size,
                on_episode=progress.step,
                on_start=progress.start,
                on_damaged=progress.damaged,
            )
        except KeyError as e:
            raise CLIError(str(e.args[0]) if e.args else str(e)) from e
    seconds = time.perf_counter() - began
    print(f"feature cache ready: {path} ({seconds:.1f} s, 1 process, {mask_key} encoded once by the tracker)")
    print(f"mask cache ready: {masks_path}")
    return 0


def _check_mask_arguments(args: argparse.Namespace) -> str:
    """The camera ``--prompts`` tracks (``--mask-key``, or the one ``--key``), in one process, prompts on disk."""
    if args.mask_key is None and len(args.keys) > 1:
        raise CLIError(
            f"--prompts tracks one camera: with several --key cameras ({', '.join(args.keys)}) name it with --mask-key "
            "(the other keys are cached as usual)"
        )
    mask_key = args.mask_key or args.keys[0]
    if mask_key not in args.keys:
        raise CLIError(
            f"--mask-key {mask_key} is not one of the --key cameras {', '.join(args.keys)}: "
            "the tracked camera is cached too"
        )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise CLIError(
            "--prompts tracks each episode in one process: run it without torchrun (or cache without --prompts)"
        )
    if not os.path.isfile(args.prompts):
        raise CLIError(f"--prompts {args.prompts}: no such file")
    return mask_key
