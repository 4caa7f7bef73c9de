"""``sam2-encoder demo-data``: the small data README's commands run on, written whole or not at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sam2_encoder.cli import main

pytest.importorskip("zarr")

from sam2_encoder.diffusion_policy.mask_cache import check_mask_inputs  # noqa: E402
from sam2_encoder.diffusion_policy.zarr_io import open_group  # noqa: E402

FILES = {"replay.zarr", "prompts.json", "clip.npy", "frame.npy", "demo.json"}


def demo(tmp_path: Path, *args: str) -> Path:
    out = tmp_path / "demo"
    assert main(["demo-data", "--out", str(out), "--size", "64", "--steps", "8", *args]) == 0
    return out


def test_writes_a_replay_buffer_prompts_clip_and_frame_that_the_commands_accept(tmp_path: Path, capsys) -> None:
    """DP's layout (frames, low-dim, actions, episode ends); one box per episode around the square; episode 0."""
    out = demo(tmp_path)
    assert {p.name for p in out.iterdir()} == FILES
    root = open_group(out / "replay.zarr")
    frames = np.asarray(root["data"]["img"][...])
    assert frames.shape == (24, 64, 64, 3) and frames.dtype == np.uint8
    assert root["data"]["action"].shape == (24, 2) and root["data"]["agent_pos"].shape == (24, 2)
    assert np.asarray(root["meta"]["episode_ends"][...]).tolist() == [8, 16, 24]

    info = check_mask_inputs(out / "replay.zarr", "img", out / "prompts.json")  # what `masks` checks first
    assert info == {"frames": 24, "frame_shape": (64, 64), "episodes": 3, "objects": [1]}
    prompts = json.loads((out / "prompts.json").read_text())
    for episode, start in zip(("0", "1", "2"), (0, 8, 16)):
        x0, y0, x1, y1 = prompts["episodes"][episode]["1"]["box"]
        ys, xs = np.nonzero((frames[start] != 40).any(-1))  # the square on the grey background
        assert x0 < xs.min() and xs.max() < x1 and y0 < ys.min() and ys.max() < y1
        assert 0 <= x0 and 0 <= y0 and x1 <= 64 and y1 <= 64

    np.testing.assert_array_equal(np.load(out / "clip.npy"), frames[:8])
    np.testing.assert_array_equal(np.load(out / "frame.npy"), frames[0])
    printed = capsys.readouterr().out
    assert f"writing demo data to {out}" in printed and str(out / "replay.zarr") in printed


def test_the_same_command_again_writes_nothing_and_says_so(tmp_path: Path, capsys) -> None:
    """Each README block can start with demo-data: a second run with the same options keeps the files."""
    out = demo(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    capsys.readouterr()
    demo(tmp_path)
    assert "nothing written" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_an_empty_folder_is_filled_and_the_data_is_deterministic(tmp_path: Path) -> None:
    """An existing empty --out is used; the same options give the same bytes."""
    (tmp_path / "demo").mkdir()
    first = demo(tmp_path)
    frames = np.load(first / "clip.npy")
    other = tmp_path / "again"
    assert main(["demo-data", "--out", str(other), "--size", "64", "--steps", "8"]) == 0
    np.testing.assert_array_equal(np.load(other / "clip.npy"), frames)
    assert (other / "prompts.json").read_text() == (first / "prompts.json").read_text()


def test_a_killed_runs_partial_folder_is_removed_by_the_next_run(tmp_path: Path) -> None:
    """``.demo.<pid>.partial`` of a process that no longer exists goes; one of a live process stays."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".demo.{dead.pid}.partial"
    (stale / "replay.zarr").mkdir(parents=True)
    live = tmp_path / f".demo.{os.getppid()}.partial"
    live.mkdir()
    demo(tmp_path)
    assert not stale.exists() and live.is_dir()
    assert {p.name for p in (tmp_path / "demo").iterdir()} == FILES


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        ("file", [], "is a file: give a new or empty folder"),
        ("other", [], "holds other files"),
        ("demo", ["--size", "96"], "holds demo data made with other options"),
        (None, ["--size", "16"], "--size: expected a frame side from 32 to 1024 pixels, got 16"),
        (None, ["--size", "2000"], "got 2000"),
        (None, ["--episodes", "0"], "--episodes: expected a whole number >= 1, got 0"),
        (None, ["--steps", "x"], "--steps: expected a whole number >= 1, got 'x'"),
    ],
    ids=["out-is-a-file", "out-has-other-files", "out-has-other-demo", "size-16", "size-2000", "episodes-0", "steps-x"],
)
def test_bad_inputs_give_one_error_line_and_change_nothing(tmp_path: Path, capsys, make, args, message) -> None:
    """Exit 2, one ``error:`` line naming the option or folder; what was there stays, no partial folder."""
    out = tmp_path / "demo"
    if make == "file":
        out.write_text("mine")
    elif make == "other":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif make == "demo":
        demo(tmp_path)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    capsys.readouterr()
    assert main(["demo-data", "--out", str(out), "--size", "64", "--steps", "8", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    assert not _leftovers(tmp_path)


def test_lerobot_dataset_without_lerobot_is_refused_with_what_to_install(tmp_path: Path, capsys) -> None:
    """Where LeRobot is not installed, --lerobot says so (and how to get it) and writes nothing."""
    try:
        import lerobot  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("LeRobot is installed here: the next test covers --lerobot")
    assert main(["demo-data", "--out", str(tmp_path / "demo"), "--lerobot"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --lerobot needs LeRobot") and "integration/lerobot/README.md" in err
    assert not os.listdir(tmp_path)


def test_lerobot_dataset_holds_the_episodes_with_the_square_as_its_mask(tmp_path: Path) -> None:
    """With LeRobot: a local LeRobotDataset of the same frames, state, actions and the square's exact mask."""
    pytest.importorskip("lerobot", reason="needs LeRobot (the LeRobot venv of .ci/lerobot.sh)")
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    out = demo(tmp_path, "--lerobot")
    dataset = LeRobotDataset("local/sam2_demo", root=out / "lerobot")
    assert dataset.num_episodes == 3 and dataset.num_frames == 24
    frames = np.asarray(open_group(out / "replay.zarr")["data"]["img"][...])
    item = dataset[9]
    image = (item["observation.image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(image, frames[9])
    np.testing.assert_array_equal(item["observation.masks"].numpy(), (frames[9] != 40).any(-1)[None])
