"""``sam2_diffusion`` with policy memory (``memory="sam2"``): training from LeRobot's dataset equals streaming.

- Training: LeRobot's unmodified ``LeRobotDataset`` loads every bank frame (``observation_delta_indices``)
  and ``forward`` conditions each window frame on its bank. At inference ``select_action`` feeds one
  frame per control step into the policy's own banks. At every frame of two episodes (``reset()``
  between them) the UNet's condition in training mode equals the streaming one, to float rounding
  of batched vs. one-frame passes: max abs difference below ``TOLERANCE`` = 1e-5 (seen: 4e-7; the
  cameras' keypoints are in [-1, 1], mean magnitude 0.03); also with object tokens from the
  dataset's masks stored with each memory (``memory_source="objects"``).
- The memory reaches the condition: a different first frame changes the condition at a late frame
  by more than 10 x ``TOLERANCE`` (seen: 3e-4 with seeded SAM 2 weights), and memory off changes it too.
- A saved policy with memory reloads strictly without the SAM 2 file (the memory's weights are in
  ``model.safetensors``) and streams the same actions.
- ``predict_action_chunk`` with one observation per call (LeRobot's async policy server) feeds the
  bank as ``select_action`` does.
- An offline window without its bank frames is refused with the layout it needs.
- A scene at rest (the same image twice in a row) is still one bank step per ``select_action``.
- With object masks and the policy's own tracker (LeRobot's default), each memory stores the tracked masks:
  the conditions equal the policy given those masks in the batch, one trunk frame per control step.

LeRobot 0.6 venv only (.ci/lerobot.sh).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

pytest.importorskip(
    "lerobot", reason="LeRobot 0.6 is not installed here (it needs Python >= 3.12); .ci/lerobot.sh runs these tests"
)
pytest.importorskip("gym_pusht", reason="gym-pusht is not installed: pip install 'lerobot[pusht]'")

import torch  # noqa: E402
from lerobot.configs import FeatureType, PolicyFeature  # noqa: E402
from lerobot.datasets.factory import resolve_delta_timestamps  # noqa: E402
from lerobot.datasets.lerobot_dataset import LeRobotDataset  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from sam2_encoder.lerobot import SAM2DiffusionConfig, SAM2DiffusionPolicy  # noqa: E402

from .pusht_data import MASKS, REPO_ID, record_pusht  # noqa: E402

CAMERA, STATE = "observation.image", "observation.state"
FRAMES = 10  # per episode
TOLERANCE = 1e-5  # float rounding of a batched vs. a one-frame pass (seen: 4e-7)


def make_config(checkpoint: Path | None = None, **overrides) -> SAM2DiffusionConfig:
    """Tiny policy on the recorded pusht data: SAM 2 at 64 px, 2 past frames 2 apart and the first frame."""
    options = dict(
        device="cpu",
        input_features={
            CAMERA: PolicyFeature(FeatureType.VISUAL, (3, 96, 96)),
            STATE: PolicyFeature(FeatureType.STATE, (2,)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
        sam2_checkpoint=None if checkpoint is None else str(checkpoint),
        sam2_image_size=64,
        num_keypoints=8,
        horizon=8,
        n_action_steps=1,  # a prediction (and a condition) at every control step
        drop_n_last_frames=0,
        down_dims=(16, 32),
        kernel_size=3,
        n_groups=4,
        diffusion_step_embed_dim=16,
        num_train_timesteps=10,
        num_inference_steps=2,
        push_to_hub=False,
        memory="sam2",
        memory_frames=2,
        memory_stride=2,
    )
    if overrides.pop("objects", False):  # the dataset's masks as object tokens, stored with each memory
        options["input_features"][MASKS] = PolicyFeature(FeatureType.STATE, (2, 96, 96))
        options.update(
            object_masks={CAMERA: MASKS},
            num_objects=2,
            object_token_dim=8,
            object_tracker=False,
            memory_source="objects",
        )
    options.update(overrides)
    return SAM2DiffusionConfig(**options)


def make_policy(checkpoint: Path | None = None, **overrides) -> SAM2DiffusionPolicy:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*has no checkpoint.*")
        return SAM2DiffusionPolicy(make_config(checkpoint, **overrides))


class Conditions:
    """The global conditions the UNet receives (a hook on its forward)."""

    def __init__(self, policy: SAM2DiffusionPolicy) -> None:
        self.seen: list[torch.Tensor] = []
        self.handle = policy.unet.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, _module, _args, kwargs) -> None:
        self.seen.append(kwargs["global_cond"].detach().clone())

    def __enter__(self) -> Conditions:
        return self

    def __exit__(self, *_) -> None:
        self.handle.remove()


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_pusht(tmp_path_factory.mktemp("pusht") / "data", episodes=2, frames=FRAMES, masks=True)


def observed_keys(policy: SAM2DiffusionPolicy) -> tuple[str, ...]:
    """The observation features the policy reads: the camera, the state, and the masks with object tokens."""
    return (CAMERA, STATE, MASKS) if policy.mask_keys else (CAMERA, STATE)


def training_conditions(policy: SAM2DiffusionPolicy, root: Path) -> torch.Tensor:
    """``(2 * FRAMES, To * D)``: the condition of every dataset sample in ``forward`` (train mode)."""
    meta = LeRobotDataset(REPO_ID, root=root).meta
    dataset = LeRobotDataset(REPO_ID, root=root, delta_timestamps=resolve_delta_timestamps(policy.config, meta))
    items = [dataset[i] for i in range(len(dataset))]
    keys = (*observed_keys(policy), "action", "action_is_pad")
    batch = {key: torch.stack([item[key] for item in items]) for key in keys}
    policy.train()
    with Conditions(policy) as conditions, torch.no_grad():
        policy.forward(batch)
    return conditions.seen[-1]


def streamed_conditions(policy: SAM2DiffusionPolicy, root: Path) -> torch.Tensor:
    """``(2 * FRAMES, To * D)``: the condition of ``select_action`` at every frame, ``reset()`` per episode."""
    plain = LeRobotDataset(REPO_ID, root=root)
    policy.eval()
    out = []
    with Conditions(policy) as conditions:
        for episode in range(2):
            policy.reset()
            for t in range(FRAMES):
                item = plain[episode * FRAMES + t]
                before = len(conditions.seen)
                policy.select_action({key: item[key][None] for key in observed_keys(policy)})
                out.append(conditions.seen[before])  # the first denoising step's condition
    return torch.cat(out)


@pytest.mark.parametrize("source", ["frame", "objects"])
def test_training_condition_from_the_dataset_equals_the_streaming_one_at_every_frame(
    dataset_root: Path, source: str
) -> None:
    """Frames 0-9 of two episodes: bank frames clamped to the first frame early on, strided later.

    ``objects``: object tokens from the dataset's masks, each memory stored with its frame's masks
    (the bank's masks in training, the batch's masks at inference).
    """
    policy = make_policy(objects=source == "objects")
    trained = training_conditions(policy, dataset_root)
    streamed = streamed_conditions(policy, dataset_root)
    assert trained.shape == streamed.shape == (2 * FRAMES, 2 * policy.obs_feature_dim)
    assert trained.abs().max() > 0.1  # the condition is not trivially zero
    difference = (trained - streamed).abs().max().item()
    assert difference < TOLERANCE, f"max |training - streaming| = {difference:.2e}"
    # without memory the same frames give another condition: the bank is part of it
    plain = make_policy(memory="none", objects=source == "objects")
    plain.load_state_dict(policy.state_dict(), strict=False)
    assert (streamed_conditions(plain, dataset_root) - streamed).abs().max() > 1e-3


def test_the_first_frame_reaches_the_condition_of_a_late_frame(dataset_root: Path) -> None:
    """Frame 9's window (8, 9) and its past frames (6, 7, 5) never show frame 0: its bank's first slot does."""
    policy = make_policy()
    plain = LeRobotDataset(REPO_ID, root=dataset_root)
    frames = [plain[t] for t in range(FRAMES)]

    def condition_at_last_frame(first_image: torch.Tensor) -> torch.Tensor:
        policy.eval()
        policy.reset()
        with Conditions(policy) as conditions:
            for t, item in enumerate(frames):
                image = first_image if t == 0 else item[CAMERA]
                policy.select_action({CAMERA: image[None], STATE: item[STATE][None]})
        return conditions.seen[-policy.num_inference_steps]

    original = condition_at_last_frame(frames[0][CAMERA])
    assert torch.equal(original, condition_at_last_frame(frames[0][CAMERA].clone()))  # deterministic
    changed = condition_at_last_frame(1.0 - frames[0][CAMERA])
    assert (changed - original).abs().max() > 10 * TOLERANCE


def test_a_saved_policy_with_memory_reloads_strictly_without_the_sam2_file(
    tmp_path: Path, meta_checkpoint: Path, dataset_root: Path
) -> None:
    ckpt = tmp_path / "sam2.1_hiera_tiny.pt"
    ckpt.write_bytes(meta_checkpoint.read_bytes())
    policy = make_policy(ckpt)
    policy.save_pretrained(tmp_path / "policy")
    ckpt.unlink()
    saved = load_file(str(tmp_path / "policy" / "model.safetensors"))
    assert any(key.startswith("encoder.memory.memory_attention.") for key in saved)
    assert any(key.startswith("encoder.memory.memory_encoder.") for key in saved)
    reloaded = SAM2DiffusionPolicy.from_pretrained(tmp_path / "policy")
    state = reloaded.state_dict()
    assert set(state) == set(saved) and all(torch.equal(state[k], v) for k, v in saved.items())
    assert reloaded.config.memory == "sam2" and reloaded.config.observation_delta_indices == (
        policy.config.observation_delta_indices
    )
    assert torch.equal(streamed_conditions(reloaded, dataset_root), streamed_conditions(policy, dataset_root))


def test_predict_action_chunk_per_observation_feeds_the_bank_as_select_action_does(dataset_root: Path) -> None:
    """LeRobot's async policy server calls ``predict_action_chunk`` with one observation per request."""
    policy = make_policy()
    expected = streamed_conditions(policy, dataset_root)
    plain = LeRobotDataset(REPO_ID, root=dataset_root)
    policy.reset()
    out = []
    with Conditions(policy) as conditions:
        for t in range(FRAMES):
            item = plain[t]
            before = len(conditions.seen)
            policy.predict_action_chunk({CAMERA: item[CAMERA][None], STATE: item[STATE][None]})
            out.append(conditions.seen[before])
    assert torch.equal(torch.cat(out), expected[:FRAMES])


