"""read_image and to_rgb_tensor on every awkward input, built in tmp_path at test time."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from PIL import ImageOps

from srn.data.image_io import ImageReadError, read_image, to_rgb_tensor

def _png_bytes(array: np.ndarray, color_type: int, bit_depth: int) -> bytes:
    """A minimal PNG: PIL cannot write 16-bit RGB, and this writes 16-bit big-endian rows directly."""
    height, width = array.shape[:2]
    dtype = ">u2" if bit_depth == 16 else "u1"
    raw = b"".join(b"\x00" + array[row].astype(dtype).tobytes() for row in range(height))
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _constant_gray_png(path: Path, width: int, height: int, value: int) -> None:
    """A large constant 8-bit grayscale PNG, streamed through zlib (no full raw image in memory)."""
    compressor = zlib.compressobj(1)
    rows_per_block = 200
    block = (b"\x00" + bytes([value]) * width) * rows_per_block
    parts = [compressor.compress(block) for _ in range(height // rows_per_block)]
    parts.append(compressor.compress((b"\x00" + bytes([value]) * width) * (height % rows_per_block)))
    idat = b"".join(parts) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))


def _peak_rss_bytes() -> int | None:
    """VmHWM of this process, or None where /proc does not report it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM to the current RSS
        return True
    except OSError:
        return False


def _random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8)


def _chw(array: np.ndarray) -> torch.Tensor:
    # (H, W, 3) -> (3, H, W)
    return torch.from_numpy(np.array(array)).permute(2, 0, 1)


def _read_error(path: Path) -> str:
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- failures: one line naming the file and the reason ------------------------------------------


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert _read_error(path) == f"{path}: empty file (0 bytes)"


def test_truncated_jpeg(tmp_path: Path) -> None:
    full = tmp_path / "full.jpg"
    PIL.Image.fromarray(_random_rgb(64, 64)).save(full, quality=90)
    path = tmp_path / "photo.jpg"
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    assert _read_error(path) == f"{path}: not a decodable image (truncated JPEG)"


def test_truncated_png(tmp_path: Path) -> None:
    full = tmp_path / "full.png"
    PIL.Image.fromarray(_random_rgb(64, 64)).save(full)
    path = tmp_path / "cut.png"
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    assert _read_error(path) == f"{path}: not a decodable image (truncated PNG)"


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("these are not pixels\n" * 10)
    assert _read_error(path) == f"{path}: not a decodable image (unrecognised format, looks like text)"


def test_binary_junk(tmp_path: Path) -> None:
    path = tmp_path / "junk.bin"
    path.write_bytes(bytes(range(256)) * 4)
    assert _read_error(path) == f"{path}: not a decodable image (unrecognised format)"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.jpg"
    assert _read_error(path) == f"{path}: no such file"


def test_directory(tmp_path: Path) -> None:
    assert _read_error(tmp_path) == f"{tmp_path}: is a directory, not an image file"


def test_read_error_is_a_value_error() -> None:
    error = ImageReadError("a.jpg", "line one\nline two")
    assert isinstance(error, ValueError)
    assert str(error) == "a.jpg: line one line two"
    assert (error.path, error.reason) == ("a.jpg", "line one line two")


# --- modes and formats ----------------------------------------------------------------------------


def test_rgb_png_exact(tmp_path: Path) -> None:
    rgb = _random_rgb(7, 9)
    PIL.Image.fromarray(rgb).save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    assert image.dtype == torch.uint8
    assert torch.equal(image, _chw(rgb))


def test_grayscale(tmp_path: Path) -> None:
    gray = np.random.RandomState(1).randint(0, 256, (6, 5), dtype=np.uint8)
    PIL.Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    image = read_image(tmp_path / "g.png")
    assert image.shape == (3, 6, 5)
    for channel in range(3):
        assert torch.equal(image[channel], torch.from_numpy(gray))


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    rgba = np.random.RandomState(2).randint(0, 256, (6, 5, 4), dtype=np.uint8)
    PIL.Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    assert torch.equal(read_image(tmp_path / "a.png"), _chw(rgba[..., :3]))


def test_palette_png(tmp_path: Path) -> None:
    palette_image = PIL.Image.fromarray(_random_rgb(8, 8, seed=3)).convert("P")
    palette_image.save(tmp_path / "p.png", transparency=0)
    expected = np.asarray(PIL.Image.open(tmp_path / "p.png").convert("RGB"))
    assert torch.equal(read_image(tmp_path / "p.png"), _chw(expected))


