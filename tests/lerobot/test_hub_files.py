"""The Hub upload path, offline: the folder ``--policy.push_to_hub=true`` uploads, and ``--policy.path`` on it.

``lerobot-train`` with ``push_to_hub`` calls ``policy.push_model_to_hub`` (``save_pretrained``, the
model card, the train config, into one folder, uploaded with ``allow_patterns``) and the
processors' ``push_to_hub`` (their ``save_pretrained``). The same calls are made here into a local
folder, without the network; the card is rendered from LeRobot's template with the card data
``generate_model_card`` builds, but not validated (``ModelCard.validate`` posts to the Hub).
LeRobot 0.6 venv only (.ci/lerobot.sh).
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
from importlib.resources import files
from pathlib import Path

import pytest

pytest.importorskip(
    "lerobot", reason="LeRobot 0.6 is not installed here (it needs Python >= 3.12); .ci/lerobot.sh runs these tests"
)
pytest.importorskip("gym_pusht", reason="gym-pusht is not installed: pip install 'lerobot[pusht]'")
for _dist in ("lerobot_policy_sam2", "lerobot_robot_pusht"):
    try:
        importlib.metadata.distribution(_dist)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"the {_dist} plugin is not installed (.ci/lerobot.sh installs it)", allow_module_level=True)

import torch  # noqa: E402
from huggingface_hub import ModelCard, ModelCardData  # noqa: E402
from lerobot.configs import PreTrainedConfig  # noqa: E402
from lerobot.configs.train import TrainPipelineConfig  # noqa: E402
from lerobot.policies import get_policy_class, make_pre_post_processors  # noqa: E402
from lerobot.policies.pretrained import _build_card_context  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from sam2_encoder.lerobot import SAM2DiffusionPolicy  # noqa: E402

from .deploy_checkpoint import BIN, offline_env, run, trained_checkpoint  # noqa: E402

UPLOADED = ["*.safetensors", "*.json", "*.yaml", "*.md"]  # push_model_to_hub's allow_patterns


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory, meta_checkpoint: Path) -> Path:
    """The folder LeRobot's push step writes (policy, train config, model card, both processors), offline."""
    model = trained_checkpoint(tmp_path_factory, meta_checkpoint)
    folder = tmp_path_factory.mktemp("push") / "user" / "sam2_pusht"
    policy = SAM2DiffusionPolicy.from_pretrained(model)
    cfg = TrainPipelineConfig.from_pretrained(model)
    policy.save_pretrained(folder)
    data = ModelCardData(
        license=policy.config.license or "apache-2.0",
        library_name="lerobot",
        pipeline_tag="robotics",
        tags=sorted(set(policy.config.tags or []).union({"robotics", "lerobot", policy.config.type})),
        model_name=policy.config.type,
        datasets=cfg.dataset.repo_id,
    )
    context = _build_card_context(cfg, None, policy.config.input_features, policy.config.output_features)
    template = files("lerobot.templates").joinpath("lerobot_modelcard_template.md").read_text(encoding="utf-8")
    ModelCard.from_template(data, template_str=template, **context).save(str(folder / "README.md"))
    cfg.save_pretrained(folder)
    preprocessor, postprocessor = make_pre_post_processors(policy.config, pretrained_path=str(model))
    preprocessor.save_pretrained(folder)
    postprocessor.save_pretrained(folder)
    return folder


def test_the_uploaded_files(pushed: Path) -> None:
    uploaded = sorted(p.name for p in pushed.iterdir() if any(fnmatch.fnmatch(p.name, pat) for pat in UPLOADED))
    assert uploaded == sorted(p.name for p in pushed.iterdir())  # nothing written is left out of the upload
    assert {"config.json", "model.safetensors", "train_config.json", "README.md"} <= set(uploaded)
    assert {"policy_preprocessor.json", "policy_postprocessor.json"} <= set(uploaded)
    assert any(name.startswith("policy_preprocessor_step_") and name.endswith(".safetensors") for name in uploaded)
    config = json.loads((pushed / "config.json").read_text())
    assert config["type"] == "sam2_diffusion"
    card = ModelCard.load(pushed / "README.md")
    assert card.data.library_name == "lerobot" and card.data.model_name == "sam2_diffusion"
    assert {"lerobot", "robotics", "sam2_diffusion"} <= set(card.data.tags)


def test_policy_path_on_the_pushed_folder_reloads_strictly(pushed: Path) -> None:
    """LeRobot's loader (config from the folder, the class by its type) gets every saved weight, bit for bit."""
    config = PreTrainedConfig.from_pretrained(pushed)
    policy = get_policy_class(config.type).from_pretrained(pushed, config=config)
    assert isinstance(policy, SAM2DiffusionPolicy)
    saved = load_file(str(pushed / "model.safetensors"))
    state = policy.state_dict()
    assert set(saved) == set(state)
    assert all(torch.equal(state[key], value) for key, value in saved.items())
    pre, _ = make_pre_post_processors(config, pretrained_path=str(pushed))
    obs = {"observation.state": torch.tensor([[100.0, 300.0]]), "observation.images.top": torch.rand(1, 3, 96, 96)}
    out = pre(obs)
    assert out["observation.state"].shape == (1, 2) and not torch.equal(
        out["observation.state"], obs["observation.state"]
    )


def test_lerobot_rollout_runs_from_the_pushed_folder(pushed: Path, tmp_path: Path) -> None:
    log = run(
        [
            str(BIN / "lerobot-rollout"),
            "--robot.type=pusht_sim",
            "--robot.episode_length=3",
            f"--robot.calibration_dir={tmp_path / 'calib'}",
            f"--policy.path={pushed}",
            "--task=push",
            "--fps=10",
            "--duration=3",
            "--play_sounds=false",
            "--return_to_initial_position=false",
        ],
        offline_env(tmp_path / "home"),
        tmp_path / "rollout.log",
        cwd=tmp_path,
        timeout=300,
    )
    assert "Policy loaded: type=sam2_diffusion" in log and "pusht_sim episode 0 finished: 3 steps" in log
