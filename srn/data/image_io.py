"""Robust image reading: every image comes out as an RGB ``uint8`` tensor ``(3, H, W)`` or fails with
one clear line.

Before anything is decoded, the file's header is read (PIL opens files lazily: format, size and
metadata, no pixels) for two checks that hold for every format:

- **a pixel limit**: an image above ``max_pixels`` (default :data:`DEFAULT_MAX_IMAGE_PIXELS`, 500
  megapixels, a 1.5 GB buffer: a 20000x20000 panorama is read; the environment variable
  ``SRN_MAX_IMAGE_PIXELS`` changes it, 0 lifts it) is refused in one line before its buffer is
  allocated: a small PNG of 40000x40000 pixels would otherwise ask for 4.8 GB. When PIL refuses the
  header (a PNG with one bad ancillary chunk, say) the size is read from the container's own header
  (PNG ``IHDR``, JPEG ``SOF``, WebP ``VP8X``/``VP8 ``/``VP8L``); a file whose size nothing can read is
  never handed to torchvision's decoders, which would allocate whatever it says. Files of many
  frames or pages are read one frame at a time by :func:`iter_frames`, each frame checked before it
  is decoded (a GIF's later frame may announce 60000x60000 pixels behind a 16x16 first one);
- **EXIF orientation**, read from the header of every format that carries one (JPEG, MPO, WebP,
  PNG's ``eXIf`` chunk before or after the pixels, TIFF, ...) and applied here, by one
  implementation (:func:`orient`), so that no format shows a sideways face to the detector.

torchvision's libjpeg-turbo / libpng / libwebp decoders then do the work where they can, because
they decode straight into the output tensor (no PIL copy, no float copy). What torchvision 0.29 does
with each case, checked by hand, and how this module completes it:

- grayscale, palette (with or without transparency), RGBA and CMYK JPEG: converted by the decoder
  itself when asked for ``ImageReadMode.RGB`` (alpha is dropped; CMYK matches PIL's
  ``convert("RGB")`` exactly);
- 16-bit PNG: returned as ``uint16``; scaled here to 8 bits by rounding ``v / 257`` (65535 -> 255);
- GIF: torchvision would decode every frame of an animation; PIL decodes the first frame only;
- BMP, TIFF and other formats: not supported, so PIL decodes them (EXIF transpose applied), with
  PIL's own decompression-bomb limit lifted for that call only (the pixel limit above replaces it);
- empty, truncated, corrupt and non-image files raise ``RuntimeError`` there; PIL gets a second try
  (it tolerates some damage that libjpeg-turbo rejects), and if it fails too, ``ImageReadError``.
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from PIL import ImageOps
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image

from srn.config import DEFAULT_MAX_IMAGE_PIXELS, MAX_PIXELS_ENV, max_image_pixels, pixel_limit_message
from srn.errors import ImageReadError, ImageValueError
from srn.paths import describe_mode

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "MAX_PIXELS_ENV",
    "ImageHeader",
    "ImageReadError",
    "ImageValueError",
    "check_pixels",
    "container_size",
    "iter_frames",
    "max_image_pixels",
    "orient",
    "read_header",
    "read_image",
    "to_rgb_tensor",
]

_ORIENTATION_TAG = 0x0112
# Formats that torchvision decodes here; the others go to PIL. GIF is PIL's (see the module doc).
_TORCHVISION_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP"})


# (magic prefix, name) used only to word the error message and to recognise truncation.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)

# torchvision prefixes its messages with "function, /path/to/file.cpp:LINE, "; the rest is the reason.
_TV_LOCATION = re.compile(r"^.*?\.(?:cpp|h|c):\d+,\s*")

# Lifting PIL's global decompression-bomb limit must not race with another reader that restores it.
_PIL_LIMIT_LOCK = threading.Lock()

# Elements converted per step from uint16 to uint8, so that a huge 16-bit image never needs a full
# int32 copy.
_CONVERT_CHUNK = 1 << 24


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says, read without decoding its pixels (:func:`read_header`).

    Attributes:
        format: PIL's name of the format ("JPEG", "PNG", "WEBP", "TIFF", ...).
        width, height: the stored size, before orientation.
        orientation: the EXIF orientation, 1 (as stored) to 8.
    """

    format: str
    width: int
    height: int
    orientation: int = 1

    @property
    def pixels(self) -> int:
        return self.width * self.height


