"""The coarse-to-fine head: packed pyramid, exact fusion, sizes, precomputed features, memo, LoRA, reload, training."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from sam2_encoder import SAM2ObsEncoder
from sam2_encoder.camera_encoder import MultiCameraEncoder
from sam2_encoder.diffusion_policy.synthetic import (
    ReplayImageDataset,
    TinyDenoiser,
    dp_normalise,
    global_cond,
    write_replay_buffer,
)
from sam2_encoder.pooling import CoarseToFine, coarse_to_fine_shape, pack_pyramid, unpack_pyramid

SIZE = 64
CAMS = {"cam_b": (3, 40, 48), "cam_a": (3, 32, 32)}


def count_calls(module: torch.nn.Module) -> list[int]:
    calls: list[int] = []
    module.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    return calls


def batch(n: int = 3, seed: int = 0, masks: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    obs = {k: torch.rand(n, *s, generator=g) for k, s in CAMS.items()}
    obs["pos"] = torch.rand(n, 2, generator=g)
    if masks:
        obs["cam_a_masks"] = torch.rand(n, masks, 32, 32, generator=g) > 0.5
    return obs


def test_packed_pyramid_layout_and_round_trip() -> None:
    g = torch.Generator().manual_seed(0)
    s4, s8, s16 = (torch.randn(2, c, 4 * f, 3 * f, generator=g) for c, f in ((32, 4), (64, 2), (256, 1)))
    packed = pack_pyramid([s4, s8, s16])
    assert packed.shape == (2, 32 * 16 + 64 * 4 + 256, 4, 3)
    for n, c, y, x, dy, dx in [(0, 0, 0, 0, 0, 0), (1, 31, 3, 2, 3, 3), (0, 7, 2, 1, 1, 2)]:  # the documented layout
        assert packed[n, c * 16 + dy * 4 + dx, y, x] == s4[n, c, 4 * y + dy, 4 * x + dx]
    assert packed[1, 512 + 5 * 4 + 1 * 2 + 0, 3, 1] == s8[1, 5, 7, 2]
    assert torch.equal(packed[:, 768:], s16)
    levels = unpack_pyramid(packed)
    assert all(torch.equal(levels[k], v) for k, v in (("s4", s4), ("s8", s8), ("s16", s16)))
    with pytest.raises(ValueError, match=r"cannot pack a \(5, 3\) map onto a \(4, 3\) grid"):
        pack_pyramid([torch.zeros(1, 1, 5, 3), s16])
    with pytest.raises(ValueError, match=r"a packed pyramid has 1024 channels, got shape \(2, 1000, 4, 3\)"):
        unpack_pyramid(packed[:, :1000])


def layer_norm_2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    out = torch.empty_like(x)
    for i in range(x.shape[2]):
        for j in range(x.shape[3]):
            v = x[:, :, i, j]
            mean = v.mean(1, keepdim=True)
            var = ((v - mean) ** 2).mean(1, keepdim=True)
            out[:, :, i, j] = (v - mean) / torch.sqrt(var + eps) * weight + bias
    return out


def transposed_2x2(x: torch.Tensor, conv: torch.nn.ConvTranspose2d) -> torch.Tensor:
    """Stride-2, kernel-2 transposed conv by hand: each input cell paints a 2x2 block."""
    n, _, h, w = x.shape
    out = conv.bias[None, :, None, None].repeat(n, 1, 2 * h, 2 * w)
    for dy in range(2):
        for dx in range(2):
            out[:, :, dy::2, dx::2] += torch.einsum("nchw,co->nohw", x, conv.weight[:, :, dy, dx])
    return out


@pytest.mark.parametrize("stride", [8, 4])
def test_coarse_to_fine_equals_hand_computation(stride: int) -> None:
    torch.manual_seed(0)
    head = CoarseToFine(stride=stride, channels=(16, 8)).double()
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # norm weights away from 1 / 0
    s4, s8, s16 = (torch.randn(2, c, 3 * f, 2 * f, dtype=torch.float64) for c, f in ((32, 4), (64, 2), (256, 1)))
    x = transposed_2x2(s16, head.up8) + torch.nn.functional.conv2d(s8, head.lateral8.weight, head.lateral8.bias)
    x = torch.nn.functional.gelu(layer_norm_2d(x, head.norm8.weight, head.norm8.bias))
    if stride == 4:
        x = transposed_2x2(x, head.up4) + torch.nn.functional.conv2d(s4, head.lateral4.weight, head.lateral4.bias)
        x = torch.nn.functional.gelu(layer_norm_2d(x, head.norm4.weight, head.norm4.bias))
    out = head(s4, s8, s16)
    torch.testing.assert_close(out, x)
    assert out.shape[1:] == head.output_shape(3, 2) == coarse_to_fine_shape(3, 2, stride, (16, 8))


@pytest.mark.parametrize(
    "kwargs, dim",
    [
        (dict(fuse="coarse_to_fine"), 64),
        (dict(fuse="coarse_to_fine", fuse_stride=4, pool="avg"), 32),
        (dict(fuse="coarse_to_fine", fuse_stride=4, pool="attention", feature_dim=24), 24),
        (dict(fuse="coarse_to_fine", pool="conv", feature_dim=20), 20),
        (dict(fuse="coarse_to_fine", fuse_channels=(48, 16), pool="avg"), 48),
        (dict(fuse="coarse_to_fine", pool="spatial_softmax", num_keypoints=5, feature_dim=7), 7),
    ],
)
def test_output_size_is_known_without_a_forward_pass(kwargs: dict, dim: int) -> None:
    enc = MultiCameraEncoder(CAMS, {"pos": (2,)}, image_size=SIZE, **kwargs)
    assert enc.output_shape() == (2 * dim + 2,)
    assert enc.feature_shape == (1024, SIZE // 16, SIZE // 16) and enc.levels == ("s4", "s8", "s16")
    assert "fuse='coarse_to_fine'" in enc.extra_repr()
    n_modules = len(list(enc.modules()))
    out = enc(batch())
    assert out.shape == (3, 2 * dim + 2)
    assert len(list(enc.modules())) == n_modules, "no module may be created lazily"


def test_bad_coarse_to_fine_options() -> None:
    for kwargs, match in [
        (dict(fuse="upsample"), r"fuse must be 'pool' or 'coarse_to_fine', got 'upsample'"),
        (dict(fuse="coarse_to_fine", levels=["s8", "s16"]), r"reads s4, s8 and s16 itself; got levels=\['s8', 's16'\]"),
        (dict(fuse="coarse_to_fine", fuse_stride=2), r"stride must be 8 or 4, got 2"),
        (dict(fuse="coarse_to_fine", fuse_channels=(64,)), r"two positive ints \(C_8, C_4\), got \(64,\)"),
    ]:
        with pytest.raises(ValueError, match=match):
            MultiCameraEncoder(CAMS, image_size=SIZE, **kwargs)


@pytest.fixture(scope="module")
def c2f() -> MultiCameraEncoder:
    return MultiCameraEncoder(
        CAMS,
        {"pos": (2,)},
        image_size=SIZE,
        fuse="coarse_to_fine",
        fuse_stride=4,
        object_masks_key={"cam_a": "cam_a_masks"},
        num_objects=2,
        object_level="s4",
        object_token_dim=8,
    ).eval()


def test_precomputed_packed_pyramid_skips_the_trunk_with_the_same_output(c2f: MultiCameraEncoder) -> None:
    obs = batch(masks=2)
    calls = count_calls(c2f.encoder.vision_encoder.backbone.patch_embed)
    with torch.no_grad():
        out = c2f(obs)
        assert calls == [6]  # both cameras, 3 rows each, one pass
        feats = {k: c2f.fuse_levels(c2f.encoder(obs[k])) for k in CAMS}
        assert feats["cam_a"].shape == (3, *c2f.feature_shape)
        cached = c2f({**obs, **feats})
    assert calls == [6, 3, 3], "only the two direct encoder calls above ran the trunk"
    torch.testing.assert_close(cached, out, atol=1e-5, rtol=1e-5)


def test_frame_memo_with_coarse_to_fine(c2f: MultiCameraEncoder) -> None:
    plain = copy.deepcopy(c2f)
    plain.reuse_frames = False
    calls = count_calls(c2f.encoder.vision_encoder.backbone.patch_embed)
    frames = batch(n=4, seed=3, masks=2)
    with torch.no_grad():
        for t in range(3):
            obs = {k: v[t : t + 2] for k, v in frames.items()}
            torch.testing.assert_close(c2f(obs), plain(obs), atol=1e-5, rtol=1e-5)
    assert calls == [4, 2, 2], "two cameras: both frames first, then the new frame of each"


def test_lora_param_groups_strict_reload_and_ema_copy() -> None:
    kwargs = dict(
        image_size=SIZE,
        fuse="coarse_to_fine",
        object_masks_key={"cam_a": "cam_a_masks"},
        num_objects=2,
        freeze=False,
        finetune="lora",
        lora_rank=2,
        seed=3,
    )
    enc = MultiCameraEncoder(CAMS, {"pos": (2,)}, **kwargs)
    groups = {g["name"]: g for g in enc.param_groups(lr=1e-3)}
    head_params = {id(p) for p in enc.heads.parameters()}
    assert {id(p) for p in groups["heads"]["params"]} == head_params
    names = {n for n, p in enc.named_parameters() if id(p) in head_params}
    assert any(".fuse.up8." in n for n in names) and any(".objects.absent" in n for n in names)
    assert groups["trunk"]["params"] and groups["trunk"]["lr"] == pytest.approx(1e-4)
    assert not {id(p) for p in groups["trunk"]["params"]} & head_params

    obs = batch(masks=2)
    ema = copy.deepcopy(enc)
    enc(obs).sum().backward()
    assert all(p.grad is not None for p in groups["heads"]["params"] if p.requires_grad)
    for m, m_ema in zip(enc.modules(), ema.modules(), strict=True):  # DP's EMAModel walks both in lockstep
        assert type(m) is type(m_ema)
    with torch.no_grad():
        for p in enc.heads.parameters():
            p.add_(0.01)  # trained weights, unlike a fresh instance's
    fresh = MultiCameraEncoder(CAMS, {"pos": (2,)}, **kwargs)
    fresh.load_state_dict(enc.state_dict(), strict=True)
    enc.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(obs), enc(obs))
    assert list(fresh.state_dict()) == list(enc.state_dict())


def test_hydra_config_instantiates_and_reloads_strictly() -> None:
    """DP's reload path: instantiate from the saved cfg (ListConfig / DictConfig values), load strictly."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {
            "_target_": "sam2_encoder.SAM2ObsEncoder",
            "shape_meta": {"obs": {"image": {"shape": [3, 48, 48], "type": "rgb"}, "agent_pos": {"shape": [2]}}},
            "image_size": SIZE,
            "levels": ["s16"],
            "fuse": "coarse_to_fine",
            "fuse_stride": 4,
            "fuse_channels": [48, 16],
            "object_masks_key": {"image": "image_masks"},
            "num_objects": 2,
            "object_level": "s8",
            "object_token_dim": 8,
        }
    )
    enc = instantiate(cfg)
    assert enc.output_shape() == (64 + 2 * 8 + 2,)
    with torch.no_grad():
        for p in enc.heads.parameters():
            p.add_(0.01)
    again = instantiate(OmegaConf.create(OmegaConf.to_yaml(cfg)))  # the cfg as DP saves it
    again.load_state_dict(enc.state_dict(), strict=True)
    g = torch.Generator().manual_seed(0)
    obs = {"image": torch.rand(2, 3, 48, 48, generator=g) * 2 - 1, "agent_pos": torch.rand(2, 2, generator=g)}
    obs["image_masks"] = torch.rand(2, 2, 48, 48, generator=g) > 0.5
    with torch.no_grad():
        assert torch.equal(again.eval()(obs), enc.eval()(obs))