def test_16bit_gray_png_scaled_to_8bit(tmp_path: Path) -> None:
    # round(v / 257): 128 -> 0.498 -> 0, 129 -> 0.502 -> 1, 385 -> 1.498 -> 1, 386 -> 1.502 -> 2,
    # 32896 = 128 * 257 -> 128, 65535 = 255 * 257 -> 255
    values = np.array([[0, 128, 129, 257], [385, 386, 32896, 65535]], dtype=np.uint16)
    PIL.Image.fromarray(values).save(tmp_path / "g16.png")
    assert PIL.Image.open(tmp_path / "g16.png").mode == "I;16"  # really a 16-bit file
    expected = torch.tensor([[0, 0, 1, 1], [1, 2, 128, 255]], dtype=torch.uint8)
    image = read_image(tmp_path / "g16.png")
    assert image.dtype == torch.uint8
    assert torch.equal(image, expected.expand(3, 2, 4))


def test_16bit_rgb_png(tmp_path: Path) -> None:
    rgb16 = np.array([[[65535, 0, 257], [32896, 128, 129]]], dtype=np.uint16)  # (1, 2, 3)
    (tmp_path / "c16.png").write_bytes(_png_bytes(rgb16, color_type=2, bit_depth=16))
    expected = torch.tensor([[[255, 0, 1], [128, 0, 1]]], dtype=torch.uint8).permute(2, 0, 1)
    assert torch.equal(read_image(tmp_path / "c16.png"), expected)


def test_cmyk_jpeg_colours(tmp_path: Path) -> None:
    rgb = np.zeros((16, 32, 3), dtype=np.uint8)
    rgb[:, :16] = (200, 30, 60)
    rgb[:, 16:] = (20, 180, 90)
    PIL.Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    reference = PIL.Image.open(tmp_path / "cmyk.jpg")
    assert reference.mode == "CMYK"
    image = read_image(tmp_path / "cmyk.jpg")
    assert torch.equal(image, _chw(np.asarray(reference.convert("RGB"))))
    # Not inverted, not swapped: the solid 16x16 blocks survive JPEG exactly.
    assert image[:, 8, 4].tolist() == [200, 30, 60]
    assert image[:, 8, 28].tolist() == [20, 180, 90]


def _exif_jpeg(path: Path, rgb: np.ndarray, orientation: int) -> None:
    exif = PIL.Image.Exif()
    exif[0x0112] = orientation
    PIL.Image.fromarray(rgb).save(path, exif=exif.tobytes(), quality=95, subsampling=0)


def test_exif_orientation_6(tmp_path: Path) -> None:
    # Stored 40 wide x 20 high in four 20x10 quadrants; orientation 6 means "rotate 90° clockwise to
    # display", so the stored top-left quadrant ends up top-right and the result is 20 x 40.
    rgb = np.zeros((20, 40, 3), dtype=np.uint8)
    rgb[:10, :20] = (255, 0, 0)  # top-left: red
    rgb[:10, 20:] = (0, 0, 255)  # top-right: blue
    rgb[10:, :20] = (0, 255, 0)  # bottom-left: green
    rgb[10:, 20:] = (255, 255, 255)  # bottom-right: white
    path = tmp_path / "rotated.jpg"
    _exif_jpeg(path, rgb, orientation=6)

    image = read_image(path)
    assert image.shape == (3, 40, 20)
    stored = np.asarray(PIL.Image.open(path).convert("RGB"))  # PIL does not rotate on open
    assert torch.equal(image, _chw(np.rot90(stored, k=-1)))  # k=-1: clockwise
    # Quadrant centres, away from JPEG ringing at the colour edges.
    def colour(x: int, y: int) -> list[int]:
        return [round(v / 255) * 255 for v in image[:, y, x].tolist()]

    assert colour(14, 10) == [255, 0, 0]  # red: top-right
    assert colour(4, 10) == [0, 255, 0]  # green: top-left
    assert colour(14, 30) == [0, 0, 255]  # blue: bottom-right
    assert colour(4, 30) == [255, 255, 255]  # white: bottom-left


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pil(tmp_path: Path, orientation: int) -> None:
    path = tmp_path / f"o{orientation}.jpg"
    _exif_jpeg(path, _random_rgb(20, 40, seed=orientation), orientation)
    expected = np.asarray(ImageOps.exif_transpose(PIL.Image.open(path)).convert("RGB"))
    assert torch.equal(read_image(path), _chw(expected))


