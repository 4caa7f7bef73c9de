from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Sam2Model

from sam2_encoder import SAM2ImageEncoder
from sam2_encoder.checkpoints import (
    CheckpointError,
    checkpoint_family,
    download,
    load_checkpoint,
    resolve_checkpoint,
    sha256sum,
    verify_checkpoint,
)
from sam2_encoder.variants import get_variant

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


def small_meta_checkpoint(path: Path, seed: int = 0, megabytes: float = 1.0) -> bytes:
    """A small real Meta-format .pt (the first trunk tensors of sam2.1 tiny, ~1 MB), as bytes.

    Loads as a SAM 2 checkpoint (vision_encoder keys, float, finite): enough for transport tests.
    """
    manifest, size = {}, 0
    for key, shape in MANIFESTS["sam2.1_hiera_tiny"].items():
        if key.startswith("image_encoder.trunk."):
            manifest[key] = shape
            size += 4 * math.prod(shape)
            if size >= megabytes * 2**20:
                break
    torch.save({"model": meta_state_dict_from_manifest(manifest, seed)}, path)
    return path.read_bytes()


def test_download_resume_hash_and_atomic_rename(tmp_path: Path, http_server) -> None:
    payload = small_meta_checkpoint(http_server.root / "w.pt")
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
    payload = small_meta_checkpoint(http_server.root / "w.pt")
    http_server.handler.honour_range = False
    dest = tmp_path / "w.pt"
    dest.with_name("w.pt.part").write_bytes(b"XXXX")
    download(f"{http_server.url}/w.pt", dest, progress=False)
    assert dest.read_bytes() == payload


def test_download_of_a_non_checkpoint_needs_verify_off(tmp_path: Path, http_server) -> None:
    (http_server.root / "notes.txt").write_bytes(b"plain text, not weights\n" * 100)
    with pytest.raises(CheckpointError, match=r"is a text file, not a checkpoint .*partial file was removed"):
        download(f"{http_server.url}/notes.txt", tmp_path / "out" / "notes.txt", progress=False)
    assert list((tmp_path / "out").iterdir()) == []
    download(f"{http_server.url}/notes.txt", tmp_path / "out" / "notes.txt", progress=False, verify=False)
    assert (tmp_path / "out" / "notes.txt").read_bytes() == (http_server.root / "notes.txt").read_bytes()


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
    # A hub id downloads model.safetensors from $HF_ENDPOINT (here transformers' image-only Sam2Model file).
    hub = http_server.root / "facebook" / "sam2.1-hiera-tiny" / "resolve" / "main"
    hub.mkdir(parents=True)
    image_model = Sam2Model(get_variant("sam2.1_hiera_tiny").image_model_config(64))
    save_file({k: v.contiguous() for k, v in image_model.state_dict().items()}, str(hub / "model.safetensors"))
    monkeypatch.setenv("HF_ENDPOINT", http_server.url)
    state = load_checkpoint(resolve_checkpoint("facebook/sam2.1-hiera-tiny", progress=False))
    assert torch.equal(
        state["vision_encoder.neck.convs.0.weight"], image_model.state_dict()["vision_encoder.neck.convs.0.weight"]
    )


def test_no_download_when_disabled(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="downloads are off"):
        resolve_checkpoint("sam2.1_hiera_tiny", download_missing=False)


def test_relative_path_found_from_hydra_launch_dir(tmp_path: Path) -> None:
    """Hydra apps (Diffusion Policy's train.py) chdir into an output folder: relative paths still work."""
    pytest.importorskip("hydra")  # the [dp] extra; the core runs without it
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


# --------------------------------------------------------------------------------------------
# Corrupt, foreign and other-family weights (real files in the real formats)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Complete Meta .pt checkpoints of sam2.1 tiny and sam2 tiny, written once for this module."""
    root = tmp_path_factory.mktemp("full")
    return {name: meta_checkpoint(root, name) for name in ("sam2.1_hiera_tiny", "sam2_hiera_tiny")}


def copy_of(src: Path, tmp_path: Path) -> Path:
    dest = tmp_path / src.name
    dest.write_bytes(src.read_bytes())
    return dest


def overwrite_middle(path: Path, data: bytes = b"\x00" * 4096) -> None:
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(data)


