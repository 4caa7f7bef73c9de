"""``backend="openvino"``: a frozen encoder's inference through OpenVINO, with the encoder's API unchanged.

Fidelity: in fp32 every level (and ``s16_neck``) is within the export's ``PARITY_RTOL * max(1,
max |eager|)`` of eager (measured here: up to 2.9e-6 on values up to 1.6 at 64 px, seeded
weights); in bf16 each level's cosine to eager fp32 is at least ``BF16_MIN_COSINE`` (measured
0.9997 or more at 64 px; 0.99995 or more at 224/256 px with Meta-scaled weights in
``benchmarks/runtimes.py``). Compiling a model takes ~10 s at 64 px on one thread, so the
tests share encoders where they can. Without openvino (CI installs ``.[dev]``) they skip, except
the ones about the errors, which need no runtime.
"""

from __future__ import annotations

import copy
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from sam2_encoder import SAM2ImageEncoder
from sam2_encoder.camera_encoder import MultiCameraEncoder
from sam2_encoder.export import BF16_MIN_COSINE, PARITY_RTOL
from sam2_encoder.image_encoder import bf16_support

LEVELS = ("s4", "s8", "s16", "s16_neck")


def _need_openvino() -> None:
    for module in ("openvino", "onnxscript", "onnx"):
        pytest.importorskip(module, reason=f"{module} is not installed: pip install 'sam2-encoder[openvino]'")


def _tiny(**kwargs) -> SAM2ImageEncoder:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=64, seed=3, **kwargs)


