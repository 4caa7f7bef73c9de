"""SAM2ObsEncoder against Diffusion Policy's contract (see shared/reference/dp_contract.md)."""

from __future__ import annotations

import copy
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sam2_encoder import SAM2ObsEncoder

DP_STUB = Path(__file__).parent / "dp_stub_config"
SHAPE_META = {
    "obs": {
        "camera_1": {"shape": [3, 48, 64], "type": "rgb"},
        "camera_0": {"shape": [3, 40, 40], "type": "rgb"},
        "robot_eef_pose": {"shape": [6]},
        "gripper": {"shape": [1], "type": "low_dim"},
    },
    "action": {"shape": [7]},
}


def make(**kwargs) -> SAM2ObsEncoder:
    kwargs.setdefault("image_size", 64)
    return SAM2ObsEncoder(SHAPE_META, **kwargs)


def dp_batch(n: int = 6, seed: int = 0, shape_meta=SHAPE_META) -> dict[str, torch.Tensor]:
    """What DP's policy passes: normaliser outputs, images and low-dim in [-1, 1], N = B * To rows."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand(n, *v["shape"], generator=g) * 2 - 1 for k, v in shape_meta["obs"].items()}


@pytest.fixture(scope="module")
def encoder() -> SAM2ObsEncoder:
    return make().eval()


def test_output_layout_matches_dp(encoder: SAM2ObsEncoder) -> None:
    obs = dp_batch()
    out = encoder(obs)
    assert encoder.output_shape() == (2 * 64 + 6 + 1,)
    assert out.shape == (6, encoder.output_shape()[0])
    assert encoder.rgb_keys == ["camera_0", "camera_1"] and encoder.low_dim_keys == ["gripper", "robot_eef_pose"]
    # rgb features (sorted keys) then the raw low-dim values (sorted keys)
    torch.testing.assert_close(out[:, 128:], torch.cat([obs["gripper"], obs["robot_eef_pose"]], dim=1))
    # rows keep their order and do not interact: each row alone gives the same result
    for i in (0, 5):
        single = encoder({k: v[i : i + 1] for k, v in obs.items()})
        torch.testing.assert_close(single[0], out[i], atol=1e-5, rtol=1e-5)
    # camera_0's head on camera_0's image only: changing camera_1 leaves camera_0's block unchanged
    obs2 = dict(obs, camera_1=-obs["camera_1"])
    torch.testing.assert_close(encoder(obs2)[:, :64], out[:, :64])


def test_one_trunk_pass_for_all_cameras_and_steps(encoder: SAM2ObsEncoder) -> None:
    calls = []
    handle = encoder.encoder.vision_encoder.backbone.patch_embed.register_forward_hook(
        lambda m, i, o: calls.append(i[0].shape[0])
    )
    try:
        encoder(dp_batch(n=8))
    finally:
        handle.remove()
    assert calls == [16]


def test_input_range_is_converted_exactly(encoder: SAM2ObsEncoder) -> None:
    obs = dp_batch(n=2)
    unit = make(input_range=(0, 1)).eval()
    unit.load_state_dict(encoder.state_dict())
    obs01 = {k: (v + 1) / 2 if k.startswith("camera") else v for k, v in obs.items()}
    torch.testing.assert_close(unit(obs01), encoder(obs), atol=1e-5, rtol=1e-5)


def test_un_normalised_images_warn_once_and_normalised_ones_never() -> None:
    """Every camera's whole batch in [0, 1] while DP's [-1, 1] is expected: one warning, naming the cameras.

    A normalised batch (values below 0) ends the check for good; input_range [0, 1] never checks.
    """
    obs = dp_batch(n=2)
    unit = {k: (v + 1) / 2 if k.startswith("camera") else v for k, v in obs.items()}
    mistaken, wired, unit_range = make().eval(), make().eval(), make(input_range=(0, 1)).eval()
    with pytest.warns(UserWarning, match=r"images \['camera_0', 'camera_1'\] lie in \[0, 1\], but input_range is"):
        mistaken(unit)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mistaken(unit)  # once only
        wired(obs)
        wired(unit)  # a normalised batch was seen: no false alarm later (e.g. a bright scene)
        unit_range(unit)


def test_extra_leading_dims(encoder: SAM2ObsEncoder) -> None:
    obs = dp_batch(n=6)
    out = encoder(obs)
    bt = encoder({k: v.reshape(3, 2, *v.shape[1:]) for k, v in obs.items()})
    assert bt.shape == (3, 2, out.shape[-1])
    torch.testing.assert_close(bt.reshape(6, -1), out, atol=1e-5, rtol=1e-5)


def test_frozen_trunk_stays_eval_and_heads_train() -> None:
    enc = make()
    enc.train()
    assert enc.heads.training and not enc.encoder.training
    assert not any(m.training for m in enc.encoder.modules())
    assert not any(p.requires_grad for p in enc.encoder.parameters())
    out = enc(dp_batch(n=2))
    out.sum().backward()
    assert all(p.grad is not None for p in enc.heads.parameters() if p.requires_grad)
    groups = enc.param_groups(lr=1e-4)
    assert [g["name"] for g in groups] == ["heads"]


def test_deepcopy_ema_lockstep_pickle_and_strict_reload() -> None:
    enc = make()
    obs = dp_batch(n=2)
    n_modules = len(list(enc.modules()))
    ema = copy.deepcopy(enc)
    enc(obs)
    assert len(list(enc.modules())) == n_modules, "no submodule may be created lazily in forward"
    # DP's EMAModel walks modules() of both copies in lockstep
    for m, m_ema in zip(enc.modules(), ema.modules(), strict=True):
        assert type(m) is type(m_ema)
        for p, p_ema in zip(m.parameters(recurse=False), m_ema.parameters(recurse=False), strict=True):
            p_ema.data.mul_(0.9).add_(p.data, alpha=0.1)
    clone = pickle.loads(pickle.dumps(enc))
    enc.eval()
    clone.eval()
    torch.testing.assert_close(clone(obs), enc(obs))
    assert list(enc.state_dict()) == list(make().state_dict())


def test_hydra_plugin_finds_presets_and_dp_workspace_chain(tmp_path: Path) -> None:
    """Compose our workspace over DP's (stub) config dir exactly as train.py would, then reload."""
    with initialize_config_dir(config_dir=str(DP_STUB), version_base=None):
        cfg = compose(
            config_name="train_diffusion_unet_sam2_workspace",
            overrides=["policy.obs_encoder.image_size=64", "sam2_obs_encoder@policy.obs_encoder=sam2_hiera_tiny"],
        )
    node = cfg.policy.obs_encoder
    assert node._target_ == "sam2_encoder.SAM2ObsEncoder"
    assert node.variant == "sam2_hiera_tiny" and node.rgb_model is None
    assert list(node.crop_shape) == [76, 76] and cfg.dataloader.batch_size == 64
    assert cfg.training.freeze_encoder is False
    # train.py resolves and instantiates; DP's checkpoint stores the cfg and re-instantiates at reload
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    enc = instantiate(resolved.policy.obs_encoder)
    assert enc.rgb_keys == ["image"] and enc.output_shape() == (64 + 2,)
    enc.train()
    obs = dp_batch(n=4, shape_meta=OmegaConf.to_container(resolved.shape_meta))
    enc(obs).sum().backward()
    path = tmp_path / "ckpt.pt"
    torch.save({"cfg": resolved, "state_dicts": {"model": enc.state_dict()}}, path)
    saved = torch.load(path, weights_only=False)
    reloaded = instantiate(saved["cfg"].policy.obs_encoder)
    reloaded.load_state_dict(saved["state_dicts"]["model"], strict=True)
    enc.eval()
    reloaded.eval()
    torch.testing.assert_close(reloaded(obs), enc(obs))