def test_4kib_overwritten_in_the_middle_of_a_meta_pt_is_refused(tmp_path: Path, full_files) -> None:
    pt = copy_of(full_files["sam2.1_hiera_tiny"], tmp_path)
    size = pt.stat().st_size
    overwrite_middle(pt)  # zeros: finite values, so only the archive's CRC-32 can tell
    assert pt.stat().st_size == size
    raw = torch.load(pt, map_location="cpu", weights_only=True, mmap=True)["model"]  # torch itself does not notice
    assert all(torch.isfinite(v).all() for v in raw.values())
    with pytest.raises(
        CheckpointError, match=r"is truncated or corrupt: archive member .* fails its CRC-32 check"
    ) as e:
        load_checkpoint(pt)
    assert str(pt) in str(e.value) and "sam2-encoder download sam2.1_hiera_tiny" in str(e.value)
    with pytest.raises(CheckpointError, match="CRC-32"):
        SAM2ImageEncoder("sam2.1_hiera_tiny", checkpoint=str(pt), image_size=64)


def test_corruption_after_a_verified_load_is_still_caught(tmp_path: Path, full_files) -> None:
    """The CRC check is remembered per file version (size, mtime, ctime, inode), not per path."""
    from sam2_encoder.checkpoints import cache_dir

    pt = copy_of(full_files["sam2.1_hiera_tiny"], tmp_path)
    load_checkpoint(pt)
    assert len(list((cache_dir() / "verified").glob("*.json"))) == 1
    stat = pt.stat()
    overwrite_middle(pt, bytes(range(256)) * 16)
    os.utime(pt, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime: ctime still moves
    with pytest.raises(CheckpointError, match="CRC-32"):
        load_checkpoint(pt)


def test_archive_written_without_crcs_is_read(tmp_path: Path) -> None:
    from torch.utils.serialization import config

    pt = tmp_path / "nocrc.pt"
    config.save.compute_crc32 = False
    try:
        small_meta_checkpoint(pt)
    finally:
        config.save.compute_crc32 = True
    assert "vision_encoder.backbone.pos_embed" in load_checkpoint(pt)


def tiny_safetensors(path: Path, full_files, **changes: torch.Tensor) -> Path:
    state = {k: v.contiguous() for k, v in load_checkpoint(full_files["sam2.1_hiera_tiny"]).items()}
    state["shared_image_embedding.positional_embedding"] = state["shared_image_embedding.positional_embedding"].clone()
    save_file(state | changes, str(path))
    return path


def test_non_finite_weights_are_refused(tmp_path: Path, full_files) -> None:
    key = "vision_encoder.backbone.blocks.3.attn.qkv.weight"
    weight = load_checkpoint(full_files["sam2.1_hiera_tiny"])[key].clone()
    weight[0, :3] = float("nan")
    weight[1, 0] = float("inf")
    st = tiny_safetensors(tmp_path / "nan.safetensors", full_files, **{key: weight})
    message = rf"checkpoint {st} has non-finite weights in 1 tensor: {key} \(3 NaN, 1 inf of {weight.numel()}\)"
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(st)
    with pytest.raises(CheckpointError, match="non-finite"):
        SAM2ImageEncoder("sam2.1_hiera_tiny", checkpoint=str(st), image_size=64)
    # the same in a Meta .pt, and in a state dict handed to the encoder directly
    meta = dict(torch.load(full_files["sam2.1_hiera_tiny"], weights_only=True, mmap=True)["model"])
    meta["no_mem_embed"] = torch.full_like(meta["no_mem_embed"], float("-inf"))
    torch.save({"model": meta}, tmp_path / "inf.pt")
    with pytest.raises(CheckpointError, match=r"no_mem_embed \(0 NaN, 256 inf of 256\)"):
        load_checkpoint(tmp_path / "inf.pt")
    encoder = SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=64)
    state = load_checkpoint(full_files["sam2.1_hiera_tiny"]) | {key: weight}
    with pytest.raises(CheckpointError, match=rf"mine has non-finite weights in 1 tensor: {key}"):
        encoder.load_sam2_weights(state, source="mine")


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.uint8, torch.int64])
def test_non_float_tensors_are_refused(tmp_path: Path, full_files, dtype: torch.dtype) -> None:
    key = "vision_encoder.neck.convs.0.weight"
    original = load_checkpoint(full_files["sam2.1_hiera_tiny"])[key]
    st = tiny_safetensors(tmp_path / "int.safetensors", full_files, **{key: torch.ones(original.shape, dtype=dtype)})
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(CheckpointError, match=rf"{st} holds 1 tensor that is not floating point: {key} \({name}\)"):
        load_checkpoint(st)
    with pytest.raises(CheckpointError, match="not floating point"):
        SAM2ImageEncoder("sam2.1_hiera_tiny", checkpoint=str(st), image_size=64)