def test_an_offline_window_without_its_bank_frames_is_refused() -> None:
    policy = make_policy().eval()
    window = {CAMERA: torch.rand(1, 2, 3, 96, 96), STATE: torch.zeros(1, 2, 2)}
    deltas = policy.config.observation_delta_indices
    with pytest.raises(ValueError, match=rf"expected \(B, {len(deltas)}, \.\.\.\): one frame per observation_delta"):
        policy.predict_action_chunk(window)
    full = {CAMERA: torch.rand(1, len(deltas), 3, 96, 96), STATE: torch.zeros(1, len(deltas), 2)}
    assert policy.predict_action_chunk(full).shape == (1, 1, 2)


def lerobot_sample(frames: list[torch.Tensor], t: int, deltas: list[int]) -> torch.Tensor:
    """``(len(deltas), 3, H, W)``: frame ``t``'s sample as LeRobot loads it (``t + delta`` clamped into the episode)."""
    return torch.stack([frames[min(max(t + d, 0), len(frames) - 1)] for d in deltas])


def test_a_scene_at_rest_two_equal_frames_in_a_row_streams_as_in_training() -> None:
    """A robot at rest renders the same image twice: each ``select_action`` is still one step of the bank."""
    policy = make_policy()
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(3, 96, 96, generator=g) for _ in range(5)]
    frames = [images[0], images[1], images[2], images[2], images[3], images[4]]  # frame 3 repeats frame 2
    deltas = policy.config.observation_delta_indices
    policy.eval()
    policy.reset()
    with Conditions(policy) as conditions:
        for frame in frames:
            before = len(conditions.seen)
            policy.select_action({CAMERA: frame[None], STATE: torch.zeros(1, 2)})
            streamed = conditions.seen[before]
    window = {CAMERA: lerobot_sample(frames, len(frames) - 1, deltas)[None], STATE: torch.zeros(1, len(deltas), 2)}
    with Conditions(policy) as conditions:
        policy.predict_action_chunk(window)
    assert (conditions.seen[0] - streamed).abs().max() < TOLERANCE


