"""Meta's reference SAM 2 (PyPI ``sam2==1.1.0``) for the benchmarks and the golden fixture script.

One place for what both need: the released configs inside the ``sam2`` package, building Meta's
``SAM2Base`` like ``build_sam2`` (post-processing overrides, eval mode), the image-predictor
features (``forward_image`` -> ``_prepare_backbone_features`` -> ``no_mem_embed``, reshaped to
``(B, C, h, w)``), the torchvision import shim, and a helper process serving Meta's model to a
benchmark that runs in another interpreter (Meta's venv has ``sam2`` and torchvision, ours
transformers). Used by ``benchmarks/encoder.py`` and ``tests/fixtures/make_meta_golden.py``.

Only the standard library and torch are imported at module level (hydra/omegaconf/sam2 lazily),
so Meta's venv can run this file as the helper: ``python benchmarks/meta_reference.py`` serves
one JSON request per line on stdin/stdout (see :class:`MetaReference`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "META_CONFIGS",
    "POSTPROCESSING",
    "MetaReference",
    "build_meta_model",
    "import_torchvision",
    "load_meta_config",
    "meta_features",
    "meta_worker",
    "sam2_package_dir",
    "start_meta",
]

STRIDES = (4, 8, 16)
# Meta's model configs inside the ``sam2`` package, by our variant names.
META_CONFIGS: dict[str, str] = {
    "sam2_hiera_tiny": "configs/sam2/sam2_hiera_t.yaml",
    "sam2_hiera_small": "configs/sam2/sam2_hiera_s.yaml",
    "sam2_hiera_base_plus": "configs/sam2/sam2_hiera_b+.yaml",
    "sam2_hiera_large": "configs/sam2/sam2_hiera_l.yaml",
    "sam2.1_hiera_tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_large": "configs/sam2.1/sam2.1_hiera_l.yaml",
}
# build_sam2(apply_postprocessing=True) overrides; they only change mask-decoder inference.
POSTPROCESSING = {
    "dynamic_multimask_via_stability": True,
    "dynamic_multimask_stability_delta": 0.05,
    "dynamic_multimask_stability_thresh": 0.98,
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sam2_package_dir() -> Path:
    """The installed ``sam2`` package's folder, found without importing it.

    Raises:
        SystemExit: If ``sam2`` is not installed in this interpreter.
    """
    spec = importlib.util.find_spec("sam2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("sam2 is not installed in this interpreter (use the venv with sam2==1.1.0)")
    return Path(next(iter(spec.submodule_search_locations)))


def load_meta_config(variant: str) -> Any:
    """A released yaml as an OmegaConf node with ``build_sam2``'s post-processing applied (no Hydra compose)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(sam2_package_dir() / META_CONFIGS[variant])
    extra = cfg.model.get("sam_mask_decoder_extra_args") or {}
    cfg.model.sam_mask_decoder_extra_args = {**extra, **POSTPROCESSING}
    OmegaConf.resolve(cfg)
    return cfg


def build_meta_model(variant: str) -> torch.nn.Module:
    """Meta's ``SAM2Base`` for a variant, eval mode, CPU, Meta's own random init (seed it first)."""
    from hydra.utils import instantiate

    return instantiate(load_meta_config(variant).model, _recursive_=True).eval()


