"""Time to first output (issue 23, point 3): a user at a terminal sees what a command is doing at once.

- ``import sam2_encoder``, building the parser and ``doctor``'s version list import neither torch
  nor transformers (versions come from the installed metadata);
- every command that loads torch first prints what it is doing (on a terminal: stderr is a tty),
  and that line comes before the first torch module is imported (``python -X importtime``
  prints each import as it finishes, on the same stream).
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TORCH_IMPORT = re.compile(r"import time:.*\|\s+torch(\.|$)")


def test_package_parser_and_doctor_versions_import_no_torch() -> None:
    """`import sam2_encoder`, the CLI's parser and doctor's version list leave torch and transformers unimported."""
    script = (
        "import json, sys\n"
        "import sam2_encoder\n"
        "from sam2_encoder.cli import build_parser\n"
        "from sam2_encoder.cli.doctor import print_versions\n"
        "build_parser().parse_args(['encode'])\n"
        "print_versions()\n"
        "print(json.dumps([m for m in ('torch', 'transformers', 'zarr') if m in sys.modules]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=120)
    lines = done.stdout.splitlines()
    assert json.loads(lines[-1]) == [], done.stdout
    assert lines[0].startswith("python ") and any(line.startswith("torch ") for line in lines)


def _on_a_terminal(argv: list[str], until: re.Pattern[str], deadline_s: float = 180) -> list[str]:
    """Run ``python -X importtime -m sam2_encoder.cli *argv`` on a pseudo-terminal until a line matches ``until``.

    Returns:
        The lines it printed (stdout and stderr, in order) up to the first match or its exit.
    """
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "sam2_encoder.cli", *argv],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        cwd=REPO,
        env=ENV,
    )
    os.close(slave)
    data, end = b"", time.monotonic() + deadline_s
    try:
        while time.monotonic() < end:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            data += chunk
            if any(until.search(line) for line in data.decode(errors="replace").splitlines()):
                break
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        os.close(master)
    return [line.strip("\r") for line in data.decode(errors="replace").splitlines()]


def _first(lines: list[str], pattern: re.Pattern[str] | str) -> int:
    found = [i for i, line in enumerate(lines) if (re.search(pattern, line))]
    assert found, f"no line matches {pattern!r}:\n" + "\n".join(lines[-40:])
    return found[0]


def _replay(path: Path) -> Path:
    from sam2_encoder.diffusion_policy.synthetic import write_replay_buffer

    return Path(write_replay_buffer(path, episodes=1, steps=2, size=32))


COMMANDS = [
    # (id, argv builder(tmp_path), the first line it prints)
    ("encode", lambda t: ["encode", "--image-size", "64"], r"^encode: loading torch and sam2\.1_hiera_tiny at 64x64"),
    (
        "track",
        lambda t: ["track", str(_npy(t / "c.npy")), "--point", "4,4", "--image-size", "64"],
        r"^track: loading torch and sam2\.1_hiera_tiny",
    ),
    ("cache", lambda t: ["cache", str(_replay(t / "r.zarr")), "--key", "img"], r"^cache: loading torch, zarr"),
    (
        "masks",
        lambda t: ["masks", str(_replay(t / "r.zarr")), "--key", "img", "--prompts", str(_prompts(t))],
        r"^masks: loading torch, zarr",
    ),
    (
        "download",
        lambda t: ["download", "sam2.1_hiera_tiny", "--dir", str(t), "--base-url", (t / "none").as_uri()],
        r"^download: loading torch to verify sam2\.1_hiera_tiny",
    ),
    ("doctor", lambda t: ["doctor"], r"^python\s+3\."),
]


def _npy(path: Path) -> Path:
    np.save(path, np.zeros((2, 8, 8, 3), np.uint8))
    return path


def _prompts(t: Path) -> Path:
    path = t / "p.json"
    path.write_text(json.dumps({"objects": [1], "episodes": {"0": {"1": {"points": [[4, 4]]}}}}))
    return path


@pytest.mark.parametrize("case", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_each_command_says_what_it_does_before_torch_is_imported(case, tmp_path: Path) -> None:
    """On a terminal, the command's first line precedes the import of torch (seconds on a loaded machine)."""
    _, build, first = case
    lines = _on_a_terminal(build(tmp_path), TORCH_IMPORT)
    assert _first(lines, first) < _first(lines, TORCH_IMPORT), "\n".join(lines[:40])


def test_verify_checks_a_whole_cache_without_torch(tmp_path: Path) -> None:
    """`cache --verify` and `masks --verify` of real caches: the result, with torch and transformers never imported.

    The check is CRC-32s and attributes (numpy and zarr), so it never waits for torch's import (the
    other commands, which need a model, say what they do before importing it: the test above).
    """
    from sam2_encoder.cli import main

    replay = _replay(tmp_path / "r.zarr")
    common = ["--image-size", "64", "--quiet"]
    assert main(["cache", str(replay), "--key", "img", "--out", str(tmp_path / "c.zarr"), *common]) == 0
    masks = ["masks", str(replay), "--key", "img", "--prompts", str(_prompts(tmp_path))]
    assert main([*masks, "--out", str(tmp_path / "m.zarr"), *common]) == 0
    script = (
        "import json, sys\n"
        "from sam2_encoder.cli import main\n"
        f"codes = [main(['cache', '--verify', {str(tmp_path / 'c.zarr')!r}]),"
        f" main(['masks', '--verify', {str(tmp_path / 'm.zarr')!r}])]\n"
        "print(json.dumps([codes, [m for m in ('torch', 'transformers') if m in sys.modules]]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=120)
    assert json.loads(done.stdout.splitlines()[-1]) == [[0, 0], []], done.stdout + done.stderr
