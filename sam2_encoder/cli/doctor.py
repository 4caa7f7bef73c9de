"""``sam2-encoder doctor``: versions, device, attention backend, checkpoints found, Hydra plugin visible."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register", "run"]

PLUGIN_PATH = "pkg://sam2_encoder.diffusion_policy.config"


def register(sub: Any) -> argparse.ArgumentParser:
    """Add the ``doctor`` subcommand to a ``sam2-encoder`` subparsers object."""
    p = sub.add_parser("doctor", help="versions, device, attention backend, checkpoints, Hydra plugin")
    p.set_defaults(func=run)
    return p


def _version(name: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "not installed"


def run(args: argparse.Namespace) -> int:
    """Run ``sam2-encoder doctor``; exit status 1 when the Hydra plugin is installed but not visible."""
    import platform

    import torch

    from .._hf import TESTED_TRANSFORMERS
    from ..checkpoints import cache_dir
    from ..image_encoder import bf16_support

    print(f"python        {platform.python_version()} ({platform.machine()})")
    for name in ("sam2-encoder", "torch", "transformers", "hydra-core", "omegaconf", "zarr", "numpy", "safetensors"):
        print(f"{name:<13} {_version(name)}")
    print(f"transformers  tested range {TESTED_TRANSFORMERS[0]} to {TESTED_TRANSFORMERS[1]}")
    print(f"torch threads {torch.get_num_threads()}")
    cpu_bf16, why = bf16_support("cpu")
    verdict = "available" if cpu_bf16 else "refused"
    print(f"cpu bf16      {'yes' if cpu_bf16 else 'no'} ({why}): --precision bf16 {verdict} on cpu")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        print(
            f"device        cuda: {props.name}, {props.total_memory / 2**30:.0f} GiB, bf16 "
            f"{'yes' if bf16_support('cuda:0')[0] else 'no (--precision bf16 refused)'}"
        )
        backends = [
            n
            for n, on in (
                ("flash", torch.backends.cuda.flash_sdp_enabled()),
                ("mem_efficient", torch.backends.cuda.mem_efficient_sdp_enabled()),
                ("math", torch.backends.cuda.math_sdp_enabled()),
            )
            if on
        ]
        print(f"attention     torch SDPA, CUDA backends enabled: {', '.join(backends)}")
    else:
        print("device        cpu (no CUDA device visible)")
        print("attention     torch SDPA (CPU kernels)")
    folders = [cache_dir(), Path("checkpoints")]
    found = [p for folder in folders if folder.is_dir() for p in sorted(folder.glob("*.pt"))]
    print(
        "checkpoints   "
        + (
            ", ".join(f"{p} ({p.stat().st_size / 2**20:.0f} MiB)" for p in found)
            or f"none in {', '.join(map(str, folders))} (sam2-encoder download VARIANT)"
        )
    )
    try:
        visible = hydra_plugin_visible()
    except Exception as e:  # noqa: BLE001 - a broken plugin anywhere in the environment: report it
        print(f"hydra plugin  NOT visible: plugin discovery failed ({type(e).__name__}: {e})")
        return 1
    if visible is None:
        print("hydra plugin  Hydra not installed (pip install 'sam2-encoder[dp]' for Diffusion Policy)")
        return 0
    print(f"hydra plugin  {'visible: ' + PLUGIN_PATH + ' on the search path' if visible else 'NOT visible'}")
    return 0 if visible else 1


def hydra_plugin_visible() -> bool | None:
    """Whether Hydra's plugin discovery finds our search-path plugin; ``None`` without Hydra.

    Uses Hydra's public plugin API: every discovered ``SearchPathPlugin`` is asked to extend a
    search path, which is then read back.
    """
    try:
        from hydra.core.config_search_path import ConfigSearchPath
        from hydra.core.plugins import Plugins
        from hydra.plugins.search_path_plugin import SearchPathPlugin
    except ImportError:
        return None

    class _Recorder(ConfigSearchPath):
        def __init__(self) -> None:
            self.paths: list[str] = []

        def get_path(self) -> Any:
            return []

        def append(self, provider: str, path: str, anchor: Any = None) -> None:
            self.paths.append(path)

        def prepend(self, provider: str, path: str, anchor: Any = None) -> None:
            self.paths.append(path)

    recorder = _Recorder()
    for plugin in Plugins.instance().discover(SearchPathPlugin):
        plugin().manipulate_search_path(recorder)
    return PLUGIN_PATH in recorder.paths