def test_a_checkpoint_of_the_other_family_is_refused(full_files) -> None:
    sam21, sam2 = full_files["sam2.1_hiera_tiny"], full_files["sam2_hiera_tiny"]
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(sam21, "sam2_hiera_tiny")
    assert str(e.value) == (
        f"checkpoint {sam21} is a SAM 2.1 (September 2024, sam2.1_*) checkpoint (it has the SAM 2.1-only occlusion "
        "embedding and object-pointer temporal projection (Meta's no_obj_embed_spatial, obj_ptr_tpos_proj)), but "
        "sam2_hiera_tiny is SAM 2 (July 2024, sam2_*); use variant 'sam2.1_hiera_tiny'"
    )
    with pytest.raises(
        CheckpointError, match=r"is a SAM 2 \(July 2024, sam2_\*\) checkpoint .* use variant 'sam2_hiera_tiny'"
    ):
        load_checkpoint(sam2, "sam2.1_hiera_tiny")
    with pytest.raises(CheckpointError, match="is a SAM 2 "):
        verify_checkpoint(sam2, "sam2.1_hiera_tiny")
    verify_checkpoint(sam2, "sam2_hiera_tiny")
    verify_checkpoint(sam21, "sam2.1_hiera_tiny")
    assert checkpoint_family(load_checkpoint(sam21)) == "sam2.1" and checkpoint_family(load_checkpoint(sam2)) == "sam2"
    image_only = [k for k in load_checkpoint(sam21) if k.startswith("vision_encoder.")]
    assert checkpoint_family(image_only) is None  # the image encoders of both families are alike: undetectable


def test_image_encoder_refuses_a_checkpoint_of_the_other_family(full_files) -> None:
    with pytest.raises(CheckpointError, match="is a SAM 2.1 "):
        SAM2ImageEncoder("sam2_hiera_tiny", checkpoint=str(full_files["sam2.1_hiera_tiny"]), image_size=64)
    with pytest.raises(CheckpointError, match="is a SAM 2 "):
        SAM2ImageEncoder("sam2.1_hiera_tiny", checkpoint=str(full_files["sam2_hiera_tiny"]), image_size=64)


def test_verify_checkpoint_checks_every_key_and_shape(tmp_path: Path, full_files) -> None:
    meta = dict(torch.load(full_files["sam2.1_hiera_tiny"], weights_only=True, mmap=True)["model"])
    del meta["sam_mask_decoder.iou_token.weight"]
    meta["memory_encoder.out_proj.bias"] = torch.zeros(3)
    torch.save({"model": meta}, tmp_path / "sam2.1_hiera_tiny.pt")
    with pytest.raises(CheckpointError) as e:
        verify_checkpoint(tmp_path / "sam2.1_hiera_tiny.pt", "sam2.1_hiera_tiny")
    assert (
        "does not fit sam2.1_hiera_tiny: 1 shape mismatches: memory_encoder.projection.bias [3] in checkpoint"
        in str(e.value)
    )
    assert "1 missing keys: mask_decoder.iou_token.weight" in str(e.value)
    # transformers' image-only file (no memory modules) is checked against the image model
    with torch.device("meta"):
        image_keys = set(Sam2Model(get_variant("sam2.1_hiera_tiny").image_model_config(1024)).state_dict())
    image = tiny_safetensors(tmp_path / "image.safetensors", full_files)
    save_file({k: v for k, v in load_file(str(image)).items() if k in image_keys}, str(image))
    assert checkpoint_family(load_checkpoint(image)) is None
    verify_checkpoint(image, "sam2.1_hiera_tiny")
    verify_checkpoint(image, "sam2_hiera_tiny")  # undetectable family: accepted by both


def test_path_resolution_never_imports_hydra(tmp_path: Path, full_files) -> None:
    code = (
        "import sys\n"
        "from sam2_encoder.checkpoints import find_local_path, resolve_checkpoint\n"
        "before = 'hydra' in sys.modules\n"
        f"resolve_checkpoint({str(full_files['sam2.1_hiera_tiny'])!r})\n"
        "find_local_path('no/such/file.pt')\n"
        "print(before, 'hydra' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
