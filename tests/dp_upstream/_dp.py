"""Helpers for the upstream Diffusion Policy tests: locate DP, check its deps, run its train.py.

Nothing here stands in for DP: its own ``train.py`` runs in a subprocess, and reload / inference
use its own workspace classes, imported from a copy of the user's (or the shared) checkout with
only the fix that ``integration/diffusion_policy/README.md`` tells users to apply.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "integration" / "diffusion_policy" / "README.md"
TEST_CONFIG = Path(__file__).resolve().parent / "config"
SHARED_DP = REPO.parent / "shared" / "third_party" / "diffusion_policy"
TESTED_DP_COMMIT = "5ba07ac"

# What DP's train.py + PushTImageDataset + DiffusionUnetImagePolicy import (module: pip name).
TRAIN_DEPS = {
    "torchvision": "torchvision",
    "diffusers": "diffusers",
    "numba": "numba",
    "dill": "dill",
    "wandb": "wandb",
    "pandas": "pandas",
    "zarr": "zarr==2.18.*",
    "numcodecs": "numcodecs<0.16",
    "hydra": "hydra-core",
    "einops": "einops",
}
# DP's real-robot datasets (RealPushTImageDataset) and the pusht simulator rollouts.
REAL_DEPS = {
    "cv2": "opencv-python-headless",
    "av": "av",
    "imagecodecs": "imagecodecs",
    "threadpoolctl": "threadpoolctl",
}
SIM_DEPS = {
    "gym": "gym==0.21.0",
    "pygame": "pygame",
    "pymunk": "pymunk==6.2.1",
    "shapely": "shapely",
    "skimage": "scikit-image",
    "cv2": "opencv-python-headless",
    "av": "av",
}
HOW_TO_ENABLE = (
    "run `bash .ci/dp.sh` (builds .ci/venv-dp exactly as integration/diffusion_policy/README.md says and "
    "runs these tests), or install per that guide and run `SAM2_DP_SRC=/path/to/diffusion_policy "
    "python -m pytest tests/dp_upstream`"
)

# The runner DP ships for tasks without a simulator; replaces pusht's gym-based runner.
NO_SIM_RUNNER = [
    "~task.env_runner",
    "+task.env_runner={_target_: diffusion_policy.env_runner.real_pusht_image_runner.RealPushTImageRunner}",
    "checkpoint.topk.k=0",
]


def dp_source() -> Path | None:
    """The DP checkout to test: ``$SAM2_DP_SRC``, else the shared snapshot beside the repository."""
    env = os.environ.get("SAM2_DP_SRC")
    path = Path(env) if env else SHARED_DP
    return path if (path / "train.py").is_file() and (path / "diffusion_policy").is_dir() else None


def missing_modules(deps: Mapping[str, str]) -> list[str]:
    """Pip names of ``deps`` whose module is not importable here (zarr must be zarr 2)."""
    missing = [pip for mod, pip in deps.items() if importlib.util.find_spec(mod) is None]
    if "zarr" in deps and "zarr" not in [m for m in deps if importlib.util.find_spec(m) is None]:
        if not importlib.metadata.version("zarr").startswith("2."):
            missing.append(f"{deps['zarr']} (found zarr {importlib.metadata.version('zarr')}; DP needs the zarr 2 API)")
    return missing


def guide_block_lines(pattern: str) -> list[str]:
    """Lines of the guide's ```bash blocks that match ``pattern`` (commands users paste)."""
    text = GUIDE.read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        lines += [ln for ln in block.splitlines() if re.search(pattern, ln)]
    return lines


def guide_block(marker: str) -> str:
    """The guide's one ```bash block containing ``marker``, verbatim."""
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", GUIDE.read_text(), flags=re.S) if marker in b]
    assert len(blocks) == 1, f"expected one bash block with {marker!r} in {GUIDE}, found {len(blocks)}"
    return blocks[0]


def run_guide_block(marker: str, cwd: Path, extra_path: Sequence[Path] = (), timeout: float = 600) -> tuple[str, float]:
    """Run a guide block with bash in ``cwd`` (this venv's ``python`` first on PATH); fail with its output."""
    env = python_env(extra_path, cache_dir=cwd / ".sam2_encoder_cache")
    start = time.perf_counter()
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", guide_block(marker)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"guide block with {marker!r} failed:\n{output[-6000:]}"
    return output, time.perf_counter() - start


def fix_command() -> str:
    """The guide's diffusers import fix for DP's lr_scheduler.py (exactly one line)."""
    lines = guide_block_lines(r"lr_scheduler\.py")
    assert len(lines) == 1, f"expected one fix command mentioning lr_scheduler.py in {GUIDE}, found {lines}"
    return lines[0]


