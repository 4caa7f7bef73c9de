"""SAM2DiffusionPolicy semantics, in-process (LeRobot 0.6 venv only)."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
from pathlib import Path

import pytest

lerobot = pytest.importorskip(
    "lerobot", reason="LeRobot 0.6 is not installed here (it needs Python >= 3.12); .ci/lerobot.sh runs these tests"
)
import torch  # noqa: E402
from lerobot.configs import FeatureType, NormalizationMode, PolicyFeature, PreTrainedConfig  # noqa: E402
from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig  # noqa: E402
from lerobot.policies.factory import get_policy_class, make_pre_post_processors  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from sam2_encoder import SAM2ImageEncoder  # noqa: E402
from sam2_encoder.lerobot import SAM2DiffusionConfig, SAM2DiffusionPolicy  # noqa: E402
from sam2_encoder.pooling import CoarseToFine  # noqa: E402

CAMERAS = ("observation.images.top", "observation.images.wrist")


def make_config(**overrides) -> SAM2DiffusionConfig:
    """Tiny policy: two 48x64 cameras, 2-d state and action, SAM 2 at 64 px, small UNet."""
    features = {key: PolicyFeature(FeatureType.VISUAL, (3, 48, 64)) for key in CAMERAS}
    features["observation.state"] = PolicyFeature(FeatureType.STATE, (2,))
    options = dict(
        device="cpu",
        input_features=features,
        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
        sam2_image_size=64,
        num_keypoints=8,
        horizon=8,
        n_action_steps=4,
        drop_n_last_frames=3,
        down_dims=(16, 32),
        kernel_size=3,
        n_groups=4,
        diffusion_step_embed_dim=16,
        num_train_timesteps=10,
        num_inference_steps=3,
        push_to_hub=False,
    )
    options.update(overrides)
    return SAM2DiffusionConfig(**options)


def frames(step: int, batch: int = 1) -> dict[str, torch.Tensor]:
    """One observation per camera (float [0, 1]) and a state, distinct per step."""
    g = torch.Generator().manual_seed(1000 + step)
    obs = {key: torch.rand(batch, 3, 48, 64, generator=g) for key in CAMERAS}
    obs["observation.state"] = torch.rand(batch, 2, generator=g) * 2 - 1
    return obs


def training_batch(batch: int = 3, steps: int = 2, horizon: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    out = {key: torch.rand(batch, steps, 3, 48, 64, generator=g) for key in CAMERAS}
    out["observation.state"] = torch.rand(batch, steps, 2, generator=g)
    out["action"] = torch.rand(batch, horizon, 2, generator=g) * 2 - 1
    out["action_is_pad"] = torch.zeros(batch, horizon, dtype=torch.bool)
    return out


class TrunkCounter:
    """Counts SAM 2 trunk passes and the images in each (hook on the patch embedding)."""

    def __init__(self, policy: SAM2DiffusionPolicy) -> None:
        self.rows: list[int] = []
        embed = policy.encoder.encoder.vision_encoder.backbone.patch_embed
        self.handle = embed.register_forward_pre_hook(lambda _m, args: self.rows.append(args[0].shape[0]))


# ------------------------------------------------------------------------------------------------
# registration and configuration
# ------------------------------------------------------------------------------------------------


def test_lerobot_finds_policy_and_processor_by_type() -> None:
    assert importlib.metadata.distribution("lerobot_policy_sam2").metadata["Name"] == "lerobot_policy_sam2"
    assert get_policy_class("sam2_diffusion") is SAM2DiffusionPolicy
    assert PreTrainedConfig.get_choice_class("sam2_diffusion") is SAM2DiffusionConfig


def test_visual_normalisation_is_identity_and_anything_else_is_refused() -> None:
    cfg = make_config()
    assert cfg.normalization_mapping["VISUAL"] is NormalizationMode.IDENTITY
    with pytest.raises(ValueError, match=r"normalization_mapping\['VISUAL'\] must be IDENTITY, got MEAN_STD"):
        make_config(
            normalization_mapping={
                "VISUAL": NormalizationMode.MEAN_STD,
                "STATE": NormalizationMode.MIN_MAX,
                "ACTION": NormalizationMode.MIN_MAX,
            }
        )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pool": "max"}, "unknown pool 'max'"),
        ({"pool": "avg", "pool_kwargs": {"num_heads": 4}}, "pool 'avg' does not take num_heads"),
        ({"finetune": "lora"}, "finetune='lora' needs freeze=False"),
        ({"freeze": False, "finetune": "half"}, "unknown finetune mode 'half'; choose one of all, last_blocks, lora"),
        ({"levels": ["s32"]}, r"levels must be a non-empty subset of \('s4', 's8', 's16'\), got \['s32'\]"),
        ({"sam2_image_size": 100}, "multiple of 32"),
        ({"sam2_variant": "sam3_hiera_tiny"}, "unknown SAM 2 variant 'sam3_hiera_tiny'"),
        ({"horizon": 9}, r"horizon \(9\) must be a multiple of 2"),
        ({"n_action_steps": 8}, r"n_action_steps \(8\) must be <= horizon - n_obs_steps \+ 1"),
        ({"prediction_type": "v"}, "prediction_type must be one of"),
        ({"noise_scheduler_type": "PNDM"}, "noise_scheduler_type must be one of"),
        ({"crop_shape": (50, 10)}, r"crop_shape \(50, 10\) is larger than camera"),
        ({"fuse": "upsample"}, "fuse must be 'pool' or 'coarse_to_fine', got 'upsample'"),
        ({"fuse_stride": 2}, "fuse_stride must be 8 or 4, got 2"),
        ({"fuse_stride": 8.0}, "fuse_stride must be 8 or 4, got 8.0"),
        ({"fuse_channels": [64]}, r"fuse_channels must be two positive ints \(C_8, C_4\), got \[64\]"),
        ({"fuse_channels": [64, 0]}, r"fuse_channels must be two positive ints \(C_8, C_4\), got \[64, 0\]"),
        ({"fuse": "coarse_to_fine", "levels": ["s8", "s16"]}, "fuse='coarse_to_fine' reads s4, s8 and s16 itself"),
    ],
)
def test_bad_options_give_one_clear_error(options, message) -> None:
    with pytest.raises(ValueError, match=message):
        cfg = make_config(**options)
        cfg.validate_features()


def test_fuse_options_parse_as_lerobot_train_flags(caplog: pytest.LogCaptureFixture) -> None:
    """``--policy.fuse*`` values as draccus parses them from the command line."""
    import draccus

    cfg = draccus.parse(
        config_class=SAM2DiffusionConfig,
        args=["--fuse=coarse_to_fine", "--fuse_stride=4", "--fuse_channels=[16,8]", "--device=cpu"],
    )
    assert (cfg.fuse, cfg.fuse_stride, cfg.fuse_channels) == ("coarse_to_fine", 4, [16, 8])
    with pytest.raises(draccus.utils.ParsingError):
        draccus.parse(config_class=SAM2DiffusionConfig, args=["--fuse_stride=2", "--device=cpu"])
    assert "sam2_diffusion: fuse_stride must be 8 or 4, got 2" in caplog.text  # the line draccus hides


def test_a_policy_without_camera_is_refused() -> None:
    cfg = make_config(input_features={"observation.state": PolicyFeature(FeatureType.STATE, (2,))})
    with pytest.raises(ValueError, match="needs at least one camera"):
        SAM2DiffusionPolicy(cfg)


def test_resize_and_crop_follow_lerobot_diffusion_rules() -> None:
    for resize, ratio in [((40, 56), 0.9), ((40, 56), 1.0), (None, 1.0)]:
        ours = make_config(resize_shape=resize, crop_ratio=ratio)
        theirs = DiffusionConfig(resize_shape=resize, crop_ratio=ratio, device="cpu", pretrained_backbone_weights=None)
        assert ours.crop_shape == theirs.crop_shape
    policy = SAM2DiffusionPolicy(make_config(resize_shape=(40, 56), crop_ratio=0.9, crop_is_random=False))
    assert policy.encoder.resize_shape == (40, 56) and policy.encoder.crop_shape == (36, 50)
    assert policy.encoder.random_crop is False


def test_config_round_trips_through_json(tmp_path: Path) -> None:
    cfg = make_config(pool="attention", pool_kwargs={"num_heads": 4}, feature_dim=24, levels=["s8", "s16"])
    cfg.save_pretrained(tmp_path)
    back = PreTrainedConfig.from_pretrained(tmp_path)
    assert isinstance(back, SAM2DiffusionConfig)
    assert (back.fuse, back.fuse_stride, back.fuse_channels) == ("pool", 8, [64, 32])
    assert back.pool_kwargs == {"num_heads": 4} and isinstance(back.pool_kwargs["num_heads"], int)
    assert back.levels == ["s8", "s16"] and back.feature_dim == 24
    assert back.normalization_mapping == cfg.normalization_mapping


# ------------------------------------------------------------------------------------------------
# processors: images are never normalised twice
# ------------------------------------------------------------------------------------------------


def test_processor_leaves_images_alone_and_normalises_state() -> None:
    cfg = make_config()
    imagenet = {
        "mean": torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1),
        "std": torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1),
    }
    stats = {key: imagenet for key in CAMERAS}
    stats["observation.state"] = {"min": torch.tensor([-2.0, 0.0]), "max": torch.tensor([2.0, 4.0])}
    stats["action"] = {"min": torch.tensor([-1.0, -1.0]), "max": torch.tensor([1.0, 1.0])}
    pre, _post = make_pre_post_processors(cfg, dataset_stats=stats)  # LeRobot's factory finds ours
    obs = frames(0)
    obs["observation.state"] = torch.tensor([[0.0, 1.0]])
    out = pre(dict(obs))
    for key in CAMERAS:
        assert torch.equal(out[key], obs[key]), key
    assert torch.allclose(out["observation.state"], torch.tensor([[0.0, -0.5]]))


# ------------------------------------------------------------------------------------------------
# encoder semantics
# ------------------------------------------------------------------------------------------------


def test_every_camera_and_step_in_one_trunk_pass() -> None:
    policy = SAM2DiffusionPolicy(make_config())
    counter = TrunkCounter(policy)
    loss, info = policy.forward(training_batch(batch=3, steps=2))
    assert info is None and loss.ndim == 0 and torch.isfinite(loss)
    assert counter.rows == [3 * 2 * len(CAMERAS)]
    counter.rows.clear()
    policy.eval()
    with torch.inference_mode():
        obs = training_batch(batch=2, steps=2)
        actions = policy.predict_action_chunk(obs)
    assert actions.shape == (2, 4, 2)
    assert counter.rows == [2 * 2 * len(CAMERAS)]


def test_frozen_by_default_and_optimizer_gets_only_trainable_parameters() -> None:
    policy = SAM2DiffusionPolicy(make_config())
    policy.train()
    sam2 = policy.encoder.encoder
    assert not sam2.training and not any(p.requires_grad for p in sam2.parameters())
    groups = policy.get_optim_params()
    assert len(groups) == 1 and "lr" not in groups[0]
    in_groups = [p for g in groups for p in g["params"]]
    trainable = [p for p in policy.parameters() if p.requires_grad]
    assert len(in_groups) == len({id(p) for p in in_groups}) == len(trainable)
    assert {id(p) for p in in_groups} == {id(p) for p in trainable}
    loss, _ = policy.forward(training_batch())
    loss.backward()
    assert all(p.grad is None for p in sam2.parameters())
    assert all(p.grad is not None for p in policy.encoder.heads.parameters())


@pytest.mark.parametrize("finetune", ["last_blocks", "lora"])
def test_finetuning_gives_the_trunk_its_own_learning_rate(finetune: str) -> None:
    cfg = make_config(freeze=False, finetune=finetune, finetune_blocks=1, lora_rank=2, trunk_lr_scale=0.25)
    policy = SAM2DiffusionPolicy(cfg)
    groups = policy.get_optim_params()
    assert [g["name"] for g in groups] == ["policy", "sam2_trunk"]
    trunk = groups[1]
    assert trunk["lr"] == pytest.approx(cfg.optimizer_lr * 0.25)
    sam2_ids = {id(p) for p in policy.encoder.encoder.parameters()}
    assert trunk["params"] and all(id(p) in sam2_ids for p in trunk["params"])
    assert not any(id(p) in sam2_ids for p in groups[0]["params"])
    trainable = {id(p) for p in policy.parameters() if p.requires_grad}
    assert {id(p) for g in groups for p in g["params"]} == trainable
    assert len(trunk["params"]) < sum(1 for _ in policy.encoder.encoder.parameters())
    optimizer = cfg.get_optimizer_preset().build(groups)  # LeRobot's own optimizer factory
    assert [g["lr"] for g in optimizer.param_groups] == [cfg.optimizer_lr, pytest.approx(cfg.optimizer_lr * 0.25)]


def test_select_action_encodes_one_new_frame_per_camera_and_step_with_identical_actions() -> None:
    reuse = SAM2DiffusionPolicy(make_config(n_action_steps=1)).eval()
    plain = SAM2DiffusionPolicy(make_config(n_action_steps=1, reuse_frames=False)).eval()
    plain.load_state_dict(reuse.state_dict(), strict=True)
    runs = {}
    for name, policy in (("reuse", reuse), ("plain", plain)):
        counter = TrunkCounter(policy)
        policy.reset()
        torch.manual_seed(0)
        with torch.inference_mode():
            actions = [policy.select_action(frames(step, batch=2)) for step in range(5)]
        runs[name] = (torch.stack(actions), counter.rows)
    cams = len(CAMERAS)
    # step 0: the queue holds the first frame twice, encoded once; afterwards one new frame per camera and step
    assert runs["reuse"][1] == [2 * cams] * 5
    assert runs["plain"][1] == [2 * 2 * cams] * 5
    assert torch.equal(runs["reuse"][0], runs["plain"][0])
    assert runs["reuse"][0].shape == (5, 2, 2)


def test_reset_forgets_the_remembered_frames() -> None:
    policy = SAM2DiffusionPolicy(make_config(n_action_steps=1)).eval()
    counter = TrunkCounter(policy)
    policy.reset()
    with torch.inference_mode():
        policy.select_action(frames(0))
        policy.select_action(frames(0))  # the same frame again: remembered
        assert policy.encoder._memo.frames
        policy.reset()
        assert not policy.encoder._memo.frames and not policy.training
        policy.select_action(frames(0))  # new episode: encoded again
    assert counter.rows == [len(CAMERAS), len(CAMERAS)]


def test_coarse_to_fine_head_trains_acts_and_reloads_strictly(tmp_path: Path) -> None:
    """fuse='coarse_to_fine' (stride 4): the encoder's upsampling head, trained, used and reloaded."""
    cfg = make_config(fuse="coarse_to_fine", fuse_stride=4, fuse_channels=[16, 8], n_action_steps=1)
    policy = SAM2DiffusionPolicy(cfg)
    enc = policy.encoder
    assert enc.fuse == "coarse_to_fine" and enc.levels == ("s4", "s8", "s16")
    head = enc.head_for(CAMERAS[0])
    upsample = [m for m in head.modules() if isinstance(m, CoarseToFine)]
    assert len(upsample) == 1 and upsample[0].stride == 4 and upsample[0].out_channels == 8
    # the readout sees the stride-4 map: 64 px -> 16 x 16, 8 channels (spatial softmax, 8 keypoints)
    assert policy.obs_feature_dim == len(CAMERAS) * 2 * 8 + 2
    trainable = {id(p) for p in policy.parameters() if p.requires_grad}
    assert {id(p) for g in policy.get_optim_params() for p in g["params"]} == trainable
    assert all(id(p) in trainable for p in upsample[0].parameters())

    policy.train()
    counter = TrunkCounter(policy)
    loss, _ = policy.forward(training_batch())
    loss.backward()
    assert torch.isfinite(loss) and counter.rows == [3 * 2 * len(CAMERAS)]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in upsample[0].parameters())

    policy.eval()
    policy.reset()
    torch.manual_seed(0)
    with torch.inference_mode():
        actions = torch.stack([policy.select_action(frames(step)) for step in range(3)])
    assert actions.shape == (3, 1, 2) and torch.isfinite(actions).all()

    policy.save_pretrained(tmp_path / "saved")
    back = SAM2DiffusionPolicy.from_pretrained(tmp_path / "saved")
    assert (back.config.fuse, back.config.fuse_stride, back.config.fuse_channels) == ("coarse_to_fine", 4, [16, 8])
    assert set(back.state_dict()) == set(policy.state_dict())
    for key, value in policy.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    back.reset()
    torch.manual_seed(0)
    with torch.inference_mode():
        again = torch.stack([back.select_action(frames(step)) for step in range(3)])
    assert torch.equal(again, actions)


