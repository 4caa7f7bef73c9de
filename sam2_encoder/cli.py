"""The ``sam2-encoder`` command line.

``sam2-encoder encode [IMAGE ...]``: encode images (or a generated test scene) and print the
pyramid shapes and time per image. ``sam2-encoder download VARIANT ...``: fetch and verify Meta
checkpoints.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["main", "synthetic_scene"]


def synthetic_scene(height: int = 480, width: int = 640, seed: int = 0) -> np.ndarray:
    """A deterministic test image: a table-top-like scene with a few coloured shapes.

    Args:
        height: Image height.
        width: Image width.
        seed: Seed of the shape placement.

    Returns:
        ``(height, width, 3)`` uint8 RGB.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([0.55 + 0.25 * yy / height, 0.5 + 0.1 * xx / width, 0.45 + 0.0 * xx], axis=-1)
    for _ in range(6):
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.15, 0.85) * width
        r = rng.uniform(0.05, 0.15) * min(height, width)
        inside = (
            (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
            if rng.random() < 0.5
            else ((np.abs(yy - cy) < r) & (np.abs(xx - cx) < r * 1.3))
        )
        image[inside] = rng.uniform(0.05, 0.95, size=3)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def _add_model_args(p: argparse.ArgumentParser, image_size: int, model_dtype: bool = True) -> None:
    p.add_argument("--variant", default="sam2.1_hiera_tiny", help="released model name (default: %(default)s)")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="Meta .pt / safetensors / HF folder / URL / variant name / hub id; omitted: seeded random weights",
    )
    p.add_argument("--image-size", type=int, default=image_size, help="encoder input side, multiple of 32")
    p.add_argument("--device", default="cpu")
    if model_dtype:
        p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])


def build_model(cls, args: argparse.Namespace, what: str, announce: bool = True, **kwargs):
    """``cls(args.variant, checkpoint=..., image_size=..., **kwargs)`` for a command.

    Without ``--checkpoint`` the model has seeded random weights: say so once on stderr (when
    ``announce``) instead of the library's warning.
    """
    with warnings.catch_warnings():
        if args.checkpoint is None:
            warnings.simplefilter("ignore")
            if announce:
                print(f"no --checkpoint: seeded random weights ({what} are not meaningful)", file=sys.stderr)
        return cls(args.variant, checkpoint=args.checkpoint, image_size=args.image_size, **kwargs)


def _cmd_encode(args: argparse.Namespace) -> int:
    import torch

    from .image_encoder import SAM2ImageEncoder

    if args.threads:
        torch.set_num_threads(args.threads)
    from .streaming_cli import read_image

    images = [read_image(Path(p)) for p in args.images] or [synthetic_scene()]
    source = ", ".join(args.images) if args.images else "generated 480x640 test scene"
    encoder = build_model(
        SAM2ImageEncoder,
        args,
        "features",
        device=args.device,
        dtype=getattr(torch, args.dtype),
        channel_order=args.channel_order,
    )
    batch = [images[i % len(images)] for i in range(max(args.batch_size, len(images)))]
    encoder(batch[:1])  # warm-up
    times = []
    from tqdm.auto import tqdm

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
        "threads": torch.get_num_threads(),
    }
    if args.out:
        from safetensors.torch import save_file

        out = Path(args.out)
        tmp = out.with_name(out.name + ".tmp")
        save_file({k: v.float().contiguous().cpu() for k, v in pyramid.as_dict().items()}, str(tmp))
        tmp.replace(out)
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


def _read_sums(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    sums = {}
    for line in path.read_text().splitlines():
        digest, _, name = line.strip().partition("  ")
        if name:
            sums[name] = digest
    return sums


def _write_sums(path: Path, sums: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items())))
    tmp.replace(path)


def _cmd_download(args: argparse.Namespace) -> int:
    from .checkpoints import CheckpointError, cache_dir, download, sha256sum
    from .variants import VARIANTS, get_variant

    names = list(VARIANTS) if args.all else args.variants
    if not names:
        print("name at least one variant, or --all; known: " + ", ".join(VARIANTS), file=sys.stderr)
        return 2
    directory = Path(args.dir) if args.dir else cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    sums_path = directory / "SHA256SUMS"
    sums = _read_sums(sums_path)
    failed = 0
    for name in names:
        try:
            variant = get_variant(name)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        dest = directory / variant.filename
        url = f"{args.base_url.rstrip('/')}/{variant.filename}" if args.base_url else variant.url
        expected = variant.sha256 or sums.get(variant.filename)
        source = "published" if variant.sha256 else f"pinned in {sums_path}" if expected else None
        try:
            if args.force:
                dest.unlink(missing_ok=True)
            status = "present" if dest.exists() else "downloaded"
            if not dest.exists():
                download(url, dest, sha256=expected, progress=not args.quiet)
            digest = sha256sum(dest)
            if expected and digest != expected:
                raise CheckpointError(
                    f"{dest} has sha256 {digest}, expected {expected} ({source}); "
                    "delete it or pass --force to download again"
                )
        except CheckpointError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        if expected is None:
            sums[variant.filename] = digest
            _write_sums(sums_path, sums)
            check = f"no published sha256; pinned in {sums_path} for later checks"
        else:
            check = f"verified against the {source} sha256"
        print(f"{variant.name}: {status} {dest} sha256={digest} ({check})")
    return 1 if failed else 0


