"""Old checkpoints keep loading: a LeRobot ``sam2_diffusion`` policy saved by the code BEFORE the issue-18
redesign (commit 1f671f0, ``tests/fixtures/compat/lerobot``: ``config.json`` + ``model.safetensors`` as
``save_pretrained`` wrote them, made by ``tests/fixtures/make_compat_fixtures.py``) loads with
``SAM2DiffusionPolicy.from_pretrained`` (strict, as lerobot-eval loads it) and acts as it did then, bit for
bit: an action chunk from a batch with object masks, and three tracked steps of ``select_action``.
LeRobot 0.6 venv only.

Never regenerate the fixture to make these pass. A key that has to move is migrated on load by
``migrate_state_dict`` (its prefixes in ``MOVED_PREFIXES``: the tracker's ``tracker.*`` weights are
``encoder.tracker.*`` since the policy uses the encoder's tracker); ``config.json`` must keep parsing as it is.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

lerobot = pytest.importorskip(
    "lerobot", reason="LeRobot 0.6 is not installed here (it needs Python >= 3.12); .ci/lerobot.sh runs these tests"
)
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from sam2_encoder.lerobot import SAM2DiffusionPolicy  # noqa: E402
from sam2_encoder.lerobot.modeling_sam2_diffusion import MOVED_PREFIXES, migrate_state_dict  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SAVED = FIXTURES / "compat" / "lerobot"
sys.path.insert(0, str(FIXTURES))
from make_compat_fixtures import key_lines, run_lerobot, unxz  # noqa: E402


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The saved policy folder, as ``save_pretrained`` left it (model.safetensors decompressed)."""
    folder = tmp_path_factory.mktemp("sam2_diffusion")
    shutil.copy(SAVED / "config.json", folder / "config.json")
    unxz(SAVED / "model.safetensors.xz", folder / "model.safetensors")
    return folder


@pytest.fixture(scope="module")
def policy(saved_dir: Path) -> SAM2DiffusionPolicy:
    return SAM2DiffusionPolicy.from_pretrained(saved_dir)


def test_the_fixture_is_what_its_key_list_says(saved_dir: Path) -> None:
    """``model.safetensors`` holds exactly the keys, shapes and dtypes of ``state_dict_keys.txt``."""
    saved = load_file(str(saved_dir / "model.safetensors"))
    assert key_lines(saved) == (SAVED / "state_dict_keys.txt").read_text().splitlines()
    assert any(k.startswith("tracker.") for k in saved), "the tracker's weights are in the checkpoint"
    assert any(".objects." in k for k in saved), "the object tokens' weights are in the checkpoint"


def test_the_old_policy_loads_strictly_with_every_saved_value(saved_dir: Path, policy: SAM2DiffusionPolicy) -> None:
    """``from_pretrained`` reads the old config.json and model.safetensors strictly: every saved key exists
    today (or under its migrated name) and holds the saved value; today's policy has no key the file lacks."""
    assert MOVED_PREFIXES == {"tracker.": "encoder.tracker."}, "a new key move needs this fixture's review"
    old = migrate_state_dict(dict(load_file(str(saved_dir / "model.safetensors"))))
    state = policy.state_dict()
    assert sorted(state) == sorted(old)
    for key, value in old.items():
        assert torch.equal(state[key], value), key
    assert policy.config.num_objects == 2 and policy.config.object_tracker


def test_the_old_policy_acts_as_recorded_before_the_redesign(policy: SAM2DiffusionPolicy) -> None:
    """The action chunk from a batch with masks and the three tracked ``select_action`` steps are
    bit-identical to those of commit 1f671f0. Run on one thread, as recorded: the CPU kernels' summation
    order depends on the thread count."""
    tensors = load_file(str(SAVED / "expected.safetensors"))
    inputs = {k.removeprefix("input/"): v for k, v in tensors.items() if k.startswith("input/")}
    outputs = {k.removeprefix("output/"): v for k, v in tensors.items() if k.startswith("output/")}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        got = run_lerobot(policy, inputs)
    finally:
        torch.set_num_threads(threads)
    assert sorted(got) == sorted(outputs)
    for name, expected in outputs.items():
        assert got[name].shape == expected.shape, name
        assert torch.equal(got[name], expected), f"{name}: max abs diff {(got[name] - expected).abs().max()}"
