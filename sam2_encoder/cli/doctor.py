"""``sam2-encoder doctor``: versions, device, attention backend, checkpoints found, Hydra plugin visible."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["CPU_INDEX", "cuda_libraries", "print_versions", "register", "run", "torch_build_note"]

PLUGIN_PATH = "pkg://sam2_encoder.diffusion_policy.config"


def register(sub: Any) -> argparse.ArgumentParser:
    """Add the ``doctor`` subcommand to a ``sam2-encoder`` subparsers object."""
    p = sub.add_parser("doctor", help="versions, device, attention backend, checkpoints, Hydra plugin")
    p.set_defaults(func=run)
    return p


_PACKAGES = ("sam2-encoder", "torch", "transformers", "hydra-core", "omegaconf", "zarr", "numpy", "safetensors")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
"""PyTorch's index of CPU-only wheels (no CUDA libraries)."""


def _version(name: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "not installed"


def print_versions() -> None:
    """The Python and package versions, read from the installed metadata: no torch import, printed at once."""
    import platform

    print(f"python        {platform.python_version()} ({platform.machine()})", flush=True)
    for name in _PACKAGES:
        print(f"{name:<13} {_version(name)}", flush=True)


def cuda_libraries() -> tuple[list[str], int]:
    """The installed CUDA runtime distributions that come with a CUDA build of torch, and their size.

    Returns:
        ``(names, bytes)``: the ``nvidia-*`` and ``triton`` distributions installed and the bytes
        of their files on disk.
    """
    import importlib.metadata as md

    names, size = [], 0
    for dist in md.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if not (name.startswith("nvidia-") or name == "triton"):
            continue
        names.append(name)
        for file in dist.files or []:
            try:
                size += file.locate().stat().st_size
            except OSError:
                pass
    return sorted(set(names)), size


def torch_build_note(version: str, cuda: str | None, gpu_visible: bool, cuda_bytes: int = 0) -> str:
    """What ``doctor`` says of the torch build: CPU or CUDA, and the CPU wheel where no GPU can use CUDA.

    Args:
        version: ``torch.__version__`` (``"2.15.0+cu132"``).
        cuda: ``torch.version.cuda`` (``None`` for a CPU build).
        gpu_visible: ``torch.cuda.is_available()``.
        cuda_bytes: Bytes of the CUDA libraries installed with it (see :func:`cuda_libraries`).

    Returns:
        One line, with the command that installs the CPU build when a CUDA build runs without a GPU.
    """
    if cuda is None:
        return "CPU build"
    if gpu_visible:
        return f"CUDA {cuda} build"
    size = f" and {cuda_bytes / 2**30:.1f} GiB of CUDA libraries" if cuda_bytes >= 2**27 else ""
    base = version.split("+")[0]
    return (
        f"CUDA {cuda} build{size}, but no CUDA device is visible: on a CPU-only machine the CPU build does "
        f"the same work; pip install --force-reinstall 'torch=={base}' --index-url {CPU_INDEX} "
        "(then pip uninstall the nvidia-* and triton packages)"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``sam2-encoder doctor``; exit status 1 when the Hydra plugin is installed but not visible."""
    print_versions()
    import torch

    from .._hf import TESTED_TRANSFORMERS

    print(f"transformers  tested range {TESTED_TRANSFORMERS[0]} to {TESTED_TRANSFORMERS[1]}")
    gpu = torch.cuda.is_available()
    cuda_bytes = cuda_libraries()[1] if torch.version.cuda and not gpu else 0
    print(f"torch build   {torch_build_note(torch.__version__, torch.version.cuda, gpu, cuda_bytes)}")
    print(f"torch threads {torch.get_num_threads()}")
    _devices(torch)
    _checkpoints()
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


def _devices(torch: Any) -> None:
    """bf16 support, the device and the attention backend."""
    from ..image_encoder import bf16_support

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


def _checkpoints() -> None:
    """The ``.pt`` checkpoints in the cache and in ``./checkpoints``."""
    from ..downloads import cache_dir

    folders = [cache_dir(), Path("checkpoints")]
    found = [p for folder in folders if folder.is_dir() for p in sorted(folder.glob("*.pt"))]
    print(
        "checkpoints   "
        + (
            ", ".join(f"{p} ({p.stat().st_size / 2**20:.0f} MiB)" for p in found)
            or f"none in {', '.join(map(str, folders))} (sam2-encoder download VARIANT)"
        )
    )


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
