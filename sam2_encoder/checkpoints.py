"""Resolve, download, verify and convert SAM 2 checkpoints.

One ``checkpoint=`` argument accepts:

* a Meta ``.pt`` file (``{"model": state_dict}`` in Meta's names), converted on load;
* a ``.safetensors`` file or a Hugging Face model directory (transformers' names);
* an ``http(s)://`` URL (downloaded once into the cache directory);
* a released variant name (``sam2.1_hiera_tiny``: Meta's file, downloaded and sha256-checked)
  or a Hugging Face hub id (``facebook/sam2.1-hiera-tiny``);
* ``None``: seeded random weights (callers warn).

Downloads resume from a ``.part`` file, show a progress bar, verify sha256 where one is known
and are renamed into place only once complete, so an interrupted download never looks finished.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from .variants import VARIANTS, Variant, get_variant

__all__ = [
    "CheckpointError",
    "cache_dir",
    "check_state_dict",
    "convert_meta_state_dict",
    "download",
    "find_local_path",
    "load_checkpoint",
    "resolve_checkpoint",
    "sha256sum",
]

_CHUNK = 1 << 20


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, of another variant, or fails its hash check."""


def cache_dir() -> Path:
    """Where downloaded checkpoints live.

    ``$SAM2_ENCODER_CACHE`` if set, else ``$XDG_CACHE_HOME/sam2_encoder`` (``~/.cache/sam2_encoder``).
    """
    env = os.environ.get("SAM2_ENCODER_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "sam2_encoder"


def sha256sum(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------


def download(
    url: str,
    dest: str | os.PathLike[str],
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` with resume, progress bar and sha256 check.

    Bytes go to ``dest + ".part"``; a rerun continues it with an HTTP ``Range`` request. Only a
    complete file whose hash matches is renamed to ``dest``.

    Args:
        url: ``http(s)://`` or ``file://`` URL.
        dest: Final file path.
        sha256: Expected hex digest; ``None`` skips the check (the digest is still computed).
        progress: Show a tqdm progress bar.
        timeout: Socket timeout in seconds.

    Returns:
        ``dest`` as a ``Path``.

    Raises:
        CheckpointError: On HTTP errors, a short read or a hash mismatch (the partial file is
            removed on a mismatch so the next try starts clean).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "sam2-encoder"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the .part already holds every byte
            response = None
        else:
            raise CheckpointError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise CheckpointError(f"download of {url} failed: {e.reason}") from e

    if response is not None:
        with response:
            resumed = have and response.status == 206
            if not resumed:
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            from tqdm.auto import tqdm

            bar = tqdm(
                total=total,
                initial=have,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=dest.name,
                disable=not progress,
            )
            with bar, open(part, "ab" if resumed else "wb") as f:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
            if total is not None and part.stat().st_size != total:
                raise CheckpointError(
                    f"download of {url} stopped at {part.stat().st_size} of {total} bytes; "
                    f"run the same command again to resume from {part}"
                )
    digest = sha256sum(part)
    if sha256 is not None and digest != sha256.lower():
        part.unlink()
        raise CheckpointError(
            f"sha256 mismatch for {url}: expected {sha256.lower()}, got {digest}; the file was removed"
        )
    os.replace(part, dest)
    return dest


# --------------------------------------------------------------------------------------------
# Resolve
# --------------------------------------------------------------------------------------------


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".json", ".yaml")


def _is_hub_id(text: str) -> bool:
    """``owner/name`` with no file suffix (hub names may contain dots: ``sam2.1-hiera-tiny``)."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text)) and not text.lower().endswith(_FILE_SUFFIXES)


def _original_cwd() -> Path | None:
    """Hydra's launch directory when running inside a Hydra app that changed directory."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return Path(HydraConfig.get().runtime.cwd)
    except Exception:  # noqa: BLE001 - hydra absent or not running: nothing to add
        return None
    return None


def find_local_path(path: str | os.PathLike[str]) -> Path:
    """Find a user-given path from the current directory or Hydra's launch directory.

    Inside a Hydra app that changed directory (Diffusion Policy's train.py) relative paths the user
    typed are relative to where the app was launched.

    Returns:
        The first candidate that exists, else the path as given (with ``~`` expanded).
    """
    path = Path(path).expanduser()
    launch = _original_cwd()
    if not path.exists() and launch is not None and not path.is_absolute() and (launch / path).exists():
        return launch / path
    return path


def resolve_checkpoint(
    checkpoint: str | os.PathLike[str] | None,
    download_missing: bool = True,
    progress: bool = True,
) -> Path | None:
    """Turn a ``checkpoint=`` argument into a local file or directory.

    Relative paths are tried against the current directory, then (inside a Hydra app) against
    Hydra's launch directory. Variant names, hub ids and URLs map to files in :func:`cache_dir`;
    they are downloaded only when missing and ``download_missing`` is true.

    Args:
        checkpoint: Path, URL, variant name, hub id, or ``None``.
        download_missing: Download a missing remote checkpoint instead of raising.
        progress: Show a progress bar while downloading.

    Returns:
        The local path, or ``None`` for ``None``.

    Raises:
        FileNotFoundError: For a missing local path or a missing remote file when downloads are
            off; the message names the command that downloads it.
        CheckpointError: When a download fails.
    """
    if checkpoint is None:
        return None
    text = os.fspath(checkpoint)
    if text.startswith(("http://", "https://", "file://")):
        name = Path(urllib.request.url2pathname(text.split("?")[0].rstrip("/"))).name
        target = cache_dir() / "urls" / hashlib.sha256(text.encode()).hexdigest()[:16] / name
        known = next((v.sha256 for v in VARIANTS.values() if v.url == text), None)
        return _fetch(text, target, known, download_missing, progress)

    path = find_local_path(text)
    if path.exists():
        return path

    try:
        variant = get_variant(path.name) if not text.endswith((".safetensors", "/")) else None
    except ValueError:
        variant = None
    if variant is not None and text in (variant.name, variant.filename):
        target = cache_dir() / variant.filename
        return _fetch(variant.url, target, variant.sha256, download_missing, progress)
    if _is_hub_id(text):
        target = cache_dir() / "hub" / text.replace("/", "--") / "model.safetensors"
        url = f"{_hub_endpoint()}/{text}/resolve/main/model.safetensors"
        return _fetch(url, target, None, download_missing, progress)

    hint = ""
    if variant is not None:
        hint = (
            f"; download it with `sam2-encoder download {variant.name}` "
            f"(or `bash checkpoints/download_ckpts.sh`) or pass checkpoint={variant.name!r}"
        )
    raise FileNotFoundError(f"checkpoint not found: {text}{hint}")


def _fetch(url: str, target: Path, sha256: str | None, download_missing: bool, progress: bool) -> Path:
    if target.exists():
        return target
    if not download_missing:
        raise FileNotFoundError(
            f"checkpoint {url} is not in the cache ({target}) and downloads are off; "
            f"run `sam2-encoder download` first or allow downloads"
        )
    return download(url, target, sha256=sha256, progress=progress)


# --------------------------------------------------------------------------------------------
# Meta -> transformers names
# --------------------------------------------------------------------------------------------

_MLP3 = r"(output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head|object_pointer_proj)"

# Applied in order, each to the result of the previous ones.
_RENAMES: tuple[tuple[str, str], ...] = (
    # image encoder
    (r"^image_encoder\.trunk\.", "vision_encoder.backbone."),
    (r"^image_encoder\.neck\.convs\.(\d+)\.conv\.", r"vision_encoder.neck.convs.\1."),
    (r"\.patch_embed\.proj\.", ".patch_embed.projection."),
    (r"^(vision_encoder\.backbone\.blocks\.\d+)\.norm([12])\.", r"\1.layer_norm\2."),
    (r"^(vision_encoder\.backbone\.blocks\.\d+)\.mlp\.layers\.0\.", r"\1.mlp.proj_in."),
    (r"^(vision_encoder\.backbone\.blocks\.\d+)\.mlp\.layers\.1\.", r"\1.mlp.proj_out."),
    # prompt encoder
    (r"^sam_prompt_encoder\.", "prompt_encoder."),
    (r"^prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"^prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"^prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"^prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"^prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
    # mask decoder
    (r"^sam_mask_decoder\.", "mask_decoder."),
    (r"^mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
    (r"^mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
    (r"^mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
    (r"^(mask_decoder\.transformer\.layers\.\d+)\.norm([1-4])\.", r"\1.layer_norm\2."),
    (r"^(mask_decoder\.transformer\.layers\.\d+)\.mlp\.layers\.0\.", r"\1.mlp.proj_in."),
    (r"^(mask_decoder\.transformer\.layers\.\d+)\.mlp\.layers\.1\.", r"\1.mlp.proj_out."),
    (r"\.norm_final_attn\.", ".layer_norm_final_attn."),
    # object pointers and three-layer MLPs
    (r"^obj_ptr_proj\.", "object_pointer_proj."),
    (r"^obj_ptr_tpos_proj\.", "temporal_positional_encoding_projection_layer."),
    (rf"(^|\.){_MLP3}\.layers\.0\.", r"\1\2.proj_in."),
    (rf"(^|\.){_MLP3}\.layers\.1\.", r"\1\2.layers.0."),
    (rf"(^|\.){_MLP3}\.layers\.2\.", r"\1\2.proj_out."),
    # memory attention
    (r"^(memory_attention\.layers\.\d+)\.norm([1-3])\.", r"\1.layer_norm\2."),
    (r"^memory_attention\.norm\.", "memory_attention.layer_norm."),
    # memory encoder
    (r"^memory_encoder\.mask_downsampler\.encoder\.12\.", "memory_encoder.mask_downsampler.final_conv."),
    (r"^memory_encoder\.pix_feat_proj\.", "memory_encoder.feature_projection."),
    (r"^memory_encoder\.fuser\.", "memory_encoder.memory_fuser."),
    (r"(memory_fuser\.layers\.\d+)\.dwconv\.", r"\1.depthwise_conv."),
    (r"(memory_fuser\.layers\.\d+)\.norm\.", r"\1.layer_norm."),
    (r"(memory_fuser\.layers\.\d+)\.pwconv([12])\.", r"\1.pointwise_conv\2."),
    (r"(memory_fuser\.layers\.\d+)\.gamma$", r"\1.scale"),
    (r"^memory_encoder\.out_proj\.", "memory_encoder.projection."),
    (r"\.out_proj\.", ".o_proj."),
    # top-level parameters
    (r"^maskmem_tpos_enc$", "memory_temporal_positional_encoding"),
    (r"^no_mem_embed$", "no_memory_embedding"),
    (r"^no_mem_pos_enc$", "no_memory_positional_encoding"),
    (r"^no_obj_ptr$", "no_object_pointer"),
    (r"^no_obj_embed_spatial$", "occlusion_spatial_embedding_parameter"),
)
_COMPILED = tuple((re.compile(p), r) for p, r in _RENAMES)
_MASK_DOWNSAMPLER = re.compile(r"^memory_encoder\.mask_downsampler\.encoder\.(\d+)\.(.+)$")
_POINT_EMBED = re.compile(r"^sam_prompt_encoder\.point_embeddings\.(\d+)\.weight$")
_GAUSSIAN = "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"


def _rename(key: str) -> str:
    m = _MASK_DOWNSAMPLER.match(key)
    if m and m.group(1) != "12":
        index = int(m.group(1))
        part = "conv" if index % 3 == 0 else "layer_norm"
        return f"memory_encoder.mask_downsampler.layers.{index // 3}.{part}.{m.group(2)}"
    for pattern, repl in _COMPILED:
        key = pattern.sub(repl, key)
    return key


def convert_meta_state_dict(meta: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert a Meta SAM 2 state dict to transformers ``Sam2VideoModel`` names.

    Pure renames except two: the four ``point_embeddings.{0..3}.weight`` (1, 256) are
    concatenated into ``prompt_encoder.point_embed.weight`` (4, 256), and the prompt encoder's
    Gaussian matrix (2, 128) fills both ``prompt_encoder.shared_embedding.positional_embedding``
    and ``shared_image_embedding.positional_embedding``.

    Args:
        meta: Meta's state dict (the ``"model"`` entry of a ``.pt`` file).

    Returns:
        A new dict in transformers' names; tensors are shared, not copied.
    """
    out: dict[str, torch.Tensor] = {}
    points: dict[int, torch.Tensor] = {}
    for key, value in meta.items():
        m = _POINT_EMBED.match(key)
        if m:
            points[int(m.group(1))] = value
        elif key == _GAUSSIAN:
            out["prompt_encoder.shared_embedding.positional_embedding"] = value
            out["shared_image_embedding.positional_embedding"] = value
        else:
            out[_rename(key)] = value
    if points:
        out["prompt_encoder.point_embed.weight"] = torch.cat([points[i] for i in sorted(points)], dim=0)
    return out


def _looks_like_meta(keys: Iterable[str]) -> bool:
    return any(k.startswith(("image_encoder.", "sam_mask_decoder.", "sam_prompt_encoder.")) for k in keys)


# --------------------------------------------------------------------------------------------
# Load + check
# --------------------------------------------------------------------------------------------


def _corrupt(path: Path, err: Exception) -> CheckpointError:
    variant = _variant_from_filename(path)
    hint = f" (re-download with `sam2-encoder download {variant}`)" if variant else ""
    return CheckpointError(f"checkpoint {path} is truncated or corrupt: {err}{hint}")


def _variant_from_filename(path: Path) -> str | None:
    try:
        return get_variant(path.stem).name
    except ValueError:
        return None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise _corrupt(path, e) from e


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a local checkpoint into transformers' ``Sam2VideoModel`` names.

    Args:
        path: A Meta ``.pt`` file, a ``.safetensors`` file, or a directory holding
            ``model.safetensors`` (or a sharded ``model.safetensors.index.json``).

    Returns:
        The state dict in transformers' names (float tensors as stored).

    Raises:
        FileNotFoundError: If the path does not exist.
        CheckpointError: If the file is truncated, corrupt or not a SAM 2 checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        single = path / "model.safetensors"
        index = path / "model.safetensors.index.json"
        if single.exists():
            state = _read_safetensors(single)
        elif index.exists():
            import json

            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state = {}
            for shard in shards:
                state.update(_read_safetensors(path / shard))
        else:
            raise CheckpointError(f"{path} is a directory without model.safetensors: not a Hugging Face model folder")
    elif path.suffix == ".safetensors":
        state = _read_safetensors(path)
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
            raise _corrupt(path, e) from e
        except Exception as e:  # pickle.UnpicklingError and friends from weights_only
            raise CheckpointError(
                f"checkpoint {path} could not be read safely with torch.load(weights_only=True): {e}"
            ) from e
        if isinstance(raw, Mapping) and "model" in raw and isinstance(raw["model"], Mapping):
            state = dict(raw["model"])
        elif isinstance(raw, Mapping) and all(isinstance(v, torch.Tensor) for v in raw.values()):
            state = dict(raw)
        else:
            keys = list(raw)[:5] if isinstance(raw, Mapping) else type(raw).__name__
            raise CheckpointError(f"{path} is not a SAM 2 checkpoint: expected a 'model' state dict, found {keys}")
    if _looks_like_meta(state):
        state = convert_meta_state_dict(state)
    return state


def guess_variant(state: Mapping[str, torch.Tensor]) -> str | None:
    """Name the released variant a transformers-named state dict belongs to, if any.

    The family (``sam2`` vs ``sam2.1``) is told by the occlusion spatial embedding, which only
    SAM 2.1 has; without video keys the family is ambiguous and SAM 2.1 is named.
    """
    pos = state.get("vision_encoder.backbone.pos_embed")
    if pos is None:
        return None
    blocks = {int(k.split(".")[3]) for k in state if k.startswith("vision_encoder.backbone.blocks.")}
    video_keys = "no_memory_positional_encoding" in state
    family = "sam2" if video_keys and "occlusion_spatial_embedding_parameter" not in state else "sam2.1"
    for v in VARIANTS.values():
        if (
            v.family == family
            and v.embed_dim == pos.shape[1]
            and tuple(pos.shape[2:]) == v.window_pos_embed_bkg
            and len(blocks) == sum(v.stages)
        ):
            return v.name
    return None


def check_state_dict(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    variant: Variant | str,
    source: str = "checkpoint",
    max_listed: int = 8,
) -> None:
    """Raise unless ``state`` holds exactly the keys and shapes of ``expected``.

    Args:
        state: Weights from the checkpoint (only keys relevant to ``expected`` should be passed).
        expected: The target module's state dict.
        variant: The variant the target was built for, named in the message.
        source: What ``state`` came from, named in the message.
        max_listed: How many offending keys to list per kind.

    Raises:
        CheckpointError: Listing missing keys, unexpected keys and shape mismatches, and the
            variant the checkpoint appears to be.
    """
    variant = get_variant(variant)
    # in module order, so the most telling keys (patch and position embeddings) come first
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        (k, tuple(state[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if not (missing or unexpected or shapes):
        return

    def listed(items: list, fmt) -> str:
        more = f", ... ({len(items) - max_listed} more)" if len(items) > max_listed else ""
        return ", ".join(fmt(x) for x in items[:max_listed]) + more

    parts = []
    if shapes:
        parts.append(
            f"{len(shapes)} shape mismatches: "
            + listed(shapes, lambda s: f"{s[0]} {list(s[1])} in checkpoint vs {list(s[2])} expected")
        )
    if missing:
        parts.append(f"{len(missing)} missing keys: {listed(missing, str)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {listed(unexpected, str)}")
    guess = guess_variant(state)
    looks = f" The checkpoint looks like {guess}." if guess and guess != variant.name else ""
    raise CheckpointError(f"{source} does not fit {variant.name}: " + "; ".join(parts) + "." + looks)