def python_env(extra_path: Sequence[Path] = (), cache_dir: Path | None = None) -> dict[str, str]:
    """Environment for DP subprocesses: this venv's python first on PATH, 1 thread, offline.

    ``cache_dir`` becomes ``$SAM2_ENCODER_CACHE`` (never the user's checkpoint cache).
    """
    env = dict(os.environ)
    if cache_dir is not None:
        env["SAM2_ENCODER_CACHE"] = str(cache_dir)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    env["WANDB_MODE"] = "disabled"
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in extra_path)
    return env


def copy_dp(src: Path, dest: Path) -> Path:
    """Copy a DP checkout's code (``diffusion_policy/``, ``train.py``, ``eval.py``) and apply the guide's fix."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "data", "outputs", ".git")
    shutil.copytree(src / "diffusion_policy", dest / "diffusion_policy", ignore=ignore)
    for name in ("train.py", "eval.py"):
        shutil.copy2(src / name, dest / name)
    result = subprocess.run(["bash", "-c", fix_command()], cwd=dest, env=python_env(), capture_output=True, text=True)
    assert result.returncode == 0, f"the guide's fix command failed:\n{result.stdout}\n{result.stderr}"
    return dest


def write_pusht_replay(path: Path, episodes: int = 3, steps: int = 20, size: int = 96, seed: int = 0) -> Path:
    """A pusht-style replay buffer written with DP's own ``ReplayBuffer`` (zarr 2).

    ``data/img`` (N, size, size, 3) uint8, ``data/state`` (N, 5) float32 (agent xy + block pose),
    ``data/action`` (N, 2) float32 (next agent xy), ``meta/episode_ends``. Every frame differs
    from every other (a moving block plus the frame index stamped into the top row), so a frame
    memo cannot hit by accident.
    """
    from diffusion_policy.common.replay_buffer import ReplayBuffer

    rng = np.random.default_rng(seed)
    buffer = ReplayBuffer.create_empty_numpy()
    for e in range(episodes):
        pos = np.clip(256 + np.cumsum(rng.normal(0, 20, size=(steps, 2)), axis=0), 20, 492)
        img = np.full((steps, size, size, 3), 235, np.uint8)
        for t in range(steps):
            y, x = (pos[t] * size / 512).astype(int)
            img[t, max(0, y - 6) : y + 6, max(0, x - 6) : x + 6] = (40, 60, 200)
            img[t, 0, :8, 0] = [(e * steps + t) >> b & 1 for b in range(8)]  # frame index, one bit per pixel
        state = np.concatenate([pos, np.tile([256.0, 256.0, 0.3], (steps, 1))], axis=1).astype(np.float32)
        action = np.concatenate([pos[1:], pos[-1:]]).astype(np.float32)
        buffer.add_episode({"img": img, "state": state, "action": action})
    buffer.save_to_path(str(path), chunk_length=-1)
    return path


def shape_meta_hash(shape_meta: Mapping) -> str:
    """The md5 RealPushTImageDataset names its replay-buffer cache after."""
    return hashlib.md5(json.dumps(shape_meta, sort_keys=True).encode("utf-8")).hexdigest()


def write_real_dataset(folder: Path, shape_meta: Mapping, episodes: int = 3, steps: int = 20, seed: int = 0) -> Path:
    """A dataset folder that DP's ``RealPushTImageDataset(use_cache=True)`` loads from its cache.

    DP converts recorded videos into a replay buffer once and caches it as
    ``<dataset_path>/<md5(shape_meta)>.zarr.zip``; we write that cache with DP's ``ReplayBuffer``
    (rgb keys (N, H, W, 3) uint8, low-dim keys, ``action`` (N, 2)), so DP skips the conversion.
    """
    import zarr
    from diffusion_policy.common.replay_buffer import ReplayBuffer

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    buffer = ReplayBuffer.create_empty_numpy()
    obs = shape_meta["obs"]
    for e in range(episodes):
        pos = np.clip(0.5 + np.cumsum(rng.normal(0, 0.05, size=(steps, 2)), axis=0), 0.05, 0.95)
        episode = {"action": np.concatenate([pos[1:], pos[-1:]]).astype(np.float32)}
        for c, (key, attr) in enumerate(sorted(obs.items())):
            if attr.get("type", "low_dim") == "rgb":
                _, h, w = attr["shape"]
                frames = np.full((steps, h, w, 3), 30 + 40 * c, np.uint8)
                for t in range(steps):
                    y, x = int(pos[t, 0] * (h - 8)), int(pos[t, 1] * (w - 8))
                    frames[t, y : y + 8, x : x + 8] = (220, 180 - 50 * c, 40 + 60 * c)
                    frames[t, 0, :8, 0] = [(e * steps + t) >> b & 1 for b in range(8)]
                episode[key] = frames
            elif attr.get("type", "low_dim") == "low_dim":  # DP's loader skips other types (our masks)
                episode[key] = np.concatenate([pos, pos[:, :1]], axis=1)[:, : attr["shape"][0]].astype(np.float32)
        buffer.add_episode(episode)
    with zarr.ZipStore(str(folder / f"{shape_meta_hash(shape_meta)}.zarr.zip"), mode="w") as store:
        buffer.save_to_store(store)
    return folder


def link_weights(meta_weights: Path, folder: Path) -> Path:
    """A hard link to the Meta checkpoint in ``folder`` that a test may rename away (the eval machine lacks it)."""
    path = folder / "checkpoints" / meta_weights.name
    path.parent.mkdir(parents=True, exist_ok=True)
    os.link(meta_weights, path)
    return path


def tiny_overrides(out_dir: Path, epochs: int = 2, steps: int = 2, batch: int = 4) -> list[str]:
    """Settings that make DP's train.py cheap on a CPU: tiny UNet, 64 px SAM 2 input, few steps."""
    loader = [f"batch_size={batch}", "num_workers=0", "pin_memory=false", "persistent_workers=false"]
    return [
        "policy.obs_encoder.image_size=64",
        "policy.down_dims=[32,64]",
        "policy.diffusion_step_embed_dim=32",
        "policy.num_inference_steps=4",
        "training.device=cpu",
        f"training.num_epochs={epochs}",
        f"training.max_train_steps={steps}",
        "training.max_val_steps=1",
        "training.checkpoint_every=1",
        "training.lr_warmup_steps=1",
        *[f"dataloader.{kv}" for kv in loader],
        *[f"val_dataloader.{kv}" for kv in loader],
        "logging.mode=disabled",
        f"hydra.run.dir={out_dir}",
    ]


