"""The package layout: lazy imports, one seam to transformers, configs in wheels and editable installs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import sam2_encoder
from sam2_encoder import _hf
from sam2_encoder.image_encoder import SAM2ImageEncoder
from sam2_encoder.variants import get_variant

REPO = Path(__file__).resolve().parents[1]
CONFIG_PKG = "pkg://sam2_encoder.diffusion_policy.config"


def _python(code: str, cwd: Path | None = None, env: dict | None = None) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_pulls_in_no_host_and_no_torch() -> None:
    out = _python(
        "import json, sys, sam2_encoder\n"
        "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'zarr', 'hydra', 'omegaconf', 'numpy') "
        "if m in sys.modules)))"
    )
    assert json.loads(out) == []


def test_core_and_dp_encoder_never_import_zarr_or_hydra() -> None:
    out = _python(
        "import json, sys\n"
        "from sam2_encoder import SAM2ImageEncoder, SAM2ObsEncoder, StreamingPredictor, MultiCameraEncoder\n"
        "import sam2_encoder.cli\n"
        "print(json.dumps(sorted(m for m in ('zarr', 'hydra', 'omegaconf') if m in sys.modules)))"
    )
    assert json.loads(out) == []


def test_every_public_name_is_importable() -> None:
    for name in sam2_encoder.__all__:
        assert getattr(sam2_encoder, name) is not None
    assert set(sam2_encoder.__all__) <= set(dir(sam2_encoder))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        sam2_encoder.Nope  # noqa: B018


def test_version_is_written_once() -> None:
    import importlib.metadata as md

    assert md.version("sam2-encoder") == sam2_encoder.__version__
    assert "version =" not in (REPO / "pyproject.toml").read_text().split("[project.optional-dependencies]")[0]


@pytest.mark.parametrize(
    "target",
    [
        "sam2_encoder.SAM2ObsEncoder",  # the path every existing config uses
        "sam2_encoder.diffusion_policy.SAM2ObsEncoder",
        "sam2_encoder.diffusion_policy.obs_encoder.SAM2ObsEncoder",
    ],
)
def test_hydra_instantiates_old_and_new_paths(target: str) -> None:
    hydra_utils = pytest.importorskip("hydra.utils")
    shape_meta = {"obs": {"image": {"shape": [3, 32, 32], "type": "rgb"}}, "action": {"shape": [2]}}
    enc = hydra_utils.instantiate({"_target_": target, "shape_meta": shape_meta, "image_size": 64})
    assert type(enc).__name__ == "SAM2ObsEncoder" and enc.output_shape() == (64,)


def test_cli_help_does_not_import_torch() -> None:
    out = _python(
        "import json, sys\n"
        "from sam2_encoder.cli import build_parser\n"
        "build_parser()\n"
        "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'numpy', 'zarr', 'hydra') if m in sys.modules)))"
    )
    assert json.loads(out) == []


# --------------------------------------------------------------------------------------------
# configs: editable install (this environment) and a built wheel
# --------------------------------------------------------------------------------------------


def test_hydra_plugin_found_in_this_install() -> None:
    pytest.importorskip("hydra")
    from sam2_encoder.cli.doctor import hydra_plugin_visible

    assert hydra_plugin_visible() is True
    import sam2_encoder.diffusion_policy.config as configs

    assert Path(configs.__file__).resolve().parent == (REPO / "config").resolve()


def _compose_through_plugin(env: dict | None = None, cwd: Path | None = None) -> dict:
    code = (
        "import json\n"
        "from hydra import compose, initialize_config_dir\n"
        "from hydra.core.global_hydra import GlobalHydra\n"
        "import tempfile, os\n"
        "d = tempfile.mkdtemp()\n"  # an app whose only config picks one of ours, found through the plugin
        "open(os.path.join(d, 'app.yaml'), 'w').write('defaults:\\n  - sam2_obs_encoder: sam2.1_hiera_small\\n')\n"
        "with initialize_config_dir(config_dir=d, version_base=None):\n"
        "    cfg = compose(config_name='app').sam2_obs_encoder\n"
        "import sam2_encoder.diffusion_policy.config as c\n"
        "print(json.dumps({'variant': cfg.variant, 'target': cfg['_target_'], 'file': c.__file__}))\n"
    )
    return json.loads(_python(code, cwd=cwd, env=env).strip().splitlines()[-1])


def test_configs_compose_through_the_plugin() -> None:
    pytest.importorskip("hydra")
    got = _compose_through_plugin()
    assert got["variant"] == "sam2.1_hiera_small" and got["target"] == "sam2_encoder.SAM2ObsEncoder"


def test_wheel_ships_the_configs_and_the_plugin(tmp_path: Path) -> None:
    pytest.importorskip("hydra")
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for folder in ("sam2_encoder", "config", "hydra_plugins"):
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "dist"
    _python(f"from setuptools import build_meta; build_meta.build_wheel({str(out)!r})", cwd=src)
    (wheel,) = out.glob("sam2_encoder-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    yamls = {p.relative_to(REPO / "config").as_posix() for p in (REPO / "config").rglob("*.yaml")}
    assert {f"sam2_encoder/diffusion_policy/config/{y}" for y in yamls} <= names
    assert "hydra_plugins/sam2_encoder_searchpath/__init__.py" in names
    assert "hydra_plugins/__init__.py" not in names  # a namespace package shared with other plugins
    assert not any(n.startswith("config/") for n in names)
    # installed from the wheel alone (put first on the path), Hydra finds the plugin and the configs
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    got = _compose_through_plugin(env=env, cwd=tmp_path)
    assert got["variant"] == "sam2.1_hiera_small"
    assert Path(got["file"]).resolve().is_relative_to(site.resolve())


# --------------------------------------------------------------------------------------------
# the transformers seam and the neck settings
# --------------------------------------------------------------------------------------------


def test_seam_names_version_and_tested_range() -> None:
    import transformers

    class NotASession:
        obj_ids: list = []

    with pytest.raises(ImportError) as e:
        _hf.VideoSessionState(NotASession())
    message = str(e.value)
    assert transformers.__version__ in message
    assert _hf.TESTED_TRANSFORMERS[0] in message and _hf.TESTED_TRANSFORMERS[1] in message
    assert "_obj_id_to_idx" in message and "output_dict_per_obj" in message


def test_pyproject_range_is_the_tested_range() -> None:
    text = (REPO / "pyproject.toml").read_text()
    low, high = _hf.TESTED_TRANSFORMERS
    minor = ".".join(high.split(".")[:2])
    next_minor = f"{minor.split('.')[0]}.{int(minor.split('.')[1]) + 1}"
    assert f'"transformers>={".".join(low.split(".")[:2])},<{next_minor}"' in text


def _neck_reference(stages, convs, mode: str, fuse: str) -> list[torch.Tensor]:
    """Meta's FpnNeck top-down path, written out: the levels at strides 4, 8 and 16."""
    laterals = [conv(s.permute(0, 3, 1, 2)) for conv, s in zip(reversed(list(convs)), stages)]
    out = [None] * 4
    previous = laterals[3]
    out[3] = previous
    for i in (2, 1, 0):
        if i in (2, 3):  # fpn_top_down_levels
            kwargs = {} if mode == "nearest" else {"align_corners": False}
            top = torch.nn.functional.interpolate(previous, scale_factor=2.0, mode=mode, **kwargs)
            previous = laterals[i] + top
            if fuse == "avg":
                previous = previous / 2
        else:
            previous = laterals[i]
        out[i] = previous
    return out[:3]


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("fuse", ["sum", "avg"])
def test_neck_honours_interpolation_and_fuse_type(mode: str, fuse: str) -> None:
    enc = SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=64)
    config = enc.vision_encoder.config
    assert (config.fpn_interpolation_mode, config.fuse_type) == ("nearest", "sum")  # the released models
    config.fpn_interpolation_mode, config.fuse_type = mode, fuse
    enc = SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=64, model=_VisionParts(enc))
    stages = enc.trunk(torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        got = enc.neck(stages)
        expected = _neck_reference(stages, enc.vision_encoder.neck.convs, mode, fuse)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_neck_refuses_settings_it_does_not_implement() -> None:
    enc = SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=64)
    enc.vision_encoder.config.fuse_type = "max"
    with pytest.raises(ValueError, match="fuse_type='max' is not implemented"):
        SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=64, model=_VisionParts(enc))
    config = get_variant("sam2.1_hiera_tiny").vision_config(64)
    config.fpn_interpolation_mode = "bicubic"
    enc.vision_encoder.config = config
    with pytest.raises(ValueError, match="fpn_interpolation_mode='bicubic' is not implemented"):
        SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=64, model=_VisionParts(enc))


class _VisionParts(torch.nn.Module):
    """What SAM2ImageEncoder(model=...) reads from a transformers Sam2Model, taken from an encoder."""

    def __init__(self, enc: SAM2ImageEncoder) -> None:
        super().__init__()
        self.vision_encoder = enc.vision_encoder
        self.mask_decoder = torch.nn.Module()
        self.mask_decoder.conv_s0, self.mask_decoder.conv_s1 = enc.conv_s0, enc.conv_s1
        self.no_memory_embedding = enc.no_memory_embedding
