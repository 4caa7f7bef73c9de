"""Bytes over HTTP into a verified file: resumable transfers, sha256 pins, directory locks.

The transport under :mod:`sam2_encoder.checkpoints` (which decides what a valid checkpoint is):

* :func:`fetch` writes ``<dest>.part``, resumes it with HTTP ``Range`` requests, checks the byte
  count against ``Content-Length`` / ``Content-Range``, runs the caller's content check and the
  sha256, and only then renames the file into place; a ``206`` that does not continue the
  ``.part`` restarts from byte 0; interruptions raise :class:`CheckpointError` with the command
  that resumes them.
* :func:`read_pins` / :func:`write_pins`: ``SHA256SUMS`` files (``sha256sum`` format), written
  atomically.
* :class:`DirLock`: one writer per directory across processes (DDP ranks).
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import os
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CheckpointError",
    "DirLock",
    "atomic_write_bytes",
    "cache_dir",
    "fetch",
    "pid_alive",
    "read_pins",
    "sha256sum",
    "write_pins",
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


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (one of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, it is not ours
        return True
    return True


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over ``path``.

    The temporary file is ``.<name>.<pid>.<random>.tmp``; those of processes no longer alive (killed
    while writing) are removed first.
    """
    stale = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[^.]+\.tmp")
    for entry in path.parent.glob(f".{path.name}.*.tmp"):
        match = stale.fullmatch(entry.name)
        if match and int(match.group(1)) != os.getpid() and not pid_alive(int(match.group(1))):
            entry.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------
# sha256 pins (SHA256SUMS)
# --------------------------------------------------------------------------------------------

_PIN_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](\S.*)")


