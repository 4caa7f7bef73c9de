"""Fixtures for the LeRobot plugin tests (run in the LeRobot venv: .ci/lerobot.sh).

Nothing here imports LeRobot at module level: in the core venv (no LeRobot, Python < 3.12) the
test modules skip themselves with the reason.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="session")
def meta_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sam2.1 tiny checkpoint file in Meta's real layout (``torch.save({"model": ...})``), seeded weights."""
    sys.path.insert(0, str(FIXTURES))
    from meta_weights import meta_state_dict_from_manifest
    from safetensors import safe_open

    with safe_open(str(FIXTURES / "meta_golden.safetensors"), "pt") as f:
        manifest = json.loads(f.metadata()["golden"])["manifests"]["sam2.1_hiera_tiny"]
    path = tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": meta_state_dict_from_manifest(manifest, 7)}, path)
    return path
