"""Pre / post-processors of ``sam2_diffusion`` (found by LeRobot as ``make_sam2_diffusion_pre_post_processors``).

The same pipeline as LeRobot's ``diffusion`` policy: rename -> add batch dim -> device ->
normalise, and unnormalise -> CPU. The config's ``normalization_mapping`` has ``VISUAL: IDENTITY``,
so images reach the policy as LeRobot produces them (float in [0, 1]) and are normalised once, by
SAM 2's own transforms inside the encoder; states and actions are normalised with the dataset
statistics (``MIN_MAX`` by default).
"""

from typing import Any

import torch
from lerobot.configs import NormalizationMode
from lerobot.processor import PolicyAction, PolicyProcessorPipeline, make_default_pre_post_processors

from .configuration_sam2_diffusion import SAM2DiffusionConfig

__all__ = ["make_sam2_diffusion_pre_post_processors"]


def make_sam2_diffusion_pre_post_processors(
    config: SAM2DiffusionConfig,
    dataset_stats: dict[str, dict[str, torch.Tensor]] | None = None,
) -> tuple[
    PolicyProcessorPipeline[dict[str, Any], dict[str, Any]],
    PolicyProcessorPipeline[PolicyAction, PolicyAction],
]:
    """Build the policy's preprocessor and postprocessor.

    Args:
        config: The policy configuration (features, normalisation mapping, device).
        dataset_stats: Per-feature statistics (``mean``, ``std``, ``min``, ``max``...) used for
            states and actions; image statistics (even ImageNet's) are not applied.

    Returns:
        ``(preprocessor, postprocessor)``.

    Raises:
        ValueError: If the configuration asks for VISUAL normalisation.
    """
    visual = NormalizationMode(config.normalization_mapping.get("VISUAL", NormalizationMode.IDENTITY))
    if visual is not NormalizationMode.IDENTITY:
        raise ValueError(
            f"sam2_diffusion: normalization_mapping['VISUAL'] is {visual.name}; it must be IDENTITY "
            "(SAM 2 normalises images itself)"
        )
    return make_default_pre_post_processors(config, dataset_stats)
