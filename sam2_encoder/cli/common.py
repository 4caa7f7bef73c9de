"""What the ``sam2-encoder`` commands share: the user-error type, argument types and model building.

Nothing here imports torch at module level: ``sam2-encoder --help`` must start in well under a
second.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

__all__ = [
    "CLIError",
    "add_model_args",
    "build_model",
    "image_side",
    "needs_zarr",
    "non_negative_int",
    "positive_int",
    "report_problems",
    "verify_cache_folder",
]


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


def image_side(text: str) -> int:
    """Argparse type: an encoder input side, a positive multiple of 32 (Hiera's window tiling)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive multiple of 32, got {text!r}") from None
    if value < 32 or value % 32:
        nearest = max(32, 32 * round(value / 32))
        raise argparse.ArgumentTypeError(f"expected a positive multiple of 32, got {value} (nearest valid: {nearest})")
    return value


def add_model_args(p: argparse.ArgumentParser, image_size: int, model_dtype: bool = True) -> None:
    """``--variant``, ``--checkpoint``, ``--image-size``, ``--device`` (and ``--dtype``).

    ``--variant`` and ``--device`` are checked by :func:`build_model` (checking them here would
    import transformers and torch for ``--help``).
    """
    p.add_argument("--variant", default="sam2.1_hiera_tiny", help="released model name (default: %(default)s)")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="Meta .pt / safetensors / HF folder / URL / variant name / hub id; omitted: seeded random weights",
    )
    p.add_argument("--image-size", type=image_side, default=image_size, help="encoder input side, multiple of 32")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps")
    if model_dtype:
        p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])


def build_model(cls: type, args: argparse.Namespace, what: str, announce: bool = True, **kwargs: Any) -> Any:
    """``cls(args.variant, checkpoint=..., image_size=..., **kwargs)`` for a command.

    Without ``--checkpoint`` the model has seeded random weights: say so once on stderr (when
    ``announce``) instead of the library's warning.
    """
    check_model_args(args)
    with warnings.catch_warnings():
        if args.checkpoint is None:
            warnings.simplefilter("ignore")
            if announce:
                print(f"no --checkpoint: seeded random weights ({what} are not meaningful)", file=sys.stderr)
        return cls(args.variant, checkpoint=args.checkpoint, image_size=args.image_size, **kwargs)


def check_model_args(args: argparse.Namespace) -> None:
    """``--variant`` is a released model and ``--device`` exists here.

    Raises:
        CLIError: Naming the option and the value, with the choices.
    """
    import torch

    from ..variants import get_variant

    try:
        get_variant(args.variant)
    except ValueError as e:
        raise CLIError(f"--variant {args.variant!r}: {e}") from None
    device = getattr(args, "device", None)
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise CLIError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {device}: no CUDA device is visible to torch {torch.__version__}")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CLIError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise CLIError(f"--device {device}: MPS is not available here")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise CLIError(f"--device {device}: only cpu, cuda and mps are supported")


class EpisodeProgress:
    """Progress of a tracking run over a replay buffer's episodes (``masks``, ``cache --prompts``).

    Its methods are the ``on_start`` / ``on_episode`` / ``on_damaged`` callbacks of
    :func:`~sam2_encoder.diffusion_policy.mask_cache.build_mask_cache`; use it as a context manager
    so the bar is closed however the run ends.

    Args:
        out: The mask cache being written (named in resume and repair messages).
        desc: The progress bar's label.
        quiet: No progress bar.
    """

    def __init__(self, out: object, desc: str, quiet: bool) -> None:
        self.out, self.desc, self.quiet = out, desc, quiet
        self.bar: Any = None

    def start(self, done: int, total: int) -> None:
        from tqdm.auto import tqdm

        if done:
            print(f"resuming {self.out}: {done} of {total} episodes already tracked", file=sys.stderr)
        self.bar = tqdm(total=total, initial=done, desc=self.desc, unit="episode", disable=self.quiet)

    def damaged(self, problems: list[str]) -> None:
        for problem in problems:
            print(f"warning: {problem}", file=sys.stderr)
        print(f"{self.out}: tracking the damaged episodes again", file=sys.stderr)

    def step(self, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.update(done - self.bar.n)

    def __enter__(self) -> EpisodeProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def needs_zarr(command: str, error: ImportError) -> CLIError:
    """The error of a command run without zarr installed (``sam2-encoder[dp]``)."""
    return CLIError(f"the {command} command needs zarr: pip install 'sam2-encoder[dp]' ({error})")


_VERIFIED = {  # command: (what the cache is called in the advice, what a whole one prints)
    "cache": ("cache", "every chunk matches its checksum"),
    "masks": ("mask cache", "every frame's masks match their checksum"),
}


def verify_cache_folder(command: str, path: str) -> int:
    """``sam2-encoder cache|masks --verify PATH``: check a whole cache and report each problem.

    Args:
        command: ``"cache"`` (a feature cache) or ``"masks"`` (a mask cache).
        path: The cache folder.

    Returns:
        0 for a whole cache, 2 otherwise (see :func:`report_problems`).

    Raises:
        CLIError: Without zarr.
    """
    try:  # both kinds, so that either names the other when given the wrong folder
        from ..diffusion_policy.feature_cache import verify_cache
        from ..diffusion_policy.mask_cache import verify_mask_cache
    except ImportError as e:
        raise needs_zarr(command, e) from e
    verify = verify_cache if command == "cache" else verify_mask_cache
    return report_problems(path, verify(path), *_VERIFIED[command])


def report_problems(path: str, problems: list[str], what: str, whole: str) -> int:
    """Print a ``--verify`` result: one ``error:`` line per problem and a summary; the exit status.

    Args:
        path: The checked cache.
        problems: What the check found (empty: the cache is whole).
        what: The kind of cache, for the advice (``"cache"``, ``"mask cache"``).
        whole: What is printed for a whole cache.

    Returns:
        0 for a whole cache, 2 otherwise.
    """
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        print(f"{path}: {len(problems)} problem(s); delete the {what} and rebuild it", file=sys.stderr)
        return 2
    print(f"{path}: {whole}")
    return 0
