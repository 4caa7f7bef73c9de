"""What the CLI reads as a frame: every Pillow mode and ``.npy`` layout is converted or refused by name.

The rule (``sam2_encoder/cli/frames.py``): 8-bit modes become RGB as Pillow converts them, alpha is
dropped, 16-bit gray / 32-bit integer / float images are refused with one line naming the file and
the mode (the encoder is trained on 8-bit RGB and guesses no depth scale), a file of several frames
is refused where one image is read and read frame by frame as ``track``'s input. ``.npy``: uint8
only, ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)``, ``(H, W, 4)`` frames and ``(T, H, W, C)`` stacks.
Every file here is written by Pillow (or, for 16-bit colour PNG, which Pillow cannot write, by hand).
"""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from sam2_encoder.cli import main
from sam2_encoder.cli.common import CLIError
from sam2_encoder.cli.frames import iter_frames, read_image, rgb_from_pil

Image = pytest.importorskip("PIL.Image")

H, W = 4, 6
SMALL = ["--image-size", "64", "--repeat", "1"]
RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
GRAY = RNG.integers(0, 256, (H, W), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (H, W), dtype=np.uint8)
PALETTE = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
INDEX = RNG.integers(0, 4, (H, W), dtype=np.uint8)
DEPTH = RNG.integers(300, 5000, (H, W), dtype=np.uint16)  # millimetres, as a depth camera writes them


def _palette(mode: str = "P") -> Image.Image:
    image = Image.fromarray(INDEX, "L").convert("P") if mode == "P" else Image.new("PA", (W, H))
    if mode == "PA":
        image.putdata([(int(i), int(a)) for i, a in zip(INDEX.ravel(), ALPHA.ravel())])
    image.putpalette(PALETTE.ravel().tolist())
    return image


def _transparent_palette() -> Image.Image:
    image = _palette()
    image.info["transparency"] = 2  # index 2 is transparent: its stored colour is kept
    return image


def _neutral(mode: str, first: np.ndarray) -> Image.Image:
    """A YCbCr / LAB image of gray colours only (chroma at its neutral value: 128, or LAB's signed 0)."""
    chroma = np.full_like(first, 128 if mode == "YCbCr" else 0)
    data = np.stack([first, chroma, chroma], axis=-1)
    return Image.frombytes(mode, (W, H), data.tobytes())


def _hsv() -> tuple[Image.Image, np.ndarray]:
    hues = np.array([[0, 85, 170]], np.uint8).repeat(2, axis=0)  # red, green, blue at full value
    data = np.stack([hues, np.full_like(hues, 255), np.full_like(hues, 255)], axis=-1)
    expected = np.zeros((2, 3, 3), np.uint8)
    for j in range(3):
        expected[:, j, j] = 255
    return Image.frombytes("HSV", (3, 2), data.tobytes()), expected


