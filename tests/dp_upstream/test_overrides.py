"""Every override in the guide's "Other choices" table, alone and in combination, through DP's train.py,
each checkpoint reloaded strictly like eval.py and asked for one action chunk."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from ._dp import (
    GUIDE,
    NO_SIM_RUNNER,
    REAL_DEPS,
    load_like_eval,
    read_logs,
    run_train,
    tiny_overrides,
    write_real_dataset,
)
from .conftest import require


def guide_rows() -> list[tuple[str, list[str]]]:
    """(what, override args) for every backticked override in the guide's table of other choices."""
    text = GUIDE.read_text()
    table = text[text.index("| what | override |") :].split("\n\n")[0]
    rows = []
    for line in table.splitlines()[2:]:
        what, cell = (c.strip() for c in line.strip().strip("|").split("|"))
        for span in re.findall(r"`([^`]+)`", cell):
            if "=" in span:
                rows.append((what, shlex.split(span)))
    return rows


ROWS = guide_rows()
# Combinations of the table's options (and the other heads the presets name: avg, conv).
COMBOS = [
    [
        "policy.obs_encoder.pool=attention",
        "policy.obs_encoder.feature_dim=256",
        "policy.obs_encoder.levels=[s4,s8,s16]",
        "policy.obs_encoder.freeze=false",
        "policy.obs_encoder.finetune=lora",
        "policy.obs_encoder.lora_rank=8",
        "policy.obs_encoder.crop_shape=[84,84]",
    ],
    [
        "policy.obs_encoder.freeze=false",
        "policy.obs_encoder.finetune=last_blocks",
        "policy.obs_encoder.pool=avg",
        "policy.obs_encoder.levels=[s8,s16]",
        "policy.obs_encoder.crop_shape=null",
    ],
    [
        "sam2_obs_encoder@policy.obs_encoder=sam2.1_hiera_small",
        "policy.obs_encoder.pool=conv",
        "policy.obs_encoder.feature_dim=128",
        "policy.obs_encoder.image_size=96",
        "policy.obs_encoder.crop_shape=[80,80]",
    ],
    [
        "+sam2_head=coarse_to_fine_s4",
        "policy.obs_encoder.pool=attention",
        "policy.obs_encoder.freeze=false",
        "policy.obs_encoder.finetune=lora",
        "policy.obs_encoder.crop_shape=[84,84]",
    ],
]
REAL_SHAPE_META = {
    "obs": {
        "camera_1": {"shape": [3, 240, 320], "type": "rgb"},
        "camera_3": {"shape": [3, 240, 320], "type": "rgb"},
        "robot_eef_pose": {"shape": [2], "type": "low_dim"},
    },
    "action": {"shape": [2]},
}


def test_guide_table_is_parsed() -> None:
    whats = {what for what, _ in ROWS}
    assert {
        "another model",
        "pooling head",
        "multi-scale features",
        "fine-tune the last blocks",
        "LoRA",
        "input size",
        "two real-robot cameras",
    } <= whats, whats


def _variant_weights(args: list[str], meta_weights: Path, folder: Path) -> Path:
    """The Meta-format file for the variant the overrides choose (seeded weights, real layout)."""
    chosen = [a.split("=", 1)[1] for a in args if a.startswith("sam2_obs_encoder@policy.obs_encoder=")]
    if not chosen:
        return meta_weights
    import torch
    from safetensors import safe_open

    from ._dp import REPO

    fixtures = REPO / "tests" / "fixtures"
    import sys

    sys.path.insert(0, str(fixtures))
    try:
        from meta_weights import meta_state_dict_from_manifest
    finally:
        sys.path.remove(str(fixtures))
    with safe_open(str(fixtures / "meta_golden.safetensors"), "pt") as f:
        manifest = json.loads(f.metadata()["golden"])["manifests"][chosen[0]]
    path = folder / f"{chosen[0]}.pt"
    torch.save({"model": meta_state_dict_from_manifest(manifest, seed=0)}, path)
    return path