def test_memory_with_the_object_tracker_streams_as_given_the_tracked_masks(
    present_checkpoint: Path, dataset_root: Path
) -> None:
    """Object tokens, a frozen trunk and no masks at inference: the policy's tracker makes them (LeRobot's default
    with ``object_masks``) and each frame's memory stores them (``memory_source="objects"``), from one trunk pass
    per frame. Two episodes (``reset()`` between them): every condition equals the same policy without a tracker
    given the tracker's masks in the batch (bit-equal)."""
    prompts = {CAMERA: {1: {"points": [[40, 40]], "labels": [1]}, 2: {"box": [50, 20, 90, 70]}}}
    tracked = make_policy(present_checkpoint, objects=True, object_tracker=True, object_prompts=prompts)
    given = make_policy(present_checkpoint, objects=True)
    given.load_state_dict({k: v for k, v in tracked.state_dict().items() if ".tracker." not in k}, strict=True)
    assert tracked.object_tracker is not None and tracked.encoder.memory is not None and given.object_tracker is None
    plain = LeRobotDataset(REPO_ID, root=dataset_root)
    frames: list[int] = []
    coverage: list[float] = []  # each frame's masked share
    tracked.encoder.encoder.vision_encoder.backbone.patch_embed.register_forward_pre_hook(
        lambda _m, args: frames.append(len(args[0]))
    )
    tracked.eval(), given.eval()
    with Conditions(tracked) as seen, Conditions(given) as expected:
        for episode in range(2):
            tracked.reset(), given.reset()
            for t in range(FRAMES):
                item = plain[episode * FRAMES + t]
                obs = {CAMERA: item[CAMERA][None], STATE: item[STATE][None]}
                tracked.select_action(obs)
                masks = tracked.encoder.tracked_masks[CAMERA][-1:]  # the newest frame's, (1, K, 96, 96) in the view
                given.select_action({**obs, MASKS: masks.float()})
                coverage.append(masks.float().mean().item())
                assert torch.equal(seen.seen[-1], expected.seen[-1]), (episode, t)
    assert frames == [1] * (2 * FRAMES), "one trunk frame per control step, for the tracker and the bank"
    assert any(0 < share < 1 for share in coverage), "objects and background: the stored masks are not the frame"
