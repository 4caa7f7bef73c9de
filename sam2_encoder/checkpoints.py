"""Resolve, download, verify and load SAM 2 checkpoints.

The HTTP transport and ``SHA256SUMS`` pins live in :mod:`sam2_encoder.downloads`, Meta's key
names in :mod:`sam2_encoder.meta_names`; their public names are re-exported here.

One ``checkpoint=`` argument accepts:

* a Meta ``.pt`` file (``{"model": state_dict}`` in Meta's names), converted on load;
* a ``.safetensors`` file or a Hugging Face model directory (transformers' names);
* an ``http(s)://`` URL (downloaded once into the cache directory);
* a released variant name (``sam2.1_hiera_tiny``: Meta's file, downloaded and verified)
  or a Hugging Face hub id (``facebook/sam2.1-hiera-tiny``);
* ``None``: seeded random weights (callers warn).

Integrity, in one place:

* **Downloads** go to ``<dest>.part`` and are renamed into place only after they are verified:
  the byte count equals ``Content-Length`` (or the total of ``Content-Range``) when the server
  sends one, the sha256 matches when one is expected, and the file loads as a checkpoint (of the
  named variant when known: every key and shape). A ``206`` whose ``Content-Range`` does not
  start at the ``.part`` size restarts from byte 0; interrupted transfers raise
  :class:`CheckpointError` with the command that resumes them; anything that is not a checkpoint
  (an HTML page, a truncated file sent without a length) is refused and its ``.part`` removed.
* **Loading** verifies the container: the CRC-32 of every member of a ``.pt`` zip archive, once
  per file version (remembered by path, size, mtime, ctime and inode in ``cache_dir()/verified``
  and in-process); refuses non-float tensors and NaN / inf values (every load, a single sum per
  tensor: ~0.2 s for the large model); and, given the variant, refuses a checkpoint of the other
  SAM 2 family when its keys tell (full checkpoints do; image-only ones cannot).
* **Pins**: Meta publishes no sha256, so :func:`download_variant` pins the sha256 of the first
  verified download in ``SHA256SUMS`` beside the files (see its docstring for stale pins).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .downloads import CheckpointError, DirLock, atomic_write_bytes, cache_dir, fetch, read_pins, sha256sum, write_pins
from .meta_names import convert_meta_state_dict, has_vision_keys, looks_like_meta
from .variants import VARIANTS, Variant, get_variant

__all__ = [
    "CheckpointError",
    "DownloadResult",
    "cache_dir",
    "check_state_dict",
    "checkpoint_family",
    "convert_meta_state_dict",
    "download",
    "download_variant",
    "find_local_path",
    "guess_variant",
    "load_checkpoint",
    "read_pins",
    "resolve_checkpoint",
    "sha256sum",
    "verify_checkpoint",
    "weights_identity",
    "write_pins",
]


def download(
    url: str,
    dest: str | os.PathLike[str],
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    *,
    variant: Variant | str | None = None,
    verify: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` with resume and progress bar; rename only once verified.

    Bytes go to ``dest + ".part"``; a rerun continues it with an HTTP ``Range`` request (a
    server that ignores it, or answers with bytes that do not continue the ``.part``, makes the
    download start over). ``dest`` is replaced only when every check passed:

    1. the byte count equals the length the server announced, when it announced one;
    2. with ``verify``, the file loads as a checkpoint (:func:`load_checkpoint`: container CRCs,
       float and finite weights) and, given ``variant``, as that variant (:func:`verify_checkpoint`:
       its family, every key and shape) — an HTML page or a file cut short without a length is
       refused here;
    3. its sha256 equals ``sha256`` when given.

    Args:
        url: ``http(s)://`` or ``file://`` URL.
        dest: Final file path.
        sha256: Expected hex digest, or ``None``.
        progress: Show a tqdm progress bar.
        timeout: Socket timeout in seconds (connect and each read).
        variant: The variant the file must be (full key and shape check), or ``None``.
        verify: Check the content (2.). Off only for files that are not checkpoints.

    Returns:
        ``dest`` as a ``Path``.

    Raises:
        CheckpointError: On HTTP errors and interrupted transfers (the ``.part`` is kept and
            the message says how to resume), and on a failed check 2. or 3. (the ``.part`` is
            removed so the next try starts clean; nothing is placed at ``dest``).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with DirLock(dest.parent):
        _download_unlocked(url, dest, sha256, progress, timeout, variant, verify)
    return dest


def _download_unlocked(
    url: str,
    dest: Path,
    sha256: str | None,
    progress: bool,
    timeout: float,
    variant: Variant | str | None,
    verify: bool,
) -> str:
    """:func:`download` without the directory lock; returns the sha256 of the placed file."""

    def check(part: Path) -> None:
        source = f"the file downloaded from {url}"
        if variant is not None:
            _verify(part, get_variant(variant), source=source, name=dest.name)
            return
        state = _load(part, None, source=source, name=dest.name)
        if guess_variant(state) is None and not has_vision_keys(state):
            raise CheckpointError(
                f"{source} is not a SAM 2 checkpoint: "
                f"no vision_encoder weights among its {len(state)} tensors ({', '.join(list(state)[:5])}, ...)"
            )

    digest = fetch(url, dest, sha256=sha256, progress=progress, timeout=timeout, check=check if verify else None)
    if verify:
        _remember_container(dest)  # verified as .part: the first load need not redo it
    return digest


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
    """Hydra's launch directory when running inside a Hydra app that changed directory.

    Hydra is consulted only when something already imported it: resolving a path never pulls
    Hydra in (``import sam2_encoder`` and building an encoder stay Hydra-free).
    """
    if "hydra" not in sys.modules:
        return None
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return Path(HydraConfig.get().runtime.cwd)
    except Exception:  # noqa: BLE001 - a Hydra without this API, or not running: nothing to add
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
    if path.exists() or path.is_absolute():
        return path
    launch = _original_cwd()
    if launch is not None and (launch / path).exists():
        return launch / path
    return path


def weights_identity(checkpoint: str | os.PathLike[str] | None, seed: int = 0) -> str:
    """The identity of the weights a model built from ``checkpoint`` holds, as caches record it.

    The one definition behind ``SAM2ImageEncoder.weights_id``, the mask cache and the CLI, for
    every form ``checkpoint=`` takes:

    * ``None`` (seeded random weights): ``random:seed=<seed>``;
    * a file (Meta ``.pt``, ``.safetensors``, ...): ``sha256:<hex>`` of the file;
    * a Hugging Face folder with ``model.safetensors``: ``sha256:<hex>`` of that file (the same
      identity as the file alone);
    * a sharded Hugging Face folder (``model.safetensors.index.json``): ``sha256-shards:<hex>``,
      the SHA-256 of the lines ``<sha256 of shard>  <shard file>`` (one per shard the index lists,
      in name order, each ending in a newline: what ``sha256sum <shards> | sha256sum`` hashes);
      the shards hold every weight, so two folders share an identity exactly when their shards do;
    * a variant name, hub id or URL: resolved as the model resolves it (without downloading), then
      one of the above.

    Args:
        checkpoint: What the model was built from, or ``None``.
        seed: The seed of random weights (``checkpoint=None``).

    Raises:
        FileNotFoundError: If ``checkpoint`` is not a local path and not downloaded yet.
        CheckpointError: For a folder that is no Hugging Face model folder, or a sharded index that
            is not valid JSON with a ``weight_map``.
    """
    if checkpoint is None:
        return f"random:seed={seed}"
    path = resolve_checkpoint(checkpoint, download_missing=False)
    if not path.is_dir():
        return f"sha256:{sha256sum(path)}"
    if (path / "model.safetensors").is_file():
        return f"sha256:{sha256sum(path / 'model.safetensors')}"
    index = path / "model.safetensors.index.json"
    if not index.is_file():
        raise CheckpointError(f"{path} is a directory without model.safetensors: not a Hugging Face model folder")
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(
            f"{index} is not a valid safetensors index (expected JSON with a 'weight_map'): {type(e).__name__}: {e}"
        ) from None
    lines = "".join(f"{sha256sum(path / shard)}  {shard}\n" for shard in shards)
    return f"sha256-shards:{hashlib.sha256(lines.encode()).hexdigest()}"


def resolve_checkpoint(
    checkpoint: str | os.PathLike[str] | None,
    download_missing: bool = True,
    progress: bool = True,
) -> Path | None:
    """Turn a ``checkpoint=`` argument into a local file or directory.

    Relative paths are tried against the current directory, then (inside a Hydra app) against
    Hydra's launch directory. Variant names, hub ids and URLs map to files in :func:`cache_dir`;
    they are downloaded (and verified, see :func:`download`) only when missing and
    ``download_missing`` is true. A file already in the cache is verified when it is loaded.

    Args:
        checkpoint: Path, URL, variant name, hub id, or ``None``.
        download_missing: Download a missing remote checkpoint instead of raising.
        progress: Show a progress bar while downloading.

    Returns:
        The local path, or ``None`` for ``None``.

    Raises:
        FileNotFoundError: For a missing local path or a missing remote file when downloads are
            off; the message names the command that downloads it.
        CheckpointError: When a download fails or what arrived is not a valid checkpoint.
    """
    if checkpoint is None:
        return None
    text = os.fspath(checkpoint)
    if text.startswith(("http://", "https://", "file://")):
        return _fetch(*_url_source(text), download_missing, progress)

    path = find_local_path(text)
    if path.exists():
        return path

    try:
        variant = get_variant(path.name) if not text.endswith((".safetensors", "/")) else None
    except ValueError:
        variant = None
    source = _named_source(text, variant)
    if source is not None:
        return _fetch(*source, download_missing, progress)
    hint = ""
    if variant is not None:
        hint = (
            f"; download it with `sam2-encoder download {variant.name}` "
            f"(or `bash checkpoints/download_ckpts.sh`) or pass checkpoint={variant.name!r}"
        )
    raise FileNotFoundError(f"checkpoint not found: {text}{hint}")


_Source = tuple[str, Path, str | None, Variant | None]  # (url, cache file, sha256 to expect, variant)


def _url_source(url: str) -> _Source:
    """Where a URL is cached (``cache_dir()/urls/<URL hash>/<file name>``), with its variant if it is a released one."""
    name = Path(urllib.request.url2pathname(url.split("?")[0].rstrip("/"))).name
    target = cache_dir() / "urls" / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    known = next((v for v in VARIANTS.values() if v.url == url), None)
    return url, target, known.sha256 if known else None, known


def _named_source(text: str, variant: Variant | None) -> _Source | None:
    """Where a released variant's name / file name (``variant``: the one ``text`` names) or a hub id comes from.

    Returns:
        ``(url, cache file, sha256, variant)``, or ``None`` when ``text`` is neither.
    """
    if variant is not None and text in (variant.name, variant.filename):
        return variant.url, cache_dir() / variant.filename, variant.sha256, variant
    if not _is_hub_id(text):
        return None
    target = cache_dir() / "hub" / text.replace("/", "--") / "model.safetensors"
    url = f"{_hub_endpoint()}/{text}/resolve/main/model.safetensors"
    try:
        hub_variant: Variant | None = get_variant(text)
    except ValueError:
        hub_variant = None
    return url, target, None, hub_variant


def _fetch(
    url: str,
    target: Path,
    sha256: str | None,
    variant: Variant | None,
    download_missing: bool,
    progress: bool,
) -> Path:
    if target.exists():
        return target
    if not download_missing:
        raise FileNotFoundError(
            f"checkpoint {url} is not in the cache ({target}) and downloads are off; "
            f"run `sam2-encoder download` first or allow downloads"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with DirLock(target.parent):
        if not target.exists():  # another process may have fetched it while we waited
            _download_unlocked(url, target, sha256, progress, 60.0, variant, True)
    return target


# --------------------------------------------------------------------------------------------
# Load + verify
# --------------------------------------------------------------------------------------------


def _one_line(err: Exception | str, limit: int = 300) -> str:
    """A library's error message on one line, at most ``limit`` characters."""
    text = " ".join(str(err).replace("\x1b[1m", "").replace("\x1b[0m", "").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _redownload_hint(path: Path, name: str | None) -> str:
    """`` (re-download with `sam2-encoder download VARIANT [--dir FOLDER]`)`` for a released file name."""
    variant = _variant_from_filename(Path(name) if name else path)
    if variant is None or name is not None:  # a download in progress: the caller says what to do
        return ""
    folder = path.parent.resolve()
    where = "" if folder == cache_dir().expanduser().resolve() else f" --dir {folder}"
    return f" (re-download with `sam2-encoder download {variant}{where}`)"


def _corrupt(path: Path, err: Exception | str, source: str | None = None, name: str | None = None) -> CheckpointError:
    hint = _redownload_hint(path, name)
    return CheckpointError(f"{source or f'checkpoint {path}'} is truncated or corrupt: {_one_line(err)}{hint}")


def _variant_from_filename(path: Path) -> str | None:
    try:
        return get_variant(path.stem).name
    except ValueError:
        return None


def _sniff(path: Path) -> tuple[str, bytes]:
    """The file's kind by its first bytes: zip, safetensors, html, text, empty or other."""
    with open(path, "rb") as f:
        head = f.read(1024)
        size = os.fstat(f.fileno()).st_size
    if not head:
        return "empty", head
    if head.startswith(b"PK\x03\x04"):
        return "zip", head
    if len(head) > 8 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size:
        return "safetensors", head
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml")) or b"<html" in text[:512]:
        return "html", head
    if b"\x00" not in head:
        try:
            head[: len(head) - 4 if len(head) == 1024 else None].decode("utf-8")  # a cut multi-byte tail is fine
            return "text", head
        except UnicodeDecodeError:
            pass
    return "other", head


# Container checks (zip CRC-32 of .pt members) already passed, by file version.
_CONTAINER_OK: set[tuple[str, int, int, int, int]] = set()


def _file_key(path: Path) -> tuple[str, int, int, int, int]:
    """Identity of one version of a file: path, size, mtime, ctime and inode.

    ctime cannot be set from user space, so a file rewritten in place with its mtime restored
    still counts as a new version.
    """
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _record_path(key: tuple[str, int, int, int, int]) -> Path:
    return cache_dir() / "verified" / f"{hashlib.sha256(key[0].encode()).hexdigest()[:32]}.json"


def _container_known_good(path: Path) -> bool:
    key = _file_key(path)
    if key in _CONTAINER_OK:
        return True
    try:
        record = json.loads(_record_path(key).read_text())
        ok = record.get("version") == 1 and record.get("path") == key[0] and tuple(record.get("key", ())) == key[1:]
    except (OSError, ValueError, AttributeError):
        return False
    if ok:
        _CONTAINER_OK.add(key)
    return ok


def _remember_container(path: Path) -> None:
    """Remember that this version of ``path`` passed the container check (in-process and on disk)."""
    key = _file_key(path)
    _CONTAINER_OK.add(key)
    record = {"version": 1, "path": key[0], "key": list(key[1:]), "check": "zip crc32", "time": time.time()}
    try:
        target = _record_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, json.dumps(record).encode())
    except OSError:  # read-only cache: the in-process record still spares reloads in this process
        pass


