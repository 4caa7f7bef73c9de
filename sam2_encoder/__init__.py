"""SAM 2 as the eyes of a visuomotor policy.

Batched, exact SAM 2 / 2.1 image features (Hiera trunk + FPN neck) for robot learning, built on
transformers' SAM 2 models: preprocessing (:class:`SAM2Transforms`), the multi-scale encoder
(:class:`SAM2ImageEncoder`), a Diffusion Policy observation encoder and a bounded streaming
video tracker.
"""

from .checkpoints import CheckpointError, convert_meta_state_dict, load_checkpoint, resolve_checkpoint
from .image_encoder import FeaturePyramid, SAM2ImageEncoder
from .obs_encoder import SAM2ObsEncoder
from .streaming import StreamingPredictor, TrackResult
from .transforms import SAM2Transforms
from .variants import VARIANTS, Variant, get_variant

__version__ = "0.1.0"

__all__ = [
    "VARIANTS",
    "CheckpointError",
    "FeaturePyramid",
    "SAM2ImageEncoder",
    "SAM2ObsEncoder",
    "SAM2Transforms",
    "StreamingPredictor",
    "TrackResult",
    "Variant",
    "__version__",
    "convert_meta_state_dict",
    "get_variant",
    "load_checkpoint",
    "resolve_checkpoint",
]
