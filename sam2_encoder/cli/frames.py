"""Reading frames for the commands: image files, ``.npy`` arrays and stacks, folders and videos.

Every frame becomes ``(H, W, 3)`` uint8 RGB, or the input is refused with one
:class:`~sam2_encoder.cli.common.CLIError` line naming the file, what it holds and what to do.
The encoder is trained on 8-bit RGB, so nothing is rescaled by a guess:

- **8-bit image modes** (Pillow's names) become RGB exactly as ``Image.convert("RGB")`` does:
  ``1`` (0 / 255), ``L`` (gray repeated), ``P`` (palette colours), ``RGB``, ``RGBX``, ``YCbCr``,
  ``LAB``, ``HSV``, and ``CMYK`` (Pillow's formula; colour profiles are ignored for every mode).
- **Alpha is dropped**: ``LA``, ``PA``, ``RGBA`` and palette transparency keep each pixel's stored
  colour, as a renderer's RGBA frame holds the scene in its colour channels.
- **16-bit colour** PNGs (RGB, RGBA, gray + alpha; 16 bits per channel) reach us as 8-bit RGB(A):
  Pillow's decoder keeps each value's high byte (``v // 256``), a fixed proportional mapping.
- **Refused**: 16-bit gray (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``: depth cameras write these),
  32-bit integer ``I`` and float ``F`` images (no fixed mapping to 0..255 exists; convert them to
  8 bits yourself), any other mode, and a file of several frames (animated GIF / PNG / WebP,
  multi-page TIFF) where one image is read; :func:`iter_frames` reads every frame of such a file.
- **.npy**: uint8 only (``uint16``, ``int64``, ``bool``, floats: refused with the recipe), shaped
  ``(H, W, 3)``, ``(H, W, 4)`` (alpha dropped), ``(H, W)`` or ``(H, W, 1)`` (gray); stacks
  ``(T, H, W, C)`` with the same ``C``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .common import CLIError

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["ALPHA_MODES", "IMAGE_SUFFIXES", "RGB_MODES", "frame_names", "iter_frames", "read_image", "rgb_from_pil"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
RGB_MODES = ("1", "L", "P", "RGB", "RGBX", "YCbCr", "LAB", "HSV", "CMYK")
"""Pillow modes converted to RGB exactly as ``Image.convert("RGB")`` does."""
ALPHA_MODES = ("LA", "PA", "RGBA")
"""Pillow modes whose alpha is dropped: the stored colour of every pixel is kept."""

_DEEP_MODES = {
    "I;16": "16-bit grayscale",
    "I;16B": "16-bit grayscale",
    "I;16L": "16-bit grayscale",
    "I;16N": "16-bit grayscale",
    "I": "32-bit integer",
    "F": "32-bit float",
}
_TO_8_BIT = (
    "the encoder takes 8-bit RGB and does not guess a scale: convert it to 8 bits yourself, "
    "e.g. np.clip(depth * 255 / max_depth, 0, 255).astype(np.uint8)"
)
_SHAPES = "(H, W, 3) RGB, (H, W, 4) RGBA (alpha dropped), (H, W) or (H, W, 1) gray"


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _check_dtype(dtype: np.dtype, source: str) -> None:
    """Refuse every .npy dtype but uint8, with the conversion the user most likely wants."""
    if dtype == np.uint8:
        return
    if dtype == np.bool_:
        advice = "a mask? the encoder takes uint8 RGB frames (np.where(mask, 255, 0).astype(np.uint8) for a picture)"
    elif np.issubdtype(dtype, np.floating):
        advice = (
            "convert it yourself: np.round(x * 255).astype(np.uint8) for values in 0..1, "
            "np.round(x).astype(np.uint8) for values in 0..255"
        )
    elif np.issubdtype(dtype, np.integer):
        advice = f"x.astype(np.uint8) if the values are already 0..255; otherwise (e.g. depth) {_TO_8_BIT}"
    else:
        advice = "save the frame as uint8 RGB"
    raise CLIError(f"{source}: expected uint8 pixels, got {dtype}; {advice}")


def _check_shape(shape: tuple[int, ...], source: str) -> None:
    """Refuse a .npy frame that is not ``(H, W)`` or ``(H, W, C)`` with C in 1, 3, 4, or is empty."""
    if len(shape) == 4:
        raise CLIError(
            f"{source}: expected an (H, W, 3) frame, got shape {shape}: a stack of {shape[0]} frames; "
            "give one frame per file here (`track` reads a (T, H, W, 3) stack)"
        )
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[-1] not in (1, 3, 4)):
        raise CLIError(f"{source}: expected an (H, W, 3) frame, got shape {shape}; accepted: {_SHAPES}")
    if 0 in shape[:2]:
        raise CLIError(f"{source}: got an empty frame of shape {shape}")


def _as_rgb(array: np.ndarray, source: str) -> np.ndarray:
    """An array frame as ``(H, W, 3)`` uint8 RGB (gray repeated, alpha dropped), or a CLIError."""
    _check_shape(tuple(array.shape), source)
    _check_dtype(array.dtype, source)
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    array = array[..., :3]
    # a writable, contiguous copy where needed (decoded images and memory maps are read-only)
    return array if array.flags.writeable and array.flags.c_contiguous else np.array(array, order="C")


def rgb_from_pil(image: Image.Image, source: str) -> np.ndarray:
    """One decoded Pillow frame as ``(H, W, 3)`` uint8 RGB, by the rule of this module.

    Args:
        image: An opened Pillow image (its current frame is read).
        source: The file name used in error messages.

    Returns:
        The ``(H, W, 3)`` uint8 RGB frame.

    Raises:
        CLIError: For 16-bit gray, 32-bit integer / float and any other mode not in
            :data:`RGB_MODES` or :data:`ALPHA_MODES`, naming the file and the mode.
    """
    mode = image.mode
    if mode in _DEEP_MODES:
        raise CLIError(f"{source}: a {_DEEP_MODES[mode]} image (Pillow mode {mode}, e.g. a depth map); {_TO_8_BIT}")
    if mode not in RGB_MODES and mode not in ALPHA_MODES:
        accepted = ", ".join((*RGB_MODES, *ALPHA_MODES))
        raise CLIError(f"{source}: Pillow mode {mode} is not read (accepted: {accepted}); convert it to RGB yourself")
    return np.array(image.convert("RGB"))


def _open_image(path: Path) -> Image.Image:
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise CLIError(f"reading {path} needs Pillow: pip install pillow (or use .npy frames)") from e
    try:
        return Image.open(path)
    except Image.DecompressionBombError as e:
        raise CLIError(f"cannot read {path}: {e}") from e


def read_image(path: Path) -> np.ndarray:
    """One frame as ``(H, W, 3)`` uint8 RGB: .npy, or one image Pillow reads (rule: module docstring).

    Raises:
        CLIError: If the file is missing, truncated, not an image, of a refused mode or dtype,
            holds several frames, or is not an (H, W, 3)-like uint8 frame.
    """
    if not path.is_file():
        raise CLIError(f"{path}: no such file")
    try:
        if path.suffix.lower() == ".npy":
            return _as_rgb(np.load(path, allow_pickle=False), str(path))
        with _open_image(path) as image:
            count = getattr(image, "n_frames", 1)
            if count > 1:
                raise CLIError(
                    f"{path}: holds {count} frames (an animated or multi-page image); one image is read here: "
                    "save each frame as its own file, or give this file to `track`, which reads every frame"
                )
            return rgb_from_pil(image, str(path))
    except (OSError, ValueError, EOFError) as e:
        raise CLIError(f"cannot read {path}: {e}") from e


def _npy_frames(path: Path) -> tuple[Iterator[np.ndarray], int]:
    """The frames of one ``.npy`` file: a ``(T, H, W, C)`` stack, or one frame (rule: module docstring)."""
    try:
        stack = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise CLIError(f"cannot read {path}: {e}") from e
    if stack.ndim in (2, 3):  # one (H, W[, C]) frame
        return iter([_as_rgb(np.asarray(stack), str(path))]), 1
    if stack.ndim != 4 or stack.shape[-1] not in (1, 3, 4):
        raise CLIError(
            f"{path}: expected a (T, H, W, 3) frame stack, got shape {stack.shape}; "
            "accepted: (T, H, W, C) with C = 3 (RGB), 4 (RGBA, alpha dropped) or 1 (gray)"
        )
    _check_dtype(stack.dtype, str(path))  # once, before the first frame is needed
    return (_as_rgb(np.asarray(f), str(path)) for f in stack), len(stack)


def _image_frames(path: Path) -> tuple[Iterator[np.ndarray], int]:
    """Every frame of one image file (animated GIF / PNG / WebP, multi-page TIFF, or a single image)."""
    if not path.is_file():
        raise CLIError(f"{path}: no such file")
    image = None
    try:
        image = _open_image(path)
        count = getattr(image, "n_frames", 1)
    except (OSError, ValueError, EOFError) as e:
        if image is not None:
            image.close()
        raise CLIError(f"cannot read {path}: {e}") from e
    if count == 1:  # decoded now, so that a bad file is refused before the model is built
        image.close()
        return iter([read_image(path)]), 1

    def frames() -> Iterator[np.ndarray]:
        with image:
            for index in range(count):
                try:
                    image.seek(index)
                    frame = rgb_from_pil(image, f"{path} frame {index}")
                except (OSError, ValueError, EOFError) as e:
                    raise CLIError(f"{path}: cannot decode frame {index}: {e}") from e
                yield frame

    return frames(), count


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


def _folder_frames(path: Path) -> list[Path]:
    """The frame files of a folder in natural sort order (``2.png`` before ``10.png``)."""
    files = sorted((p for p in path.iterdir() if p.suffix.lower() in (*IMAGE_SUFFIXES, ".npy")), key=_natural_key)
    if not files:
        raise CLIError(f"{path} holds no frames ({', '.join(IMAGE_SUFFIXES)} or .npy)")
    return files


def frame_names(source: str | Path) -> list[str] | None:
    """Output names of the frames :func:`iter_frames` yields, in order: the input's own names.

    Args:
        source: As for :func:`iter_frames`.

    Returns:
        For a folder, each frame file's stem (``0.png`` -> ``"0"``), or its whole name where two
        files share a stem (``a.png`` and ``a.npy`` -> ``"a.png"``, ``"a.npy"``); ``None`` for a
        stack, an image or a video file, whose frames have no names (number them).
    """
    path = Path(source)
    if not path.is_dir():
        return None
    files = _folder_frames(path)
    stems = [p.stem for p in files]
    return stems if len(set(stems)) == len(stems) else [p.name for p in files]


def iter_frames(source: str | Path) -> tuple[Iterator[np.ndarray], int | None]:
    """The frames of a folder, ``.npy`` stack, image or video file, as ``(H, W, 3)`` uint8 RGB.

    Args:
        source: A folder of image / ``.npy`` frames (natural sort order: ``2.png`` before
            ``10.png``), a ``(T, H, W, 3)`` ``.npy`` file, an image file (every frame of an
            animated GIF / PNG / WebP or multi-page TIFF, in order), or a video file.

    Returns:
        ``(frames, count)``: a frame iterator and the number of frames when known.

    Raises:
        CLIError: If the source is missing, empty or unreadable (with the reason).
    """
    path = Path(source)
    if not path.exists():
        raise CLIError(f"input not found: {path}")
    if path.is_dir():
        files = _folder_frames(path)
        return (read_image(p) for p in files), len(files)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _npy_frames(path)
    if suffix in (*IMAGE_SUFFIXES, ".gif"):
        return _image_frames(path)
    return _video_frames(path)
