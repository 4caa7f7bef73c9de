"""Frozen-feature cache: equivalence with live encoding, resumption after SIGKILL, sharding, zarr 2/3."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from sam2_encoder import SAM2ImageEncoder, SAM2ObsEncoder
from sam2_encoder.diffusion_policy.feature_cache import (
    CachedFeatureDataset,
    CacheError,
    FeatureCache,
    build_cache,
    sequence_frames,
)
from sam2_encoder.diffusion_policy.synthetic import (
    ReplayImageDataset,
    TinyDenoiser,
    create_indices,
    write_replay_buffer,
)
from sam2_encoder.diffusion_policy.zarr_io import open_group
from sam2_encoder.pooling import pack_pyramid, unpack_pyramid

REPO = Path(__file__).resolve().parents[1]
SHAPE_META = {
    "obs": {"image": {"shape": [3, 48, 48], "type": "rgb"}, "agent_pos": {"shape": [2], "type": "low_dim"}},
    "action": {"shape": [2]},
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def replay(tmp_path_factory) -> Path:
    return write_replay_buffer(tmp_path_factory.mktemp("data") / "replay.zarr", episodes=3, steps=12)


@pytest.fixture(scope="module")
def encoder() -> SAM2ImageEncoder:
    return SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=32)


def cache_arrays(path: Path) -> dict[str, np.ndarray]:
    group = open_group(path)
    return {
        f"{k}/{lv}": np.asarray(group["features"][k][lv][...]) for k in group["features"] for lv in group["features"][k]
    }


def test_cache_equals_live_encoding(replay: Path, encoder: SAM2ImageEncoder, tmp_path: Path) -> None:
    path = build_cache(
        replay,
        ["img"],
        encoder,
        out=tmp_path / "f32.zarr",
        levels=["s8", "s16"],
        dtype="float32",
        chunk_frames=8,
        progress=False,
    )
    cache = FeatureCache(path)
    assert cache.keys == ["img"] and cache.levels == ["s8", "s16"] and len(cache) == 36
    assert cache.spec["weights"] == "random:seed=0" and cache.spec["image_size"] == [32, 32]
    frames = np.asarray(open_group(replay)["data"]["img"][:])
    live = encoder(torch.from_numpy(frames))
    torch.testing.assert_close(
        torch.from_numpy(np.asarray(cache.array("img", "s16")[...])), live.s16, rtol=0, atol=1e-5
    )
    picks = [5, 0, 5, 35]
    fused = cache.fused("img", picks)
    assert fused.shape == (4, 64 + 256, 2, 2)
    torch.testing.assert_close(fused[:, 64:], live.s16[picks], rtol=0, atol=1e-5)


def test_obs_encoder_and_policy_loss_cached_vs_live(replay: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    live_enc = SAM2ObsEncoder(SHAPE_META, image_size=32).eval()
    path = build_cache(replay, ["img"], live_enc.encoder, out=tmp_path / "f16.zarr", progress=False, chunk_frames=8)
    cached_enc = SAM2ObsEncoder(SHAPE_META, image_size=32, feature_cache=str(path)).eval()
    cached_enc.load_state_dict(live_enc.state_dict())

    base = ReplayImageDataset(str(replay), horizon=16)
    wrapped = CachedFeatureDataset(str(path), {"image": "img"}, dataset=base, n_obs_steps=2)
    assert len(wrapped) == len(base) and wrapped.horizon == 16
    idx = [0, 3, len(base) - 1]
    live_items = [base[i] for i in idx]
    cached_items = [wrapped[i] for i in idx]
    assert cached_items[0]["obs"]["image"].shape == (16, 256, 2, 2)
    assert torch.equal(cached_items[0]["action"], live_items[0]["action"])

    def cond(items, cached: bool):
        enc = cached_enc if cached else live_enc
        obs = {
            "image": torch.stack([it["obs"]["image"][:2] for it in items]),
            "agent_pos": torch.stack([it["obs"]["agent_pos"][:2] for it in items]) * 2 - 1,
        }
        if not cached:
            obs["image"] = obs["image"] * 2 - 1  # DP's image range normaliser
        flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in obs.items()}
        return enc(flat).reshape(len(items), -1)

    with torch.no_grad():
        c_live, c_cached = cond(live_items, False), cond(cached_items, True)
        torch.testing.assert_close(c_cached, c_live, atol=2e-2, rtol=1e-2)  # float16 storage
        denoiser = TinyDenoiser(16, 2, cond_dim=c_live.shape[1])
        action = torch.stack([it["action"] for it in live_items])
        noise = torch.randn_like(action)
        t = torch.tensor([3, 50, 90])
        losses = [
            torch.nn.functional.mse_loss(denoiser(action + noise, t, c), noise).item() for c in (c_live, c_cached)
        ]
    assert losses[0] == pytest.approx(losses[1], rel=1e-3)


def test_coarse_to_fine_reads_the_packed_pyramid_from_a_cache(replay: Path, tmp_path: Path) -> None:
    """A cache of s4, s8, s16 serves fuse='coarse_to_fine' its packed layout; same output as from images."""
    torch.manual_seed(0)
    # input_range (0, 1): the dataset's images are then exactly the cache's uint8 frames / 255 (DP's
    # (-1, 1) round trip x * 2 - 1 -> * 0.5 + 0.5 moves values by an ulp, which is not what this checks)
    # reuse_frames=False: the frame memo would encode only the frames it has not seen (another batch)
    options = dict(image_size=32, fuse="coarse_to_fine", input_range=(0.0, 1.0), reuse_frames=False)
    live = SAM2ObsEncoder(SHAPE_META, **options).eval()
    assert live.feature_shape == (1024, 2, 2) and live.feature_layout == "packed"
    # chunks of 2 frames = n_obs_steps, so each sample below is encoded in the batch the cache used
    path = build_cache(
        replay, ["img"], live.encoder, out=tmp_path / "c.zarr", levels=["s4", "s8", "s16"], dtype="float32",
        chunk_frames=2, progress=False,
    )  # fmt: skip
    cached = SAM2ObsEncoder(SHAPE_META, feature_cache=str(path), **options).eval()
    cached.load_state_dict(live.state_dict())
    base = ReplayImageDataset(str(replay), horizon=4)
    wrapped = CachedFeatureDataset(str(path), {"image": "img"}, dataset=base, n_obs_steps=2, layout="packed")
    assert wrapped.levels == ["s4", "s8", "s16"]
    frames = np.asarray(open_group(replay)["data"]["img"][:])
    aligned = [i for i in range(len(base)) if base.sampler.indices[i][0] % 2 == 0 and base.sampler.indices[i][2] == 0]
    assert len(aligned) >= 6
    with torch.no_grad():
        for i in aligned:
            item, features = base[i], wrapped[i]["obs"]["image"]
            start = int(base.sampler.indices[i][0])
            assert features.shape == (4, 1024, 2, 2) and not features[2:].any()  # steps past n_obs_steps
            pyramid = live.encoder(torch.from_numpy(frames[start : start + 2]))
            assert torch.equal(features[:2], live.fuse_levels(pyramid))
            assert torch.equal(features[:2], pack_pyramid([pyramid.s4, pyramid.s8, pyramid.s16]))
            unpacked = unpack_pyramid(features[:2])
            assert all(torch.equal(unpacked[lv], pyramid[lv]) for lv in ("s4", "s8", "s16"))
            pos = item["obs"]["agent_pos"][:2] * 2 - 1
            from_images = live({"image": item["obs"]["image"][:2], "agent_pos": pos})
            from_cache = cached({"image": features[:2], "agent_pos": pos})
            assert torch.equal(from_cache, from_images), i
    # the encoder's fuse value names its layout (for Hydra: layout: ${policy.obs_encoder.fuse})
    by_fuse = CachedFeatureDataset(str(path), {"image": "img"}, dataset=base, levels=["s16"], layout="coarse_to_fine")
    assert torch.equal(by_fuse[aligned[0]]["obs"]["image"], wrapped.cache.fused("img", [0, 1, 2, 3], layout="packed"))
    pooled = CachedFeatureDataset(str(path), {"image": "img"}, dataset=base)  # "pool": as before
    assert pooled[0]["obs"]["image"].shape == (4, 32 + 64 + 256, 2, 2)

    # a cache without every level is refused by the encoder and the dataset, naming what is missing
    s16 = build_cache(replay, ["img"], live.encoder, out=tmp_path / "s16.zarr", dtype="float32", progress=False)
    lacks = (
        r"lack \['s4', 's8'\] \(fuse='coarse_to_fine' reads s4, s8 and s16: build the cache with --levels s4 s8 s16\)"
    )
    with pytest.raises(CacheError, match=lacks):
        SAM2ObsEncoder(SHAPE_META, feature_cache=str(s16), **options)
    with pytest.raises(CacheError, match=r"holds levels \['s16'\], but the packed layout .*\(lacks \['s4', 's8'\]\)"):
        CachedFeatureDataset(str(s16), {"image": "img"}, dataset=base, layout="packed")
    with pytest.raises(ValueError, match=r"packed layout \(fuse='coarse_to_fine'\) reads s4, s8 and s16; got levels"):
        CachedFeatureDataset(str(path), {"image": "img"}, dataset=base, levels=["s8", "s16"], layout="packed")
    with pytest.raises(ValueError, match=r"layout must be one of \['coarse_to_fine', 'packed', 'pool'\].*got 'dense'"):
        CachedFeatureDataset(str(path), {"image": "img"}, dataset=base, layout="dense")
    # a cache that has all three levels also serves a pooled encoder
    SAM2ObsEncoder(SHAPE_META, image_size=32, levels=["s4", "s8", "s16"], feature_cache=str(path))


def test_sequence_frames_follow_dp_padding() -> None:
    indices = create_indices(np.array([5, 9]), sequence_length=4, pad_before=1, pad_after=3)
    assert list(sequence_frames(indices[0], 4)) == [0, 0, 1, 2]  # padded before with the first frame
    assert list(sequence_frames(indices[-1], 4)) == [8, 8, 8, 8]  # padded after with the last frame


def test_dataset_normalizer_uses_identity_for_cached_keys(replay: Path, encoder, tmp_path: Path, monkeypatch) -> None:
    path = build_cache(replay, ["img"], encoder, out=tmp_path / "c.zarr", progress=False, chunk_frames=8)
    # Diffusion Policy is not installed in CI: stand in for its normalizer module (create_identity only)
    module = types.ModuleType("diffusion_policy.model.common.normalizer")
    module.SingleFieldLinearNormalizer = type("SFLN", (), {"create_identity": staticmethod(lambda: "identity")})
    for name in ("diffusion_policy", "diffusion_policy.model", "diffusion_policy.model.common"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    wrapped = CachedFeatureDataset(str(path), {"image": "img"}, dataset=ReplayImageDataset(str(replay)))
    assert wrapped.get_normalizer() == {"image": "identity", "agent_pos": "limits", "action": "limits"}
    assert len(wrapped.get_validation_dataset()) == len(wrapped)
    built = CachedFeatureDataset(
        str(path),
        {"image": "img"},
        dataset_target="sam2_encoder.diffusion_policy.synthetic.ReplayImageDataset",
        zarr_path=str(replay),
        horizon=8,
    )
    assert built[0]["obs"]["image"].shape == (8, 256, 2, 2)


def test_incomplete_and_mismatched_caches_are_refused(replay: Path, encoder, tmp_path: Path) -> None:
    out = tmp_path / "c.zarr"
    build_cache(replay, ["img"], encoder, out=out, progress=False, chunk_frames=8, stop_after_chunks=2)
    with pytest.raises(CacheError, match="incomplete .*rerun the same `sam2-encoder cache` command"):
        FeatureCache(out)
    other = r"built from other arguments \(image_size: cache \[32, 32\], now \[64, 64\]\)"
    with pytest.raises(CacheError, match=other):
        build_cache(
            replay,
            ["img"],
            SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=64),
            out=out,
            progress=False,
            chunk_frames=8,
        )
    build_cache(replay, ["img"], encoder, out=out, progress=False, chunk_frames=8)  # finishes the run
    with pytest.raises(CacheError, match=r"image_size \[32, 32\] in the cache vs \[64, 64\].*lack \['s4'\]"):
        SAM2ObsEncoder(SHAPE_META, image_size=64, levels=["s4", "s16"], feature_cache=str(out))
    with pytest.raises(CacheError, match="variant 'sam2.1_hiera_tiny' in the cache vs 'sam2_hiera_tiny'"):
        SAM2ObsEncoder(SHAPE_META, variant="sam2_hiera_tiny", image_size=32, feature_cache=str(out))
    with pytest.raises(CacheError, match=r"weights random:seed=0 in the cache vs random:seed=3"):
        SAM2ObsEncoder(SHAPE_META, image_size=32, seed=3, feature_cache=str(out))
    with pytest.raises(ValueError, match="cannot be combined with crop_shape"):
        SAM2ObsEncoder(SHAPE_META, image_size=32, crop_shape=[40, 40], feature_cache=str(out))
    with pytest.warns(UserWarning, match="not found: not checked"):
        SAM2ObsEncoder(SHAPE_META, image_size=32, feature_cache=str(tmp_path / "elsewhere.zarr"))
    with pytest.raises(KeyError, match=r"no data/cam; it has \['action', 'agent_pos', 'img'\]"):
        build_cache(replay, ["cam"], encoder, out=tmp_path / "x.zarr", progress=False)


def _cli_cache(replay: Path, out: Path, extra: list[str] = ()) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sam2_encoder.cli",
        "cache",
        str(replay),
        "--keys",
        "img",
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


def test_resume_after_sigkill_is_byte_identical(tmp_path: Path) -> None:
    replay = write_replay_buffer(tmp_path / "replay.zarr", episodes=4, steps=30)
    reference = tmp_path / "reference.zarr"
    subprocess.run(_cli_cache(replay, reference), check=True, env=ENV, cwd=REPO)

    killed = tmp_path / "killed.zarr"
    proc = subprocess.Popen(_cli_cache(replay, killed), env=ENV, cwd=REPO)
    progress = killed / "progress" / "img"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if progress.exists() and len([p for p in progress.iterdir() if not p.name.startswith(".")]) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with pytest.raises(CacheError, match="incomplete"):
        FeatureCache(killed)
    subprocess.run(_cli_cache(replay, killed), check=True, env=ENV, cwd=REPO)
    FeatureCache(killed)
    a, b = cache_arrays(reference), cache_arrays(killed)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].tobytes() == b[key].tobytes(), key


def test_two_ranks_give_the_same_cache_as_one(replay: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one.zarr", tmp_path / "two.zarr"
    subprocess.run(_cli_cache(replay, one), check=True, env=ENV, cwd=REPO)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "sam2_encoder.cli",
        *_cli_cache(replay, two)[3:],
    ]
    subprocess.run(cmd, check=True, env=ENV, cwd=REPO)
    a, b = cache_arrays(one), cache_arrays(two)
    for key in a:
        assert a[key].tobytes() == b[key].tobytes(), key
    assert FeatureCache(two).spec["complete"]


def _zarr2_path() -> str | None:
    path = os.environ.get("SAM2_ENCODER_ZARR2", str(REPO / ".ci" / "zarr2"))
    return path if Path(path, "zarr").is_dir() else None


@pytest.mark.skipif(_zarr2_path() is None, reason="zarr 2.18 not staged (.ci/run stages it in .ci/zarr2)")
def test_zarr2_reads_our_cache_and_writes_replay_buffers_we_cache(encoder, tmp_path: Path) -> None:
    env = {**ENV, "PYTHONPATH": _zarr2_path()}
    replay = tmp_path / "replay_z2.zarr"
    script = (
        "import sys, numpy as np, zarr\n"
        "assert zarr.__version__.startswith('2.18'), zarr.__version__\n"
        "root = zarr.open_group(sys.argv[1], mode='w')\n"
        "root.create_dataset('data/img', data=np.random.default_rng(0).integers(0, 255, (10, 40, 40, 3), "
        "dtype=np.uint8), chunks=(4, 40, 40, 3))\n"
        "root.create_dataset('meta/episode_ends', data=np.array([4, 10], dtype=np.int64))\n"
    )
    subprocess.run([sys.executable, "-c", script, str(replay)], check=True, env=env)
    out = build_cache(
        replay, ["img"], encoder, out=tmp_path / "c.zarr", progress=False, chunk_frames=4, dtype="float32"
    )
    np.save(tmp_path / "ours.npy", np.asarray(FeatureCache(out).array("img", "s16")[...]))
    check = (
        "import sys, json, numpy as np, zarr\n"
        "g = zarr.open_group(sys.argv[1], mode='r')\n"
        "assert g.attrs['sam2_encoder']['complete'] is True\n"
        "np.testing.assert_array_equal(g['features/img/s16'][:], np.load(sys.argv[2]))\n"
        "print('zarr', zarr.__version__, 'ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", check, str(out), str(tmp_path / "ours.npy")],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    assert "zarr 2.18" in done.stdout


def test_cached_workspace_preset_composes_and_builds(replay: Path, encoder, tmp_path: Path) -> None:
    """Our cached DP workspace over DP's (stub) configs: dataset wrapper + encoder from one cache."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    path = build_cache(replay, ["img"], encoder, out=tmp_path / "c.zarr", progress=False, chunk_frames=8)
    stub = Path(__file__).parent / "dp_stub_config"
    with initialize_config_dir(config_dir=str(stub), version_base=None):
        cfg = compose(
            config_name="train_diffusion_unet_sam2_cached_workspace",
            overrides=[
                f"feature_cache={path}",
                "policy.obs_encoder.image_size=32",
                f"task.dataset.zarr_path={replay}",
                "task.dataset.dataset_target=sam2_encoder.diffusion_policy.synthetic.ReplayImageDataset",
            ],
        )
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    assert cfg.policy.obs_encoder.crop_shape is None and cfg.dataloader.batch_size == 256
    assert cfg.task.dataset._target_ == "sam2_encoder.diffusion_policy.feature_cache.DPCachedFeatureDataset"
    if importlib.util.find_spec("diffusion_policy") is None:  # core CI: no DP, so no DP base class to mix in
        cfg.task.dataset._target_ = "sam2_encoder.diffusion_policy.feature_cache.CachedFeatureDataset"
    dataset = instantiate(cfg.task.dataset, _convert_="partial")
    encoder_ = instantiate(cfg.policy.obs_encoder).eval()
    item = dataset[0]
    obs = {k: v[None, :2].reshape(2, *v.shape[1:]) for k, v in item["obs"].items()}
    assert obs["image"].shape == (2, 256, 2, 2)
    assert encoder_(obs).shape == (2, encoder_.output_shape()[0])


