"""Generators of decompression bombs, one per container kind, each a few KB to a few hundred KB that
announces far more pixels than the limit (made fresh by the tests; nothing is committed but this).

- :func:`png_bad_chunk`: a 40000x40000 PNG with one ancillary chunk whose checksum is wrong, so that
  PIL refuses its header (and a reader that trusts PIL for the size would decode it unchecked);
- :func:`gif_huge_later_frame`, :func:`tiff_huge_later_page`, :func:`webp_huge_later_frame`,
  :func:`apng_huge_later_frame`: a small first frame (or page), then a frame whose header announces
  60000x60000 pixels (its data is not there: nothing may get as far as decoding it); WebP's frames
  are decoded into the canvas, so its later frame lies in the far corner of a 30000x30000 one.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import PIL.Image

HUGE = 60000
WEBP_CANVAS = 30000
SIDE = 40000


def chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_bad_chunk(path: Path, side: int = SIDE) -> Path:
    """A valid black 1-bit PNG of ``side`` x ``side`` pixels, but for a ``tEXt`` chunk with a wrong CRC."""
    row = b"\x00" + bytes((side + 7) // 8)
    compressor = zlib.compressobj(9)
    block = row * 1000
    idat = b"".join(compressor.compress(block) for _ in range(side // 1000)) + compressor.compress(row * (side % 1000))
    idat += compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"tEXt", b"Comment\x00hello", crc=0)
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def _frames(count: int = 3, size: tuple[int, int] = (16, 12)) -> list[PIL.Image.Image]:
    return [PIL.Image.fromarray(np.full((size[1], size[0], 3), 40 * i, np.uint8)) for i in range(count)]


def _saved(fmt: str, **options) -> bytearray:
    frames = _frames()
    buffer = io.BytesIO()
    frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:], **options)
    return bytearray(buffer.getvalue())


def gif_huge_later_frame(path: Path) -> Path:
    """Three 16x12 frames; the second's image descriptor says 60000x60000 (PIL grows the canvas to it)."""
    data = _saved("GIF")
    descriptors = [i for i in range(len(data) - 9) if data[i] == 0x2C and data[i + 5 : i + 9] == struct.pack("<HH", 16, 12)]
    position = descriptors[1]
    data[position + 5 : position + 9] = struct.pack("<HH", HUGE, HUGE)
    path.write_bytes(data)
    return path


def tiff_huge_later_page(path: Path) -> Path:
    """Three 16x12 pages; the second's IFD says 60000x60000."""
    data = _saved("TIFF")
    assert data[:4] == b"II*\x00"
    ifd = struct.unpack("<I", data[4:8])[0]
    ifd = struct.unpack("<I", data[ifd + 2 + 12 * struct.unpack("<H", data[ifd : ifd + 2])[0] :][:4])[0]  # the second
    for n in range(struct.unpack("<H", data[ifd : ifd + 2])[0]):
        entry = ifd + 2 + 12 * n
        tag, kind = struct.unpack("<HH", data[entry : entry + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength
            data[entry + 8 : entry + 12] = struct.pack("<HH", HUGE, 0) if kind == 3 else struct.pack("<I", HUGE)
    path.write_bytes(data)
    return path


def webp_huge_later_frame(path: Path) -> Path:
    """Three 16x12 lossless frames on a 30000x30000 canvas (``VP8X``), the second in its far corner:
    an animation's frames are decoded into the canvas, 3.6 GB as RGBA."""
    data = _saved("WEBP", lossless=True)
    assert data[12:16] == b"VP8X"
    data[24:30] = (WEBP_CANVAS - 1).to_bytes(3, "little") * 2
    position, frame = 12, 0
    while position + 8 <= len(data):
        kind, size = bytes(data[position : position + 4]), struct.unpack("<I", data[position + 4 : position + 8])[0]
        if kind == b"ANMF":
            if frame == 1:  # its offset, in units of 2 pixels
                data[position + 8 : position + 14] = ((WEBP_CANVAS - 16) // 2).to_bytes(3, "little") + (
                    (WEBP_CANVAS - 12) // 2).to_bytes(3, "little")
            frame += 1
        position += 8 + size + (size & 1)
    path.write_bytes(data)
    return path


def apng_huge_later_frame(path: Path) -> Path:
    """Three 16x12 frames; the second ``fcTL`` chunk says its frame is 60000x60000 (CRC fixed)."""
    data = _saved("PNG")
    out, position, frame = bytearray(data[:8]), 8, 0
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        body = bytearray(data[position + 8 : position + 8 + length])
        if kind == b"fcTL":
            if frame == 1:
                body[4:12] = struct.pack(">II", HUGE, HUGE)
            frame += 1
        out += chunk(kind, bytes(body))
        position += 12 + length
    path.write_bytes(out)
    return path


FRAME_BOMBS = {"gif": gif_huge_later_frame, "tif": tiff_huge_later_page, "webp": webp_huge_later_frame,
               "png": apng_huge_later_frame}
