"""What the ``sam2-encoder`` commands share: the user-error type, argument types and model building.

Nothing here imports torch at module level: ``sam2-encoder --help`` must start in well under a
second.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

__all__ = ["CLIError", "add_model_args", "build_model", "positive_int", "non_negative_int"]


class CLIError(Exception):
    """A mistake in what the user asked for: printed as one ``error: ...`` line, exit status 2."""


def positive_int(text: str) -> int:
    """Argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """Argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value}")
    return value


def add_model_args(p: argparse.ArgumentParser, image_size: int, model_dtype: bool = True) -> None:
    """``--variant``, ``--checkpoint``, ``--image-size``, ``--device`` (and ``--dtype``)."""
    p.add_argument("--variant", default="sam2.1_hiera_tiny", help="released model name (default: %(default)s)")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="Meta .pt / safetensors / HF folder / URL / variant name / hub id; omitted: seeded random weights",
    )
    p.add_argument("--image-size", type=positive_int, default=image_size, help="encoder input side, multiple of 32")
    p.add_argument("--device", default="cpu")
    if model_dtype:
        p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])


def build_model(cls: type, args: argparse.Namespace, what: str, announce: bool = True, **kwargs: Any) -> Any:
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
