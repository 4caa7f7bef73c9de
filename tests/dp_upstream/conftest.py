"""Fixtures for the tests that run upstream Diffusion Policy (its own train.py, eval-style reload).

They need DP's source (``$SAM2_DP_SRC``, else the shared snapshot beside this repository) and DP's
dependencies (torchvision, diffusers, numba, ...), which the core venv does not have: there they
skip, saying how to enable them. ``.ci/dp.sh`` sets ``SAM2_DP_REQUIRED=1`` so that a missing piece
fails CI instead of skipping.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from ._dp import HOW_TO_ENABLE, REPO, TRAIN_DEPS, copy_dp, dp_source, missing_modules, write_pusht_replay


def require(deps: Mapping[str, str], what: str) -> None:
    """Skip (or fail under ``SAM2_DP_REQUIRED=1``) when DP's source or ``deps`` are missing."""
    problems = []
    if dp_source() is None:
        problems.append(
            f"no Diffusion Policy checkout (set SAM2_DP_SRC=/path/to/diffusion_policy; "
            f"tested commit 5ba07ac; ${{SAM2_DP_SRC}} was {os.environ.get('SAM2_DP_SRC')!r})"
        )
    missing = missing_modules(deps)
    if missing:
        problems.append(f"missing {what}: {', '.join(missing)}")
    if problems:
        message = "upstream DP test cannot run: " + "; ".join(problems) + f". To enable: {HOW_TO_ENABLE}"
        if os.environ.get("SAM2_DP_REQUIRED") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="session")
def dp_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of the DP checkout with the guide's fix applied, importable in this process too."""
    require(TRAIN_DEPS, "DP training dependencies")
    dest = copy_dp(dp_source(), tmp_path_factory.mktemp("dp"))
    sys.path.insert(0, str(dest))
    try:
        yield dest
    finally:
        sys.path.remove(str(dest))


@pytest.fixture(scope="session")
def meta_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Meta-format SAM 2.1 tiny checkpoint (``torch.save({"model": ...})``) of seeded weights."""
    import torch
    from safetensors import safe_open

    fixtures = REPO / "tests" / "fixtures"
    sys.path.insert(0, str(fixtures))
    try:
        from meta_weights import meta_state_dict_from_manifest
    finally:
        sys.path.remove(str(fixtures))
    with safe_open(str(fixtures / "meta_golden.safetensors"), "pt") as f:
        manifest = json.loads(f.metadata()["golden"])["manifests"]["sam2.1_hiera_tiny"]
    path = tmp_path_factory.mktemp("weights") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": meta_state_dict_from_manifest(manifest, seed=0)}, path)
    return path


@pytest.fixture(scope="session")
def pusht_zarr(dp_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 episodes x 20 steps of pusht-style data written with DP's ReplayBuffer."""
    return write_pusht_replay(tmp_path_factory.mktemp("data") / "pusht_cchi_v7_replay.zarr")
