"""Bad inputs, one row each: what is given -> the exception type and a fragment of its message.

Every bad input must fail with ONE clear, one-line error that names what was given (the key,
file, shape or value) and what was expected. Add rows to ``CASES``; a row's ``call`` gets a
fresh temporary folder for any files it needs to write.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sam2_encoder.checkpoints import (
    CheckpointError,
    download,
    load_checkpoint,
    read_pins,
    resolve_checkpoint,
    verify_checkpoint,
    write_pins,
)
from sam2_encoder.transforms import SAM2Transforms
from sam2_encoder.variants import check_image_size, get_variant


@dataclass(frozen=True)
class Bad:
    """One bad input: ``call(tmp_path)`` must raise ``error`` with ``fragment`` in its message."""

    id: str
    call: Callable[[Path], object]
    error: type[BaseException]
    fragment: str


# ---- files in the real formats, written by the rows that need them ---------------------------


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _meta_pt(path: Path, **extra: torch.Tensor) -> Path:
    """A small Meta-format .pt: the trunk's patch embedding and position embedding, plus ``extra``."""
    g = torch.Generator().manual_seed(0)
    model = {
        "image_encoder.trunk.pos_embed": torch.randn(1, 96, 7, 7, generator=g) * 0.02,
        "image_encoder.trunk.patch_embed.proj.weight": torch.randn(96, 3, 7, 7, generator=g) * 0.1,
    }
    torch.save({"model": model | extra}, path)
    return path