def read_pins(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a ``SHA256SUMS`` file (``sha256sum`` format: ``<hex>  <file name>`` per line).

    Blank lines and ``#`` comments are skipped; a missing file holds no pins.

    Args:
        path: The pin file.

    Returns:
        ``{file name: lower-case hex sha256}``.

    Raises:
        CheckpointError: Naming the file and line, for a line that is not UTF-8, not in the
            format above, or that pins one file name to two different hashes.
    """
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read the sha256 pin file {path}: {e}") from e
    pins: dict[str, str] = {}
    fix = "fix or delete that line (it pins a checkpoint's sha256; a deleted pin is re-pinned on the next download)"
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            raise CheckpointError(
                f"{path} line {number} is not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); {fix}"
            ) from None
        if not line or line.startswith("#"):
            continue
        m = _PIN_LINE.fullmatch(line)
        if m is None:
            raise CheckpointError(f"{path} line {number} is not '<64 hex digits>  <file name>': {line[:100]!r}; {fix}")
        digest, name = m.group(1).lower(), m.group(2)
        if pins.get(name, digest) != digest:
            raise CheckpointError(
                f"{path} line {number} pins {name} to a second sha256 ({pins[name]}, {digest}); {fix}"
            )
        pins[name] = digest
    return pins


def write_pins(path: str | os.PathLike[str], pins: Mapping[str, str]) -> None:
    """Write ``SHA256SUMS`` atomically (temporary file, fsync, rename): never half-written.

    Args:
        path: The pin file.
        pins: ``{file name: hex sha256}``; written sorted by name.

    Raises:
        ValueError: For a digest that is not 64 hex digits or a name with a line break.
    """
    lines = []
    for name, digest in sorted(pins.items()):
        if not re.fullmatch(r"[0-9a-fA-F]{64}", digest) or "\n" in name or "\r" in name or not name.strip():
            raise ValueError(f"cannot pin {name!r} to {digest!r}: expected a file name and 64 hex digits")
        lines.append(f"{digest.lower()}  {name}\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, "".join(lines).encode("utf-8"))


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------


@dataclass
class _Transfer:
    size: int
    total: int | None  # what the server announced (Content-Length / Content-Range), None if nothing
    content_type: str


@functools.cache
def _fcntl():  # noqa: ANN202 - module or None
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks, downloads are not serialised
        return None
    return fcntl


class DirLock:
    """Exclusive advisory lock (``flock``) on a directory.

    Two processes (DDP ranks) that fetch the same checkpoint then never write one ``.part`` at
    once. Best effort: a no-op where ``flock`` is unavailable or refused (Windows, some network
    file systems).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.fd: int | None = None

    def __enter__(self) -> DirLock:
        fcntl = _fcntl()
        if fcntl is not None:
            try:
                self.fd = os.open(self.directory, os.O_RDONLY)
                fcntl.flock(self.fd, fcntl.LOCK_EX)
            except OSError:
                self.__exit__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None


def _content_range(value: str | None) -> tuple[int, int | None] | None:
    """``bytes START-END/TOTAL`` -> ``(START, TOTAL or None)``; ``None`` if malformed."""
    m = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if m is None:
        return None
    start, end = int(m.group(1)), int(m.group(2))
    total = None if m.group(3) == "*" else int(m.group(3))
    if end < start or (total is not None and end >= total):
        return None
    return start, total


def _int_header(value: str | None) -> int | None:
    try:
        return int(value) if value is not None and int(value) >= 0 else None
    except ValueError:
        return None


class _Restart(Exception):
    """The ``.part`` does not continue the file the server sends: drop it and ask again from byte 0."""


def _open(url: str, have: int, timeout: float) -> Any:
    """The server's response to a request for ``url`` from byte ``have``; errors as ``CheckpointError``.

    Returns ``None`` when the server says (416) that the ``.part`` of ``have`` bytes is already the
    whole file; raises ``_Restart`` when it says the ``.part`` is longer than the file.
    """
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "sam2-encoder", "Accept-Encoding": "identity"})
        if have:
            request.add_header("Range", f"bytes={have}-")
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        with e:
            if e.code == 416 and have:
                m = re.fullmatch(r"\s*bytes\s+\*/(\d+)\s*", e.headers.get("Content-Range") or "")
                if m and int(m.group(1)) == have:  # the .part already holds every byte
                    return None
                raise _Restart from None  # a .part longer than the file, or no total
            raise CheckpointError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise CheckpointError(f"download of {url} failed: {e.reason}") from e
    except (OSError, http.client.HTTPException) as e:
        raise CheckpointError(
            f"download of {url} failed before any data arrived ({type(e).__name__}: {e}); run the same command again"
        ) from e
    except ValueError as e:  # unknown URL type and the like
        raise CheckpointError(f"cannot download {url!r}: {e}") from e


def _span(url: str, response: Any, have: int) -> tuple[int, int | None]:
    """``(first byte, total size or None)`` of what ``response`` sends; ``_Restart`` if it does not continue."""
    status = getattr(response, "status", None) or 200  # file:// URLs have no status
    length = _int_header(response.headers.get("Content-Length"))
    if status != 206:  # 200 (a server that ignores Range sends the whole file): start over
        return 0, length
    rng = _content_range(response.headers.get("Content-Range"))
    if rng is None or rng[0] not in (0, have):
        if not have:
            raise CheckpointError(
                f"download of {url} failed: the server answered 206 with Content-Range "
                f"{response.headers.get('Content-Range')!r} to a request for the whole file"
            )
        raise _Restart  # bytes that do not continue the .part: start over instead of appending garbage
    start, total = rng
    return start, start + length if total is None and length is not None else total


def _copy(url: str, response: Any, part: Path, start: int, total: int | None, bar: Any) -> None:
    """Append (``start > 0``) or write the response body to ``part``, keeping every byte received."""
    try:
        f = open(part, "ab" if start else "wb")  # noqa: SIM115 - closed by the with below
    except OSError as e:
        raise CheckpointError(f"cannot write {part}: {e}") from e
    # read1: what has arrived, so an interrupted transfer keeps every byte received (read would
    # drop a partly filled chunk); an early close shows as a short count in _transfer
    read = getattr(response, "read1", response.read)
    size = start
    with f:
        while True:
            try:
                chunk = read(_CHUNK)
            except (OSError, http.client.HTTPException) as e:  # reset, timeout, IncompleteRead
                got = f"{size} of {total}" if total is not None else f"{size}"
                raise CheckpointError(
                    f"download of {url} was interrupted after {got} bytes ({type(e).__name__}: {e}); "
                    f"run the same command again to resume from {part}"
                ) from e
            if not chunk:
                return
            try:
                f.write(chunk)
            except OSError as e:
                raise CheckpointError(f"cannot write {part}: {e}") from e
            size += len(chunk)
            bar.update(len(chunk))