def _cmyk() -> tuple[Image.Image, np.ndarray]:
    data = np.concatenate([RGB, ALPHA[..., None] // 4], axis=-1)  # C, M, Y and a little black
    expected = np.round((255 - data[..., :3].astype(int)) * (255 - data[..., 3:].astype(int)) / 255)  # Pillow's formula
    return Image.fromarray(data, "CMYK"), expected.astype(np.uint8)


def _bilevel() -> Image.Image:
    return Image.fromarray(GRAY > 127).convert("1")


CMYK_IMAGE, CMYK_RGB = _cmyk()
HSV_IMAGE, HSV_RGB = _hsv()

# (mode, suffix, image, expected RGB): each is saved by Pillow, read back in that mode, then read by the CLI
ACCEPTED: list[tuple[str, str, Callable[[], Image.Image], np.ndarray]] = [
    ("1", ".png", _bilevel, np.repeat(np.where(GRAY > 127, 255, 0).astype(np.uint8)[..., None], 3, -1)),
    ("L", ".png", lambda: Image.fromarray(GRAY, "L"), np.repeat(GRAY[..., None], 3, -1)),
    ("LA", ".png", lambda: Image.fromarray(np.stack([GRAY, ALPHA], -1), "LA"), np.repeat(GRAY[..., None], 3, -1)),
    ("P", ".png", _palette, PALETTE[INDEX]),
    ("P", ".gif", _palette, PALETTE[INDEX]),
    ("P", ".bmp", _palette, PALETTE[INDEX]),
    ("P", ".tif", _transparent_palette, PALETTE[INDEX]),
    ("P", ".png", _transparent_palette, PALETTE[INDEX]),
    ("PA", ".tif", lambda: _palette("PA"), PALETTE[INDEX]),
    ("RGB", ".png", lambda: Image.fromarray(RGB, "RGB"), RGB),
    ("RGB", ".bmp", lambda: Image.fromarray(RGB, "RGB"), RGB),
    ("RGB", ".tif", lambda: Image.fromarray(RGB, "RGB"), RGB),
    ("RGBA", ".png", lambda: Image.fromarray(np.concatenate([RGB, ALPHA[..., None]], -1), "RGBA"), RGB),
    ("RGBA", ".webp", lambda: Image.fromarray(np.concatenate([RGB, ALPHA[..., None]], -1), "RGBA"), None),
    ("CMYK", ".tif", lambda: CMYK_IMAGE, CMYK_RGB),
    ("YCbCr", ".tif", lambda: _neutral("YCbCr", GRAY), np.repeat(GRAY[..., None], 3, -1)),
    ("LAB", ".tif", lambda: _neutral("LAB", GRAY), None),  # colorimetric: checked below within 5 levels
]


@pytest.mark.parametrize(("mode", "suffix", "make", "expected"), ACCEPTED, ids=[f"{c[0]}{c[1]}" for c in ACCEPTED])
def test_8_bit_modes_become_rgb_as_pillow_converts_them(mode, suffix, make, expected, tmp_path: Path) -> None:
    """An 8-bit file reads as (H, W, 3) uint8 RGB: gray repeated, palette looked up, alpha dropped."""
    path = tmp_path / f"frame{suffix}"
    make().save(path)
    with Image.open(path) as image:
        assert image.mode == mode  # the file really is in that mode
        pillow = np.array(image.convert("RGB"))
    frame = read_image(path)
    assert frame.dtype == np.uint8 and frame.shape == (H, W, 3) and frame.flags.writeable
    assert np.array_equal(frame, pillow)
    if expected is not None:  # lossy formats (webp) are only compared with Pillow's own conversion
        assert np.array_equal(frame, expected)


def test_modes_without_a_file_format_are_converted_the_same_way() -> None:
    """RGBX (saved by Pillow as RGB), HSV (no format stores it) and LAB colours go through the same rule."""
    rgbx = Image.fromarray(np.concatenate([RGB, ALPHA[..., None]], -1), "RGBX")
    assert np.array_equal(rgb_from_pil(rgbx, "x"), RGB)
    assert np.array_equal(rgb_from_pil(HSV_IMAGE, "x"), HSV_RGB)
    lab = rgb_from_pil(_neutral("LAB", GRAY), "x").astype(int)  # LAB is converted, not copied
    assert (lab.max(-1) - lab.min(-1)).max() <= 5  # gray stays gray
    assert rgb_from_pil(_neutral("LAB", np.zeros_like(GRAY)), "x").max() <= 5  # L = 0: black
    assert rgb_from_pil(_neutral("LAB", np.full_like(GRAY, 255)), "x").min() >= 250  # L = 100: white


def _png16(path: Path, array: np.ndarray) -> Path:
    """A 16-bit-per-channel PNG (color type 2 / 6 / 4), written by hand: Pillow cannot write one."""
    h, w, c = array.shape
    rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, {3: 2, 4: 6, 2: 4}[c], 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )
    return path


def test_16_bit_colour_png_keeps_the_high_byte(tmp_path: Path) -> None:
    """A 16-bit RGB / RGBA / gray+alpha PNG reads as its values // 256 (Pillow's decoder), alpha dropped."""
    rgb16 = RNG.integers(0, 65536, (H, W, 3), dtype=np.uint16)
    alpha16 = RNG.integers(0, 65536, (H, W, 1), dtype=np.uint16)
    assert np.array_equal(read_image(_png16(tmp_path / "rgb.png", rgb16)), rgb16 >> 8)
    rgba = np.concatenate([rgb16, alpha16], -1)
    assert np.array_equal(read_image(_png16(tmp_path / "rgba.png", rgba)), rgb16 >> 8)
    gray_alpha = np.concatenate([rgb16[..., :1], alpha16], -1)
    assert np.array_equal(read_image(_png16(tmp_path / "la.png", gray_alpha)), np.repeat(rgb16[..., :1] >> 8, 3, -1))


# (mode Pillow opens the file in, suffix, image, what the message calls it)
REFUSED: list[tuple[str, str, Callable[[], Image.Image], str]] = [
    ("I;16", ".png", lambda: Image.fromarray(DEPTH), "16-bit grayscale"),
    ("I;16", ".tif", lambda: Image.fromarray(DEPTH), "16-bit grayscale"),
    ("I;16B", ".tif", lambda: Image.fromarray(DEPTH).convert("I;16B"), "16-bit grayscale"),
    ("I;16", ".tif", lambda: Image.fromarray(DEPTH).convert("I;16L"), "16-bit grayscale"),  # I;16L is I;16
    ("I", ".tif", lambda: Image.fromarray(DEPTH.astype(np.int32)), "32-bit integer"),
    ("F", ".tif", lambda: Image.fromarray(DEPTH.astype(np.float32) / 1000), "32-bit float"),
]


@pytest.mark.parametrize(("mode", "suffix", "make", "kind"), REFUSED, ids=[f"{c[0]}{c[1]}" for c in REFUSED])
def test_deep_images_are_refused_naming_file_and_mode(mode, suffix, make, kind, tmp_path: Path) -> None:
    """A depth-like file (16-bit gray, 32-bit int, float) is refused: no clipping to 255, no guessed scale."""
    path = tmp_path / f"depth{suffix}"
    make().save(path)
    with Image.open(path) as image:
        assert image.mode == mode
    with pytest.raises(CLIError) as e:
        read_image(path)
    message = str(e.value)
    assert message.startswith(f"{path}: a {kind} image (Pillow mode {mode}, e.g. a depth map)"), message
    assert "convert it to 8 bits yourself" in message and "\n" not in message


def test_in_memory_only_modes_are_refused_by_name() -> None:
    """I;16N (native order, no file format writes it) and a premultiplied or unknown mode: one line each."""
    with pytest.raises(CLIError, match=r"^cam: a 16-bit grayscale image \(Pillow mode I;16N"):
        rgb_from_pil(Image.fromarray(DEPTH).convert("I;16N"), "cam")
    with pytest.raises(CLIError, match=r"^cam: Pillow mode RGBa is not read \(accepted: 1, L, P, .*\); convert it"):
        rgb_from_pil(Image.new("RGBa", (W, H)), "cam")


def _frames_of(suffix: str, path: Path) -> Path:
    colours = [(0, 0, 0), (200, 0, 0), (0, 200, 0)]
    frames = [Image.new("RGB", (W, H), c) for c in colours]
    frames[0].save(path.with_suffix(suffix), save_all=True, append_images=frames[1:], lossless=True)
    return path.with_suffix(suffix)


@pytest.mark.parametrize("suffix", [".gif", ".tif", ".png", ".webp"])
def test_multi_frame_files_refused_as_one_image_read_in_order_as_a_clip(suffix: str, tmp_path: Path) -> None:
    """Animated GIF / PNG / WebP and multi-page TIFF: which frame? none for one image; all, in order, for track."""
    path = _frames_of(suffix, tmp_path / "clip")
    with pytest.raises(CLIError, match=r"clip\.\w+: holds 3 frames \(an animated or multi-page image\)"):
        read_image(path)
    frames, count = iter_frames(path)
    assert count == 3
    assert [tuple(f[0, 0]) for f in frames] == [(0, 0, 0), (200, 0, 0), (0, 200, 0)]


# (what, array, message fragment) for one .npy frame
NPY_REFUSED = [
    ("uint16 depth", DEPTH, "expected uint8 pixels, got uint16; x.astype(np.uint8) if the values are already 0..255"),
    ("float 0..1", RGB / 255.0, "expected uint8 pixels, got float64; convert it yourself: np.round(x * 255)"),
    ("float 0..255", RGB.astype(np.float32), "expected uint8 pixels, got float32; convert it yourself"),
    ("bool", GRAY > 127, "expected uint8 pixels, got bool; a mask?"),
    ("int64", RGB.astype(np.int64), "expected uint8 pixels, got int64; x.astype(np.uint8) if the values"),
    ("2 channels", RGB[..., :2], f"expected an (H, W, 3) frame, got shape {(H, W, 2)}; accepted: (H, W, 3) RGB"),
    ("stack", np.stack([RGB, RGB]), f"got shape {(2, H, W, 3)}: a stack of 2 frames; give one frame per file"),
    ("empty", np.zeros((0, W, 3), np.uint8), f"got an empty frame of shape {(0, W, 3)}"),
]


@pytest.mark.parametrize(("what", "array", "fragment"), NPY_REFUSED, ids=[c[0] for c in NPY_REFUSED])
def test_npy_frames_other_than_uint8_rgb_like_are_refused(what, array, fragment, tmp_path: Path) -> None:
    """A .npy frame of another dtype or shape is one error naming the file, what it holds and what to do."""
    path = tmp_path / "frame.npy"
    np.save(path, array)
    with pytest.raises(CLIError) as e:
        read_image(path)
    assert str(e.value).startswith(f"{path}: ") and fragment in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("what", "array", "expected"),
    [
        ("(H, W)", GRAY, np.repeat(GRAY[..., None], 3, -1)),
        ("(H, W, 1)", GRAY[..., None], np.repeat(GRAY[..., None], 3, -1)),
        ("(H, W, 3)", RGB, RGB),
        ("(H, W, 4)", np.concatenate([RGB, ALPHA[..., None]], -1), RGB),
    ],
)
def test_npy_gray_rgb_and_rgba_frames_are_read_like_images(what, array, expected, tmp_path: Path) -> None:
    """uint8 gray is repeated, RGBA loses its alpha: the same rule as the L / RGBA image modes."""
    path = tmp_path / "frame.npy"
    np.save(path, array)
    assert np.array_equal(read_image(path), expected)
    frames, count = iter_frames(path)
    assert count == 1 and np.array_equal(next(frames), expected)


