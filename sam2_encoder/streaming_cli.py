"""``sam2-encoder track``: prompt an object on the first frame and track it through a video.

Reads a folder of frames (``.png``/``.jpg``/... via Pillow, ``.npy`` arrays), a ``(T, H, W, 3)``
``.npy`` file, or a video file (PyAV, or imageio as a fallback; both optional), runs
:class:`~sam2_encoder.streaming.StreamingPredictor` frame by frame and writes one mask PNG and one
overlay frame per input frame.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["iter_frames", "main_track", "register"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
OVERLAY_COLOR = np.array([255, 40, 40], dtype=np.float32)


def _floats(text: str, count: int, what: str) -> tuple[float, ...]:
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != count:
        raise argparse.ArgumentTypeError(f"{what} must be {count} comma-separated numbers, got {text!r}")
    return values


def _point(text: str) -> tuple[float, ...]:
    return _floats(text, 2, "a point (X,Y)")


def _box(text: str) -> tuple[float, ...]:
    return _floats(text, 4, "a box (X0,Y0,X1,Y1)")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``track`` subcommand to a ``sam2-encoder`` subparsers object.

    Args:
        subparsers: The object returned by ``ArgumentParser.add_subparsers()``.

    Returns:
        The ``track`` parser (its ``func`` default is :func:`main_track`).
    """
    p = subparsers.add_parser(
        "track",
        help="track an object through a video or a folder of frames, writing mask PNGs and overlays",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("input", help="video file (needs PyAV or imageio), folder of frames, or a (T, H, W, 3) .npy file")
    p.add_argument(
        "--point",
        action="append",
        type=_point,
        default=[],
        metavar="X,Y",
        help="click on the object in the first frame, in pixels (repeatable)",
    )
    p.add_argument(
        "--negative",
        action="append",
        type=_point,
        default=[],
        metavar="X,Y",
        help="click on the background in the first frame (repeatable)",
    )
    p.add_argument("--box", type=_box, metavar="X0,Y0,X1,Y1", help="box around the object in the first frame")
    p.add_argument("--variant", default="sam2.1_hiera_tiny", help="released model name (default: %(default)s)")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="Meta .pt / safetensors / HF folder / URL / variant name / hub id; omitted: seeded random weights",
    )
    p.add_argument("--image-size", type=int, default=1024, help="encoder input side, multiple of 32 (default 1024)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--out", default=None, help="output folder (default: <input>_track next to the input)")
    p.add_argument("--max-frames", type=int, default=0, help="stop after this many frames (0: all)")
    p.add_argument("--no-overlay", action="store_true", help="write the masks only")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=main_track)
    return p


# --------------------------------------------------------------------------------------------
# frame input
# --------------------------------------------------------------------------------------------


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _as_rgb(array: np.ndarray, source: str) -> np.ndarray:
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise SystemExit(f"{source}: expected an (H, W, 3) frame, got shape {array.shape}")
    if array.dtype != np.uint8:
        raise SystemExit(f"{source}: expected uint8 pixels, got {array.dtype}")
    array = array[..., :3]
    # a writable, contiguous copy where needed (decoded images and memory maps are read-only)
    return array if array.flags.writeable and array.flags.c_contiguous else np.array(array, order="C")


def read_image(path: Path) -> np.ndarray:
    """One frame as ``(H, W, 3)`` uint8 RGB: .npy, or any image format Pillow reads."""
    if path.suffix == ".npy":
        return _as_rgb(np.load(path), str(path))
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise SystemExit(f"reading {path} needs Pillow: pip install pillow (or use .npy frames)") from e
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


def _video_frames(path: Path) -> tuple[Iterator[np.ndarray], int | None]:
    try:
        import av
    except ImportError:
        av = None
    if av is not None:
        container = av.open(str(path))
        stream = container.streams.video[0]

        def decode() -> Iterator[np.ndarray]:
            with container:
                for frame in container.decode(stream):
                    yield frame.to_ndarray(format="rgb24")

        return decode(), (stream.frames or None)
    try:
        import imageio.v3 as iio
    except ImportError as e:
        raise SystemExit(
            f"reading the video {path} needs PyAV or imageio: pip install 'sam2-encoder[video]' (or pip install av); "
            "or pass a folder of frames"
        ) from e
    return (_as_rgb(np.asarray(f), str(path)) for f in iio.imiter(path)), None


