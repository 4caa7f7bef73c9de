from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sam2_encoder import variants
from sam2_encoder.checkpoints import sha256sum
from sam2_encoder.cli import main
from sam2_encoder.scene import synthetic_scene

FIXTURES = Path(__file__).parent / "fixtures"
if str(FIXTURES) not in sys.path:
    sys.path.insert(0, str(FIXTURES))


def test_encode_on_the_embedded_default(capsys) -> None:
    assert main(["encode", "--image-size", "64", "--repeat", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["shapes"] == {"s4": [1, 32, 16, 16], "s8": [1, 64, 8, 8], "s16": [1, 256, 4, 4]}
    assert report["input"] == "generated 480x640 test scene" and report["ms_per_image"] > 0


def test_encode_files_and_save(tmp_path: Path, capsys) -> None:
    from safetensors.torch import load_file

    image = tmp_path / "frame.npy"
    np.save(image, synthetic_scene(60, 80, seed=1))
    out = tmp_path / "features.safetensors"
    assert main(["encode", str(image), "--image-size", "64", "--repeat", "1", "--out", str(out)]) == 0
    assert "s16: (1, 256, 4, 4)" in capsys.readouterr().out
    saved = load_file(str(out))
    from sam2_encoder import SAM2ImageEncoder

    expected = SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=64)(np.load(image)).s16
    torch.testing.assert_close(saved["s16"], expected)


@pytest.fixture(scope="module")
def tiny_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Meta's complete sam2.1_hiera_tiny.pt layout with seeded weights (a real, verifiable checkpoint)."""
    from meta_weights import meta_state_dict_from_manifest
    from safetensors import safe_open

    with safe_open(str(FIXTURES / "meta_golden.safetensors"), "pt") as f:
        manifest = json.loads(f.metadata()["golden"])["manifests"]["sam2.1_hiera_tiny"]
    path = tmp_path_factory.mktemp("tiny") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": meta_state_dict_from_manifest(manifest, 0)}, path)
    return path


def test_download_pins_and_verifies(tmp_path: Path, http_server, tiny_pt: Path, capsys) -> None:
    shutil.copyfile(tiny_pt, http_server.root / "sam2.1_hiera_tiny.pt")
    target = tmp_path / "ckpts"
    args = ["download", "sam2.1_hiera_tiny", "--dir", str(target), "--base-url", http_server.url, "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "sam2.1_hiera_tiny: downloaded" in out and "every key and shape" in out and "pinned in" in out
    digest = sha256sum(target / "sam2.1_hiera_tiny.pt")
    assert digest == sha256sum(tiny_pt)
    assert (target / "SHA256SUMS").read_text() == f"{digest}  sam2.1_hiera_tiny.pt\n"
    # present and intact: verified against the pin, nothing fetched
    n = len(http_server.requests)
    assert main(args) == 0
    assert "present" in capsys.readouterr().out and len(http_server.requests) == n
    # the local file is altered: it fails verification and is replaced by a verified download
    (target / "sam2.1_hiera_tiny.pt").write_bytes(b"tampered")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "sam2.1_hiera_tiny: replaced" in out and "note: the file that was present failed verification" in out
    assert sha256sum(target / "sam2.1_hiera_tiny.pt") == digest
    assert (target / "SHA256SUMS").read_text() == f"{digest}  sam2.1_hiera_tiny.pt\n"
    # --force downloads again and verifies against the pin
    assert main([*args, "--force"]) == 0
    assert "matches the pin" in capsys.readouterr().out
    assert sorted(p.name for p in target.iterdir()) == ["SHA256SUMS", "sam2.1_hiera_tiny.pt"]


def test_download_refuses_what_is_not_the_checkpoint(tmp_path: Path, http_server, capsys) -> None:
    (http_server.root / "sam2.1_hiera_tiny.pt").write_bytes(b"<!DOCTYPE html><html>sign in</html>" * 50)
    target = tmp_path / "ckpts"
    args = ["download", "sam2.1_hiera_tiny", "--dir", str(target), "--base-url", http_server.url, "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: sam2.1_hiera_tiny: ") and "HTML page" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in target.iterdir()) == []  # nothing placed, nothing pinned, no .part


def test_download_errors(tmp_path: Path, http_server, capsys) -> None:
    assert main(["download", "sam9_hiera_huge", "--dir", str(tmp_path)]) == 2
    assert "known variants" in capsys.readouterr().err
    assert main(["download", "sam2_hiera_tiny", "--dir", str(tmp_path), "--base-url", http_server.url, "--quiet"]) == 2
    assert "HTTP 404" in capsys.readouterr().err
    assert main(["download"]) == 2


def test_console_script_is_installed() -> None:
    import shutil
    import subprocess

    exe = shutil.which("sam2-encoder") or str(Path(sys.executable).with_name("sam2-encoder"))
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert "encode" in out and "download" in out
    assert variants.get_variant("sam2.1_hiera_tiny")