@torch.no_grad()
def meta_features(model: Any, images: torch.Tensor) -> list[torch.Tensor]:
    """Meta's image-predictor features as contiguous ``(B, C, H/s, W/s)`` maps, ``s`` = 4, 8, 16.

    ``SAM2ImagePredictor.set_image_batch``'s recipe: ``forward_image`` (which applies the mask
    decoder's ``conv_s0`` / ``conv_s1``), ``_prepare_backbone_features``, ``no_mem_embed`` added to
    the coarsest level when ``directly_add_no_mem_embed``.
    """
    backbone_out = model.forward_image(images)
    _, feats, _, _ = model._prepare_backbone_features(backbone_out)
    if model.directly_add_no_mem_embed:
        feats[-1] = feats[-1] + model.no_mem_embed
    b, h, w = images.shape[0], images.shape[-2], images.shape[-1]
    return [f.permute(1, 2, 0).reshape(b, -1, h // s, w // s).contiguous() for f, s in zip(feats, STRIDES)]


# ------------------------------------------------------------------------------------------------
# torchvision (Meta's transforms and transformers' Sam2ImageProcessor import it)
# ------------------------------------------------------------------------------------------------

_KEEP: list[Any] = []


def import_torchvision(extra_path: str | None = None) -> dict[str, Any]:
    """Import torchvision for transformers' ``Sam2ImageProcessor``; report how (or why not).

    PyPI's torchvision wheels are CUDA builds: next to CPU torch their compiled ops do not load,
    and torchvision >= 0.2x then fails at import registering fake kernels for ``torchvision::nms``.
    Declaring the two operator schemas (no kernels) first lets its pure-python parts import.
    """
    if extra_path:
        sys.path.append(extra_path)
    try:
        import torchvision

        mode = "native"
    except ImportError as err:
        return {"available": False, "reason": f"torchvision is not installed ({err})"}
    except RuntimeError as err:
        if "torchvision::nms" not in str(err):
            return {"available": False, "reason": f"torchvision failed to import: {err}"}
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _KEEP.append(lib)
        import torchvision

        mode = "schema-shim (compiled ops not loaded; python transforms only)"
    return {"available": True, "version": torchvision.__version__, "import": mode, "path": torchvision.__file__}


# ------------------------------------------------------------------------------------------------
# Meta's model in a helper process
# ------------------------------------------------------------------------------------------------


def meta_worker() -> None:
    """Serve Meta's model over stdin/stdout, one JSON request per line (see :class:`MetaReference`)."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything the libraries print goes to stderr, not into the protocol
    sys.stdout = sys.stderr
    from importlib.metadata import version

    if importlib.util.find_spec("sam2") is None:
        proto.write(json.dumps({"error": "sam2 is not installed in this interpreter"}) + "\n")
        return
    model: Any = None
    device = torch.device("cpu")
    inputs: dict[str, torch.Tensor] = {}
    for line in sys.stdin:
        req = json.loads(line)
        reply: dict[str, Any] = {"ok": True}
        try:
            cmd = req["cmd"]
            if cmd == "init":
                torch.set_num_threads(req["threads"])
                device = torch.device(req["device"])
                torch.manual_seed(req["seed"])
                model = build_meta_model(req["variant"]).to(device)
                torch.save(model.state_dict(), req["weights_out"])
                reply.update(sam2=version("sam2"), torch=torch.__version__, threads=torch.get_num_threads())
            elif cmd == "input":
                inputs[req["key"]] = torch.load(req["path"], weights_only=True).to(device)
            elif cmd == "drop":
                inputs.pop(req["key"], None)
            elif cmd == "features":
                feats = meta_features(model, inputs[req["key"]])
                torch.save([f.cpu() for f in feats], req["out"])
            elif cmd == "time":
                x = inputs[req["key"]]
                _sync(device)
                c0, t0 = time.process_time(), time.perf_counter()
                meta_features(model, x)
                _sync(device)
                reply.update(wall=time.perf_counter() - t0, cpu=time.process_time() - c0)
            elif cmd == "quit":
                break
            else:
                raise ValueError(f"unknown command {cmd!r}")
        except Exception as err:  # noqa: BLE001 - reported to the parent, which decides
            reply = {"error": f"{type(err).__name__}: {err}"}
        proto.write(json.dumps(reply) + "\n")


class MetaReference:
    """Client of :func:`meta_worker`: Meta's SAM 2 in another interpreter, timed there."""

    def __init__(self, python: str, threads: int, device: torch.device, tmp: Path) -> None:
        self.tmp = tmp
        self.threads = threads
        self.device = device
        self.log = open(tmp / "meta_worker.log", "w")  # noqa: SIM115 - closed in close()
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self.proc = subprocess.Popen(
            [python, str(Path(__file__).resolve())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
        )
        self.info: dict[str, Any] = {"python": python}

    def call(self, **req: Any) -> dict[str, Any]:
        """Send one request and wait for its reply."""
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"Meta helper process died; see {self.tmp / 'meta_worker.log'}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def init(self, variant: str, seed: int) -> dict[str, torch.Tensor]:
        """Build Meta's model for ``variant`` with its own init under ``seed``; return its state dict."""
        path = self.tmp / "meta_weights.pt"
        reply = self.call(
            cmd="init", variant=variant, seed=seed, threads=self.threads, device=str(self.device), weights_out=str(path)
        )
        self.info.update({k: v for k, v in reply.items() if k != "ok"})
        return torch.load(path, weights_only=True)

    def set_input(self, key: str, x: torch.Tensor) -> None:
        path = self.tmp / f"{key}.pt"
        torch.save(x.detach().cpu().contiguous(), path)
        self.call(cmd="input", key=key, path=str(path))
        path.unlink()

    def drop(self, key: str) -> None:
        self.call(cmd="drop", key=key)

    def features(self, key: str) -> list[torch.Tensor]:
        path = self.tmp / f"{key}_features.pt"
        self.call(cmd="features", key=key, out=str(path))
        out = torch.load(path, weights_only=True)
        path.unlink()
        return out

    def time(self, key: str) -> tuple[float, float]:
        """Wall and CPU seconds of one feature call on the input ``key``, measured in the helper."""
        reply = self.call(cmd="time", key=key)
        return reply["wall"], reply["cpu"]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call(cmd="quit")
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=10)
        if self.proc.poll() is None:
            self.proc.kill()
        self.log.close()


def start_meta(
    python: str | None, threads: int, device: torch.device, tmp: Path
) -> tuple[MetaReference | None, dict[str, Any]]:
    """Start Meta's helper if an interpreter with ``sam2`` is known; else say why not.

    Args:
        python: Interpreter of a venv with ``sam2==1.1.0`` (default: ``$SAM2_META_PYTHON``, or this
            one if it has ``sam2``).
        threads: Torch threads of the helper.
        device: Where the helper runs Meta's model.
        tmp: Folder for the exchanged tensors and the helper's log.
    """
    python = python or os.environ.get("SAM2_META_PYTHON")
    if not python and importlib.util.find_spec("sam2") is not None:
        python = sys.executable
    if not python:
        return None, {
            "status": "not installed",
            "how": "pip install sam2==1.1.0 (needs torchvision) in some venv, then --meta-python <its python>",
        }
    try:
        ref = MetaReference(python, threads, device, tmp)
        ref.call(cmd="drop", key="-")  # round trip: the helper imported hydra/omegaconf and found sam2
    except (OSError, RuntimeError) as err:
        return None, {"status": f"unavailable: {err}", "python": python}
    return ref, {"status": "running", "python": python}


if __name__ == "__main__":
    meta_worker()