def _check_zip(path: Path, source: str, name: str | None) -> None:
    """Verify the CRC-32 of every member of a ``.pt`` zip archive (once per file version).

    Archives written with ``torch.utils.serialization.config.save.compute_crc32 = False`` record
    0 as every CRC; they are accepted without this check (the value checks still run).
    """
    if _container_known_good(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if m.file_size]
            if members and all(m.CRC == 0 for m in members):
                bad = None  # no CRCs recorded
            else:
                bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, RuntimeError) as e:
        raise _corrupt(path, e, source, name) from e
    if bad is not None:
        raise _corrupt(
            path,
            f"archive member {bad!r} fails its CRC-32 check (the bytes changed after it was written)",
            source,
            name,
        )
    _remember_container(path)


def _read_safetensors(path: Path, source: str, name: str | None) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _corrupt(path, e, source, name) from e


# torch's legacy (non-zip) format: a pickled magic number first (protocol 2, long1 of 10 bytes)
_LEGACY_TORCH = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."


def _read_torch(path: Path, source: str, name: str | None, mmap: bool) -> dict[str, torch.Tensor]:
    import pickle

    try:
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:  # weights_only refuses code: never run it
        m = re.search(r"WeightsUnpickler error: ([^\n]*?)(\. |\.?\n|$)", str(e))
        why = m.group(1) if m else _one_line(e)
        raise CheckpointError(
            f"{source} could not be read safely with torch.load(weights_only=True): it holds pickled objects that "
            f"are not tensors ({why}); it was not loaded, since loading it could run code"
        ) from e
    except Exception as e:  # noqa: BLE001 - torch.load raises RuntimeError, EOFError, OSError, zip errors, ...
        raise _corrupt(path, e, source, name) from e
    if isinstance(raw, Mapping) and "model" in raw and isinstance(raw["model"], Mapping):
        return dict(raw["model"])
    if isinstance(raw, Mapping) and raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        return dict(raw)
    found = list(raw)[:5] if isinstance(raw, Mapping) else type(raw).__name__
    raise CheckpointError(f"{source} is not a SAM 2 checkpoint: expected a 'model' state dict, found {found}")