@pytest.mark.parametrize(
    "args",
    [args for _, args in ROWS] + COMBOS,
    ids=[" ".join(a) for _, a in ROWS] + [f"combo{i}" for i in range(len(COMBOS))],
)
def test_override_through_dp_train(
    args: list[str], dp_dir: Path, pusht_zarr: Path, meta_weights: Path, tmp_path: Path
) -> None:
    import torch
    import yaml

    config = [a for a in args if a.startswith("--config-name=")]
    overrides = [a for a in args if not a.startswith("--config-name=")]
    if config:  # the real-robot workspace: DP's real_pusht_image task (two 240x320 cameras)
        require(REAL_DEPS, "DP real-robot dataset extras")
        dataset = [a.split("=", 1)[1] for a in overrides if a.startswith("task.dataset_path=")][0]
        if not (dp_dir / dataset).exists():
            write_real_dataset(dp_dir / dataset, REAL_SHAPE_META)
        base = config
    else:
        base = [
            "--config-name=train_diffusion_unet_sam2_workspace",
            "task=pusht_image",
            f"task.dataset.zarr_path={pusht_zarr}",
        ]
    weights = _variant_weights(overrides, meta_weights, tmp_path)
    out = tmp_path / "outputs"
    # tiny settings first: the override under test comes last and wins (image_size=256)
    tiny = [
        a for a in tiny_overrides(out, epochs=1, steps=1) if a.split("=")[0] not in {o.split("=")[0] for o in overrides}
    ]
    run_train(dp_dir, [*base, f"policy.obs_encoder.checkpoint={weights}", *NO_SIM_RUNNER, *tiny, *overrides], out)
    assert [e["epoch"] for e in read_logs(out) if "train_action_mse_error" in e] == [0]

    policy, cfg, _ = load_like_eval(out / "checkpoints" / "latest.ckpt", tmp_path / "eval")
    for override in overrides:  # the saved cfg holds what the command line asked for
        key, value = override.split("=", 1)
        if key.startswith("policy.obs_encoder."):
            field = key.rsplit(".", 1)[1]
            assert cfg.policy.obs_encoder[field] == yaml.safe_load(value), (field, cfg.policy.obs_encoder[field])
        elif key.startswith("sam2_obs_encoder@"):
            assert cfg.policy.obs_encoder.variant == value
        elif key == "+sam2_head":  # a head preset: every field it sets reached the saved cfg
            from ._dp import REPO

            preset = yaml.safe_load((REPO / "config" / "sam2_head" / f"{value}.yaml").read_text())
            assert preset and all(cfg.policy.obs_encoder[k] == v for k, v in preset.items()), preset
    shape_meta = cfg.task.shape_meta
    obs = {}
    for key, attr in shape_meta["obs"].items():
        obs[key] = torch.rand(1, cfg.n_obs_steps, *attr["shape"])
    with torch.no_grad():
        action = policy.predict_action(obs)["action"]
    assert action.shape == (1, cfg.n_action_steps, 2) and torch.isfinite(action).all()


def test_own_config_block(dp_dir: Path, pusht_zarr: Path, meta_weights: Path, tmp_path: Path) -> None:
    """The guide's YAML block, merged over DP's own image workspace in a user's config file."""
    import torch

    block = re.findall(r"```yaml\n(.*?)```", GUIDE.read_text(), flags=re.S)
    assert len(block) == 1, "expected one yaml block in the guide"
    config_dir = tmp_path / "my_config"
    config_dir.mkdir()
    (config_dir / "my_sam2_workspace.yaml").write_text(
        "defaults:\n  - train_diffusion_unet_image_workspace\n  - _self_\n\n" + block[0]
    )
    out = tmp_path / "outputs"
    args = [
        f"--config-dir={config_dir}",
        "--config-name=my_sam2_workspace",
        "task=pusht_image",
        f"task.dataset.zarr_path={pusht_zarr}",
        f"policy.obs_encoder.checkpoint={meta_weights}",
        *NO_SIM_RUNNER,
        *tiny_overrides(out, epochs=1, steps=1),
    ]
    run_train(dp_dir, args, out)
    policy, cfg, _ = load_like_eval(out / "checkpoints" / "latest.ckpt", tmp_path / "eval")
    assert type(policy.obs_encoder).__name__ == "SAM2ObsEncoder" and cfg.policy.obs_encoder.pool == "attention"
    assert cfg.policy.obs_encoder.crop_shape == [76, 76]  # DP's sibling key kept, with DP's meaning
    obs = {key: torch.rand(1, cfg.n_obs_steps, *attr["shape"]) for key, attr in cfg.task.shape_meta["obs"].items()}
    with torch.no_grad():
        assert torch.isfinite(policy.predict_action(obs)["action"]).all()
