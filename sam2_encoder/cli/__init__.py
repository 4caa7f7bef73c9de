"""The ``sam2-encoder`` command line: one module per command, heavy imports inside each command.

``encode`` (images or a generated scene -> pyramid shapes and time), ``download`` (Meta checkpoints,
pinned and verified), ``cache`` (a zarr feature cache of a Diffusion Policy replay buffer),
``masks`` (tracker masks of every episode of a replay buffer, for object tokens), ``track`` (a
video through the streaming tracker) and ``doctor`` (what is installed and visible).

A user mistake prints one ``error: ...`` line and exits with status 2; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from . import cache, demo_data, doctor, download, encode, export, lerobot_cache, masks, track
from .common import CLIError

__all__ = ["build_parser", "main"]

_COMMANDS = (encode, download, cache, lerobot_cache, masks, track, export, doctor, demo_data)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose mistakes are one ``error: ...`` line (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sam2-encoder`` with all subcommands."""
    parser = _Parser(
        prog="sam2-encoder",
        description="SAM 2 as the eyes of a visuomotor policy: encode, download, cache, masks, track.",
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
        ("sam2_encoder.diffusion_policy.mask_cache", "MaskCacheError"),
        ("sam2_encoder._hf", "TransformersCompatError"),
    ):
        loaded = sys.modules.get(module)
        if loaded is not None:
            errors.append(getattr(loaded, name))
    return tuple(errors)


def _one_line(e: BaseException) -> str:
    """The error's message on one line (a ``KeyError`` without its quotes), or its type when empty."""
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return text or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sam2-encoder`` console script.

    Returns:
        The exit status: 0 on success, 2 for a user error (``error: ...`` on stderr).
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or an argument error (2), already printed
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    try:
        return int(args.func(args) or 0)
    except Exception as e:  # noqa: BLE001 - sorted into user errors and bugs just below
        if args.debug or not isinstance(e, _user_errors()):
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
