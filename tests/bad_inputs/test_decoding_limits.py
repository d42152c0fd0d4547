"""Decompression bombs: an image whose header announces more pixels than the limit is refused in one
line that names the limit and how to raise it, before its buffer is allocated. The bomb is a PNG of
40000x40000 pixels (1.6 gigapixels, 4.8 GB as RGB) that weighs a few hundred KB, made here."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from srn.cli import main
from srn.data.image_io import DEFAULT_MAX_IMAGE_PIXELS, MAX_PIXELS_ENV, read_header, read_image
from srn.errors import ImageReadError

SIDE = 40000


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path: Path, side: int = SIDE) -> Path:
    """A valid black 1-bit PNG of ``side`` x ``side`` pixels, compressed row block by row block."""
    row = b"\x00" + bytes((side + 7) // 8)
    compressor = zlib.compressobj(9)
    block = row * 1000
    idat = b"".join(compressor.compress(block) for _ in range(side // 1000)) + compressor.compress(row * (side % 1000))
    idat += compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    return bomb_png(tmp_path_factory.mktemp("bomb") / "bomb.png")


def test_the_bomb_is_small_and_its_header_says_its_size(bomb):
    assert bomb.stat().st_size < 1_000_000
    header = read_header(bomb.read_bytes())
    assert (header.format, header.width, header.height) == ("PNG", SIDE, SIDE)


def test_a_bomb_is_refused_before_decoding_in_one_line(bomb):
    with pytest.raises(ImageReadError) as info:
        read_image(bomb)
    assert str(info.value) == (
        f"{bomb}: 40000x40000 pixels (1600 megapixels) is above the limit of 500 megapixels that guards against "
        f"decompression bombs; to read it, raise the limit with the environment variable {MAX_PIXELS_ENV}=<pixels> "
        "(0: no limit)"
    )


def test_the_limit_is_a_parameter_and_an_environment_variable(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    PIL.Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(path)
    assert read_image(path).shape == (3, 30, 40)  # 1200 pixels, far below the default
    with pytest.raises(ImageReadError, match="is above the limit of 0.001 megapixels"):
        read_image(path, max_pixels=1000)
    assert read_image(path, max_pixels=1200).shape == (3, 30, 40)  # the limit itself is allowed
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    with pytest.raises(ImageReadError, match=r"40x30 pixels \(0.0012 megapixels\) is above the limit of 0.001 megapixels"):
        read_image(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "0")  # no limit
    assert read_image(path).shape == (3, 30, 40)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert str(info.value) == (f"{path}: the environment variable {MAX_PIXELS_ENV} must be a whole number of pixels "
                               "(0: no limit), got 'lots'")
    assert 400_000_000 <= DEFAULT_MAX_IMAGE_PIXELS < 1_600_000_000  # a 20000x20000 panorama passes, the bomb not


@pytest.mark.parametrize("suffix", ["jpg", "webp", "gif", "tif", "bmp"])
def test_every_format_is_checked(tmp_path, suffix, monkeypatch):
    path = tmp_path / f"wide.{suffix}"
    PIL.Image.fromarray(np.zeros((20, 60, 3), np.uint8)).save(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    with pytest.raises(ImageReadError, match=r"60x20 pixels .* above the limit"):
        read_image(path)


def test_srn_detect_names_the_bomb_and_goes_on(bomb, tmp_path, small_weights, capsys):
    good = tmp_path / "good.png"
    PIL.Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(good)
    out = tmp_path / "faces.jsonl"
    code = main(["detect", str(good), str(bomb), "--out", str(out), "--weights", small_weights,
                 "--device", "cpu", "--workers", "0", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if str(bomb) in line]
    assert len(lines) == 1 and "above the limit of 500 megapixels" in lines[0] and MAX_PIXELS_ENV in lines[0], err
    assert [line for line in out.read_text().splitlines()] and str(good) in out.read_text()


def test_an_animated_gif_decodes_its_first_frame_only(tmp_path):
    # torchvision would decode every frame of an animation at once; PIL decodes the first.
    frames = [PIL.Image.new("RGB", (64, 48), (v, v, v)) for v in range(0, 250, 10)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    image = read_image(path)
    assert image.shape == (3, 48, 64) and image.unique().tolist() == [0]
    assert isinstance(image, torch.Tensor)
