"""Shared helpers of the benchmarks: machine info, interleaved timing, matmul throughput, JSON and plots.

Only the standard library, numpy and torch are imported at module level (matplotlib and
transformers lazily), so a helper process running in another interpreter (Meta's reference venv)
can import it too. Import it from a benchmark script run as ``python benchmarks/<name>.py``
(the script's folder is then on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
LOCAL_RESULTS = RESULTS / "local"  # git-ignored: where runs go unless --record

__all__ = [
    "LOCAL_RESULTS",
    "RESULTS",
    "add_output_args",
    "emulated_bf16",
    "output_path",
    "External",
    "Samples",
    "interleave",
    "loadavg",
    "machine_info",
    "matmul_throughput",
    "pyplot",
    "summarize",
    "sync_fn",
    "write_json",
]


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (or ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> list[float] | None:
    """The 1/5/15-minute load averages, or ``None`` where the OS has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the numbers depend on: CPU, cores, threads, library versions, accelerator."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "numpy": np.__version__,
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "device": str(device),
        "load_average_at_start": loadavg(),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_capability"] = f"{props.major}.{props.minor}"
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def sync_fn(device: torch.device) -> Callable[[], None] | None:
    """``torch.cuda.synchronize`` for a CUDA device (timings must wait for the kernels), else ``None``."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return None


class External(NamedTuple):
    """Returned by a timed callable that measured itself (e.g. in another process)."""

    wall: float
    cpu: float | None = None


@dataclass
class Samples:
    """Timings of one method: wall seconds and process CPU seconds per call."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    first_output: Any = None
    first_wall: float | None = None


def interleave(
    methods: Mapping[str, Callable[[], Any]],
    rounds: int,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
    rotate: bool = True,
    keep_first_output: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Samples]:
    """Time several methods side by side: round r calls every method once, so load hits all alike.

    Args:
        methods: Name -> zero-argument callable. A callable may return :class:`External` to
            report a time it measured itself (another process); its output is otherwise dropped
            right after the clock stops.
        rounds: Timed rounds (the median over them is what one reports).
        warmup: Untimed rounds first (their wall time is kept in ``first_wall``).
        sync: Called before starting and before stopping the clock (CUDA synchronisation).
        rotate: Start round r at method ``r % len(methods)`` (A B C, B C A, C A B, ...), so no
            method always runs right after the same other one.
        keep_first_output: Keep the output of each method's first call (for correctness checks).
        progress: Called with a short line after each round.

    Returns:
        Name -> :class:`Samples`.
    """
    names = list(methods)
    out = {name: Samples() for name in names}
    for r in range(warmup + rounds):
        order = names[r % len(names) :] + names[: r % len(names)] if rotate else names
        for name in order:
            if sync:
                sync()
            c0, t0 = time.process_time(), time.perf_counter()
            result = methods[name]()
            if sync:
                sync()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if isinstance(result, External):
                wall, cpu = result.wall, (result.cpu if result.cpu is not None else float("nan"))
            if r == 0:
                out[name].first_wall = wall
                if keep_first_output and not isinstance(result, External):
                    out[name].first_output = result
            if r >= warmup:
                out[name].wall.append(wall)
                out[name].cpu.append(cpu)
            del result
        if progress:
            progress(f"round {r + 1}/{warmup + rounds}" + (" (warm-up)" if r < warmup else ""))
    return out


def summarize(samples: Samples, items: int = 1) -> dict[str, Any]:
    """Median/min/max seconds per call, per-item rates, and the CPU share the process got.

    ``cpu_per_wall`` is process CPU time over wall time: about the thread count on an idle
    machine; lower means the process waited for a core (a loaded, shared machine).
    """
    wall = np.asarray(samples.wall, dtype=float)
    med = float(np.median(wall))
    cpu = np.asarray(samples.cpu, dtype=float)
    share = cpu / wall
    share = share[np.isfinite(share)]
    return {
        "median_s": round(med, 5),
        "min_s": round(float(wall.min()), 5),
        "max_s": round(float(wall.max()), 5),
        "rounds": len(wall),
        "first_call_s": None if samples.first_wall is None else round(samples.first_wall, 5),
        "ms_per_image": round(1000 * med / items, 3),
        "images_per_s": round(items / med, 3),
        "cpu_per_wall": round(float(np.median(share)), 3) if share.size else None,
        # CPU time per image: what the call costs on its own when a shared machine makes it wait
        "cpu_ms_per_image": round(1000 * float(np.median(cpu)) / items, 3) if cpu.size else None,
        "times_s": [round(float(t), 5) for t in wall],
    }


