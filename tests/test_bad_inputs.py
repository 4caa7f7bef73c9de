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
from sam2_encoder.diffusion_policy.feature_cache import CacheError
from sam2_encoder.diffusion_policy.mask_cache import MaskCacheError
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


# ---- encoders, heads, fine-tuning, feature caches, prompts --------------------------------------

_CAM = {"c": (3, 32, 32)}
_RGB = {"shape": [3, 32, 32], "type": "rgb"}


def _cams(**kwargs: object) -> object:
    """``MultiCameraEncoder`` over one 32x32 camera at 32 px (seeded random weights)."""
    from sam2_encoder.camera_encoder import MultiCameraEncoder

    return MultiCameraEncoder(kwargs.pop("cameras", _CAM), image_size=32, **kwargs)


def _dp(obs: object, **kwargs: object) -> object:
    from sam2_encoder.diffusion_policy.obs_encoder import SAM2ObsEncoder

    meta = {"obs": obs, "action": {"shape": [2]}} if obs is not None else {"action": {"shape": [2]}}
    return SAM2ObsEncoder(meta, image_size=32, **kwargs)


def _forward_features(dtype: torch.dtype) -> object:
    enc = _cams().eval()
    with torch.no_grad():
        return enc({"c": torch.ones(2, *enc.feature_shape, dtype=dtype)})


_PREDICTOR: list[object] = []
_FRAME = np.zeros((48, 64, 3), np.uint8)


def _prompt(frame: np.ndarray = _FRAME, **kwargs: object) -> object:
    """``add_prompt`` on a fresh tracking state of one shared 64 px ``StreamingPredictor``."""
    from sam2_encoder.streaming import StreamingPredictor

    if not _PREDICTOR:
        _PREDICTOR.append(StreamingPredictor("sam2.1_hiera_tiny", image_size=64))
    predictor = _PREDICTOR[0]
    predictor.reset()
    kwargs.setdefault("obj_id", 1)
    return predictor.add_prompt(frame, **kwargs)


def _track_first() -> object:
    _prompt(points=[[1, 1]])
    _PREDICTOR[0].reset()
    return _PREDICTOR[0].track(_FRAME)


def _replay(path: Path) -> Path:
    from sam2_encoder.diffusion_policy.synthetic import write_replay_buffer

    return write_replay_buffer(path / "replay.zarr", episodes=1, steps=4, size=32)


def _build(path: Path, **kwargs: object) -> object:
    from sam2_encoder.diffusion_policy.feature_cache import build_cache
    from sam2_encoder.image_encoder import SAM2ImageEncoder

    kwargs.setdefault("keys", ["img"])
    encoder = SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=32)
    return build_cache(_replay(path), encoder=encoder, out=path / "c.zarr", progress=False, **kwargs)


def _with_masks(
    path: Path, keys: object = ("img",), prompts: object = None, mask_only: bool = False, **kwargs: object
) -> object:
    """``build_cache_with_masks`` over a 1-episode 32x32 replay buffer with the shared 64 px predictor."""
    from sam2_encoder.diffusion_policy.mask_cache import build_mask_cache
    from sam2_encoder.diffusion_policy.tracked_cache import build_cache_with_masks

    _prompt(points=[[1, 1]])  # builds the shared predictor
    prompts = prompts or {"objects": [1], "episodes": {"0": {"1": {"points": [[4, 4]]}}}}
    if mask_only:
        return build_mask_cache(_replay(path), "img", prompts, path / "m.zarr", _PREDICTOR[0], "w", on_features=print)
    kwargs.setdefault("out", path / "f.zarr")
    return build_cache_with_masks(_replay(path), list(keys), _PREDICTOR[0], prompts, "w", **kwargs)


def _open_cache(path: Path) -> object:
    from sam2_encoder.diffusion_policy.feature_cache import FeatureCache

    return FeatureCache(path)


