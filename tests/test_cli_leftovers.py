"""Nothing is left behind: a stopped, killed or failed command leaves no partial output and no empty folder.

The rules (issue 23, point 4):

- SIGTERM stops a command as Ctrl-C does: its temporary outputs are removed, ``error: terminated``,
  exit status 143;
- a killed run (SIGKILL) cannot clean up: the next run removes the hidden partial outputs of
  processes that are no longer alive, and keeps those of running ones;
- a failed download or checkpoint fetch leaves no folder it created empty;
- ``--verify`` gives one piece of advice per state: an unfinished cache is finished by rerunning
  the command; a damaged one is deleted and rebuilt (unless a rerun redoes what is damaged).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sam2_encoder.cli import main
from sam2_encoder.cli.common import remove_stale_partials
from sam2_encoder.scene import synthetic_scene

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SMALL = ["--image-size", "64"]


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def _clip(path: Path, frames: int) -> Path:
    """A ``(T, 32, 32, 3)`` uint8 clip of a square moving right."""
    base = synthetic_scene(32, 32, seed=0)
    np.save(path, np.stack([np.roll(base, i % 8, axis=1) for i in range(frames)]))
    return path


def _track_process(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """``sam2-encoder track`` of a long clip in a subprocess, once its partial output folder holds a mask."""
    clip = _clip(tmp_path / "clip.npy", 3000)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "sam2_encoder.cli", "track", str(clip), "--point", "16,16", "--out", str(out)]
    proc = subprocess.Popen(
        [*argv, *SMALL, "--quiet"], cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    partial = tmp_path / f".out.{proc.pid}.partial"
    deadline = time.monotonic() + 240
    while not (partial / "masks").is_dir() or not any((partial / "masks").iterdir()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"track did not start writing in time (status {proc.poll()}): {proc.communicate()[1][-2000:]}")
        time.sleep(0.05)
    return proc, partial


def test_sigterm_stops_track_like_ctrl_c_and_leaves_nothing(tmp_path: Path) -> None:
    """SIGTERM mid-run: the hidden partial folder is removed, `error: terminated`, exit status 143 (128 + 15)."""
    proc, partial = _track_process(tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "error: terminated", err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.npy"], "no partial folder and no output"


def test_a_killed_runs_partial_output_is_removed_by_the_next_run(tmp_path: Path, capsys) -> None:
    """SIGKILL leaves `.out.<pid>.partial`; the next `track` to the same --out removes it (its pid is dead)."""
    proc, partial = _track_process(tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    assert partial.is_dir(), "a killed process cannot clean up"
    clip = tmp_path / "clip.npy"
    argv = ["track", str(clip), "--point", "16,16", "--out", str(tmp_path / "out"), "--max-frames", "2", *SMALL]
    assert main([*argv, "--quiet"]) == 0
    assert "tracked 2 frames" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.npy", "out"]


def test_only_partials_of_dead_processes_are_removed(tmp_path: Path) -> None:
    """A partial output of a running process (another `track` writing there now) is kept, as are other files."""
    dead, alive = _dead_pid(), os.getppid()
    for name in (f".out.{dead}.partial", f".out.{alive}.partial", ".other.7.partial", "out"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.png").write_bytes(b"x")
    (tmp_path / f".f.safetensors.{dead}.tmp").write_bytes(b"x")
    assert remove_stale_partials(tmp_path, "out", ".partial") == [tmp_path / f".out.{dead}.partial"]
    assert remove_stale_partials(tmp_path, "f.safetensors", ".tmp") == [tmp_path / f".f.safetensors.{dead}.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".out.{alive}.partial", ".other.7.partial", "out"])


def test_encode_out_removes_the_temporary_file_of_a_killed_run(tmp_path: Path) -> None:
    """`encode --out f.safetensors` writes `.f.safetensors.<pid>.tmp` first; one of a dead process is removed."""
    stale = tmp_path / f".f.safetensors.{_dead_pid()}.tmp"
    stale.write_bytes(b"half a file")
    assert main(["encode", "--out", str(tmp_path / "f.safetensors"), "--repeat", "1", "--json", *SMALL]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.safetensors"]


def test_a_failed_download_leaves_no_empty_folder(tmp_path: Path, http_server, monkeypatch, capsys) -> None:
    """`download` (404) into a new --dir or a new cache folder: the folders it created are gone; old ones stay."""
    work = tmp_path / "work"
    work.mkdir()
    argv = ["download", "sam2.1_hiera_tiny", "--base-url", http_server.url, "--quiet"]
    assert main([*argv, "--dir", str(work / "a" / "b")]) == 2
    assert "HTTP 404" in capsys.readouterr().err
    assert not (work / "a").exists()
    (work / "kept").mkdir()
    assert main([*argv, "--dir", str(work / "kept")]) == 2
    assert (work / "kept").is_dir() and not any((work / "kept").iterdir())
    monkeypatch.setenv("SAM2_ENCODER_CACHE", str(work / "cache"))
    assert main(argv) == 2
    assert sorted(p.name for p in work.iterdir()) == ["kept"]


def test_a_failed_hub_checkpoint_fetch_leaves_no_empty_cache_folder(
    tmp_path: Path, http_server, monkeypatch, capsys
) -> None:
    """`encode --checkpoint owner/name` that the hub answers with 404: no `cache/hub/owner--name` left empty."""
    monkeypatch.setenv("SAM2_ENCODER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_ENDPOINT", http_server.url)
    assert main(["encode", "--checkpoint", "someone/sam2-nothing", "--repeat", "1", *SMALL]) == 2
    assert "HTTP 404" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


# --------------------------------------------------------------------------------------------
# --verify: one piece of advice per state
# --------------------------------------------------------------------------------------------


def _replay(path: Path, episodes: int = 1, steps: int = 20) -> Path:
    from sam2_encoder.diffusion_policy.synthetic import write_replay_buffer

    return Path(write_replay_buffer(path, episodes=episodes, steps=steps, size=32))


def _advice(err: str) -> tuple[list[str], str]:
    lines = err.strip().splitlines()
    return lines[:-1], lines[-1]


def test_verify_of_an_unfinished_or_damaged_feature_cache_gives_one_advice(tmp_path: Path, capsys) -> None:
    """Unfinished: rerun (said once, no "delete"). Unfinished and damaged: delete and rebuild (no "rerun")."""
    from sam2_encoder import SAM2ImageEncoder
    from sam2_encoder.diffusion_policy.feature_cache import build_cache
    from sam2_encoder.diffusion_policy.zarr_io import chunk_path

    encoder = SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=32)
    out = build_cache(
        _replay(tmp_path / "r.zarr"), ["img"], encoder, out=tmp_path / "c.zarr", progress=False, chunk_frames=4,
        stop_after_chunks=2,
    )  # fmt: skip
    assert main(["cache", "--verify", str(out)]) == 2
    problems, summary = _advice(capsys.readouterr().err)
    assert problems == [
        f"error: {out} is incomplete (3 of 5 chunks still to encode): rerun the same `sam2-encoder cache` command"
    ]
    assert summary == f"{out}: 1 problem; the run that built it did not finish"
    chunk_path(out, "features/img/s16", (1, 0, 0, 0)).unlink()
    assert main(["cache", "--verify", str(out)]) == 2
    err = capsys.readouterr().err
    problems, summary = _advice(err)
    assert summary == f"{out}: 2 problems; delete the cache and rebuild it"
    assert "rerun" not in err and problems[0] == f"error: {out} is incomplete (3 of 5 chunks still to encode)"


def test_sigterm_keeps_finished_episodes_and_verify_advises_the_rerun(present_checkpoint: Path, tmp_path: Path, capsys):
    """`masks` stopped by SIGTERM in episode 1: exit 143, episode 0 kept; --verify says rerun, once.

    Damage in a finished episode of that unfinished cache is redone by the rerun (it reads them back), so the advice
    stays "rerun", and the rerun finishes a whole cache.
    """
    from sam2_encoder.diffusion_policy.zarr_io import chunk_path
    from sam2_encoder.streaming import StreamingPredictor

    replay = _replay(tmp_path / "r.zarr", episodes=3, steps=4)
    prompts = tmp_path / "p.json"
    prompts.write_text(
        json.dumps({"objects": [1], "episodes": {str(e): {"1": {"box": [4, 4, 20, 20]}} for e in range(3)}})
    )
    out = tmp_path / "m.zarr"
    argv = ["masks", str(replay), "--key", "img", "--prompts", str(prompts), "--out", str(out), "--quiet", *SMALL]
    argv += ["--checkpoint", str(present_checkpoint)]
    calls, original = [], StreamingPredictor.track

    def terminated_in_episode_1(self, *a, **k):
        calls.append(1)
        if len(calls) == 5:  # episode 0 tracks 3 frames after its prompt; the 2nd of episode 1
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *a, **k)

    StreamingPredictor.track = terminated_in_episode_1
    try:
        assert main(argv) == 143
    finally:
        StreamingPredictor.track = original
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: terminated"
    assert main(["masks", "--verify", str(out)]) == 2
    err = capsys.readouterr().err
    problems, summary = _advice(err)
    assert len(problems) == 1 and "rerun the same `sam2-encoder masks` command" in problems[0]
    assert summary == f"{out}: 1 problem; the run that built it did not finish" and "delete" not in err
    chunk_path(out, "masks", (1, 0, 0, 0)).unlink()  # a frame of the finished episode 0
    assert main(["masks", "--verify", str(out)]) == 2
    err = capsys.readouterr().err
    assert _advice(err)[1] == (
        f"{out}: 2 problems; rerun the same `masks` command: it finishes the mask cache and redoes what is damaged"
    )
    assert "delete" not in err
    assert main(argv) == 0
    assert main(["masks", "--verify", str(out)]) == 0