def _read_file(path: Path, source: str, name: str | None) -> dict[str, torch.Tensor]:
    """Read one file, its format told by its first bytes (then by ``name``'s suffix)."""
    kind, head = _sniff(path)
    if kind == "text" and head.startswith(b"version https://git-lfs"):
        raise CheckpointError(f"{source} is a Git LFS pointer, not the checkpoint itself: fetch it with `git lfs pull`")
    if kind in ("html", "text", "empty"):
        what = {"html": "an HTML page", "text": "a text file", "empty": "empty (0 bytes)"}[kind]
        start = head[:80].decode("utf-8", "replace").strip()
        shown = f" (it starts with {start!r})" if start else ""
        raise CheckpointError(f"{source} is {what}, not a checkpoint{shown}")
    suffix = Path(name or path.name).suffix
    if kind == "safetensors" or (kind == "other" and suffix == ".safetensors"):
        return _read_safetensors(path, source, name)
    if kind == "zip":
        _check_zip(path, source, name)
        return _read_torch(path, source, name, mmap=True)
    if head.startswith(_LEGACY_TORCH):  # torch.save(..., _use_new_zipfile_serialization=False)
        return _read_torch(path, source, name, mmap=False)
    raise CheckpointError(
        f"{source} is not a checkpoint: neither a PyTorch archive (.pt) nor a safetensors file "
        f"(it starts with bytes {head[:16].hex(' ')})"
    )