# --------------------------------------------------------------------------------------------
# training end to end on synthetic Diffusion Policy data: both heads
# --------------------------------------------------------------------------------------------

HORIZON, N_OBS, N_ACT = 16, 2, 8
SHAPE_META = {
    "obs": {"image": {"shape": [3, 48, 48], "type": "rgb"}, "agent_pos": {"shape": [2], "type": "low_dim"}},
    "action": {"shape": [2]},
}


def square_masks(images: torch.Tensor) -> torch.Tensor:
    """The dataset's object masks: pixels that differ from the synthetic buffer's background (40)."""
    return ((images - 40 / 255).abs().amax(dim=-3, keepdim=True) > 0.05).float()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(fuse="coarse_to_fine", pool="spatial_softmax"),
        dict(object_masks_key="image_masks", num_objects=1, object_tokens="replace", object_token_dim=16),
    ],
    ids=["coarse_to_fine", "object_tokens_from_dataset_masks"],
)
def test_training_loss_falls(tmp_path, kwargs: dict) -> None:
    torch.manual_seed(0)
    dataset = ReplayImageDataset(write_replay_buffer(tmp_path / "replay.zarr"), HORIZON, N_OBS - 1, N_ACT - 1)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    encoder = SAM2ObsEncoder(SHAPE_META, image_size=32, crop_shape=[44, 44], **kwargs)
    denoiser = TinyDenoiser(HORIZON, 2, cond_dim=encoder.output_shape()[0] * N_OBS)
    model = torch.nn.ModuleDict({"obs_encoder": encoder, "model": denoiser})
    scheduler = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    initial = {n: p.detach().clone() for n, p in encoder.heads.named_parameters()}
    losses: list[float] = []
    model.train()
    while len(losses) < 100:
        for item in loader:
            item["obs"]["image_masks"] = square_masks(item["obs"]["image"])  # masks carried by the dataset
            obs, action = dp_normalise(item, N_OBS, camera_keys=("image", "image_masks"))  # masks: identity
            if "object_masks_key" not in kwargs:
                del obs["image_masks"]
            noise = torch.randn_like(action)
            t = torch.randint(0, 100, (action.shape[0],))
            pred = denoiser(scheduler.add_noise(action, noise, t), t, global_cond(encoder, obs))
            loss = torch.nn.functional.mse_loss(pred, noise)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.6 * first, (first, last)
    new = (
        ("fuse.up8.weight", "fuse.lateral8.weight")
        if "fuse" in kwargs
        else ("objects.proj.weight", "objects.proj.bias")
    )
    for name in new:  # the new parts were trained
        assert not torch.equal(initial[f"image.{name}"], dict(encoder.heads.named_parameters())[f"image.{name}"]), name
