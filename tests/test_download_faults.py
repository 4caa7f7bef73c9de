"""Downloads against a local 127.0.0.1 server that misbehaves in every way we know of.

Nothing unverified may be renamed into place or pinned; interrupted transfers raise
``CheckpointError`` with the resume hint (never a raw socket error) and keep their ``.part``;
content that is not a checkpoint is refused and its ``.part`` removed.
"""

from __future__ import annotations

import http.server
import json
import math
import socket
import struct
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from sam2_encoder import variants
from sam2_encoder.checkpoints import (
    CheckpointError,
    download,
    download_variant,
    load_checkpoint,
    read_pins,
    resolve_checkpoint,
    sha256sum,
    write_pins,
)

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from meta_weights import meta_state_dict_from_manifest  # noqa: E402
from safetensors import safe_open  # noqa: E402

with safe_open(str(FIXTURES / "meta_golden.safetensors"), "pt") as _f:
    MANIFESTS = json.loads(_f.metadata()["golden"])["manifests"]

HTML = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Please sign in.</body></html>\n"


class FaultHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files``; ``server.modes`` says how to (mis)behave, one mode per request."""

    server: FaultServer

    def log_message(self, *args) -> None:
        pass

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:  # the connection was reset on purpose
            pass

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        server = self.server
        rng = self.headers.get("Range")
        with server.lock:
            server.requests.append((self.path, rng))
            mode = server.modes.pop(0) if len(server.modes) > 1 else server.modes[0]
        data = server.files.get(self.path)
        if data is None:
            self.send_error(404, "not found")
            return
        have = int(rng.removeprefix("bytes=").split("-")[0]) if rng else 0
        n, half = len(data), len(data) // 2
        if mode == "ok":
            if rng and have >= n:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{n}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206 if rng else 200)
            if rng:
                self.send_header("Content-Range", f"bytes {have}-{n - 1}/{n}")
            self.send_header("Content-Length", str(n - have))
            self.end_headers()
            self.wfile.write(data[have:])
        elif mode == "no_length_half":  # HTTP/1.0, no Content-Length, connection closed halfway
            self.send_response(200)
            self.end_headers()
            self.wfile.write(data[:half])
        elif mode == "html":
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(HTML)))
            self.end_headers()
            self.wfile.write(HTML)
        elif mode == "206_whole":  # claims a partial answer but sends the whole file from byte 0
            self.send_response(206)
            self.send_header("Content-Range", f"bytes 0-{n - 1}/{n}")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            self.wfile.write(data)
        elif mode == "206_wrong_start":  # bytes that do not continue the .part
            start = min(have + 512, n - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{n - 1}/{n}")
            self.send_header("Content-Length", str(n - start))
            self.end_headers()
            self.wfile.write(data[start:])
        elif mode == "206_no_content_range":
            self.send_response(206)
            self.send_header("Content-Length", str(n - have))
            self.end_headers()
            self.wfile.write(data[have:])
        elif mode in ("reset", "short", "stall"):
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            self.wfile.write(data[:half])
            self.wfile.flush()
            if mode == "stall":
                server.stop.wait(10)
            elif mode == "reset":  # RST instead of FIN
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        elif mode == "long":  # announces fewer bytes than the file has
            self.send_response(200)
            self.send_header("Content-Length", str(half))
            self.end_headers()
            self.wfile.write(data)
        elif mode == "flip":  # right length, 4 KiB changed in transit
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            self.wfile.write(data[:half] + bytes(b ^ 0x55 for b in data[half : half + 4096]) + data[half + 4096 :])
        elif mode == "chunked_cut":  # HTTP/1.1 chunked body, connection closed inside a chunk
            self.wfile.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            self.wfile.write(b"%x\r\n" % n + data[:half])
            self.wfile.flush()
            self.connection.close()
        elif mode == "garbage_status":
            self.wfile.write(b"HELLO THERE\r\n\r\n")
        elif mode == "416_no_total":
            self.send_response(416)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif mode == "500":
            self.send_error(500, "internal error")
        else:  # pragma: no cover - a typo in a test
            raise AssertionError(mode)


class FaultServer(http.server.ThreadingHTTPServer):
    """Threaded server on 127.0.0.1 (daemon threads); stops itself after ``lifetime`` seconds."""

    daemon_threads = True

    def __init__(self, lifetime: float = 120.0) -> None:
        super().__init__(("127.0.0.1", 0), FaultHandler)
        self.files: dict[str, bytes] = {}
        self.modes: list[str] = ["ok"]
        self.requests: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.watchdog = threading.Timer(lifetime, self.shutdown)
        self.watchdog.daemon = True

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001 - socketserver API
        pass  # resets and stalls are on purpose

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def serve(self, path: str, data: bytes, *modes: str) -> str:
        self.files[path] = data
        self.modes = list(modes) or ["ok"]
        return self.url + path


@pytest.fixture
def server() -> Iterator[FaultServer]:
    srv = FaultServer()
    srv.thread.start()
    srv.watchdog.start()
    try:
        yield srv
    finally:
        srv.stop.set()
        srv.watchdog.cancel()
        srv.shutdown()
        srv.server_close()


@pytest.fixture(scope="module")
def small_pt(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real Meta-format .pt of ~1 MB (the first trunk tensors of sam2.1 tiny)."""
    manifest, size = {}, 0
    for key, shape in MANIFESTS["sam2.1_hiera_tiny"].items():
        manifest[key] = shape
        size += 4 * math.prod(shape)
        if size >= 2**20:
            break
    path = tmp_path_factory.mktemp("small") / "small.pt"
    torch.save({"model": meta_state_dict_from_manifest(manifest, 0)}, path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def tiny_pt(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """Meta's complete sam2.1_hiera_tiny.pt layout with seeded weights (156 MB)."""
    path = tmp_path_factory.mktemp("tiny") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": meta_state_dict_from_manifest(MANIFESTS["sam2.1_hiera_tiny"], 0)}, path)
    return path.read_bytes()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --------------------------------------------------------------------------------------------
# download(): transport faults
# --------------------------------------------------------------------------------------------


def test_no_content_length_and_early_close_is_not_accepted(tmp_path: Path, server, small_pt) -> None:
    url = server.serve("/w.pt", small_pt, "no_length_half")
    dest = tmp_path / "out" / "w.pt"
    with pytest.raises(CheckpointError) as e:
        download(url, dest, progress=False)
    message = str(e.value)
    assert f"the file downloaded from {url} is truncated or corrupt" in message
    assert "The server sent no length, so a connection that closed early looks complete" in message
    assert "Nothing was saved" in message and leftovers(dest.parent) == []


def test_html_page_is_refused_and_named(tmp_path: Path, server, small_pt) -> None:
    url = server.serve("/w.pt", small_pt, "html")
    with pytest.raises(CheckpointError) as e:
        download(url, tmp_path / "out" / "w.pt", progress=False)
    assert f"the file downloaded from {url} is an HTML page, not a checkpoint (it starts with '<!DOCTYPE html>" in str(
        e.value
    )
    assert "Content-Type was 'text/html; charset=utf-8'" in str(e.value)
    assert leftovers(tmp_path / "out") == []


@pytest.mark.parametrize("mode", ["206_whole", "206_wrong_start", "206_no_content_range", "416_no_total", "ok"])
def test_resume_never_appends_bytes_that_do_not_continue_the_part(tmp_path: Path, server, small_pt, mode) -> None:
    url = server.serve("/w.pt", small_pt, mode, "ok")
    dest = tmp_path / "w.pt"
    dest.with_name("w.pt.part").write_bytes(small_pt[:1000])
    download(url, dest, progress=False)
    assert dest.read_bytes() == small_pt and leftovers(tmp_path) == ["w.pt"]
    assert server.requests[0] == ("/w.pt", "bytes=1000-")
    restarted = mode in ("206_wrong_start", "206_no_content_range", "416_no_total")
    assert server.requests[1:] == ([("/w.pt", None)] if restarted else [])


def test_a_part_longer_than_the_file_starts_over(tmp_path: Path, server, small_pt) -> None:
    url = server.serve("/w.pt", small_pt)
    dest = tmp_path / "w.pt"
    dest.with_name("w.pt.part").write_bytes(small_pt + b"garbage")
    download(url, dest, progress=False)  # 416 with another total: start over
    assert dest.read_bytes() == small_pt
    assert server.requests == [("/w.pt", f"bytes={len(small_pt) + 7}-"), ("/w.pt", None)]


def test_a_complete_part_answered_by_416_is_verified_and_placed(tmp_path: Path, server, small_pt) -> None:
    url = server.serve("/w.pt", small_pt)
    dest = tmp_path / "w.pt"
    dest.with_name("w.pt.part").write_bytes(small_pt)
    download(url, dest, progress=False)
    assert dest.read_bytes() == small_pt and len(server.requests) == 1


@pytest.mark.parametrize(
    ("mode", "cause"),
    [
        ("reset", r"\(ConnectionResetError"),
        ("short", None),
        ("stall", r"\(TimeoutError"),
        ("chunked_cut", r"\(IncompleteRead"),
    ],
)
def test_interrupted_transfer_raises_with_resume_hint_then_resumes(
    tmp_path: Path, server, small_pt, mode, cause
) -> None:
    url = server.serve("/w.pt", small_pt, mode, "ok")
    dest = tmp_path / "w.pt"
    part = dest.with_name("w.pt.part")
    if cause is None:  # a clean close before Content-Length bytes
        expected = rf"download of {url} stopped at \d+ of {len(small_pt)} bytes"
    else:
        total = "" if mode == "chunked_cut" else f" of {len(small_pt)}"  # a chunked answer has no length
        expected = rf"download of {url} was interrupted after \d+{total} bytes {cause}"
    with pytest.raises(CheckpointError, match=expected) as e:
        download(url, dest, progress=False, timeout=1.0)
    assert str(e.value).endswith(f"run the same command again to resume from {part}")
    # what arrived is kept (a reset may drop what the kernel had not handed over yet)
    assert not dest.exists() and (mode == "reset" or 0 < part.stat().st_size) and part.stat().st_size < len(small_pt)
    assert small_pt.startswith(part.read_bytes())
    kept = part.stat().st_size
    download(url, dest, progress=False)
    assert dest.read_bytes() == small_pt and not part.exists()
    assert server.requests[-1] == ("/w.pt", f"bytes={kept}-")


def test_content_length_shorter_than_the_file_is_refused(tmp_path: Path, server, small_pt) -> None:
    url = server.serve("/w.pt", small_pt, "long")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        download(url, tmp_path / "w.pt", progress=False)
    assert leftovers(tmp_path) == []


def test_bytes_changed_in_transit_fail_the_crc(tmp_path: Path, server, small_pt) -> None:
    url = server.serve("/w.pt", small_pt, "flip")
    with pytest.raises(CheckpointError, match=r"archive member .* fails its CRC-32 check"):
        download(url, tmp_path / "w.pt", progress=False)
    assert leftovers(tmp_path) == []


def test_random_bytes_of_the_right_length_are_refused(tmp_path: Path, server) -> None:
    noise = bytes(torch.randint(0, 256, (50_000,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8))
    url = server.serve("/w.pt", noise)
    with pytest.raises(
        CheckpointError, match=r"is not a checkpoint: neither a PyTorch archive \(.pt\) nor a safetensors"
    ):
        download(url, tmp_path / "w.pt", progress=False)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("mode", "match"),
    [
        ("500", "HTTP 500 internal error"),
        ("garbage_status", r"failed before any data arrived \(BadStatusLine"),
    ],
)
def test_server_errors_are_checkpoint_errors(tmp_path: Path, server, small_pt, mode, match) -> None:
    url = server.serve("/w.pt", small_pt, mode)
    with pytest.raises(CheckpointError, match=match):
        download(url, tmp_path / "w.pt", progress=False)
    assert leftovers(tmp_path) == []


def test_connection_refused_and_bad_urls(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(CheckpointError, match=rf"download of http://127.0.0.1:{port}/w.pt failed: .*refused"):
        download(f"http://127.0.0.1:{port}/w.pt", tmp_path / "w.pt", progress=False)
    with pytest.raises(CheckpointError, match="download of ftp-ish://x/w.pt failed: unknown url type: ftp-ish"):
        download("ftp-ish://x/w.pt", tmp_path / "w.pt", progress=False)


def test_concurrent_fetches_of_one_checkpoint_download_it_once(tmp_path: Path, server, small_pt) -> None:
    url = server.serve("/sam2.1_hiera_tiny.pt", small_pt)
    results, errors = [], []

    def fetch() -> None:
        try:
            results.append(resolve_checkpoint(url, progress=False))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(set(results)) == 1 and results[0].read_bytes() == small_pt
    assert len(server.requests) == 1


def test_resolving_a_variant_name_refuses_an_html_page(server, monkeypatch, small_pt) -> None:
    server.serve("/sam2.1_hiera_tiny.pt", small_pt, "html")
    monkeypatch.setitem(variants._META_BASE_URL, "sam2.1", server.url)
    with pytest.raises(CheckpointError, match="is an HTML page, not a checkpoint"):
        resolve_checkpoint("sam2.1_hiera_tiny", progress=False)
    from sam2_encoder.checkpoints import cache_dir

    assert not (cache_dir() / "sam2.1_hiera_tiny.pt").exists()
    assert not (cache_dir() / "sam2.1_hiera_tiny.pt.part").exists()


def test_resolving_a_variant_name_checks_every_key(server, monkeypatch, small_pt) -> None:
    """A variant's file must be that variant: a valid checkpoint that lacks keys is refused too."""
    server.serve("/sam2.1_hiera_tiny.pt", small_pt)
    monkeypatch.setitem(variants._META_BASE_URL, "sam2.1", server.url)
    with pytest.raises(CheckpointError, match=r"does not fit sam2.1_hiera_tiny: .*missing keys"):
        resolve_checkpoint("sam2.1_hiera_tiny", progress=False)


# --------------------------------------------------------------------------------------------
# download_variant(): verification before pinning, stale pins, bad pin files
# --------------------------------------------------------------------------------------------


def test_only_verified_downloads_are_placed_and_pinned(tmp_path: Path, server, tiny_pt) -> None:
    server.serve("/sam2.1_hiera_tiny.pt", tiny_pt, "html", "ok")
    with pytest.raises(CheckpointError, match="is an HTML page"):
        download_variant("sam2.1_hiera_tiny", tmp_path, base_url=server.url, progress=False)
    assert leftovers(tmp_path) == []  # nothing placed, nothing pinned, no .part

    result = download_variant("sam2.1_hiera_tiny", tmp_path, base_url=server.url, progress=False)
    digest = sha256sum(tmp_path / "sam2.1_hiera_tiny.pt")
    assert (result.status, result.sha256, result.path) == ("downloaded", digest, tmp_path / "sam2.1_hiera_tiny.pt")
    assert "every key and shape of sam2.1_hiera_tiny" in result.check and "pinned in" in result.check
    assert (tmp_path / "SHA256SUMS").read_text() == f"{digest}  sam2.1_hiera_tiny.pt\n"
    assert leftovers(tmp_path) == ["SHA256SUMS", "sam2.1_hiera_tiny.pt"]

    again = download_variant("sam2.1_hiera_tiny", tmp_path, base_url=server.url, progress=False)
    assert again.status == "present" and "matches the pin" in again.check and len(server.requests) == 2


def test_a_truncated_present_file_and_its_stale_pin_are_replaced(tmp_path: Path, server, tiny_pt) -> None:
    """The state older versions left: a truncated file in the cache with its hash pinned."""
    server.serve("/sam2.1_hiera_tiny.pt", tiny_pt)
    bad = tmp_path / "sam2.1_hiera_tiny.pt"
    bad.write_bytes(tiny_pt[: len(tiny_pt) // 2])
    write_pins(tmp_path / "SHA256SUMS", {"sam2.1_hiera_tiny.pt": sha256sum(bad)})
    with pytest.raises(CheckpointError, match=r"truncated or corrupt.*sam2-encoder download sam2.1_hiera_tiny"):
        load_checkpoint(bad)

    result = download_variant("sam2.1_hiera_tiny", tmp_path, base_url=server.url, progress=False)
    assert result.status == "replaced" and bad.read_bytes() == tiny_pt
    assert "failed verification and was replaced" in result.notes[0] and "was dropped" in result.notes[1]
    assert read_pins(tmp_path / "SHA256SUMS") == {"sam2.1_hiera_tiny.pt": sha256sum(bad)}
    load_checkpoint(bad)


def test_a_valid_file_that_disagrees_with_its_pin_needs_force(tmp_path: Path, server, tiny_pt) -> None:
    server.serve("/sam2.1_hiera_tiny.pt", tiny_pt)
    stale = sha256sum_of(HTML)  # the old bug: an HTML page was pinned, then deleted
    write_pins(tmp_path / "SHA256SUMS", {"sam2.1_hiera_tiny.pt": stale})
    with pytest.raises(CheckpointError) as e:
        download_variant("sam2.1_hiera_tiny", tmp_path, base_url=server.url, progress=False)
    assert "is a valid sam2.1_hiera_tiny checkpoint, but the sha256 pinned in" in str(e.value)
    assert stale in str(e.value) and "--force" in str(e.value)
    assert leftovers(tmp_path) == ["SHA256SUMS"] and read_pins(tmp_path / "SHA256SUMS")["sam2.1_hiera_tiny.pt"] == stale

    result = download_variant("sam2.1_hiera_tiny", tmp_path, base_url=server.url, progress=False, force=True)
    digest = sha256sum(tmp_path / "sam2.1_hiera_tiny.pt")
    assert result.status == "downloaded" and result.notes == [
        f"re-pinned in {tmp_path / 'SHA256SUMS'}: {stale} -> {digest}"
    ]
    assert read_pins(tmp_path / "SHA256SUMS") == {"sam2.1_hiera_tiny.pt": digest}

    # a present valid file whose pin changed is refused without downloading
    write_pins(tmp_path / "SHA256SUMS", {"sam2.1_hiera_tiny.pt": stale})
    n = len(server.requests)
    with pytest.raises(CheckpointError, match=r"is a valid sam2.1_hiera_tiny checkpoint, but its sha256 .* differs"):
        download_variant("sam2.1_hiera_tiny", tmp_path, base_url=server.url, progress=False)
    assert len(server.requests) == n


def sha256sum_of(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_pin_file_with_bad_bytes_or_lines_gives_one_clear_error(tmp_path: Path, server, tiny_pt) -> None:
    sums = tmp_path / "SHA256SUMS"
    good = f"{'a' * 64}  sam2_hiera_tiny.pt\n".encode()
    sums.write_bytes(good + b"# comment\n" + b"\xff\xfe" + b"b" * 62 + b"  sam2.1_hiera_tiny.pt\n")
    with pytest.raises(CheckpointError) as e:
        download_variant("sam2.1_hiera_tiny", tmp_path, base_url=server.url, progress=False)
    assert str(e.value).startswith(f"{sums} line 3 is not valid UTF-8 (byte 0xff at column 1); fix or delete that line")
    sums.write_bytes(good + b"deadbeef sam2.1_hiera_tiny.pt\n")
    with pytest.raises(CheckpointError, match=rf"{sums} line 2 is not '<64 hex digits>  <file name>': 'deadbeef"):
        read_pins(sums)
    sums.write_bytes(good + f"{'c' * 64}  sam2_hiera_tiny.pt\n".encode())
    with pytest.raises(CheckpointError, match=r"line 2 pins sam2_hiera_tiny.pt to a second sha256"):
        read_pins(sums)
    assert not server.requests  # nothing fetched while the pins cannot be read


def test_pins_are_written_atomically(tmp_path: Path) -> None:
    sums = tmp_path / "SHA256SUMS"
    write_pins(sums, {"b.pt": "B" * 64, "a.pt": "a" * 64})
    assert sums.read_text() == f"{'a' * 64}  a.pt\n{'b' * 64}  b.pt\n"
    with pytest.raises(ValueError, match="cannot pin 'c.pt' to 'xyz'"):
        write_pins(sums, {"a.pt": "a" * 64, "c.pt": "xyz"})
    assert read_pins(sums) == {"a.pt": "a" * 64, "b.pt": "b" * 64} and leftovers(tmp_path) == ["SHA256SUMS"]


def test_pin_writes_remove_the_temporary_files_of_killed_writers(tmp_path: Path) -> None:
    """A writer killed mid-write leaves `.SHA256SUMS.<pid>.<random>.tmp`; the next write removes it (pid dead)."""
    import os
    import subprocess

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)
    alive = os.getppid()
    for pid in (dead, alive):
        (tmp_path / f".SHA256SUMS.{pid}.k3j2x.tmp").write_bytes(b"half")
    write_pins(tmp_path / "SHA256SUMS", {"a.pt": "a" * 64})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".SHA256SUMS.{alive}.k3j2x.tmp", "SHA256SUMS"])