def matmul_throughput(
    device: torch.device, dtype: torch.dtype = torch.float32, n: int | None = None, reps: int = 5
) -> dict[str, Any]:
    """FLOP/s of a large square matmul on this device, dtype and thread count (the machine's practical peak).

    Args:
        device: Where to run.
        dtype: Matrix dtype.
        n: Matrix side (default 2048 on CPU, 8192 on CUDA).
        reps: Timed repetitions (after one warm-up); the best and the median are reported.

    Returns:
        ``{"dtype", "n", "gflops_best", "gflops_median", "threads"}``.
    """
    n = n or (8192 if device.type == "cuda" else 2048)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, dtype)
    b = torch.randn(n, n, generator=gen).to(device, dtype)
    sync = sync_fn(device)
    times = []
    for i in range(reps + 1):
        if sync:
            sync()
        t0 = time.perf_counter()
        torch.mm(a, b)
        if sync:
            sync()
        if i:
            times.append(time.perf_counter() - t0)
    flops = 2 * n**3
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "n": n,
        "gflops_best": round(flops / min(times) / 1e9, 2),
        "gflops_median": round(flops / float(np.median(times)) / 1e9, 2),
        "threads": torch.get_num_threads(),
    }


@contextlib.contextmanager
def emulated_bf16(enabled: bool = True) -> Iterator[None]:
    """Let ``precision="bf16"`` run where the hardware only emulates bf16 (for measuring, never for use).

    torch emulates bf16 on CPUs without AVX512-BF16 / AMX: the numerics are bf16's (inputs rounded to
    bf16, fp32 accumulation), the speed says nothing about native bf16.
    """
    if not enabled:
        yield
        return
    from sam2_encoder import image_encoder

    original = image_encoder.bf16_support
    image_encoder.bf16_support = lambda device: (True, "emulated for a measurement")
    try:
        yield
    finally:
        image_encoder.bf16_support = original


def add_output_args(parser: Any, name: str) -> None:
    """``--record`` and ``--out`` for a benchmark writing ``<name>.json`` (and its plots beside it).

    Without ``--record`` results go to ``benchmarks/results/local/`` (git-ignored), so a trial run
    never overwrites the committed results the README quotes.
    """
    parser.add_argument(
        "--record",
        action="store_true",
        help="write into benchmarks/results/ (the committed results; run on a quiet machine) instead of "
        "benchmarks/results/local/ (git-ignored)",
    )
    parser.add_argument("--out", type=Path, default=None, help=f"JSON path (default: <results folder>/{name}.json)")


def output_path(args: Any, name: str) -> Path:
    """Where a run writes ``<name>.json``: ``--out``, else the recorded or the local results folder.

    With ``--record`` a busy machine (1-minute load average >= 0.5 over this run's threads) is
    named on stderr: its timings are noise, and the JSON carries the load averages.
    """
    if args.out is not None:
        return Path(args.out)
    if args.record:
        load = loadavg()
        threads = getattr(args, "threads", 1)
        threads = max(threads) if isinstance(threads, list | tuple) else threads
        if load is not None and load[0] >= 0.5 + threads - 1:
            print(
                f"warning: --record on a busy machine (load average {load}); the timings will be noisy",
                file=sys.stderr,
            )
    return (RESULTS if args.record else LOCAL_RESULTS) / f"{name}.json"


def write_json(report: Mapping[str, Any], path: Path) -> None:
    """Write ``report`` as indented JSON through a temporary name, creating the folder.

    A report with a ``machine`` section gets the load average at the end of the run added there.
    """
    path = Path(path)
    if isinstance(report.get("machine"), dict):
        report["machine"]["load_average_at_end"] = loadavg()  # type: ignore[index]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(path)


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed), or ``None`` if not installed."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)", file=sys.stderr)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def flops_per_image(encoder: Any) -> int:
    """Forward FLOPs of one image at a ``SAM2ImageEncoder``'s size, counted with ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode

    h, w = encoder.image_size
    x = torch.zeros(1, 3, h, w, device=encoder.no_memory_embedding.device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        encoder.encode(x)
    return int(counter.get_total_flops())
