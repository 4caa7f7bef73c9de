"""LeRobot plugin: registers the ``sam2_diffusion`` policy type.

``lerobot-train`` and ``lerobot-eval`` import this module at start (LeRobot imports every
installed distribution named ``lerobot_policy_*``). The policy itself lives in
``sam2_encoder.lerobot``: LeRobot finds ``SAM2DiffusionPolicy`` and
``make_sam2_diffusion_pre_post_processors`` next to the config class, in the ``modeling_`` and
``processor_`` modules of ``sam2_encoder.lerobot``.
"""

from sam2_encoder.lerobot import (
    SAM2DiffusionConfig,
    SAM2DiffusionPolicy,
    make_sam2_diffusion_pre_post_processors,
)

__all__ = ["SAM2DiffusionConfig", "SAM2DiffusionPolicy", "make_sam2_diffusion_pre_post_processors"]