# Formats that carry an EXIF orientation, and how PIL writes one (PNG: an eXIf chunk before the pixels).
ORIENTED_FORMATS = {"jpg": {"quality": 95, "subsampling": 0}, "png": {}, "webp": {"lossless": True}, "tif": {}}


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("suffix", sorted(ORIENTED_FORMATS))
def test_every_format_with_an_orientation_is_turned_upright(tmp_path: Path, suffix: str, orientation: int) -> None:
    # A sideways face in a WebP or a TIFF must reach the detector upright, as in a JPEG.
    exif = PIL.Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.{suffix}"
    PIL.Image.fromarray(_random_rgb(20, 40, seed=orientation)).save(path, exif=exif.tobytes(), **ORIENTED_FORMATS[suffix])
    expected = np.asarray(ImageOps.exif_transpose(PIL.Image.open(path)).convert("RGB"))
    assert torch.equal(read_image(path), _chw(expected))


def _move_exif_after_pixels(data: bytes) -> bytes:
    """A PNG whose eXIf chunk follows IDAT, as the PNG specification allows (and some tools write)."""
    chunks, position = [], 8
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        chunks.append(data[position : position + 12 + length])
        position += 12 + length
    exif = [c for c in chunks if c[4:8] == b"eXIf"]
    rest = [c for c in chunks if c[4:8] != b"eXIf"]
    return data[:8] + b"".join(rest[:-1]) + b"".join(exif) + rest[-1]


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_png_orientation_after_the_pixels(tmp_path: Path, orientation: int) -> None:
    exif = PIL.Image.Exif()
    exif[0x0112] = orientation
    early = tmp_path / "early.png"
    PIL.Image.fromarray(_random_rgb(20, 40, seed=1)).save(early, exif=exif.tobytes())
    late = tmp_path / "late.png"
    late.write_bytes(_move_exif_after_pixels(early.read_bytes()))
    assert late.read_bytes() != early.read_bytes()
    assert torch.equal(read_image(late), read_image(early))
    assert read_image(late).shape[1:] == ((40, 20) if orientation in (6, 8) else (20, 40))


def test_1x1(tmp_path: Path) -> None:
    PIL.Image.new("RGB", (1, 1), (1, 2, 3)).save(tmp_path / "dot.png")
    assert torch.equal(read_image(tmp_path / "dot.png"), torch.tensor([1, 2, 3], dtype=torch.uint8).reshape(3, 1, 1))
    PIL.Image.new("L", (1, 1), 77).save(tmp_path / "dot.jpg")
    assert read_image(tmp_path / "dot.jpg").tolist() == [[[77]], [[77]], [[77]]]


def test_pil_fallback_formats(tmp_path: Path) -> None:
    rgb = _random_rgb(5, 7, seed=4)
    for suffix in ("bmp", "tif"):
        PIL.Image.fromarray(rgb).save(tmp_path / f"a.{suffix}")
        assert torch.equal(read_image(tmp_path / f"a.{suffix}"), _chw(rgb))


def test_pil_fallback_has_no_decompression_bomb_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # With a limit of 100 pixels PIL would raise DecompressionBombError on this 30x30 BMP (> 2 * 100).
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100)
    rgb = _random_rgb(30, 30, seed=5)
    PIL.Image.fromarray(rgb).save(tmp_path / "big.bmp")
    assert torch.equal(read_image(tmp_path / "big.bmp"), _chw(rgb))
    assert PIL.Image.MAX_IMAGE_PIXELS == 100  # restored


