"""CLI time to first output and to the result, for every command as a user at a terminal runs it.

Each command runs ``--repeat`` times as a fresh process (``python -m sam2_encoder.cli``, what the
console script runs) on a pseudo-terminal, as in a shell: commands print what they are doing only
when stderr is a terminal. Measured per run: the wall time to the first byte printed (``first``)
and to the exit (``result``), and the exit status. The data comes from ``sam2-encoder demo-data``
(timed too), in a temporary folder; ``download`` runs against an empty local mirror (no network:
its result is the error), so its row is the time to that error.

Writes ``cli_startup.json`` and ``cli_startup.png`` (first output and result per command, with the
machine and its load average), to ``benchmarks/results/local/`` unless ``--record``.

    python benchmarks/cli_startup.py [--repeat 3] [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import add_output_args, loadavg, machine_info, output_path, pyplot, write_json

GOAL_S = 1.5
"""Time to first output a user should wait at most, on any machine."""


def _scenarios(data: Path, work: Path) -> list[tuple[str, list[str]]]:
    """``(row name, argv)`` of each command, on the demo data in ``data``, writing under ``work``."""
    with open(data / "prompts.json") as f:
        box = next(iter(json.load(f)["episodes"]["0"].values()))["box"]
    box_arg = ",".join(str(v) for v in box)
    mirror = work / "empty-mirror"
    mirror.mkdir(exist_ok=True)
    return [
        ("--help", ["--help"]),
        ("doctor", ["doctor"]),
        ("encode frame.npy (1024 px)", ["encode", str(data / "frame.npy"), "--repeat", "1"]),
        (
            "download (no network: the error)",
            ["download", "sam2.1_hiera_tiny", "--dir", str(work / "ckpt"), "--base-url", mirror.as_uri()],
        ),
        # --keys: the spelling older versions know too (--source); today's --key is the same option
        ("cache replay.zarr (224 px)", ["cache", str(data / "replay.zarr"), "--keys", "img", "--out", "{run}/c.zarr"]),
        ("cache --verify", ["cache", "--verify", "{run}/c.zarr"]),
        (
            "masks replay.zarr (256 px)",
            ["masks", str(data / "replay.zarr"), "--key", "img", "--prompts", str(data / "prompts.json")]
            + ["--image-size", "256", "--out", "{run}/m.zarr"],
        ),
        ("masks --verify", ["masks", "--verify", "{run}/m.zarr"]),
        (
            "track clip.npy (256 px)",
            ["track", str(data / "clip.npy"), "--box", box_arg, "--image-size", "256", "--out", "{run}/track"],
        ),
    ]


def on_a_terminal(argv: list[str], python: str, env: dict[str, str], timeout_s: float, cwd: Path) -> dict[str, Any]:
    """Run ``python -m sam2_encoder.cli *argv`` in ``cwd`` on a pseudo-terminal; times to first byte and to exit.

    ``cwd`` is not a checkout: ``python -m`` puts it first on ``sys.path``.

    Returns:
        ``{"first_s", "result_s", "status", "first_line"}`` (``first_s`` is ``None`` if it printed nothing).
    """
    master, slave = pty.openpty()
    start = time.perf_counter()
    proc = subprocess.Popen(
        [python, "-m", "sam2_encoder.cli", *argv],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env=env,
        cwd=cwd,
    )
    os.close(slave)
    first, data = None, b""
    try:
        while time.perf_counter() - start < timeout_s:
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                if chunk and first is None:
                    first = time.perf_counter() - start
                data += chunk
                if not chunk:
                    break
            elif proc.poll() is not None:
                break
        status = proc.wait(timeout=max(1.0, timeout_s - (time.perf_counter() - start)))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    result = time.perf_counter() - start
    text = data.decode(errors="replace").replace("\r", "\n")
    first_line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return {"first_s": first, "result_s": result, "status": status, "first_line": first_line[:160]}


def _row(runs: list[dict[str, Any]], load_before: Any) -> dict[str, Any]:
    firsts = [r["first_s"] for r in runs if r["first_s"] is not None]
    results = [r["result_s"] for r in runs]
    return {
        "first_output_median_s": round(statistics.median(firsts), 3) if firsts else None,
        "first_output_max_s": round(max(firsts), 3) if firsts else None,
        "result_median_s": round(statistics.median(results), 3),
        "result_max_s": round(max(results), 3),
        "exit_status": sorted({r["status"] for r in runs}),
        "first_line": runs[0]["first_line"],
        "first_output_under_goal": bool(firsts) and max(firsts) < GOAL_S,
        "load_average_before": load_before,
    }


def plot(report: dict[str, Any], path: Path) -> str | None:
    """Horizontal bars: time to first output and to the result of each command."""
    plt = pyplot()
    if plt is None:
        return None
    rows = report["results"]
    names = list(rows)
    first = [rows[n]["first_output_median_s"] or 0 for n in names]
    result = [rows[n]["result_median_s"] for n in names]
    fig, ax = plt.subplots(figsize=(11, 0.45 * len(names) + 1.6))
    y = range(len(names))
    ax.barh([i + 0.2 for i in y], result, height=0.4, label="result (exit)", color="#9bb7d4")
    ax.barh([i - 0.2 for i in y], first, height=0.4, label="first output", color="#d46a6a")
    ax.axvline(GOAL_S, color="k", lw=0.8, ls="--", label=f"{GOAL_S} s goal (first output)")
    ax.set_yticks(list(y), [f"sam2-encoder {n}" for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(f"seconds (median of {report['repeat']} fresh processes, log scale)")
    m = report["machine"]
    ax.set_title(
        f"CLI time to first output and to the result\n{m['cpu']}, {m['cpu_affinity']} cores, "
        f"load average at start {m['load_average_at_start']}",
        fontsize=9,
    )
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3, help="fresh processes per command (median reported)")
    p.add_argument("--python", default=sys.executable, help="the interpreter with sam2_encoder installed")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one command may run")
    p.add_argument(
        "--source",
        type=Path,
        default=None,
        help="time the commands of another checkout (its folder first on PYTHONPATH), e.g. an older commit's "
        "`git worktree`; the demo data is made by this one",
    )
    add_output_args(p, "cli_startup")
    args = p.parse_args()
    path = output_path(args, "cli_startup")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    timed_env = env if args.source is None else {**env, "PYTHONPATH": str(args.source.resolve())}
    report: dict[str, Any] = {
        "benchmark": "cli_startup",
        "goal_first_output_s": GOAL_S,
        "repeat": args.repeat,
        "python": args.python,
        "source": str(args.source) if args.source else "this checkout",
        "omp_num_threads": env["OMP_NUM_THREADS"],
        "machine": machine_info(torch.device("cpu")),
        "results": {},
    }
    with tempfile.TemporaryDirectory(prefix="cli_startup.") as tmp:
        work = Path(tmp)
        demo = [on_a_terminal(["demo-data", "--out", str(work / f"demo{i}")], args.python, env, args.timeout, work)
                for i in range(args.repeat)]  # fmt: skip
        report["results"]["demo-data"] = _row(demo, loadavg())
        data = work / "demo0"
        for name, argv in _scenarios(data, work):
            load, runs = loadavg(), []
            for i in range(args.repeat):
                run_dir = work / f"run{i}"
                run_dir.mkdir(exist_ok=True)
                argv_i = [a.replace("{run}", str(run_dir)) for a in argv]
                runs.append(on_a_terminal(argv_i, args.python, timed_env, args.timeout, work))
            report["results"][name] = row = _row(runs, load)
            print(
                f"{name:<34} first output {row['first_output_median_s']} s, result {row['result_median_s']} s "
                f"(exit {row['exit_status']})",
                file=sys.stderr,
            )
    report["all_first_outputs_under_goal"] = all(r["first_output_under_goal"] for r in report["results"].values())
    write_json(report, path)
    report["plot"] = plot(report, path.with_suffix(".png"))
    write_json(report, path)
    print(json.dumps(report["results"], indent=1))


if __name__ == "__main__":
    main()