def test_action_queue_predicts_every_n_action_steps() -> None:
    policy = SAM2DiffusionPolicy(make_config(n_action_steps=3)).eval()
    counter = TrunkCounter(policy)
    policy.reset()
    with torch.inference_mode():
        for step in range(7):
            assert policy.select_action(frames(step)).shape == (1, 2)
    assert len(counter.rows) == 3  # steps 0, 3 and 6
    policy.reset()
    with pytest.raises(KeyError, match="observation.images.wrist"):
        policy.select_action({k: v for k, v in frames(0).items() if k != "observation.images.wrist"})


# ------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------


def test_save_and_strict_reload_offline_without_the_sam2_file(
    tmp_path: Path, meta_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = tmp_path / "sam2.1_hiera_tiny.pt"
    shutil.copy(meta_checkpoint, ckpt)
    policy = SAM2DiffusionPolicy(make_config(sam2_checkpoint=str(ckpt))).eval()
    reference = SAM2ImageEncoder("sam2.1_hiera_tiny", checkpoint=ckpt, image_size=64)
    for key, value in reference.state_dict().items():
        assert torch.equal(policy.encoder.encoder.state_dict()[key], value), key
    policy.save_pretrained(tmp_path / "saved")
    ckpt.unlink()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    saved = load_file(str(tmp_path / "saved" / "model.safetensors"))
    assert set(saved) == set(policy.state_dict())  # SAM 2 weights included: self-contained
    assert any(k.startswith("encoder.encoder.vision_encoder.") for k in saved)
    back = SAM2DiffusionPolicy.from_pretrained(tmp_path / "saved")
    assert not back.training
    for key, value in policy.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    torch.manual_seed(3)
    with torch.inference_mode():
        a = policy.select_action(frames(0))
    torch.manual_seed(3)
    with torch.inference_mode():
        b = back.select_action(frames(0))
    assert torch.equal(a, b)

    # strict: a state dict with an extra or a missing key is refused
    extra = dict(saved, **{"encoder.unexpected": torch.zeros(1)})
    save_file(extra, str(tmp_path / "saved" / "model.safetensors"))
    with pytest.raises(RuntimeError, match="encoder.unexpected"):
        SAM2DiffusionPolicy.from_pretrained(tmp_path / "saved")
    missing = {k: v for k, v in saved.items() if k != "unet.final_conv.1.bias"}
    save_file(missing, str(tmp_path / "saved" / "model.safetensors"))
    with pytest.raises(RuntimeError, match="unet.final_conv.1.bias"):
        SAM2DiffusionPolicy.from_pretrained(tmp_path / "saved")
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_reloading_another_policy_type_is_refused(tmp_path: Path) -> None:
    DiffusionConfig(device="cpu").save_pretrained(tmp_path)
    with pytest.raises(TypeError, match="holds a DiffusionConfig"):
        SAM2DiffusionPolicy.from_pretrained(tmp_path)