def read_header(data: bytes | bytearray) -> ImageHeader | None:
    """The header of the encoded image ``data`` (format, size, orientation), or None when PIL does
    not recognise the format. Nothing is decoded, whatever the size the header announces."""
    with _PIL_LIMIT_LOCK:
        saved_limit = PIL.Image.MAX_IMAGE_PIXELS
        PIL.Image.MAX_IMAGE_PIXELS = None  # the header only; the caller applies its own limit
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pil_image = PIL.Image.open(io.BytesIO(data))
        except Exception:  # noqa: BLE001 - PIL's plugins raise many types on unknown or damaged files
            return None
        finally:
            PIL.Image.MAX_IMAGE_PIXELS = saved_limit
    with pil_image:
        fmt = pil_image.format or ""
        width, height = _stored_size(pil_image)
        if fmt == "PNG":  # PIL reads an eXIf chunk that follows the pixels only when decoding them
            orientation = _png_orientation(data)
        else:
            try:
                orientation = int(pil_image.getexif().get(_ORIENTATION_TAG, 1))
            except Exception:  # noqa: BLE001 - a malformed EXIF block: the image as stored
                orientation = 1
    return ImageHeader(fmt, width, height, orientation if 1 <= orientation <= 8 else 1)


def _stored_size(pil_image: PIL.Image.Image) -> tuple[int, int]:
    """The size as stored: PIL's TIFF reader reports it already turned for orientations 5 to 8."""
    tile = getattr(pil_image, "_tile_size", None)
    if pil_image.format == "TIFF" and tile:
        return int(tile[0]), int(tile[1])
    return pil_image.size


def _png_orientation(data: bytes | bytearray) -> int:
    """The orientation in a PNG's ``eXIf`` chunk, wherever it is (1 when there is none)."""
    position, end = 8, len(data)
    while position + 8 <= end:
        length, kind = struct.unpack(">I4s", bytes(data[position : position + 8]))
        if kind == b"eXIf":
            exif = PIL.Image.Exif()
            try:
                exif.load(bytes(data[position + 8 : position + 8 + length]))
                return int(exif.get(_ORIENTATION_TAG, 1))
            except Exception:  # noqa: BLE001 - a malformed EXIF block: the image as stored
                return 1
        if kind == b"IEND":
            break
        position += 12 + length
    return 1


def orient(image: Tensor, orientation: int) -> Tensor:
    """``image`` (Tensor[C, H, W]) turned as EXIF ``orientation`` (1 to 8) says it is displayed,
    as PIL's ``ImageOps.exif_transpose`` turns it; a view where the turn is a transpose."""
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-1, -2)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-1, -2)
    if orientation == 6:  # 90 degrees clockwise
        return image.transpose(-1, -2).flip(-1)
    if orientation == 7:
        return image.transpose(-1, -2).flip(-1, -2)
    if orientation == 8:  # 90 degrees counter-clockwise
        return image.transpose(-1, -2).flip(-2)
    return image


def _pixel_limit(path: str | os.PathLike[str], max_pixels: int | None) -> int:
    if max_pixels is not None:
        return max_pixels
    try:
        return max_image_pixels()
    except ValueError as exc:
        raise ImageReadError(path, str(exc)) from None


def check_pixels(path: str | os.PathLike[str], width: int, height: int, max_pixels: int | None = None, where: str = "") -> None:
    """Refuse a frame of ``width`` x ``height`` above the pixel limit (``max_pixels``, default
    :func:`max_image_pixels`), before it is decoded: :class:`ImageReadError` naming the limit and
    how to raise it (``where`` goes before the reason, e.g. ``"frame 3: "``)."""
    limit = _pixel_limit(path, max_pixels)
    if limit and width * height > limit:
        raise ImageReadError(path, where + pixel_limit_message(width, height, limit))




def _check_pixels(path: str | os.PathLike[str], header: ImageHeader, max_pixels: int | None) -> None:
    check_pixels(path, header.width, header.height, max_pixels)