def test_npy_stacks_follow_the_same_rule(tmp_path: Path) -> None:
    """A (T, H, W, C) stack with C = 1, 3 or 4 is read frame by frame; another dtype fails before the first."""
    np.save(tmp_path / "gray.npy", np.stack([GRAY[..., None]] * 2))
    frames, count = iter_frames(tmp_path / "gray.npy")
    assert count == 2 and all(np.array_equal(f, np.repeat(GRAY[..., None], 3, -1)) for f in frames)
    np.save(tmp_path / "depth.npy", np.stack([DEPTH[..., None]] * 2))
    with pytest.raises(CLIError, match=r"depth\.npy: expected uint8 pixels, got uint16"):
        iter_frames(tmp_path / "depth.npy")
    np.save(tmp_path / "two.npy", np.stack([RGB[..., :2]] * 2))
    with pytest.raises(CLIError, match=r"two\.npy: expected a \(T, H, W, 3\) frame stack, got shape \(2, 4, 6, 2\)"):
        iter_frames(tmp_path / "two.npy")


def _one_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(("mode", "suffix", "make", "kind"), REFUSED, ids=[f"{c[0]}{c[1]}" for c in REFUSED])
def test_cli_encode_refuses_a_depth_image_in_one_line(mode, suffix, make, kind, tmp_path: Path, capsys) -> None:
    """`sam2-encoder encode depth.png`: `error: <file>: a 16-bit grayscale image (Pillow mode I;16 ...`, exit 2."""
    path = tmp_path / f"depth{suffix}"
    make().save(path)
    assert main(["encode", str(path), *SMALL]) == 2
    assert _one_error(capsys).startswith(f"error: {path}: a {kind} image (Pillow mode {mode}")


