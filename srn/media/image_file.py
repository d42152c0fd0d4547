"""Image files rewritten with their faces hidden, keeping what the file had: every frame of an
animation (GIF, animated PNG and WebP), every page of a multi-page TIFF, the alpha channel, and a
16-bit depth.

Frames are streamed: decoded (:func:`srn.data.image_io.iter_frames`), detected and hidden a few at a
time, and handed to the writer as they come, so that a long animation is never held whole by the
reading side (GIF and TIFF are written frame by frame; PIL's APNG and WebP writers take a list).

The detector sees 8-bit RGB (:func:`srn.data.image_io.read_image`); the file written from that alone
would lose the rest. So a file for which 8-bit RGB is not the whole story (:func:`what_rgb_loses`)
is read again here, frame by frame in its own pixel type: the colour channels of each frame are
anonymised (:func:`srn.media.anonymize.anonymize`, at 8 or 16 bits) with the faces found in that
frame, and the alpha channel is put back as it was. Frames are written upright (EXIF orientation
applied, as the detector saw them), in the file's own format, with their durations, loop count and
disposal. What cannot be kept is said, not dropped silently: :func:`anonymize_image_file` returns
one line per loss (a 16-bit TIFF page written with 8 bits, or 16-bit colour that PIL decodes as 8,
say).

PIL reads and writes every frame format here; it cannot hold 16-bit colour, so 16-bit PNG files are
decoded by torchvision (``ImageReadMode.UNCHANGED``) and written by :func:`write_png`.
"""

from __future__ import annotations

import io
import itertools
import os
import struct
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from PIL import ImageOps, TiffImagePlugin
from torch import Tensor

from srn.atomic import atomic_file, atomic_write_bytes
from srn.data.image_io import check_pixels, container_size, iter_frames, orient, read_header
from srn.errors import ImageReadError, OutputPathError
from srn.media.anonymize import anonymize

__all__ = ["anonymize_image_file", "what_rgb_loses", "write_png"]

# PIL modes with an alpha channel, and the 16-bit grey modes.
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_WIDE_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
# Compressions PIL writes for TIFF; a page stored otherwise (JPEG) is written with LZW.
_TIFF_COMPRESSIONS = frozenset({"raw", "tiff_lzw", "tiff_adobe_deflate", "tiff_deflate", "packbits"})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (grey, grey+alpha, RGB, RGBA)
JPEG_QUALITY = 95
_FRAMES_PER_CALL = 8  # frames of an animation detected at a time (and held at most, where the writer streams)

# detect(frames) -> boxes per frame: each frame an 8-bit RGB Tensor[3, H, W], each result Tensor[D, 4].
DetectFrames = Callable[[list[Tensor]], list[Tensor]]


def _png_bit_depth(data: bytes) -> int | None:
    if data.startswith(_PNG_SIGNATURE) and data[12:16] == b"IHDR":
        return data[24]
    return None


