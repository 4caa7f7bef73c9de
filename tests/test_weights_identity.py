"""One weights identity: what an encoder reports as ``weights_id`` is what the caches and the CLI record.

``SAM2ImageEncoder.weights_id`` (recorded by feature caches and compared when a policy reads one)
and ``mask_cache.weights_identity`` (recorded by mask caches and by ``sam2-encoder cache
--prompts`` in its feature cache) used to be computed apart and disagreed on sharded Hugging Face
folders (the encoder hashed the index file alone, the mask cache fell back to the folder's name).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from sam2_encoder import SAM2ImageEncoder
from sam2_encoder.checkpoints import sha256sum, weights_identity
from sam2_encoder.diffusion_policy.mask_cache import weights_identity as mask_cache_weights_identity

VARIANT = "sam2.1_hiera_tiny"


@pytest.fixture(scope="module")
def forms(tiny_video_state, tmp_path_factory) -> dict[str, Path]:
    """The tiny weights in every checkpoint form ``checkpoint=`` takes, written by the real writers."""
    from safetensors.torch import save_file
    from transformers import Sam2VideoModel

    from sam2_encoder.variants import get_variant

    root = tmp_path_factory.mktemp("forms")
    state = {k: v.contiguous() for k, v in tiny_video_state.items()}
    save_file(state, str(root / "tiny.safetensors"))
    torch.save(state, root / "tiny.pt")
    model = Sam2VideoModel(get_variant(VARIANT).video_model_config(256))
    model.load_state_dict(tiny_video_state)
    model.save_pretrained(root / "hf")  # one model.safetensors
    model.save_pretrained(root / "sharded", max_shard_size="40MB")  # model-0000k-of-0000n + index json
    return {
        "safetensors": root / "tiny.safetensors",
        "pt": root / "tiny.pt",
        "hf": root / "hf",
        "sharded": root / "sharded",
    }


def test_a_sharded_folder_is_written_in_the_real_format(forms: dict[str, Path]) -> None:
    """The fixture's sharded folder is what transformers writes: several shards and their index."""
    shards = sorted(p.name for p in forms["sharded"].glob("model-*-of-*.safetensors"))
    assert len(shards) >= 2 and (forms["sharded"] / "model.safetensors.index.json").is_file(), shards
    assert not (forms["sharded"] / "model.safetensors").exists()


@pytest.mark.parametrize("form", ["random", "safetensors", "pt", "hf", "sharded"])
def test_the_encoder_and_the_caches_agree_on_every_checkpoint_form(forms: dict[str, Path], form: str) -> None:
    """For each form, ``SAM2ImageEncoder.weights_id`` equals the identity the mask cache and CLI record."""
    checkpoint = None if form == "random" else forms[form]
    encoder = SAM2ImageEncoder(VARIANT, checkpoint=checkpoint, image_size=64, seed=3)
    assert encoder.weights_id == mask_cache_weights_identity(checkpoint, seed=3) == weights_identity(checkpoint, 3)
    expected = {
        "random": "random:seed=3",
        "safetensors": f"sha256:{sha256sum(forms['safetensors'])}",
        "pt": f"sha256:{sha256sum(forms['pt'])}",
        "hf": f"sha256:{sha256sum(forms['hf'] / 'model.safetensors')}",
    }
    if form in expected:
        assert encoder.weights_id == expected[form]
    else:
        assert encoder.weights_id.startswith("sha256-shards:")


def test_a_sharded_folder_is_identified_by_its_shards(forms: dict[str, Path], tmp_path: Path) -> None:
    """``sha256-shards:`` is the SHA-256 of ``sha256sum``'s lines for the listed shards (name order):
    a copy has the same identity, a changed shard another, and the index file alone decides nothing."""
    folder = forms["sharded"]
    shards = sorted(p.name for p in folder.glob("model-*-of-*.safetensors"))
    lines = "".join(f"{sha256sum(folder / name)}  {name}\n" for name in shards)
    identity = weights_identity(folder)
    assert identity == f"sha256-shards:{hashlib.sha256(lines.encode()).hexdigest()}"
    assert identity != f"sha256:{sha256sum(folder / 'model.safetensors.index.json')}"  # what weights_id said before

    copy = Path(shutil.copytree(folder, tmp_path / "copy"))
    assert weights_identity(copy) == identity
    from safetensors.torch import load_file, save_file

    last = copy / shards[-1]
    state = load_file(str(last))
    name = sorted(state)[0]
    state[name] = state[name] + 1.0  # other weights, same index file
    save_file(state, str(last), metadata={"format": "pt"})
    assert weights_identity(copy) != identity
    assert sha256sum(copy / "model.safetensors.index.json") == sha256sum(folder / "model.safetensors.index.json")
