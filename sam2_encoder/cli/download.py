"""``sam2-encoder download VARIANT ... | --all``: fetch Meta checkpoints, verify them, pin their sha256.

Every file goes through :func:`sam2_encoder.checkpoints.download_variant`: a download (or a file
already present) is accepted only after it loads as a complete, finite checkpoint of the named
variant and matches its published or pinned sha256; a present file that fails is replaced.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["register", "run"]


def register(sub: Any) -> argparse.ArgumentParser:
    """Add the ``download`` subcommand to a ``sam2-encoder`` subparsers object."""
    p = sub.add_parser("download", help="download Meta checkpoints, verify them and pin their sha256")
    p.add_argument("variants", nargs="*", help="variant names, e.g. sam2.1_hiera_tiny")
    p.add_argument("--all", action="store_true", help="all eight released checkpoints")
    p.add_argument("--dir", help="target folder (default: the cache, $SAM2_ENCODER_CACHE)")
    p.add_argument("--base-url", help="mirror to download from instead of Meta's host")
    p.add_argument("--force", action="store_true", help="download again even if present, and re-pin")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``sam2-encoder download`` with parsed arguments.

    Each variant is handled in turn; a failure prints one ``error: ...`` line and the others are
    still tried. Folders the command created and left empty (``--dir``, the cache) are removed
    when a download fails; an interrupted transfer's ``.part`` stays for the rerun to resume.

    Returns:
        0 when every variant is present and verified, 2 when any failed.

    Raises:
        CLIError: For no variant named, an unknown variant name, or a ``--dir`` that is a file.
    """
    from .common import CLIError, NewFolders, say

    names = list(args.variants)
    if names or args.all:
        say(f"download: loading torch to verify {'all variants' if args.all else ', '.join(names)}")
    from ..checkpoints import CheckpointError, cache_dir, download_variant
    from ..variants import VARIANTS, get_variant

    names = list(VARIANTS) if args.all else names
    if not names:
        raise CLIError("name at least one variant, or --all; known: " + ", ".join(VARIANTS))
    for name in names:  # every name checked before anything is fetched
        try:
            get_variant(name)
        except ValueError as e:
            raise CLIError(str(e)) from e
    directory = Path(args.dir) if args.dir else cache_dir()
    if directory.exists() and not directory.is_dir():
        raise CLIError(f"--dir {directory} is a file, not a folder")
    created = NewFolders(directory)  # a failed download leaves no empty --dir (or cache) folder
    failed = 0
    try:
        for name in names:
            try:
                result = download_variant(
                    name, directory, base_url=args.base_url, force=args.force, progress=not args.quiet
                )
            except (CheckpointError, OSError, ValueError) as e:
                print(f"error: {name}: {e}", file=sys.stderr)
                failed += 1
                continue
            print(f"{result.variant}: {result.status} {result.path} sha256={result.sha256} ({result.check})")
            for note in result.notes:
                print(f"  note: {note}")
    except BaseException:
        created.remove_empty()
        raise
    if failed:
        created.remove_empty()
    return 2 if failed else 0
