"""LoRA on the policy memory's attention (``memory_lora_rank``): frozen by default, trainable on request.

- Default (``memory_lora_rank=0``): the memory's SAM 2 weights are frozen, no LoRA layer exists, the
  state dict keys are those of the frozen memory (saved policies keep loading).
- ``memory_lora_rank=r``: LoRA on the q/k/v/out projections of every memory attention layer's self-
  and cross-attention (``MEMORY_LORA_TARGETS``); ``B`` starts at zero, so every output at the start
  equals the frozen memory's bit for bit, streaming and training alike.
- Only the LoRA weights train: a training forward (bank frames in the batch) gives them gradients and
  nothing frozen gets one; the modules stay in eval mode (SAM 2's memory attention has dropout), so a
  trained memory still streams what training computed.
- Diffusion Policy's workspace optimises ``policy.parameters()``: one step changes the LoRA weights
  and leaves every frozen weight as it was; ``param_groups`` (LeRobot's ``get_optim_params``) puts them
  in the SAM 2 group.
- A trained LoRA memory reloads strictly without the SAM 2 file (``memory.*.lora_a`` / ``lora_b``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sam2_encoder import MultiCameraEncoder
from sam2_encoder.finetune import LoRALinear
from sam2_encoder.policy_memory import MEMORY_LORA_TARGETS

from .test_policy_memory import batch_of_windows, episode, streamed

CAM, SIZE, TO = "cam", 64, 2
RANK = 4


def make(rank: int = RANK, **options) -> MultiCameraEncoder:
    """A tiny memory encoder; its frozen memory weights get the same seeded noise with or without LoRA."""
    options = {"image_size": SIZE, "pool": "avg", "n_obs_steps": TO, "memory_frames": 2, "memory_stride": 2, **options}
    camera = options.pop("camera", (CAM, (3, 48, 56)))
    enc = MultiCameraEncoder(dict([camera]), memory="sam2", memory_lora_rank=rank, **options)
    frozen = sorted((n.replace(".base.", "."), p) for n, p in enc.memory.named_parameters() if ".lora_" not in n)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # transformers zero-initialises some memory weights
        for _, p in frozen:
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return enc.eval()


def lora_names(enc: MultiCameraEncoder) -> set[str]:
    return {n for n, _ in enc.named_parameters() if ".lora_" in n}


def training_loss(enc: MultiCameraEncoder, frames: torch.Tensor) -> torch.Tensor:
    enc.train()
    return enc(batch_of_windows(frames, enc)).square().mean()


def test_the_default_memory_is_frozen_with_the_frozen_state_dict_keys() -> None:
    enc = make(rank=0)
    assert not any(isinstance(m, LoRALinear) for m in enc.memory.modules()) and enc.memory.lora_parameters() == []
    assert not any(p.requires_grad for p in enc.memory.parameters())
    assert not any(".lora_" in k or ".base." in k for k in enc.state_dict())


def test_lora_wraps_the_q_k_v_out_projections_of_every_memory_attention_layer() -> None:
    enc = make()
    layers = enc.memory.memory_attention.layers
    expected = {
        f"memory.memory_attention.layers.{i}.{attention}.{proj}.lora_{ab}"
        for i in range(len(layers))
        for attention, projections in MEMORY_LORA_TARGETS.items()
        for proj in projections
        for ab in "ab"
    }
    assert lora_names(enc) == expected and len(expected) == len(layers) * 2 * 4 * 2
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert {n for n in trainable if n.startswith("memory.")} == expected
    assert trainable - expected == {n for n, p in enc.heads.named_parameters(prefix="heads") if p.requires_grad}
    assert all(m.lora_a.shape[0] == RANK and not m.lora_b.any() for m in layers.modules() if isinstance(m, LoRALinear))
    assert not any(p.requires_grad for p in enc.memory.memory_encoder.parameters())  # the memory encoder: frozen


def test_lora_at_the_start_gives_the_frozen_outputs_bit_for_bit() -> None:
    """B = 0: streaming and a training batch equal the frozen memory's exactly."""
    frozen, lora = make(rank=0), make()
    frames = episode(6, seed=0)
    assert torch.equal(streamed(lora, frames), streamed(frozen, frames))
    with torch.no_grad():
        assert torch.equal(training_loss(lora, frames), training_loss(frozen, frames))


def test_a_training_forward_reaches_the_lora_weights_only_and_the_memory_stays_in_eval() -> None:
    enc = make()
    training_loss(enc, episode(6, seed=0)).backward()
    assert enc.training and not enc.memory.training and not enc.memory.memory_attention.layers[0].dropout.training
    graded = {n for n, p in enc.named_parameters() if p.grad is not None}
    assert lora_names(enc) <= graded and all(n.startswith(("memory.", "heads.")) for n in graded)
    bs = [m.lora_b.grad for m in enc.memory.modules() if isinstance(m, LoRALinear)]
    assert all(g.abs().max() > 0 for g in bs)  # A's gradient is B^T (...): zero while B is zero