def container_size(data: bytes | bytearray) -> tuple[int, int] | None:
    """``(width, height)`` as the container's own header states it, for the formats torchvision
    decodes (PNG ``IHDR``, JPEG's first ``SOF``, WebP ``VP8X``/``VP8 ``/``VP8L``), read without PIL;
    None when the data is none of these or its header is cut short."""
    head = bytes(data[:64])
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        kind = head[12:16]
        if kind == b"VP8X":
            return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
        if kind == b"VP8 ":
            width, height = struct.unpack("<HH", head[26:30])
            return width & 0x3FFF, height & 0x3FFF
        if kind == b"VP8L" and head[20] == 0x2F:
            bits = int.from_bytes(head[21:25], "little")
            return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
        return None
    if head.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    return None


# JPEG start-of-frame markers: C0 to CF but DHT (C4), JPG (C8) and DAC (CC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes | bytearray) -> tuple[int, int] | None:
    position, end = 2, len(data)
    while position + 4 <= end:
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length
            position += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header before it
            return None
        if marker in _SOF_MARKERS:
            if position + 9 > end:
                return None
            height, width = struct.unpack(">HH", bytes(data[position + 5 : position + 9]))
            return width, height
        position += 2 + struct.unpack(">H", bytes(data[position + 2 : position + 4]))[0]
    return None


def iter_frames(path: str | os.PathLike[str], data: bytes | bytearray | None = None,
                max_pixels: int | None = None) -> Iterator[PIL.Image.Image]:
    """Every frame of an animation (GIF, APNG, WebP) or page of a TIFF, one at a time, each checked
    against the pixel limit *before* it is decoded: nothing holds more than one frame.

    Args:
        path: the file (read unless ``data`` is given; named in errors).
        data: its bytes, when already read.
        max_pixels: as :func:`read_image`'s (default: :func:`max_image_pixels`).

    Yields:
        The file's PIL image, positioned at frame 0, 1, ..., not yet decoded: decode or copy what
        is needed (``frame.convert("RGBA")``, ``np.asarray(frame)``) before asking for the next,
        which moves the same image on. Its ``size`` is that frame's (a GIF's canvas grows with a
        frame larger than it).

    Raises:
        ImageReadError: the file cannot be read or is not an image PIL reads; a frame is above the
            pixel limit (the message names it: ``"frame 3: 60000x60000 pixels ... is above the limit"``);
            a frame cannot be reached (a damaged file).
    """
    if data is None:
        data = _read_bytes(path)
    limit = _pixel_limit(path, max_pixels)
    size = container_size(data)  # before PIL opens it, as in read_image
    if size is not None:
        check_pixels(path, *size, limit)
    with _PIL_LIMIT_LOCK:
        saved_limit = PIL.Image.MAX_IMAGE_PIXELS
        PIL.Image.MAX_IMAGE_PIXELS = None  # each frame is checked below, before it is decoded
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pil_image = PIL.Image.open(io.BytesIO(data))
        except Exception as exc:  # noqa: BLE001 - PIL's plugins raise many types on unknown or damaged files
            raise ImageReadError(path, f"not a decodable image ({_describe_failure(bytearray(data), None, exc)})") from None
        finally:
            PIL.Image.MAX_IMAGE_PIXELS = saved_limit
    with pil_image:
        index = 0
        while True:
            if index:
                try:
                    with _PIL_LIMIT_LOCK, warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        saved_limit = PIL.Image.MAX_IMAGE_PIXELS
                        PIL.Image.MAX_IMAGE_PIXELS = None  # PIL's GIF reader checks its own at each frame
                        try:
                            # Moving on decodes the frame before (checked already) where the format
                            # composes frames (GIF, APNG); of the new frame, the header only is read.
                            pil_image.seek(index)
                        finally:
                            PIL.Image.MAX_IMAGE_PIXELS = saved_limit
                except EOFError:
                    return
                except MemoryError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a damaged later frame
                    reason = " ".join(str(exc).split())[:100] or type(exc).__name__
                    raise ImageReadError(path, f"frame {index}: not decodable ({reason})") from None
            width, height = pil_image.size
            for tile in getattr(pil_image, "tile", None) or ():
                extents = tile[1] if len(tile) > 1 else None
                if extents is not None and len(extents) == 4:  # a tile past the canvas would enlarge it
                    width, height = max(width, int(extents[2])), max(height, int(extents[3]))
            check_pixels(path, width, height, limit, f"frame {index}: " if index else "")
            yield pil_image
            index += 1