def _pixels(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def _assert_within_tolerance(got, ref) -> None:
    for level in LEVELS:
        a, b = getattr(got, level), getattr(ref, level)
        assert a.shape == b.shape and a.dtype == torch.float32, level
        allowed = PARITY_RTOL * max(1.0, float(b.abs().max()))
        assert float((a - b).abs().max()) <= allowed, (level, float((a - b).abs().max()), allowed)


@pytest.fixture(scope="module")
def pair() -> tuple[SAM2ImageEncoder, SAM2ImageEncoder]:
    """The same weights twice: eager, and ``backend="openvino"`` (fp32)."""
    _need_openvino()
    return _tiny(), _tiny(backend="openvino")


def test_fp32_backend_matches_eager_within_the_export_tolerance(pair) -> None:
    """Batches 1 and 3, under no_grad and inference_mode: every level within PARITY_RTOL of eager; pos_enc equal."""
    eager, ov = pair
    with torch.no_grad():
        _assert_within_tolerance(ov.encode(_pixels(1, 1)), eager.encode(_pixels(1, 1)))
    with torch.inference_mode():
        _assert_within_tolerance(ov.encode(_pixels(3, 2)), eager.encode(_pixels(3, 2)))
    eager.with_pos_enc = ov.with_pos_enc = True
    try:
        got, ref = ov.encode(_pixels(3, 2)), eager.encode(_pixels(3, 2))
    finally:
        eager.with_pos_enc = ov.with_pos_enc = False
    assert all(torch.equal(a, b) for a, b in zip(got.pos_enc, ref.pos_enc))


def test_compiled_models_are_kept_per_batch_size_and_outputs_are_new_tensors(pair) -> None:
    """A batch size seen before reuses its model; an int micro_batch compiles its chunk sizes; outputs never alias."""
    _, ov = pair
    first = ov.encode(_pixels(2, 4))
    shapes = ov._openvino.compiled_shapes
    assert shapes[-1] == (2, 64, 64, torch.get_num_threads())  # (batch, H, W, threads), most recent last
    again = ov.encode(_pixels(2, 5))
    assert sorted(ov._openvino.compiled_shapes) == sorted(shapes)  # nothing compiled again
    assert not torch.equal(first.s4, again.s4)  # the second call did not overwrite the first's outputs
    ov.micro_batch = 2
    try:
        chunked = ov.encode(_pixels(5, 6))
    finally:
        ov.micro_batch = "auto"
    assert {s[0] for s in ov._openvino.compiled_shapes} >= {1, 2}
    assert chunked.s16.shape == (5, 256, 4, 4)


def test_new_weights_rebuild_the_model(pair) -> None:
    """load_state_dict after a call: the next call computes with the new weights (not the compiled old ones)."""
    eager, ov = pair
    changed = copy.deepcopy(ov)
    assert changed._openvino is None or changed._openvino.compiled_shapes == []  # never deep-copied
    state = {k: v.clone() for k, v in eager.state_dict().items()}
    state["conv_s0.bias"] += 1.0
    changed.encode(_pixels(1, 7))
    changed.load_state_dict(state)
    reference = copy.deepcopy(eager)
    reference.load_state_dict(state)
    _assert_within_tolerance(changed.encode(_pixels(1, 7)), reference.encode(_pixels(1, 7)))


def test_bf16_backend_is_close_to_fp32_by_cosine_per_level() -> None:
    """precision='bf16' runs OpenVINO's bf16 (native only): cosine >= BF16_MIN_COSINE per level against eager fp32."""
    _need_openvino()
    ok, why = bf16_support("cpu")
    if not ok:
        pytest.skip(f"no native bf16: {why}")
    got = _tiny(backend="openvino", precision="bf16").encode(_pixels(2, 8))
    ref = _tiny().encode(_pixels(2, 8))
    for level in LEVELS:
        a, b = getattr(got, level).flatten(1), getattr(ref, level).flatten(1)
        assert float(F.cosine_similarity(a, b).min()) >= BF16_MIN_COSINE, level
        assert not torch.equal(a, b)  # bf16, not f32 (OpenVINO's hint was honoured)


def test_obs_encoder_with_the_backend_keeps_its_frame_memo_and_outputs() -> None:
    """A MultiCameraEncoder whose trunk runs in OpenVINO: same condition as eager, remembered frames not re-encoded."""
    _need_openvino()
    cameras = {"cam": (3, 48, 64)}
    eager = MultiCameraEncoder(cameras, low_dim={"state": (2,)}, image_size=64).eval()
    ov = MultiCameraEncoder(cameras, low_dim={"state": (2,)}, image_size=64).eval()
    ov.load_state_dict(eager.state_dict())
    ov.encoder.backend = "openvino"
    g = torch.Generator().manual_seed(9)
    frames, states = torch.rand(3, 3, 48, 64, generator=g), torch.rand(3, 2, generator=g)
    windows = [[0, 1], [1, 2]]  # (B=1, To=2): the second call sees frame 1 again
    with torch.no_grad():
        for index in windows:
            obs = {"cam": frames[index][None], "state": states[index][None]}
            got, ref = ov(obs), eager(obs)
            assert got.shape == ref.shape == (1, 2, ov.output_shape()[0])
            assert float((got - ref).abs().max()) <= PARITY_RTOL * max(1.0, float(ref.abs().max()))
    assert ov.encoder._openvino.runs == 3  # frames 0, 1, then only 2


def test_without_openvino_the_error_names_the_extra(monkeypatch) -> None:
    """backend='openvino' where openvino is not installed: one ImportError naming the [openvino] extra."""
    monkeypatch.setitem(sys.modules, "openvino", None)  # what `import openvino` does when it is not installed
    with pytest.raises(ImportError, match=r"backend='openvino' needs the openvino extra: openvino is not installed"):
        _tiny(backend="openvino")
    with pytest.raises(ImportError, match=r"pip install 'sam2-encoder\[openvino\]'"):
        _tiny().backend = "openvino"


def test_an_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^backend must be one of \('torch', 'openvino'\), got 'onnx'$"):
        _tiny(backend="onnx")


def test_the_backend_refuses_what_needs_gradients_or_other_weights() -> None:
    """OpenVINO is inference only: an unfrozen encoder, pixels that require grad, non-float32 weights."""
    _need_openvino()
    with pytest.raises(ValueError, match=r"backend='openvino' is inference only: it needs a frozen encoder"):
        _tiny(freeze=False, backend="openvino")
    enc = _tiny(backend="openvino")
    with pytest.raises(ValueError, match=r"the pixels require grad"):
        enc.encode(_pixels(1, 0).requires_grad_())
    enc.unfreeze()
    with pytest.raises(ValueError, match=r"inference only: it needs a frozen encoder .*fine-tune with backend='torch'"):
        enc.encode(_pixels(1, 0))
    enc = _tiny(dtype=torch.float64, backend="openvino")
    with pytest.raises(ValueError, match=r"compiles float32 weights, got torch.float64"):
        enc.encode(_pixels(1, 0).double())
    assert enc._openvino is None or enc._openvino.compiled_shapes == []  # refused before compiling anything


def test_the_config_option_reaches_the_trunk() -> None:
    """backend='openvino' as an encoder option (DP's Hydra YAML, LeRobot's config): the trunk runs in OpenVINO."""
    _need_openvino()
    enc = MultiCameraEncoder({"cam": (3, 48, 64)}, image_size=64, backend="openvino").eval()
    assert enc.encoder.backend == "openvino"