def test_real_robot_workspace_composes() -> None:
    with initialize_config_dir(config_dir=str(DP_STUB), version_base=None):
        cfg = compose(
            config_name="train_diffusion_unet_real_sam2_workspace", overrides=["policy.obs_encoder.image_size=64"]
        )
    node = cfg.policy.obs_encoder
    assert node.resize_shape is None and list(node.crop_shape) == [216, 288] and node.rgb_model is None
    enc = instantiate(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)).policy.obs_encoder).eval()
    assert enc.rgb_keys == ["camera_0", "camera_1"] and enc.output_shape() == (2 * 64 + 2,)
    obs = {
        "camera_0": torch.rand(2, 3, 240, 320) * 2 - 1,
        "camera_1": torch.rand(2, 3, 240, 320) * 2 - 1,
        "robot_eef_pose": torch.zeros(2, 2),
    }
    assert enc(obs).shape == (2, 130)


def test_presets_for_every_variant() -> None:
    from sam2_encoder.variants import VARIANTS

    with initialize_config_dir(config_dir=str(DP_STUB), version_base=None):
        for name in VARIANTS:
            cfg = compose(config_name=f"sam2_obs_encoder/{name}", overrides=["+shape_meta={obs: {}}"])
            assert cfg.sam2_obs_encoder.variant == name


