"""Async inference: ``predict_action_chunk`` on one observation at a time, and LeRobot's own policy server.

LeRobot's policy server calls ``predict_action_chunk`` on the latest observation only (never
``select_action``); the policy queues it like ``select_action`` does, so the server's actions are
``select_action``'s. ``python -m sam2_encoder.lerobot.serve`` starts LeRobot's unmodified server with
``sam2_diffusion`` allowed, and the stock ``robot_client`` drives the ``pusht_sim`` robot with it over
127.0.0.1. LeRobot 0.6 venv only (.ci/lerobot.sh).
"""

from __future__ import annotations

import importlib.metadata
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip(
    "lerobot", reason="LeRobot 0.6 is not installed here (it needs Python >= 3.12); .ci/lerobot.sh runs these tests"
)
import torch  # noqa: E402
from lerobot.rollout.inference.rtc import supports_rtc_inference  # noqa: E402

from sam2_encoder.lerobot import SAM2DiffusionPolicy  # noqa: E402

from .test_policy import CAMERAS, TrunkCounter, frames, make_config  # noqa: E402


def noise(seed: int = 3) -> torch.Tensor:
    """Initial noise ``(1, horizon=8, A=2)`` for one prediction; also seeds the sampler's steps (DDPM draws noise)."""
    torch.manual_seed(seed)
    return torch.randn(1, 8, 2, generator=torch.Generator().manual_seed(seed))


def pair() -> tuple[SAM2DiffusionPolicy, SAM2DiffusionPolicy]:
    """Two policies with the same seeded weights (n_obs_steps=2, n_action_steps=4), in eval mode."""
    torch.manual_seed(0)
    first = SAM2DiffusionPolicy(make_config()).eval()
    second = SAM2DiffusionPolicy(make_config()).eval()
    second.load_state_dict(first.state_dict(), strict=True)
    return first, second


def test_one_observation_after_reset_is_padded_like_select_action_pads_it() -> None:
    """At an episode start the window is the first observation repeated ``n_obs_steps`` times."""
    policy, _ = pair()
    policy.reset()
    with torch.inference_mode():
        chunk = policy.predict_action_chunk(frames(0), noise=noise())
        window = {key: torch.stack([value, value], dim=1) for key, value in frames(0).items()}
        offline = policy.predict_action_chunk(window, noise=noise())
    assert chunk.shape == (1, 4, 2)
    assert torch.equal(chunk, offline)


def test_chunks_equal_select_actions_on_the_same_observation_sequence() -> None:
    """Called on every observation, ``predict_action_chunk`` keeps the history ``select_action`` keeps:
    the chunk predicted at a re-planning step is exactly the actions ``select_action`` returns from there."""
    selecting, chunking = pair()
    selecting.reset()
    chunking.reset()
    with torch.inference_mode():
        selected = [selecting.select_action(frames(t), noise=noise(t)) for t in range(8)]
        chunks = [chunking.predict_action_chunk(frames(t), noise=noise(t)) for t in range(8)]
    for start in (0, 4):  # select_action re-plans every n_action_steps=4 steps
        # equal up to float rounding: the frame memo groups the frames it encodes differently (select_action
        # encodes the two frames of step 4 together, predict_action_chunk one per call)
        torch.testing.assert_close(chunks[start][0], torch.cat(selected[start : start + 4]), rtol=0, atol=1e-5)
    assert not torch.equal(chunks[0], chunks[4])


def test_frame_reuse_across_calls_and_reset_between_episodes() -> None:
    """Each call encodes only the new frame of each camera; after ``reset`` the next episode starts afresh."""
    policy, _ = pair()
    counter = TrunkCounter(policy)
    policy.reset()
    with torch.inference_mode():
        first = [policy.predict_action_chunk(frames(t), noise=noise()) for t in range(3)]
        assert counter.rows == [len(CAMERAS)] * 3  # step 0: the repeated first frame is encoded once
        policy.reset()
        again = policy.predict_action_chunk(frames(0), noise=noise())
    assert counter.rows == [len(CAMERAS)] * 4  # the remembered frames were forgotten: encoded again
    assert torch.equal(again, first[0])


def test_an_offline_window_leaves_the_queues_alone() -> None:
    policy, _ = pair()
    policy.reset()
    window = {key: torch.stack([frames(1)[key], value], dim=1) for key, value in frames(2).items()}
    with torch.inference_mode():
        policy.predict_action_chunk(window, noise=noise())
    assert not any(policy._queues[key] for key in policy.obs_keys)


def test_one_observation_with_a_missing_camera_names_it() -> None:
    policy, _ = pair()
    obs = frames(0)
    del obs[CAMERAS[1]]
    with pytest.raises(KeyError, match=r"predict_action_chunk: missing \['observation.images.wrist'\]"):
        policy.predict_action_chunk(obs)