def _cmd_cache(args: argparse.Namespace) -> int:
    import os

    import torch

    from .feature_cache import build_cache, default_cache_path
    from .image_encoder import SAM2ImageEncoder

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


def _cmd_doctor(args: argparse.Namespace) -> int:
    import importlib.metadata as md
    import platform

    import torch

    from .checkpoints import cache_dir

    def version(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"

    print(f"python        {platform.python_version()} ({platform.machine()})")
    for name in ("sam2-encoder", "torch", "transformers", "hydra-core", "omegaconf", "zarr", "numpy", "safetensors"):
        print(f"{name:<13} {version(name)}")
    print(f"torch threads {torch.get_num_threads()}")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        print(
            f"device        cuda: {props.name}, {props.total_memory / 2**30:.0f} GiB, bf16 "
            f"{'yes' if torch.cuda.is_bf16_supported() else 'no'}"
        )
        backends = [
            n
            for n, on in (
                ("flash", torch.backends.cuda.flash_sdp_enabled()),
                ("mem_efficient", torch.backends.cuda.mem_efficient_sdp_enabled()),
                ("math", torch.backends.cuda.math_sdp_enabled()),
            )
            if on
        ]
        print(f"attention     torch SDPA, CUDA backends enabled: {', '.join(backends)}")
    else:
        print("device        cpu (no CUDA device visible)")
        print("attention     torch SDPA (CPU kernels)")
    folders = [cache_dir(), Path("checkpoints")]
    found = [p for folder in folders if folder.is_dir() for p in sorted(folder.glob("*.pt"))]
    print(
        "checkpoints   "
        + (
            ", ".join(f"{p} ({p.stat().st_size / 2**20:.0f} MiB)" for p in found)
            or f"none in {', '.join(map(str, folders))} (sam2-encoder download VARIANT)"
        )
    )
    ok = _hydra_plugin_visible()
    print(f"hydra plugin  {'visible: pkg://sam2_encoder.config on the search path' if ok else 'NOT visible'}")
    return 0 if ok else 1


def _hydra_plugin_visible() -> bool:
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl
    from hydra.core.config_search_path import ConfigSearchPath
    from hydra.core.plugins import Plugins
    from hydra.plugins.search_path_plugin import SearchPathPlugin

    search_path: ConfigSearchPath = ConfigSearchPathImpl()
    for plugin in Plugins.instance().discover(SearchPathPlugin):
        plugin().manipulate_search_path(search_path)
    return any(entry.path == "pkg://sam2_encoder.config" for entry in search_path.get_path())


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sam2-encoder`` with all subcommands."""
    parser = argparse.ArgumentParser(prog="sam2-encoder", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("encode", help="encode images and print the feature pyramid shapes and timing")
    p.add_argument("images", nargs="*", help="image files (.png/.jpg need Pillow; .npy HxWx3 uint8); none: test scene")
    _add_model_args(p, image_size=1024)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3, help="timed repetitions (median reported)")
    p.add_argument("--channel-order", default="RGB", choices=["RGB", "BGR"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", help="save the pyramid to this .safetensors file")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.set_defaults(func=_cmd_encode)

    p = sub.add_parser("download", help="download Meta checkpoints and verify their sha256")
    p.add_argument("variants", nargs="*", help="variant names, e.g. sam2.1_hiera_tiny")
    p.add_argument("--all", action="store_true", help="all eight released checkpoints")
    p.add_argument("--dir", help="target folder (default: the cache, $SAM2_ENCODER_CACHE)")
    p.add_argument("--base-url", help="mirror to download from instead of Meta's host")
    p.add_argument("--force", action="store_true", help="download again even if present")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser(
        "cache",
        help="encode a Diffusion Policy replay buffer into a zarr feature cache (resumable; shards under torchrun)",
    )
    p.add_argument("replay", help="replay buffer .zarr (data/<key> (N,H,W,3) uint8, meta/episode_ends)")
    p.add_argument("--keys", action="append", required=True, help="image key under data/ (repeat for cameras)")
    _add_model_args(p, image_size=224, model_dtype=False)
    p.add_argument("--levels", nargs="+", default=["s16"], choices=["s4", "s8", "s16"])
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="storage dtype of features")
    p.add_argument("--out", help="cache folder (default: beside the replay buffer)")
    p.add_argument("--batch-size", type=int, default=32, help="frames per chunk and per encoder batch")
    p.add_argument("--channel-order", default="RGB", choices=["RGB", "BGR"])
    p.add_argument("--download", action="store_true", help="allow downloading the checkpoint")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_cache)

    from .streaming_cli import register as register_track

    register_track(sub)

    p = sub.add_parser("doctor", help="versions, device, attention backend, checkpoints, Hydra plugin")
    p.set_defaults(func=_cmd_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sam2-encoder`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