def _transfer(url: str, part: Path, progress: bool, timeout: float, desc: str) -> _Transfer:
    """Fetch ``url`` into ``part``, resuming from its size; returns what was received."""
    have = part.stat().st_size if part.exists() else 0
    for _ in range(3):
        try:
            response = _open(url, have, timeout)
            if response is None:
                return _Transfer(have, have, "")
            with response:
                start, total = _span(url, response, have)
                bar = _tqdm()(
                    total=total,
                    initial=start,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=desc,
                    disable=not progress,
                )
                with bar:
                    _copy(url, response, part, start, total, bar)
                content_type = response.headers.get("Content-Type") or ""
        except _Restart:
            part.unlink(missing_ok=True)
            have = 0
            continue
        size = part.stat().st_size
        if total is not None and size < total:
            raise CheckpointError(
                f"download of {url} stopped at {size} of {total} bytes; "
                f"run the same command again to resume from {part}"
            )
        if total is not None and size > total:
            part.unlink(missing_ok=True)
            raise CheckpointError(
                f"download of {url} produced {size} bytes where the server announced {total}; "
                f"the partial file was removed, run the same command again"
            )
        return _Transfer(size, total, content_type)
    raise CheckpointError(
        f"download of {url} failed: the server's answers to range requests do not continue {part}; "
        f"delete it and run the same command again"
    )


def _tqdm():  # noqa: ANN202 - the tqdm class, imported when a download starts
    from tqdm.auto import tqdm

    return tqdm


def fetch(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    check: Callable[[Path], None] | None = None,
) -> str:
    """Download ``url`` to ``dest``, resuming ``dest + ".part"``; rename only once verified.

    The caller holds :class:`DirLock` on ``dest.parent``. ``dest`` is replaced only when the
    byte count equals the length the server announced (when it announced one), ``check`` passed
    and the sha256 equals ``sha256`` (when given).

    Args:
        url: ``http(s)://`` or ``file://`` URL.
        dest: Final file path (its directory exists).
        sha256: Expected hex digest, or ``None``.
        progress: Show a tqdm progress bar.
        timeout: Socket timeout in seconds (connect and each read).
        check: Called with the complete ``.part``; raises :class:`CheckpointError` to refuse it.

    Returns:
        The hex sha256 of the placed file.

    Raises:
        CheckpointError: On HTTP errors and interrupted transfers (the ``.part`` is kept and the
            message says how to resume), and when ``check`` or the sha256 refuse the file (the
            ``.part`` is removed so the next try starts clean; nothing is placed at ``dest``).
    """
    part = dest.with_name(dest.name + ".part")
    transfer = _transfer(url, part, progress, timeout, dest.name)
    if check is not None:
        try:
            check(part)
        except CheckpointError as e:
            part.unlink(missing_ok=True)
            why = ""
            if transfer.total is None:
                why = (
                    " The server sent no length, so a connection that closed early looks complete; "
                    "that is the likely cause."
                )
            if "html" in transfer.content_type.lower():
                why += f" The server's Content-Type was {transfer.content_type!r}."
            raise CheckpointError(
                f"{str(e).rstrip('.')}.{why} Nothing was saved to {dest} and the partial file was removed; "
                f"check the URL and run the same command again"
            ) from e
    digest = sha256sum(part)
    if sha256 is not None and digest != sha256.lower():
        part.unlink(missing_ok=True)
        raise CheckpointError(
            f"sha256 mismatch for {url}: expected {sha256.lower()}, got {digest}; the file was removed"
        )
    os.replace(part, dest)
    return digest
