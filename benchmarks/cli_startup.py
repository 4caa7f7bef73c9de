"""CLI start-up time: ``sam2-encoder --help`` and ``sam2-encoder <command> --help`` for every command.

Each is run ``--repeat`` times as a fresh process (``python -m sam2_encoder.cli``, what the console
script runs); the median and the worst wall time are reported against the 1.5 s goal. Prints one
JSON document (nothing is written unless ``--out`` is given).

    python benchmarks/cli_startup.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

GOAL_S = 1.5


def commands() -> list[str]:
    """The subcommands, read from ``sam2-encoder --help`` (no torch import needed)."""
    from sam2_encoder.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    return list(sub.choices)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    rows = {}
    for argv in [["--help"], *([c, "--help"] for c in commands())]:
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            done = subprocess.run([args.python, "-m", "sam2_encoder.cli", *argv], capture_output=True, env=env)
            times.append(time.perf_counter() - start)
            if done.returncode != 0:
                raise SystemExit(f"sam2-encoder {' '.join(argv)} failed: {done.stderr.decode()[-500:]}")
        rows["sam2-encoder " + " ".join(argv)] = {
            "median_s": round(statistics.median(times), 3),
            "max_s": round(max(times), 3),
            "under_goal": max(times) < GOAL_S,
        }
    report = {
        "benchmark": "cli_startup",
        "goal_s": GOAL_S,
        "repeat": args.repeat,
        "python": args.python,
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "results": rows,
        "all_under_goal": all(r["under_goal"] for r in rows.values()),
    }
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
