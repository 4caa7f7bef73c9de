"""Pre / post-processors of ``sam2_diffusion`` (found by LeRobot as ``make_sam2_diffusion_pre_post_processors``).

The same pipeline as LeRobot's ``diffusion`` policy: rename -> add batch dim -> device ->
normalise, and unnormalise -> CPU. The config's ``normalization_mapping`` has ``VISUAL: IDENTITY``,
so images reach the policy as LeRobot produces them (float in [0, 1]) and are normalised once, by
SAM 2's own transforms inside the encoder; states and actions are normalised with the dataset
statistics (``MIN_MAX`` by default).

Only the inputs the policy reads as cameras or vectors (``observation.state``, ENV features) are
normalised. Object masks (the features named in ``object_masks``) and any other dataset feature
pass through untouched: LeRobot types every non-image ``observation.*`` feature as STATE and would
min-max them (a bool mask feature would even stop training). The normaliser is built without them
(no features, no statistics) and with ``normalize_observation_keys`` listing the read inputs, which
is saved in ``policy_preprocessor.json``: a reloaded pipeline, and ``lerobot-train``'s fine-tuning
overrides (which replace the normaliser's features), leave them alone too.
"""

from typing import Any

import torch
from lerobot.configs import NormalizationMode
from lerobot.processor import (
    NormalizerProcessorStep,
    PolicyAction,
    PolicyProcessorPipeline,
    make_default_policy_processor_steps,
    make_policy_processor_pipelines,
)

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
            states and actions; image statistics (even ImageNet's) are not applied, statistics
            of features the policy does not normalise (object masks) are dropped.

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
    s = make_default_policy_processor_steps(config, dataset_stats)
    # only what the policy reads as images or vectors is normalised: object masks (and any other
    # dataset feature the policy does not read, e.g. masks recorded for another policy) pass through
    used = [*config.image_features, *config.low_dim_keys]
    inputs = {key: config.input_features[key] for key in used}
    keep = {*inputs, *config.output_features}
    s.normalize = NormalizerProcessorStep(
        features={**inputs, **config.output_features},
        norm_map=config.normalization_mapping,
        stats=None if dataset_stats is None else {k: v for k, v in dataset_stats.items() if k in keep},
        normalize_observation_keys=set(inputs),
    )
    return make_policy_processor_pipelines(
        input_steps=[s.rename_observations, s.add_batch_dim, s.to_device, s.normalize],
        output_steps=[s.unnormalize, s.to_cpu],
    )
