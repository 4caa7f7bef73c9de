from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sam2_encoder import variants
from sam2_encoder.checkpoints import sha256sum
from sam2_encoder.cli import main
from sam2_encoder.scene import synthetic_scene

FIXTURES = Path(__file__).parent / "fixtures"
if str(FIXTURES) not in sys.path:
    sys.path.insert(0, str(FIXTURES))


def test_encode_on_the_embedded_default(capsys) -> None:
    assert main(["encode", "--image-size", "64", "--repeat", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["shapes"] == {"s4": [1, 32, 16, 16], "s8": [1, 64, 8, 8], "s16": [1, 256, 4, 4]}
    assert report["input"] == "generated 480x640 test scene" and report["ms_per_image"] > 0


def test_encode_files_and_save(tmp_path: Path, capsys) -> None:
    from safetensors.torch import load_file

    image = tmp_path / "frame.npy"
    np.save(image, synthetic_scene(60, 80, seed=1))
    out = tmp_path / "features.safetensors"
    assert main(["encode", str(image), "--image-size", "64", "--repeat", "1", "--out", str(out)]) == 0
    assert "s16: (1, 256, 4, 4)" in capsys.readouterr().out
    saved = load_file(str(out))
    from sam2_encoder import SAM2ImageEncoder

    expected = SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=64)(np.load(image)).s16
    torch.testing.assert_close(saved["s16"], expected)


@pytest.fixture(scope="module")
def tiny_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Meta's complete sam2.1_hiera_tiny.pt layout with seeded weights (a real, verifiable checkpoint)."""
    from meta_weights import meta_state_dict_from_manifest
    from safetensors import safe_open

    with safe_open(str(FIXTURES / "meta_golden.safetensors"), "pt") as f:
        manifest = json.loads(f.metadata()["golden"])["manifests"]["sam2.1_hiera_tiny"]
    path = tmp_path_factory.mktemp("tiny") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": meta_state_dict_from_manifest(manifest, 0)}, path)
    return path


def test_download_pins_and_verifies(tmp_path: Path, http_server, tiny_pt: Path, capsys) -> None:
    shutil.copyfile(tiny_pt, http_server.root / "sam2.1_hiera_tiny.pt")
    target = tmp_path / "ckpts"
    args = ["download", "sam2.1_hiera_tiny", "--dir", str(target), "--base-url", http_server.url, "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "sam2.1_hiera_tiny: downloaded" in out and "every key and shape" in out and "pinned in" in out
    digest = sha256sum(target / "sam2.1_hiera_tiny.pt")
    assert digest == sha256sum(tiny_pt)
    assert (target / "SHA256SUMS").read_text() == f"{digest}  sam2.1_hiera_tiny.pt\n"
    # present and intact: verified against the pin, nothing fetched
    n = len(http_server.requests)
    assert main(args) == 0
    assert "present" in capsys.readouterr().out and len(http_server.requests) == n
    # the local file is altered: it fails verification and is replaced by a verified download
    (target / "sam2.1_hiera_tiny.pt").write_bytes(b"tampered")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "sam2.1_hiera_tiny: replaced" in out and "note: the file that was present failed verification" in out
    assert sha256sum(target / "sam2.1_hiera_tiny.pt") == digest
    assert (target / "SHA256SUMS").read_text() == f"{digest}  sam2.1_hiera_tiny.pt\n"
    # --force downloads again and verifies against the pin
    assert main([*args, "--force"]) == 0
    assert "matches the pin" in capsys.readouterr().out
    assert sorted(p.name for p in target.iterdir()) == ["SHA256SUMS", "sam2.1_hiera_tiny.pt"]


def test_download_refuses_what_is_not_the_checkpoint(tmp_path: Path, http_server, capsys) -> None:
    (http_server.root / "sam2.1_hiera_tiny.pt").write_bytes(b"<!DOCTYPE html><html>sign in</html>" * 50)
    target = tmp_path / "ckpts"
    args = ["download", "sam2.1_hiera_tiny", "--dir", str(target), "--base-url", http_server.url, "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: sam2.1_hiera_tiny: ") and "HTML page" in err and len(err.splitlines()) == 1
    assert not target.exists()  # nothing placed, nothing pinned, no .part, and no empty folder it created


def test_download_errors(tmp_path: Path, http_server, capsys) -> None:
    assert main(["download", "sam9_hiera_huge", "--dir", str(tmp_path)]) == 2
    assert "known variants" in capsys.readouterr().err
    assert main(["download", "sam2_hiera_tiny", "--dir", str(tmp_path), "--base-url", http_server.url, "--quiet"]) == 2
    assert "HTTP 404" in capsys.readouterr().err
    assert main(["download"]) == 2


def test_console_script_is_installed() -> None:
    import shutil
    import subprocess

    exe = shutil.which("sam2-encoder") or str(Path(sys.executable).with_name("sam2-encoder"))
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert "encode" in out and "download" in out
    assert variants.get_variant("sam2.1_hiera_tiny")


# --------------------------------------------------------------------------------------------
# user errors: one `error: ...` line naming the option / file / value, exit status 2, nothing left
# --------------------------------------------------------------------------------------------


def _png(path: Path, seed: int = 0, size: tuple[int, int] = (48, 64)) -> Path:
    from PIL import Image

    Image.fromarray(synthetic_scene(*size, seed=seed)).save(path)
    return path


def _truncated_png(path: Path) -> Path:
    data = _png(path).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _frames(folder: Path, n: int = 3, bad: int | None = None) -> Path:
    folder.mkdir()
    for i in range(n):
        (_truncated_png if i == bad else _png)(folder / f"{i}.png")
    return folder


def _replay(path: Path) -> Path:
    from sam2_encoder.diffusion_policy.synthetic import write_replay_buffer

    return write_replay_buffer(path, episodes=1, steps=4, size=32)


def _json(path: Path, value: object) -> Path:
    path.write_text(value if isinstance(value, str) else json.dumps(value))
    return path


ONE_EPISODE = {"objects": [1], "episodes": {"0": {"1": {"points": [[16, 16]]}}}}


def _masks(t: Path, prompts: object = ONE_EPISODE, *extra: str) -> list[str]:
    """``masks`` over a fresh 1-episode 32x32 replay buffer with ``prompts``."""
    replay = _replay(t / "r.zarr")
    return ["masks", str(replay), "--key", "img", "--prompts", str(_json(t / "p.json", prompts)), *SMALL, *extra]


def _cache_prompts(t: Path, prompts: object = ONE_EPISODE) -> list[str]:
    """``cache --prompts`` over a fresh 1-episode 32x32 replay buffer."""
    replay = _replay(t / "r.zarr")
    return ["cache", str(replay), "--keys", "img", "--prompts", str(_json(t / "p.json", prompts)), *SMALL, "--quiet"]


def _feature_cache(t: Path) -> Path:
    """A complete feature cache of a 1-episode replay buffer (seeded random weights)."""
    from sam2_encoder import SAM2ImageEncoder
    from sam2_encoder.diffusion_policy.feature_cache import build_cache

    encoder = SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=32)
    return build_cache(_replay(t / "other.zarr"), ["img"], encoder, out=t / "f.zarr", progress=False)


SMALL = ["--image-size", "64"]
USER_ERRORS = [
    # (id, argv builder(tmp_path), message fragment)
    (
        "encode batch 0",
        lambda t: ["encode", "--batch-size", "0"],
        "argument --batch-size: expected a whole number >= 1, got 0",
    ),
    (
        "encode threads -1",
        lambda t: ["encode", "--threads", "-1"],
        "argument --threads: expected a whole number >= 0, got -1",
    ),
    (
        "encode repeat 0",
        lambda t: ["encode", "--repeat", "0"],
        "argument --repeat: expected a whole number >= 1, got 0",
    ),
    (
        "encode repeat text",
        lambda t: ["encode", "--repeat", "two"],
        "argument --repeat: expected a whole number >= 1, got 'two'",
    ),
    (
        "encode image size 100",
        lambda t: ["encode", "--image-size", "100"],
        "expected a positive multiple of 32, got 100 (nearest valid: 96)",
    ),
    (
        "encode image size 0",
        lambda t: ["encode", "--image-size", "0"],
        "argument --image-size: expected a positive multiple of 32, got 0",
    ),
    ("encode truncated png", lambda t: ["encode", str(_truncated_png(t / "cut.png")), *SMALL], "cut.png: "),
    ("encode missing file", lambda t: ["encode", str(t / "nope.png"), *SMALL], "nope.png: no such file"),
    (
        "encode float npy",
        lambda t: ["encode", str(_npy(t / "f.npy", np.zeros((8, 8, 3), np.float32))), *SMALL],
        "f.npy: expected uint8 pixels, got float32",
    ),
    (
        "encode 2-channel npy",
        lambda t: ["encode", str(_npy(t / "c.npy", np.zeros((8, 8, 2), np.uint8))), *SMALL],
        "c.npy: expected an (H, W, 3) frame, got shape (8, 8, 2)",
    ),
    ("encode out folder missing", lambda t: ["encode", "--out", str(t / "no" / "f.safetensors"), *SMALL], "the folder"),
    (
        "encode out not safetensors",
        lambda t: ["encode", "--out", str(t / "f.pt"), *SMALL],
        "f.pt: expected a .safetensors file name",
    ),
    (
        "encode unknown variant",
        lambda t: ["encode", "--variant", "sam9_hiera_huge", *SMALL],
        "--variant 'sam9_hiera_huge': unknown SAM 2 variant",
    ),
    ("encode device typo", lambda t: ["encode", "--device", "gpu0", *SMALL], "--device 'gpu0' is not a torch device"),
    (
        "encode missing checkpoint",
        lambda t: ["encode", "--checkpoint", str(t / "w.pt"), *SMALL],
        "checkpoint not found: ",
    ),
    ("encode bad dtype", lambda t: ["encode", "--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
    ("track no prompt", lambda t: ["track", str(_frames(t / "f")), *SMALL], "give at least one --point X,Y"),
    (
        "track empty folder",
        lambda t: ["track", str(_mkdir(t / "empty")), "--point", "1,1", *SMALL],
        "empty holds no frames",
    ),
    ("track missing input", lambda t: ["track", str(t / "none"), "--point", "1,1", *SMALL], "input not found: "),
    (
        "track max frames -1",
        lambda t: ["track", "x", "--point", "1,1", "--max-frames", "-1"],
        "argument --max-frames: expected a whole number >= 0, got -1",
    ),
    (
        "track point outside",
        lambda t: ["track", str(_frames(t / "f")), "--point", "70,5", *SMALL],
        "frame 0: --point 70,5: point [[70.0, 5.0]] lies outside the 64x48 (W x H) frame: x must be in [0, 64]",
    ),
    (
        "track negative outside",
        lambda t: ["track", str(_frames(t / "f")), "--point", "3,3", "--negative=-1,5", *SMALL],
        "frame 0: --negative -1,5: point [[-1.0, 5.0]] lies outside",
    ),
    (
        "track point nan",
        lambda t: ["track", "x", "--point", "nan,1"],
        "argument --point: points must be [[x, y], ...] of finite numbers, got [[nan, 1.0]]",
    ),
    ("track point 3 numbers", lambda t: ["track", "x", "--point", "1,2,3"], "got '1,2,3'"),
    (
        "track box inverted",
        lambda t: ["track", str(_frames(t / "f")), "--box", "10,10,5,5", *SMALL],
        "argument --box: box must have x1 > x0 and y1 > y0, got [10.0, 10.0, 5.0, 5.0]",
    ),
    (
        "track box outside",
        lambda t: ["track", str(_frames(t / "f")), "--box", "0,0,65,10", *SMALL],
        "frame 0: --box 0,0,65,10: box corner [[65.0, 10.0]] lies outside the 64x48 (W x H) frame",
    ),
    (
        "track out not ours",
        lambda t: [
            "track",
            str(_frames(t / "f")),
            "--point",
            "3,3",
            "--out",
            str(_mkdir(t / "mine", "notes.txt")),
            *SMALL,
        ],
        "exists and is not the output of an earlier",
    ),
    (
        "track truncated frame",
        lambda t: ["track", str(_frames(t / "f", bad=1)), "--point", "3,3", "--out", str(t / "o"), *SMALL],
        "1.png: ",
    ),
    (
        "track empty npy stack",
        lambda t: ["track", str(_npy(t / "s.npy", np.zeros((0, 8, 8, 3), np.uint8))), "--point", "1,1"],
        "s.npy holds no frames",
    ),
    ("cache nothing given", lambda t: ["cache"], "give the replay buffer to encode"),
    ("cache no keys", lambda t: ["cache", str(t / "r.zarr")], "name the image keys of"),
    ("cache replay missing", lambda t: ["cache", str(t / "r.zarr"), "--keys", "img"], "replay buffer not found: "),
    (
        "cache replay not zarr",
        lambda t: ["cache", str(_mkdir(t / "r.zarr")), "--keys", "img", *SMALL],
        "r.zarr is not a zarr group",
    ),
    (
        "cache unknown key",
        lambda t: ["cache", str(_replay(t / "r.zarr")), "--keys", "cam", "--out", str(t / "c.zarr"), *SMALL, "--quiet"],
        "has no data/cam; it has ['action', 'agent_pos', 'img']",
    ),
    (
        "cache low-dim key",
        lambda t: [
            "cache",
            str(_replay(t / "r.zarr")),
            "--keys",
            "agent_pos",
            "--out",
            str(t / "c.zarr"),
            *SMALL,
            "--quiet",
        ],
        "data/agent_pos of",
    ),
    (
        "cache out is the replay",
        lambda t: ["cache", str(_replay(t / "r.zarr")), "--keys", "img", "--out", str(t / "r.zarr"), *SMALL, "--quiet"],
        "r.zarr is not a sam2_encoder feature cache (no 'sam2_encoder' attributes); pass another --out",
    ),
    (
        "cache out is a file",
        lambda t: [
            "cache",
            str(_replay(t / "r.zarr")),
            "--keys",
            "img",
            "--out",
            str(_touch(t / "c")),
            *SMALL,
            "--quiet",
        ],
        "is not a zarr group (a file)",
    ),
    (
        "cache batch 0",
        lambda t: ["cache", "r.zarr", "--keys", "img", "--batch-size", "0"],
        "argument --batch-size: expected a whole number >= 1, got 0",
    ),
    (
        "cache verify and build",
        lambda t: ["cache", "r.zarr", "--verify", "c.zarr"],
        "--verify CACHE checks an existing cache",
    ),
    ("cache verify missing", lambda t: ["cache", "--verify", str(t / "c.zarr")], "feature cache not found: "),
    (
        "masks no key",
        lambda t: ["masks", "r.zarr", "--prompts", "p.json"],
        "the following arguments are required: --key",
    ),
    ("masks replay missing", lambda t: ["masks", str(t / "r.zarr"), "--key", "img", "--prompts", "p.json"], "replay"),
    (
        "masks prompts missing",
        lambda t: ["masks", str(_replay(t / "r.zarr")), "--key", "img", "--prompts", str(t / "p.json")],
        "p.json: no such file",
    ),
    ("masks prompts not json", lambda t: _masks(t, "{objects: [1]"), "p.json is not valid JSON: "),
    (
        "masks prompts no episodes",
        lambda t: _masks(t, {"objects": [1]}),
        "p.json must be {'objects': [ids], 'episodes': {...}}, got ['objects']",
    ),
    (
        "masks prompts episode missing",
        lambda t: _masks(t, {"objects": [1], "episodes": {}}),
        "p.json: episodes 0 have no prompts (list every episode; {} for none)",
    ),
    (
        "masks prompts episode out of range",
        lambda t: _masks(t, {"objects": [1], "episodes": {"0": {}, "1": {}}}),
        "p.json: episode '1' is not an index of the 1 episodes",
    ),
    (
        "masks point outside the frame",
        lambda t: _masks(t, {"objects": [1], "episodes": {"0": {"1": {"points": [[40, 5]]}}}}),
        "p.json: episode 0 object 1: point [[40.0, 5.0]] lies outside the 32x32 (W x H) frame",
    ),
    (
        "masks box inverted",
        lambda t: _masks(t, {"objects": [1], "episodes": {"0": {"1": {"box": [20, 20, 4, 4]}}}}),
        "p.json: episode 0 object 1: box must have x1 > x0 and y1 > y0, got [20, 20, 4, 4]",
    ),
    (
        "masks point a string",
        lambda t: _masks(t, {"objects": [1], "episodes": {"0": {"1": {"points": [["4", 5]]}}}}),
        "p.json: episode 0 object 1: points must be [[x, y], ...] of finite numbers, got [['4', 5]]",
    ),
    (
        "masks labels per point",
        lambda t: _masks(t, {"objects": [1], "episodes": {"0": {"1": {"points": [[4, 5]], "labels": [1, 0]}}}}),
        "p.json: episode 0 object 1: labels must be one 1 (object) or 0 (background) per point, got [1, 0]",
    ),
    (
        "masks unknown key",
        lambda t: [*_masks(t), "--key", "cam"],
        "has no data/cam; it has ['action', 'agent_pos', 'img']",
    ),
    ("masks low-dim key", lambda t: [*_masks(t), "--key", "agent_pos"], "data/agent_pos of"),
    (
        "masks out is the replay",
        lambda t: [*_masks(t), "--out", str(t / "r.zarr")],
        "is not a mask cache (no 'sam2_encoder_masks' attributes); pass another --out",
    ),
    (
        "masks out is a file",
        lambda t: [*_masks(t), "--out", str(_touch(t / "m"))],
        "m is not a mask cache: it is not a zarr group (a file); pass another --out",
    ),
    ("masks unknown variant", lambda t: [*_masks(t), "--variant", "sam9"], "--variant 'sam9': unknown SAM 2 variant"),
    ("masks image size 100", lambda t: [*_masks(t), "--image-size", "100"], "got 100 (nearest valid: 96)"),
    (
        "cache mask key without prompts",
        lambda t: ["cache", str(_replay(t / "r.zarr")), "--keys", "img", "--mask-key", "img"],
        "--mask-key img goes with --prompts P.json",
    ),
    (
        "cache masks out without prompts",
        lambda t: ["cache", str(_replay(t / "r.zarr")), "--keys", "img", "--masks-out", "m.zarr"],
        "--masks-out m.zarr goes with --prompts P.json",
    ),
    (
        "cache prompts with two keys",
        lambda t: [*_cache_prompts(t), "--keys", "wrist"],
        "--prompts tracks one camera: with several --key cameras (img, wrist) name it with --mask-key",
    ),
    (
        "cache mask key not a key",
        lambda t: [*_cache_prompts(t), "--mask-key", "wrist"],
        "--mask-key wrist is not one of the --key cameras img",
    ),
    ("cache keys twice", lambda t: [*_cache_prompts(t), "--keys", "img"], "--key img given more than once"),
    (
        "cache prompts missing",
        lambda t: ["cache", str(_replay(t / "r.zarr")), "--keys", "img", "--prompts", str(t / "p.json")],
        "p.json: no such file",
    ),
    (
        "cache prompts outside the frame",
        lambda t: _cache_prompts(t, {"objects": [1], "episodes": {"0": {"1": {"box": [4, 4, 40, 8]}}}}),
        "p.json: episode 0 object 1: box corner [[40.0, 8.0]] lies outside the 32x32 (W x H) frame",
    ),
    (
        "cache prompts key not in replay",
        lambda t: [*_cache_prompts(t), "--keys", "cam", "--mask-key", "cam"],
        "has no data/cam",
    ),
    (
        "cache out is masks out",
        lambda t: [*_cache_prompts(t), "--out", str(t / "x.zarr"), "--masks-out", str(t / "x.zarr")],
        "--out and --masks-out are both",
    ),
    (
        "cache masks out is a feature cache",
        lambda t: [*_cache_prompts(t), "--masks-out", str(_feature_cache(t))],
        "is not a mask cache (no 'sam2_encoder_masks' attributes) (it is a feature cache",
    ),
    (
        "cache verify with prompts",
        lambda t: ["cache", "--verify", "c.zarr", "--prompts", "p.json"],
        "--verify CACHE checks an existing feature cache: give no --prompts with it",
    ),
    ("download nothing", lambda t: ["download"], "name at least one variant, or --all"),
    (
        "download unknown",
        lambda t: ["download", "sam2.1_hiera_tiny", "sam9", "--dir", str(t / "d")],
        "unknown SAM 2 variant 'sam9'",
    ),
    ("download dir is a file", lambda t: ["download", "sam2.1_hiera_tiny", "--dir", str(_touch(t / "f"))], "--dir"),
    ("unknown command", lambda t: ["decode"], "argument command: invalid choice: 'decode'"),
]


def _npy(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


def _mkdir(path: Path, *files: str) -> Path:
    path.mkdir()
    for name in files:
        (path / name).write_text("mine")
    return path


def _touch(path: Path) -> Path:
    path.write_text("")
    return path


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("case", USER_ERRORS, ids=[c[0] for c in USER_ERRORS])
def test_user_errors_are_one_line_exit_2_and_leave_nothing(case, tmp_path: Path, capsys, monkeypatch) -> None:
    _, build, fragment = case
    monkeypatch.chdir(tmp_path)
    argv = build(tmp_path)
    before = _tree(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, err
    assert errors[0].startswith("error: ") and fragment in errors[0], errors[0]
    assert _tree(tmp_path) == before, "a failed run left files behind"


def test_cache_prompts_refused_under_torchrun(tmp_path: Path, capsys, monkeypatch) -> None:
    argv = _cache_prompts(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(argv) == 2
    assert "error: --prompts tracks each episode in one process: run it without torchrun" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    from sam2_encoder.cli.common import CLIError

    with pytest.raises(CLIError, match="no such file"):
        main(["--debug", "encode", str(tmp_path / "nope.png")])
    assert main(["--help"]) == 0


def test_cache_without_zarr_says_how_to_install_it(tmp_path: Path, monkeypatch, capsys) -> None:
    for name in [m for m in sys.modules if m == "zarr" or m.startswith("sam2_encoder.diffusion_policy.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "zarr", None)  # what `import zarr` does when it is not installed
    _mkdir(tmp_path / "r.zarr")
    assert main(["cache", str(tmp_path / "r.zarr"), "--keys", "img"]) == 2
    assert "the cache command needs zarr: pip install 'sam2-encoder[dp]'" in capsys.readouterr().err
    assert main(["cache", "--verify", str(tmp_path / "c.zarr")]) == 2
    assert "pip install 'sam2-encoder[dp]'" in capsys.readouterr().err


def test_track_writes_only_when_done_and_replaces_its_own_output(tmp_path: Path, capsys) -> None:
    frames = _frames(tmp_path / "f")
    out = tmp_path / "o"
    args = ["track", str(frames), "--point", "20,20", "--out", str(out), *SMALL, "--quiet"]
    assert main(args) == 0
    assert _tree(out) == [
        "masks",
        *[f"masks/{i}.png" for i in range(3)],
        "overlay",
        *[f"overlay/{i}.png" for i in range(3)],
        "track.json",
    ]
    assert main([*args, "--no-overlay", "--max-frames", "2"]) == 0  # an earlier output is replaced whole
    assert _tree(out) == ["masks", "masks/0.png", "masks/1.png", "track.json"]
    assert json.loads((out / "track.json").read_text())["frames"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "o"]


# --------------------------------------------------------------------------------------------
# masks: tracker masks of every episode of a replay buffer
# --------------------------------------------------------------------------------------------

MASK_PROMPTS = {
    "objects": [1, 2],
    "episodes": {
        "0": {"1": {"points": [[24, 24]], "labels": [1]}, "2": {"box": [2, 2, 20, 20]}},
        "1": {"2": {"box": [10, 10, 40, 40]}},
        "2": {},
    },
}


def test_masks_command_tracks_every_episode_and_resumes(present_checkpoint: Path, tmp_path: Path, capsys) -> None:
    from sam2_encoder.diffusion_policy.mask_cache import MaskCache, build_mask_cache, weights_identity
    from sam2_encoder.diffusion_policy.synthetic import write_replay_buffer
    from sam2_encoder.streaming import StreamingPredictor

    replay = Path(write_replay_buffer(tmp_path / "r.zarr", episodes=3, steps=4))
    prompts = _json(tmp_path / "prompts.json", MASK_PROMPTS)
    args = ["masks", str(replay), "--key", "img", "--prompts", str(prompts), "--checkpoint", str(present_checkpoint)]
    args += [*SMALL, "--quiet"]
    assert main(args) == 0
    out = tmp_path / "r.img_masks.zarr"  # the default: beside the replay buffer
    assert f"mask cache ready: {out}" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.json", "r.img_masks.zarr", "r.zarr"]
    cache = MaskCache(out)
    assert cache.spec["weights"] == weights_identity(present_checkpoint) and cache.spec["image_size"] == 64

    # the same as the library with the same predictor
    predictor = StreamingPredictor("sam2.1_hiera_tiny", checkpoint=present_checkpoint, image_size=64, download=False)
    reference = MaskCache(
        build_mask_cache(
            replay, "img", MASK_PROMPTS, tmp_path / "lib.zarr", predictor, weights_identity(present_checkpoint)
        )
    )
    masks = cache.masks(range(12))
    assert np.array_equal(masks, reference.masks(range(12)))
    assert masks[:4].any(axis=(0, 2, 3)).all() and not masks[8:].any()  # tracked in episode 0, none in 2

    # interrupted during episode 1 (Ctrl-C): episode 0 is kept, the rerun tracks only what is left
    resumed = tmp_path / "resumed.zarr"
    calls = []
    original = StreamingPredictor.track

    def interrupt_on_fifth(self, *a, **k):
        calls.append(1)
        if len(calls) == 5:  # episode 0 tracks 3 frames after its prompt; the 2nd of episode 1
            raise KeyboardInterrupt
        return original(self, *a, **k)

    StreamingPredictor.track = interrupt_on_fifth
    try:
        assert main([*args, "--out", str(resumed)]) == 130
        assert capsys.readouterr().err.strip().splitlines()[-1] == "error: interrupted"
        from sam2_encoder.diffusion_policy.zarr_io import open_group

        assert list(open_group(resumed)["episode_done"][...]) == [True, False, False]
        calls.clear()
        assert main([*args, "--out", str(resumed)]) == 0
    finally:
        StreamingPredictor.track = original
    assert len(calls) == 3, "only episode 1 was tracked again (episode 2 has no objects)"
    assert f"resuming {resumed}: 1 of 3 episodes already tracked" in capsys.readouterr().err
    assert np.array_equal(MaskCache(resumed).masks(range(12)), masks)

    # other arguments on an existing cache: refused by name, the cache untouched
    before = _tree(resumed)
    assert main([*args, "--out", str(resumed), "--image-size", "96"]) == 2
    err = capsys.readouterr().err
    assert "was built from other arguments (image_size: cache 64, now 96)" in err, err
    assert _tree(resumed) == before
