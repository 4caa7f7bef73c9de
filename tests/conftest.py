"""Shared fixtures: small seeded models, a local HTTP server, thread limits."""

from __future__ import annotations

import http.server
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# One thread: these 2-core machines are often shared, and torch with 2 threads then runs up to 20x slower.
torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
warnings.filterwarnings("ignore", message=".*has no checkpoint.*")
try:  # the Diffusion Policy extra; the core tests run without it
    from omegaconf import OmegaConf
except ImportError:
    pass
else:
    if not OmegaConf.has_resolver("eval"):
        OmegaConf.register_new_resolver("eval", eval)  # as Diffusion Policy's train.py does


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never read or write the user's checkpoint cache from tests."""
    monkeypatch.setenv("SAM2_ENCODER_CACHE", str(tmp_path_factory.mktemp("cache")))


def perturb_(module: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Add seeded noise to every parameter (transformers zero-initialises several of them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return module


@pytest.fixture(scope="session")
def tiny_video_state() -> dict[str, torch.Tensor]:
    """A seeded, perturbed sam2.1 tiny ``Sam2VideoModel`` state dict (transformers names)."""
    from transformers import Sam2VideoModel

    from sam2_encoder.variants import get_variant

    torch.manual_seed(0)
    model = Sam2VideoModel(get_variant("sam2.1_hiera_tiny").video_model_config(256))
    return {k: v.detach().clone() for k, v in perturb_(model).state_dict().items()}


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with HTTP Range support; counts requests per path."""

    requests: list[tuple[str, str | None]]
    honour_range = True

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self.requests.append((self.path, self.headers.get("Range")))
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404, "not found")
            return
        data = path.read_bytes()
        start = 0
        spec = self.headers.get("Range")
        if spec and self.honour_range:
            start = int(spec.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


class LocalServer:
    """A threaded HTTP server on 127.0.0.1 serving ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[tuple[str, str | None]] = []
        handler = type("Handler", (_RangeHandler,), {"requests": self.requests})

        def factory(*args, **kwargs):
            return handler(*args, directory=str(root), **kwargs)

        self.handler = handler
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), factory)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> LocalServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[LocalServer]:
    root = tmp_path / "www"
    root.mkdir()
    with LocalServer(root) as server:
        yield server


@pytest.fixture(scope="session")
def tiny_safetensors(tiny_video_state, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The perturbed sam2.1 tiny weights as a real ``.safetensors`` checkpoint file."""
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("tiny_ckpt") / "sam2.1_hiera_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_video_state.items()}, str(path))
    return path


@pytest.fixture(scope="session")
def present_checkpoint(tiny_video_state, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny weights as ``.safetensors``, object-score head biased so random weights keep objects present."""
    from safetensors.torch import save_file

    state = dict(tiny_video_state)
    key = "mask_decoder.pred_obj_score_head.proj_out.bias"
    state[key] = state[key] + 3.0
    path = tmp_path_factory.mktemp("present_ckpt") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path
