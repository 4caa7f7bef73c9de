"""Streaming tracker: per-frame latency and tracked-state bytes, ours vs transformers' unbounded session.

Both trackers run the same ``Sam2VideoModel`` weights on the same frames, interleaved frame by frame
(the order alternates so neither always runs on a warm cache). Ours is ``StreamingPredictor.track``;
the reference is transformers' streaming session driven as documented (a session without a video,
``model(inference_session=..., frame=pixel_values)`` per frame), never pruned. Latency counts the
whole step for both: preprocessing, vision encoder, tracking, and upsampling the mask to the frame.
Every frame's mask logits and object scores are compared for exact equality.

    python benchmarks/streaming.py --frames 1000 --image-size 128 --threads 1

Prints one JSON document, writes it to ``benchmarks/results/streaming.json`` and draws
``benchmarks/results/streaming.png`` (``--replot JSON`` redraws the plot from a saved report).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import add_output_args, machine_info, output_path, write_json


def build_model(variant: str, image_size: int, checkpoint: str | None, seed: int):
    """The video model shared by both trackers; random weights get an object-score bias so the object stays."""
    from sam2_encoder.streaming import StreamingPredictor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = StreamingPredictor(variant, checkpoint=checkpoint, image_size=image_size, seed=seed)
    if checkpoint is None:
        with torch.no_grad():
            pred.model.mask_decoder.pred_obj_score_head.proj_out.bias += 3.0
    return pred


def stats(values: list[float]) -> dict:
    a = np.asarray(values)
    return {
        "median": round(float(np.median(a)), 2),
        "mean": round(float(a.mean()), 2),
        "p90": round(float(np.percentile(a, 90)), 2),
    }


def run(args: argparse.Namespace) -> dict:
    from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

    from sam2_encoder.scene import synthetic_scene
    from sam2_encoder.streaming import session_nbytes

    torch.set_num_threads(args.threads)
    info = machine_info(torch.device("cpu"))
    pred = build_model(args.variant, args.image_size, args.checkpoint, args.seed)
    model, transforms = pred.model, pred.encoder.transforms
    ref = Sam2VideoInferenceSession(dtype=torch.float32)

    height, width = args.frame_height, args.frame_width
    scene = synthetic_scene(height, width + args.frames, seed=args.seed)  # the camera pans right 1 px/frame

    def frame_at(i: int) -> np.ndarray:
        return np.ascontiguousarray(scene[:, i : i + width])

    click = [width * 0.5, height * 0.5]
    scale = args.image_size

    def ours_step(i: int, frame: np.ndarray):
        if i == 0:
            r = pred.add_prompt(frame, obj_id=1, points=[click], labels=[1])
        else:
            r = pred.track(frame)
        return r.mask_logits, r.scores, r.masks

    def ref_step(i: int, frame: np.ndarray):
        pixel_values = transforms(frame).contiguous()
        if i == 0:
            coords = torch.tensor([[[[click[0] * scale / width, click[1] * scale / height]]]], dtype=torch.float32)
            obj_idx = ref.obj_id_to_idx(1)
            labels = torch.ones(1, 1, 1, dtype=torch.int64)
            ref.add_point_inputs(obj_idx, 0, {"point_coords": coords, "point_labels": labels})
            ref.obj_with_new_inputs = [1]
        out = model(inference_session=ref, frame=pixel_values)
        with torch.inference_mode():
            masks = F.interpolate(out.pred_masks, size=(height, width), mode="bilinear", align_corners=False) > 0
        return out.pred_masks[:, 0], out.object_score_logits.reshape(-1), masks[:, 0]

    ms = {"ours": [], "transformers": []}
    cpu_ms = {"ours": [], "transformers": []}  # process CPU time: what a step costs without waiting for a core
    state = {"ours": [], "transformers": []}
    mismatches = 0
    present = 0
    start = time.perf_counter()
    for i in range(args.frames):
        frame = frame_at(i)
        outputs = {}
        order = [("ours", ours_step), ("transformers", ref_step)]
        for name, step in order if i % 2 == 0 else order[::-1]:
            t0, c0 = time.perf_counter(), time.process_time()
            outputs[name] = step(i, frame)
            ms[name].append(1000 * (time.perf_counter() - t0))
            cpu_ms[name].append(1000 * (time.process_time() - c0))
        state["ours"].append(pred.state_nbytes())
        state["transformers"].append(session_nbytes(ref))
        (a_logits, a_scores, a_masks), (b_logits, b_scores, b_masks) = outputs["ours"], outputs["transformers"]
        same = torch.equal(a_logits, b_logits) and torch.equal(a_scores, b_scores) and torch.equal(a_masks, b_masks)
        mismatches += not same
        present += bool(a_masks.any())
        if args.progress and (i + 1) % 100 == 0:
            print(
                f"frame {i + 1}: ours {np.median(ms['ours'][-100:]):.1f} ms, {state['ours'][-1] / 2**20:.2f} MiB; "
                f"transformers {np.median(ms['transformers'][-100:]):.1f} ms, "
                f"{state['transformers'][-1] / 2**20:.1f} MiB",
                file=sys.stderr,
            )
    wall = time.perf_counter() - start

    n = args.frames
    mib = {k: [v / 2**20 for v in vals] for k, vals in state.items()}
    half = n // 2
    summary = {}
    for name in ("ours", "transformers"):
        slope = np.polyfit(np.arange(half, n), np.asarray(mib[name][half:]), 1)[0]
        summary[name] = {
            "ms_per_frame": stats(ms[name][1:]),
            "cpu_ms_per_frame": stats(cpu_ms[name][1:]),
            "ms_per_frame_first_100": stats(ms[name][1:101]),
            "ms_per_frame_last_100": stats(ms[name][-100:]),
            "state_mib_at_frame": {str(f): round(mib[name][f - 1], 3) for f in (20, 100, n // 2, n) if f <= n},
            "state_growth_kib_per_frame": round(float(slope) * 1024, 2) + 0.0,
        }
    return {
        "benchmark": "streaming",
        "command": "python benchmarks/streaming.py " + " ".join(sys.argv[1:]),
        "variant": pred.variant.name,
        "weights": args.checkpoint or "seeded random (object-score head bias +3 so the object stays present)",
        "image_size": args.image_size,
        "frame_size": [height, width],
        "frames": n,
        "objects": 1,
        "device": "cpu",
        "machine": info,
        "wall_seconds": round(wall, 1),
        "outputs_identical_frames": n - mismatches,
        "object_present_frames": present,
        "summary": summary,
        "per_frame": {
            "ms": {k: [round(v, 2) for v in vals] for k, vals in ms.items()},
            "state_bytes": state,
        },
    }


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = np.arange(1, report["frames"] + 1)
    colors = {"ours": "tab:blue", "transformers": "tab:red"}
    labels = {"ours": "StreamingPredictor (pruned)", "transformers": "transformers session (unbounded)"}
    fig, (ax_mem, ax_ms) = plt.subplots(1, 2, figsize=(12, 4.2))
    for name in ("ours", "transformers"):
        mib = np.asarray(report["per_frame"]["state_bytes"][name]) / 2**20
        ax_mem.plot(frames, mib, color=colors[name], label=labels[name])
        ms = np.asarray(report["per_frame"]["ms"][name])
        window = 25
        smooth = np.convolve(ms, np.ones(window) / window, mode="valid")
        ax_ms.plot(frames[1:], ms[1:], color=colors[name], alpha=0.15, linewidth=0.6)
        ax_ms.plot(frames[window - 1 :], smooth, color=colors[name], label=f"{labels[name]} ({window}-frame mean)")
    for name, va in (("ours", "bottom"), ("transformers", "top")):
        final = report["per_frame"]["state_bytes"][name][-1] / 2**20
        ax_mem.annotate(
            f"{final:.2f} MiB at frame {report['frames']}",
            (frames[-1], final),
            xytext=(-6, 6 if va == "bottom" else -6),
            textcoords="offset points",
            ha="right",
            va=va,
            color=colors[name],
            fontsize=8,
        )
    ax_mem.set(xlabel="frame", ylabel="tracking state (MiB)", title="Tracked state")
    ax_ms.set(xlabel="frame", ylabel="ms per frame", title="Per-frame latency (preprocess + encode + track)")
    top = np.percentile(np.concatenate([report["per_frame"]["ms"][k][1:] for k in colors]), 99.5)
    ax_ms.set_ylim(0, top * 1.1)
    for ax in (ax_mem, ax_ms):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    m = report["machine"]
    fig.suptitle(
        f"{report['variant']} at {report['image_size']}px, {report['frames']} frames of "
        f"{report['frame_size'][1]}x{report['frame_size'][0]}, CPU ({m['torch_threads']} thread(s)), "
        f"torch {m['torch']}, transformers {m['transformers']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="sam2.1_hiera_tiny")
    parser.add_argument("--checkpoint", default=None, help="weights (default: seeded random)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--frame-height", type=int, default=480)
    parser.add_argument("--frame-width", type=int, default=640)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    add_output_args(parser, "streaming")
    parser.add_argument("--plot", default=None, help="plot path (default: beside the JSON; '' for none)")
    parser.add_argument("--progress", action="store_true", help="print a line every 100 frames to stderr")
    parser.add_argument("--replot", metavar="JSON", help="only redraw the plot from a saved report")
    args = parser.parse_args()

    if args.replot:
        replot = Path(args.replot)
        plot(json.loads(replot.read_text()), Path(args.plot or replot.with_suffix(".png")))
        return
    out = output_path(args, "streaming")  # before the run: a bad path fails now, not after it
    report = run(args)
    write_json(report, out)
    if args.plot != "":
        plot(report, Path(args.plot or out.with_suffix(".png")))
    printed = {k: v for k, v in report.items() if k != "per_frame"}
    print(json.dumps(printed, indent=1))


if __name__ == "__main__":
    main()