def _read_state(path: Path, source: str, name: str | None) -> dict[str, torch.Tensor]:
    if not path.is_dir():
        return _read_file(path, source, name)
    single = path / "model.safetensors"
    index = path / "model.safetensors.index.json"
    if single.exists():
        return _read_safetensors(single, f"checkpoint {single}", None)
    if not index.exists():
        raise CheckpointError(f"{path} is a directory without model.safetensors: not a Hugging Face model folder")
    try:
        weight_map = json.loads(index.read_bytes())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(
            f"{index} is not a valid safetensors index (expected JSON with a 'weight_map'): {type(e).__name__}: {e}"
        ) from e
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        file = path / shard
        if not file.is_file():
            raise CheckpointError(f"{index} lists the shard {shard}, which is missing from {path}")
        state.update(_read_safetensors(file, f"checkpoint {file}", None))
    missing = sorted(set(weight_map) - set(state))
    if missing:
        listed = ", ".join(missing[:5])
        raise CheckpointError(f"{index} maps {_count(missing, 'tensor')} to shards that lack them: {listed}")
    return state


def _listed(items: list, fmt, max_listed: int = 8) -> str:  # noqa: ANN001 - a formatter
    more = f", ... ({len(items) - max_listed} more)" if len(items) > max_listed else ""
    return ", ".join(fmt(x) for x in items[:max_listed]) + more


