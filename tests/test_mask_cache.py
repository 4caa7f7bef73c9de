"""Offline tracker masks over a replay buffer: equal to tracking by hand, resumable, checked inputs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("zarr")

from sam2_encoder.camera_encoder import MultiCameraEncoder  # noqa: E402
from sam2_encoder.diffusion_policy.mask_cache import (  # noqa: E402
    MaskCache,
    MaskCacheError,
    MaskDataset,
    build_mask_cache,
    check_mask_inputs,
    default_mask_path,
    load_prompts,
    weights_identity,
)
from sam2_encoder.diffusion_policy.synthetic import ReplayImageDataset, write_replay_buffer  # noqa: E402
from sam2_encoder.streaming import StreamingPredictor  # noqa: E402

STEPS, SIZE = 4, 48
PROMPTS = {
    "objects": [1, 2],
    "episodes": {
        "0": {"1": {"points": [[24, 24]], "labels": [1]}, "2": {"box": [2, 2, 20, 20]}},
        "1": {"2": {"box": [10, 10, 40, 40]}},  # object 1 not prompted: empty masks
        "2": {},  # nothing to track in this episode
    },
}


@pytest.fixture(scope="module")
def checkpoint(present_checkpoint: Path) -> Path:
    """The shared tiny checkpoint whose objects stay present (conftest)."""
    return present_checkpoint


@pytest.fixture(scope="module")
def predictor(checkpoint) -> StreamingPredictor:
    return StreamingPredictor("sam2.1_hiera_tiny", checkpoint=checkpoint, image_size=64)


@pytest.fixture(scope="module")
def replay(tmp_path_factory) -> Path:
    return Path(write_replay_buffer(tmp_path_factory.mktemp("replay") / "replay.zarr", episodes=3, steps=STEPS))


def by_hand(predictor: StreamingPredictor, frames: np.ndarray, prompts: dict) -> np.ndarray:
    out = np.zeros((len(frames), 2, SIZE, SIZE), dtype=bool)
    if not prompts:
        return out
    predictor.reset()
    res = None
    for i, (obj, prompt) in enumerate(sorted((int(o), p) for o, p in prompts.items())):
        res = predictor.add_prompt(frames[0] if i == 0 else None, obj_id=obj, **prompt)
    for t in range(len(frames)):
        if t:
            res = predictor.track(frames[t])
        for i, obj in enumerate(res.obj_ids):
            out[t, obj - 1] = res.masks[i].numpy()
    return out


def test_masks_equal_tracking_each_episode_by_hand(predictor, replay, checkpoint, tmp_path) -> None:
    from sam2_encoder.diffusion_policy.zarr_io import open_group

    weights = weights_identity(checkpoint)
    assert weights.startswith("sha256:")
    progress = []
    out = tmp_path / "masks.zarr"
    build_mask_cache(replay, "img", PROMPTS, out, predictor, weights, lambda d, t: progress.append((d, t)))
    cache = MaskCache(out)
    frames = np.asarray(open_group(replay)["data"]["img"][...])
    assert cache.objects == [1, 2] and len(cache) == 3 * STEPS
    all_masks = cache.masks(range(3 * STEPS))
    assert all_masks.shape == (3 * STEPS, 2, SIZE, SIZE) and all_masks.dtype == bool
    for e in range(3):
        expected = by_hand(predictor, frames[e * STEPS : (e + 1) * STEPS], PROMPTS["episodes"][str(e)])
        assert np.array_equal(all_masks[e * STEPS : (e + 1) * STEPS], expected), e
    assert all_masks[:STEPS].any(axis=(0, 2, 3)).all(), "both objects tracked in episode 0"
    assert not all_masks[STEPS : 2 * STEPS, 0].any() and all_masks[STEPS : 2 * STEPS, 1].any()
    assert not all_masks[2 * STEPS :].any()
    assert progress == [(1, 3), (2, 3), (3, 3)]
    with pytest.raises(IndexError, match=r"frame 12 is outside mask cache"):
        cache.masks([0, 12])

    # the masks feed object tokens as they are
    enc = MultiCameraEncoder({"img": (3, SIZE, SIZE)}, image_size=64, object_masks_key="img_masks", num_objects=2)
    obs = {"img": torch.from_numpy(frames[:2]).permute(0, 3, 1, 2).float() / 255}
    obs["img_masks"] = torch.from_numpy(cache.masks([0, 1]))
    assert enc(obs).shape == (2, enc.output_shape()[0])


def test_dataset_serves_the_masks_of_each_sample(predictor, replay, tmp_path) -> None:
    cache = MaskCache(build_mask_cache(replay, "img", PROMPTS, tmp_path / "m.zarr", predictor, "w"))
    base = ReplayImageDataset(replay, horizon=3, pad_before=1, pad_after=1)
    data = MaskDataset(cache, "image_masks", dataset=base)
    assert len(data) == len(base)
    for idx in range(len(data)):
        item = data[idx]
        start, end, s0, s1 = (int(v) for v in base.sampler.indices[idx])
        frames = [start] * s0 + list(range(start, end)) + [end - 1] * (3 - s1)  # DP's padding
        masks = item["obs"]["image_masks"]
        assert masks.shape == (3, 2, SIZE, SIZE) and masks.dtype == torch.float32
        assert torch.equal(masks, torch.from_numpy(cache.masks(frames)).float())
        assert torch.equal(item["obs"]["image"], base[idx]["obs"]["image"])
    with pytest.raises(TypeError, match=r"list has no DP-style sampler"):
        MaskDataset(cache, "image_masks", dataset=[])
    pytest.importorskip("hydra")
    built = MaskDataset(  # the Hydra form: the task's dataset node arrives as kwargs
        str(cache.path),
        "image_masks",
        dataset_target="sam2_encoder.diffusion_policy.synthetic.ReplayImageDataset",
        zarr_path=str(replay),
        horizon=3,
        pad_before=1,
        pad_after=1,
    )
    assert torch.equal(built[2]["obs"]["image_masks"], data[2]["obs"]["image_masks"])
    assert len(built.get_validation_dataset()) == len(base)


class Interrupt(Exception):
    pass


def test_resume_after_an_interruption_gives_the_same_cache(predictor, replay, tmp_path) -> None:
    full = MaskCache(build_mask_cache(replay, "img", PROMPTS, tmp_path / "full.zarr", predictor, "w"))

    def stop_after_first(done: int, total: int) -> None:
        if done == 1:
            raise Interrupt

    out = tmp_path / "resumed.zarr"
    with pytest.raises(Interrupt):
        build_mask_cache(replay, "img", PROMPTS, out, predictor, "w", lambda d, t: stop_after_first(d, t))
    incomplete = r"incomplete \(1 of 3 episodes done; an interrupted run\?\): rerun the same `sam2-encoder masks`"
    with pytest.raises(MaskCacheError, match=incomplete):
        MaskCache(out)
    tracked = []
    original = predictor.track
    predictor.track = lambda *a, **k: tracked.append(1) or original(*a, **k)
    try:
        build_mask_cache(replay, "img", PROMPTS, out, predictor, "w")
    finally:
        del predictor.track
    assert len(tracked) == STEPS - 1, "only episode 1 was tracked again (episode 2 has no objects)"
    assert np.array_equal(MaskCache(out).masks(range(3 * STEPS)), full.masks(range(3 * STEPS)))

    other = json.loads(json.dumps(PROMPTS))
    other["episodes"]["1"]["2"]["box"] = [11, 10, 40, 40]
    with pytest.raises(MaskCacheError, match=r"built from other arguments \(prompts_sha256: cache"):
        build_mask_cache(replay, "img", other, out, predictor, "w")
    with pytest.raises(MaskCacheError, match=r"weights: cache 'w', now 'v'"):
        build_mask_cache(replay, "img", PROMPTS, out, predictor, "v")
    with pytest.raises(MaskCacheError, match=r"is not a mask cache"):
        MaskCache(replay)


@pytest.mark.parametrize(
    "prompts, match",
    [
        ({"objects": [1]}, r"must be \{'objects': \[ids\], 'episodes'"),
        ({"objects": [1, 1], "episodes": {}}, r"non-empty list of distinct integer ids"),
        ({"objects": [1], "episodes": {"0": {}, "1": {}}}, r"episodes 2 have no prompts"),
        ({"objects": [1], "episodes": {"0": {}, "1": {}, "2": {}, "3": {}}}, r"episode '3' is not an index of the 3"),
        ({"objects": [1], "episodes": {"0": {"5": {"box": [0, 0, 4, 4]}}}}, r"prompts object '5', which is not in"),
        ({"objects": [1], "episodes": {"0": {"1": {"labels": [1]}}}}, r"episode 0 object 1: labels without points"),
        ({"objects": [1], "episodes": {"0": {"1": {"mask": 1}}}}, r"a prompt is a mapping of"),
    ],
)
def test_bad_prompts(prompts: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_prompts(prompts, 3)


@pytest.mark.parametrize(
    "prompt, match, needs_frame",
    [
        ({"points": [[100, 5]]}, r"point \[\[100.0, 5.0\]\] lies outside the 48x48 \(W x H\) frame", True),
        ({"points": [[5, -1]]}, r"point \[\[5.0, -1.0\]\] lies outside", True),
        ({"box": [0, 0, 49, 10]}, r"box corner \[\[49.0, 10.0\]\] lies outside", True),
        ({"box": [10, 10, 10, 20]}, r"box must have x1 > x0 and y1 > y0, got \[10, 10, 10, 20\]", False),
        ({"box": [1, 2, 3]}, r"box must be \[x0, y0, x1, y1\] of finite numbers, got \[1, 2, 3\]", False),
        ({"points": [[1, float("nan")]]}, r"points must be \[\[x, y\], ...\] of finite numbers", False),
        ({"points": [[1, True]]}, r"points must be \[\[x, y\], ...\] of finite numbers, got \[\[1, True\]\]", False),
        ({"points": [[1, 2]], "labels": [2]}, r"labels must be one 1 \(object\) or 0 \(background\) per point", False),
        ({"points": [[1, 2], [3, 4]], "labels": [1]}, r"labels must be one .* per point, got \[1\]", False),
    ],
)
def test_prompts_are_checked_against_the_frames(prompt: dict, match: str, needs_frame: bool) -> None:
    """Every prompt rule holds with or without the frame size; only "inside the frame" needs it."""
    table = {"objects": [1], "episodes": {"0": {}, "1": {"1": prompt}, "2": {}}}
    with pytest.raises(ValueError, match=r"prompts: episode 1 object 1: " + match):
        load_prompts(table, 3, frame_shape=(48, 48))
    if needs_frame:
        assert load_prompts(table, 3)["episodes"][1][1] == prompt  # without the frame size: not checked
    else:
        with pytest.raises(ValueError, match=r"prompts: episode 1 object 1: " + match):
            load_prompts(table, 3)


def test_prompt_outside_the_frame_is_refused_before_anything_is_tracked_or_written(predictor, replay, tmp_path) -> None:
    bad = {
        "objects": [1],
        "episodes": {"0": {"1": {"box": [2, 2, 20, 20]}}, "1": {"1": {"points": [[100, 5]]}}, "2": {}},
    }
    calls = []
    original = predictor.add_prompt
    predictor.add_prompt = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        with pytest.raises(ValueError, match=r"prompts: episode 1 object 1: "):
            build_mask_cache(replay, "img", bad, tmp_path / "m.zarr", predictor, "w")
    finally:
        del predictor.add_prompt
    assert calls == [] and not (tmp_path / "m.zarr").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    (tmp_path / "p.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"p.json is not valid JSON"):
        build_mask_cache(replay, "img", tmp_path / "p.json", tmp_path / "n.zarr", predictor, "w")
    with pytest.raises(KeyError, match=r"has no data/cam; it has \['action', 'agent_pos', 'img'\]"):
        build_mask_cache(replay, "cam", PROMPTS, tmp_path / "k.zarr", predictor, "w")


def test_a_run_that_fails_before_finishing_an_episode_leaves_nothing(predictor, replay, tmp_path) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("camera unplugged")

    predictor.track = broken
    try:
        with pytest.raises(RuntimeError, match="camera unplugged"):
            build_mask_cache(replay, "img", PROMPTS, tmp_path / "m.zarr", predictor, "w")
    finally:
        del predictor.track
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no cache, no temporary folder
    with pytest.raises(MaskCacheError, match=r"mask cache not found: .*m.zarr; build it with `sam2-encoder masks`"):
        MaskCache(tmp_path / "m.zarr")
    (tmp_path / "f").write_text("")
    with pytest.raises(MaskCacheError, match=r"f is not a mask cache: it is not a zarr group \(a file\)"):
        MaskCache(tmp_path / "f")


def test_check_mask_inputs_needs_no_model(replay, tmp_path) -> None:
    info = check_mask_inputs(replay, "img", PROMPTS, tmp_path / "new.zarr")
    assert info == {"frames": 3 * STEPS, "frame_shape": (SIZE, SIZE), "episodes": 3, "objects": [1, 2]}
    with pytest.raises(
        MaskCacheError, match=r"is not a mask cache \(no 'sam2_encoder_masks' attributes\); pass another"
    ):
        check_mask_inputs(replay, "img", PROMPTS, replay)
    assert default_mask_path(replay, "img") == replay.with_name("replay.img_masks.zarr")


def test_cached_packed_features_and_cached_masks_equal_live_images_and_masks(predictor, replay, tmp_path) -> None:
    """fuse='coarse_to_fine' + object tokens trained from a feature cache and a mask cache: same outputs as live."""
    from sam2_encoder.diffusion_policy.feature_cache import CachedFeatureDataset, build_cache
    from sam2_encoder.diffusion_policy.obs_encoder import SAM2ObsEncoder

    meta = {
        "obs": {
            "image": {"shape": [3, SIZE, SIZE], "type": "rgb"},
            "image_masks": {"shape": [2, SIZE, SIZE], "type": "mask", "camera": "image"},
            "agent_pos": {"shape": [2], "type": "low_dim"},
        },
        "action": {"shape": [2]},
    }
    # input_range (0, 1) and no frame memo: the live path then encodes exactly the cache's uint8 frames
    # in the cache's batches (chunks of 2 frames = the samples' steps); see test_feature_cache
    options = dict(image_size=32, fuse="coarse_to_fine", object_level="s8", input_range=(0.0, 1.0), reuse_frames=False)
    live = SAM2ObsEncoder(meta, **options).eval()
    features = build_cache(
        replay, ["img"], live.encoder, out=tmp_path / "f.zarr", levels=["s4", "s8", "s16"], dtype="float32",
        chunk_frames=2, progress=False,
    )  # fmt: skip
    masks = build_mask_cache(replay, "img", PROMPTS, tmp_path / "m.zarr", predictor, "w")
    cached = SAM2ObsEncoder(meta, feature_cache=str(features), **options).eval()
    cached.load_state_dict(live.state_dict())
    base = ReplayImageDataset(replay, horizon=2)
    served = MaskDataset(
        masks,
        "image_masks",
        dataset=CachedFeatureDataset(str(features), {"image": "img"}, dataset=base, layout="packed"),
    )
    checked = 0
    with torch.no_grad():
        for i in range(len(base)):
            start, _, s0, _ = (int(v) for v in base.sampler.indices[i])
            if start % 2 or s0:
                continue  # not one cache chunk
            item = served[i]
            obs = dict(item["obs"])
            assert obs["image"].shape == (2, 1024, 2, 2) and obs["image_masks"].shape == (2, 2, SIZE, SIZE)
            from_cache = cached(obs)
            from_images = live({**obs, "image": base[i]["obs"]["image"]})
            assert torch.equal(from_cache, from_images), i
            checked += 1
    assert checked >= 4
    assert MaskCache(masks).masks(range(STEPS)).any(), "objects tracked in episode 0"


# --------------------------------------------------------------------------------------------
# integrity: a CRC-32 per frame, verified on first read, by --verify and by reruns
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def whole_masks(predictor, replay, tmp_path_factory) -> Path:
    """A complete mask cache of the 3 episodes (episode 0: both objects, 1: object 2, 2: none)."""
    return build_mask_cache(replay, "img", PROMPTS, tmp_path_factory.mktemp("whole") / "m.zarr", predictor, "w")


def _copy(cache: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(cache, tmp_path / cache.name))


def _chunk(cache: Path, frame: int) -> Path:
    from sam2_encoder.diffusion_policy.zarr_io import chunk_path

    path = chunk_path(cache, "masks", (frame, 0, 0, 0))
    assert path.is_file(), f"frame {frame} has masks, so its chunk file is written"
    return path


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_damaged_chunks_are_named_on_first_read(whole_masks: Path, tmp_path: Path) -> None:
    path = _copy(whole_masks, tmp_path)
    intact = MaskCache(whole_masks)
    assert intact.masks(range(3 * STEPS))[[1, 2, 5]].any(axis=(1, 2, 3)).all(), "the damaged frames hold masks"
    _chunk(path, 1).unlink()  # zarr alone reads an all-False frame here
    _truncate(_chunk(path, 2))
    _flip(_chunk(path, 5))
    cache = MaskCache(path)
    assert np.array_equal(cache.masks([0, 3, 4, 8]), intact.masks([0, 3, 4, 8]))
    missing = r"masks chunk 1 \(frame 1, episode 0\): damaged, CRC-32 .*, which is missing"
    with pytest.raises(MaskCacheError, match=missing):
        cache.masks([0, 1])
    truncated = r"masks chunk 2 \(frame 2, episode 0\): (damaged|the chunk file .* cannot be decoded)"
    with pytest.raises(MaskCacheError, match=truncated):
        cache.masks([2])
    with pytest.raises(MaskCacheError, match=r"masks chunk 5 \(frame 5, episode 1\): .*sam2-encoder masks --verify"):
        cache.masks([5])
    base = ReplayImageDataset(replay_of(whole_masks), horizon=2, pad_before=0, pad_after=0)
    with pytest.raises(MaskCacheError, match=missing):
        MaskDataset(MaskCache(path), "image_masks", dataset=base)[0]  # frames 0 and 1


def replay_of(cache: Path) -> str:
    return MaskCache(cache).spec["replay"]


def test_verify_reports_every_bad_frame(whole_masks: Path, tmp_path: Path, capsys) -> None:
    from sam2_encoder.cli import main
    from sam2_encoder.diffusion_policy.mask_cache import verify_mask_cache

    assert verify_mask_cache(whole_masks) == []
    assert main(["masks", "--verify", str(whole_masks)]) == 0
    assert "every frame's masks match their checksum" in capsys.readouterr().out
    path = _copy(whole_masks, tmp_path)
    _chunk(path, 0).unlink()
    _flip(_chunk(path, 6))
    _truncate(_chunk(path, 3))
    problems = verify_mask_cache(path)
    assert len(problems) == 3, problems
    assert main(["masks", "--verify", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "masks chunk 0 (frame 0, episode 0): damaged" in err[0] and "which is missing" in err[0]
    assert "masks chunk 3 (frame 3, episode 0)" in err[1]
    assert "masks chunk 6 (frame 6, episode 1)" in err[2]
    assert err[3].endswith("3 problems; delete the mask cache and rebuild it")
    assert main(["masks", "--verify", str(tmp_path / "none.zarr")]) == 2
    assert "mask cache not found" in capsys.readouterr().err
    assert main(["masks", "--verify", str(path), "--key", "img"]) == 2
    assert "--verify CACHE checks an existing mask cache" in capsys.readouterr().err


def test_old_caches_and_damaged_arrays_are_refused(predictor, whole_masks: Path, tmp_path: Path) -> None:
    from sam2_encoder.diffusion_policy.mask_cache import verify_mask_cache
    from sam2_encoder.diffusion_policy.zarr_io import chunk_path

    old = _copy(whole_masks, tmp_path)
    attrs = json.loads((old / ".zattrs").read_text())
    attrs["sam2_encoder_masks"]["format"] = 1
    (old / ".zattrs").write_text(json.dumps(attrs))
    expected = r"has format 1 \(no checksums\); this version reads format 2 .*: delete it and rebuild it with the same"
    for call in (MaskCache, verify_mask_cache):
        with pytest.raises(MaskCacheError, match=expected):
            call(old)
    with pytest.raises(MaskCacheError, match=expected + r" `sam2-encoder masks` command; or pass another --out"):
        build_mask_cache(replay_of(whole_masks), "img", PROMPTS, old, predictor, "w")

    damaged = _copy(whole_masks, tmp_path / "d")
    sums = chunk_path(damaged, "checksums", (0,))
    _truncate(sums)
    # blosc may decode a truncated chunk into garbage rather than fail: either way it is refused
    damage = r"checksums (cannot be read|is damaged: CRC-32 \w+ of its values differs from the recorded \w+)"
    with pytest.raises(MaskCacheError, match=r"is damaged: " + damage + r".*--verify"):
        MaskCache(damaged)
    assert re.match(damage, verify_mask_cache(damaged)[0])
    sums.unlink()
    with pytest.raises(MaskCacheError, match=r"checksums is damaged: CRC-32"):
        MaskCache(damaged)
    attrs = json.loads((damaged / ".zattrs").read_text())
    del attrs["sam2_encoder_masks"]["sealed_crc32"]
    (damaged / ".zattrs").write_text(json.dumps(attrs))
    with pytest.raises(MaskCacheError, match=r"checksums has no recorded CRC-32 \(sealed_crc32\) in a complete cache"):
        MaskCache(damaged)
    meta = damaged / "masks" / ".zarray"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "chunks": [2, 2, SIZE, SIZE]}))
    with pytest.raises(MaskCacheError, match=r"masks is bool \(12, 2, 48, 48\) in chunks of \(2, 2, 48, 48\)"):
        MaskCache(damaged)


def test_a_rerun_tracks_damaged_episodes_again(predictor, replay, whole_masks: Path, tmp_path: Path) -> None:
    from sam2_encoder.diffusion_policy.mask_cache import verify_mask_cache

    path = _copy(whole_masks, tmp_path)
    _flip(_chunk(path, 5))
    reported: list[list[str]] = []

    def interrupt(problems: list[str]) -> None:
        reported.append(problems)
        raise Interrupt

    with pytest.raises(Interrupt):  # killed right after the check: the cache no longer claims to be complete
        build_mask_cache(replay, "img", PROMPTS, path, predictor, "w", on_damaged=interrupt)
    assert len(reported[0]) == 1 and "masks chunk 5 (frame 5, episode 1)" in reported[0][0]
    with pytest.raises(MaskCacheError, match=r"incomplete \(2 of 3 episodes done"):
        MaskCache(path)
    tracked, starts = [], []
    original = predictor.track
    predictor.track = lambda *a, **k: tracked.append(1) or original(*a, **k)
    try:
        build_mask_cache(replay, "img", PROMPTS, path, predictor, "w", on_start=lambda d, t: starts.append((d, t)))
    finally:
        del predictor.track
    assert starts == [(2, 3)] and len(tracked) == STEPS - 1, "episode 1 alone was tracked again"
    assert verify_mask_cache(path) == []
    assert np.array_equal(MaskCache(path).masks(range(3 * STEPS)), MaskCache(whole_masks).masks(range(3 * STEPS)))


def test_damage_during_a_run_is_caught_before_the_cache_is_complete(predictor, replay, tmp_path: Path) -> None:
    out = tmp_path / "m.zarr"

    def damage_episode_0(done: int, total: int) -> None:
        if done == 2:
            _chunk(out, 1).unlink()

    with pytest.raises(MaskCacheError, match=r"1 frame failed the read-back check .*masks chunk 1 \(frame 1"):
        build_mask_cache(replay, "img", PROMPTS, out, predictor, "w", on_episode=damage_episode_0)
    with pytest.raises(MaskCacheError, match=r"incomplete \(2 of 3 episodes done"):
        MaskCache(out)
    build_mask_cache(replay, "img", PROMPTS, out, predictor, "w")
    from sam2_encoder.diffusion_policy.mask_cache import verify_mask_cache

    assert verify_mask_cache(out) == []


def test_the_command_reports_and_repairs_damage_on_rerun(checkpoint, replay, tmp_path: Path, capsys) -> None:
    from sam2_encoder.cli import main

    (tmp_path / "p.json").write_text(json.dumps(PROMPTS))
    out = tmp_path / "m.zarr"
    args = ["masks", str(replay), "--key", "img", "--prompts", str(tmp_path / "p.json"), "--out", str(out)]
    args += ["--checkpoint", str(checkpoint), "--image-size", "64", "--quiet"]
    assert main(args) == 0
    built = MaskCache(out).masks(range(3 * STEPS))
    _flip(_chunk(out, 5))
    assert main(["masks", "--verify", str(out)]) == 2
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("warning: masks chunk 5 (frame 5, episode 1): ") and len(err) == 3, err
    assert err[1] == f"{out}: tracking the damaged episodes again"
    assert err[2] == f"resuming {out}: 2 of 3 episodes already tracked"
    assert main(["masks", "--verify", str(out)]) == 0
    assert np.array_equal(MaskCache(out).masks(range(3 * STEPS)), built)


def test_masks_workspace_preset_composes_and_builds(whole_masks: Path, replay, tmp_path: Path) -> None:
    """Our masks DP workspace over DP's (stub) configs: shape_meta's mask entry, the dataset wrapper, the encoder."""
    import importlib.util

    pytest.importorskip("hydra")
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    stub = Path(__file__).parent / "dp_stub_config"
    overrides = [
        f"object_masks={whole_masks}",
        "num_objects=2",
        "policy.obs_encoder.image_size=32",
        "task.shape_meta.obs.image.shape=[3,48,48]",
        "policy.obs_encoder.crop_shape=[40,40]",
        "horizon=4",
        f"task.dataset.zarr_path={replay}",
        "task.dataset.dataset_target=sam2_encoder.diffusion_policy.synthetic.ReplayImageDataset",
    ]
    with initialize_config_dir(config_dir=str(stub), version_base=None):
        cfg = compose(config_name="train_diffusion_unet_sam2_masks_workspace", overrides=overrides)
        wrong = compose(config_name="train_diffusion_unet_sam2_masks_workspace", overrides=overrides[1:] + [
            f"object_masks={whole_masks}", "num_objects=3"])  # fmt: skip
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    assert cfg.shape_meta.obs.image_masks == {"shape": [2, 48, 48], "type": "mask", "camera": "image"}
    assert cfg.task.dataset._target_ == "sam2_encoder.diffusion_policy.mask_cache.DPMaskDataset"
    if importlib.util.find_spec("diffusion_policy") is None:  # core CI: no DP, so no DP base class to mix in
        cfg.task.dataset._target_ = "sam2_encoder.diffusion_policy.mask_cache.MaskDataset"
    dataset = instantiate(cfg.task.dataset)
    encoder = instantiate(cfg.policy.obs_encoder).eval()
    assert encoder.object_masks == {"image": "image_masks"} and encoder.num_objects == 2
    item = dataset[3]
    assert item["obs"]["image_masks"].shape == (cfg.horizon, 2, SIZE, SIZE)
    obs = {k: v[: cfg.n_obs_steps] for k, v in item["obs"].items()}
    assert encoder(obs).shape == (cfg.n_obs_steps, encoder.output_shape()[0])
    assert type(dataset.get_validation_dataset()) is type(dataset)
    wrong = OmegaConf.create(OmegaConf.to_container(wrong, resolve=True))
    wrong.task.dataset._target_ = cfg.task.dataset._target_
    with pytest.raises(Exception, match=r"holds 2 objects \[1, 2\] on 48x48 frames.*set num_objects=2"):
        instantiate(wrong.task.dataset)


# --------------------------------------------------------------------------------------------
# `sam2-encoder cache --prompts`: the feature cache and a mask cache from one encoder pass per frame
# --------------------------------------------------------------------------------------------

LEVELS3 = ["--levels", "s4", "s8", "s16", "--dtype", "float32"]


@pytest.fixture(scope="module")
def two_cameras(tmp_path_factory) -> Path:
    return Path(
        write_replay_buffer(
            tmp_path_factory.mktemp("two") / "replay.zarr", episodes=3, steps=STEPS, cameras=("img", "wrist")
        )
    )


def _features(path: Path) -> dict[str, np.ndarray]:
    from sam2_encoder.diffusion_policy.zarr_io import open_group

    group = open_group(path)
    return {
        f"{k}/{lv}": np.asarray(group["features"][k][lv][...]) for k in ("img", "wrist") for lv in ("s4", "s8", "s16")
    }


@pytest.fixture(scope="module")
def plain_features(two_cameras, checkpoint, tmp_path_factory) -> dict[int, dict[str, np.ndarray]]:
    """`sam2-encoder cache` alone (SAM2ImageEncoder) of both cameras, in encoder batches of 8 and of 1 frame."""
    from sam2_encoder.cli import main

    out = {}
    for batch in (8, 1):
        path = tmp_path_factory.mktemp("plain") / f"b{batch}.zarr"
        argv = ["cache", str(two_cameras), "--keys", "img", "--keys", "wrist", "--out", str(path), "--batch-size"]
        assert main([*argv, str(batch), "--checkpoint", str(checkpoint), *SMALL_ARGS, *LEVELS3]) == 0
        out[batch] = _features(path)
    return out


SMALL_ARGS = ["--image-size", "64", "--quiet"]


def _cache_with_prompts(replay: Path, checkpoint: Path, out: Path, *extra: str) -> list[str]:
    prompts = replay.with_name("prompts.json")
    prompts.write_text(json.dumps(PROMPTS))
    argv = ["cache", str(replay), "--keys", "img", "--keys", "wrist", "--mask-key", "img", "--prompts", str(prompts)]
    return [
        *argv,
        "--out",
        str(out),
        "--batch-size",
        "8",
        "--checkpoint",
        str(checkpoint),
        *SMALL_ARGS,
        *LEVELS3,
        *extra,
    ]


def test_cache_with_prompts_encodes_each_frame_once_into_both_caches(
    two_cameras, checkpoint, predictor, plain_features, tmp_path, monkeypatch, capsys
) -> None:
    import shutil

    from sam2_encoder.cli import main
    from sam2_encoder.diffusion_policy.feature_cache import FeatureCache, verify_cache
    from sam2_encoder.diffusion_policy.mask_cache import verify_mask_cache

    replay = Path(shutil.copytree(two_cameras, tmp_path / "replay.zarr"))
    passes: list[int] = []  # batch size of every trunk pass (the patch embedding runs once per pass)
    patch_embed = type(predictor.model.vision_encoder.backbone.patch_embed)
    original = patch_embed.forward
    monkeypatch.setattr(
        patch_embed, "forward", lambda self, x, *a, **k: passes.append(x.shape[0]) or original(self, x, *a, **k)
    )
    assert main(_cache_with_prompts(replay, checkpoint, tmp_path / "f.zarr")) == 0
    monkeypatch.undo()
    out = capsys.readouterr().out
    masks_path = replay.with_name("replay.img_masks.zarr")  # the default, as `sam2-encoder masks` names it
    assert f"feature cache ready: {tmp_path / 'f.zarr'}" in out and f"mask cache ready: {masks_path}\n" in out, out
    # img: one pass per frame (the tracker's); wrist: batches of 8 frames, as `sam2-encoder cache` encodes them
    assert sorted(passes) == [1] * (3 * STEPS) + [4, 8], passes

    # the masks are those of `sam2-encoder masks` (tracking each episode by hand), in the same format
    frames = np.asarray(open_group_data(replay)["img"][...])
    masks = MaskCache(masks_path).masks(range(3 * STEPS))
    for e in range(3):
        expected = by_hand(predictor, frames[e * STEPS : (e + 1) * STEPS], PROMPTS["episodes"][str(e)])
        assert np.array_equal(masks[e * STEPS : (e + 1) * STEPS], expected), e
    assert masks[:STEPS].any() and verify_mask_cache(masks_path) == [] and verify_cache(tmp_path / "f.zarr") == []

    # the features: those of `sam2-encoder cache` alone, bit for bit in the same batch composition (the tracked
    # camera against batches of 1, the other against batches of 8); the tracked camera against batches of 8 within
    # the reference's batch-composition variance (tests/test_numerics.py: < 1e-5 of the values' magnitude)
    features = _features(tmp_path / "f.zarr")
    for name, values in features.items():
        reference = plain_features[1 if name.startswith("img/") else 8][name]
        assert np.array_equal(values, reference), name
        batched = plain_features[8][name]
        assert np.abs(values - batched).max() <= 1e-5 * np.abs(batched).max(), name
    cache = FeatureCache(tmp_path / "f.zarr")
    assert cache.keys == ["img", "wrist"] and cache.spec["weights"] == weights_identity(checkpoint)
    alone = SAM2ImageEncoderFor(checkpoint)
    cache.check_compatible(alone, ["s4", "s8", "s16"], "coarse_to_fine")  # an encoder of that checkpoint reads it


def open_group_data(replay: Path):  # noqa: ANN201 - a zarr group
    from sam2_encoder.diffusion_policy.zarr_io import open_group

    return open_group(replay)["data"]


def SAM2ImageEncoderFor(checkpoint: Path):  # noqa: ANN201, N802
    from sam2_encoder import SAM2ImageEncoder

    return SAM2ImageEncoder("sam2.1_hiera_tiny", checkpoint=checkpoint, image_size=64)


def test_cache_with_prompts_resumes_after_an_interruption(two_cameras, checkpoint, predictor, tmp_path) -> None:
    """Interrupted after episode 0 (its masks done, feature chunk 0 = episodes 0-1 not), then after episode 1:
    each rerun tracks what is missing and the result equals an uninterrupted run's, byte for byte."""
    from sam2_encoder.diffusion_policy.feature_cache import CacheError, FeatureCache, verify_cache
    from sam2_encoder.diffusion_policy.tracked_cache import build_cache_with_masks
    from sam2_encoder.diffusion_policy.zarr_io import chunk_path

    def run(name: str, stop_at: int | None = None, **kwargs):  # noqa: ANN202
        def step(done: int, total: int) -> None:
            if done == stop_at:
                raise Interrupt

        return build_cache_with_masks(
            two_cameras, ["img"], predictor, PROMPTS, "w", out=tmp_path / f"{name}.zarr",
            masks_out=tmp_path / f"{name}_masks.zarr", levels=["s16"], dtype="float32", chunk_frames=8,
            on_episode=step, **kwargs,
        )  # fmt: skip

    full = run("full")
    with pytest.raises(Interrupt):
        run("part", stop_at=1)
    with pytest.raises(CacheError, match="is incomplete"):
        FeatureCache(tmp_path / "part.zarr")
    tracked = []
    original = predictor.track
    predictor.track = lambda *a, **k: tracked.append(1) or original(*a, **k)
    try:
        with pytest.raises(Interrupt):  # episode 0 tracked again for chunk 0's features (masks kept), then 1
            run("part", stop_at=2)
        assert len(tracked) == 2 * (STEPS - 1)
        assert verify_cache(tmp_path / "part.zarr")[0].endswith("(1 of 2 chunks still to encode): rerun the same "
                                                                "`sam2-encoder cache` command")  # fmt: skip
        tracked.clear()
        run("part")  # episode 2 has no prompts: encoded frame by frame, nothing tracked
        assert tracked == []
    finally:
        del predictor.track
    for a, b in zip(full, (tmp_path / "part.zarr", tmp_path / "part_masks.zarr")):
        assert _arrays(a) == _arrays(b), b
    # a chunk damaged between runs is found by the read-back before the cache is complete; the next run redoes it
    with pytest.raises(Interrupt):
        run("bad", stop_at=2)
    chunk = chunk_path(tmp_path / "bad.zarr", "features/img/s16", (0, 0, 0, 0))
    chunk.write_bytes(chunk.read_bytes()[:-7])
    with pytest.raises(CacheError, match=r"features/img/s16 chunk 0 \(frames 0-7\)"):
        run("bad")
    run("bad")
    assert _arrays(tmp_path / "bad.zarr") == _arrays(full[0])


