"""What the ``sam2-encoder`` commands share: the user-error type, argument types and model building.

Nothing here imports torch at module level: ``sam2-encoder --help`` must start in well under a
second.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..downloads import pid_alive

__all__ = [
    "CLIError",
    "NewFolders",
    "add_model_args",
    "build_model",
    "image_side",
    "needs_zarr",
    "no_new_empty_folders",
    "non_negative_int",
    "pid_alive",
    "plural",
    "positive_int",
    "remove_stale_partials",
    "report_problems",
    "say",
    "torchrun_group",
    "verify_cache_folder",
]


class CLIError(Exception):
    """A mistake in what the user asked for: printed as one ``error: ...`` line, exit status 2."""


def say(text: str) -> None:
    """Tell the user at a terminal what the command is doing now, before a slow step.

    Printed to stderr and flushed, so it shows before the import of torch and transformers (seconds
    on a loaded machine); only when stderr is a terminal, so logs and pipes get results and errors
    only.
    """
    stream = sys.stderr
    if stream is not None and stream.isatty():
        print(text, file=stream, flush=True)


def plural(count: int, word: str, words: str | None = None) -> str:
    """``"1 frame"``, ``"3 frames"`` (``words``: the plural when it is not ``word + "s"``)."""
    return f"{count} {word if count == 1 else words or word + 's'}"


def remove_stale_partials(folder: Path, name: str, suffix: str) -> list[Path]:
    """Remove ``folder/.<name>.<pid><suffix>`` left by processes that are no longer alive.

    A command writes its output under such a hidden name and renames it into place when done;
    Ctrl-C and SIGTERM remove it, but a killed process (SIGKILL, out of memory, power loss)
    cannot. The next run of the command removes those of dead processes; those of running ones
    are theirs.

    Args:
        folder: Where the output goes.
        name: The output's file or folder name.
        suffix: What follows the pid (``".partial"``, ``".tmp"``).

    Returns:
        What was removed.
    """
    pattern = re.compile(rf"\.{re.escape(name)}\.(\d+){re.escape(suffix)}")
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or int(match.group(1)) == os.getpid() or pid_alive(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _missing_folders(path: Path) -> list[Path]:
    """``path`` and its parents that do not exist yet, deepest first."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    return missing


class NewFolders:
    """The folders a step may create under ``roots`` (and the roots), to remove those it leaves empty.

    For downloads and model loading: the target folder (``--dir``, the checkpoint cache, its
    ``hub/<id>`` folder) is created before the first byte arrives, so a failure would leave empty
    folders behind. What holds a file (a resumable ``.part``) stays, and so does every folder
    that existed before.
    """

    def __init__(self, *roots: Path) -> None:
        self.missing = [p for root in roots for p in _missing_folders(Path(root))]
        self.before = {Path(root): _folders(Path(root)) for root in roots}

    def remove_empty(self) -> None:
        """Remove the folders created since, deepest first, that hold nothing."""
        new = [p for root, before in self.before.items() for p in _folders(root) - before]
        for folder in sorted(new, key=lambda p: len(p.parts), reverse=True) + self.missing:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                pass


@contextmanager
def no_new_empty_folders(*roots: Path) -> Iterator[None]:
    """A step that fails (or is interrupted) leaves no empty folder under ``roots`` (see :class:`NewFolders`)."""
    folders = NewFolders(*roots)
    try:
        yield
    except BaseException:
        folders.remove_empty()
        raise


def _folders(root: Path) -> set[Path]:
    """Every folder under ``root`` (not following links); empty if there is none."""
    if not root.is_dir():
        return set()
    return {Path(top) / d for top, dirs, _ in os.walk(root) for d in dirs}


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
    p.add_argument(
        "--image-size", type=image_side, default=image_size, help="encoder input side in pixels, a multiple of 32"
    )
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps")
    if model_dtype:
        p.add_argument(
            "--dtype",
            default="float32",
            choices=["float32", "bfloat16", "float16"],
            help="dtype of the model's weights and computation (--precision bf16 is the faster bf16 on CPU)",
        )


