"""The docs' examples are tests: every shell and Python block of README.md and the guides runs as written.

A block is a fenced ```bash / ```sh / ```console / ```python block of :data:`DOCS`. Each runs in a
fresh temporary folder (never the repository), shell blocks with ``bash -euo pipefail`` (of a
``console`` block, the ``$ `` lines), Python blocks in a subprocess, with this venv's ``python``
and ``sam2-encoder`` first on ``PATH``, one thread, no network (``HF_HUB_OFFLINE=1``) and their own
``$SAM2_ENCODER_CACHE``. The folder holds ``checkpoints/sam2.1_hiera_tiny.pt`` where
``sam2-encoder download sam2.1_hiera_tiny --dir checkpoints`` puts it: a checkpoint in Meta's
format with seeded weights (the download itself needs the network). Anything else a block needs it
makes itself (``sam2-encoder demo-data``).

The HTML comment on the line before a fence says when a block does not run here:

- ``<!-- skip: REASON -->``: never here (the network, a GPU, a real robot, a Diffusion Policy
  checkout, the set-up itself); the test skips with REASON.
- ``<!-- needs MODULE: REASON -->``: runs where ``MODULE`` is importable (``lerobot``: the LeRobot
  venv of .ci/lerobot.sh), skips with REASON elsewhere.

Every marker gives a reason (checked below).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [
    REPO / "README.md",
    REPO / "integration" / "diffusion_policy" / "README.md",
    REPO / "integration" / "lerobot" / "README.md",
    REPO / "docs" / "deploy.md",
]
LANGUAGES = {"bash", "sh", "console", "python"}
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*(?P<kind>skip|needs (?P<module>[\w.]+))\s*:\s*(?P<reason>.*?)\s*-->\s*$")
TIMEOUT_S = 600


@dataclass(frozen=True)
class Block:
    """One fenced example: where it is, its language, its text (dedented) and the marker before it."""

    path: Path
    line: int
    lang: str
    code: str
    marker: str | None

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def blocks_of(path: Path) -> list[Block]:
    """Every fenced block of ``path`` (any language), with the HTML comment on the line before it."""
    lines = path.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, start = m["indent"], i
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        body = [ln[len(indent) :] if ln.startswith(indent) else ln.lstrip() for ln in lines[start + 1 : end]]
        before = lines[start - 1] if start and lines[start - 1].lstrip().startswith("<!--") else None
        found.append(Block(path, start + 1, m["lang"], "\n".join(body) + "\n", before))
        i = end + 1
    return found


def examples() -> list[Block]:
    return [b for doc in DOCS if doc.is_file() for b in blocks_of(doc) if b.lang in LANGUAGES]


def skip_reason(block: Block) -> str | None:
    """Why ``block`` does not run here (its marker's reason), or ``None`` when it runs."""
    if block.marker is None:
        return None
    m = MARKER.match(block.marker)
    assert m and m["reason"], f"{block.id}: {block.marker!r} is not `<!-- skip: REASON -->` / `<!-- needs M: R -->`"
    if m["module"] is None:
        return m["reason"]
    return None if importlib.util.find_spec(m["module"]) else f"{m['reason']} (no {m['module']} here)"


def test_every_marker_gives_a_reason_and_the_docs_have_examples() -> None:
    """A comment before a fence is a known marker with a reason; README has runnable shell and Python blocks."""
    all_blocks = [b for doc in DOCS if doc.is_file() for b in blocks_of(doc)]
    for block in all_blocks:
        if block.marker is not None:
            m = MARKER.match(block.marker)
            assert m and m["reason"], f"{block.id}: {block.marker!r} needs the form `<!-- skip: REASON -->`"
            assert block.lang in LANGUAGES, f"{block.id}: a marker on a ```{block.lang} block, which never runs"
    runnable = [b for b in examples() if b.marker is None and b.path.name == "README.md" and b.path.parent == REPO]
    assert {b.lang for b in runnable} >= {"bash", "python"}, "README.md must keep runnable shell and Python examples"


def test_blocks_are_read_with_their_line_language_indent_and_marker(tmp_path: Path) -> None:
    """Fences inside list items are dedented; the comment on the line before a fence is its marker."""
    doc = tmp_path / "guide.md"
    doc.write_text(
        "# Guide\n\n```bash\necho one\n```\n\n1. Step:\n\n   <!-- skip: needs a GPU -->\n   ```python\n"
        "   print(2)\n   ```\n\n<!-- needs lerobot: the LeRobot venv -->\n```console\n$ echo three\nthree\n```\n"
    )
    one, two, three = blocks_of(doc)
    assert (one.line, one.lang, one.code, one.marker) == (3, "bash", "echo one\n", None)
    assert (two.line, two.lang, two.code) == (10, "python", "print(2)\n")
    assert skip_reason(two) == "needs a GPU"
    assert three.lang == "console" and three.code == "$ echo three\nthree\n"
    expected = None if importlib.util.find_spec("lerobot") else "the LeRobot venv (no lerobot here)"
    assert skip_reason(three) == expected
    result = run_block(three, tmp_path)
    assert result.returncode == 0 and result.stdout == "three\n"  # only the `$ ` lines run


def test_readme_setup_is_two_commands_that_ci_runs() -> None:
    """README's set-up block holds exactly two commands (install + first run, the tests); .ci/run runs it."""
    setup = next(b for b in blocks_of(REPO / "README.md") if b.lang == "bash")
    commands = [ln for ln in setup.code.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert len(commands) == 2, commands
    assert "--index-url https://download.pytorch.org/whl/cpu" in commands[0] and "sam2-encoder encode" in commands[0]
    assert "pytest" in commands[1]
    ci = (REPO / ".ci" / "run").read_text()
    assert "^## Set-up" in ci, ".ci/run must read README's set-up block"
    assert 'bash -euo pipefail -c "${SETUP[0]}"' in ci and 'bash -euo pipefail -c "${SETUP[1]}"' in ci


@pytest.fixture(scope="session")
def downloaded_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What ``sam2-encoder download sam2.1_hiera_tiny`` writes, with seeded weights in Meta's layout."""
    import torch

    sys.path.insert(0, str(REPO / "tests" / "fixtures"))
    from meta_weights import meta_state_dict_from_manifest
    from safetensors import safe_open

    with safe_open(str(REPO / "tests" / "fixtures" / "meta_golden.safetensors"), "pt") as f:
        manifest = json.loads(f.metadata()["golden"])["manifests"]["sam2.1_hiera_tiny"]
    path = tmp_path_factory.mktemp("downloaded") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": meta_state_dict_from_manifest(manifest, 7)}, path)
    return path


def run_block(block: Block, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        HF_HOME=str(cwd / ".hf"),
        HF_DATASETS_OFFLINE="1",
        HF_LEROBOT_HOME=str(cwd / ".hf" / "lerobot"),
        SAM2_ENCODER_CACHE=str(cwd / ".sam2_encoder_cache"),
        MPLBACKEND="Agg",
        WANDB_MODE="disabled",
    )
    if block.lang == "python":
        (cwd / "example.py").write_text(block.code)
        cmd = [sys.executable, "example.py"]
    else:
        code = block.code
        if block.lang == "console":
            code = "\n".join(ln[2:] for ln in code.splitlines() if ln.startswith("$ ")) + "\n"
        cmd = ["bash", "-euo", "pipefail", "-c", code]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.mark.parametrize("block", examples(), ids=lambda b: b.id)
def test_doc_example_runs_as_written(block: Block, downloaded_checkpoint: Path, tmp_path: Path) -> None:
    """The block exits 0 in a fresh folder holding only the downloaded checkpoint."""
    reason = skip_reason(block)
    if reason is not None:
        pytest.skip(reason)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "sam2.1_hiera_tiny.pt").symlink_to(downloaded_checkpoint)
    began = time.perf_counter()
    result = run_block(block, tmp_path)
    took = time.perf_counter() - began
    assert result.returncode == 0, (
        f"{block.id} ({block.lang}) exited {result.returncode} after {took:.1f} s:\n{block.code}\n"
        f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}"
    )
