"""``sam2-encoder lerobot-cache``: a LeRobotDataset's cameras through a sam2_diffusion policy's frozen SAM 2 trunk.

The cache that ``lerobot-train --policy.type=sam2_diffusion --dataset.root=CACHE/dataset --policy.feature_cache=CACHE``
trains from (:mod:`sam2_encoder.lerobot.feature_cache`; ``CACHE/dataset`` is the dataset without the
cached cameras' video, :mod:`sam2_encoder.lerobot.dataset_view`). Give the policy's options as ``lerobot-train``
takes them, without the ``--policy.`` prefix (``--policy sam2_variant=tiny --policy
sam2_image_size=224``): the cache records what its features depend on, and training refuses a cache
built with other options by name. Resumable (rerun the same command after a kill), sharded across
ranks under ``torchrun``; ``--verify CACHE`` checks every chunk against its checksum. Needs LeRobot
0.6 (Python >= 3.12) and zarr.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

from .common import CLIError, non_negative_int, plural, positive_int, report_problems, torchrun_group

__all__ = ["policy_config", "register", "run"]


def register(sub: Any) -> argparse.ArgumentParser:
    """Add the ``lerobot-cache`` subcommand to a ``sam2-encoder`` subparsers object."""
    p = sub.add_parser(
        "lerobot-cache",
        help="encode a LeRobotDataset's cameras with a sam2_diffusion policy's frozen SAM 2 trunk into a feature "
        "cache for lerobot-train --policy.feature_cache (resumable; shards under torchrun), or --verify one",
    )
    p.add_argument("--repo-id", help="the dataset's repo id (--dataset.repo_id; in the LeRobot cache or at --root)")
    p.add_argument("--root", help="the dataset's local folder (--dataset.root)")
    p.add_argument("--video-backend", help="LeRobot's video backend (--dataset.video_backend; default: LeRobot's)")
    p.add_argument("--out", help="the cache folder (resumed when it holds a cache of the same arguments)")
    p.add_argument(
        "--policy",
        dest="policy_options",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a sam2_diffusion option as lerobot-train takes it, without --policy. (repeat; e.g. sam2_variant=tiny)",
    )
    p.add_argument("--camera", action="append", help="a camera to cache (repeat; default: every camera)")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="storage dtype of features")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=8,
        help="frames per chunk and per encoder batch (small chunks: training reads frames at random)",
    )
    p.add_argument("--verify", metavar="CACHE", help="check every chunk of an existing cache; exit 2 if any is bad")
    p.add_argument("--threads", type=non_negative_int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def _needs_lerobot(error: ImportError) -> CLIError:
    return CLIError(
        f"lerobot-cache needs LeRobot 0.6 (Python >= 3.12) and zarr: pip install ./integration/lerobot "
        f"'sam2-encoder[dp]' ({error})"
    )


def policy_config(options: list[str]) -> Any:
    """A ``SAM2DiffusionConfig`` from ``NAME=VALUE`` strings, parsed as ``lerobot-train`` parses ``--policy.NAME``.

    Raises:
        CLIError: For a string without ``=``, an option sam2_diffusion does not have, or a value it refuses.
    """
    import draccus

    from ..lerobot import SAM2DiffusionConfig

    names = {f.name for f in dataclasses.fields(SAM2DiffusionConfig)}
    for option in options:
        name = option.split("=", 1)[0].removeprefix("--").removeprefix("policy.")
        if "=" not in option:
            raise CLIError(f"--policy {option}: give NAME=VALUE, e.g. --policy sam2_variant=tiny")
        if name not in names:
            raise CLIError(f"--policy {option}: sam2_diffusion has no option {name!r}")
    args = [f"--{o.removeprefix('--').removeprefix('policy.')}" for o in options]
    try:
        return draccus.parse(SAM2DiffusionConfig, args=args)
    except SystemExit:  # draccus printed what it could not parse
        raise CLIError(f"--policy options {' '.join(options)} cannot be parsed (see above)") from None


def run(args: argparse.Namespace) -> int:
    """Run ``sam2-encoder lerobot-cache`` with parsed arguments; returns the exit status.

    Raises:
        CLIError: Without LeRobot, for ``--verify`` mixed with a build, or a missing ``--repo-id`` / ``--out``.
    """
    try:
        from ..lerobot import feature_cache
    except ImportError as e:
        raise _needs_lerobot(e) from e
    if args.verify is not None:
        if args.repo_id is not None or args.policy_options or args.out is not None:
            raise CLIError("--verify CACHE checks an existing cache: give no --repo-id, --out or --policy with it")
        return report_problems(
            args.verify, feature_cache.verify_lerobot_cache(args.verify), "cache", "LeRobot feature cache is whole"
        )
    if args.repo_id is None or args.out is None:
        raise CLIError("give the dataset (--repo-id ID [--root DIR]) and the cache folder (--out CACHE), or --verify")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    config = policy_config(args.policy_options)
    with torchrun_group(str(config.device)) as (device, rank, world, barrier):
        if device != str(config.device):  # this rank's GPU under torchrun
            config.device = device
        _build(args, config, feature_cache, rank, world, barrier)
    return 0


def _build(args: argparse.Namespace, config: Any, feature_cache: Any, rank: int, world: int, barrier: Any) -> None:
    """Open the dataset, make the policy as ``lerobot-train`` does, and build the cache."""
    from lerobot.policies.factory import make_policy

    from ..lerobot.dataset_view import VIEW_DIR

    dataset = feature_cache.open_dataset(args.repo_id, args.root, args.video_backend)
    policy = make_policy(config, ds_meta=dataset.meta)
    policy.eval()
    cameras = args.camera or None
    unknown = [c for c in cameras or [] if c not in policy.encoder.rgb_keys]
    if unknown:
        raise CLIError(f"--camera {' '.join(unknown)}: not a camera of the dataset; cameras: {policy.encoder.rgb_keys}")
    start = time.perf_counter()
    path = feature_cache.build_lerobot_cache(
        dataset,
        policy.encoder,
        args.out,
        cameras=cameras,
        dtype=args.dtype,
        chunk_frames=args.batch_size,
        progress=not args.quiet,
        rank=rank,
        world_size=world,
        barrier=barrier,
    )
    if rank == 0:
        seconds = time.perf_counter() - start
        print(
            f"LeRobot feature cache ready: {path} ({plural(dataset.meta.total_frames, 'frame')}, {seconds:.1f} s, "
            f"{plural(world, 'process', 'processes')}); train with --dataset.root={path / VIEW_DIR} "
            f"--policy.feature_cache={path} (the dataset without the cached cameras' video)"
        )
