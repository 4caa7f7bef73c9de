"""``sam2-encoder export``: the image encoder, or a saved policy's obs encoder, to ONNX or OpenVINO IR.

The file is written under a temporary name, run in the runtime on seeded inputs, compared with
eager PyTorch, and renamed into place only when every output is within the tolerance; the
parity measured is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from .common import CLIError, image_side

__all__ = ["register", "run"]


def register(sub: Any) -> argparse.ArgumentParser:
    """Add the ``export`` subcommand to a ``sam2-encoder`` subparsers object."""
    p = sub.add_parser(
        "export",
        help="export the image encoder or a saved policy's obs encoder to ONNX / OpenVINO, with a parity check",
        description="Export SAM 2's image encoder (outputs s4, s8, s16) or a saved policy's observation encoder "
        "(camera frames [+ object masks] + low-dim -> the (N, D) condition) with a dynamic batch, check it in "
        "the runtime against eager PyTorch, and write it only if it matches.",
    )
    p.add_argument(
        "--format", default="onnx", choices=["onnx", "openvino"], help="onnx (.onnx) or openvino (.xml+.bin)"
    )
    p.add_argument("--out", required=True, help="output file: .onnx for onnx, .xml for openvino (.bin beside it)")
    p.add_argument("--variant", default="sam2.1_hiera_tiny", help="released model name (default: %(default)s)")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="Meta .pt / safetensors / HF folder / URL / variant name / hub id; omitted: seeded random weights",
    )
    p.add_argument("--image-size", type=image_side, default=1024, help="encoder input side, multiple of 32")
    p.add_argument(
        "--input",
        default="pixels",
        choices=["pixels", "uint8", "float"],
        help="pixels: SAM 2 pixels (B,3,S,S) float32; uint8/float: camera frames resized and normalised in the graph",
    )
    p.add_argument(
        "--input-size", type=int, nargs=2, metavar=("H", "W"), default=None, help="camera frame size (uint8/float)"
    )
    p.add_argument("--layout", default="CHW", choices=["CHW", "HWC"], help="camera frame layout (uint8/float)")
    p.add_argument("--channel-order", default="RGB", choices=["RGB", "BGR"], help="camera frame channel order")
    p.add_argument(
        "--policy",
        default=None,
        help="export this saved policy's obs encoder instead: a LeRobot policy folder (config.json + "
        "model.safetensors, as --policy.path takes) or a Diffusion Policy .ckpt",
    )
    p.add_argument(
        "--given-masks",
        action="store_true",
        help="a policy with object_tracker=true: export the graph that takes the object masks as inputs "
        "(the tracker's memory cannot be exported; it then runs outside the graph)",
    )
    p.add_argument("--no-check", action="store_true", help="skip the parity check (not recommended)")
    p.add_argument(
        "--bf16", action="store_true", help="also report OpenVINO bf16 fidelity (needs openvino and native bf16)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.set_defaults(func=run)
    return p


def _check_args(args: argparse.Namespace) -> Path:
    """Options that contradict each other, and the output path, before any model is built."""
    out = Path(args.out)
    suffix = ".onnx" if args.format == "onnx" else ".xml"
    if out.is_dir():
        raise CLIError(f"--out {out} is a folder; give a {suffix} file name")
    if out.suffix != suffix:
        raise CLIError(f"--out {out}: --format {args.format} writes a {suffix} file, got {out.name!r}")
    if not out.parent.is_dir():
        raise CLIError(f"--out {out}: the folder {out.parent} does not exist")
    if args.input == "pixels" and args.input_size is not None:
        raise CLIError("--input-size is the camera frame size of --input uint8/float; --input pixels has none")
    if args.input_size is not None and min(args.input_size) < 1:
        raise CLIError(f"--input-size {args.input_size[0]} {args.input_size[1]}: expected two whole numbers >= 1")
    if args.policy is not None:
        given = [
            f"--{name.replace('_', '-')}"
            for name, default in (("checkpoint", None), ("input", "pixels"), ("input_size", None))
            if getattr(args, name) != default
        ]
        if given:
            raise CLIError(f"--policy exports the policy's own encoder and inputs; {', '.join(given)} do not apply")
    return out


def run(args: argparse.Namespace) -> int:
    """Run ``sam2-encoder export`` with parsed arguments; returns the exit status."""
    out = _check_args(args)
    from .. import export

    if args.policy is not None:
        graph, what = _policy_graph(Path(args.policy), args.given_masks)
    else:
        graph, what = _image_graph(args)
    print(f"exporting {what} to {args.format} ...", file=sys.stderr)
    result = export.export_graph(graph, out, format=args.format, check=not args.no_check, bf16=args.bf16)
    if args.json:
        report = {
            "out": str(result.path),
            "format": result.format,
            "exported": what,
            "inputs": {k: {"shape": list(s), "dtype": d} for k, (s, d) in result.inputs.items()},
            "outputs": list(result.outputs),
            "parity": [
                {
                    "runtime": r.runtime,
                    "batch": r.batch,
                    "ok": r.ok,
                    "max_abs_diff": r.max_abs_diff,
                    "abs_max": r.abs_max,
                    "tolerance": r.tolerance,
                    **({"fidelity": r.fidelity} if r.fidelity else {}),
                }
                for r in result.parity
            ],
        }
        print(json.dumps(report))
    else:
        print("\n".join(result.summary()))
    return 0


def _image_graph(args: argparse.Namespace) -> tuple[Any, str]:
    """The image encoder of ``--variant`` / ``--checkpoint`` / ``--image-size`` as an export graph."""
    from ..export import ImageEncoderGraph
    from ..image_encoder import SAM2ImageEncoder
    from .common import build_model

    encoder = build_model(SAM2ImageEncoder, args, "exported features", channel_order=args.channel_order)
    size = tuple(args.input_size) if args.input_size else None
    graph = ImageEncoderGraph(encoder, input=args.input, input_size=size, layout=args.layout)
    s = encoder.image_size
    return graph, f"{encoder.variant.name} image encoder at {s[0]}x{s[1]} (input {args.input})"


def _policy_graph(path: Path, given_masks: bool) -> tuple[Any, str]:
    """The obs encoder of a saved policy (LeRobot folder or Diffusion Policy ``.ckpt``) as an export graph."""
    from ..export import ObsEncoderGraph

    # the hosts' loaders print ("Loading weights from local directory"): stdout is --json's one line
    if path.is_dir():
        with contextlib.redirect_stdout(sys.stderr):
            encoder, kind = _lerobot_encoder(path), "LeRobot policy"
    elif path.is_file() and path.suffix == ".ckpt":
        with contextlib.redirect_stdout(sys.stderr):
            encoder, kind = _dp_encoder(path), "Diffusion Policy checkpoint"
    elif not path.exists():
        raise CLIError(f"--policy {path}: no such file or folder")
    else:
        raise CLIError(
            f"--policy {path}: expected a LeRobot policy folder (config.json + model.safetensors) or a Diffusion "
            f"Policy .ckpt, got a {path.suffix or 'suffix-less'} file"
        )
    graph = ObsEncoderGraph(encoder, given_masks=given_masks)
    return graph, f"the obs encoder of {kind} {path} (condition of {encoder.output_shape()[0]} values per row)"


def _lerobot_encoder(path: Path) -> Any:
    """``SAM2DiffusionPolicy.from_pretrained(path).encoder`` (needs lerobot: the training environment)."""
    config = path / "config.json"
    if not config.is_file() or not (path / "model.safetensors").is_file():
        raise CLIError(f"--policy {path}: a LeRobot policy folder holds config.json and model.safetensors")
    try:
        kind = json.loads(config.read_text()).get("type")
    except (ValueError, AttributeError) as e:
        raise CLIError(f"--policy {config}: not a JSON object ({e})") from None
    if kind != "sam2_diffusion":
        raise CLIError(f"--policy {path}: config.json has type {kind!r}; only sam2_diffusion policies are exported")
    try:
        from ..lerobot.modeling_sam2_diffusion import SAM2DiffusionPolicy
    except ImportError as e:
        raise ImportError(
            f"a LeRobot policy folder needs lerobot ({e}): run the export in the environment the policy was "
            "trained in, with pip install 'sam2-encoder[export]'"
        ) from None
    return SAM2DiffusionPolicy.from_pretrained(path).encoder.eval()


def _dp_encoder(path: Path) -> Any:
    """``policy.obs_encoder`` of a Diffusion Policy checkpoint: the saved cfg re-instantiated, its weights loaded.

    The checkpoint is a pickle (``torch.load(weights_only=False)``, as DP's ``eval.py`` loads it):
    export only checkpoints you trust. The EMA weights when ``training.use_ema``, as DP evaluates.
    """
    import warnings

    import torch

    try:
        import hydra.utils
        from omegaconf import OmegaConf
    except ImportError as e:
        raise ImportError(
            f"a Diffusion Policy checkpoint needs hydra-core and omegaconf ({e}): pip install 'sam2-encoder[dp]'"
        ) from None
    try:
        import dill as pickle_module  # what DP saves with
    except ImportError:
        import pickle as pickle_module
    with open(path, "rb") as f:
        payload = torch.load(f, map_location="cpu", pickle_module=pickle_module, weights_only=False)
    if not isinstance(payload, dict) or "cfg" not in payload or "state_dicts" not in payload:
        raise CLIError(f"--policy {path}: not a Diffusion Policy checkpoint (no cfg / state_dicts in it)")
    if not OmegaConf.has_resolver("eval"):
        OmegaConf.register_new_resolver("eval", eval)  # as DP's train.py / eval.py do
    cfg = payload["cfg"]
    node = OmegaConf.select(cfg, "policy.obs_encoder")
    if node is None:
        raise CLIError(f"--policy {path}: its cfg has no policy.obs_encoder")
    which = "ema_model" if OmegaConf.select(cfg, "training.use_ema", default=False) else "model"
    weights = payload["state_dicts"].get(which, {})
    state = {k.removeprefix("obs_encoder."): v for k, v in weights.items() if k.startswith("obs_encoder.")}
    if not state:
        raise CLIError(f"--policy {path}: state_dicts[{which!r}] has no obs_encoder.* weights")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the SAM 2 file is not read: the checkpoint's weights replace it
        encoder = hydra.utils.instantiate(node, download=False)
    encoder.load_state_dict(state, strict=True)
    return encoder.eval()
