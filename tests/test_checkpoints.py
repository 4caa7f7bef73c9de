from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sam2_encoder import SAM2ImageEncoder
from sam2_encoder.checkpoints import (
    CheckpointError,
    download,
    load_checkpoint,
    resolve_checkpoint,
    sha256sum,
)

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from meta_weights import meta_state_dict_from_manifest  # noqa: E402
from safetensors import safe_open  # noqa: E402

with safe_open(str(FIXTURES / "meta_golden.safetensors"), "pt") as _f:
    MANIFESTS = json.loads(_f.metadata()["golden"])["manifests"]


def meta_checkpoint(tmp_path: Path, name: str = "sam2.1_hiera_tiny", seed: int = 0) -> Path:
    """A checkpoint file in Meta's real layout: torch.save({"model": state_dict})."""
    path = tmp_path / f"{name}.pt"
    torch.save({"model": meta_state_dict_from_manifest(MANIFESTS[name], seed)}, path)
    return path


def assert_same_weights(a: SAM2ImageEncoder, b: SAM2ImageEncoder) -> None:
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


def test_meta_pt_safetensors_and_hf_folder_agree(tmp_path: Path) -> None:
    pt = meta_checkpoint(tmp_path)
    state = load_checkpoint(pt)
    assert "vision_encoder.backbone.patch_embed.projection.weight" in state and len(state) == 469
    st = tmp_path / "model.safetensors"
    save_file(
        {k: v.contiguous() for k, v in state.items() if k != "shared_image_embedding.positional_embedding"}
        | {"shared_image_embedding.positional_embedding": state["shared_image_embedding.positional_embedding"].clone()},
        str(st),
    )
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(st.read_bytes())
    encoders = [SAM2ImageEncoder("sam2.1_hiera_tiny", checkpoint=str(p), image_size=64) for p in (pt, st, folder)]
    assert_same_weights(encoders[0], encoders[1])
    assert_same_weights(encoders[0], encoders[2])


def test_missing_file_names_the_download_command(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"sam2-encoder download sam2.1_hiera_tiny"):
        SAM2ImageEncoder("sam2.1_hiera_tiny", checkpoint=str(tmp_path / "sam2.1_hiera_tiny.pt"), image_size=64)
    with pytest.raises(FileNotFoundError, match="checkpoint not found: nowhere/weights.bin"):
        resolve_checkpoint("nowhere/weights.bin")


def test_truncated_and_corrupt_files(tmp_path: Path) -> None:
    pt = meta_checkpoint(tmp_path)
    data = pt.read_bytes()
    pt.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated or corrupt.*sam2-encoder download sam2.1_hiera_tiny"):
        load_checkpoint(pt)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(garbage)
    other = tmp_path / "other.pt"
    torch.save({"optimizer": {"lr": torch.tensor(1.0)}, "epoch": 3}, other)
    with pytest.raises(CheckpointError, match="not a SAM 2 checkpoint"):
        load_checkpoint(other)


def test_checkpoint_of_another_variant_names_keys_and_shapes(tmp_path: Path) -> None:
    pt = meta_checkpoint(tmp_path, "sam2.1_hiera_base_plus")
    with pytest.raises(CheckpointError) as info:
        SAM2ImageEncoder("sam2.1_hiera_tiny", checkpoint=str(pt), image_size=64)
    message = str(info.value)
    assert "does not fit sam2.1_hiera_tiny" in message
    assert "vision_encoder.backbone.pos_embed [1, 112, 14, 14] in checkpoint vs [1, 96, 7, 7] expected" in message
    assert "unexpected keys" in message and "looks like sam2.1_hiera_base_plus" in message

    small = meta_checkpoint(tmp_path, "sam2.1_hiera_small")
    with pytest.raises(CheckpointError, match=r"unexpected keys: vision_encoder.backbone.blocks.12"):
        SAM2ImageEncoder("sam2.1_hiera_tiny", checkpoint=str(small), image_size=64)


def test_sam2_and_sam21_checkpoints_load_into_their_family(tmp_path: Path) -> None:
    pt = meta_checkpoint(tmp_path, "sam2_hiera_tiny")
    SAM2ImageEncoder("sam2_hiera_tiny", checkpoint=str(pt), image_size=64)