def build_model(cls: type, args: argparse.Namespace, what: str, announce: bool = True, **kwargs: Any) -> Any:
    """``cls(args.variant, checkpoint=..., image_size=..., **kwargs)`` for a command.

    Without ``--checkpoint`` the model has seeded random weights: say so once on stderr (when
    ``announce``) instead of the library's warning. A checkpoint fetch that fails leaves no empty
    folder in the checkpoint cache.
    """
    from ..downloads import cache_dir

    check_model_args(args)
    with warnings.catch_warnings(), no_new_empty_folders(cache_dir()):  # a failed hub / URL fetch: no empty folder
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
            raise CLIError(f"--device {device}: only {plural(torch.cuda.device_count(), 'CUDA device')} visible")
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
            print(f"resuming {self.out}: {done} of {plural(total, 'episode')} already tracked", file=sys.stderr)
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


_VERIFIED = {  # command: (what the cache is called in the advice, what a whole one prints, a rerun repairs)
    "cache": ("cache", "every chunk matches its checksum", False),
    "masks": ("mask cache", "every frame's masks match their checksum", True),
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
    say(f"checking {path} (loading zarr)")
    try:  # both kinds, so that either names the other when given the wrong folder (numpy and zarr only)
        from ..diffusion_policy.feature_store import verify_cache
        from ..diffusion_policy.mask_store import verify_mask_cache
    except ImportError as e:
        raise needs_zarr(command, e) from e
    verify = verify_cache if command == "cache" else verify_mask_cache
    what, whole, rerun_repairs = _VERIFIED[command]
    return report_problems(path, verify(path), what, whole, command if rerun_repairs else None)


def _unfinished(problem: str) -> bool:
    """A ``--verify`` problem that says the cache is unfinished (its advice: rerun the same command)."""
    return " is incomplete (" in problem and "rerun the same" in problem


def report_problems(path: str, problems: list[str], what: str, whole: str, rerun_repairs: str | None = None) -> int:
    """Print a ``--verify`` result: one ``error:`` line per problem, a summary with ONE piece of advice.

    The advice follows the state: an unfinished cache (an interrupted run) with nothing else
    wrong is finished by rerunning the same command, which its problem line already says, so the
    summary adds nothing; damage is repaired by deleting the cache and rebuilding it, except in an
    unfinished cache whose command re-checks and redoes damaged units on a rerun
    (``rerun_repairs``).

    Args:
        path: The checked cache.
        problems: What the check found (empty: the cache is whole).
        what: The kind of cache, for the advice (``"cache"``, ``"mask cache"``).
        whole: What is printed for a whole cache.
        rerun_repairs: The command (``"masks"``) whose rerun of an unfinished cache also redoes
            the damaged units it finds, or ``None``.

    Returns:
        0 for a whole cache, 2 otherwise.
    """
    if not problems:
        print(f"{path}: {whole}")
        return 0
    unfinished = any(_unfinished(p) for p in problems)
    damaged = [p for p in problems if not _unfinished(p)]
    rebuild = bool(damaged) and (not unfinished or rerun_repairs is None)
    for problem in problems:
        if rebuild and _unfinished(problem):  # its "rerun" advice would contradict the summary's
            problem = problem.split(": rerun the same")[0]
        print(f"error: {problem}", file=sys.stderr)
    if not damaged:
        advice = "the run that built it did not finish"
    elif not rebuild:
        advice = f"rerun the same `{rerun_repairs}` command: it finishes the {what} and redoes what is damaged"
    else:
        advice = f"delete the {what} and rebuild it"
    print(f"{path}: {plural(len(problems), 'problem')}; {advice}", file=sys.stderr)
    return 2


@contextmanager
def torchrun_group(device: str) -> Iterator[tuple[str, int, int, Callable[[], Any] | None]]:
    """``(device, rank, world size, barrier)`` of this process; under ``torchrun``, inside a process group.

    Outside torchrun: ``(device, 0, 1, None)``. Under it (``WORLD_SIZE > 1``): a gloo (CPU) or nccl
    (CUDA, ``device`` then this rank's ``cuda:LOCAL_RANK``) group, destroyed on exit, and its barrier,
    so that a cache's chunks are shared across ranks.

    Args:
        device: The device asked for (``cpu``, ``cuda``...).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world == 1:
        yield device, rank, world, None
        return
    import torch
    import torch.distributed as dist

    cuda = device.startswith("cuda")
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    try:
        yield device, rank, world, dist.barrier
    finally:
        dist.destroy_process_group()
