"""Policy memory on the synthetic memory task: does the loss separate memory="sam2" from memory="none"?

The task (``write_memory_buffer``): a red or blue cue in an episode's first 2 frames only decides the
target action of every step; later frames do not show it. Both encoders are the same frozen SAM 2 tiny
(seeded random weights: no download; the memory
modules' init plus seeded noise, ``--memory-weights perturbed``, as a stand-in for trained ones; or
``--checkpoint`` for real SAM 2 weights) with a trained ``avg`` head and a small MLP predicting the action
from the condition (``n_obs_steps=1``). Training reads the banks from ``MemoryDataset``; the evaluation
runs each episode as a control loop (one inference call per frame, the encoder's own banks) and scores
the frames after the cue. Without memory the best possible loss on those frames is 1.0 (the mean of the
+-1 targets); with memory it can reach 0.

    OMP_NUM_THREADS=1 python benchmarks/memory.py --record     # ~2 min on one core

Writes ``memory.json`` (+ ``memory.png``: training loss per step, both encoders).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from common import add_output_args, machine_info, output_path, pyplot, write_json
from torch import nn

from sam2_encoder import MultiCameraEncoder, __version__
from sam2_encoder.diffusion_policy.memory_dataset import MemoryDataset
from sam2_encoder.diffusion_policy.synthetic import ReplayImageDataset, write_memory_buffer

SIZE, STEPS_PER_EPISODE, CUE = 48, 10, 2


def build(memory: str, args: argparse.Namespace) -> tuple[MultiCameraEncoder, nn.Module]:
    torch.manual_seed(0)
    enc = MultiCameraEncoder(
        {"image": (3, SIZE, SIZE)},
        image_size=64,
        input_range=(-1.0, 1.0),
        pool="avg",
        feature_dim=32,
        n_obs_steps=1,
        memory=memory,
        memory_frames=args.memory_frames,
        memory_stride=args.memory_stride,
        checkpoint=args.checkpoint,
    )
    if enc.memory is not None and args.memory_weights == "perturbed":
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():  # seeded noise of a trained model's scale (transformers zero-initialises several)
            for _, p in sorted(enc.memory.named_parameters()):
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    head = nn.Sequential(nn.Linear(32, 64), nn.Mish(), nn.Linear(64, 2))
    return enc, head


def train(memory: str, data: MemoryDataset, args: argparse.Namespace) -> dict:
    enc, head = build(memory, args)
    params = [p for p in enc.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr)
    g = torch.Generator().manual_seed(1)
    losses, start = [], time.perf_counter()
    enc.train()
    for _ in range(args.steps):
        idx = torch.randint(len(data), (args.batch,), generator=g).tolist()
        items = [data[i] for i in idx]
        obs = {k: torch.stack([it["obs"][k][0] for it in items]) * 2 - 1 for k in ("image", "image_memory")}
        if memory == "none":
            obs.pop("image_memory")
        target = torch.stack([it["action"][0] for it in items]) * 2  # DP's limits normaliser: +-0.5 -> +-1
        loss = nn.functional.mse_loss(head(enc(obs)), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(round(loss.item(), 5))
    train_s = time.perf_counter() - start
    return {"train_loss": losses, "train_s": round(train_s, 1), "eval": evaluate(enc, head, data)}


@torch.no_grad()
def evaluate(enc: MultiCameraEncoder, head: nn.Module, data: MemoryDataset) -> dict:
    """Each episode as a control loop (one call per frame, the encoder's banks); MSE after the cue."""
    enc.eval()
    frames = torch.from_numpy(np.moveaxis(data.replay_buffer["img"], -1, 1).astype(np.float32) / 255) * 2 - 1
    actions = torch.from_numpy(data.replay_buffer["action"]) * 2
    errors = []
    for e in range(len(frames) // STEPS_PER_EPISODE):
        enc.reset_memory()
        for t in range(STEPS_PER_EPISODE):
            i = e * STEPS_PER_EPISODE + t
            pred = head(enc({"image": frames[i : i + 1]}))
            if t >= CUE:
                errors.append(float(((pred[0] - actions[i]) ** 2).mean()))
    return {"mse_after_cue": round(float(np.mean(errors)), 5), "frames": len(errors)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150, help="training steps per encoder")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--memory-frames", type=int, default=2)
    parser.add_argument("--memory-stride", type=int, default=3)
    parser.add_argument("--checkpoint", default=None, help="full SAM 2 tiny weights (default: seeded random)")
    parser.add_argument(
        "--memory-weights",
        choices=("perturbed", "init"),
        default="perturbed",
        help="without --checkpoint: transformers' seeded init of the memory modules plus seeded noise of scale "
        "0.2 (perturbed; the init alone passes ~0.1%% of a cue's change to a late frame), or the init alone",
    )
    add_output_args(parser, "memory")
    args = parser.parse_args()
    path = output_path(args, "memory")
    with tempfile.TemporaryDirectory() as tmp:
        zarr = write_memory_buffer(f"{tmp}/memory.zarr", args.episodes, STEPS_PER_EPISODE, SIZE, CUE)
        data = MemoryDataset(
            ReplayImageDataset(zarr, horizon=1, pad_before=0, pad_after=0),
            memory_frames=args.memory_frames,
            memory_stride=args.memory_stride,
        )
        runs = {memory: train(memory, data, args) for memory in ("none", "sam2")}
    report = {
        "benchmark": "memory",
        "sam2_encoder": __version__,
        "command": "OMP_NUM_THREADS=1 python benchmarks/memory.py" + (" --record" if args.record else ""),
        "settings": {k: v for k, v in vars(args).items() if k not in ("record", "out")},
        "machine": machine_info(torch.device("cpu")),
        "runs": runs,
    }
    write_json(report, path)
    for memory, run in runs.items():
        tail = np.mean(run["train_loss"][-20:])
        print(
            f"memory={memory}: train loss (last 20 steps) {tail:.4f}, control-loop MSE after the cue "
            f"{run['eval']['mse_after_cue']:.4f} ({run['train_s']} s)"
        )
    plt = pyplot()
    if plt is not None:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for memory, run in runs.items():
            ax.plot(run["train_loss"], label=f"memory={memory}")
        ax.set(
            xlabel="training step", ylabel="MSE (targets +-1)", title="Synthetic memory task: cue in frames 0-1 only"
        )
        ax.legend()
        fig.tight_layout()
        fig.savefig(path.with_suffix(".png"), dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
