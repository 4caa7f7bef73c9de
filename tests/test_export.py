"""Export for robots: the image encoder and a policy's obs encoder in ONNX Runtime and OpenVINO.

Tolerance: an exported output may differ from eager by at most ``PARITY_RTOL * max(1, max |eager|)``
(1e-4 of the magnitude). Measured: up to 2.6e-6 on values up to 2 (seeded weights, 64 px, here) and
2.5e-5 on values up to 14.5 (Meta-scaled weights, 128 px): 1.3e-6 to 1.7e-6 of the magnitude, so
the bound has 60x room for other CPUs' kernels while any real change (a missing layer, a wrong
resize) is off by the magnitude itself. The runtimes are optional extras: without them these
tests skip, naming the extra.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from sam2_encoder import SAM2ImageEncoder
from sam2_encoder.export import (
    PARITY_RTOL,
    ExportError,
    ImageEncoderGraph,
    export_image_encoder,
    load_runtime,
    resize_matrix,
)
from sam2_encoder.image_encoder import bf16_support


def _need(module: str, extra: str):
    return pytest.importorskip(module, reason=f"{module} is not installed: pip install 'sam2-encoder[{extra}]'")


def _tiny(image_size: int = 64, **kwargs) -> SAM2ImageEncoder:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=image_size, seed=3, **kwargs)


def _within_tolerance(got: np.ndarray, ref: torch.Tensor) -> tuple[float, float]:
    diff = float(np.abs(got - ref.numpy()).max())
    return diff, PARITY_RTOL * max(1.0, float(ref.abs().max()))


@pytest.fixture(scope="module")
def encoder() -> SAM2ImageEncoder:
    return _tiny()


@pytest.fixture(scope="module")
def onnx_pixels(encoder, tmp_path_factory):
    """The 64 px encoder exported to ONNX with SAM 2 pixels as input (one export for the module)."""
    _need("onnxruntime", "export")
    _need("onnxscript", "export")
    path = tmp_path_factory.mktemp("onnx") / "tiny64.onnx"
    return export_image_encoder(encoder, path)


@pytest.fixture(scope="module")
def openvino_frames(encoder, tmp_path_factory):
    """The 64 px encoder with its transforms, uint8 HWC 96x120 camera frames in, as an OpenVINO IR."""
    _need("openvino", "openvino")
    _need("onnxscript", "export")
    path = tmp_path_factory.mktemp("openvino") / "tiny64_frames.xml"
    return export_image_encoder(encoder, path, format="openvino", input="uint8", input_size=(96, 120), layout="HWC")


def test_onnx_export_matches_encode_in_onnxruntime_for_batches_1_and_3(encoder, onnx_pixels):
    """The ONNX file computes encoder.encode(pixels) within the stated tolerance at batch 1 and 3 (dynamic batch)."""
    model = load_runtime(onnx_pixels.path)
    for batch in (1, 3):
        pixels = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(10 + batch))
        out = model(pixels.numpy())
        ref = encoder.encode(pixels).as_dict()
        for level in ("s4", "s8", "s16"):
            assert out[level].shape == tuple(ref[level].shape)
            diff, allowed = _within_tolerance(out[level], ref[level])
            assert diff <= allowed, (batch, level, diff)
    assert [r.batch for r in onnx_pixels.parity] == [1, 3] and all(r.ok for r in onnx_pixels.parity)


def test_onnx_file_names_its_input_outputs_and_dynamic_batch(onnx_pixels):
    """The graph's input is pixel_values (batch, 3, 64, 64) float, its outputs s4, s8, s16 with a 'batch' dim."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_pixels.path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert (inp.name, inp.shape, inp.type) == ("pixel_values", ["batch", 3, 64, 64], "tensor(float)")
    outputs = {o.name: o.shape for o in session.get_outputs()}
    assert outputs == {"s4": ["batch", 32, 16, 16], "s8": ["batch", 64, 8, 8], "s16": ["batch", 256, 4, 4]}
    assert onnx_pixels.inputs == {"pixel_values": (("batch", 3, 64, 64), "float32")}


def test_export_leaves_only_the_file_no_temporary(onnx_pixels):
    """A finished export leaves exactly the named file in its folder (the temporary was renamed)."""
    assert sorted(p.name for p in onnx_pixels.path.parent.iterdir()) == ["tiny64.onnx"]


