"""The command line's small promises (issue 23, point 5), each as a user sees it.

- counts agree with their number: "1 thread", "1 frame", "1 process";
- ``encode``'s progress bar counts images; ``encode --out`` writes a file of the user's normal
  mode (umask) with what made it in the metadata;
- ``track`` names each output after its input frame;
- every option has help text, and every option with a default shows it;
- one spelling of the camera option: ``--key`` in ``cache`` and ``masks`` (``--keys`` still works);
- ``doctor`` names the torch build, with the CPU wheel command where a CUDA build has no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from sam2_encoder.cli import build_parser, main
from sam2_encoder.cli.doctor import CPU_INDEX, torch_build_note
from sam2_encoder.scene import synthetic_scene

SMALL = ["--image-size", "64"]
OURS = ("encode", "download", "cache", "masks", "track", "doctor")


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices  # noqa: SLF001


def _replay(path: Path, steps: int = 4) -> Path:
    from sam2_encoder.diffusion_policy.synthetic import write_replay_buffer

    return Path(write_replay_buffer(path, episodes=1, steps=steps, size=32))


def test_one_thing_is_counted_in_the_singular(tmp_path: Path, capsys) -> None:
    """encode with --threads 1 says "1 thread", track of one frame "1 frame", cache in one process "1 process"."""
    assert main(["encode", "--threads", "1", "--repeat", "1", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "1 thread)" in out and "threads" not in out
    frames = tmp_path / "frames"
    frames.mkdir()
    np.save(frames / "a.npy", synthetic_scene(32, 32, seed=0))
    assert main(["track", str(frames), "--point", "16,16", "--out", str(tmp_path / "t"), "--quiet", *SMALL]) == 0
    assert capsys.readouterr().out.startswith("tracked 1 frame in ")
    replay = _replay(tmp_path / "r.zarr")
    assert main(["cache", str(replay), "--key", "img", "--out", str(tmp_path / "c.zarr"), "--quiet", *SMALL]) == 0
    assert " s, 1 process)" in capsys.readouterr().out


def test_encode_progress_bar_counts_images_not_repeats(capsys) -> None:
    """--batch-size 2 --repeat 3: the bar goes to 6 images."""
    assert main(["encode", "--batch-size", "2", "--repeat", "3", *SMALL]) == 0
    err = capsys.readouterr().err
    assert "6/6" in err and "image/s" in err, err


def test_encode_out_has_the_users_file_mode_and_says_what_made_it(tmp_path: Path, capsys) -> None:
    """--out is 0o644 under umask 022 (not safetensors' 0o600) and records variant, size, weights, version."""
    from safetensors import safe_open

    from sam2_encoder import SAM2ImageEncoder, __version__

    out = tmp_path / "f.safetensors"
    old = os.umask(0o022)
    try:
        assert main(["encode", "--out", str(out), "--repeat", "1", "--json", *SMALL]) == 0
    finally:
        os.umask(old)
    assert json.loads(capsys.readouterr().out)["out"] == str(out)
    assert out.stat().st_mode & 0o777 == 0o644
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
        assert sorted(f.keys()) == ["s16", "s4", "s8"]
    assert meta["variant"] == "sam2.1_hiera_tiny" and meta["image_size"] == "64x64"
    assert meta["weights"] == SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=64).weights_id
    assert meta["sam2_encoder"] == __version__ and meta["checkpoint"] == "none (seeded random weights)"
    assert meta["input"] == "generated 480x640 test scene" and meta["levels"] == "s4,s8,s16"


def test_track_names_each_output_after_its_input_frame(tmp_path: Path, capsys) -> None:
    """Folder frames keep their names (stem + .png; whole names where two stems collide); a stack is numbered."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for name in ("cam_010", "cam_002"):
        np.save(frames / f"{name}.npy", synthetic_scene(32, 32, seed=1))
    out = tmp_path / "t"
    args = ["--point", "16,16", "--out", str(out), "--quiet", *SMALL]
    assert main(["track", str(frames), *args]) == 0
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["cam_002.png", "cam_010.png"]
    assert sorted(p.name for p in (out / "overlay").iterdir()) == ["cam_002.png", "cam_010.png"]
    from PIL import Image

    Image.fromarray(synthetic_scene(32, 32, seed=2)).save(frames / "cam_002.png")
    assert main(["track", str(frames), *args]) == 0
    assert sorted(p.name for p in (out / "masks").iterdir()) == [
        "cam_002.npy.png",
        "cam_002.png.png",
        "cam_010.npy.png",
    ]
    np.save(tmp_path / "clip.npy", np.stack([synthetic_scene(32, 32, seed=i) for i in range(2)]))
    assert main(["track", str(tmp_path / "clip.npy"), *args]) == 0
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["000000.png", "000001.png"]
    capsys.readouterr()


@pytest.mark.parametrize("command", OURS)
def test_every_option_has_help_and_shows_its_default(command: str) -> None:
    """Each option of the command explains itself in --help, and any option with a value by default shows it."""
    parser = _subparsers()[command]
    text = " ".join(parser.format_help().split())
    for action in parser._actions:  # noqa: SLF001
        if action.dest == "help":
            continue
        name = action.option_strings[0] if action.option_strings else action.dest
        assert action.help, f"{command} {name} has no help text"
        default = action.default
        if action.option_strings and default is not None and default is not False and default != []:
            shown = " ".join(default) if isinstance(default, list) else default
            assert f"(default: {shown})" in text, f"{command} {name}: default {default} not shown"


def test_the_camera_option_is_key_in_cache_and_masks_and_keys_still_works() -> None:
    """`cache --key a --key b` == `cache --keys a --keys b`; `masks --key a` == `masks --keys a`."""
    parse = build_parser().parse_args
    assert parse(["cache", "r.zarr", "--key", "a", "--key", "b"]).keys == ["a", "b"]
    assert parse(["cache", "r.zarr", "--keys", "a", "--key", "b"]).keys == ["a", "b"]
    assert parse(["masks", "r.zarr", "--key", "a"]).key == parse(["masks", "r.zarr", "--keys", "a"]).key == "a"
    for command in ("cache", "masks"):
        assert "--key KEY, --keys KEY" in _subparsers()[command].format_help()


def test_doctor_says_which_torch_build_and_when_the_cpu_wheel_is_the_one_to_install(capsys) -> None:
    """A CUDA build with no GPU gets the CPU wheel command (same version); a CPU build or a used GPU does not."""
    note = torch_build_note("2.15.0+cu132", "13.2", gpu_visible=False, cuda_bytes=int(2.7 * 2**30))
    assert note.startswith("CUDA 13.2 build and 2.7 GiB of CUDA libraries, but no CUDA device is visible")
    assert f"pip install --force-reinstall 'torch==2.15.0' --index-url {CPU_INDEX}" in note
    assert torch_build_note("2.15.0", "13.2", gpu_visible=True) == "CUDA 13.2 build"
    assert torch_build_note("2.13.0+cpu", None, gpu_visible=False) == "CPU build"
    main(["doctor"])
    lines = capsys.readouterr().out.splitlines()
    build = next(line for line in lines if line.startswith("torch build"))
    assert (
        build.split(maxsplit=2)[2] == torch_build_note(torch.__version__, torch.version.cuda, torch.cuda.is_available())
        or "GiB of CUDA libraries" in build
    )
    assert lines[0].startswith("python ") and lines[2].startswith("torch ")