def test_animated_gif_first_frame(tmp_path: Path) -> None:
    frames = [PIL.Image.new("RGB", (9, 8), (v, v, v)) for v in (10, 200)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    image = read_image(tmp_path / "anim.gif")
    assert image.shape == (3, 8, 9)
    assert image.unique().tolist() == [10]


@pytest.mark.slow
def test_very_large_image(tmp_path: Path) -> None:
    # 20000 x 20000 = 4e8 pixels: 4.5 times PIL's decompression-bomb error limit.
    path = tmp_path / "huge.png"
    _constant_gray_png(path, 20000, 20000, value=127)
    measure = _reset_peak_rss()
    before = _peak_rss_bytes()
    image = read_image(path)  # 400 megapixels: under the default pixel limit (500)
    after = _peak_rss_bytes()
    assert image.shape == (3, 20000, 20000)
    assert image.dtype == torch.uint8
    # Every byte is 127: compare 8 bytes at a time, without a 1.2 GB temporary. The decoder's buffer
    # is (H, W, 3), so the image is a channels-last view of it; compare that buffer.
    buffer = image.permute(1, 2, 0) if image.permute(1, 2, 0).is_contiguous() else image
    assert bool((buffer.view(-1).view(torch.int64) == 0x7F7F7F7F7F7F7F7F).all())
    if measure and before is not None and after is not None:
        output_bytes = 3 * 20000 * 20000
        # One decode into the output plus decoder buffers; a float copy alone would add 4x the output.
        assert after - before < 1.5 * output_bytes


# --- to_rgb_tensor --------------------------------------------------------------------------------


def test_to_rgb_tensor_numpy() -> None:
    rgb = _random_rgb(3, 4, seed=6)
    assert torch.equal(to_rgb_tensor(rgb), _chw(rgb))
    gray = np.array([[0, 10], [20, 255]], dtype=np.uint8)
    assert torch.equal(to_rgb_tensor(gray), torch.from_numpy(gray).expand(3, 2, 2))
    assert torch.equal(to_rgb_tensor(gray[:, :, None]), torch.from_numpy(gray).expand(3, 2, 2))
    floats = np.array([[[0.0, 0.2, 1.0]]], dtype=np.float32)  # 0.2 * 255 = 51
    assert to_rgb_tensor(floats).flatten().tolist() == [0, 51, 255]
    one_pixel = np.array([[[1, 2, 3]]], dtype=np.uint8)
    out = to_rgb_tensor(one_pixel)
    out[0] = 99  # the result must not be a view of the caller's array
    assert one_pixel[0, 0, 0] == 1


def test_to_rgb_tensor_pil_modes() -> None:
    rgba = np.random.RandomState(7).randint(0, 256, (4, 5, 4), dtype=np.uint8)
    assert torch.equal(to_rgb_tensor(PIL.Image.fromarray(rgba, mode="RGBA")), _chw(rgba[..., :3]))
    gray = PIL.Image.fromarray(rgba[..., 0], mode="L")
    assert torch.equal(to_rgb_tensor(gray), torch.from_numpy(rgba[..., 0]).expand(3, 4, 5))
    palette = PIL.Image.fromarray(rgba[..., :3]).convert("P")
    assert torch.equal(to_rgb_tensor(palette), _chw(np.asarray(palette.convert("RGB"))))
    cmyk = PIL.Image.fromarray(rgba[..., :3]).convert("CMYK")
    assert torch.equal(to_rgb_tensor(cmyk), _chw(np.asarray(cmyk.convert("RGB"))))
    sixteen = PIL.Image.fromarray(np.array([[0, 129, 65535]], dtype=np.uint16))
    assert to_rgb_tensor(sixteen)[0].tolist() == [[0, 1, 255]]


def test_to_rgb_tensor_pil_exif_transpose(tmp_path: Path) -> None:
    path = tmp_path / "o6.jpg"
    _exif_jpeg(path, _random_rgb(20, 40, seed=8), orientation=6)
    assert torch.equal(to_rgb_tensor(PIL.Image.open(path)), read_image(path))


def test_to_rgb_tensor_tensors() -> None:
    image = torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8)
    assert to_rgb_tensor(image).data_ptr() == image.data_ptr()  # already right: no copy
    floats = torch.tensor([0.0, 0.2, 1.0]).reshape(3, 1, 1)
    assert to_rgb_tensor(floats).flatten().tolist() == [0, 51, 255]
    gray = torch.tensor([[5, 6]], dtype=torch.uint8)
    assert to_rgb_tensor(gray).tolist() == [[[5, 6]], [[5, 6]], [[5, 6]]]


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        (np.zeros((4, 5, 4), np.uint8), "to_rgb_tensor: expected a numpy array of shape (H, W, 3) or (H, W), got (4, 5, 4)"),
        (np.zeros((4, 5), np.int32), "to_rgb_tensor: expected a uint8 or float numpy array, got int32"),
        (np.full((2, 2, 3), 255.0), "to_rgb_tensor: a float numpy array must lie in [0, 1], got values in [255, 255]"),
        (torch.zeros(4, 5, 6, dtype=torch.uint8), "to_rgb_tensor: expected a tensor of shape (3, H, W), (1, H, W) or (H, W), got (4, 5, 6)"),
        (torch.zeros(3, 0, 6, dtype=torch.uint8), "to_rgb_tensor: the tensor is empty, shape (3, 0, 6)"),
        (torch.full((3, 2, 2), float("nan")), "to_rgb_tensor: the float tensor has NaN or infinite values"),
        ([[1, 2, 3]], "to_rgb_tensor: expected a numpy array, PIL image or tensor, got list"),
    ],
)
def test_to_rgb_tensor_rejects(bad: object, expected: str) -> None:
    with pytest.raises(ValueError) as info:
        to_rgb_tensor(bad)
    assert str(info.value) == expected
