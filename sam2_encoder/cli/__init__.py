"""The ``sam2-encoder`` command line: one module per command, heavy imports inside each command.

``encode`` (images or a generated scene -> pyramid shapes and time), ``download`` (Meta checkpoints,
pinned and verified), ``cache`` (a zarr feature cache of a Diffusion Policy replay buffer),
``track`` (a video through the streaming tracker) and ``doctor`` (what is installed and visible).

A user mistake prints one ``error: ...`` line and exits with status 2; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import cache, doctor, download, encode, track
from .common import CLIError

__all__ = ["build_parser", "main"]

_COMMANDS = (encode, download, cache, track, doctor)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sam2-encoder`` with all subcommands."""
    parser = argparse.ArgumentParser(
        prog="sam2-encoder", description="SAM 2 as the eyes of a visuomotor policy: encode, download, cache, track."
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in _COMMANDS:
        command.register(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input rather than a bug (library errors imported only if loaded)."""
    errors: list[type[BaseException]] = [CLIError, ValueError, TypeError, OSError, ImportError]
    for module, name in (
        ("sam2_encoder.checkpoints", "CheckpointError"),
        ("sam2_encoder.diffusion_policy.feature_cache", "CacheError"),
        ("sam2_encoder._hf", "TransformersCompatError"),
    ):
        loaded = sys.modules.get(module)
        if loaded is not None:
            errors.append(getattr(loaded, name))
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sam2-encoder`` console script.

    Returns:
        The exit status: 0 on success, 2 for a user error (``error: ...`` on stderr).
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Exception as e:  # noqa: BLE001 - sorted into user errors and bugs just below
        if args.debug or not isinstance(e, _user_errors()):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
