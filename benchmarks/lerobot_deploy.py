"""Control-step latency of sam2_diffusion deployed through LeRobot: sync rollout and async inference.

The ``pusht_sim`` robot (gym-pusht's render, 96x96) feeds a sam2_diffusion policy (SAM 2 tiny,
seeded random weights: the timing does not depend on the weights) through LeRobot's own code:

- sync (``lerobot-rollout --inference.type=sync``): LeRobot's ``SyncInferenceEngine.get_action`` per
  tick (observation preparation, preprocessor, ``select_action``, postprocessor); a chunk is
  predicted every ``n_action_steps`` ticks. Reported: the mean tick (the ``infer`` share of a
  control period), the predicting ticks and the others.
- async (policy server): the server's ``PolicyServer._predict_action_chunk`` on one observation
  per request (observation to action chunk, in-process: no gRPC transfer).

For SAM 2 at 96 and 224 px, 1 and 2 threads, frame reuse on and off.

    .ci/venv-lerobot/bin/python benchmarks/lerobot_deploy.py            # writes benchmarks/results/local/
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import add_output_args, machine_info, output_path, pyplot, write_json

from sam2_encoder import __version__

NAME = "lerobot_deploy"
CAMERA = "observation.images.top"


def make_policy(size: int, reuse: bool, inference_steps: int) -> tuple[Any, Any, Any]:
    """A sam2_diffusion policy for the pusht_sim robot (one 96x96 camera, 2-d state/action) and its processors."""
    import warnings

    from lerobot.configs import FeatureType, PolicyFeature
    from lerobot.policies import make_pre_post_processors

    from sam2_encoder.lerobot import SAM2DiffusionConfig, SAM2DiffusionPolicy

    config = SAM2DiffusionConfig(
        device="cpu",
        input_features={
            CAMERA: PolicyFeature(FeatureType.VISUAL, (3, 96, 96)),
            "observation.state": PolicyFeature(FeatureType.STATE, (2,)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
        sam2_image_size=size,
        reuse_frames=reuse,
        num_train_timesteps=inference_steps,
        push_to_hub=False,
    )
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seeded random SAM 2 weights on purpose
        policy = SAM2DiffusionPolicy(config).eval()
    span = {"min": np.zeros(2), "max": np.full(2, 512.0), "mean": np.full(2, 256.0), "std": np.full(2, 128.0)}
    stats = {"observation.state": span, "action": span}
    pre, post = make_pre_post_processors(config, dataset_stats=stats)
    return policy, pre, post


def robot_frames(ticks: int) -> tuple[list[dict[str, Any]], Any]:
    """``ticks`` observations of the pusht_sim robot driven by a fixed circling target, and the robot."""
    from lerobot.robots import RobotConfig, make_robot_from_config
    from lerobot.utils.import_utils import register_third_party_plugins

    register_third_party_plugins()
    robot = make_robot_from_config(RobotConfig.get_choice_class("pusht_sim")(episode_length=10_000))
    robot.connect()
    frames = []
    for t in range(ticks):
        frames.append(robot.get_observation())
        robot.send_action({"x.pos": 256 + 100 * np.cos(0.2 * t), "y.pos": 256 + 100 * np.sin(0.2 * t)})
    robot.disconnect()
    return frames, robot


def time_sync(policy: Any, pre: Any, post: Any, robot: Any, frames: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-tick time of LeRobot's SyncInferenceEngine.get_action (the rollout's infer step)."""
    from lerobot.rollout.inference import SyncInferenceEngine
    from lerobot.utils.feature_utils import build_dataset_frame, hw_to_dataset_features

    features = {
        **hw_to_dataset_features(robot.observation_features, "observation", use_video=False),
        **hw_to_dataset_features(robot.action_features, "action", use_video=False),
    }
    keys = list(robot.action_features)
    engine = SyncInferenceEngine(policy, pre, post, features, keys, "push", "cpu", robot.name)
    engine.reset()
    ticks = []
    for obs in frames:
        frame = build_dataset_frame(features, obs, "observation")
        start = time.perf_counter()
        engine.get_action(frame)
        ticks.append(1e3 * (time.perf_counter() - start))
    n = policy.config.n_action_steps
    predicting = [ms for i, ms in enumerate(ticks) if i % n == 0]
    others = [ms for i, ms in enumerate(ticks) if i % n != 0]
    return {
        "tick_ms_mean": float(np.mean(ticks)),
        "predict_tick_ms_median": float(np.median(predicting)),
        "other_tick_ms_median": float(np.median(others)) if others else None,
        "ticks": len(ticks),
    }