def _count(items: list, one: str, many: str | None = None) -> str:
    return f"{len(items)} {one if len(items) == 1 else many or one + 's'}"


def _is(items: list) -> str:
    return "is" if len(items) == 1 else "are"


def _all_finite(t: torch.Tensor) -> bool:
    # One reduction, no temporary: a NaN or inf anywhere makes the sum NaN or inf. A non-finite
    # sum of finite values (overflow) is rare and settled by the exact test.
    total = t.sum(dtype=torch.float64 if t.dtype == torch.float64 else torch.float32)
    return bool(torch.isfinite(total)) or bool(torch.isfinite(t).all())


def _check_values(state: Mapping[str, object], source: str, expected: Mapping[str, torch.Tensor] | None = None) -> None:
    """Refuse entries that are not tensors, not floating point, or hold NaN / inf.

    With ``expected``, only its keys are checked, and a non-float entry passes where the
    expected tensor is not float either.
    """
    not_tensor, not_float, non_finite = [], [], []
    for key, value in state.items():
        if expected is not None and key not in expected:
            continue
        if not isinstance(value, torch.Tensor):
            not_tensor.append((key, type(value).__name__))
        elif not value.is_floating_point():
            if expected is None or expected[key].is_floating_point():
                not_float.append((key, str(value.dtype).removeprefix("torch.")))
        elif value.numel() and value.device.type != "meta" and not _all_finite(value):
            nan, inf = int(torch.isnan(value).sum()), int(torch.isinf(value).sum())
            non_finite.append((key, nan, inf, value.numel()))
    if not_tensor:
        raise CheckpointError(
            f"{source} holds {_count(not_tensor, 'entry', 'entries')} that {_is(not_tensor)} not a tensor: "
            + _listed(not_tensor, lambda x: f"{x[0]} ({x[1]})")
        )
    if not_float:
        raise CheckpointError(
            f"{source} holds {_count(not_float, 'tensor')} that {_is(not_float)} not floating point: "
            + _listed(not_float, lambda x: f"{x[0]} ({x[1]})")
            + "; SAM 2 weights are float (float32, float16 or bfloat16), integer or bool data is not weights"
        )
    if non_finite:
        raise CheckpointError(
            f"{source} has non-finite weights in {_count(non_finite, 'tensor')}: "
            + _listed(non_finite, lambda x: f"{x[0]} ({x[1]} NaN, {x[2]} inf of {x[3]})")
            + "; the file is corrupt or comes from a diverged training run"
        )


_FAMILY_TEXT = {"sam2": "SAM 2 (July 2024, sam2_*)", "sam2.1": "SAM 2.1 (September 2024, sam2.1_*)"}
_SAM21_ONLY = ("occlusion_spatial_embedding_parameter", "temporal_positional_encoding_projection_layer.")
_SAM21_ONLY_META = ("no_obj_embed_spatial", "obj_ptr_tpos_proj.")
_MEMORY = ("memory_attention.", "memory_encoder.")


