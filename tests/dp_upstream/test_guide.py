"""The DP guide is what CI runs: install lines, the fix command, copy-in configs. Runs in the core venv."""

from __future__ import annotations

import os
import py_compile
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ._dp import GUIDE, REPO, TESTED_DP_COMMIT, dp_source, fix_command, guide_block_lines

COPY_IN = REPO / "integration" / "diffusion_policy" / "config"
PACKAGED = REPO / "config"


def test_copy_in_configs_equal_the_packaged_ones() -> None:
    packaged = sorted(p.relative_to(PACKAGED) for p in PACKAGED.rglob("*.yaml"))
    copied = sorted(p.relative_to(COPY_IN) for p in COPY_IN.rglob("*.yaml"))
    assert packaged and copied == packaged, "integration/diffusion_policy/config/ must hold exactly config/**/*.yaml"
    for rel in packaged:
        assert (COPY_IN / rel).read_bytes() == (PACKAGED / rel).read_bytes(), f"{rel} differs from config/{rel}"


def test_ci_installs_exactly_the_guide_lines() -> None:
    guide = set(guide_block_lines(r"^\s*pip install"))
    script = (REPO / ".ci" / "dp.sh").read_text()
    ci = [ln.strip() for ln in script.splitlines() if re.match(r"\s*pip install", ln)]
    assert len(ci) >= 6, ci
    for line in ci:
        as_in_guide = line.replace('-e ".[dp]"', '-e "/path/to/sam2_encoder[dp]"')
        assert as_in_guide in {g.strip() for g in guide}, f".ci/dp.sh runs `{line}`, which the guide does not say"
    uncommented = {g.strip() for g in guide if not g.lstrip().startswith("#")}
    missing = uncommented - {ln.replace('-e ".[dp]"', '-e "/path/to/sam2_encoder[dp]"') for ln in ci}
    assert not missing, f"guide lines CI does not run: {missing}"


def test_guide_names_the_tested_commit() -> None:
    text = GUIDE.read_text()
    assert TESTED_DP_COMMIT in text
    snapshot = REPO.parent / "shared" / "third_party" / "diffusion_policy" / "SNAPSHOT.md"
    if snapshot.is_file():
        full = re.search(r"commit ([0-9a-f]{40})", snapshot.read_text()).group(1)
        assert full.startswith(TESTED_DP_COMMIT) and f"git checkout {full}" in text


def test_fix_command_on_dp_lr_scheduler(tmp_path: Path) -> None:
    src = dp_source()
    if src is None:
        pytest.skip("no Diffusion Policy checkout: set SAM2_DP_SRC=/path/to/diffusion_policy")
    target = tmp_path / "diffusion_policy" / "model" / "common" / "lr_scheduler.py"
    target.parent.mkdir(parents=True)
    original = (src / "diffusion_policy" / "model" / "common" / "lr_scheduler.py").read_text()
    target.write_text(original)
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}

    first = subprocess.run(["bash", "-c", fix_command()], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert first.returncode == 0 and first.stdout == "", first.stdout + first.stderr
    fixed = target.read_text()
    py_compile.compile(str(target), doraise=True)
    assert fixed.startswith("from typing import Optional, Union\n")
    imported = re.search(r"from diffusers\.optimization import \((.*?)\)", fixed, flags=re.S).group(1)
    assert "Union" not in imported and "Optional" not in imported and "SchedulerType" in imported
    undone = fixed.replace("from typing import Optional, Union\n", "", 1)
    assert undone.replace("SchedulerType,", "Union, SchedulerType, Optional,", 1) == original

    second = subprocess.run(["bash", "-c", fix_command()], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert second.returncode == 0 and "already fixed" in second.stdout
    assert target.read_text() == fixed