def policy_server_module() -> Any:
    """LeRobot's ``async_inference.policy_server`` module, imported from a temporary folder.

    Its import opens ``./logs/policy_server_<time>.log`` (LeRobot's ``get_logger`` runs when the class is
    defined): from a temporary folder that log does not land in the current folder (the checkout).
    """
    import importlib

    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="lerobot_deploy_", ignore_cleanup_errors=True) as folder:
        os.chdir(folder)
        try:
            return importlib.import_module("lerobot.async_inference.policy_server")
        finally:
            os.chdir(here)


def time_async(policy: Any, pre: Any, post: Any, robot: Any, frames: list[dict[str, Any]]) -> dict[str, Any]:
    """Observation-to-chunk time of LeRobot's policy server code on one observation per request."""
    from lerobot.async_inference.configs import PolicyServerConfig
    from lerobot.async_inference.helpers import TimedObservation, map_robot_keys_to_lerobot_features

    server = policy_server_module().PolicyServer(PolicyServerConfig(host="127.0.0.1", port=1, fps=10))
    server.policy, server.preprocessor, server.postprocessor = policy, pre, post
    server.lerobot_features = map_robot_keys_to_lerobot_features(robot)
    server.actions_per_chunk, server.device = policy.config.n_action_steps, "cpu"
    policy.reset()
    times = []
    for step, obs in enumerate(frames):
        timed = TimedObservation(timestamp=time.time(), observation={**obs, "task": "push"}, timestep=step)
        start = time.perf_counter()
        chunk = server._predict_action_chunk(timed)
        times.append(1e3 * (time.perf_counter() - start))
        assert len(chunk) == policy.config.n_action_steps
    return {"request_ms_median": float(np.median(times[1:])), "first_request_ms": times[0], "requests": len(times)}


def plot(report: dict[str, Any], path: Path) -> str | None:
    plt = pyplot()
    if plt is None:
        return None
    rows = report["rows"]
    labels = [f"{r['size']}px {r['threads']}t {'reuse' if r['reuse_frames'] else 'no reuse'}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.bar(x - 0.2, [r["sync"]["tick_ms_mean"] for r in rows], 0.4, label="sync: mean tick (infer)")
    ax.bar(x + 0.2, [r["async"]["request_ms_median"] for r in rows], 0.4, label="async: observation -> chunk")
    ax.axhline(1e3 / report["fps"], color="k", lw=0.8, ls="--", label=f"control period at {report['fps']} Hz")
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("ms")
    ax.set_title(f"sam2_diffusion on pusht_sim through LeRobot ({report['machine']['cpu'][:40]})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 224])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--ticks", type=int, default=24, help="sync control ticks per configuration")
    parser.add_argument("--requests", type=int, default=6, help="async requests per configuration")
    parser.add_argument("--inference-steps", type=int, default=10, help="denoising steps per chunk")
    add_output_args(parser, NAME)
    args = parser.parse_args()
    machine = machine_info(torch.device("cpu"))  # the load average before the runs
    frames, robot = robot_frames(max(args.ticks, args.requests))
    rows = []
    for size in args.sizes:
        for threads in args.threads:
            for reuse in (True, False):
                torch.set_num_threads(threads)
                policy, pre, post = make_policy(size, reuse, args.inference_steps)
                with torch.inference_mode():
                    sync = time_sync(policy, pre, post, robot, frames[: args.ticks])
                    asyn = time_async(policy, pre, post, robot, frames[: args.requests])
                row = {"size": size, "threads": threads, "reuse_frames": reuse, "sync": sync, "async": asyn}
                rows.append(row)
                print(
                    f"{size:4d}px {threads}t reuse={reuse!s:5}: sync tick {sync['tick_ms_mean']:7.1f} ms "
                    f"(predicting {sync['predict_tick_ms_median']:7.1f}) | async {asyn['request_ms_median']:7.1f} ms",
                    flush=True,
                )
    report = {
        "benchmark": NAME,
        "sam2_encoder": __version__,
        "variant": "sam2.1_hiera_tiny",
        "fps": 10,
        "n_obs_steps": 2,
        "n_action_steps": 8,
        "inference_steps": args.inference_steps,
        "machine": machine,
        "rows": rows,
    }
    path = output_path(args, NAME)
    path.parent.mkdir(parents=True, exist_ok=True)
    report["plot"] = plot(report, path.with_suffix(".png"))
    write_json(report, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