def read_image(path: str | os.PathLike[str], max_pixels: int | None = None) -> Tensor:
    """Read an image file as RGB.

    Args:
        path: the image file.
        max_pixels: refuse images of more pixels than this, before decoding them (0: no limit;
            default: :func:`max_image_pixels`, from ``SRN_MAX_IMAGE_PIXELS`` or 500 megapixels).

    Returns:
        image (Tensor[3, H, W]): ``uint8`` RGB, EXIF orientation applied, alpha dropped. It may be
        a channels-last view of the decoder's ``(H, W, 3)`` buffer rather than contiguous: making it
        contiguous would cost a second full copy (use ``.contiguous()`` or ``.reshape`` if needed).

    Raises:
        ImageReadError: the file is missing, a directory, empty, unreadable, not a decodable image,
            or above the pixel limit.
    """
    data = _read_bytes(path)
    # The container's own header first: PIL may refuse the file's header (one bad ancillary PNG
    # chunk), and its WebP reader allocates an animation's canvas as soon as it opens the file.
    size = container_size(data)
    if size is not None:
        check_pixels(path, *size, max_pixels)
    header = read_header(data)
    if header is not None:
        _check_pixels(path, header, max_pixels)
        if header.format not in _TORCHVISION_FORMATS:
            return _read_with_pil(path, data, None)
    elif size is None:
        # Nothing says its size: no decoder that would allocate whatever the file announces
        # (torchvision's GIF decoder takes every frame at once); PIL says what is wrong with it.
        return _read_with_pil(path, data, None)
    try:
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its decoders in favour of TorchCodec; they still work, and
            # one warning per image would drown a training log.
            warnings.simplefilter("ignore", DeprecationWarning)
            image = decode_image(
                torch.frombuffer(data, dtype=torch.uint8),
                mode=ImageReadMode.RGB,
                apply_exif_orientation=False,  # orient() below, the same for every format
            )
    except Exception as tv_error:  # torchvision raises RuntimeError, but be safe with odd files
        return _read_with_pil(path, data, tv_error)

    if image.ndim == 4:  # an animation: (frames, 3, H, W) -> first frame
        image = image[0]
    if image.dtype == torch.uint16:
        image = _uint16_to_uint8(image)
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ImageReadError(path, f"decoder returned an unexpected {image.dtype} tensor of shape {tuple(image.shape)}")
    return orient(image, header.orientation if header is not None else 1)


def to_rgb_tensor(obj: Any) -> Tensor:
    """Convert an in-memory image to an RGB ``uint8`` tensor.

    Accepted inputs:

    - numpy array ``(H, W, 3)`` (RGB), ``(H, W, 1)`` or ``(H, W)`` (grayscale), ``uint8`` or float in [0, 1];
    - PIL image of any mode convertible to RGB (EXIF orientation applied, alpha dropped, 16-bit
      modes scaled to 8 bits);
    - tensor ``(3, H, W)`` (RGB), ``(1, H, W)`` or ``(H, W)`` (grayscale), ``uint8`` or float in [0, 1].

    Float values are mapped with ``round(x * 255)``.

    Returns:
        image (Tensor[3, H, W]): ``uint8``. A contiguous ``uint8`` RGB tensor comes back without a copy.

    Raises:
        ImageValueError: (a ``ValueError``) one line for an unsupported type, shape, dtype, mode,
        device or value range, describing the input as the caller gave it.
    """
    if isinstance(obj, PIL.Image.Image):
        return _pil_to_tensor(obj)
    if isinstance(obj, np.ndarray):
        return _numpy_to_tensor(obj)
    if isinstance(obj, Tensor):
        return _tensor_to_tensor(obj)
    raise ImageValueError(f"to_rgb_tensor: expected a numpy array, PIL image or tensor, got {type(obj).__name__}")