def test_openvino_ir_of_uint8_frames_matches_encoder_forward(encoder, openvino_frames):
    """The IR with the transforms inside takes uint8 HWC frames and equals encoder(frames) in OpenVINO f32."""
    assert sorted(p.name for p in openvino_frames.path.parent.iterdir()) == ["tiny64_frames.bin", "tiny64_frames.xml"]
    model = load_runtime(openvino_frames.path)  # .xml: OpenVINO, f32 hint set
    g = torch.Generator().manual_seed(7)
    for batch in (1, 3):
        frames = torch.randint(0, 256, (batch, 96, 120, 3), generator=g, dtype=torch.uint8)
        out = model(frames.numpy())
        ref = encoder(frames).as_dict()
        for level in ("s4", "s8", "s16"):
            diff, allowed = _within_tolerance(out[level], ref[level])
            assert diff <= allowed, (batch, level, diff)


def test_openvino_runs_the_onnx_file_too(encoder, onnx_pixels):
    """OpenVINO reads the ONNX file directly, with the same parity."""
    _need("openvino", "openvino")
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    out = load_runtime(onnx_pixels.path, "openvino")(pixels.numpy())
    ref = encoder.encode(pixels).as_dict()
    for level in ("s4", "s8", "s16"):
        diff, allowed = _within_tolerance(out[level], ref[level])
        assert diff <= allowed, (level, diff)


def test_openvino_bf16_is_reported_as_fidelity_where_native(openvino_frames):
    """bf16 (opt-in) gives cosine >= 0.999 per level against eager fp32, on CPUs with native bf16."""
    ok, why = bf16_support("cpu")
    if not ok:
        pytest.skip(f"no native bf16 on this CPU: {why}")
    from sam2_encoder.export import check_parity

    graph = ImageEncoderGraph(_tiny(), input="uint8", input_size=(96, 120), layout="HWC")
    (report,) = check_parity(graph, openvino_frames.path, ["openvino bf16"], batches=[2])
    assert set(report.fidelity) == {"s4", "s8", "s16"}
    assert all(v["cosine_min"] >= 0.999 and v["rel_l2_error_max"] < 0.05 for v in report.fidelity.values())
    assert report.ok and "cos" in report.line()


