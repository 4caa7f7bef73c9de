"""Each encoder option is defined once: ``EncoderConfig`` is the source, every host agrees with it.

- The DP preset ``base.yaml`` has exactly the config's options (plus DP's own keys), with the
  config's defaults except the declared ``DP_DEFAULTS``; the options DP's obs_encoder block sets
  are left to it (``DP_BLOCK_OPTIONS``).
- A bad value gives the same one-line error through ``MultiCameraEncoder(**flat)``,
  ``EncoderConfig.from_flat`` and ``SAM2ObsEncoder`` built by Hydra (``BAD_VALUES``, also sent
  through LeRobot's ``SAM2DiffusionConfig`` by tests/lerobot/test_config.py).
- Camera keys that would share one head module name are refused by name.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from sam2_encoder import EncoderConfig, MultiCameraEncoder
from sam2_encoder.config import ReadoutConfig, option_docs
from sam2_encoder.diffusion_policy.obs_encoder import DP_BLOCK_OPTIONS, DP_DEFAULTS, DP_ONLY_OPTIONS

REPO = Path(__file__).resolve().parents[1]
BASE_YAML = REPO / "config" / "sam2_obs_encoder" / "base.yaml"
CAMERA = "cam"
MASKS = {CAMERA: "cam_masks"}  # object tokens on, for the rows about them
SHAPE_META = {"obs": {CAMERA: {"shape": [3, 32, 32], "type": "rgb"}}, "action": {"shape": [2]}}


@dataclass(frozen=True)
class BadValue:
    """``option=value`` (with ``context``, other options it needs) must raise ``message``.

    ``message`` names the option as ``{name}``: each host fills in its own spelling of it.
    """

    option: str
    value: Any
    message: str
    context: tuple[tuple[str, Any], ...] = ()

    @property
    def id(self) -> str:
        return f"{self.option}={self.value!r}"


def _whole(option: str, label: str = "{name}") -> list[BadValue]:
    """The bad values of an option that takes a whole number >= 1."""
    values = [2.5, True, "2", 0, math.nan]
    return [BadValue(option, v, f"{label} must be a whole number >= 1, got {v!r}") for v in values]


_OBJECTS = (("object_masks_key", MASKS),)
BAD_VALUES = [
    *_whole("num_keypoints"),
    *_whole("num_objects"),
    *_whole("feature_dim"),
    *_whole("object_token_dim"),
    *_whole("finetune_blocks"),
    *_whole("lora_rank", "LoRA rank ({name})"),
    *[BadValue("seed", v, f"{{name}} must be a whole number in [-2**63, 2**64), got {v!r}") for v in (2.5, "2", True)],
    *[BadValue("image_size", v, f"{{name}} must be an int or (H, W) ints, got {v!r}") for v in (2.5, "64", True)],
    BadValue("image_size", 100, "{name} must be a positive multiple of 32 on each side, got 100"),
    BadValue("crop_shape", [2.5, 3], "{name} must be whole numbers >= 1, got [2.5, 3]"),
    BadValue("crop_shape", [0, 20], "{name} must be whole numbers >= 1, got [0, 20]"),
    BadValue("resize_shape", [20], "{name} must be 2 whole numbers (H, W), got [20]"),
    BadValue("fuse_stride", 2, "{name} must be 8 or 4, got 2"),
    BadValue("fuse_stride", 8.0, "{name} must be 8 or 4, got 8.0"),
    BadValue("fuse_channels", [64], "{name} must be two positive ints (C_8, C_4), got [64]"),
    BadValue("fuse_channels", [64, 0], "{name} must be two positive ints (C_8, C_4), got [64, 0]"),
    BadValue("lora_alpha", math.nan, "LoRA alpha ({name}) must be a finite number > 0, got nan"),
    BadValue("trunk_lr_scale", -1.0, "{name} must be a finite number >= 0, got -1.0"),
    # unknown strings
    BadValue("variant", "sam3_hiera_tiny", "unknown SAM 2 variant 'sam3_hiera_tiny'; known variants:"),
    BadValue("precision", "fp16", "{name} must be one of ('fp32', 'bf16'), got 'fp16'"),
    BadValue("backend", "onnx", "{name} must be one of ('torch', 'openvino'), got 'onnx'"),
    BadValue("channel_order", "rgb", "{name} must be 'RGB' or 'BGR', got 'rgb'"),
    BadValue("pool", "max", "unknown pool 'max'; choose one of spatial_softmax, attention, avg, conv"),
    BadValue("fuse", "upsample", "{name} must be 'pool' or 'coarse_to_fine', got 'upsample'"),
    BadValue("levels", ["s32"], "{name} must be a non-empty subset of ('s4', 's8', 's16'), got ['s32']"),
    BadValue("finetune", "lora", "{name}='lora' needs freeze=False"),
    BadValue(
        "finetune", "half", "unknown finetune mode 'half'; choose one of all, last_blocks, lora", (("freeze", False),)
    ),
    BadValue("object_level", "s32", "{name} must be one of ('s4', 's8', 's16'), got 's32'", _OBJECTS),
    BadValue("object_tokens", "prepend", "{name} must be 'append' or 'replace', got 'prepend'", _OBJECTS),
    BadValue("object_absent", "none", "{name} must be 'learned' or 'zero', got 'none'", _OBJECTS),
    BadValue(
        "object_restart",
        "sometimes",
        "{name} must be 'auto' or 'manual', got 'sometimes'",
        (*_OBJECTS, ("object_tracker", True)),
    ),
    BadValue("random_crop", "yes", "{name} must be true or false, got 'yes'"),
    BadValue("memory", "lstm", "{name} must be one of ('none', 'sam2'), got 'lstm'"),
    *_whole("memory_frames"),
    BadValue("memory_frames", 7, "{name} must be at most 6 (SAM 2's temporal encodings of past frames), got 7"),
    *_whole("memory_stride"),
    BadValue("memory_keep_first", 1, "{name} must be true or false, got 1"),
    BadValue("memory_source", "masks", "{name} must be one of ('frame', 'objects'), got 'masks'"),
    *[
        BadValue("memory_lora_rank", v, f"{{name}} must be a whole number >= 0 (0 = frozen memory), got {v!r}")
        for v in (-1, 2.5, True, "2", math.nan)
    ],
    BadValue("memory_lora_rank", 4, "{name}=4 puts LoRA on SAM 2's memory attention, which memory='none' does not"),
    BadValue("memory_lora_alpha", 0, "LoRA alpha ({name}) must be a finite number > 0, got 0", (("memory", "sam2"),)),
    BadValue("memory_lora_alpha", math.inf, "LoRA alpha ({name}) must be a finite number > 0, got inf"),
    BadValue(
        "memory",
        "sam2",
        "{name}='sam2' needs a square image_size (SAM 2's memory attention), got [64, 96]",
        (("image_size", (64, 96)),),
    ),
    BadValue(
        "memory_source",
        "objects",
        "{name}='objects' stores each frame with its object masks: set object_masks_key",
        (("memory", "sam2"),),
    ),
    BadValue("share_heads", 1, "{name} must be true or false, got 1"),
    # rules between parts
    BadValue(
        "object_level",
        "s8",
        "{name}='s8' with fuse='pool' must be the coarsest of levels ['s16'] (finer levels are pooled away)",
        _OBJECTS,
    ),
    BadValue("object_tracker", True, "{name}=True needs object tokens: set object_masks_key"),
    BadValue("freeze", False, "object_tracker=True needs {name}=True", (*_OBJECTS, ("object_tracker", True))),
    BadValue("backend", "openvino", "{name}='openvino' is inference only and needs freeze=True", (("freeze", False),)),
    BadValue(
        "compile",
        True,
        "{name}=True with backend='openvino': OpenVINO compiles the trunk itself; set {name}=False",
        (("backend", "openvino"),),
    ),
]


def _expected(row: BadValue) -> str:
    return row.message.format(name=row.option)


def _raises(call, row: BadValue) -> None:
    with pytest.raises(ValueError) as info:
        call()
    assert _expected(row) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("row", BAD_VALUES, ids=lambda r: r.id)
def test_a_bad_value_gives_one_error_through_every_core_host(row: BadValue) -> None:
    """``EncoderConfig.from_flat``, ``MultiCameraEncoder(**flat)`` and Hydra's ``SAM2ObsEncoder``: one message."""
    hydra_utils = pytest.importorskip("hydra.utils")
    options = {**dict(row.context), row.option: row.value}
    _raises(lambda: EncoderConfig.from_flat(**options), row)
    options = {"image_size": 64, **options}  # (small, unless the row is about it)
    _raises(lambda: MultiCameraEncoder({CAMERA: (3, 32, 32)}, **options), row)
    node = {"_target_": "sam2_encoder.SAM2ObsEncoder", "shape_meta": SHAPE_META, **options}
    with pytest.raises(Exception) as info:  # Hydra wraps the constructor's error; its cause is ours
        hydra_utils.instantiate(node)
    error = info.value.__cause__ or info.value
    assert isinstance(error, ValueError) and _expected(row) in str(error)


