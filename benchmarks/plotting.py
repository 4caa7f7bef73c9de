"""Plots of the benchmark reports (matplotlib on the Agg backend, imported lazily)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import pyplot

__all__ = ["plot_control_loop", "plot_encoder"]

METHOD_STYLE: dict[str, tuple[str, str]] = {
    "ours_e2e": ("tab:blue", "ours, uint8 frames -> features"),
    "ours_encode": ("tab:cyan", "ours encode(), normalised input"),
    "hf_stock": ("tab:red", "transformers Sam2Processor + get_image_features"),
    "hf_bare": ("tab:orange", "transformers get_image_features, normalised input"),
    "hf_per_image": ("tab:purple", "transformers, one frame at a time"),
    "meta": ("tab:green", "Meta sam2 1.1.0, normalised input"),
}


def plot_encoder(report: dict[str, Any], out_dir: Path, plot_size: int, latency_batches: Sequence[int]) -> list[str]:
    """``encoder_throughput.png`` and ``encoder_latency.png``; returns the paths written."""
    plt = pyplot()
    if plt is None:
        return []
    from matplotlib import ticker

    variant = report["settings"]["variants"][0]
    rows = [r for r in report["results"] if r["variant"] == variant]
    names = [m for m in METHOD_STYLE if any(m in r["methods"] for r in rows)]
    colors = {k: v[0] for k, v in METHOD_STYLE.items()}
    labels = {k: v[1] for k, v in METHOD_STYLE.items()}
    m = report["machine"]
    where = (
        f"{m.get('gpu', m['cpu'])}, {m['torch_threads']} thread(s)"
        if report["device"] == "cpu"
        else f"{m.get('gpu')} (CUDA)"
    )
    subtitle = f"{variant}, seeded weights, {where}, torch {m['torch']}, transformers {m['transformers']}"
    written = []

    fig, ax = plt.subplots(figsize=(8, 5))
    sel = sorted((r for r in rows if r["size"] == plot_size), key=lambda r: r["batch"])
    for name in names:
        pts = [(r["batch"], r["methods"][name]["images_per_s"]) for r in sel if name in r["methods"]]
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, marker="o", color=colors[name], label=labels[name])
    if sel:
        ax.set_xscale("log", base=2)
        ax.set_xticks([r["batch"] for r in sel], [str(r["batch"]) for r in sel])
        ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.set(xlabel="batch size", ylabel="images / s (median)", title=f"Encoder throughput at {plot_size}x{plot_size}")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(subtitle, fontsize=8, y=0.995)
    fig.tight_layout()
    path = out_dir / "encoder_throughput.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(str(path))

    fig, axes = plt.subplots(
        2,
        len(latency_batches),
        figsize=(6 * len(latency_batches), 8),
        squeeze=False,
        sharex="col",
        gridspec_kw={"height_ratios": [3, 2]},
    )
    sizes = sorted({r["size"] for r in rows})
    for col, b in enumerate(latency_batches):
        ax, rel = axes[0][col], axes[1][col]
        sel = sorted((r for r in rows if r["batch"] == b), key=lambda r: r["size"])
        for name in names:
            pts = [(r["size"], r["methods"][name]["median_s"]) for r in sel if name in r["methods"]]
            if pts:
                x, y = zip(*pts)
                ax.plot(x, [1000 * t for t in y], marker="o", color=colors[name], label=labels[name])
            ref = "hf_stock" if name in ("ours_e2e", "hf_stock", "hf_per_image") else "hf_bare"
            pts = [
                (r["size"], r["methods"][ref]["median_s"] / r["methods"][name]["median_s"])
                for r in sel
                if name in r["methods"] and ref in r["methods"]
            ]
            if pts and name != ref:
                x, y = zip(*pts)
                rel.plot(x, y, marker="o", color=colors[name], label=f"{labels[name]} vs {ref}")
        skipped = sorted(s["size"] for s in report["skipped"] if s["batch"] == b and s["variant"] == variant)
        title = f"Latency of one batch of {b}"
        if skipped:
            title += f"\n(not run: size {', '.join(map(str, skipped))} on {report['device']})"
        ax.set(ylabel="ms per call (median)", title=title)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        rel.axhline(1.0, color="gray", linewidth=0.8)
        rel.set(xlabel="image size (square side, px)", ylabel="speed vs transformers (x)")
        rel.set_title("speed-up: ours_e2e / hf_per_image vs hf_stock; ours_encode / Meta vs hf_bare", fontsize=8)
        for a in (ax, rel):
            a.set_xscale("log", base=2)
            a.set_xticks(sizes, [str(s) for s in sizes])
            a.xaxis.set_minor_locator(ticker.NullLocator())
            a.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        rel.legend(fontsize=6)
    fig.suptitle(subtitle, fontsize=8)
    fig.tight_layout()
    path = out_dir / "encoder_latency.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(str(path))
    return written


def plot_control_loop(report: dict[str, Any], path: Path) -> str | None:
    """Per-step latency of every control-loop row (p50 in the legend) against the 100 ms budget.

    A run with ``--heads`` gets a second panel: p50 and p99 per row as bars, heads side by side.
    """
    plt = pyplot()
    if plt is None:
        return None
    heads = bool(report["config"].get("heads"))
    if heads:
        fig, (ax, bars) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [3, 2]})
    else:
        fig, ax = plt.subplots(figsize=(8, 4.2))
    configs = sorted({(r["image_size"], r["threads"], r["precision"]) for r in report["rows"]})
    cmap = plt.get_cmap("tab10" if heads else "tab20")

    def name(row: dict[str, Any]) -> str:
        what = "frame reuse" if row["frame_reuse"] else "every frame"
        if heads:
            what = f"{row['head']}" + ("" if row["frame_reuse"] else ", every frame")
        return f"{row['image_size']} px, {row['threads']} thr, {row['precision']}, {what}"

    for i, row in enumerate(report["rows"]):
        if heads:  # one colour per row: the heads of one configuration side by side
            color = cmap(i % 10)
        else:
            color = cmap(configs.index((row["image_size"], row["threads"], row["precision"])) % 20)
        label = f"{name(row)}: p50 {row['latency_ms']['p50']:.0f}, p99 {row['latency_ms']['p99']:.0f} ms"
        xs = row["per_step_ms"]
        ax.plot(range(len(xs)), xs, label=label, ls="-" if row["frame_reuse"] else ":", color=color)
    ax.axhline(100, color="grey", ls="--", lw=1, label="10 Hz budget")
    c, m = report["config"], report["machine"]
    ax.set(
        xlabel="control step",
        ylabel="latency per step (ms)",
        title=f"{c['variant']}, {c['cameras']} cameras, To={c['n_obs_steps']}, "
        f"{c['ddim_steps']} DDIM steps; {m['cpu']}",
    )
    ax.title.set_fontsize(8)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=6)
    if heads:
        rows = report["rows"]
        ys = range(len(rows))
        p50 = [r["latency_ms"]["p50"] for r in rows]
        p99 = [r["latency_ms"]["p99"] for r in rows]
        bars.barh(ys, p99, color="lightgrey", label="p99")
        bars.barh(ys, p50, color=[cmap(i % 10) for i in ys], label="p50")
        cpu = [r["cpu_ms"]["p50"] for r in rows]
        bars.scatter(cpu, list(ys), marker="|", s=400, color="black", label="CPU time p50", zorder=3)
        for y, r in zip(ys, rows):
            text = f"{r['latency_ms']['p50']:.0f}, CPU {r['cpu_ms']['p50']:.0f}"
            if r["head"] != "pool" and "vs_pool_p50_ms" in r:
                text += f" ({r['vs_pool_p50_ms']:+.0f} / CPU {r['vs_pool_cpu_p50_ms']:+.0f})"
            bars.text(max(r["latency_ms"]["p99"], r["latency_ms"]["p50"]), y, " " + text, va="center", fontsize=7)
        bars.set_xlim(0, 1.6 * max(p99))
        bars.set_yticks(list(ys), [name(r) for r in rows], fontsize=7)
        bars.invert_yaxis()
        load = m.get("load_average_at_start")
        bars.set(xlabel="ms per control step (in brackets: vs pool, wall / CPU time)")
        bars.set_title(f"heads, interleaved on the same frames (load at start {load})", fontsize=8)
        bars.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def plot_encoder_goal(report: dict[str, Any], path: Path) -> str | None:
    """``encoder_goal.png``: ms per image of every method at each recorded size x batch (grouped bars)."""
    plt = pyplot()
    if plt is None:
        return None
    rows = report["results"]
    names = [m for m in METHOD_STYLE if any(m in r["methods"] for r in rows)]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs = [j + i * width for j, r in enumerate(rows) if name in r["methods"]]
        ys = [r["methods"][name]["ms_per_image"] for r in rows if name in r["methods"]]
        ax.bar(xs, ys, width, color=METHOD_STYLE[name][0], label=METHOD_STYLE[name][1])
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))], [f"{r['size']} x {r['batch']}" for r in rows])
    ax.set(ylabel="ms per image (median)", title="Encoder at the goal configuration (lower is better)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    m = report["machine"]
    fig.suptitle(f"{m['cpu']}, {m['torch_threads']} thread(s), torch {m['torch']}", fontsize=8, y=0.995)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
