"""``sam2-encoder download VARIANT ... | --all``: fetch Meta checkpoints, pin and verify their sha256."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["register", "run"]


def register(sub: Any) -> argparse.ArgumentParser:
    """Add the ``download`` subcommand to a ``sam2-encoder`` subparsers object."""
    p = sub.add_parser("download", help="download Meta checkpoints and verify their sha256")
    p.add_argument("variants", nargs="*", help="variant names, e.g. sam2.1_hiera_tiny")
    p.add_argument("--all", action="store_true", help="all eight released checkpoints")
    p.add_argument("--dir", help="target folder (default: the cache, $SAM2_ENCODER_CACHE)")
    p.add_argument("--base-url", help="mirror to download from instead of Meta's host")
    p.add_argument("--force", action="store_true", help="download again even if present")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


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


def run(args: argparse.Namespace) -> int:
    """Run ``sam2-encoder download`` with parsed arguments; returns the exit status."""
    from ..checkpoints import CheckpointError, cache_dir, download, sha256sum
    from ..variants import VARIANTS, get_variant
    from .common import CLIError

    names = list(VARIANTS) if args.all else args.variants
    if not names:
        raise CLIError("name at least one variant, or --all; known: " + ", ".join(VARIANTS))
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
    return 2 if failed else 0
