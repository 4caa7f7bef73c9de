"""Reading frames for the commands: image files, ``.npy`` arrays and stacks, folders and videos.

Every unreadable input is a :class:`~sam2_encoder.cli.common.CLIError` naming the file.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .common import CLIError

__all__ = ["IMAGE_SUFFIXES", "iter_frames", "read_image"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _as_rgb(array: np.ndarray, source: str) -> np.ndarray:
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise CLIError(f"{source}: expected an (H, W, 3) frame, got shape {array.shape}")
    if array.dtype != np.uint8:
        raise CLIError(f"{source}: expected uint8 pixels, got {array.dtype}")
    array = array[..., :3]
    # a writable, contiguous copy where needed (decoded images and memory maps are read-only)
    return array if array.flags.writeable and array.flags.c_contiguous else np.array(array, order="C")


def read_image(path: Path) -> np.ndarray:
    """One frame as ``(H, W, 3)`` uint8 RGB: .npy, or any image format Pillow reads.

    Raises:
        CLIError: If the file is missing, truncated, not an image, or not an (H, W, 3) uint8 frame.
    """
    if not path.is_file():
        raise CLIError(f"{path}: no such file")
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            try:
                from PIL import Image
            except ImportError as e:  # pragma: no cover - depends on the environment
                raise CLIError(f"reading {path} needs Pillow: pip install pillow (or use .npy frames)") from e
            with Image.open(path) as image:
                array = np.array(image.convert("RGB"))
    except (OSError, ValueError, EOFError) as e:
        raise CLIError(f"cannot read {path}: {e}") from e
    return _as_rgb(array, str(path))


def _video_frames(path: Path) -> tuple[Iterator[np.ndarray], int | None]:
    try:
        import av
    except ImportError:
        av = None
    if av is not None:
        try:
            container = av.open(str(path))
        except Exception as e:  # noqa: BLE001 - PyAV raises its own types for unreadable files
            raise CLIError(f"cannot read the video {path}: {e}") from e
        if not container.streams.video:
            container.close()
            raise CLIError(f"{path} has no video stream")
        stream = container.streams.video[0]

        def decode() -> Iterator[np.ndarray]:
            index = 0
            with container:
                try:
                    for frame in container.decode(stream):
                        yield frame.to_ndarray(format="rgb24")
                        index += 1
                except Exception as e:  # noqa: BLE001 - a damaged stream, named with the frame
                    raise CLIError(f"{path}: cannot decode frame {index}: {e}") from e

        return decode(), (stream.frames or None)
    try:
        import imageio.v3 as iio
    except ImportError as e:
        raise CLIError(
            f"reading the video {path} needs PyAV or imageio: pip install 'sam2-encoder[video]' (or pip install av); "
            "or pass a folder of frames"
        ) from e

    def imiter() -> Iterator[np.ndarray]:
        index = 0
        try:
            for f in iio.imiter(path):
                yield _as_rgb(np.asarray(f), str(path))
                index += 1
        except CLIError:
            raise
        except Exception as e:  # noqa: BLE001 - imageio raises many types for unreadable files
            raise CLIError(f"{path}: cannot decode frame {index}: {e}") from e

    return imiter(), None


def iter_frames(source: str | Path) -> tuple[Iterator[np.ndarray], int | None]:
    """The frames of a folder, ``.npy`` stack or video file, as ``(H, W, 3)`` uint8 RGB.

    Args:
        source: A folder of image / ``.npy`` frames (natural sort order: ``2.png`` before
            ``10.png``), a ``(T, H, W, 3)`` ``.npy`` file, or a video file.

    Returns:
        ``(frames, count)``: a frame iterator and the number of frames when known.

    Raises:
        CLIError: If the source is missing, empty or unreadable (with the reason).
    """
    path = Path(source)
    if not path.exists():
        raise CLIError(f"input not found: {path}")
    if path.is_dir():
        files = sorted(
            (p for p in path.iterdir() if p.suffix.lower() in (*IMAGE_SUFFIXES, ".npy")),
            key=_natural_key,
        )
        if not files:
            raise CLIError(f"{path} holds no frames ({', '.join(IMAGE_SUFFIXES)} or .npy)")
        return (read_image(p) for p in files), len(files)
    if path.suffix.lower() == ".npy":
        try:
            stack = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise CLIError(f"cannot read {path}: {e}") from e
        if stack.ndim == 3:  # one (H, W, 3) frame
            return iter([_as_rgb(np.asarray(stack), str(path))]), 1
        if stack.ndim != 4:
            raise CLIError(f"{path}: expected a (T, H, W, 3) frame stack, got shape {stack.shape}")
        return (_as_rgb(np.asarray(f), str(path)) for f in stack), len(stack)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return iter([read_image(path)]), 1
    return _video_frames(path)
