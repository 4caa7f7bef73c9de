"""LeRobot's ``sam2_diffusion`` options are the encoder's options, defined once in ``EncoderConfig``.

- Every encoder option but the two LeRobot sets itself (``input_range``: LeRobot's float images;
  ``n_obs_steps``: LeRobot's own) is a field of ``SAM2DiffusionConfig``, under the name of
  ``LEROBOT_NAMES`` (today's names, so saved ``config.json`` files keep loading), with the
  encoder's default except the declared ``LEROBOT_DEFAULTS``, and one line of its docstring.
- A bad value gives the encoder's own one-line error, prefixed ``sam2_diffusion:`` and naming
  LeRobot's spelling of the option (every row of the core table ``tests/test_config.py``).
- ``encoder_config()`` is what the policy's encoder is built from; draccus' ``config.json`` round
  trip keeps it.
"""

from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("lerobot")

from lerobot.configs import FeatureType, PolicyFeature  # noqa: E402

from sam2_encoder import EncoderConfig  # noqa: E402
from sam2_encoder.config import option_docs  # noqa: E402
from sam2_encoder.lerobot import SAM2DiffusionConfig, SAM2DiffusionPolicy  # noqa: E402
from sam2_encoder.lerobot.configuration_sam2_diffusion import (  # noqa: E402
    ENCODER_OPTIONS,
    LEROBOT_DEFAULTS,
    LEROBOT_NAMES,
)
from tests.test_config import BAD_VALUES, BadValue  # noqa: E402

CAMERA = "observation.image"
MASKS = "observation.masks"
#: Rows of the core table whose rule LeRobot replaces by its own: the policy builds its tracker
#: itself whenever object tokens are on and the trunk is frozen (``object_tracker`` defaults to true);
#: memory from object masks without masks is refused in LeRobot's own words (``object_masks``, not
#: the core's ``object_masks_key``), tested in test_memory_history.
HOST_RULES = {"object_tracker=True", "freeze=False", "memory_source='objects'"}


def _features(masks: bool) -> dict[str, PolicyFeature]:
    features = {CAMERA: PolicyFeature(FeatureType.VISUAL, (3, 48, 64))}
    features["observation.state"] = PolicyFeature(FeatureType.STATE, (2,))
    if masks:
        features[MASKS] = PolicyFeature(FeatureType.ENV, (1, 48, 64))
    return features


def make_config(**options) -> SAM2DiffusionConfig:
    """A small policy config; ``object_masks`` set when an option needs object tokens."""
    masks = bool(options.get("object_masks"))
    base = dict(
        device="cpu",
        input_features=_features(masks),
        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
        sam2_image_size=64,
        horizon=8,
        n_action_steps=4,
        down_dims=(16, 32),
        push_to_hub=False,
    )
    return SAM2DiffusionConfig(**{**base, **options})


def _lerobot_options(row: BadValue) -> tuple[dict, str]:
    """The row as LeRobot options and the message LeRobot must give."""
    options = {}
    for option, value in (*row.context, (row.option, row.value)):
        if option == "object_masks_key":
            value = {CAMERA: MASKS}
        options[LEROBOT_NAMES.get(option, option)] = value
    name = LEROBOT_NAMES.get(row.option, row.option)
    return options, "sam2_diffusion: " + row.message.format(name=name)


LEROBOT_ROWS = [row for row in BAD_VALUES if row.id not in HOST_RULES and row.option in ENCODER_OPTIONS.values()]


@pytest.mark.parametrize("row", LEROBOT_ROWS, ids=lambda r: r.id)
def test_a_bad_encoder_value_gives_the_encoders_error_in_lerobots_names(row: BadValue) -> None:
    """One line, ``sam2_diffusion: <the encoder's message>``, naming the option as LeRobot spells it."""
    options, message = _lerobot_options(row)
    with pytest.raises(ValueError) as info:
        make_config(**options)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_core_table_reaches_lerobot_but_for_the_rules_it_replaces() -> None:
    """Only the options LeRobot sets itself and the two tracker rows are left out of the LeRobot rows."""
    left_out = {row.id for row in BAD_VALUES} - {row.id for row in LEROBOT_ROWS}
    assert left_out == HOST_RULES


def test_every_encoder_option_is_a_lerobot_option_with_the_encoders_default() -> None:
    """Fields == encoder options (less input_range, n_obs_steps); defaults == EncoderConfig's but LEROBOT_DEFAULTS."""
    fields = {f.name: f for f in dataclasses.fields(SAM2DiffusionConfig)}
    assert set(ENCODER_OPTIONS.values()) == set(option_docs()) - {"input_range", "n_obs_steps"}
    assert set(ENCODER_OPTIONS) <= set(fields)
    assert set(LEROBOT_NAMES) <= set(option_docs()) and set(LEROBOT_DEFAULTS) <= set(ENCODER_OPTIONS)
    defaults = EncoderConfig().flat()
    config = SAM2DiffusionConfig()
    for name, option in ENCODER_OPTIONS.items():
        expected = LEROBOT_DEFAULTS.get(name, defaults[option])
        value = getattr(config, name)
        normal = (lambda v: list(v) if isinstance(v, tuple | list) else v) if expected != {} else dict
        assert normal(value) == normal(expected), name
        assert f"        {name}: {option_docs()[option][1]}" in SAM2DiffusionConfig.__doc__, name


def test_the_policys_encoder_is_built_from_encoder_config() -> None:
    """The encoder's config == ``encoder_config()``: LeRobot's names mapped, [0, 1] images, LeRobot's n_obs_steps."""
    config = make_config(pool="avg", crop_is_random=False, crop_shape=(40, 56), sam2_seed=3, n_obs_steps=2)
    expected = config.encoder_config()
    assert expected.readout.pool == "avg" and expected.view.random_crop is False
    assert expected.view.crop_shape == (40, 56) and expected.backbone.seed == 3
    assert expected.view.input_range == (0.0, 1.0) and expected.tracking.n_obs_steps == 2
    policy = SAM2DiffusionPolicy(config)
    assert policy.encoder.config == expected


def test_object_tokens_build_the_tracker_only_with_a_frozen_trunk() -> None:
    """LeRobot's object_tracker=true means 'track when you can': on with masks and freeze, off otherwise."""
    frozen = make_config(object_masks={CAMERA: MASKS}).encoder_config()
    assert frozen.tracking.object_tracker is True
    tuned = make_config(object_masks={CAMERA: MASKS}, freeze=False).encoder_config()
    assert tuned.tracking.object_tracker is False
    assert make_config().encoder_config().tracking.object_tracker is False


def test_resize_and_crop_ratio_set_the_crop_as_lerobot_does() -> None:
    """With resize_shape, crop_ratio decides the crop: int(side * ratio), none at 1.0."""
    config = make_config(resize_shape=(40, 60), crop_ratio=0.5)
    assert config.crop_shape == (20, 30) and config.encoder_config().view.crop_shape == (20, 30)
    assert make_config(resize_shape=(40, 60)).crop_shape is None


def test_config_json_round_trip_keeps_the_encoder_config(tmp_path) -> None:
    """save_pretrained -> from_pretrained (draccus) gives the same encoder config."""
    config = make_config(levels=["s8", "s16"], fuse_channels=[16, 8], pool_kwargs={"temperature": 2.0})
    config.save_pretrained(tmp_path)
    loaded = SAM2DiffusionConfig.from_pretrained(tmp_path)
    assert loaded.encoder_config() == config.encoder_config()