def checkpoint_family(state: Iterable[str]) -> str | None:
    """Tell a SAM 2 from a SAM 2.1 checkpoint by its keys (transformers' or Meta's names).

    Only full (video) checkpoints tell: SAM 2.1 added the occlusion spatial embedding
    (``no_obj_embed_spatial``) and the temporal projection of object pointers
    (``obj_ptr_tpos_proj``); a checkpoint with the memory modules but neither is SAM 2. The
    image encoders of both families have the same keys and shapes, so an image-only checkpoint
    (transformers' ``Sam2Model``, or vision weights alone) is ``None``: undetectable.

    Args:
        state: A state dict, or its keys.

    Returns:
        ``"sam2.1"``, ``"sam2"`` or ``None``.
    """
    keys = list(state)
    if any(k.startswith(_SAM21_ONLY + _SAM21_ONLY_META) for k in keys):
        return "sam2.1"
    if any(k.startswith(_MEMORY) for k in keys):
        return "sam2"
    return None


def _check_family(state: Mapping[str, torch.Tensor], variant: Variant, source: str) -> None:
    found = checkpoint_family(state)
    if found is None or found == variant.family:
        return
    if found == "sam2.1":
        evidence = (
            "it has the SAM 2.1-only occlusion embedding and object-pointer temporal projection "
            "(Meta's no_obj_embed_spatial, obj_ptr_tpos_proj)"
        )
    else:
        evidence = (
            "it has the memory modules but not the SAM 2.1-only keys (Meta's no_obj_embed_spatial, obj_ptr_tpos_proj)"
        )
    guess = guess_variant(state)
    use = f"; use variant {guess!r}" if guess else ""
    raise CheckpointError(
        f"{source} is a {_FAMILY_TEXT[found]} checkpoint ({evidence}), "
        f"but {variant.name} is {_FAMILY_TEXT[variant.family]}{use}"
    )


def _load(path: Path, variant: Variant | None, source: str, name: str | None) -> dict[str, torch.Tensor]:
    state = _read_state(path, source, name)
    _check_values(state, source)
    if looks_like_meta(state):
        state = convert_meta_state_dict(state)
    if variant is not None:
        _check_family(state, variant, source)
    return state


def load_checkpoint(path: str | os.PathLike[str], variant: Variant | str | None = None) -> dict[str, torch.Tensor]:
    """Read and check a local checkpoint, in transformers' ``Sam2VideoModel`` names.

    Checks, every one naming the file and what was found:

    * the container: a ``.pt`` (zip) archive's member CRC-32s, once per file version (later
      loads of the same path, size, mtime, ctime and inode skip it; remembered in-process and
      in ``cache_dir()/verified``); safetensors carry no checksum (the library checks the
      header against the file size);
    * the content: an HTML or text page, an empty file, or a pickle that needs code execution
      (``weights_only=True``) is refused;
    * the values: every entry a floating-point tensor (no int / bool data), all finite;
    * with ``variant``: the SAM 2 family, where the keys tell (see :func:`checkpoint_family`).

    Keys and shapes are checked by the caller against its model (:func:`check_state_dict`), or
    all at once by :func:`verify_checkpoint`.

    Args:
        path: A Meta ``.pt`` file, a ``.safetensors`` file, or a directory holding
            ``model.safetensors`` (or a sharded ``model.safetensors.index.json``).
        variant: The variant the checkpoint is meant for, or ``None`` to skip the family check.

    Returns:
        The state dict in transformers' names (float tensors as stored).

    Raises:
        FileNotFoundError: If the path does not exist.
        CheckpointError: If the file is truncated, corrupt, not a SAM 2 checkpoint, holds
            non-float or non-finite tensors, or is of the other family.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return _load(path, None if variant is None else get_variant(variant), f"checkpoint {path}", None)


@functools.cache
def _expected_state(name: str, full: bool) -> dict[str, torch.Tensor]:
    """Keys and shapes (meta tensors) of the full video model, or of the image model, of a variant."""
    from transformers import Sam2Model, Sam2VideoModel

    variant = get_variant(name)
    with torch.device("meta"):
        if full:
            model = Sam2VideoModel(variant.video_model_config(1024))
        else:
            model = Sam2Model(variant.image_model_config(1024))
    return dict(model.state_dict())


def _verify(path: Path, variant: Variant, source: str, name: str | None) -> dict[str, torch.Tensor]:
    state = _load(path, variant, source, name)
    full = any(k.startswith(_MEMORY) for k in state)
    check_state_dict(state, _expected_state(variant.name, full), variant, source=source, check_values=False)
    return state


def verify_checkpoint(path: str | os.PathLike[str], variant: Variant | str) -> dict[str, torch.Tensor]:
    """Check that ``path`` is a complete, intact checkpoint of ``variant``.

    Everything :func:`load_checkpoint` checks (container CRCs, float and finite values, family),
    plus every key and shape: a full checkpoint (Meta's ``.pt`` or a transformers
    ``Sam2VideoModel`` file) must hold exactly the video model's tensors; one without the memory
    modules exactly the image model's (transformers' ``Sam2Model``).

    Args:
        path: The checkpoint file or Hugging Face folder.
        variant: The variant it must be.

    Returns:
        The state dict in transformers' names.

    Raises:
        FileNotFoundError: If the path does not exist.
        CheckpointError: Naming the file and the first thing found wrong.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return _verify(path, get_variant(variant), f"checkpoint {path}", None)