def test_an_unknown_option_is_named_with_the_closest_valid_one() -> None:
    with pytest.raises(ValueError, match=r"^unknown encoder option 'num_keypoint'; did you mean 'num_keypoints'\?$"):
        EncoderConfig.from_flat(num_keypoint=8)
    with pytest.raises(ValueError, match=r"unknown encoder option 'crop_size'; did you mean 'crop_shape'\?"):
        MultiCameraEncoder({CAMERA: (3, 32, 32)}, crop_size=(8, 8))


def test_config_and_flat_options_are_one_or_the_other() -> None:
    config = EncoderConfig.from_flat(image_size=64)
    with pytest.raises(TypeError, match=r"an EncoderConfig or flat options, not both: got config and \['pool'\]"):
        MultiCameraEncoder({CAMERA: (3, 32, 32)}, config=config, pool="avg")
    with pytest.raises(TypeError, match="config must be an EncoderConfig, got str"):
        MultiCameraEncoder({CAMERA: (3, 32, 32)}, None, "sam2.1_hiera_tiny")


def test_flat_round_trips_and_normalises_once() -> None:
    """``from_flat(**flat())`` is the same config; levels finest first, shapes and channels as int tuples."""
    config = EncoderConfig.from_flat(levels=["s16", "s8"], crop_shape=[20.0, 24], fuse_channels=[16, 8], pool="avg")
    assert config.readout.levels == ("s8", "s16") and config.view.crop_shape == (20, 24)
    assert config.readout.fuse_channels == (16, 8)
    assert EncoderConfig.from_flat(**config.flat()) == config
    assert set(config.flat()) == set(option_docs())
    assert dataclasses.replace(config, readout=ReadoutConfig(pool="conv")).readout.pool == "conv"


