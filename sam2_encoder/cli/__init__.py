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
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

from . import cache, demo_data, doctor, download, encode, export, lerobot_cache, masks, track
from .common import CLIError

__all__ = ["Terminated", "build_parser", "main"]

_COMMANDS = (encode, download, cache, lerobot_cache, masks, track, export, doctor, demo_data)


class _HelpFormatter(argparse.HelpFormatter):
    """Help that shows every option's default (unless it is empty or the help already names it)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "(default" in text
            or default is None
            or default is False  # a flag: off unless given
            or default == []
            or default is argparse.SUPPRESS
            or not action.option_strings
            or action.dest == "help"
        ):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, list | tuple) else "%(default)s"
        return f"{text} (default: {shown})" if text else f"(default: {shown})"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose mistakes are one ``error: ...`` line (no usage block), exit status 2.

    Subcommand parsers are of this class too (argparse builds them with ``type(parser)``), so every
    one shares the error format and the help formatter that shows defaults.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

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
        ("sam2_encoder.diffusion_policy.feature_store", "CacheError"),
        ("sam2_encoder.diffusion_policy.mask_store", "MaskCacheError"),
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


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a job scheduler, ``torchrun`` stopping its workers), raised like Ctrl-C.

    A ``KeyboardInterrupt`` so that every ``finally`` and ``except KeyboardInterrupt`` that cleans
    up after Ctrl-C cleans up after SIGTERM too.
    """


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While a command runs, SIGTERM raises :class:`Terminated` (main thread only; restored after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: Any) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sam2-encoder`` console script.

    Ctrl-C and SIGTERM stop a command the same way: its temporary outputs are removed (resumable
    caches and downloads keep what is finished), ``error: interrupted`` / ``error: terminated``
    is printed and the exit status is 130 / 143 (128 + the signal number, as a shell reports it).

    Returns:
        The exit status: 0 on success, 2 for a user error (``error: ...`` on stderr), 130 after
        Ctrl-C, 143 after SIGTERM.
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or an argument error (2), already printed
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    try:
        with _sigterm_as_interrupt():
            return int(args.func(args) or 0)
    except Exception as e:  # noqa: BLE001 - sorted into user errors and bugs just below
        if args.debug or not isinstance(e, _user_errors()):
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        if args.debug:
            raise
        terminated = isinstance(e, Terminated)
        print(f"error: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