def what_rgb_loses(path: str | os.PathLike[str]) -> list[str]:
    """What writing ``path`` back from its first frame as 8-bit RGB would lose: some of
    ``"its 12 frames"``, ``"its alpha channel"``, ``"its 16-bit depth"``; empty when nothing."""
    lost = []
    try:
        with open(path, "rb") as handle:
            head = handle.read(32)
            handle.seek(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                saved, PIL.Image.MAX_IMAGE_PIXELS = PIL.Image.MAX_IMAGE_PIXELS, None
                try:
                    picture = PIL.Image.open(handle)  # the header only
                finally:
                    PIL.Image.MAX_IMAGE_PIXELS = saved
            with picture:
                # An MPO (a phone's JPEG) holds previews after its photo, not more photo to keep.
                frames = 1 if picture.format == "MPO" else int(getattr(picture, "n_frames", 1) or 1)
                if frames > 1:
                    lost.append(f"its {frames} {'pages' if picture.format == 'TIFF' else 'frames'}")
                if picture.mode in _ALPHA_MODES or (picture.mode in ("P", "L", "RGB") and "transparency" in picture.info):
                    lost.append("its alpha channel")
                if picture.mode in _WIDE_MODES or _png_bit_depth(head) == 16 or _wide_colour(picture):
                    lost.append("its 16-bit depth")
    except Exception:  # noqa: BLE001 - not an image PIL reads: read_image has said what is wrong with it
        return []
    return lost


def _wide_colour(picture: PIL.Image.Image) -> bool:
    """Whether PIL reads ``picture`` as 8-bit colour from more bits (a 16-bit RGB TIFF, which it
    narrows as it decodes)."""
    bits = getattr(picture, "tag_v2", {}).get(258, ()) if picture.format == "TIFF" else ()
    bits = bits if isinstance(bits, tuple) else (bits,)
    return picture.mode not in _WIDE_MODES and any(isinstance(b, int) and b > 8 for b in bits)


def _open(data: bytes) -> PIL.Image.Image:
    # read_image has applied the pixel limit to this file already.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved, PIL.Image.MAX_IMAGE_PIXELS = PIL.Image.MAX_IMAGE_PIXELS, None
        try:
            return PIL.Image.open(io.BytesIO(data))
        finally:
            PIL.Image.MAX_IMAGE_PIXELS = saved


def _colour_and_alpha(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, C) -> the colour channels (H, W, 1 or 3) and the alpha channel (H, W) or None."""
    if frame.shape[2] in (2, 4):
        return frame[:, :, :-1], frame[:, :, -1]
    return frame, None


def _rgb8(colour: np.ndarray) -> Tensor:
    """What the detector sees of colour channels (H, W, 1 or 3), 8 or 16 bits: RGB uint8 (3, H, W)."""
    if colour.dtype == np.uint16:
        colour = ((colour.astype(np.uint32) + 128) // 257).astype(np.uint8)  # round(v / 257), as read_image
    tensor = torch.from_numpy(np.array(colour)).permute(2, 0, 1)  # (H, W, C) -> (C, H, W), a writable copy
    return tensor.expand(3, -1, -1).contiguous() if tensor.shape[0] == 1 else tensor.contiguous()


def _hide_frames(frames: Iterable[np.ndarray], detect: DetectFrames, hide: Callable[[np.ndarray, Tensor], np.ndarray],
                 first_boxes: Tensor | None, chunk: int = _FRAMES_PER_CALL) -> Iterator[np.ndarray]:
    """Each frame (H, W, C) with the faces found in it hidden in its colour channels, alpha kept;
    ``chunk`` frames are detected at a time, so that no more are held."""
    iterator = iter(frames)
    index = 0
    while batch := list(itertools.islice(iterator, chunk)):
        split = [_colour_and_alpha(frame) for frame in batch]
        todo = [i for i in range(len(batch)) if index + i > 0 or first_boxes is None]
        found = dict(zip(todo, detect([_rgb8(split[i][0]) for i in todo]) if todo else []))
        if index == 0 and first_boxes is not None:
            found[0] = first_boxes
        for i, (colour, alpha) in enumerate(split):
            hidden = hide(colour, found[i])
            yield hidden if alpha is None else np.concatenate([hidden, alpha[:, :, None]], axis=2)
        index += len(batch)


def _pil_frames(source: Path, data: bytes, notes: list[str], meta: dict[str, Any]) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
    """Every frame upright, one at a time, as (H, W, C): uint8 RGB or RGBA, or uint16 grey for a
    one-frame 16-bit file (a many-page one is written with 8-bit pages, and said so), with the
    frame's own info. At the first frame, ``meta`` gets the file's ``count`` of frames, ``format``
    and ``info`` (the first frame's). Each frame is checked against the pixel limit before it is
    decoded (:func:`srn.data.image_io.iter_frames`), and only one is decoded at a time."""
    narrowed = 0
    single = True
    for index, frame in enumerate(iter_frames(source, data)):
        if index == 0:
            count = 1 if frame.format == "MPO" else int(getattr(frame, "n_frames", 1) or 1)
            single = count == 1
            meta.update(count=count, format=frame.format, info=dict(frame.info))
            if _wide_colour(frame):
                notes.append("its 16-bit colour is written with 8 bits (PIL decodes it as 8; a 16-bit PNG keeps 16)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            upright = ImageOps.exif_transpose(frame) or frame
        if upright.mode in _WIDE_MODES and single:
            array = np.clip(np.asarray(upright).astype(np.int64), 0, 65535).astype(np.uint16)[:, :, None]
        elif upright.mode in _WIDE_MODES:
            if not narrowed:
                notes.append("its 16-bit pages are written with 8 bits (the pages of one file are 8-bit here)")
            narrowed += 1
            values = np.clip(np.asarray(upright).astype(np.int64), 0, 65535)
            grey = ((values + 128) // 257).astype(np.uint8)  # round(v / 257), as read_image
            array = np.repeat(grey[:, :, None], 3, axis=2)
        else:
            alpha = upright.mode in _ALPHA_MODES or "transparency" in upright.info
            array = np.asarray(upright.convert("RGBA" if alpha else "RGB"))
        yield array, dict(frame.info)  # read once decoded: a WebP frame's duration is known only then


def _webp_lossless(data: bytes) -> bool:
    """Whether a WebP file's (first) image is stored lossless (a VP8L chunk, alone or in a frame)."""
    position = 12
    while position + 8 <= len(data):
        kind, size = data[position : position + 4], struct.unpack("<I", data[position + 4 : position + 8])[0]
        if kind == b"VP8L":
            return True
        if kind == b"VP8 ":
            return False
        if kind == b"ANMF":  # a frame: 16 bytes of placement, then its image chunk
            return data[position + 24 : position + 28] == b"VP8L"
        position += 8 + size + (size & 1)
    return False


def _save_pil(target: Path, fmt: str, frames: Iterator[tuple[np.ndarray, dict[str, Any]]], count: int,
              picture_info: dict[str, Any], lossless: bool) -> None:
    """Write ``count`` frames, as ``frames`` yields them, to ``target`` in ``fmt``: GIF and TIFF
    take them one at a time; APNG and WebP writers take a list (PIL reads an animated PNG's frames
    twice, and its WebP writer lists them)."""
    durations: list[int] = []
    disposals: list[int] = []

    def pictures() -> Iterator[PIL.Image.Image]:
        for frame, info in frames:  # the info lists grow as the writer asks for the next frame
            durations.append(int(info.get("duration", 100) or 100))
            disposals.append(int(info.get("disposal", 0) or 0))
            yield PIL.Image.fromarray(frame[:, :, 0] if frame.shape[2] == 1 else frame)  # uint16 grey: mode I;16

    images = pictures()
    first = next(images)
    options: dict[str, Any] = {}
    if fmt == "JPEG":
        options["quality"] = JPEG_QUALITY
    elif fmt == "WEBP":
        options.update({"lossless": True} if lossless else {"quality": JPEG_QUALITY})
    elif fmt == "TIFF":
        compression = picture_info.get("compression", "raw")
        options["compression"] = compression if compression in _TIFF_COMPRESSIONS else "tiff_lzw"
    with atomic_file(target) as handle:  # every byte the encoder gives reaches the disk, or an error
        if count == 1:
            first.save(handle, format=fmt, **options)
        elif fmt == "TIFF":
            with TiffImagePlugin.AppendingTiffWriter(handle) as pages:
                for page in itertools.chain([first], images):
                    page.save(pages, format="TIFF", **options)
                    pages.newFrame()
        else:
            rest: Iterable[PIL.Image.Image] = images if fmt == "GIF" else list(images)
            options.update(save_all=True, append_images=rest, duration=durations)
            if "loop" in picture_info:  # a GIF without a loop count plays once
                options["loop"] = int(picture_info["loop"] or 0)
            if fmt in ("GIF", "PNG"):
                options["disposal"] = disposals
            first.save(handle, format=fmt, **options)


def write_png(path: str | os.PathLike[str], image: np.ndarray) -> Path:
    """Write ``image`` (H, W, C) of 1 to 4 channels (grey, grey and alpha, RGB, RGBA), uint8 or
    uint16, as a PNG of that depth, atomically: PIL cannot write 16-bit colour."""
    height, width, channels = image.shape
    depth = 16 if image.dtype == np.uint16 else 8
    rows = np.ascontiguousarray(image.astype(">u2" if depth == 16 else np.uint8)).reshape(height, -1)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows.view(np.uint8).reshape(height, -1)], axis=1)  # filter 0
    header = struct.pack(">IIBBBBB", width, height, depth, _PNG_COLOUR_TYPES[channels], 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    data = _PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + chunk(b"IEND", b"")
    atomic_write_bytes(path, data)
    return Path(path)


def _wide_png_frames(path: Path, data: bytes) -> list[np.ndarray]:
    """A 16-bit PNG upright as one (H, W, C) uint16 frame, C = 1 to 4."""
    from torchvision.io import ImageReadMode, decode_image

    header = read_header(data)
    size = container_size(data)
    if size is not None:
        check_pixels(path, *size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED,
                                 apply_exif_orientation=False)
        except RuntimeError as exc:
            raise ImageReadError(path, f"not a decodable image ({' '.join(str(exc).split())[:200]})") from None
    image = orient(image, header.orientation if header is not None else 1)
    return [image.permute(1, 2, 0).numpy().astype(np.uint16)]  # (C, H, W) -> (H, W, C)


def anonymize_image_file(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    detect: DetectFrames,
    method: str = "blur",
    mask: str = "box",
    mask_scale: float = 1.3,
    first_boxes: Tensor | None = None,
) -> list[str]:
    """Write ``source`` to ``target`` (atomically, in ``target``'s format) with the faces of every
    frame hidden, keeping frames, pages, alpha and 16-bit depth where the format can hold them.

    Args:
        detect: the faces of frames: 8-bit RGB ``Tensor[3, H, W]`` each -> boxes ``Tensor[D, 4]`` each.
        method, mask, mask_scale: as :func:`srn.media.anonymize.anonymize` takes them.
        first_boxes: the first frame's faces, when already found (not detected again).

    Returns:
        One line per thing of the source that could not be kept (empty when all was).

    Raises:
        ImageReadError: the source cannot be read again. OutputPathError: the target cannot be written.
    """
    source, target = Path(source), Path(target)
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise ImageReadError(source, f"cannot read file ({exc.strerror or exc})") from None
    fmt = PIL.Image.registered_extensions().get(target.suffix.lower())
    if fmt is None or fmt not in PIL.Image.SAVE:
        raise OutputPathError(target, f"cannot write images of type {target.suffix or '(no suffix)'!r}")

    def hide(colour: np.ndarray, boxes: Tensor) -> np.ndarray:
        return anonymize(colour, boxes, method=method, mask=mask, mask_scale=mask_scale)

    notes: list[str] = []
    try:
        if _png_bit_depth(data) == 16 and fmt == "PNG":
            (wide,) = _hide_frames(_wide_png_frames(source, data), detect, hide, first_boxes)
            with _open(data) as picture:
                if int(getattr(picture, "n_frames", 1) or 1) > 1:
                    notes.append("only the first frame of a 16-bit animated PNG is kept")
            write_png(target, wide)
            return notes
        meta: dict[str, Any] = {}
        stream = _pil_frames(source, data, notes, meta)
        first = next(stream, None)
        if first is None:
            raise ImageReadError(source, "has no frame to decode")
        count, picture_info = meta["count"], meta["info"]
        if meta["format"] == "TIFF":
            picture_info["compression"] = picture_info.get("compression", "raw")
        if count > 1 and fmt not in ("GIF", "PNG", "WEBP", "TIFF"):
            notes.append(f"only the first of its {count} frames is kept ({target.suffix} holds one)")
            stream.close()
            count = 1
        frames: Iterator[tuple[np.ndarray, dict[str, Any]]] = itertools.chain([first], stream)
        if first[0].shape[2] == 4 and fmt in ("JPEG", "BMP"):
            notes.append(f"its alpha channel is dropped ({target.suffix} has none)")
            frames = ((f[:, :, :3], info) for f, info in frames)
        if first[0].dtype == np.uint16 and fmt not in ("PNG", "TIFF"):
            notes.append(f"its 16-bit depth is written with 8 bits ({target.suffix} holds 8)")
            frames = ((((f.astype(np.uint32) + 128) // 257).astype(np.uint8), info) for f, info in frames)
        frames, infos = itertools.tee(frames)
        hidden = zip(_hide_frames((f for f, _ in frames), detect, hide, first_boxes), (info for _, info in infos))
        _save_pil(target, fmt, hidden, count, picture_info,
                  lossless=fmt == "WEBP" and data[8:12] == b"WEBP" and _webp_lossless(data))
    except OSError as exc:
        raise OutputPathError(target, f"cannot be written ({exc.strerror or exc})") from None
    return notes