def _arrays(path: Path) -> dict[str, bytes]:
    """Every array's values (by name) of a zarr group."""
    from sam2_encoder.diffusion_policy.zarr_io import open_group

    out: dict[str, bytes] = {}

    def walk(group, prefix: str) -> None:  # noqa: ANN001
        for name in sorted(group.keys()):
            item = group[name]
            if hasattr(item, "shape"):
                out[prefix + name] = np.asarray(item[...]).tobytes()
            else:
                walk(item, f"{prefix}{name}/")

    walk(open_group(path), "")
    return out


def test_cache_with_prompts_refuses_conflicts(two_cameras, predictor, tmp_path) -> None:
    from sam2_encoder.diffusion_policy.mask_cache import build_mask_cache as build
    from sam2_encoder.diffusion_policy.tracked_cache import build_cache_with_masks

    def run(keys, **kwargs):  # noqa: ANN202
        return build_cache_with_masks(two_cameras, keys, predictor, PROMPTS, "w", **kwargs)

    with pytest.raises(ValueError, match=r"with several keys \['img', 'wrist'\], name it with mask_key="):
        run(["img", "wrist"], out=tmp_path / "a")
    with pytest.raises(ValueError, match=r"mask_key 'cam' is not one of the keys to cache \['img'\]"):
        run(["img"], mask_key="cam", out=tmp_path / "a")
    with pytest.raises(ValueError, match=r"would both be .*same.zarr: give them two folders"):
        run(["img"], out=tmp_path / "same.zarr", masks_out=tmp_path / "same.zarr")
    bad = {"objects": [1], "episodes": {"0": {"1": {"box": [0, 0, 99, 9]}}, "1": {}, "2": {}}}
    with pytest.raises(ValueError, match=r"episode 0 object 1: box corner \[\[99.0, 9.0\]\] lies outside"):
        build_cache_with_masks(two_cameras, ["img"], predictor, bad, "w", out=tmp_path / "a", masks_out=tmp_path / "m")
    with pytest.raises(ValueError, match="needs_features and on_features go together"):
        build(two_cameras, "img", PROMPTS, tmp_path / "m", predictor, "w", needs_features=lambda a, b: True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "nothing written"


def test_cached_masks_workspace_preset_composes_and_builds(whole_masks: Path, replay, tmp_path: Path) -> None:
    """Cached features and cached masks together over DP's (stub) configs: DPMaskDataset wraps
    CachedFeatureDataset (dataset_target lists the chain), and the encoder's object tokens read cached features."""
    import importlib.util

    pytest.importorskip("hydra")
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from sam2_encoder import SAM2ImageEncoder
    from sam2_encoder.diffusion_policy.feature_cache import CachedFeatureDataset, build_cache

    features = build_cache(
        replay, ["img"], SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=32), out=tmp_path / "f.zarr", progress=False
    )
    stub = Path(__file__).parent / "dp_stub_config"
    chain = ["sam2_encoder.diffusion_policy.feature_cache.CachedFeatureDataset",
             "sam2_encoder.diffusion_policy.synthetic.ReplayImageDataset"]  # fmt: skip
    overrides = [
        f"feature_cache={features}",
        f"object_masks={whole_masks}",
        "num_objects=2",
        "policy.obs_encoder.image_size=32",
        "task.shape_meta.obs.image.shape=[3,48,48]",
        "horizon=4",
        f"task.dataset.zarr_path={replay}",
        f"task.dataset.dataset_target=[{','.join(chain)}]",
    ]
    with initialize_config_dir(config_dir=str(stub), version_base=None):
        cfg = compose(config_name="train_diffusion_unet_sam2_cached_masks_workspace", overrides=overrides)
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    assert cfg.shape_meta.obs.image_masks == {"shape": [2, 48, 48], "type": "mask", "camera": "image"}
    assert cfg.task.dataset._target_ == "sam2_encoder.diffusion_policy.mask_cache.DPMaskDataset"
    if importlib.util.find_spec("diffusion_policy") is None:  # core CI: no DP, so no DP base class to mix in
        cfg.task.dataset._target_ = "sam2_encoder.diffusion_policy.mask_cache.MaskDataset"
    dataset = instantiate(cfg.task.dataset)
    assert isinstance(dataset, MaskDataset) and type(dataset.dataset) is CachedFeatureDataset
    assert type(dataset.dataset.dataset) is ReplayImageDataset
    encoder = instantiate(cfg.policy.obs_encoder).eval()
    assert encoder.object_masks == {"image": "image_masks"} and encoder.num_objects == 2
    item = dataset[3]
    steps = cfg.n_obs_steps
    assert item["obs"]["image"].shape == (cfg.horizon, 256, 2, 2)  # cached s16 features, not pixels
    assert item["obs"]["image_masks"].shape == (cfg.horizon, 2, SIZE, SIZE)
    obs = {k: v[:steps] for k, v in item["obs"].items()}
    with torch.no_grad():
        out = encoder(obs)
        # the object tokens read the masks
        assert not torch.equal(out, encoder({**obs, "image_masks": torch.zeros_like(obs["image_masks"])}))
    assert out.shape == (steps, encoder.output_shape()[0])
    val = dataset.get_validation_dataset()
    assert type(val) is type(dataset) and type(val.dataset) is CachedFeatureDataset
    cfg.task.dataset.dataset_target = ["sam2_encoder.diffusion_policy.synthetic.ReplayImageDataset", chain[1]]
    with pytest.raises(
        Exception, match=r"lists sam2_encoder.diffusion_policy.synthetic.ReplayImageDataset before the end"
    ):
        instantiate(cfg.task.dataset)