def _read_bytes(path: str | os.PathLike[str]) -> bytearray:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = None  # missing or unreadable: open() below says which
    # open() on a FIFO would wait forever for a writer, and a device such as /dev/zero never ends.
    if mode is not None and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise ImageReadError(path, f"is {describe_mode(mode)}, not an image file")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise ImageReadError(path, "empty file (0 bytes)")
            # A bytearray, because torch.frombuffer needs a writable buffer to avoid a warning.
            data = bytearray(size)
            view = memoryview(data)
            read = 0
            while read < size:
                n = f.readinto(view[read:])
                if not n:
                    break
                read += n
    except FileNotFoundError:
        raise ImageReadError(path, "no such file") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a directory, not an image file") from None
    except PermissionError:
        raise ImageReadError(path, "cannot read file (permission denied)") from None
    except OSError as e:
        raise ImageReadError(path, f"cannot read file ({e.strerror or e})") from None
    if read < size:  # the file shrank while we read it
        del data[read:]
        if not data:
            raise ImageReadError(path, "empty file (0 bytes)")
    return data


def _read_with_pil(path: str | os.PathLike[str], data: bytearray, tv_error: Exception | None) -> Tensor:
    with _PIL_LIMIT_LOCK:
        saved_limit = PIL.Image.MAX_IMAGE_PIXELS
        # read_image has applied its own pixel limit to the header already.
        PIL.Image.MAX_IMAGE_PIXELS = None
        try:
            with PIL.Image.open(io.BytesIO(data)) as pil_image:
                pil_image.load()
                return _pil_to_tensor(pil_image)
        except Exception as pil_error:  # PIL's plugins raise many types on damaged files
            raise ImageReadError(path, f"not a decodable image ({_describe_failure(data, tv_error, pil_error)})") from None
        finally:
            PIL.Image.MAX_IMAGE_PIXELS = saved_limit


def _describe_failure(data: bytearray, tv_error: Exception | None, pil_error: Exception) -> str:
    """A short reason, such as ``truncated JPEG`` or ``unrecognised format, looks like text``."""
    fmt = _sniff_format(data)
    if fmt is None:
        head = bytes(data[:512])
        try:
            head.decode("utf-8")
            looks_like_text = all(b >= 0x20 or b in b"\t\n\r" for b in head)
        except UnicodeDecodeError:  # may cut a multi-byte character at 512; treat as binary
            looks_like_text = False
        return "unrecognised format, looks like text" if looks_like_text else "unrecognised format"
    if _is_truncated(data, fmt):
        return f"truncated {fmt}"
    tv_message = _TV_LOCATION.sub("", str(tv_error).splitlines()[0] if tv_error is not None and str(tv_error) else "")
    detail = tv_message or str(pil_error) or type(pil_error).__name__
    return f"corrupt {fmt}: {detail}"


def _sniff_format(data: bytearray) -> str | None:
    head = bytes(data[:16])
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def _is_truncated(data: bytearray, fmt: str) -> bool:
    # Some writers pad after the end marker, so look for it near the end rather than at the end.
    tail = bytes(data[-1024:])
    if fmt == "JPEG":
        return b"\xff\xd9" not in tail
    if fmt == "PNG":
        return b"IEND" not in tail
    return False


def _uint16_to_uint8(image: Tensor) -> Tensor:
    """Scale a ``uint16`` image (``(C, H, W)`` or ``(H, W)``) to ``uint8`` with ``round(v / 257)``, so that 65535 -> 255 exactly.

    257 is odd, so ``v / 257`` is never halfway between integers and ``(v + 128) // 257`` is the exact
    rounding. Converted in chunks: a full int32 copy of a large image would be twice its size.
    """
    # Work on the decoder's (H, W, C) buffer when the image is a view of one, to avoid a uint16 copy.
    hwc = image.permute(1, 2, 0) if image.ndim == 3 else image
    source = hwc if hwc.is_contiguous() else image.contiguous()
    flat = source.view(-1)
    out = torch.empty(flat.shape, dtype=torch.uint8)
    for start in range(0, flat.numel(), _CONVERT_CHUNK):
        chunk = flat[start : start + _CONVERT_CHUNK].to(torch.int32)
        out[start : start + _CONVERT_CHUNK] = torch.div(chunk + 128, 257, rounding_mode="floor").to(torch.uint8)
    out = out.view(source.shape)
    return out.permute(2, 0, 1) if source is hwc and image.ndim == 3 else out