def _masks(path: Path, format_: int | None = None, damage: str | None = None) -> Path:
    """A complete 1-episode mask cache (no prompts: empty masks), its format or a file then damaged."""
    from sam2_encoder.diffusion_policy.mask_cache import build_mask_cache
    from sam2_encoder.diffusion_policy.zarr_io import chunk_path

    if not _PREDICTOR:
        _prompt(points=[[1, 1]])  # builds the shared predictor
    prompts = {"objects": [1], "episodes": {"0": {}}}
    out = build_mask_cache(_replay(path), "img", prompts, path / "m.zarr", _PREDICTOR[0], "w")
    if format_ is not None:
        attrs = json.loads((out / ".zattrs").read_text())
        attrs["sam2_encoder_masks"]["format"] = format_
        (out / ".zattrs").write_text(json.dumps(attrs))
    if damage is not None:  # "masks" or "checksums": its first chunk file overwritten with other bytes
        _write(chunk_path(out, damage, (0, 0, 0, 0) if damage == "masks" else (0,)), b"not a chunk of this array")
    return out


def _open_masks(path: Path, frames: list[int] | None = None, **dataset: object) -> object:
    from sam2_encoder.diffusion_policy.mask_cache import MaskCache, MaskDataset
    from sam2_encoder.diffusion_policy.synthetic import ReplayImageDataset

    cache = MaskCache(path)
    if dataset:
        return MaskDataset(cache, "image_masks", dataset=ReplayImageDataset(path.parent / "replay.zarr"), **dataset)
    return cache.masks(frames or [0])


_CACHED = "sam2_encoder.diffusion_policy.feature_cache.CachedFeatureDataset"


def _chain(path: Path, targets: list) -> object:
    """``MaskDataset`` built through a ``dataset_target`` chain (the Hydra form of masks over cached features)."""
    from sam2_encoder.diffusion_policy.mask_cache import MaskDataset

    pytest.importorskip("hydra")
    cache = _masks(path)
    return MaskDataset(cache, "image_masks", dataset_target=targets, zarr_path=str(path / "replay.zarr"))


def _plain_zarr(path: Path) -> Path:
    from sam2_encoder.diffusion_policy.zarr_io import create_array, open_group

    create_array(open_group(path, mode="w"), "x", (2,), (2,), "int64", 0)
    return path


