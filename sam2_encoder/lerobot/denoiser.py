"""The denoising half of ``sam2_diffusion``: LeRobot's conditional UNet, a scheduler, the loss, the sampler.

The condition is the SAM 2 encoder's ``(B, n_obs_steps * D)`` output; the UNet is LeRobot's own
``DiffusionConditionalUnet1d`` (as its diffusion policy builds it), the scheduler diffusers' DDPM
or DDIM with the config's schedule.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from lerobot.policies.diffusion.modeling_diffusion import DiffusionConditionalUnet1d
from torch import Tensor, nn

__all__ = ["build_denoiser", "diffusion_loss", "sample_actions"]


def build_denoiser(config: Any, global_cond_dim: int) -> tuple[nn.Module, Any]:
    """``(unet, scheduler)`` of a ``SAM2DiffusionConfig`` (UNet compiled with ``compile_model``).

    Args:
        config: The policy's config (``down_dims``, ``noise_scheduler_type``, ``beta_*``, ...).
        global_cond_dim: ``n_obs_steps * D``, the condition's size.
    """
    unet: nn.Module = DiffusionConditionalUnet1d(config, global_cond_dim=global_cond_dim)
    if config.compile_model:
        unet = torch.compile(unet, mode=config.compile_mode)
    scheduler = DDPMScheduler if config.noise_scheduler_type == "DDPM" else DDIMScheduler
    return unet, scheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule=config.beta_schedule,
        clip_sample=config.clip_sample,
        clip_sample_range=config.clip_sample_range,
        prediction_type=config.prediction_type,
    )


def diffusion_loss(
    unet: nn.Module, scheduler: Any, config: Any, actions: Tensor, cond: Tensor, is_pad: Tensor
) -> Tensor:
    """The mean squared error of the noise (or sample) prediction at random timesteps.

    Args:
        unet: The UNet of :func:`build_denoiser`.
        scheduler: Its scheduler.
        config: The policy's config (``num_train_timesteps``, ``prediction_type``, ``do_mask_loss_for_padding``).
        actions: ``(B, horizon, A)`` normalised actions.
        cond: ``(B, n_obs_steps * D)``.
        is_pad: ``(B, horizon)`` padded actions (left out of the loss with ``do_mask_loss_for_padding``).
    """
    noise = torch.randn(actions.shape, device=actions.device, dtype=actions.dtype)
    steps = torch.randint(0, config.num_train_timesteps, (actions.shape[0],), device=actions.device).long()
    pred = unet(scheduler.add_noise(actions, noise, steps), steps, global_cond=cond)
    target = noise if config.prediction_type == "epsilon" else actions
    loss = F.mse_loss(pred, target, reduction="none")
    if config.do_mask_loss_for_padding:
        valid = (~is_pad).unsqueeze(-1).to(loss.dtype)
        return (loss * valid).sum() / (valid.sum() * loss.shape[-1]).clamp_min(1)
    return loss.mean()


def sample_actions(
    unet: nn.Module, scheduler: Any, config: Any, cond: Tensor, num_inference_steps: int, noise: Tensor | None
) -> Tensor:
    """``(B, n_action_steps, A)``: denoise ``horizon`` actions from ``noise`` and keep the executed ones.

    Args:
        unet: The UNet of :func:`build_denoiser`.
        scheduler: Its scheduler.
        config: The policy's config (``horizon``, ``n_obs_steps``, ``n_action_steps``, action feature).
        cond: ``(B, n_obs_steps * D)``.
        num_inference_steps: Denoising steps.
        noise: Optional initial noise ``(B, horizon, A)`` (``None``: standard normal).

    Raises:
        ValueError: ``noise`` of another shape.
    """
    batch_size = cond.shape[0]
    shape = (batch_size, config.horizon, config.action_feature.shape[0])
    if noise is None:
        sample = torch.randn(shape, dtype=cond.dtype, device=cond.device)
    elif tuple(noise.shape) != shape:
        raise ValueError(f"sam2_diffusion: noise has shape {tuple(noise.shape)}; expected {shape}")
    else:
        sample = noise.to(device=cond.device, dtype=cond.dtype)
    scheduler.set_timesteps(num_inference_steps)
    for t in scheduler.timesteps:
        steps = torch.full((batch_size,), int(t), dtype=torch.long, device=cond.device)
        sample = scheduler.step(unet(sample, steps, global_cond=cond), t, sample).prev_sample
    start = config.n_obs_steps - 1
    return sample[:, start : start + config.n_action_steps]
