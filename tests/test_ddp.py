"""SAM2ObsEncoder under DistributedDataParallel: 2 CPU processes, gloo, frozen trunk + trainable heads."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SHAPE_META = {
    "obs": {"cam": {"shape": [3, 32, 32], "type": "rgb"}, "pos": {"shape": [3]}},
    "action": {"shape": [2]},
}


def _obs(rank: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    return {"cam": torch.rand(4, 3, 32, 32, generator=g) * 2 - 1, "pos": torch.rand(4, 3, generator=g)}


def _build():
    from sam2_encoder import SAM2ObsEncoder

    torch.manual_seed(0)
    return SAM2ObsEncoder(SHAPE_META, image_size=32, pool="attention", feature_dim=16)


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = torch.nn.parallel.DistributedDataParallel(_build())
        model.train()
        model(_obs(rank)).square().mean().backward()
        grads = {n: p.grad for n, p in model.module.named_parameters() if p.requires_grad}
        torch.save(grads, Path(out_dir) / f"grads{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_gradients_agree_across_ranks(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    g0 = torch.load(tmp_path / "grads0.pt")
    g1 = torch.load(tmp_path / "grads1.pt")
    assert g0 and set(g0) == set(g1) and all(n.startswith("heads.") for n in g0)
    # DDP averages gradients: both ranks hold the gradient of the mean of the two ranks' losses
    reference = _build().train()
    loss = (reference(_obs(0)).square().mean() + reference(_obs(1)).square().mean()) / 2
    loss.backward()
    for name, p in reference.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(g0[name], g1[name], rtol=0, atol=0)
            torch.testing.assert_close(g0[name], p.grad, rtol=1e-4, atol=1e-6)