def guess_variant(state: Mapping[str, torch.Tensor]) -> str | None:
    """Name the released variant a transformers-named state dict belongs to, if any.

    The family (``sam2`` vs ``sam2.1``) is told by :func:`checkpoint_family`; when the keys do not
    tell (image-only weights), SAM 2.1 is named.
    """
    pos = state.get("vision_encoder.backbone.pos_embed")
    if not isinstance(pos, torch.Tensor) or pos.dim() != 4:
        return None
    blocks = {k.split(".")[3] for k in state if k.startswith("vision_encoder.backbone.blocks.")}
    family = checkpoint_family(state) or "sam2.1"
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
    *,
    check_values: bool = True,
) -> None:
    """Raise unless ``state`` holds exactly the keys and shapes of ``expected``, with sound values.

    Args:
        state: Weights from the checkpoint (only keys relevant to ``expected`` should be passed).
        expected: The target module's state dict.
        variant: The variant the target was built for, named in the message.
        source: What ``state`` came from, named in the message.
        max_listed: How many offending keys to list per kind.
        check_values: Also refuse non-tensor, non-float (where ``expected`` is float) and
            non-finite entries (one sum per tensor).

    Raises:
        CheckpointError: Listing missing keys, unexpected keys and shape mismatches, and the
            variant the checkpoint appears to be; or the entries with bad values.
    """
    variant = get_variant(variant)
    # in module order, so the most telling keys (patch and position embeddings) come first
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        (k, tuple(getattr(state[k], "shape", ())), tuple(v.shape))
        for k, v in expected.items()
        if k in state and getattr(state[k], "shape", None) != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(
                f"{len(shapes)} shape mismatches: "
                + _listed(shapes, lambda s: f"{s[0]} {list(s[1])} in checkpoint vs {list(s[2])} expected", max_listed)
            )
        if missing:
            parts.append(f"{len(missing)} missing keys: {_listed(missing, str, max_listed)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_listed(unexpected, str, max_listed)}")
        guess = guess_variant(state)
        looks = f" The checkpoint looks like {guess}." if guess and guess != variant.name else ""
        raise CheckpointError(f"{source} does not fit {variant.name}: " + "; ".join(parts) + "." + looks)
    if check_values:
        _check_values(state, source, expected)


# --------------------------------------------------------------------------------------------
# Released checkpoints with pins (the `sam2-encoder download` command)
# --------------------------------------------------------------------------------------------


@dataclass
class DownloadResult:
    """What :func:`download_variant` did.

    Attributes:
        variant: Canonical variant name.
        path: The verified checkpoint file.
        sha256: Its hex sha256.
        status: ``"present"`` (already there and verified), ``"downloaded"``, or ``"replaced"``
            (a present file failed verification and was downloaded again).
        check: One line saying what the file was checked against.
        notes: Anything else the user should know (a dropped or replaced pin, why a file was replaced).
    """

    variant: str
    path: Path
    sha256: str
    status: str
    check: str
    notes: list[str] = field(default_factory=list)