def test_download_resume_hash_and_atomic_rename(tmp_path: Path, http_server) -> None:
    payload = bytes(range(256)) * 4000
    (http_server.root / "w.pt").write_bytes(payload)
    dest = tmp_path / "out" / "w.pt"
    part = dest.with_name("w.pt.part")
    dest.parent.mkdir()
    part.write_bytes(payload[:1000])  # an interrupted earlier run
    digest = sha256sum(http_server.root / "w.pt")
    download(f"{http_server.url}/w.pt", dest, sha256=digest, progress=False)
    assert dest.read_bytes() == payload and not part.exists()
    assert http_server.requests[-1] == ("/w.pt", "bytes=1000-")

    with pytest.raises(CheckpointError, match=r"sha256 mismatch .* expected 0000.*the file was removed"):
        download(f"{http_server.url}/w.pt", tmp_path / "bad.pt", sha256="0" * 64, progress=False)
    assert not (tmp_path / "bad.pt").exists() and not (tmp_path / "bad.pt.part").exists()

    with pytest.raises(CheckpointError, match="HTTP 404"):
        download(f"{http_server.url}/missing.pt", tmp_path / "m.pt", progress=False)


def test_download_restarts_when_server_ignores_range(tmp_path: Path, http_server) -> None:
    payload = b"abcdefgh" * 1000
    (http_server.root / "w.pt").write_bytes(payload)
    http_server.handler.honour_range = False
    dest = tmp_path / "w.pt"
    dest.with_name("w.pt.part").write_bytes(b"XXXX")
    download(f"{http_server.url}/w.pt", dest, progress=False)
    assert dest.read_bytes() == payload


def test_resolve_url_variant_name_and_hub_id(tmp_path: Path, http_server, monkeypatch) -> None:
    pt = meta_checkpoint(tmp_path)
    (http_server.root / "sam2.1_hiera_tiny.pt").write_bytes(pt.read_bytes())
    encoder = SAM2ImageEncoder("sam2.1_hiera_tiny", checkpoint=f"{http_server.url}/sam2.1_hiera_tiny.pt", image_size=64)
    assert_same_weights(encoder, SAM2ImageEncoder("sam2.1_hiera_tiny", checkpoint=str(pt), image_size=64))
    n = len(http_server.requests)
    resolve_checkpoint(f"{http_server.url}/sam2.1_hiera_tiny.pt")
    assert len(http_server.requests) == n, "a cached download is not fetched again"

    # A variant name downloads Meta's file (the URL is redirected to the local server here).
    from sam2_encoder import variants

    monkeypatch.setitem(variants._META_BASE_URL, "sam2.1", http_server.url)
    path = resolve_checkpoint("sam2.1_hiera_tiny", progress=False)
    assert path.read_bytes() == pt.read_bytes()
    # A hub id downloads model.safetensors from $HF_ENDPOINT.
    hub = http_server.root / "facebook" / "sam2.1-hiera-tiny" / "resolve" / "main"
    hub.mkdir(parents=True)
    save_file({"x": torch.zeros(1)}, str(hub / "model.safetensors"))
    monkeypatch.setenv("HF_ENDPOINT", http_server.url)
    assert load_checkpoint(resolve_checkpoint("facebook/sam2.1-hiera-tiny", progress=False))["x"].shape == (1,)


def test_no_download_when_disabled(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="downloads are off"):
        resolve_checkpoint("sam2.1_hiera_tiny", download_missing=False)


def test_relative_path_found_from_hydra_launch_dir(tmp_path: Path) -> None:
    """Hydra apps (Diffusion Policy's train.py) chdir into an output folder: relative paths still work."""
    import subprocess

    meta_checkpoint(tmp_path)
    app = tmp_path / "app.py"
    app.write_text(
        "import os, hydra\n"
        "from sam2_encoder.checkpoints import resolve_checkpoint\n"
        "@hydra.main(version_base=None, config_path=None)\n"
        "def main(cfg):\n"
        "    print('CWD', os.getcwd())\n"
        "    print('FOUND', resolve_checkpoint('sam2.1_hiera_tiny.pt', download_missing=False).resolve())\n"
        "main()\n"
    )
    out = subprocess.run(
        [sys.executable, str(app), "hydra.job.chdir=True", f"hydra.run.dir={tmp_path / 'outputs'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"CWD {tmp_path / 'outputs'}" in out
    assert f"FOUND {(tmp_path / 'sam2.1_hiera_tiny.pt').resolve()}" in out
