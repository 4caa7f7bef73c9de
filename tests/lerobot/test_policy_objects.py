"""Object tokens in ``sam2_diffusion``: dataset masks in training (never normalised, never state), the
policy's own tracker at inference (one encoder pass per frame, masks equal to a standalone
StreamingPredictor), strict reload, bad inputs. LeRobot 0.6 venv only."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

lerobot = pytest.importorskip(
    "lerobot", reason="LeRobot 0.6 is not installed here (it needs Python >= 3.12); .ci/lerobot.sh runs these tests"
)
import json  # noqa: E402

import torch  # noqa: E402
from lerobot.configs import FeatureType, PolicyFeature  # noqa: E402
from lerobot.policies.factory import make_pre_post_processors  # noqa: E402
from lerobot.processor import PolicyProcessorPipeline  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import Sam2VideoModel  # noqa: E402

from sam2_encoder.lerobot import SAM2DiffusionConfig, SAM2DiffusionPolicy  # noqa: E402
from sam2_encoder.scene import synthetic_scene  # noqa: E402
from sam2_encoder.streaming import StreamingPredictor  # noqa: E402

TOP, WRIST = "observation.images.top", "observation.images.wrist"
MASKS = "observation.masks.top"
H, W = 48, 64
PROMPTS = {TOP: {1: {"points": [[20, 20]], "labels": [1]}, 2: {"box": [30, 10, 60, 40]}}}


def make_config(checkpoint: Path | None = None, cameras=(TOP,), **overrides) -> SAM2DiffusionConfig:
    """Tiny policy: 48x64 cameras, masks (2, 48, 64) for the top camera, 2-d state and action."""
    features = {key: PolicyFeature(FeatureType.VISUAL, (3, H, W)) for key in cameras}
    features[MASKS] = PolicyFeature(FeatureType.STATE, (2, H, W))  # what dataset_to_policy_features gives
    features["observation.state"] = PolicyFeature(FeatureType.STATE, (2,))
    options = dict(
        device="cpu",
        input_features=features,
        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
        sam2_checkpoint=None if checkpoint is None else str(checkpoint),
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
        object_masks={TOP: MASKS},
        num_objects=2,
        object_token_dim=8,
        object_prompts=PROMPTS,
    )
    options.update(overrides)
    return SAM2DiffusionConfig(**options)


def make_policy(checkpoint: Path | None = None, **overrides) -> SAM2DiffusionPolicy:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*has no checkpoint.*")
        return SAM2DiffusionPolicy(make_config(checkpoint, **overrides))


def video(n: int, seed: int = 1) -> list[torch.Tensor]:
    """``n`` frames (H, W, 3) uint8 of a scene panning by one pixel per frame."""
    base = synthetic_scene(H, W + n, seed=seed)
    return [torch.from_numpy(base[:, i : i + W].copy()) for i in range(n)]


def observation(frame: torch.Tensor, step: int, **extra) -> dict[str, torch.Tensor]:
    """A preprocessed LeRobot observation: the camera as float [0, 1] (B, 3, H, W), a state."""
    obs = {TOP: frame.permute(2, 0, 1)[None].float() / 255, "observation.state": torch.full((1, 2), 0.1 * step)}
    obs.update(extra)
    return obs


def training_batch(batch: int = 3, steps: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {
        TOP: torch.rand(batch, steps, 3, H, W, generator=g),
        MASKS: torch.rand(batch, steps, 2, H, W, generator=g) > 0.6,  # bool, as LeRobot loads them
        "observation.state": torch.rand(batch, steps, 2, generator=g),
        "action": torch.rand(batch, 8, 2, generator=g) * 2 - 1,
        "action_is_pad": torch.zeros(batch, 8, dtype=torch.bool),
    }


def newest_masks(policy: SAM2DiffusionPolicy) -> torch.Tensor:
    """``(B, K, h, w)``: the tracked masks of each row's newest frame (the encoder's rows are b * n_obs_steps + t)."""
    masks = policy.encoder.tracked_masks[TOP]
    return masks.reshape(-1, policy.config.n_obs_steps, *masks.shape[1:])[:, -1]


def trunk_calls(policy: SAM2DiffusionPolicy) -> list[int]:
    calls: list[int] = []
    embed = policy.encoder.encoder.vision_encoder.backbone.patch_embed
    embed.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
    return calls


# ------------------------------------------------------------------------------------------------
# training from dataset masks
# ------------------------------------------------------------------------------------------------


def test_training_step_with_dataset_masks() -> None:
    policy = make_policy()
    assert policy.low_dim_keys == ["observation.state"], "masks are never robot state"
    readout, tokens, state = 2 * 8, 2 * 8, 2
    assert policy.global_cond_dim == 2 * (readout + tokens + state)
    policy.train()
    batch = training_batch()
    batch[MASKS][0, :, 1] = False  # object 2 absent in the first sample: its token is the learned one
    loss, _ = policy.forward(batch)
    loss.backward()
    assert torch.isfinite(loss)
    head = policy.encoder.head_for(TOP)
    token_grads = [p.grad for name, p in head.named_parameters() if "object" in name or "absent" in name]
    assert token_grads and all(g is not None and g.abs().sum() > 0 for g in token_grads)
    # the masks matter: other masks give another condition
    with torch.no_grad():
        obs = policy._stack_steps(batch)
        flipped = dict(obs, **{MASKS: ~obs[MASKS]})
        assert not torch.equal(policy._global_cond(obs), policy._global_cond(flipped))
    trainable = {id(p) for g in policy.get_optim_params() for p in g["params"]}
    assert not any(id(p) in trainable for p in policy.tracker.parameters()), "the tracker is never trained"


def test_mask_features_pass_the_processors_untouched_also_after_reload(tmp_path: Path) -> None:
    cfg = make_config()
    stats = {
        "observation.state": {"min": torch.tensor([-2.0, 0.0]), "max": torch.tensor([2.0, 4.0])},
        MASKS: {"min": torch.zeros(64), "max": torch.ones(64), "mean": torch.full((64,), 0.3)},  # LeRobot's stats
        "action": {"min": torch.tensor([-1.0, -1.0]), "max": torch.tensor([1.0, 1.0])},
    }
    pre, _post = make_pre_post_processors(cfg, dataset_stats=stats)
    masks = torch.rand(1, 2, H, W) > 0.5
    obs = observation(video(1)[0], 0, **{MASKS: masks})
    obs["observation.state"] = torch.tensor([[0.0, 1.0]])

    def check(pipeline) -> None:
        out = pipeline(dict(obs))
        assert torch.equal(out[MASKS], masks) and out[MASKS].dtype == torch.bool
        assert torch.allclose(out["observation.state"], torch.tensor([[0.0, -0.5]]))

    check(pre)
    pre.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "policy_preprocessor.json").read_text())
    norm = next(s for s in saved["steps"] if s["registry_name"] == "normalizer_processor")["config"]
    assert MASKS not in norm["features"] and MASKS not in norm["normalize_observation_keys"]
    assert "observation.state" in norm["normalize_observation_keys"]
    check(PolicyProcessorPipeline.from_pretrained(tmp_path, config_filename="policy_preprocessor.json"))
    # lerobot-train's fine-tuning overrides put every input feature (masks too) back into the normaliser
    overrides = {
        "normalizer_processor": {
            "features": {**cfg.input_features, **cfg.output_features},
            "norm_map": cfg.normalization_mapping,
            "stats": stats,
        }
    }
    check(
        PolicyProcessorPipeline.from_pretrained(
            tmp_path, config_filename="policy_preprocessor.json", overrides=overrides
        )
    )


# ------------------------------------------------------------------------------------------------
# inference: the policy tracks the objects itself
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cameras", [(TOP,), (TOP, WRIST)], ids=["one_camera", "two_cameras_one_tracked"])
def test_tracker_path_encodes_each_frame_once_and_masks_equal_a_standalone_predictor(
    present_checkpoint: Path, cameras: tuple[str, ...]
) -> None:
    policy = make_policy(present_checkpoint, cameras=cameras, n_action_steps=1).eval()
    reference = Sam2VideoModel(policy.tracker.model.config)
    reference.load_state_dict(policy.tracker.model.state_dict())
    standalone = StreamingPredictor("sam2.1_hiera_tiny", image_size=64, model=reference)
    given = make_policy(present_checkpoint, cameras=cameras, n_action_steps=1).eval()  # masks in the batch
    given.load_state_dict(policy.state_dict())
    calls = trunk_calls(policy)
    frames, wrist = video(6), video(6, seed=2)
    seen = False
    for t, frame in enumerate(frames):
        noise = torch.randn(1, 8, 2, generator=torch.Generator().manual_seed(t))
        obs = observation(frame, t)
        if WRIST in cameras:  # an untracked camera: encoded in the same pass
            obs[WRIST] = wrist[t].permute(2, 0, 1)[None].float() / 255
        torch.manual_seed(t)  # DDPM's denoising steps draw from the global generator
        action = policy.select_action(dict(obs), noise=noise)
        masks = newest_masks(policy)
        if t == 0:
            standalone.add_prompt(frame.numpy(), obj_id=1, **PROMPTS[TOP][1])
            res = standalone.add_prompt(None, obj_id=2, **PROMPTS[TOP][2])
        else:
            res = standalone.track(frame.numpy())
        assert torch.equal(masks[0], torch.stack([res.mask(1), res.mask(2)])), t
        seen |= bool(masks.any())
        # the same actions as the policy encoding the frames itself with these masks given
        torch.manual_seed(t)
        assert torch.equal(action, given.select_action(dict(obs, **{MASKS: masks}), noise=noise)), t
    assert seen, "objects are present: the comparison is not of empty masks"
    assert calls == [len(cameras)] * len(frames), "one trunk pass per step (each camera's frame once), shared"


def test_reset_restarts_the_streams_and_prompts_can_be_set_per_row(present_checkpoint: Path) -> None:
    policy = make_policy(present_checkpoint, object_prompts={}).eval()
    frames = video(3)
    with pytest.raises(ValueError, match=r"no object prompts for stream 0"):
        policy.select_action(observation(frames[0], 0))
    policy.reset()
    policy.set_object_prompts(PROMPTS)
    policy.set_object_prompts({TOP: {5: {"box": [0, 0, 30, 30]}, 9: {"points": [[50, 40]]}}}, row=1)
    two = {k: torch.cat([v, v]) for k, v in observation(frames[0], 0).items()}
    policy.select_action(two)
    first = newest_masks(policy)
    assert first.shape == (2, 2, H, W) and not torch.equal(first[0], first[1]), "each row has its own objects"
    policy.select_action({k: torch.cat([v, v]) for k, v in observation(frames[1], 1).items()})
    policy.reset()
    policy.select_action(two)
    assert torch.equal(newest_masks(policy), first), "after reset the first frame is prompted again"


def test_strict_reload_tracks_like_the_saved_policy(present_checkpoint: Path, tmp_path: Path) -> None:
    import shutil

    ckpt = tmp_path / "sam2.1_hiera_tiny.safetensors"
    shutil.copy(present_checkpoint, ckpt)
    policy = make_policy(ckpt).eval()
    policy.save_pretrained(tmp_path / "model")
    ckpt.unlink()  # the reload reads model.safetensors only
    back = SAM2DiffusionPolicy.from_pretrained(tmp_path / "model")
    saved = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert any(k.startswith("encoder.tracker.parts.memory_attention.") for k in saved), "tracker weights are saved"
    assert set(saved) == set(back.state_dict())
    for key, value in back.state_dict().items():
        assert torch.equal(saved[key], value), key
    assert back.config.object_prompts == {TOP: {"1": PROMPTS[TOP][1], "2": PROMPTS[TOP][2]}}  # JSON keys
    for t, frame in enumerate(video(3)):
        noise = torch.randn(1, 8, 2, generator=torch.Generator().manual_seed(t))
        torch.manual_seed(t)  # DDPM's denoising steps draw from the global generator
        action = policy.select_action(observation(frame, t), noise)
        torch.manual_seed(t)
        assert torch.equal(action, back.select_action(observation(frame, t), noise))
        assert torch.equal(newest_masks(policy), newest_masks(back))


# ------------------------------------------------------------------------------------------------
# bad inputs: one clear error each
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"object_masks": {"observation.images.side": MASKS}}, r"object_masks names camera 'observation.images.side'"),
        ({"object_masks": {TOP: "observation.masks.side"}}, r"'observation.masks.side' is not an input feature"),
        ({"num_objects": 3, "object_prompts": {}}, r"has shape \(2, 48, 64\); expected \(3, 48, 64\)"),
        ({"object_masks": {TOP: TOP}}, "must be distinct from each other, from the cameras"),
        (
            {"object_masks": {TOP: "observation.masks.image"}},
            r"must not contain 'image', got \['observation.masks.image'\]",
        ),
        ({"object_level": "s8"}, r"object_level='s8' with fuse='pool' must be the coarsest of levels \['s16'\]"),
        ({"object_tokens": "prepend"}, "object_tokens must be 'append' or 'replace', got 'prepend'"),
        ({"object_absent": "none"}, "object_absent must be 'learned' or 'zero', got 'none'"),
        ({"object_token_dim": 0}, "object_token_dim must be a whole number >= 1, got 0"),
        ({"num_objects": 0}, "num_objects must be a whole number >= 1, got 0"),
        ({"object_masks": {}}, "object_prompts are set but object_masks is empty"),
        ({"freeze": False}, "own object tracker .* needs freeze=true"),
        ({"object_tracker": False}, r"own object tracker .* is off \(object_tracker=false\)"),
        ({"object_prompts": {TOP: {1: {"points": [[20, 20]]}}}}, r"prompts 1 objects \[1\]; expected num_objects=2"),
        ({"object_prompts": {TOP: {1: {"points": [[65, 20]]}, 2: {"box": [0, 0, 4, 4]}}}}, r"outside the 64x48"),
        ({"object_prompts": {WRIST: PROMPTS[TOP]}}, r"names cameras \['observation.images.wrist'\] that get no"),
    ],
)
def test_bad_object_options_give_one_clear_error(options, message) -> None:
    with pytest.raises(ValueError, match=message):
        cfg = make_config(**options)
        cfg.validate_features()


def test_bad_object_inputs_give_one_clear_error() -> None:
    policy = make_policy()
    batch = training_batch()
    del batch[MASKS]
    with pytest.raises(KeyError, match=r"missing 'observation.masks.top', the object masks of camera .*dataset"):
        policy.forward(batch)
    batch = training_batch()
    batch[MASKS] = batch[MASKS][..., :10]
    with pytest.raises(
        ValueError,
        match=r"masks of camera 'observation.images.top'\) has shape \(3, 2, 2, 48, 10\); expected \(3, 2, 2, 48, 64\)",
    ):
        policy.forward(batch)
    batch = training_batch()
    batch[MASKS] = batch[MASKS].float() * 2 - 1  # what min-max normalisation would have made of them
    with pytest.raises(ValueError, match=r"object masks\) must lie in \[0, 1\]; found -1"):
        policy.forward(batch)
    policy.eval()
    frame = video(1)[0]
    policy.select_action(observation(frame, 0))
    with pytest.raises(ValueError, match="started coming with the batch mid-episode; call policy.reset"):
        policy.select_action(observation(frame, 1, **{MASKS: torch.zeros(1, 2, H, W, dtype=torch.bool)}))
    with pytest.raises(ValueError, match=r"prompts 1 objects \[1\]; expected num_objects=2"):
        policy.set_object_prompts({TOP: {1: {"points": [[1, 1]]}}})
    finetuned = make_policy(freeze=False, object_prompts={})
    with pytest.raises(ValueError, match="set_object_prompts: .*needs freeze=true"):
        finetuned.set_object_prompts(PROMPTS)
    with pytest.raises(ValueError, match="select_action: .*needs freeze=true"):
        finetuned.eval().select_action(observation(frame, 0))
    assert finetuned.tracker is None and not any("tracker." in k for k in finetuned.state_dict())
    untracked = make_policy(object_tracker=False, object_prompts={})
    assert untracked.tracker is None and not any("tracker." in k for k in untracked.state_dict())
    with pytest.raises(ValueError, match=r"object tracker .* is off \(object_tracker=false\)"):
        untracked.eval().select_action(observation(frame, 0))
    plain = make_policy(object_masks={}, object_prompts={})
    with pytest.raises(ValueError, match="has no object tokens"):
        plain.set_object_prompts(PROMPTS)


def test_tracking_with_a_crop_moves_prompts_and_masks_through_the_camera_view(present_checkpoint: Path) -> None:
    """With resize_shape + crop_ratio the policy tracks on the view its trunk sees (the centre crop at inference),
    as DP's obs encoder does: prompts given in camera pixels are moved into the crop, masks are the crop's and
    equal a standalone predictor's on the cropped frames; given back padded to the camera frame, they give the
    same actions."""
    policy = make_policy(present_checkpoint, resize_shape=(H, W), crop_ratio=0.875, n_action_steps=1).eval()
    crop = policy.config.crop_shape
    assert crop == (42, 56)
    top, left = (H - crop[0]) // 2, (W - crop[1]) // 2
    given = make_policy(present_checkpoint, resize_shape=(H, W), crop_ratio=0.875, n_action_steps=1).eval()
    given.load_state_dict(policy.state_dict())
    reference = Sam2VideoModel(policy.tracker.model.config)
    reference.load_state_dict(policy.tracker.model.state_dict())
    standalone = StreamingPredictor("sam2.1_hiera_tiny", image_size=64, model=reference)
    moved = {
        1: {"points": [[20 - left, 20 - top]], "labels": [1]},
        2: {"box": [30 - left, 10 - top, 60 - left, 40 - top]},
    }
    for t, frame in enumerate(video(4)):
        cropped = frame[top : top + crop[0], left : left + crop[1]].contiguous().numpy()
        noise = torch.randn(1, 8, 2, generator=torch.Generator().manual_seed(t))
        torch.manual_seed(t)
        action = policy.select_action(observation(frame, t), noise=noise)
        masks = newest_masks(policy)
        if t == 0:
            standalone.add_prompt(cropped, obj_id=1, **moved[1])
            res = standalone.add_prompt(None, obj_id=2, **moved[2])
        else:
            res = standalone.track(cropped)
        assert masks.shape == (1, 2, *crop)
        assert torch.equal(masks[0], torch.stack([res.mask(1), res.mask(2)])), t
        full = torch.zeros(1, 2, H, W, dtype=torch.bool)
        full[:, :, top : top + crop[0], left : left + crop[1]] = masks
        torch.manual_seed(t)
        expected = given.select_action(observation(frame, t, **{MASKS: full}), noise=noise)
        assert torch.allclose(action, expected, rtol=0, atol=1e-5), t
    outside = {TOP: {1: {"points": [[2, 20]]}, 2: {"box": [30, 10, 60, 40]}}}
    with pytest.raises(ValueError, match=r"outside the part of the frame the encoder sees.*x must be in \[4, 60\]"):
        policy.set_object_prompts(outside)