def run_train(
    dp_dir: Path,
    args: Iterable[str],
    out_dir: Path,
    extra_path: Sequence[Path] = (),
    timeout: float = 600,
) -> tuple[str, float]:
    """Run DP's own ``train.py`` in ``dp_dir``; return its output and wall time, fail with its tail."""
    cmd = [sys.executable, "train.py", *args]
    env = python_env(extra_path, cache_dir=out_dir.parent / "sam2_encoder_cache")
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=dp_dir, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"DP train.py failed ({' '.join(cmd)}):\n{output[-6000:]}"
    assert (out_dir / "logs.json.txt").is_file(), output[-3000:]
    return output, seconds


def read_logs(out_dir: Path) -> list[dict]:
    """DP's JsonLogger lines (one dict per logged step)."""
    return [json.loads(line) for line in (out_dir / "logs.json.txt").read_text().splitlines() if line.strip()]


_SITECUSTOMIZE = '''"""Written by tests/dp_upstream: no network for DP subprocesses (loopback allowed)."""
import socket

_connect = socket.socket.connect


def _guarded_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
        raise OSError(f"network access blocked by tests/dp_upstream: {address!r}")
    return _connect(self, address)


socket.socket.connect = _guarded_connect
'''


def write_guards(folder: Path, blocked: Iterable[str] = ()) -> Path:
    """A PYTHONPATH folder that blocks the network and makes ``blocked`` modules unimportable.

    Proves that a run needs neither: the sim / real-robot extras are absent for DP as far as that
    process can tell (importing one raises ImportError naming this test), and no socket leaves
    the machine.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    for name in blocked:
        (folder / name).mkdir(exist_ok=True)
        (folder / name / "__init__.py").write_text(
            f'raise ImportError("{name} is blocked by tests/dp_upstream: this run must not need it")\n'
        )
    return folder


def load_like_eval(checkpoint: Path, output_dir: Path, encoder_overrides: Mapping | None = None):
    """Reload a DP checkpoint exactly as DP's ``eval.py`` does and return the policy in eval mode.

    ``torch.load(pickle_module=dill)``, the workspace class from the saved cfg re-run from scratch,
    ``load_payload`` (strict ``load_state_dict`` of model, EMA model and optimizer), the EMA model
    when ``training.use_ema``. ``encoder_overrides`` change ``policy.obs_encoder`` arguments in
    the saved cfg first (e.g. ``{"reuse_frames": False}`` for a reference policy).
    """
    import copy

    import dill
    import hydra
    import torch
    from omegaconf import open_dict

    with open(checkpoint, "rb") as f:
        payload = torch.load(f, pickle_module=dill)
    cfg = copy.deepcopy(payload["cfg"])
    if encoder_overrides:
        with open_dict(cfg):
            for key, value in encoder_overrides.items():
                cfg.policy.obs_encoder[key] = value
    cls = hydra.utils.get_class(cfg._target_)
    workspace = cls(cfg, output_dir=str(output_dir))
    workspace.load_payload(payload, exclude_keys=None, include_keys=None)
    policy = workspace.ema_model if cfg.training.use_ema else workspace.model
    policy.eval()
    return policy, cfg, payload


def count_trunk_frames(policy) -> list[int]:
    """Record how many frames reach the SAM 2 trunk in each call (rows entering its patch embedding)."""
    modules = [m for name, m in policy.obs_encoder.named_modules() if name.endswith("backbone.patch_embed")]
    assert len(modules) == 1, "expected one SAM 2 trunk (backbone.patch_embed) in the obs encoder"
    counts: list[int] = []
    modules[0].register_forward_pre_hook(lambda module, args: counts.append(int(args[0].shape[0])))
    return counts


def robot_loop(policies: Sequence, stream: Mapping[str, np.ndarray], shape_meta: Mapping, n_obs_steps: int, steps: int):
    """A loop like DP's ``eval_real_robot.py``: a sliding ``n_obs_steps`` window, ``predict_action`` per step.

    ``stream`` holds the recorded observations, rgb keys (T, H, W, 3) uint8 and low-dim keys
    (T, D); each step takes the last ``n_obs_steps`` of them, converts images as DP's
    ``get_real_obs_dict`` does (uint8 HWC -> float [0, 1] CHW), adds the batch axis and calls
    every policy with the same noise (``torch.manual_seed`` per step). Returns each policy's
    ``action`` per step.
    """
    import torch

    for policy in policies:
        policy.reset()
    actions: list[list] = [[] for _ in policies]
    for k in range(steps):
        obs = {}
        for key, attr in shape_meta["obs"].items():
            window = stream[key][k : k + n_obs_steps]
            if attr.get("type", "low_dim") == "rgb":
                window = np.moveaxis(window, -1, 1).astype(np.float32) / 255
            obs[key] = torch.from_numpy(np.ascontiguousarray(window)).unsqueeze(0)
        for i, policy in enumerate(policies):
            torch.manual_seed(k)
            with torch.no_grad():
                result = policy.predict_action(obs)
            actions[i].append(result["action"])
    return actions


def assert_reload_and_robot_loop(
    checkpoint: Path,
    away: Sequence[Path],
    stream: Mapping[str, np.ndarray],
    output_dir: Path,
    steps: int = 20,
) -> None:
    """Reload like eval.py on an "eval machine" and run a robot loop; compare with a fresh policy.

    ``away`` (the SAM 2 checkpoint file, a feature cache...) are renamed away first: DP re-runs our
    constructor from the saved cfg, and everything must come from the DP checkpoint. The caller
    blocks the network. Asserts a strict reload, actions equal (to float rounding) to a policy
    reloaded with ``reuse_frames=False`` on every step, and exactly one new frame per camera reaching the SAM 2
    trunk per step after the first.
    """
    import torch

    moved = [(p, p.with_name(p.name + ".away")) for p in away]
    for src, dst in moved:
        src.rename(dst)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            policy, cfg, payload = load_like_eval(checkpoint, output_dir / "eval")
            fresh, _, _ = load_like_eval(checkpoint, output_dir / "eval_fresh", {"reuse_frames": False})
    finally:
        for src, dst in moved:
            dst.rename(src)
    for path in away:  # the encoder said what it did without the file (placeholder, then the saved weights)
        assert any(str(path) in str(w.message) and "not found" in str(w.message) for w in caught), (
            path,
            [str(w.message) for w in caught],
        )
    # strict reload: every saved tensor is in the rebuilt policy, equal
    saved = payload["state_dicts"]["ema_model" if cfg.training.use_ema else "model"]
    state = policy.state_dict()
    assert sorted(saved) == sorted(state)
    assert all(torch.equal(saved[k], state[k]) for k in saved)

    shape_meta = cfg.task.shape_meta
    n_cameras = sum(1 for attr in shape_meta["obs"].values() if attr.get("type", "low_dim") == "rgb")
    to = cfg.n_obs_steps
    seen, seen_fresh = count_trunk_frames(policy), count_trunk_frames(fresh)
    ours, reference = robot_loop([policy, fresh], stream, shape_meta, to, steps)
    for k, (a, b) in enumerate(zip(ours, reference)):
        assert a.shape == (1, cfg.n_action_steps, shape_meta["action"]["shape"][0]), a.shape
        assert torch.isfinite(a).all()
        # equal up to float rounding: CPU kernels are not batch-size invariant (the trunk on 4 frames
        # vs 2 + 2 differs by ~8e-7), and frame reuse changes how many frames enter the trunk together
        difference = (a - b).abs().max().item()
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), f"step {k}: actions differ without reuse by {difference}"
    assert seen == [to * n_cameras] + [n_cameras] * (steps - 1), seen
    assert seen_fresh == [to * n_cameras] * steps, seen_fresh