def _truncated(path: Path) -> Path:
    data = _meta_pt(path).read_bytes()
    return _write(path, data[: len(data) * 2 // 3])


def _safetensors(path: Path, **tensors: torch.Tensor) -> Path:
    save_file({"vision_encoder.backbone.pos_embed": torch.zeros(1, 96, 7, 7)} | tensors, str(path))
    return path


class _RunsCode:
    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (print, ("this must never run",))


def _pickle_with_code(path: Path) -> Path:
    torch.save({"model": {"x": torch.zeros(1)}, "hook": _RunsCode()}, path)
    return path


def _hf_folder(path: Path, index: str | None, shards: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    path.mkdir()
    if index is not None:
        (path / "model.safetensors.index.json").write_text(index)
    for name, tensors in (shards or {}).items():
        save_file(tensors, str(path / name))
    return path


_NAN = float("nan")
_INF = float("inf")
_DIGEST = "a" * 64

CASES: list[Bad] = [
    # --- SAM2Transforms settings ---
    Bad(
        "transforms input_range inf",
        lambda t: SAM2Transforms(64, input_range=(0, _INF)),
        ValueError,
        "input_range must be finite, got (0, inf)",
    ),
    Bad(
        "transforms input_range nan",
        lambda t: SAM2Transforms(64, input_range=(_NAN, 1)),
        ValueError,
        "input_range must be finite, got (nan, 1)",
    ),
    Bad(
        "transforms input_range empty",
        lambda t: SAM2Transforms(64, input_range=(1, 1)),
        ValueError,
        "input_range must be (low, high) with high > low, got (1, 1)",
    ),
    Bad(
        "transforms input_range reversed",
        lambda t: SAM2Transforms(64, input_range=(1, -1)),
        ValueError,
        "high > low, got (1, -1)",
    ),
    Bad(
        "transforms input_range string",
        lambda t: SAM2Transforms(64, input_range="01"),
        ValueError,
        "input_range must be two numbers (low, high), got '01'",
    ),
    Bad(
        "transforms input_range three values",
        lambda t: SAM2Transforms(64, input_range=(0, 1, 2)),
        ValueError,
        "input_range must be two numbers (low, high), got (0, 1, 2)",
    ),
    Bad(
        "transforms tolerance negative",
        lambda t: SAM2Transforms(64, tolerance=-1),
        ValueError,
        "tolerance must be finite and >= 0, got -1",
    ),
    Bad(
        "transforms tolerance inf",
        lambda t: SAM2Transforms(64, tolerance=_INF),
        ValueError,
        "tolerance must be finite and >= 0, got inf",
    ),
    Bad(
        "transforms tolerance nan",
        lambda t: SAM2Transforms(64, tolerance=_NAN),
        ValueError,
        "tolerance must be finite and >= 0, got nan",
    ),
    Bad(
        "transforms tolerance string",
        lambda t: SAM2Transforms(64, tolerance="0.1"),
        ValueError,
        "tolerance must be a number >= 0, got '0.1'",
    ),
    Bad(
        "transforms channel order",
        lambda t: SAM2Transforms(64, channel_order="rgb"),
        ValueError,
        "channel_order must be 'RGB' or 'BGR', got 'rgb'",
    ),
    Bad(
        "transforms layout",
        lambda t: SAM2Transforms(64, layout="NCHW"),
        ValueError,
        "layout must be 'auto', 'CHW' or 'HWC', got 'NCHW'",
    ),
    # --- image sizes ---
    Bad(
        "image_size not a multiple of 32",
        lambda t: check_image_size(100),
        ValueError,
        "positive multiple of 32 on each side, got 100; nearest valid sizes: 96, 96",
    ),
    Bad("image_size zero", lambda t: SAM2Transforms(0), ValueError, "positive multiple of 32 on each side, got 0"),
    Bad(
        "image_size float",
        lambda t: check_image_size(224.0),
        ValueError,
        "image_size must be an int or (H, W) ints, got 224.0",
    ),
    Bad(
        "image_size numpy float",
        lambda t: check_image_size(np.float32(224)),
        ValueError,
        "image_size must be an int or (H, W) ints, got np.float32(224.0)",
    ),
    Bad(
        "image_size bool",
        lambda t: check_image_size(True),
        ValueError,
        "image_size must be an int or (H, W) ints, got True",
    ),
    Bad(
        "image_size None",
        lambda t: check_image_size(None),
        ValueError,
        "image_size must be an int or (H, W) ints, got None",
    ),
    Bad(
        "image_size string",
        lambda t: check_image_size("224"),
        ValueError,
        "image_size must be an int or (H, W) ints, got '224'",
    ),
    Bad(
        "image_size three sides",
        lambda t: check_image_size((64, 64, 3)),
        ValueError,
        "image_size must be an int or (H, W) ints, got (64, 64, 3)",
    ),
    Bad(
        "video model non-square",
        lambda t: get_variant("sam2.1_hiera_tiny").video_model_config((64, 96)),
        ValueError,
        "the video model takes a square image_size, got (64, 96)",
    ),
    # --- images given to SAM2Transforms ---
    Bad(
        "images 4 channels",
        lambda t: SAM2Transforms(32)(torch.rand(1, 4, 32, 32)),
        ValueError,
        "images must have 3 colour channels; got shape (1, 4, 32, 32)",
    ),
    Bad(
        "images 2-D",
        lambda t: SAM2Transforms(32)(torch.rand(32, 32)),
        ValueError,
        "images must have shape (B, 3, H, W), (3, H, W), (B, H, W, 3) or (H, W, 3); got (32, 32)",
    ),
    Bad("images 5-D", lambda t: SAM2Transforms(32)(torch.rand(1, 1, 3, 8, 8)), ValueError, "got (1, 1, 3, 8, 8)"),
    Bad(
        "images no pixels",
        lambda t: SAM2Transforms(32)(torch.rand(1, 3, 0, 8)),
        ValueError,
        "images have no pixels: shape (1, 3, 0, 8)",
    ),
    Bad(
        "images NaN",
        lambda t: SAM2Transforms(32)(torch.full((1, 3, 8, 8), _NAN)),
        ValueError,
        "images contain NaN or inf",
    ),
    Bad(
        "images inf",
        lambda t: SAM2Transforms(32)(torch.full((1, 3, 8, 8), _INF)),
        ValueError,
        "images contain NaN or inf",
    ),
    Bad(
        "images out of range",
        lambda t: SAM2Transforms(32)(torch.full((1, 3, 8, 8), 2.0)),
        ValueError,
        "images have values in [2, 2], outside input_range (0.0, 1.0)",
    ),
    Bad(
        "images 0..255 floats",
        lambda t: SAM2Transforms(32)(torch.full((1, 3, 8, 8), 200.0)),
        ValueError,
        "pass uint8 for 0..255 images",
    ),
    Bad(
        "images [-1, 1] without input_range",
        lambda t: SAM2Transforms(32)(-torch.rand(1, 3, 8, 8)),
        ValueError,
        "use input_range=(-1, 1)",
    ),
    Bad(
        "images int32",
        lambda t: SAM2Transforms(32)(torch.zeros(1, 3, 8, 8, dtype=torch.int32)),
        TypeError,
        "images must be uint8 or floating point, got torch.int32",
    ),
    Bad(
        "images bool",
        lambda t: SAM2Transforms(32)(np.zeros((8, 8, 3), dtype=bool)),
        TypeError,
        "images must be uint8 or floating point, got torch.bool",
    ),
    Bad(
        "images a path",
        lambda t: SAM2Transforms(32)("frame.png"),
        TypeError,
        "images must be a torch.Tensor, numpy array or list of them, got str",
    ),
    Bad(
        "images list with a bad one",
        lambda t: SAM2Transforms(32)([torch.rand(3, 8, 8), torch.rand(8, 8)]),
        ValueError,
        "got (8, 8)",
    ),
    # --- variants ---
    Bad(
        "unknown variant",
        lambda t: get_variant("sam3_hiera_tiny"),
        ValueError,
        "unknown SAM 2 variant 'sam3_hiera_tiny'; known variants: sam2_hiera_tiny",
    ),
    # --- checkpoint files ---
    Bad("checkpoint missing", lambda t: load_checkpoint(t / "nope.pt"), FileNotFoundError, "checkpoint not found: "),
    Bad(
        "checkpoint missing with download hint",
        lambda t: resolve_checkpoint(str(t / "sam2.1_hiera_tiny.pt")),
        FileNotFoundError,
        "download it with `sam2-encoder download sam2.1_hiera_tiny`",
    ),
    Bad(
        "checkpoint not cached, downloads off",
        lambda t: resolve_checkpoint("sam2_hiera_small", download_missing=False),
        FileNotFoundError,
        "is not in the cache",
    ),
    Bad(
        "checkpoint empty file",
        lambda t: load_checkpoint(_write(t / "w.pt", b"")),
        CheckpointError,
        "is empty (0 bytes), not a checkpoint",
    ),
    Bad(
        "checkpoint is an HTML page",
        lambda t: load_checkpoint(_write(t / "w.pt", b"<!doctype html><html>login</html>")),
        CheckpointError,
        "is an HTML page, not a checkpoint (it starts with '<!doctype html>",
    ),
    Bad(
        "checkpoint is a Git LFS pointer",
        lambda t: load_checkpoint(_write(t / "w.pt", b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n")),
        CheckpointError,
        "is a Git LFS pointer, not the checkpoint itself: fetch it with `git lfs pull`",
    ),
    Bad(
        "checkpoint is a text file",
        lambda t: load_checkpoint(_write(t / "w.pt", b"model weights: see README\n")),
        CheckpointError,
        "is a text file, not a checkpoint (it starts with 'model weights: see README'",
    ),
    Bad(
        "checkpoint random bytes",
        lambda t: load_checkpoint(_write(t / "w.pt", bytes(range(256)) * 4)),
        CheckpointError,
        "is not a checkpoint: neither a PyTorch archive (.pt) nor a safetensors file",
    ),
    Bad(
        "checkpoint truncated .pt",
        lambda t: load_checkpoint(_truncated(t / "sam2_hiera_small.pt")),
        CheckpointError,
        "File is not a zip file (re-download with `sam2-encoder download sam2_hiera_small --dir ",
    ),
    Bad(
        "checkpoint pickle that runs code",
        lambda t: load_checkpoint(_pickle_with_code(t / "w.pt")),
        CheckpointError,
        "could not be read safely with torch.load(weights_only=True)",
    ),
    Bad(
        "checkpoint of something else",
        lambda t: load_checkpoint(_write_torch(t / "w.pt", [1, 2, 3])),
        CheckpointError,
        "is not a SAM 2 checkpoint: expected a 'model' state dict, found list",
    ),
    Bad(
        "checkpoint with a non-tensor entry",
        lambda t: load_checkpoint(_meta_pt(t / "w.pt", step=3)),
        CheckpointError,
        "holds 1 entry that is not a tensor: step (int)",
    ),
    Bad(
        "checkpoint NaN in .pt",
        lambda t: load_checkpoint(_meta_pt(t / "w.pt", no_mem_embed=torch.full((1, 1, 256), _NAN))),
        CheckpointError,
        "has non-finite weights in 1 tensor: no_mem_embed (256 NaN, 0 inf of 256)",
    ),
    Bad(
        "checkpoint NaN in safetensors",
        lambda t: load_checkpoint(_safetensors(t / "w.safetensors", x=torch.tensor([1.0, _NAN, _INF, -_INF]))),
        CheckpointError,
        "has non-finite weights in 1 tensor: x (1 NaN, 2 inf of 4)",
    ),
    Bad(
        "checkpoint int32 tensor",
        lambda t: load_checkpoint(_safetensors(t / "w.safetensors", x=torch.ones(3, dtype=torch.int32))),
        CheckpointError,
        "holds 1 tensor that is not floating point: x (int32)",
    ),
    Bad(
        "checkpoint bool tensor",
        lambda t: load_checkpoint(_safetensors(t / "w.safetensors", m=torch.ones(3, dtype=torch.bool))),
        CheckpointError,
        "holds 1 tensor that is not floating point: m (bool)",
    ),
    Bad(
        "checkpoint safetensors garbage",
        lambda t: load_checkpoint(_write(t / "w.safetensors", b"\x00" * 100)),
        CheckpointError,
        "is truncated or corrupt",
    ),
    Bad(
        "checkpoint safetensors cut short",
        lambda t: load_checkpoint(_write(t / "w.safetensors", _safetensors(t / "x.safetensors").read_bytes()[:-8])),
        CheckpointError,
        "is truncated or corrupt",
    ),
    Bad(
        "checkpoint of the other family",
        lambda t: load_checkpoint(_meta_pt(t / "w.pt", no_obj_embed_spatial=torch.zeros(1, 64)), "sam2_hiera_tiny"),
        CheckpointError,
        "is a SAM 2.1 (September 2024, sam2.1_*) checkpoint",
    ),
    Bad(
        "checkpoint of the other family, reverse",
        lambda t: load_checkpoint(
            _meta_pt(t / "w.pt", **{"memory_attention.norm.weight": torch.ones(256)}), "sam2.1_hiera_tiny"
        ),
        CheckpointError,
        "is a SAM 2 (July 2024, sam2_*) checkpoint (it has the memory modules but not the SAM 2.1-only keys",
    ),
    Bad(
        "checkpoint incomplete for its variant",
        lambda t: verify_checkpoint(_meta_pt(t / "w.pt"), "sam2.1_hiera_tiny"),
        CheckpointError,
        "does not fit sam2.1_hiera_tiny: ",
    ),
    Bad(
        "HF folder without weights",
        lambda t: load_checkpoint(_hf_folder(t / "hf", None)),
        CheckpointError,
        "is a directory without model.safetensors: not a Hugging Face model folder",
    ),
    Bad(
        "HF folder with a broken index",
        lambda t: load_checkpoint(_hf_folder(t / "hf", "{not json")),
        CheckpointError,
        "is not a valid safetensors index (expected JSON with a 'weight_map')",
    ),
    Bad(
        "HF folder with a missing shard",
        lambda t: load_checkpoint(_hf_folder(t / "hf", json.dumps({"weight_map": {"a": "model-1.safetensors"}}))),
        CheckpointError,
        "lists the shard model-1.safetensors, which is missing from",
    ),
    Bad(
        "HF folder with a tensor missing from its shard",
        lambda t: load_checkpoint(
            _hf_folder(
                t / "hf",
                json.dumps({"weight_map": {"a": "s.safetensors", "b": "s.safetensors"}}),
                {"s.safetensors": {"a": torch.zeros(1)}},
            )
        ),
        CheckpointError,
        "maps 1 tensor to shards that lack them: b",
    ),
    # --- downloads and pins ---
    Bad(
        "download unknown URL scheme",
        lambda t: download("ftp-ish://x/w.pt", t / "w.pt", progress=False),
        CheckpointError,
        "download of ftp-ish://x/w.pt failed: unknown url type: ftp-ish",
    ),
    Bad(
        "download not a URL",
        lambda t: download("not a url", t / "w.pt", progress=False),
        CheckpointError,
        "cannot download 'not a url'",
    ),
    Bad(
        "pins not UTF-8",
        lambda t: read_pins(_write(t / "SHA256SUMS", b"\xff\n")),
        CheckpointError,
        "line 1 is not valid UTF-8 (byte 0xff at column 1)",
    ),
    Bad(
        "pins malformed line",
        lambda t: read_pins(_write(t / "SHA256SUMS", f"{_DIGEST}\n".encode())),
        CheckpointError,
        "line 1 is not '<64 hex digits>  <file name>'",
    ),
    Bad(
        "pins a name twice",
        lambda t: read_pins(_write(t / "SHA256SUMS", f"{_DIGEST}  a.pt\n{'b' * 64}  a.pt\n".encode())),
        CheckpointError,
        "line 2 pins a.pt to a second sha256",
    ),
    Bad(
        "pin a bad digest",
        lambda t: write_pins(t / "SHA256SUMS", {"a.pt": "123"}),
        ValueError,
        "cannot pin 'a.pt' to '123': expected a file name and 64 hex digits",
    ),
]


def _write_torch(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Bad, tmp_path: Path) -> None:
    with pytest.raises(case.error) as info:
        case.call(tmp_path)
    message = str(info.value)
    if isinstance(info.value, KeyError | FileNotFoundError) and info.value.args:
        message = str(info.value.args[0])
    assert case.fragment in message, f"{case.id}: {message!r}"
    assert "\n" not in message, f"{case.id}: one line, not {message!r}"


def test_case_ids_are_unique() -> None:
    assert len({c.id for c in CASES}) == len(CASES)
