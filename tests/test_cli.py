from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from sam2_encoder import variants
from sam2_encoder.checkpoints import sha256sum
from sam2_encoder.cli import main, synthetic_scene


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


def test_download_pins_and_verifies(tmp_path: Path, http_server, capsys) -> None:
    payload = b"not really a checkpoint" * 100
    (http_server.root / "sam2.1_hiera_tiny.pt").write_bytes(payload)
    target = tmp_path / "ckpts"
    args = ["download", "sam2.1_hiera_tiny", "--dir", str(target), "--base-url", http_server.url, "--quiet"]
    assert main(args) == 0
    assert "pinned" in capsys.readouterr().out
    digest = sha256sum(target / "sam2.1_hiera_tiny.pt")
    assert (target / "SHA256SUMS").read_text() == f"{digest}  sam2.1_hiera_tiny.pt\n"
    # the local file is altered: the pinned hash catches it
    (target / "sam2.1_hiera_tiny.pt").write_bytes(b"tampered")
    assert main(args) == 1
    assert "expected " + digest in capsys.readouterr().err
    # --force downloads again and verifies against the pin
    assert main([*args, "--force"]) == 0
    assert "verified against the pinned" in capsys.readouterr().out


def test_download_errors(tmp_path: Path, http_server, capsys) -> None:
    assert main(["download", "sam9_hiera_huge", "--dir", str(tmp_path)]) == 1
    assert "known variants" in capsys.readouterr().err
    assert main(["download", "sam2_hiera_tiny", "--dir", str(tmp_path), "--base-url", http_server.url, "--quiet"]) == 1
    assert "HTTP 404" in capsys.readouterr().err
    assert main(["download"]) == 2


def test_console_script_is_installed() -> None:
    import shutil
    import subprocess

    exe = shutil.which("sam2-encoder") or str(Path(sys.executable).with_name("sam2-encoder"))
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert "encode" in out and "download" in out
    assert variants.get_variant("sam2.1_hiera_tiny")