def iter_frames(source: str | Path) -> tuple[Iterator[np.ndarray], int | None]:
    """The frames of a folder, ``.npy`` stack or video file, as ``(H, W, 3)`` uint8 RGB.

    Args:
        source: A folder of image / ``.npy`` frames (natural sort order: ``2.png`` before
            ``10.png``), a ``(T, H, W, 3)`` ``.npy`` file, or a video file.

    Returns:
        ``(frames, count)``: a frame iterator and the number of frames when known.

    Raises:
        SystemExit: If the source is missing, empty or unreadable (with the reason).
    """
    path = Path(source)
    if not path.exists():
        raise SystemExit(f"input not found: {path}")
    if path.is_dir():
        files = sorted(
            (p for p in path.iterdir() if p.suffix.lower() in (*IMAGE_SUFFIXES, ".npy")),
            key=_natural_key,
        )
        if not files:
            raise SystemExit(f"{path} holds no frames ({', '.join(IMAGE_SUFFIXES)} or .npy)")
        return (read_image(p) for p in files), len(files)
    if path.suffix == ".npy":
        stack = np.load(path, mmap_mode="r")
        if stack.ndim != 4:
            raise SystemExit(f"{path}: expected a (T, H, W, 3) frame stack, got shape {stack.shape}")
        return (_as_rgb(np.asarray(f), str(path)) for f in stack), len(stack)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return iter([read_image(path)]), 1
    return _video_frames(path)


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------


def overlay(frame: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Tint the masked pixels of a frame.

    Args:
        frame: ``(H, W, 3)`` uint8.
        mask: ``(H, W)`` bool.
        alpha: Weight of the tint colour.

    Returns:
        ``(H, W, 3)`` uint8.
    """
    out = frame.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * OVERLAY_COLOR
    return out.round().astype(np.uint8)


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(array).save(path)


def main_track(args: argparse.Namespace) -> int:
    """Run ``sam2-encoder track`` with parsed arguments.

    Returns:
        The exit status (0 on success, 2 for a missing prompt).
    """
    import torch
    from tqdm.auto import tqdm

    from .streaming import StreamingPredictor

    if not args.point and not args.box:
        print("error: give at least one --point X,Y (or a --box X0,Y0,X1,Y1) on the first frame", file=sys.stderr)
        return 2
    try:
        import PIL  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the environment
        raise SystemExit("writing mask PNGs needs Pillow: pip install pillow") from None
    frames, count = iter_frames(args.input)
    if args.max_frames > 0:
        count = min(count, args.max_frames) if count else args.max_frames
    source = Path(args.input)
    out = Path(args.out) if args.out else source.parent / f"{source.stem}_track"
    (out / "masks").mkdir(parents=True, exist_ok=True)
    if not args.no_overlay:
        (out / "overlay").mkdir(parents=True, exist_ok=True)

    from .cli import build_model

    predictor = build_model(StreamingPredictor, args, "masks", device=args.device, dtype=getattr(torch, args.dtype))
    points = [*args.point, *args.negative]
    labels = [1] * len(args.point) + [0] * len(args.negative)
    areas: list[float] = []
    start = time.perf_counter()
    bar = tqdm(frames, total=count, desc="track", unit="frame", disable=args.quiet)
    for index, frame in enumerate(bar):
        if args.max_frames and index >= args.max_frames:
            break
        try:
            if index == 0:
                result = predictor.add_prompt(
                    frame, obj_id=1, points=points or None, labels=labels or None, box=args.box
                )
            else:
                result = predictor.track(frame)
        except (ValueError, TypeError) as e:
            raise SystemExit(f"frame {index}: {e}") from e
        mask = result.mask(1).cpu().numpy()
        areas.append(float(mask.mean()))
        _save_png(mask.astype(np.uint8) * 255, out / "masks" / f"{index:06d}.png")
        if not args.no_overlay:
            _save_png(overlay(frame, mask), out / "overlay" / f"{index:06d}.png")
    bar.close()
    seconds = time.perf_counter() - start
    if not areas:
        raise SystemExit(f"{args.input}: no frames were read")
    report = {
        "input": str(source),
        "frames": len(areas),
        "variant": predictor.variant.name,
        "image_size": predictor.image_size,
        "seconds": round(seconds, 3),
        "ms_per_frame": round(1000 * seconds / len(areas), 2),
        "state_bytes": predictor.state_nbytes(),
        "mask_area_fraction": [round(a, 5) for a in areas],
        "out": str(out),
    }
    (out / "track.json").write_text(json.dumps(report, indent=1))
    print(
        f"tracked {len(areas)} frames in {seconds:.1f} s ({report['ms_per_frame']} ms/frame); "
        f"masks in {out / 'masks'}" + ("" if args.no_overlay else f", overlays in {out / 'overlay'}")
    )
    return 0