def test_cli_refuses_multi_frame_and_bad_npy_in_one_line(tmp_path: Path, capsys) -> None:
    """encode of an animated GIF or a float .npy, track of a folder holding a depth PNG: one line each, exit 2."""
    assert main(["encode", str(_frames_of(".gif", tmp_path / "anim")), *SMALL]) == 2
    assert "anim.gif: holds 3 frames" in _one_error(capsys)
    np.save(tmp_path / "f.npy", RGB / 255.0)
    assert main(["encode", str(tmp_path / "f.npy"), *SMALL]) == 2
    assert "f.npy: expected uint8 pixels, got float64; convert it yourself" in _one_error(capsys)
    (tmp_path / "cam").mkdir()
    Image.fromarray(DEPTH).save(tmp_path / "cam" / "0.png")
    assert main(["track", str(tmp_path / "cam"), "--point", "1,1", "--image-size", "64"]) == 2
    assert "0.png: a 16-bit grayscale image (Pillow mode I;16" in _one_error(capsys)
    with pytest.raises(CLIError, match="Pillow mode I;16"):  # --debug: the exception itself
        main(["--debug", "encode", str(tmp_path / "cam" / "0.png")])


def test_console_script_refuses_a_depth_png(tmp_path: Path) -> None:
    """The installed command: one `error:` line on stderr, exit status 2, no traceback."""
    path = tmp_path / "depth.png"
    Image.fromarray(DEPTH).save(path)
    exe = Path(sys.executable).with_name("sam2-encoder")
    done = subprocess.run([str(exe), "encode", str(path), *SMALL], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"error: {path}: a 16-bit grayscale image (Pillow mode I;16, e.g. a depth map); the encoder takes 8-bit RGB "
        "and does not guess a scale: convert it to 8 bits yourself, e.g. "
        "np.clip(depth * 255 / max_depth, 0, 255).astype(np.uint8)"
    ]