def test_resize_matrix_reproduces_the_antialiased_resize():
    """R_h @ x @ R_w.T equals SAM 2's bilinear antialiased resize (down and up) to float rounding."""
    from sam2_encoder.transforms import SAM2Transforms

    x = torch.rand(2, 3, 96, 120, generator=torch.Generator().manual_seed(0))
    for size in (64, (128, 160), (96, 64)):
        t = SAM2Transforms(size)
        (h, w) = t.image_size
        got = resize_matrix(96, h) @ x @ resize_matrix(120, w).T
        assert torch.allclose(got, t.resize(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"format": "tflite"}, "format must be one of ('onnx', 'openvino'), got 'tflite'"),
        ({"input": "bgr"}, "input must be one of ('pixels', 'uint8', 'float'), got 'bgr'"),
        ({"input": "uint8", "layout": "NHWC"}, "layout must be 'CHW' or 'HWC', got 'NHWC'"),
        ({"input": "uint8", "input_size": (0, 64)}, "input_size must be a side or (height, width)"),
        ({"input_size": 96}, "input='pixels' takes SAM 2 pixels at image_size (64, 64), got input_size (96, 96)"),
    ],
)
def test_bad_export_options_are_refused_in_one_line(encoder, tmp_path, kwargs, message):
    """Each bad option is one ExportError naming the value and what is expected; nothing is written."""
    with pytest.raises(ExportError) as e:
        export_image_encoder(encoder, tmp_path / "x.onnx", **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_bad_output_paths_are_refused_before_exporting(encoder, tmp_path):
    """A missing folder, a folder, or the wrong suffix for the format: one line each, before any work."""
    cases = [
        (tmp_path / "missing" / "x.onnx", "onnx", f"the folder {tmp_path / 'missing'} does not exist"),
        (tmp_path / "x.xml", "onnx", "format 'onnx' writes a .onnx file name, got 'x.xml'"),
        (tmp_path / "x.onnx", "openvino", "format 'openvino' writes a .xml file name, got 'x.onnx'"),
        (tmp_path / "dir.onnx", "onnx", "is a folder; give a .onnx file name"),
    ]
    (tmp_path / "dir.onnx").mkdir()
    for path, fmt, message in cases:
        with pytest.raises(ExportError) as e:
            export_image_encoder(encoder, path, format=fmt)
        assert message in str(e.value), str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.onnx"]


def test_encoders_that_are_not_their_fp32_cpu_graph_are_refused(tmp_path):
    """bf16 autocast, non-float32 weights and deferred (unloaded) weights cannot be exported: said so."""
    with pytest.raises(ExportError, match="precision='bf16' is not exported .* run it in OpenVINO"):
        ImageEncoderGraph(_tiny(precision="bf16"))
    with pytest.raises(ExportError, match=r"float32 weights on the CPU, got torch.float64 on cpu"):
        ImageEncoderGraph(_tiny(dtype=torch.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        deferred = SAM2ImageEncoder(
            "sam2.1_hiera_tiny", checkpoint=tmp_path / "gone.pt", image_size=64, missing_checkpoint="defer"
        )
    with pytest.raises(ExportError, match="placeholder weights .*gone.pt was not found"):
        ImageEncoderGraph(deferred)


def test_image_size_not_a_multiple_of_32_is_refused():
    """The encoder refuses an image size the trunk cannot tile (so nothing of that size is exported)."""
    with pytest.raises(ValueError, match="multiple of 32"):
        _tiny(image_size=100)


def test_unknown_runtime_and_bf16_in_onnxruntime_are_refused(tmp_path):
    """load_runtime takes onnxruntime or openvino; bf16 is OpenVINO's (ONNX Runtime runs f32)."""
    with pytest.raises(ExportError, match="runtime must be one of"):
        load_runtime(tmp_path / "x.onnx", "tensorrt")
    with pytest.raises(ExportError, match="ONNX Runtime runs this graph in f32 only"):
        load_runtime(tmp_path / "x.onnx", "onnxruntime", precision="bf16")


# --------------------------------------------------------------------------------------------
# sam2-encoder export
# --------------------------------------------------------------------------------------------


def test_cli_exports_the_image_encoder_with_its_transforms_and_prints_the_parity(tmp_path, capsys):
    """`sam2-encoder export --input uint8` writes the ONNX file and prints the parity it measured (JSON)."""
    import json

    from sam2_encoder.cli import main

    _need("onnxruntime", "export")
    _need("onnxscript", "export")
    out = tmp_path / "enc.onnx"
    args = ["export", "--image-size", "64", "--input", "uint8", "--input-size", "48", "80", "--out", str(out)]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["inputs"] == {"images": {"shape": ["batch", 3, 48, 80], "dtype": "uint8"}}
    assert report["outputs"] == ["s4", "s8", "s16"]
    assert [(r["runtime"], r["batch"], r["ok"]) for r in report["parity"]] == [("onnxruntime", 1, True)] + [
        ("onnxruntime", 3, True)
    ]
    assert all(v < 1e-4 for r in report["parity"] for v in r["max_abs_diff"].values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc.onnx"]
    frames = np.random.default_rng(0).integers(0, 256, (2, 3, 48, 80), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eager = SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=64)  # the CLI's seeded weights (seed 0)
    ref = eager(torch.from_numpy(frames)).as_dict()
    got = load_runtime(out)(frames)
    for level in ("s4", "s8", "s16"):
        diff, allowed = _within_tolerance(got[level], ref[level])
        assert diff <= allowed, (level, diff)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--out", "{tmp}/missing/x.onnx"],
            "error: --out {tmp}/missing/x.onnx: the folder {tmp}/missing does not exist",
        ),
        (["--out", "{tmp}/x.xml"], "error: --out {tmp}/x.xml: --format onnx writes a .onnx file, got 'x.xml'"),
        (["--out", "{tmp}/x.onnx", "--format", "openvino"], "--format openvino writes a .xml file, got 'x.onnx'"),
        (["--out", "{tmp}"], "error: --out {tmp} is a folder; give a .onnx file name"),
        (["--out", "{tmp}/x.onnx", "--format", "tflite"], "argument --format: invalid choice: 'tflite'"),
        (["--out", "{tmp}/x.onnx", "--image-size", "100"], "expected a positive multiple of 32, got 100"),
        (["--out", "{tmp}/x.onnx", "--input-size", "48", "64"], "error: --input-size is the camera frame size of"),
        (["--out", "{tmp}/x.onnx", "--variant", "sam9"], "error: --variant 'sam9': "),
        (["--out", "{tmp}/x.onnx", "--policy", "{tmp}", "--checkpoint", "x.pt"], "--checkpoint do not apply"),
    ],
)
def test_cli_mistakes_are_one_error_line_exit_2_and_write_nothing(args, message, tmp_path, capsys):
    """Every mistake is one `error: ...` line on stderr, exit status 2, and nothing is written."""
    from sam2_encoder.cli import main

    tmp = str(tmp_path)
    assert main(["export", *(a.replace("{tmp}", tmp) for a in args)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message.replace("{tmp}", tmp) in err[-1], err
    assert list(tmp_path.iterdir()) == []


def test_a_missing_runtime_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    """Without onnxruntime / onnxscript / openvino the error says which extra installs it."""
    import sys

    from sam2_encoder.cli import main

    for name in ("onnxruntime", "openvino", "onnxscript"):
        monkeypatch.setitem(sys.modules, name, None)  # what `import name` does when it is not installed
    with pytest.raises(ImportError, match=r"onnxruntime is not installed .*pip install 'sam2-encoder\[export\]'"):
        load_runtime(tmp_path / "x.onnx")
    with pytest.raises(ImportError, match=r"openvino is not installed .*pip install 'sam2-encoder\[openvino\]'"):
        load_runtime(tmp_path / "x.xml")
    assert main(["export", "--image-size", "64", "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: onnxscript is not installed") and "pip install 'sam2-encoder[export]'" in err
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# the policy's observation encoder
# --------------------------------------------------------------------------------------------


def _obs_encoder(**options):
    """Two cameras of different sizes (one with 2 object masks), a resize and centre crop, two low-dim keys."""
    from sam2_encoder.camera_encoder import MultiCameraEncoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = MultiCameraEncoder(
            {"wrist": (3, 48, 64), "front": (3, 64, 80)},
            {"vel": (3,), "pos": (2,)},
            image_size=64,
            resize_shape=(40, 56),
            crop_shape=(32, 48),
            object_masks_key={"front": "front_masks"},
            num_objects=2,
            seed=1,
            **options,
        )
    return enc.eval()


def _obs_inputs(enc, batch: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    obs = {k: torch.rand(batch, *enc.rgb_shapes[k], generator=g) for k in enc.rgb_keys}
    obs["front_masks"] = (torch.rand(batch, 2, 64, 80, generator=g) > 0.7).float()
    obs |= {k: torch.randn(batch, *enc.low_dim_shapes[k], generator=g) for k in enc.low_dim_keys}
    return obs


@pytest.fixture(scope="module")
def obs_onnx(tmp_path_factory):
    _need("onnxruntime", "export")
    _need("onnxscript", "export")
    from sam2_encoder.export import export_obs_encoder

    enc = _obs_encoder()
    return enc, export_obs_encoder(enc, tmp_path_factory.mktemp("obs") / "obs.onnx")


def test_obs_encoder_export_takes_cameras_then_masks_then_low_dim_sorted(obs_onnx):
    """Inputs are named by the obs keys in a fixed order; the output is condition (batch, D)."""
    enc, result = obs_onnx
    assert list(result.inputs) == ["front", "wrist", "front_masks", "pos", "vel"]
    assert result.inputs["front_masks"] == (("batch", 2, 64, 80), "float32")
    assert result.outputs == ("condition",)
    import onnxruntime as ort

    (out,) = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"]).get_outputs()
    assert (out.name, out.shape) == ("condition", ["batch", enc.output_shape()[0]])


def test_obs_encoder_export_matches_forward_in_both_runtimes(obs_onnx):
    """The file computes obs_encoder(obs_dict) at batch 1 and 3, in ONNX Runtime and in OpenVINO."""
    enc, result = obs_onnx
    assert all(r.ok for r in result.parity) and [r.batch for r in result.parity] == [1, 3]
    runtimes = [load_runtime(result.path)]
    if _openvino_installed():
        runtimes.append(load_runtime(result.path, "openvino"))
    for batch in (1, 3):
        obs = _obs_inputs(enc, batch, seed=20 + batch)
        with torch.no_grad():
            ref = enc(obs)
        for model in runtimes:
            got = model(*(obs[k].numpy() for k in result.inputs))["condition"]
            diff, allowed = _within_tolerance(got, ref)
            assert got.shape == tuple(ref.shape) and diff <= allowed, (model.runtime, batch, diff)


def test_exporting_leaves_the_encoder_in_eval_mode(obs_onnx):
    """Export and its check run in eval mode and give every module its own flag back: an eval encoder stays eval.

    (The graph module is built in train mode; restoring *its* flag once put the encoder into training,
    so the next ``forward`` took random crops.)
    """
    enc, _ = obs_onnx
    assert [name for name, m in enc.named_modules() if m.training] == []
    obs = _obs_inputs(enc, 2, seed=5)
    with torch.no_grad():
        first = enc(obs)
        enc.forget_frames()
        assert torch.equal(enc(obs), first)


def test_a_tracker_encoder_in_training_exports_its_given_masks_graph_and_stays_in_training(tmp_path):
    """given_masks=True exports an object_tracker=True encoder's masks-in graph; it matches forward with masks given.

    The encoder was in train mode: it is still, module by module (the frozen trunk in eval), afterwards.
    """
    _need("onnxruntime", "export")
    _need("onnxscript", "export")
    from sam2_encoder.export import export_obs_encoder

    enc = _obs_encoder(object_tracker=True).train()
    flags = {name: m.training for name, m in enc.named_modules()}
    result = export_obs_encoder(enc, tmp_path / "obs.onnx", given_masks=True)
    assert {name: m.training for name, m in enc.named_modules()} == flags and flags[""]
    assert list(result.inputs) == ["front", "wrist", "front_masks", "pos", "vel"]
    assert all(r.ok for r in result.parity)
    obs = _obs_inputs(enc.eval(), 2, seed=7)
    with torch.no_grad():
        ref = enc(obs)
    got = load_runtime(result.path)(*(obs[k].numpy() for k in result.inputs))["condition"]
    diff, allowed = _within_tolerance(got, ref)
    assert diff <= allowed, diff


def _openvino_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def test_the_object_tracker_is_refused_saying_why(tmp_path):
    """object_tracker=True is one ExportError naming the memory bank; given_masks=True exports the masks graph."""
    from sam2_encoder.export import ObsEncoderGraph, export_obs_encoder

    enc = _obs_encoder(object_tracker=True)
    with pytest.raises(ExportError) as e:
        export_obs_encoder(enc, tmp_path / "obs.onnx")
    message = str(e.value)
    assert message.startswith("object_tracker=True cannot be exported: SAM 2's memory attention and memory encoder")
    assert "memory bank" in message and "given_masks=True" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []
    assert ObsEncoderGraph(enc, given_masks=True).input_names == ("front", "wrist", "front_masks", "pos", "vel")


def _dp_checkpoint(path):
    """A Diffusion Policy checkpoint payload (cfg + state_dicts, torch.save) whose EMA obs encoder differs."""
    from omegaconf import OmegaConf

    from sam2_encoder.diffusion_policy.obs_encoder import SAM2ObsEncoder

    meta = {
        "obs": {"image": {"shape": [3, 48, 64], "type": "rgb"}, "agent_pos": {"shape": [2], "type": "low_dim"}},
        "action": {"shape": [2]},
    }
    options = {"variant": "sam2.1_hiera_tiny", "image_size": 64, "crop_shape": [40, 56], "pool": "avg"}
    cfg = OmegaConf.create(
        {
            "shape_meta": meta,
            "policy": {"obs_encoder": {"_target_": "sam2_encoder.SAM2ObsEncoder", "shape_meta": "${shape_meta}",
                                       "checkpoint": str(path.parent / "gone.pt"), **options}},
            "training": {"use_ema": True},
        }
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trained = SAM2ObsEncoder(meta, seed=5, **options).eval()
    from tests.conftest import perturb_

    raw = {f"obs_encoder.{k}": v.clone() for k, v in trained.state_dict().items()}
    perturb_(trained.heads, seed=9)
    ema = {f"obs_encoder.{k}": v for k, v in trained.state_dict().items()}
    payload = {"cfg": cfg, "state_dicts": {"model": raw, "ema_model": ema}, "pickles": {}}
    torch.save(payload, path)
    return trained


def test_cli_exports_a_diffusion_policy_checkpoints_obs_encoder(tmp_path, capsys):
    """`sam2-encoder export --policy x.ckpt` re-instantiates the saved cfg, loads the EMA weights, and matches them."""
    import json

    from sam2_encoder.cli import main

    _need("onnxruntime", "export")
    _need("onnxscript", "export")
    pytest.importorskip("hydra", reason="hydra-core is not installed: pip install 'sam2-encoder[dp]'")
    trained = _dp_checkpoint(tmp_path / "latest.ckpt")
    out = tmp_path / "obs.onnx"
    assert main(["export", "--policy", str(tmp_path / "latest.ckpt"), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["inputs"]) == ["image", "agent_pos"] and report["outputs"] == ["condition"]
    assert all(r["ok"] for r in report["parity"])
    g = torch.Generator().manual_seed(3)
    obs = {"image": torch.rand(2, 3, 48, 64, generator=g) * 2 - 1, "agent_pos": torch.randn(2, 2, generator=g)}
    with torch.no_grad():
        ref = trained(obs)  # the EMA weights
    got = load_runtime(out)(obs["image"].numpy(), obs["agent_pos"].numpy())["condition"]
    diff, allowed = _within_tolerance(got, ref)
    assert diff <= allowed, diff


def test_cli_exports_a_lerobot_policy_folder_with_given_masks(tmp_path, capsys):
    """A saved sam2_diffusion folder (object masks, hence its tracker) is refused, then exported with --given-masks.

    stdout stays the one JSON line (LeRobot's loader prints to stdout; it goes to stderr), and the file
    computes ``policy.encoder(obs)`` with masks given. Runs where lerobot and the [export] extra are both installed.
    """
    import json

    from sam2_encoder.cli import main

    _need("onnxruntime", "export")
    _need("onnxscript", "export")
    objects = pytest.importorskip("tests.lerobot.test_policy_objects", reason="LeRobot 0.6 is not installed here")
    policy = objects.make_policy().eval()
    policy.save_pretrained(tmp_path / "policy")
    out = tmp_path / "obs.onnx"
    assert main(["export", "--policy", str(tmp_path / "policy"), "--out", str(out)]) == 2
    assert "object_tracker=True cannot be exported" in capsys.readouterr().err
    assert main(["export", "--policy", str(tmp_path / "policy"), "--given-masks", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    names = list(report["inputs"])
    assert names == [objects.TOP, objects.MASKS, "observation.state"] and all(r["ok"] for r in report["parity"])
    g = torch.Generator().manual_seed(4)
    obs = {
        objects.TOP: torch.rand(3, 3, objects.H, objects.W, generator=g),
        objects.MASKS: (torch.rand(3, 2, objects.H, objects.W, generator=g) > 0.7).float(),
        "observation.state": torch.randn(3, 2, generator=g),
    }
    with torch.no_grad():
        ref = policy.encoder(obs)
    got = load_runtime(out)(*(obs[k].numpy() for k in names))["condition"]
    diff, allowed = _within_tolerance(got, ref)
    assert diff <= allowed, diff


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "nope.ckpt", "--policy {tmp}/nope.ckpt: no such file or folder"),
        (lambda p: (p / "w.pt").write_bytes(b"x") and p / "w.pt", "expected a LeRobot policy folder"),
        (lambda p: (p / "pol").mkdir() or p / "pol", "a LeRobot policy folder holds config.json and model.safetensors"),
        (lambda p: torch.save({"a": 1}, p / "x.ckpt") or p / "x.ckpt", "not a Diffusion Policy checkpoint"),
    ],
)
def test_cli_bad_policies_are_one_error_line(make, message, tmp_path, capsys):
    """A missing, unknown or incomplete --policy is one `error: ...` line, exit 2, nothing written."""
    from sam2_encoder.cli import main

    policy = make(tmp_path)
    before = sorted(tmp_path.iterdir())
    out = tmp_path / "o.onnx"
    assert main(["export", "--policy", str(policy), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and message.replace("{tmp}", str(tmp_path)) in err, err
    assert sorted(tmp_path.iterdir()) == before
