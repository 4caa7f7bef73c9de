"""Async inference: ``predict_action_chunk`` on one observation at a time, and LeRobot's own policy server.

LeRobot's policy server calls ``predict_action_chunk`` on the latest observation only (never
``select_action``); the policy queues it like ``select_action`` does, so the server's actions are
``select_action``'s. ``python -m sam2_encoder.lerobot.serve`` starts LeRobot's unmodified server with
``sam2_diffusion`` allowed, and the stock ``robot_client`` drives the ``pusht_sim`` robot with it over
127.0.0.1. LeRobot 0.6 venv only (.ci/lerobot.sh).
"""

from __future__ import annotations

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
