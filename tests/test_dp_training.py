"""End to end: train a conditional denoiser with SAM2ObsEncoder on a DP-layout zarr replay buffer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler

from sam2_encoder import SAM2ObsEncoder
from sam2_encoder.diffusion_policy.synthetic import (
    ReplayImageDataset,
    TinyDenoiser,
    dp_normalise,
    global_cond,
    write_replay_buffer,
)

HORIZON, N_OBS, N_ACT = 16, 2, 8
SHAPE_META = {
    "obs": {"image": {"shape": [3, 48, 48], "type": "rgb"}, "agent_pos": {"shape": [2], "type": "low_dim"}},
    "action": {"shape": [2]},
}


def test_training_loss_drops_and_sampling_runs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    dataset = ReplayImageDataset(write_replay_buffer(tmp_path / "replay.zarr"), HORIZON, N_OBS - 1, N_ACT - 1)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    encoder = SAM2ObsEncoder(SHAPE_META, image_size=32, crop_shape=[44, 44], pool="spatial_softmax")
    denoiser = TinyDenoiser(HORIZON, 2, cond_dim=encoder.output_shape()[0] * N_OBS)
    model = torch.nn.ModuleDict({"obs_encoder": encoder, "model": denoiser})
    scheduler = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)  # DP: one group, frozen params included
    losses = []
    model.train()
    while len(losses) < 100:
        for batch in loader:
            obs, action = dp_normalise(batch, N_OBS)
            cond = global_cond(encoder, obs)
            noise = torch.randn_like(action)
            t = torch.randint(0, 100, (action.shape[0],))
            pred = denoiser(scheduler.add_noise(action, noise, t), t, cond)
            loss = torch.nn.functional.mse_loss(pred, noise)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.6 * first, (first, last)  # about 1.0 -> 0.5 in practice
    assert not encoder.encoder.training, "the frozen trunk stayed in eval mode through model.train()"

    # predict_action: eval-mode sampling as DP does after each epoch
    model.eval()
    obs, _ = dp_normalise(next(iter(loader)), N_OBS)
    with torch.no_grad():
        cond = global_cond(encoder, obs)
        trajectory = torch.randn(len(cond), HORIZON, 2)
        scheduler.set_timesteps(20)
        for t in scheduler.timesteps:
            out = denoiser(trajectory, t.expand(len(cond)), cond)
            trajectory = scheduler.step(out, t, trajectory).prev_sample
    actions = trajectory[:, N_OBS - 1 : N_OBS - 1 + N_ACT]
    assert actions.shape == (len(cond), N_ACT, 2) and torch.isfinite(actions).all()
