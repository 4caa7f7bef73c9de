"""Hydra search-path plugin: every Hydra app (Diffusion Policy's train.py) sees sam2_encoder's configs.

Hydra discovers this module in the ``hydra_plugins`` namespace package; it appends
``pkg://sam2_encoder.diffusion_policy.config`` to the config search path, so ``--config-name`` and config groups
such as ``sam2_obs_encoder`` resolve with no copied file and no command-line flag. Check with
``python train.py --info searchpath``.
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class SAM2EncoderSearchPathPlugin(SearchPathPlugin):
    """Appends ``pkg://sam2_encoder.diffusion_policy.config`` (provider ``sam2-encoder``)."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        """Add our configs after the app's own, so the app's configs win on a name clash."""
        search_path.append(provider="sam2-encoder", path="pkg://sam2_encoder.diffusion_policy.config")