def _pil_to_tensor(pil_image: PIL.Image.Image) -> Tensor:
    try:
        pil_image = ImageOps.exif_transpose(pil_image) or pil_image
    except Exception:  # a malformed EXIF block should not lose an otherwise good image; keep it as stored
        pass
    mode = pil_image.mode
    if mode.startswith("I;16") or mode == "I":
        # PIL's convert("RGB") clips 16-bit values at 255 instead of scaling them.
        values = np.asarray(pil_image).astype(np.int64, copy=False)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageValueError(f"to_rgb_tensor: a PIL image of mode {mode} has values outside [0, 65535]")
        gray = torch.from_numpy(values.astype(np.uint16))
        return _uint16_to_uint8(gray).expand(3, *gray.shape).contiguous()
    if mode == "F":
        return _numpy_to_tensor(np.asarray(pil_image), "PIL image of mode F")
    if mode != "RGB":
        try:
            pil_image = pil_image.convert("RGB")
        except ValueError as e:
            raise ImageValueError(f"to_rgb_tensor: cannot convert a PIL image of mode {mode} to RGB ({e})") from None
    return _numpy_to_tensor(np.asarray(pil_image), f"PIL image of mode {mode}")


def _numpy_to_tensor(array: np.ndarray, what: str = "numpy array") -> Tensor:
    given = tuple(array.shape)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ImageValueError(f"to_rgb_tensor: expected a {what} of shape (H, W, 3) or (H, W), got {given}")
    with warnings.catch_warnings():
        # A read-only array (np.asarray of a PIL image) is fine: the result below is always a copy.
        warnings.simplefilter("ignore", UserWarning)
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    # (H, W, 3) -> (3, H, W); (H, W) -> (1, H, W)
    chw = tensor.permute(2, 0, 1) if tensor.ndim == 3 else tensor.unsqueeze(0)
    out = _finish(chw, what, given)
    # Never hand back a view of the caller's (possibly read-only) array, e.g. for a 1x1 image.
    return out.clone() if out.data_ptr() == tensor.data_ptr() else out


def _tensor_to_tensor(tensor: Tensor) -> Tensor:
    tensor = tensor.as_subclass(Tensor)  # a tv_tensors.Image would otherwise stay an Image
    given = tuple(tensor.shape)
    if tensor.is_meta:  # no values to check or convert; every reduction below would raise
        raise ImageValueError(f"to_rgb_tensor: a tensor on the meta device has no data (shape {given})")
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 3 or tensor.shape[0] not in (1, 3):
        raise ImageValueError(f"to_rgb_tensor: expected a tensor of shape (3, H, W), (1, H, W) or (H, W), got {given}")
    return _finish(tensor, "tensor", given)


def _finish(tensor: Tensor, what: str, given: tuple[int, ...]) -> Tensor:
    """(C, H, W) with C in {1, 3}, uint8 or float in [0, 1] -> contiguous uint8 (3, H, W); messages
    name ``what`` the caller gave and its shape ``given``."""
    if tensor.shape[1] == 0 or tensor.shape[2] == 0:
        raise ImageValueError(f"to_rgb_tensor: the {what} is empty, shape {given}")
    # A PIL image of mode F is float by its mode; an array or tensor is named by its dtype.
    float_what = what if what.startswith("PIL") else f"float {what}"
    if tensor.dtype == torch.uint8:
        pass
    elif tensor.is_floating_point():
        if not bool(torch.isfinite(tensor).all()):
            raise ImageValueError(f"to_rgb_tensor: the {float_what} has NaN or infinite values")
        low, high = float(tensor.min()), float(tensor.max())
        if low < 0.0 or high > 1.0:
            article = "an" if float_what[0] in "aeiou" else "a"
            raise ImageValueError(f"to_rgb_tensor: {article} {float_what} must lie in [0, 1], got values in [{low:g}, {high:g}]")
        tensor = tensor.float().mul(255.0).round_().to(torch.uint8)
    else:
        raise ImageValueError(f"to_rgb_tensor: expected a uint8 or float {what}, got {str(tensor.dtype).replace('torch.', '')}")
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    return tensor.contiguous()
