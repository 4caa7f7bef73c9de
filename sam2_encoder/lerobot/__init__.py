"""LeRobot 0.6 policy ``sam2_diffusion``: Diffusion Policy with SAM 2 as the vision backbone.

Importing this package registers the policy type with LeRobot. The ``lerobot_policy_sam2``
distribution (``pip install ./integration/lerobot``) imports it when ``lerobot-train`` /
``lerobot-eval`` start, so ``--policy.type=sam2_diffusion`` works with the stock commands.
Needs ``lerobot>=0.6,<0.7`` (Python >= 3.12).
"""

try:
    import lerobot  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "sam2_encoder.lerobot needs LeRobot 0.6 (Python >= 3.12): pip install ./integration/lerobot "
        "or pip install 'lerobot[diffusion]>=0.6,<0.7'"
    ) from e

from .configuration_sam2_diffusion import SAM2DiffusionConfig
from .modeling_sam2_diffusion import SAM2DiffusionPolicy
from .processor_sam2_diffusion import make_sam2_diffusion_pre_post_processors

__all__ = ["SAM2DiffusionConfig", "SAM2DiffusionPolicy", "make_sam2_diffusion_pre_post_processors"]
