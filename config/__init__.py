"""Hydra configs of sam2_encoder, shipped as ``sam2_encoder.diffusion_policy.config`` (``pkg://sam2_encoder.diffusion_policy.config``)."""