def test_no_real_time_chunking() -> None:
    """``supports_rtc()`` is False: ``lerobot-rollout --inference.type=rtc`` refuses the policy (use sync)."""
    policy, _ = pair()
    assert policy.supports_rtc() is False and not supports_rtc_inference(policy)


def test_serve_adds_sam2_diffusion_once_to_the_list_the_server_checks(tmp_path, monkeypatch) -> None:
    """LeRobot's list is extended in place (the server module reads that very object); nothing else changes."""
    pytest.importorskip("grpc", reason="grpcio is not installed: pip install './integration/lerobot[async]'")
    monkeypatch.chdir(tmp_path)  # importing LeRobot's server opens its log file under ./logs
    from lerobot.async_inference import policy_server

    from sam2_encoder.lerobot.serve import allow_in_policy_server

    before = list(policy_server.SUPPORTED_POLICIES)
    try:
        allow_in_policy_server()
        allowed = allow_in_policy_server()
        assert allowed is policy_server.SUPPORTED_POLICIES
        assert [p for p in allowed if p != "sam2_diffusion"] == before and allowed.count("sam2_diffusion") == 1
    finally:
        policy_server.SUPPORTED_POLICIES[:] = before


# ------------------------------------------------------------------------------------------------
# LeRobot's policy server (python -m sam2_encoder.lerobot.serve) and its stock robot client, over 127.0.0.1
# ------------------------------------------------------------------------------------------------


def wait_for(log: Path, text: str, procs: list[subprocess.Popen], timeout: float) -> str:
    """The log's text once it holds ``text``; fails (with the log's end) on timeout or when a process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = log.read_text() if log.exists() else ""
        if text in out:
            return out
        exited = [p.args[2] for p in procs if p.poll() is not None]
        assert not exited, f"{exited} exited before {text!r} appeared in {log.name}:\n{out[-6000:]}"
        time.sleep(0.5)
    raise AssertionError(f"{text!r} did not appear in {log.name} within {timeout} s:\n{out[-6000:]}")


def stop(proc: subprocess.Popen, sig: int = signal.SIGINT) -> None:
    """Stop a process (``sig``, then SIGKILL after 20 s); no-op when it has exited."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


def test_lerobot_policy_server_and_robot_client_run_an_episode(tmp_path_factory, meta_checkpoint, tmp_path) -> None:
    """The stock client sends the robot's observations; LeRobot's server (with sam2_diffusion accepted) answers
    with action chunks; the robot performs them until its episode completes."""
    pytest.importorskip("grpc", reason="grpcio is not installed: pip install './integration/lerobot[async]'")
    pytest.importorskip("gym_pusht", reason="gym-pusht is not installed: pip install 'lerobot[pusht]'")
    for dist in ("lerobot_policy_sam2", "lerobot_robot_pusht"):
        try:
            importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError:
            pytest.skip(f"the {dist} plugin is not installed (.ci/lerobot.sh installs it)")
    from .deploy_checkpoint import free_port, offline_env, trained_checkpoint

    model = trained_checkpoint(tmp_path_factory, meta_checkpoint)
    env = offline_env(tmp_path / "home")
    port = free_port()
    server_log, client_log = tmp_path / "server.log", tmp_path / "client.log"
    python = sys.executable
    server_cmd = [python, "-m", "sam2_encoder.lerobot.serve", "--host=127.0.0.1", f"--port={port}", "--fps=10"]
    server_cmd += ["--inference_latency=0", "--obs_queue_timeout=2"]
    client_cmd = [python, "-m", "lerobot.async_inference.robot_client", "--robot.type=pusht_sim"]
    client_cmd += ["--robot.episode_length=8", f"--robot.calibration_dir={tmp_path / 'calib'}"]
    client_cmd += [f"--server_address=127.0.0.1:{port}", "--policy_type=sam2_diffusion"]
    client_cmd += [f"--pretrained_name_or_path={model}", "--policy_device=cpu", "--client_device=cpu"]
    client_cmd += ["--actions_per_chunk=8", "--chunk_size_threshold=0.5", "--fps=10", "--task=push the T"]
    procs: list[subprocess.Popen] = []
    try:
        with server_log.open("w") as out:
            procs.append(subprocess.Popen(server_cmd, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT))
        wait_for(server_log, f"PolicyServer started on 127.0.0.1:{port}", procs, timeout=120)
        with client_log.open("w") as out:
            procs.append(subprocess.Popen(client_cmd, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT))
        wait_for(client_log, "pusht_sim episode 0 finished: 8 steps", procs, timeout=300)
    finally:
        for proc in reversed(procs):  # the client first (SIGINT: it disconnects the robot), then the server
            stop(proc)
    server, client = server_log.read_text(), client_log.read_text()
    assert "Policy type: sam2_diffusion" in server and "Action chunk #" in server
    assert "pusht_sim disconnected" in client
    assert "not supported" not in server and "Error in StreamActions" not in server