def test_cli_encodes_an_rgba_png_as_its_colour_channels(tmp_path: Path, capsys) -> None:
    """encode of an RGBA PNG saves the pyramid of its RGB channels (alpha dropped), equal to the library's."""
    from safetensors.torch import load_file

    from sam2_encoder import SAM2ImageEncoder
    from sam2_encoder.scene import synthetic_scene

    scene = synthetic_scene(48, 64, seed=3)
    path = tmp_path / "render.png"
    Image.fromarray(np.concatenate([scene, np.full((48, 64, 1), 7, np.uint8)], -1), "RGBA").save(path)
    out = tmp_path / "f.safetensors"
    assert main(["encode", str(path), *SMALL, "--out", str(out)]) == 0
    capsys.readouterr()
    expected = SAM2ImageEncoder("sam2.1_hiera_tiny", image_size=64)(scene).s16
    assert np.array_equal(load_file(str(out))["s16"].numpy(), expected.numpy())


def test_cli_tracks_every_frame_of_an_animated_gif(tmp_path: Path, capsys) -> None:
    """track of an animated GIF reads its frames in order through Pillow: one mask per frame."""
    from sam2_encoder.scene import synthetic_scene

    frames = [Image.fromarray(synthetic_scene(48, 64, seed=s)) for s in range(3)]
    path = tmp_path / "clip.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    out = tmp_path / "out"
    argv = ["track", str(path), "--point", "20,20", "--image-size", "64", "--out", str(out), "--quiet"]
    assert main([*argv, "--no-overlay"]) == 0
    assert "tracked 3 frames" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["000000.png", "000001.png", "000002.png"]