MODEL_CASES: list[Bad] = [
    # --- shape_meta forms (Diffusion Policy) ---
    Bad(
        "shape_meta no obs",
        lambda t: _dp(None),
        ValueError,
        "shape_meta needs an 'obs' mapping of {key: {shape, type}}, got ['action']",
    ),
    Bad("shape_meta obs a list", lambda t: _dp([_RGB]), ValueError, "shape_meta needs an 'obs' mapping"),
    Bad(
        "shape_meta missing shape",
        lambda t: _dp({"c": {"type": "rgb"}}),
        ValueError,
        "shape_meta.obs.c needs a 'shape' entry, got {'type': 'rgb'}",
    ),
    Bad(
        "shape_meta shape a string",
        lambda t: _dp({"c": {"shape": "3,32,32", "type": "rgb"}}),
        ValueError,
        "shape_meta.obs.c.shape must be a list of whole numbers >= 1, got '3,32,32'",
    ),
    Bad(
        "shape_meta shape None",
        lambda t: _dp({"c": {"shape": None, "type": "rgb"}}),
        ValueError,
        "shape_meta.obs.c.shape must be a list of whole numbers >= 1, got None",
    ),
    Bad(
        "shape_meta rgb 4 channels",
        lambda t: _dp({"c": {"shape": [4, 32, 32], "type": "rgb"}}),
        ValueError,
        "shape_meta.obs.c: rgb shape must be [3, H, W], got [4, 32, 32]",
    ),
    Bad(
        "shape_meta rgb HWC",
        lambda t: _dp({"c": {"shape": [32, 32, 3], "type": "rgb"}}),
        ValueError,
        "rgb shape must be [3, H, W], got [32, 32, 3]",
    ),
    Bad(
        "shape_meta rgb 2-D",
        lambda t: _dp({"c": {"shape": [32, 32], "type": "rgb"}}),
        ValueError,
        "rgb shape must be [3, H, W], got [32, 32]",
    ),
    Bad("shape_meta no rgb key", lambda t: _dp({"pos": {"shape": [2]}}), ValueError, "shape_meta.obs has no rgb key"),
    Bad(
        "shape_meta unknown type",
        lambda t: _dp({"c": {"shape": [3, 32, 32], "type": "depth"}}),
        ValueError,
        "shape_meta.obs.c: type must be 'rgb', 'low_dim' or 'mask', got 'depth'",
    ),
    Bad(
        "shape_meta low_dim negative",
        lambda t: _dp({"c": _RGB, "pos": {"shape": [-1]}}),
        ValueError,
        "shape_meta.obs.pos.shape must be whole numbers >= 1, got [-1]",
    ),
    Bad(
        "shape_meta low_dim zero",
        lambda t: _dp({"c": _RGB, "pos": {"shape": [0]}}),
        ValueError,
        "shape_meta.obs.pos.shape must be whole numbers >= 1, got [0]",
    ),
    Bad(
        "shape_meta rgb fraction",
        lambda t: _dp({"c": {"shape": [3, 32.5, 32], "type": "rgb"}}),
        ValueError,
        "shape_meta.obs.c.shape must be whole numbers >= 1, got [3, 32.5, 32]",
    ),
    Bad(
        "shape_meta low_dim bool",
        lambda t: _dp({"c": _RGB, "pos": {"shape": [True]}}),
        ValueError,
        "shape_meta.obs.pos.shape must be whole numbers >= 1, got [True]",
    ),
    Bad(
        "shape_meta low_dim fraction",
        lambda t: _dp({"c": _RGB, "pos": {"shape": [2.5]}}),
        ValueError,
        "shape_meta.obs.pos.shape must be whole numbers >= 1, got [2.5]",
    ),
    Bad(
        "shape_meta low_dim a number",
        lambda t: _dp({"c": _RGB, "pos": {"shape": 2}}),
        ValueError,
        "shape_meta.obs.pos.shape must be a list of whole numbers >= 1, got 2",
    ),
    Bad(
        "shape_meta mask 2-D",
        lambda t: _dp({"c": _RGB, "m": {"shape": [32, 32], "type": "mask"}}),
        ValueError,
        "shape_meta.obs.m: mask shape must be [K, H, W] (K objects), got [32, 32]",
    ),
    Bad(
        "shape_meta mask other size",
        lambda t: _dp({"c": _RGB, "m": {"shape": [2, 16, 16], "type": "mask", "camera": "c"}}),
        ValueError,
        "shape_meta.obs.m: mask shape [K, H, W] must have camera 'c''s H, W [32, 32], got [2, 16, 16]",
    ),
    Bad(
        "shape_meta mask unknown camera",
        lambda t: _dp({"c": _RGB, "m": {"shape": [2, 32, 32], "type": "mask", "camera": "cam"}}),
        ValueError,
        "shape_meta.obs.m: a mask entry needs camera: <the rgb key it belongs to>, one of ['c']; got camera 'cam'",
    ),
    Bad(
        "shape_meta mask camera is low_dim",
        lambda t: _dp({"c": _RGB, "pos": {"shape": [2]}, "m": {"shape": [1, 32, 32], "type": "mask", "camera": "pos"}}),
        ValueError,
        "a mask entry needs camera: <the rgb key it belongs to>, one of ['c']; got camera 'pos'",
    ),
    Bad(
        "shape_meta mask no camera of two",
        lambda t: _dp({"a": _RGB, "b": _RGB, "m": {"shape": [1, 32, 32], "type": "mask"}}),
        ValueError,
        "shape_meta.obs.m: a mask entry needs camera: <the rgb key it belongs to>, one of ['a', 'b']; got no camera",
    ),
    Bad(
        "shape_meta two masks one camera",
        lambda t: _dp(
            {"c": _RGB, "m1": {"shape": [1, 32, 32], "type": "mask"}, "m2": {"shape": [1, 32, 32], "type": "mask"}}
        ),
        ValueError,
        "shape_meta.obs: camera 'c' has two mask entries, 'm1' and 'm2'; give one (K, H, W) entry per camera",
    ),
    Bad(
        "shape_meta masks with different K",
        lambda t: _dp(
            {
                "a": _RGB,
                "b": _RGB,
                "ma": {"shape": [1, 32, 32], "type": "mask", "camera": "a"},
                "mb": {"shape": [3, 32, 32], "type": "mask", "camera": "b"},
            }
        ),
        ValueError,
        "every mask entry must track the same number of objects K (num_objects), got {'ma': 1, 'mb': 3}",
    ),
    Bad(
        "shape_meta mask vs object_masks_key",
        lambda t: _dp({"c": _RGB, "m": {"shape": [2, 32, 32], "type": "mask"}}, object_masks_key="c_masks"),
        ValueError,
        "object_masks_key='c_masks' disagrees with the mask entries of shape_meta ({'c': 'm'}); leave object_masks_key",
    ),
    Bad(
        "shape_meta mask vs num_objects",
        lambda t: _dp({"c": _RGB, "m": {"shape": [2, 32, 32], "type": "mask"}}, num_objects=3),
        ValueError,
        "num_objects=3 disagrees with shape_meta.obs.m.shape [2, 32, 32] (K=2); leave num_objects out (null)",
    ),
    # --- cameras ---
    Bad(
        "cameras none",
        lambda t: _cams(cameras={}),
        ValueError,
        "at least one camera is needed: cameras={key: (3, H, W)}",
    ),
    Bad(
        "camera shape fraction",
        lambda t: _cams(cameras={"c": (3, 32.5, 32)}),
        ValueError,
        "camera 'c': shape must be whole numbers >= 1, got [3, 32.5, 32]",
    ),
    Bad(
        "camera shape 2 values",
        lambda t: _cams(cameras={"c": (32, 32)}),
        ValueError,
        "camera 'c': shape must be [3, H, W], got [32, 32]",
    ),
    Bad(
        "camera shape a number",
        lambda t: _cams(cameras={"c": 32}),
        ValueError,
        "camera 'c': shape must be a list of whole numbers >= 1, got 32",
    ),
    Bad(
        "camera shape bools",
        lambda t: _cams(cameras={"c": (True, 32, 32)}),
        ValueError,
        "camera 'c': shape must be whole numbers >= 1, got [True, 32, 32]",
    ),
    # --- crop / resize shapes ---
    Bad(
        "crop larger than image",
        lambda t: _cams(crop_shape=(40, 40)),
        ValueError,
        "crop_shape [40, 40] is larger than camera 'c' (32x32)",
    ),
    Bad(
        "crop larger than resize",
        lambda t: _cams(resize_shape=(24, 24), crop_shape=(28, 20)),
        ValueError,
        "crop_shape [28, 20] is larger than camera 'c' (24x24)",
    ),
    Bad(
        "crop one value",
        lambda t: _cams(crop_shape=(20,)),
        ValueError,
        "crop_shape must be 2 whole numbers (H, W), got [20]",
    ),
    Bad(
        "crop three values",
        lambda t: _cams(crop_shape=(20, 20, 3)),
        ValueError,
        "crop_shape must be 2 whole numbers (H, W), got [20, 20, 3]",
    ),
    Bad(
        "crop zero",
        lambda t: _cams(crop_shape=(0, 20)),
        ValueError,
        "crop_shape must be whole numbers >= 1, got [0, 20]",
    ),
    Bad(
        "crop negative",
        lambda t: _cams(crop_shape=(-4, 20)),
        ValueError,
        "crop_shape must be whole numbers >= 1, got [-4, 20]",
    ),
    Bad(
        "crop fraction",
        lambda t: _cams(crop_shape=(20.5, 20)),
        ValueError,
        "crop_shape must be whole numbers >= 1, got [20.5, 20]",
    ),
    Bad(
        "crop a number",
        lambda t: _cams(crop_shape=20),
        ValueError,
        "crop_shape must be a list of whole numbers >= 1, got 20",
    ),
    Bad(
        "crop a string",
        lambda t: _cams(crop_shape="20,20"),
        ValueError,
        "crop_shape must be a list of whole numbers >= 1, got '20,20'",
    ),
    Bad(
        "resize zero",
        lambda t: _cams(resize_shape=(0, 20)),
        ValueError,
        "resize_shape must be whole numbers >= 1, got [0, 20]",
    ),
    # --- fine-tuning: LoRA rank / alpha, blocks, modes ---
    Bad(
        "lora rank 0",
        lambda t: _cams(freeze=False, finetune="lora", lora_rank=0),
        ValueError,
        "LoRA rank (lora_rank) must be a whole number >= 1, got 0",
    ),
    Bad(
        "lora rank negative",
        lambda t: _cams(freeze=False, finetune="lora", lora_rank=-2),
        ValueError,
        "LoRA rank (lora_rank) must be a whole number >= 1, got -2",
    ),
    Bad(
        "lora rank float",
        lambda t: _cams(freeze=False, finetune="lora", lora_rank=2.5),
        ValueError,
        "LoRA rank (lora_rank) must be a whole number >= 1, got 2.5",
    ),
    Bad(
        "lora rank bool",
        lambda t: _cams(freeze=False, finetune="lora", lora_rank=True),
        ValueError,
        "LoRA rank (lora_rank) must be a whole number >= 1, got True",
    ),
    Bad(
        "lora rank string",
        lambda t: _cams(freeze=False, finetune="lora", lora_rank="8"),
        ValueError,
        "LoRA rank (lora_rank) must be a whole number >= 1, got '8'",
    ),
    Bad(
        "lora alpha nan",
        lambda t: _cams(freeze=False, finetune="lora", lora_alpha=_NAN),
        ValueError,
        "LoRA alpha (lora_alpha) must be a finite number > 0, got nan",
    ),
    Bad(
        "lora alpha zero",
        lambda t: _cams(freeze=False, finetune="lora", lora_alpha=0),
        ValueError,
        "LoRA alpha (lora_alpha) must be a finite number > 0, got 0",
    ),
    Bad(
        "finetune blocks 0",
        lambda t: _cams(freeze=False, finetune="last_blocks", finetune_blocks=0),
        ValueError,
        "finetune_blocks must be a whole number >= 1, got 0",
    ),
    Bad(
        "finetune blocks float",
        lambda t: _cams(freeze=False, finetune="last_blocks", finetune_blocks=1.5),
        ValueError,
        "finetune_blocks must be a whole number >= 1, got 1.5",
    ),
    Bad(
        "finetune blocks too many",
        lambda t: _cams(freeze=False, finetune="last_blocks", finetune_blocks=13),
        ValueError,
        "finetune_blocks must be in 1..12 for sam2.1_hiera_tiny, got 13",
    ),
    Bad(
        "finetune unknown mode",
        lambda t: _cams(freeze=False, finetune="some"),
        ValueError,
        "unknown finetune mode 'some'; choose one of all, last_blocks, lora",
    ),
    Bad("finetune while frozen", lambda t: _cams(finetune="lora"), ValueError, "finetune='lora' needs freeze=False"),
    Bad(
        "trunk_lr_scale nan",
        lambda t: _cams(trunk_lr_scale=_NAN),
        ValueError,
        "trunk_lr_scale must be a finite number >= 0, got nan",
    ),
    # --- pooling heads ---
    Bad(
        "pool unknown",
        lambda t: _cams(pool="max"),
        ValueError,
        "unknown pool 'max'; choose one of spatial_softmax, attention, avg, conv",
    ),
    Bad(
        "pool option not taken",
        lambda t: _cams(pool="avg", pool_kwargs={"num_heads": 2}),
        ValueError,
        "pool 'avg' does not take num_heads; its options are output_dim",
    ),
    Bad(
        "pool keypoints 0",
        lambda t: _cams(num_keypoints=0),
        ValueError,
        "num_keypoints must be a whole number >= 1, got 0",
    ),
    Bad(
        "pool keypoints float",
        lambda t: _cams(num_keypoints=2.5),
        ValueError,
        "num_keypoints must be a whole number >= 1, got 2.5",
    ),
    Bad(
        "pool keypoints via kwargs",
        lambda t: _cams(pool_kwargs={"num_keypoints": -1}),
        ValueError,
        "num_keypoints must be a whole number >= 1, got -1",
    ),
    Bad("feature_dim 0", lambda t: _cams(feature_dim=0), ValueError, "feature_dim must be a whole number >= 1, got 0"),
    Bad(
        "feature_dim negative",
        lambda t: _cams(feature_dim=-3),
        ValueError,
        "feature_dim must be a whole number >= 1, got -3",
    ),
    # --- pyramid levels ---
    Bad(
        "levels unknown",
        lambda t: _cams(levels=("s32",)),
        ValueError,
        "levels must be a non-empty subset of ('s4', 's8', 's16'), got ['s32']",
    ),
    Bad(
        "levels empty",
        lambda t: _cams(levels=()),
        ValueError,
        "levels must be a non-empty subset of ('s4', 's8', 's16'), got []",
    ),
    Bad("levels comma string", lambda t: _cams(levels="s4,s8"), ValueError, "got ['s4,s8']"),
    # --- cached features fed to the heads ---
    Bad(
        "cached features float16",
        lambda t: _forward_features(torch.float16),
        TypeError,
        "obs_dict['c'] holds precomputed features (2, 256, 2, 2) of dtype torch.float16; the heads take torch.float32",
    ),
    Bad(
        "cached features int64",
        lambda t: _forward_features(torch.int64),
        TypeError,
        "of dtype torch.int64; the heads take torch.float32",
    ),
    Bad(
        "obs images uint8",
        lambda t: _cams().eval()({"c": torch.ones(2, 3, 32, 32, dtype=torch.uint8)}),
        TypeError,
        "obs_dict['c'] is torch.uint8; expected float images in input_range",
    ),
    Bad(
        "obs missing key",
        lambda t: _cams().eval()({"d": torch.rand(2, 3, 32, 32)}),
        KeyError,
        "obs_dict is missing 'c'; expected keys ['c'], got ['d']",
    ),
    Bad(
        "obs wrong shape",
        lambda t: _cams().eval()({"c": torch.rand(2, 3, 30, 32)}),
        ValueError,
        "obs_dict['c'] has shape (2, 3, 30, 32); expected (N, 3, 32, 32) or cached features",
    ),
    Bad(
        "obs not a tensor",
        lambda t: _cams().eval()({"c": np.zeros((2, 3, 32, 32))}),
        TypeError,
        "obs_dict['c'] must be a torch.Tensor, got ndarray",
    ),
    # --- feature caches ---
    Bad(
        "cache dtype bfloat16",
        lambda t: _build(t, dtype="bfloat16"),
        ValueError,
        "dtype must be 'float16' or 'float32', got 'bfloat16'",
    ),
    Bad(
        "cache chunk 0",
        lambda t: _build(t, chunk_frames=0),
        ValueError,
        "chunk_frames must be a whole number >= 1, got 0",
    ),
    Bad(
        "cache chunk float",
        lambda t: _build(t, chunk_frames=2.0),
        ValueError,
        "chunk_frames must be a whole number >= 1, got 2.0",
    ),
    Bad(
        "cache keys a string",
        lambda t: _build(t, keys="img"),
        ValueError,
        "keys must be a non-empty list of replay-buffer keys, got 'img'",
    ),
    Bad(
        "cache keys empty",
        lambda t: _build(t, keys=[]),
        ValueError,
        "keys must be a non-empty list of replay-buffer keys, got []",
    ),
    Bad(
        "cache levels unknown",
        lambda t: _build(t, levels=["s2"]),
        ValueError,
        "levels must be a non-empty subset of ('s4', 's8', 's16'), got ['s2']",
    ),
    Bad(
        "cache key not in replay",
        lambda t: _build(t, keys=["cam"]),
        KeyError,
        "has no data/cam; it has ['action', 'agent_pos', 'img']",
    ),
    Bad("cache key not images", lambda t: _build(t, keys=["action"]), ValueError, "data/action of"),
    Bad(
        "cache keys twice",
        lambda t: _build(t, keys=["img", "img"]),
        ValueError,
        "keys must be distinct, got ['img', 'img']",
    ),
    Bad(
        "cache with masks: several keys, no mask key",
        lambda t: _with_masks(t, keys=["img", "agent_pos"]),
        ValueError,
        "the prompts track one camera: with several keys ['img', 'agent_pos'], name it with mask_key=",
    ),
    Bad(
        "cache with masks: mask key not cached",
        lambda t: _with_masks(t, mask_key="cam"),
        ValueError,
        "mask_key 'cam' is not one of the keys to cache ['img']",
    ),
    Bad(
        "cache with masks: one folder for both",
        lambda t: _with_masks(t, out=t / "x.zarr", masks_out=t / "x.zarr"),
        ValueError,
        "x.zarr: give them two folders",
    ),
    Bad(
        "cache with masks: prompt outside the frame",
        lambda t: _with_masks(t, prompts={"objects": [1], "episodes": {"0": {"1": {"points": [[33, 1]]}}}}),
        ValueError,
        "prompts: episode 0 object 1: point [[33.0, 1.0]] lies outside the 32x32 (W x H) frame",
    ),
    Bad(
        "mask cache: on_features without needs_features",
        lambda t: _with_masks(t, mask_only=True),
        ValueError,
        "needs_features and on_features go together: give both or neither",
    ),
    Bad(
        "cache is a file",
        lambda t: _open_cache(_write(t / "x.zarr", b"")),
        ValueError,
        "x.zarr is not a sam2_encoder feature cache: it is not a zarr group (a file)",
    ),
    Bad("cache missing", lambda t: _open_cache(t / "none.zarr"), FileNotFoundError, "feature cache not found: "),
    Bad(
        "cache zarr without attributes",
        lambda t: _open_cache(_plain_zarr(t / "p.zarr")),
        CacheError,
        "is not a sam2_encoder feature cache (no 'sam2_encoder' attributes)",
    ),
    Bad(
        "feature cache is a mask cache",
        lambda t: _open_cache(_masks(t)),
        CacheError,
        "(no 'sam2_encoder' attributes) (it is a mask cache: `sam2-encoder masks --verify` checks those)",
    ),
    # --- mask caches (sam2-encoder masks) ---
    Bad(
        "mask cache missing",
        lambda t: _open_masks(t / "none.zarr"),
        MaskCacheError,
        "mask cache not found: ",
    ),
    Bad(
        "mask cache of format 1",
        lambda t: _open_masks(_masks(t, format_=1)),
        MaskCacheError,
        "has format 1 (no checksums); this version reads format 2 (a CRC-32 per frame): delete it and rebuild it",
    ),
    Bad(
        "mask cache is a feature cache",
        lambda t: _open_masks(_build(t)),
        MaskCacheError,
        "is not a mask cache (no 'sam2_encoder_masks' attributes) (it is a feature cache",
    ),
    Bad(
        "mask cache chunk overwritten",
        lambda t: _open_masks(_masks(t, damage="masks"), [1, 0]),
        MaskCacheError,
        "masks chunk 0 (frame 0, episode 0): ",
    ),
    Bad(
        "mask cache checksums overwritten",
        lambda t: _open_masks(_masks(t, damage="checksums")),
        MaskCacheError,
        "is damaged: checksums ",
    ),
    Bad(
        "mask cache frame outside",
        lambda t: _open_masks(_masks(t), [4]),
        IndexError,
        "frame 4 is outside mask cache",
    ),
    Bad(
        "mask dataset other shape",
        lambda t: _open_masks(_masks(t), shape=[3, 32, 32]),
        MaskCacheError,
        "holds 1 object [1] on 32x32 frames, masks [1, 32, 32]; the policy expects image_masks of shape [3, 32, 32]",
    ),
    Bad(
        "mask dataset given twice",
        lambda t: _open_masks(_masks(t), zarr_path="other.zarr"),
        ValueError,
        "MaskDataset got dataset= and also ['zarr_path'], which would be ignored: give the dataset, or dataset_target=",
    ),
    Bad(
        "mask dataset chain: the DP class first",
        lambda t: _chain(t, ["sam2_encoder.diffusion_policy.synthetic.ReplayImageDataset", _CACHED]),
        ValueError,
        "lists sam2_encoder.diffusion_policy.synthetic.ReplayImageDataset before the end, which is not one of our "
        "dataset wrappers (CachedFeatureDataset, MaskDataset); only the last entry is the DP dataset class",
    ),
    Bad(
        "mask dataset chain empty",
        lambda t: _chain(t, []),
        ValueError,
        "MaskDataset: dataset_target must be an import path or a non-empty list of them (our wrappers, then the DP "
        "dataset class), got []",
    ),
    Bad("mask dataset chain of numbers", lambda t: _chain(t, [1, 2]), ValueError, "got [1, 2]"),
    # --- prompts (StreamingPredictor) and frames ---
    Bad(
        "prompt empty",
        lambda t: _prompt(),
        ValueError,
        "object 1: empty prompt: give points [[x, y], ...] (with labels) or a box",
    ),
    Bad("prompt no points", lambda t: _prompt(points=np.zeros((0, 2))), ValueError, "object 1: empty prompt"),
    Bad(
        "prompt empty mask",
        lambda t: _prompt(mask=np.zeros((48, 64), bool)),
        ValueError,
        "empty prompt: the mask for object 1 has no foreground pixels",
    ),
    Bad(
        "prompt mask size",
        lambda t: _prompt(mask=np.ones((10, 10), bool)),
        ValueError,
        "mask must be (H, W) = (48, 64) like the frame, got shape (10, 10)",
    ),
    Bad(
        "prompt point outside",
        lambda t: _prompt(points=[[100, 5]]),
        ValueError,
        "object 1: point [[100.0, 5.0]] lies outside the 64x48 (W x H) frame",
    ),
    Bad(
        "prompt point negative",
        lambda t: _prompt(points=[[-1, 5]]),
        ValueError,
        "object 1: point [[-1.0, 5.0]] lies outside the 64x48",
    ),
    Bad(
        "prompt point nan",
        lambda t: _prompt(points=[[_NAN, 5]]),
        ValueError,
        "points must be [[x, y], ...] of finite numbers, got [[nan, 5]]",
    ),
    Bad(
        "prompt points shape",
        lambda t: _prompt(points=[[1, 2, 3]]),
        ValueError,
        "points must be [[x, y], ...] of finite numbers, got [[1, 2, 3]]",
    ),
    Bad(
        "prompt labels mismatch",
        lambda t: _prompt(points=[[10, 5]], labels=[1, 0]),
        ValueError,
        "labels must be one 1 (object) or 0 (background) per point, got [1, 0] for 1 point",
    ),
    Bad(
        "prompt label 2",
        lambda t: _prompt(points=[[10, 5]], labels=[2]),
        ValueError,
        "labels must be one 1 (object) or 0 (background) per point, got [2] for 1 point",
    ),
    Bad("prompt box inverted", lambda t: _prompt(box=[10, 10, 5, 5]), ValueError, "box must have x1 > x0 and y1 > y0"),
    Bad(
        "prompt box outside",
        lambda t: _prompt(box=[0, 0, 70, 10]),
        ValueError,
        "box corner [[70.0, 10.0]] lies outside",
    ),
    Bad(
        "prompt obj_id string",
        lambda t: _prompt(obj_id="a", points=[[1, 1]]),
        TypeError,
        "obj_id: object ids must be ints, got 'a'",
    ),
    Bad(
        "frame float",
        lambda t: _prompt(np.zeros((48, 64, 3), np.float32), points=[[1, 1]]),
        TypeError,
        "frame must be uint8 (0..255), got float32",
    ),
    Bad(
        "track before any prompt",
        lambda t: _track_first(),
        RuntimeError,
        "track() needs at least one object: call add_prompt(",
    ),
]
CASES += MODEL_CASES


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


def test_empty_batches_give_empty_outputs_of_the_right_shape() -> None:
    """B=0 is not an error: every stage returns zero rows with the shape of one row."""
    from sam2_encoder.image_encoder import SAM2ImageEncoder

    assert SAM2Transforms(32)(torch.rand(0, 3, 20, 20)).shape == (0, 3, 32, 32)
    pyramid = SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=32)(torch.rand(0, 3, 32, 32))
    assert pyramid.shapes == {"s4": (0, 32, 8, 8), "s8": (0, 64, 4, 4), "s16": (0, 256, 2, 2)}
    enc = _cams(low_dim={"pos": (2,)})
    d = enc.output_shape()[0]
    for train in (True, False):
        enc.train(train)
        assert enc({"c": torch.rand(0, 3, 32, 32), "pos": torch.rand(0, 2)}).shape == (0, d)
        out = enc({"c": torch.rand(0, 2, 3, 32, 32), "pos": torch.rand(0, 2, 2)})  # (B, To) with B = 0
        assert out.shape == (0, 2, d) and out.dtype == torch.float32
    with torch.no_grad():
        assert enc({"c": torch.rand(0, *enc.feature_shape), "pos": torch.rand(0, 2)}).shape == (0, d)