@pytest.mark.parametrize(
    ("obs_change", "error", "match"),
    [
        (lambda o: o.pop("camera_0"), KeyError, r"missing 'camera_0'; expected keys \['camera_0'"),
        (
            lambda o: o.update(camera_0=o["camera_0"][:, :, :20]),
            ValueError,
            r"obs_dict\['camera_0'\] has shape \(2, 3, 20, 40\); expected \(N, 3, 40, 40\)",
        ),
        (
            lambda o: o.update(camera_0=((o["camera_0"] + 1) * 127).to(torch.uint8)),
            TypeError,
            r"obs_dict\['camera_0'\] is torch.uint8; expected float images in input_range \(-1.0, 1.0\)",
        ),
        (
            lambda o: o.update(camera_1=o["camera_1"] * 3),
            ValueError,
            r"obs_dict\['camera_1'\]: images have values in \[-\d.*outside input_range \(-1.0, 1.0\)",
        ),
        (lambda o: o.update(gripper=o["gripper"][:1]), ValueError, r"batch dims \(1,\), other keys have \(2,\)"),
        (
            lambda o: o.update(camera_0=(o["camera_0"] + 1) * 127.5),
            ValueError,
            r"outside input_range \(-1.0, 1.0\); scale 0..255 images to input_range \(-1.0, 1.0\)$",
        ),
        (
            lambda o: o["robot_eef_pose"].__setitem__((1, 4), float("nan")),
            ValueError,
            r"obs_dict\['robot_eef_pose'\] \(low-dim input\) contains NaN or inf: row 1, entry 4 is nan",
        ),
        (
            lambda o: o["gripper"].__setitem__((0, 0), float("-inf")),
            ValueError,
            r"obs_dict\['gripper'\] \(low-dim input\) contains NaN or inf: row 0, entry 0 is -inf",
        ),
    ],
)
def test_input_validation(encoder: SAM2ObsEncoder, obs_change, error, match) -> None:
    obs = dp_batch(n=2)
    obs_change(obs)
    with pytest.raises(error, match=match):
        encoder(obs)


def test_bad_construction_arguments() -> None:
    with pytest.raises(ValueError, match=r"rgb shape must be \[3, H, W\], got \[1, 8, 8\]"):
        SAM2ObsEncoder({"obs": {"d": {"shape": [1, 8, 8], "type": "rgb"}}}, image_size=64)
    with pytest.raises(ValueError, match="no rgb key"):
        SAM2ObsEncoder({"obs": {"x": {"shape": [2]}}}, image_size=64)
    with pytest.raises(ValueError, match=r"levels must be a non-empty subset"):
        make(levels=["s32"])
    with pytest.raises(ValueError, match="unknown pool 'max'"):
        make(pool="max")
    with pytest.raises(ValueError, match="finetune='lora' needs freeze=False"):
        make(finetune="lora")
    with pytest.raises(ValueError, match=r"crop_shape \[50, 50\] is larger than camera 'camera_0' \(40x40\)"):
        make(crop_shape=[50, 50])