# --------------------------------------------------------------------------------------------
# integrity: per-chunk checksums, --verify, zarr-3 replay buffers
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def whole_cache(replay: Path, encoder, tmp_path_factory) -> Path:
    """A complete cache: 36 frames in 5 chunks of 8, levels s8 and s16, float16."""
    out = tmp_path_factory.mktemp("whole") / "c.zarr"
    return build_cache(replay, ["img"], encoder, out=out, levels=["s8", "s16"], progress=False, chunk_frames=8)


def _copy(cache: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(cache, tmp_path / cache.name))


def test_missing_and_damaged_chunks_are_named_on_first_read(whole_cache: Path, tmp_path: Path) -> None:
    from sam2_encoder.diffusion_policy.zarr_io import chunk_path

    path = _copy(whole_cache, tmp_path)
    intact = FeatureCache(whole_cache)
    chunk_path(path, "features/img/s16", (2, 0, 0, 0)).unlink()  # zarr alone reads zeros here
    s8 = chunk_path(path, "features/img/s8", (3, 0, 0, 0))
    s8.write_bytes(s8.read_bytes()[: s8.stat().st_size // 2])  # zarr alone decodes garbage here
    one = chunk_path(path, "features/img/s16", (1, 0, 0, 0))
    one.write_bytes(chunk_path(path, "features/img/s16", (0, 0, 0, 0)).read_bytes())  # another chunk's bytes
    cache = FeatureCache(path)
    torch.testing.assert_close(cache.fused("img", [0, 7, 35]), intact.fused("img", [0, 7, 35]), rtol=0, atol=0)
    with pytest.raises(CacheError, match=r"features/img/s16 chunk 2 \(frames 16-23\): the chunk file .* is missing"):
        cache.fused("img", [3, 17])
    damaged = r"features/img/s8 chunk 3 \(frames 24-31\): (damaged|the chunk file .* cannot be decoded)"
    with pytest.raises(CacheError, match=damaged):
        cache.fused("img", [30])
    with pytest.raises(CacheError, match=r"features/img/s16 chunk 1 \(frames 8-15\): damaged, CRC-32 .* differs"):
        cache.fused("img", [8])
    with pytest.raises(IndexError, match=r"frame 36 is outside feature cache .* \(36 frames\)"):
        cache.fused("img", [36])


def test_verify_reports_every_bad_chunk(whole_cache: Path, tmp_path: Path, capsys) -> None:
    from sam2_encoder.cli import main
    from sam2_encoder.diffusion_policy.feature_cache import verify_cache
    from sam2_encoder.diffusion_policy.zarr_io import chunk_path

    assert main(["cache", "--verify", str(whole_cache)]) == 0
    assert "every chunk matches its checksum" in capsys.readouterr().out
    path = _copy(whole_cache, tmp_path)
    chunk_path(path, "features/img/s16", (4, 0, 0, 0)).unlink()
    chunk_path(path, "checksums/img/s8", (0,)).unlink()
    bad = chunk_path(path, "features/img/s8", (2, 0, 0, 0))
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    problems = verify_cache(path)
    assert len(problems) == 3, problems
    assert main(["cache", "--verify", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "features/img/s8 chunk 0 (frames 0-7): no checksum was recorded" in err[0]
    assert "features/img/s8 chunk 2 (frames 16-23)" in err[1]
    assert "features/img/s16 chunk 4 (frames 32-35): the chunk file" in err[2] and "is missing" in err[2]
    assert err[3].endswith("3 problems; delete the cache and rebuild it")
    assert main(["cache", "--verify", str(tmp_path / "none.zarr")]) == 2
    assert "feature cache not found" in capsys.readouterr().err


def test_metadata_damage_and_old_formats_are_refused(whole_cache: Path, tmp_path: Path) -> None:
    import json

    path = _copy(whole_cache, tmp_path)
    meta = path / "features" / "img" / "s16" / ".zarray"
    spec = json.loads(meta.read_text())
    meta.write_text(json.dumps({**spec, "dtype": "<f4"}))
    stored = r"features/img/s16 is float32 \(36, 256, 2, 2\) in chunks of \(8, 256, 2, 2\); "
    with pytest.raises(CacheError, match=stored + r"the cache attributes imply float16 \(36, \.\.\.\)"):
        FeatureCache(path)
    meta.write_text(json.dumps(spec))
    attrs = json.loads((path / ".zattrs").read_text())
    attrs["sam2_encoder"]["format"] = 1
    (path / ".zattrs").write_text(json.dumps(attrs))
    with pytest.raises(CacheError, match=r"has format 1 \(no checksums\); this version reads format 2 .*rebuild it"):
        FeatureCache(path)
    with pytest.raises(ValueError, match="is not a zarr group"):
        FeatureCache(tmp_path)


def test_a_chunk_damaged_between_runs_is_caught_before_the_cache_is_complete(replay: Path, encoder, tmp_path) -> None:
    from sam2_encoder.diffusion_policy.zarr_io import chunk_path

    reference = build_cache(replay, ["img"], encoder, out=tmp_path / "ref.zarr", progress=False, chunk_frames=8)
    out = tmp_path / "c.zarr"
    build_cache(replay, ["img"], encoder, out=out, progress=False, chunk_frames=8, stop_after_chunks=2)
    chunk_path(out, "features/img/s16", (1, 0, 0, 0)).unlink()  # a done chunk lost before the rerun
    with pytest.raises(CacheError, match=r"1 chunk failed the read-back check .*chunk 1 \(frames 8-15\)"):
        build_cache(replay, ["img"], encoder, out=out, progress=False, chunk_frames=8)
    with pytest.raises(CacheError, match="incomplete"):
        FeatureCache(out)
    build_cache(replay, ["img"], encoder, out=out, progress=False, chunk_frames=8)  # re-encodes chunk 1
    a, b = cache_arrays(reference), cache_arrays(out)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)


def test_a_failed_first_run_leaves_nothing_behind(replay: Path, encoder, tmp_path: Path) -> None:
    class Failing(torch.nn.Module):  # fault injection: the encoder breaks on the first chunk
        def __init__(self, inner: SAM2ImageEncoder) -> None:
            super().__init__()
            self.inner = inner
            self.variant, self.weights_id, self.image_size = inner.variant, inner.weights_id, inner.image_size
            self.transforms = inner.transforms

        def feature_shapes(self):
            return self.inner.feature_shapes()

        def forward(self, frames):
            raise RuntimeError("out of memory (injected)")

    out = tmp_path / "c.zarr"
    with pytest.raises(RuntimeError, match="injected"):
        build_cache(replay, ["img"], Failing(encoder), out=out, progress=False, chunk_frames=8)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    for bad, match in (
        (dict(keys="img"), "keys must be a non-empty list"),
        (dict(keys=["img"], levels=["s32"]), r"levels must be a non-empty subset .* got \['s32'\]"),
        (dict(keys=["img"], chunk_frames=0), "chunk_frames must be a whole number >= 1, got 0"),
        (dict(keys=["agent_pos"]), r"data/agent_pos of .* is float32 \(36, 2\); expected \(36, H, W, 3\) uint8"),
    ):
        with pytest.raises(ValueError, match=match):
            build_cache(replay, encoder=encoder, out=out, progress=False, **bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_zarr3_format_replay_buffers_are_read_or_refused_by_name(replay: Path, encoder, tmp_path: Path) -> None:
    import zarr

    from sam2_encoder.diffusion_policy.zarr_io import ZARR3

    if not ZARR3:
        pytest.skip("needs zarr 3 to write a zarr-3-format store")
    v3 = tmp_path / "replay_v3.zarr"
    root = zarr.open_group(str(v3), mode="w", zarr_format=3)
    frames = np.asarray(open_group(replay)["data"]["img"][:])
    root.create_array("data/img", shape=frames.shape, chunks=(8, *frames.shape[1:]), dtype="uint8")[:] = frames
    root.create_array("meta/episode_ends", shape=(3,), dtype="int64")[:] = [12, 24, 36]
    ours = build_cache(v3, ["img"], encoder, out=tmp_path / "v3.zarr", progress=False, chunk_frames=8)
    ref = build_cache(replay, ["img"], encoder, out=tmp_path / "v2.zarr", progress=False, chunk_frames=8)
    assert cache_arrays(ours)["img/s16"].tobytes() == cache_arrays(ref)["img/s16"].tobytes()
    assert (ours / ".zgroup").is_file(), "the cache itself is zarr-2 format"
    if _zarr2_path() is None:
        return
    check = (
        "import sys\n"
        "from sam2_encoder.diffusion_policy.zarr_io import ZarrFormatError, open_group\n"
        "try:\n"
        "    open_group(sys.argv[1])\n"
        "except ZarrFormatError as e:\n"
        "    print(e)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", check, str(v3)],
        check=True,
        env={**ENV, "PYTHONPATH": _zarr2_path()},
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert "is in the zarr-3 on-disk format (zarr.json), which the installed zarr 2.18" in done.stdout


@pytest.mark.skipif(_zarr2_path() is None, reason="zarr 2.18 not staged (.ci/run stages it in .ci/zarr2)")
def test_our_cache_code_runs_under_zarr2(replay: Path, tmp_path: Path) -> None:
    """Diffusion Policy environments pin zarr 2: building, reading and verifying work there too."""
    script = (
        "import sys, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "import zarr\n"
        "assert zarr.__version__.startswith('2.18'), zarr.__version__\n"
        "from sam2_encoder.diffusion_policy.feature_cache import FeatureCache, build_cache, verify_cache\n"
        "from sam2_encoder.diffusion_policy.zarr_io import chunk_path\n"
        "from sam2_encoder.image_encoder import SAM2ImageEncoder\n"
        "enc = SAM2ImageEncoder('sam2.1_hiera_tiny', image_size=32)\n"
        "out = build_cache(sys.argv[1], ['img'], enc, out=sys.argv[2], progress=False, chunk_frames=8)\n"
        "assert verify_cache(out) == [] and FeatureCache(out).fused('img', [0, 35]).shape == (2, 256, 2, 2)\n"
        "chunk_path(out, 'features/img/s16', (1, 0, 0, 0)).unlink()\n"
        "print(verify_cache(out))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(replay), str(tmp_path / "c.zarr")],
        check=True,
        env={**ENV, "PYTHONPATH": _zarr2_path()},
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert "features/img/s16 chunk 1 (frames 8-15): the chunk file" in done.stdout


def test_verify_of_an_incomplete_cache_checks_the_done_chunks(replay: Path, encoder, tmp_path: Path) -> None:
    from sam2_encoder.diffusion_policy.feature_cache import verify_cache
    from sam2_encoder.diffusion_policy.zarr_io import chunk_path

    out = build_cache(
        replay, ["img"], encoder, out=tmp_path / "c.zarr", progress=False, chunk_frames=8, stop_after_chunks=2
    )
    assert verify_cache(out) == [
        f"{out} is incomplete (3 of 5 chunks still to encode): rerun the same `sam2-encoder cache` command"
    ]
    chunk_path(out, "features/img/s16", (1, 0, 0, 0)).unlink()
    problems = verify_cache(out)
    assert len(problems) == 2 and "features/img/s16 chunk 1 (frames 8-15): the chunk file" in problems[1]