def download_variant(
    variant: Variant | str,
    directory: str | os.PathLike[str] | None = None,
    *,
    base_url: str | None = None,
    force: bool = False,
    progress: bool = True,
    timeout: float = 60.0,
) -> DownloadResult:
    """Fetch (or check) Meta's checkpoint of a released variant, verified and sha256-pinned.

    A file is accepted only when :func:`verify_checkpoint` passes (container CRCs, every key and
    shape of the variant, float and finite values, right family) and, when one is known, its
    sha256 matches: the published one (:attr:`Variant.sha256`), else the pin in
    ``<directory>/SHA256SUMS``. The pin file is written (atomically) only after that, so
    nothing unverified is ever pinned.

    Stale pins (files written by older versions may pin a corrupt download):

    * a present file that fails verification is replaced by a fresh download; a pin equal to
      the bad file's hash is dropped (it pinned corrupt data), then the new file is pinned;
    * a file that verifies but disagrees with its pin is refused, naming both hashes: the
      upstream file or the pin changed, and only the user can tell which. ``force=True``
      downloads again and re-pins the new verified file (a published hash is never overridden).

    Args:
        variant: Released variant name.
        directory: Where the files and ``SHA256SUMS`` live (default :func:`cache_dir`).
        base_url: A mirror serving Meta's file names, instead of Meta's host.
        force: Download again even if a verified file is present, and re-pin.
        progress: Show a progress bar.
        timeout: Socket timeout in seconds.

    Returns:
        A :class:`DownloadResult`.

    Raises:
        ValueError: For an unknown variant name.
        CheckpointError: For a failed or refused download, a bad ``SHA256SUMS`` (naming the line),
            or a verified file that disagrees with its pin.
    """
    v = get_variant(variant)
    directory = Path(directory) if directory is not None else cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    sums = directory / "SHA256SUMS"
    dest = directory / v.filename
    url = f"{base_url.rstrip('/')}/{v.filename}" if base_url else v.url
    notes: list[str] = []
    with DirLock(directory):
        pins = read_pins(sums)
        pinned = pins.get(v.filename)
        status, digest = "downloaded", None
        if dest.exists() and not force:
            status, pinned, digest = _present(v, dest, sums, pinned, notes)
        if digest is not None:
            return _pinned(v, dest, digest, "present", sums, pins, notes)
        digest = _download_pinned(v, url, dest, v.sha256 or (None if force else pinned), sums, progress, timeout)
        if force and pinned and pinned != digest:
            notes.append(f"re-pinned in {sums}: {pinned} -> {digest}")
        return _pinned(v, dest, digest, status, sums, pins, notes)


def _download_pinned(
    v: Variant, url: str, dest: Path, expected: str | None, sums: Path, progress: bool, timeout: float
) -> str:
    """Download ``v``'s file to ``dest``, verified, and return its sha256.

    Raises:
        CheckpointError: As :func:`download` does; a valid file that differs from its pin (``expected``
            read from ``sums``, no published sha256) says so and how to re-pin it.
    """
    try:
        return _download_unlocked(url, dest, expected, progress, timeout, v, True)
    except CheckpointError as e:
        if expected and not v.sha256 and "sha256 mismatch" in str(e):
            raise CheckpointError(
                f"{e}. The download is a valid {v.name} checkpoint, but the sha256 pinned in {sums} when it was "
                f"first downloaded differs: the upstream file or the pin changed. Pass --force (force=True) to "
                f"download again and pin the new file"
            ) from e
        raise


def _present(
    v: Variant, dest: Path, sums: Path, pinned: str | None, notes: list[str]
) -> tuple[str, str | None, str | None]:
    """Check the file already at ``dest``: ``(status, pin to expect, digest if it can be kept as it is)``.

    A file that fails verification (or differs from the published sha256) is to be ``"replaced"``; a
    pin equal to a corrupt file's hash is dropped; a valid file that differs from its pin is refused.
    """
    try:
        _verify(dest, v, f"checkpoint {dest}", None)
        digest = sha256sum(dest)
    except CheckpointError as e:
        digest = sha256sum(dest)
        notes.append(f"the file that was present failed verification and was replaced: {e}")
        if digest == pinned:
            notes.append(f"its pin {pinned} in {sums} was dropped (it pinned that corrupt file)")
            pinned = None
        return "replaced", pinned, None
    if v.sha256 and digest != v.sha256:
        notes.append(f"the file that was present has sha256 {digest}, not the published {v.sha256}")
        return "replaced", pinned, None
    if pinned and digest != pinned:
        raise CheckpointError(
            f"{dest} is a valid {v.name} checkpoint, but its sha256 {digest} differs from the one pinned "
            f"in {sums} ({pinned}) when it was first downloaded: the file or the pin changed. Pass "
            f"--force (force=True) to download again and pin the new file, or restore the old one"
        )
    return "present", pinned, digest


def _pinned(
    v: Variant, dest: Path, digest: str, status: str, sums: Path, pins: dict[str, str], notes: list[str]
) -> DownloadResult:
    verified = f"verified: every key and shape of {v.name}, float and finite, container CRCs"
    if v.sha256:
        check = f"{verified}; sha256 matches the published one"
    elif pins.get(v.filename) == digest:
        check = f"{verified}; sha256 matches the pin in {sums}"
    else:
        pins[v.filename] = digest
        write_pins(sums, pins)
        check = f"{verified}; no published sha256, pinned in {sums} for later checks"
    return DownloadResult(v.name, dest, digest, status, check, notes)
