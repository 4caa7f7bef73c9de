"""Old checkpoints keep loading: a Diffusion Policy obs-encoder checkpoint saved by the code BEFORE the
issue-18 redesign (commit 1f671f0, ``tests/fixtures/compat/dp``, made by
``tests/fixtures/make_compat_fixtures.py``) loads strictly into ``SAM2ObsEncoder`` built from its saved
flat kwargs, and gives the outputs recorded then, bit for bit (with masks in the obs dict, and two tracked
steps without them).

The LeRobot counterpart is ``tests/lerobot/test_compat_checkpoint.py``. Never regenerate the fixture to
make these pass: it would then record the new code. A key that has to move is migrated on load and
listed in ``MOVED``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).resolve().parent / "fixtures"
DP = FIXTURES / "compat" / "dp"
sys.path.insert(0, str(FIXTURES))
from make_compat_fixtures import build_dp, key_lines, run_dp, unxz  # noqa: E402

MOVED: dict[str, str] = {}  # old state-dict key -> new key, for keys the redesign moves (migrated on load)


def recorded() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The fixture's ``(inputs, outputs)``."""
    tensors = load_file(str(DP / "expected.safetensors"))
    inputs = {k.removeprefix("input/"): v for k, v in tensors.items() if k.startswith("input/")}
    return inputs, {k.removeprefix("output/"): v for k, v in tensors.items() if k.startswith("output/")}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """DP's ``payload["state_dicts"]["model"]`` of the fixture (``obs_encoder.*`` keys), decompressed."""
    path = unxz(DP / "dp_state_dict.pt.xz", tmp_path_factory.mktemp("dp") / "dp_state_dict.pt")
    return torch.load(path, weights_only=True)["state_dicts"]["model"]


@pytest.fixture(scope="module")
def loaded(saved: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The encoder built from ``kwargs.json`` and loaded the way DP's workspace loads a policy: strictly,
    through the policy module whose ``obs_encoder`` it is."""
    encoder = build_dp(json.loads((DP / "kwargs.json").read_text()))
    torch.nn.ModuleDict({"obs_encoder": encoder}).load_state_dict(saved, strict=True)
    return encoder


def test_the_fixture_is_what_its_key_list_says(saved: dict[str, torch.Tensor]) -> None:
    """The committed state dict holds exactly the keys, shapes and dtypes of ``state_dict_keys.txt``."""
    lines = (DP / "state_dict_keys.txt").read_text().splitlines()
    assert key_lines({k.removeprefix("obs_encoder."): v for k, v in saved.items()}) == lines
    assert any(k.startswith("obs_encoder.tracker.") for k in saved), "the tracker's weights are in the checkpoint"
    assert any(".objects." in k for k in saved), "the object tokens' weights are in the checkpoint"


def test_an_encoder_built_from_the_saved_kwargs_has_the_saved_keys_or_migrates_them(
    saved: dict[str, torch.Tensor], loaded: torch.nn.Module
) -> None:
    """Every saved key exists in today's encoder (or is listed in MOVED) and holds the saved value after a
    strict load; today's encoder has no key the old checkpoint lacks."""
    state = loaded.state_dict()
    old = {MOVED.get(k, k): v for k, v in ((k.removeprefix("obs_encoder."), v) for k, v in saved.items())}
    assert sorted(state) == sorted(old)
    for key, value in old.items():
        assert torch.equal(state[key], value), key


def test_the_old_checkpoint_gives_the_outputs_recorded_before_the_redesign(loaded: torch.nn.Module) -> None:
    """With masks in the obs dict and in two tracked steps without them (the tracker's masks too), the
    outputs are bit-identical to those of commit 1f671f0. Run on one thread, as recorded: the CPU kernels'
    summation order depends on the thread count (two threads move the outputs by ~2e-7)."""
    inputs, outputs = recorded()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as recorded
    try:
        got = run_dp(loaded, inputs)
    finally:
        torch.set_num_threads(threads)
    assert sorted(got) == sorted(outputs)
    assert outputs["tracked_masks_1"].any(), "objects are tracked: the comparison is not of empty masks"
    for name, expected in outputs.items():
        assert got[name].shape == expected.shape, name
        diff = (got[name].float() - expected.float()).abs().max()
        assert torch.equal(got[name], expected), f"{name}: max abs diff {diff}"
