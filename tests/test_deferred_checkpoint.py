"""A saved policy reloads where its SAM 2 checkpoint file is absent (Diffusion Policy re-runs the constructor)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from sam2_encoder import SAM2ImageEncoder, SAM2ObsEncoder

SHAPE_META = {"obs": {"image": {"shape": [3, 32, 32], "type": "rgb"}, "pos": {"shape": [2]}}, "action": {"shape": [2]}}


def _obs(n: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"image": torch.rand(n, 3, 32, 32, generator=g) * 2 - 1, "pos": torch.rand(n, 2, generator=g)}


def test_reload_without_the_checkpoint_file(tiny_safetensors: Path, tmp_path: Path) -> None:
    checkpoint = tiny_safetensors
    trained = SAM2ObsEncoder(SHAPE_META, checkpoint=str(checkpoint), image_size=64).eval()
    state = copy.deepcopy(trained.state_dict())
    with torch.no_grad():
        expected = trained(_obs())
    gone = tmp_path / "elsewhere" / checkpoint.name  # the "eval machine" has no such file
    with pytest.warns(UserWarning, match="placeholder weights"):
        reloaded = SAM2ObsEncoder(SHAPE_META, checkpoint=str(gone), image_size=64).eval()
    assert reloaded.encoder.pending_checkpoint == str(gone)
    with pytest.raises(FileNotFoundError, match="no saved state_dict was loaded"):
        reloaded(_obs())
    ema = copy.deepcopy(reloaded)  # DP's EMA copy is made before the checkpoint is loaded
    reloaded.load_state_dict(state, strict=True)
    ema.load_state_dict(state, strict=True)
    assert reloaded.encoder.pending_checkpoint is None and ema.encoder.pending_checkpoint is None
    with torch.no_grad():
        assert torch.equal(reloaded(_obs()), expected)
        assert torch.equal(ema(_obs()), expected)


def test_a_partial_state_dict_does_not_lift_the_guard(tmp_path: Path) -> None:
    with pytest.warns(UserWarning):
        enc = SAM2ObsEncoder(SHAPE_META, checkpoint=str(tmp_path / "missing.pt"), image_size=64)
    heads_only = {k: v for k, v in enc.state_dict().items() if k.startswith("heads.")}
    enc.load_state_dict(heads_only, strict=False)
    assert enc.encoder.pending_checkpoint is not None
    with pytest.raises(FileNotFoundError, match="missing.pt was not found"):
        enc.encoder.weights_id  # noqa: B018


def test_image_encoder_still_refuses_a_missing_file_by_default(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        SAM2ImageEncoder("sam2.1_hiera_tiny", checkpoint=str(tmp_path / "nope.pt"), image_size=64)
    with pytest.raises(ValueError, match="missing_checkpoint"):
        SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=64, missing_checkpoint="ignore")