def test_an_encoder_built_from_a_config_equals_one_built_flat() -> None:
    options = {"image_size": 64, "pool": "attention", "feature_dim": 16, "crop_shape": (24, 24)}
    flat = MultiCameraEncoder({CAMERA: (3, 32, 32)}, **options)
    given = MultiCameraEncoder({CAMERA: (3, 32, 32)}, config=EncoderConfig.from_flat(**options))
    assert flat.config == given.config
    a, b = flat.state_dict(), given.state_dict()
    assert list(a) == list(b) and all(a[k].equal(b[k]) for k in a)


def test_every_option_has_one_line_of_doc() -> None:
    docs = option_docs()
    assert (
        len(docs) == 47
    )  # the 41 parameters of MultiCameraEncoder before the config, less cameras, low_dim; backend; memory (7)
    assert all(doc and "\n" not in doc for _, doc in docs.values())


def test_base_yaml_has_every_option_with_the_configs_default() -> None:
    """base.yaml keys == config options (less DP_BLOCK_OPTIONS) + DP's own keys; values == defaults but DP_DEFAULTS."""
    base = yaml.safe_load(BASE_YAML.read_text())
    options = {k: v for k, v in base.items() if k not in DP_ONLY_OPTIONS}
    assert set(options) == set(option_docs()) - set(DP_BLOCK_OPTIONS)
    assert set(base) - set(options) <= set(DP_ONLY_OPTIONS)
    defaults = EncoderConfig().flat()
    for name, value in options.items():
        expected = DP_DEFAULTS.get(name, defaults[name])
        normalise = (lambda v: list(v) if isinstance(v, tuple) else v) if name != "pool_kwargs" else dict
        assert normalise(value) == normalise(expected), name
    twin = REPO / "integration" / "diffusion_policy" / "config" / "sam2_obs_encoder" / "base.yaml"
    assert twin.read_bytes() == BASE_YAML.read_bytes()


def test_camera_keys_that_share_one_head_name_are_refused() -> None:
    """'cam.left' and 'cam_left' would both be heads['cam_left']: one error naming both."""
    with pytest.raises(ValueError, match=r"cameras \['cam.left', 'cam_left'\] would share one head.*'cam_left'"):
        MultiCameraEncoder({"cam.left": (3, 32, 32), "cam_left": (3, 32, 32)}, image_size=64)
    enc = MultiCameraEncoder({"cam.left": (3, 32, 32), "cam.right": (3, 32, 32)}, image_size=64)
    assert sorted(enc.heads) == ["cam_left", "cam_right"]  # names that do not collide keep today's keys