def _step_dp(enc: MultiCameraEncoder, steps: int = 2) -> None:
    """Diffusion Policy's workspace: AdamW over every parameter of the policy (frozen ones get no grad)."""
    optimizer = torch.optim.AdamW(enc.parameters(), lr=1e-2, weight_decay=1e-2)
    frames = episode(6, seed=0)
    for _ in range(steps):
        optimizer.zero_grad()
        training_loss(enc, frames).backward()
        optimizer.step()


def test_an_optimizer_step_over_the_parameters_changes_the_lora_weights_and_nothing_frozen() -> None:
    enc = make()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    _step_dp(enc)
    after = enc.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert lora_names(enc) <= changed <= trainable


@pytest.mark.xfail(
    strict=True, reason="MultiCameraEncoder.param_groups reads heads + trunk only (camera_encoder.py, owned by H2)"
)
def test_param_groups_put_the_lora_weights_in_the_sam2_group() -> None:
    """LeRobot's get_optim_params builds on param_groups: each LoRA weight once, at lr * trunk_lr_scale."""
    enc = make()
    groups = enc.param_groups(lr=1e-3)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    lora = {id(p) for p in enc.memory.lora_parameters()}
    (trunk,) = [g for g in groups if g["name"] == "trunk"]
    assert lora <= {id(p) for p in trunk["params"]} and trunk["lr"] == pytest.approx(1e-3 * enc.trunk_lr_scale)
    assert {id(p) for p in enc.parameters() if p.requires_grad} == set(ids)


def test_a_trained_lora_memory_reloads_strictly_without_the_sam2_file(present_checkpoint: Path, tmp_path) -> None:
    enc = make(checkpoint=present_checkpoint)
    _step_dp(enc)
    state = enc.state_dict()
    assert any(k.startswith("memory.") and k.endswith(".lora_b") and state[k].any() for k in state)
    gone = tmp_path / "moved.safetensors"
    with pytest.warns(UserWarning):
        again = make(checkpoint=gone, seed=5)
    again.load_state_dict(state, strict=True)
    frames = episode(5, seed=2)
    assert torch.equal(streamed(again.eval(), frames), streamed(enc.eval(), frames))
    with pytest.raises(RuntimeError, match="lora_a"):
        make(rank=0, checkpoint=gone).load_state_dict(state, strict=True)  # a frozen memory has no LoRA weights


def test_a_trained_lora_memory_streams_what_training_computes() -> None:
    """The LoRA path is the same in train mode (bank frames in the batch) and at inference (the banks)."""
    enc = make()
    _step_dp(enc)
    frames = episode(9, seed=0)
    live = streamed(enc.eval(), frames)
    enc.train()
    with torch.no_grad():
        trained = enc(batch_of_windows(frames, enc))
    assert (trained - live).abs().max() < 1e-4  # the memory encoder's batch rounding (test_policy_memory)
    assert not torch.equal(live, streamed(make(rank=0), frames))  # the trained LoRA changed the outputs


def test_the_lora_trains_from_a_memory_cache_as_from_frames(tmp_path: Path) -> None:
    """The cache holds the trunk's and the memory encoder's per-frame maps: the LoRA attention runs per row."""
    pytest.importorskip("zarr")
    from sam2_encoder.diffusion_policy.memory_cache import MemoryCacheDataset, build_memory_cache
    from sam2_encoder.diffusion_policy.memory_dataset import MemoryDataset
    from sam2_encoder.diffusion_policy.synthetic import ReplayImageDataset, write_memory_buffer

    replay = write_memory_buffer(tmp_path / "m.zarr", episodes=1, steps=6, size=48)
    enc = make(camera=("image", (3, 48, 48)), n_obs_steps=1)
    with torch.no_grad():  # a trained LoRA
        for p in enc.memory.lora_parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.1)
    path = build_memory_cache(
        replay, ["img"], enc.encoder, enc.memory, tmp_path / "c.zarr", dtype="float32", progress=False
    )
    base = ReplayImageDataset(replay, horizon=1, pad_before=0, pad_after=0)
    cached = MemoryCacheDataset(path, {"image": "img"}, 2, 2, dataset=base)
    frames = MemoryDataset(base, memory_frames=2, memory_stride=2)

    def batch(dataset) -> dict[str, torch.Tensor]:
        items = [dataset[i]["obs"] for i in range(6)]
        return {k: torch.stack([it[k][0] for it in items]) for k in items[0] if k != "agent_pos"}

    enc.train()
    from_cache, from_frames = enc(batch(cached)), enc(batch(frames))
    assert (from_cache - from_frames).abs().max() < 1e-4  # the memory encoder's batch variance
    from_cache.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in enc.memory.lora_parameters())
    assert all(p.grad is None for n, p in enc.memory.named_parameters() if ".lora_" not in n)