def test_cache_with_prompts_and_random_weights_says_whose_they_are(two_cameras, tmp_path, capsys) -> None:
    """Seeded random weights of the video model are not SAM2ImageEncoder's: the feature cache says so, and an
    image encoder with random weights refuses it instead of reading features of other weights."""
    import shutil

    from sam2_encoder import SAM2ImageEncoder
    from sam2_encoder.cli import main
    from sam2_encoder.diffusion_policy.feature_cache import CacheError, FeatureCache

    replay = Path(shutil.copytree(two_cameras, tmp_path / "replay.zarr"))
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps(PROMPTS))
    assert main(["cache", str(replay), "--keys", "img", "--prompts", str(prompts), *SMALL_ARGS]) == 0
    captured = capsys.readouterr()
    assert "no --checkpoint: seeded random weights (features and masks are not meaningful)" in captured.err
    features, masks = tmp_path / "replay.sam2.1_hiera_tiny_64.features.zarr", tmp_path / "replay.img_masks.zarr"
    assert f"feature cache ready: {features} (" in captured.out and f"mask cache ready: {masks}" in captured.out
    cache = FeatureCache(features)  # both beside the replay buffer, named as `cache` and `masks` name them
    assert cache.spec["weights"] == "random:seed=0:video_model"
    assert MaskCache(masks).spec["weights"] == "random:seed=0"  # as `sam2-encoder masks` records it
    with pytest.raises(CacheError, match=r"weights random:seed=0:video_model in the cache vs random:seed=0"):
        cache.check_compatible(SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=64), ["s16"])