def test_crops_random_in_train_centre_otherwise() -> None:
    enc = make(crop_shape=[32, 32])
    x = torch.arange(2 * 3 * 40 * 40, dtype=torch.float32).reshape(2, 3, 40, 40)
    enc.eval()
    assert torch.equal(enc._crop(x), x[:, :, 4:36, 4:36])
    enc.train()
    torch.manual_seed(0)
    crops = enc._crop(x)
    assert crops.shape == (2, 3, 32, 32)
    for n in range(2):  # each crop is a window of its own image
        top = int((crops[n, 0, 0, 0] - x[n, 0, 0, 0]) // 40)
        left = int((crops[n, 0, 0, 0] - x[n, 0, 0, 0]) % 40)
        assert torch.equal(crops[n], x[n, :, top : top + 32, left : left + 32])
    no_random = make(crop_shape=[32, 32], random_crop=False).train()
    assert torch.equal(no_random._crop(x), x[:, :, 4:36, 4:36]), "DP skips the crop here; we centre-crop"


@pytest.mark.parametrize(
    ("kwargs", "dim"),
    [
        ({"pool": "attention", "feature_dim": 32}, 32),
        ({"pool": "avg"}, 256),
        ({"pool": "avg", "feature_dim": 16}, 16),
        ({"pool": "conv", "feature_dim": 24}, 24),
        ({"pool": "spatial_softmax", "feature_dim": 10}, 10),
        ({"pool": "spatial_softmax", "pool_kwargs": {"num_keypoints": 8}}, 16),
        ({"levels": ["s4", "s8", "s16"], "pool": "avg"}, 32 + 64 + 256),
    ],
)
def test_pools_and_levels(kwargs, dim: int) -> None:
    enc = make(**kwargs).eval()
    assert enc.output_shape() == (2 * dim + 7,)
    assert enc(dp_batch(n=2)).shape == (2, 2 * dim + 7)


def test_shared_heads() -> None:
    enc = make(share_heads=True).eval()
    assert list(enc.heads) == ["shared"] and enc.head_for("camera_0") is enc.head_for("camera_1")
    assert enc(dp_batch(n=2)).shape == (2, 135)


def test_finetune_modes() -> None:
    full = make(freeze=False)
    assert all(p.requires_grad for p in full.encoder.parameters())
    full.train()
    assert full.encoder.training
    groups = full.param_groups(lr=1e-3)
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-4)]

    last = make(freeze=False, finetune="last_blocks", finetune_blocks=2)
    blocks = last.encoder.vision_encoder.backbone.blocks
    assert [any(p.requires_grad for p in b.parameters()) for b in blocks] == [False] * 10 + [True] * 2
    last(dp_batch(n=2)).sum().backward()
    assert blocks[-1].mlp.proj_in.weight.grad is not None and blocks[0].mlp.proj_in.weight.grad is None

    frozen = make().eval()
    lora = make(freeze=False, finetune="lora", lora_rank=4).eval()
    trainable = {n for n, p in lora.encoder.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    obs = dp_batch(n=2)
    torch.testing.assert_close(lora(obs), frozen(obs)), "LoRA starts as the identity update"
    lora.train()
    lora(obs).sum().backward()
    assert lora.encoder.vision_encoder.backbone.blocks[0].attn.qkv.lora_b.grad is not None
    with pytest.raises(ValueError, match="finetune_blocks must be in 1..12"):
        make(freeze=False, finetune="last_blocks", finetune_blocks=20)
    with pytest.raises(ValueError, match="unknown finetune mode 'half'"):
        make(freeze=False, finetune="half")


def test_bf16_autocast(encoder: SAM2ObsEncoder) -> None:
    obs = dp_batch(n=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = encoder(obs)
    assert out.shape == (2, 135) and torch.isfinite(out).all()


def test_dp_block_with_only_target_switched_is_accepted() -> None:
    """Users who only change _target_ in DP's block pass DP's sibling keys through."""
    enc = SAM2ObsEncoder(
        SHAPE_META,
        image_size=64,
        resize_shape=[40, 40],
        crop_shape=[36, 36],
        random_crop=True,
        use_group_norm=True,
        share_rgb_model=False,
        imagenet_norm=True,
    )
    assert enc(dp_batch(n=2)).shape == (2, 135)
    with pytest.warns(UserWarning, match="ignores rgb_model"):
        SAM2ObsEncoder(SHAPE_META, image_size=64, rgb_model=torch.nn.Identity())


def test_frame_reuse_encodes_each_frame_once_with_identical_outputs() -> None:
    """A 10 Hz control loop with To=2: consecutive calls share all but the newest frame per camera."""
    enc = make().eval()
    plain = make(reuse_frames=False).eval()
    plain.load_state_dict(enc.state_dict())
    stream = dp_batch(n=3 * 7, seed=4)  # 3 parallel envs x 7 time steps

    def step(t: int) -> dict[str, torch.Tensor]:  # (B * To) rows, batch-major, frames t-1 and t
        return {k: v.reshape(3, 7, *v.shape[1:])[:, t - 1 : t + 1].reshape(6, *v.shape[1:]) for k, v in stream.items()}

    rows = []
    hook = enc.encoder.vision_encoder.backbone.patch_embed.register_forward_hook(lambda m, i, o: rows.append(len(i[0])))
    try:
        with torch.no_grad():
            for t in range(1, 7):
                assert torch.equal(enc(step(t)), plain(step(t))), t
            assert rows == [12] + [6] * 5, "first call: 2 cameras x 6 rows; then only the 3 newest frames per camera"
            rows.clear()
            same = step(6)
            enc(same)
            assert rows == [], "a repeated observation is not encoded again"
        enc(step(3))  # autograd on: no reuse
        enc.train()
        with torch.no_grad():
            enc(step(4))  # train mode: no reuse
    finally:
        hook.remove()
    assert rows == [12, 12]
    assert not copy.deepcopy(enc)._memo.frames, "copies start with an empty memory"


@pytest.mark.parametrize(
    "change",
    [
        "load_state_dict",
        "heads in place",
        "trunk in place",
        "optimizer step",
        "replaced parameter",
        "replaced module",
        "buffer",
    ],
)
def test_frame_memo_is_tied_to_the_weights(change: str) -> None:
    """After any weight change, the same observation gives the NEW weights' output, not the remembered one."""
    enc = make(image_size=32).eval()
    other = make(image_size=32, seed=1).eval()
    obs = dp_batch(n=2, seed=5)
    with torch.no_grad():
        before = enc(obs)
        assert torch.equal(enc(obs), before) and enc._memo.frames, "remembered"
        if change == "load_state_dict":
            enc.load_state_dict(other.state_dict())
        elif change == "heads in place":
            for p in enc.heads.parameters():
                p.add_(1)
        elif change == "trunk in place":
            enc.encoder.vision_encoder.backbone.patch_embed.projection.weight.mul_(1.5)
        elif change == "replaced parameter":
            head = enc.head_for("camera_0")
            name, param = next(iter(head.named_parameters()))
            module = head.get_submodule(name.rpartition(".")[0]) if "." in name else head
            setattr(module, name.rpartition(".")[2], torch.nn.Parameter(param.detach() + 1))
        elif change == "replaced module":  # what LoRA does to a Linear: the module, not its tensors, changes
            enc.heads["camera_0"] = copy.deepcopy(other.heads["camera_0"])
    if change == "optimizer step":
        enc.train()
        loss = enc(obs).square().sum()
        loss.backward()
        torch.optim.SGD(enc.param_groups(lr=0.5), lr=0.5).step()
        enc.eval()
        with torch.no_grad():
            enc(obs)  # remembered with the stepped weights
            for p in enc.heads.parameters():
                p.grad = None
            torch.optim.SGD(enc.param_groups(lr=0.5), lr=0.5, momentum=0.0).step()  # no grads: no change
            for p in enc.heads.parameters():
                p.add_(0.25)
    if change == "buffer":
        saved = enc.state_dict()
        buffers = [b for n, b in enc.named_buffers() if n in saved and b.is_floating_point()]
        assert buffers, "the encoder has float buffers in its state dict (the heads' temperature)"
        with torch.no_grad():
            buffers[0].add_(1)
    fresh = make(image_size=32, reuse_frames=False).eval()
    fresh.load_state_dict(enc.state_dict())
    with torch.no_grad():
        after, expected = enc(obs), fresh(obs)
    assert torch.equal(after, expected), change
    assert not torch.equal(after, before), f"{change}: the change must alter the output"


def test_frame_memo_still_reuses_while_the_weights_stay() -> None:
    enc = make(image_size=32).eval()
    obs = dp_batch(n=2, seed=6)
    rows = []
    hook = enc.encoder.vision_encoder.backbone.patch_embed.register_forward_hook(lambda m, i, o: rows.append(len(i[0])))
    try:
        with torch.no_grad():
            enc(obs)
            enc(obs)
            enc.load_state_dict(enc.state_dict())  # copies in place: the weights' versions move
            enc(obs)
            enc(obs)
    finally:
        hook.remove()
    assert rows == [4, 4], "encoded on the first call and once after load_state_dict"


def test_compiled_encoder_pass_matches_eager() -> None:
    """compile=True: torch.compile of the SAM 2 pass (static shapes) gives the eager outputs."""
    eager = make(image_size=32).eval()
    compiled = make(image_size=32, compile=True).eval()
    compiled.load_state_dict(eager.state_dict())
    obs = dp_batch(n=2)
    with torch.no_grad():
        torch.testing.assert_close(compiled(obs), eager(obs), atol=1e-4, rtol=1e-4)
    assert compiled._compiled is not None
    assert copy.deepcopy(compiled)._compiled is None, "compiled graphs are not copied into EMA models"
