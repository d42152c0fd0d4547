"""What the annotation parsers share: the per-image record, reading text lines, strict counts, and
the one clean-up of parsed boxes.

Every text format reads its file through :func:`read_lines`: UTF-8 (a byte-order mark at the start is
dropped, as Windows editors write one), universal newlines, blank lines and ``#`` comment lines
skipped, and line numbers as an editor shows them. Counts are whole lines of ASCII digits
(:func:`parse_count`): ``int()`` would also take ``1_0``, ``+3``, ``٣`` or a 10,000-digit number.

What a message quotes of a file: only a short, printable excerpt of a line (:func:`srn.errors.excerpt`),
and nothing at all of a file that does not look like its kind (:class:`Quoting`): that one is
"not <kind>", whatever it is (a password file named as annotations, say), with the number of the line
that does not fit.
"""

from __future__ import annotations

import codecs
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from srn.errors import AnnotationError, SRNError, excerpt

__all__ = ["FaceRecord", "FileError", "Quoting", "quoted", "build_records", "clip_and_filter_boxes", "parse_count", "parse_finite", "parse_floats", "read_lines", "read_text", "xywh_to_xyxy"]

logger = logging.getLogger(__name__)

# (path, line or None, reason) -> the error to raise: AnnotationError for ground truth,
# PredictionFormatError for detection files.
FileError = Callable[[str | os.PathLike[str], "int | None", str], SRNError]

# At most 18 digits: a count no file can hold, and still a small int.
_COUNT = re.compile(r"[0-9]{1,18}")


def quoted(text: str) -> str:
    """A line (or token) of a user's file as a message shows it: a short, printable excerpt."""
    return excerpt(text.strip())


# A line that names an image file, alone or followed by its width and height.
_IMAGE_LINE = re.compile(r"\S+\.(?:jpe?g|png|bmp|webp|gif|tiff?)(?:\s+\d+\s+\d+)?", re.IGNORECASE)


def _annotation_like(text: str) -> bool:
    """Whether a line is what annotation files are made of: a count or a row of numbers, even a
    malformed one (digits of any script, signs, points, exponents, ``_`` and ``,`` only), or the
    name of an image file."""
    text = text.strip()
    if any(ch.isdigit() for ch in text) and all(ch.isdigit() or ch.isspace() or ch in "+-.eExX_," for ch in text):
        return True
    return _IMAGE_LINE.fullmatch(text) is not None


class Quoting:
    """The one rule of what a parse error may quote of a text annotation or prediction file.

    A file that looks like its kind (one of its lines, at least, is a count or a row of numbers,
    even a malformed one, or names an image file) gets errors that quote a short excerpt of the offending line
    (:func:`quoted`). A file that does not (a password file named as annotations, notes, a
    script) is "not <kind>": the error keeps the line number and the reason, and quotes nothing.

    Args:
        path: the file. kind: what it should be, with its article ("an FDDB ellipse list").
        lines: its significant lines (:func:`read_lines`). error: ``error(path, line, reason)``.
    """

    def __init__(self, path: str | os.PathLike[str], kind: str, lines: Sequence[tuple[int, str]],
                 error: FileError = AnnotationError) -> None:
        self.path, self.kind, self.lines, self.make = path, kind, lines, error
        self._of_kind: bool | None = None

    @property
    def of_kind(self) -> bool:
        if self._of_kind is None:  # only once a line fails: a good file never pays for it
            self._of_kind = any(_annotation_like(text) for _, text in self.lines)
        return self._of_kind

    def error(self, line: int | None, reason: str, plain: str | None = None) -> SRNError:
        """The error at ``line``: ``reason`` (which may quote the file) where the file may be
        quoted, else ``"not <kind> (<plain>)"``, ``plain`` the reason told without quoting
        (default: ``reason``, when it quotes nothing)."""
        if self.of_kind:
            return self.make(self.path, line, reason)
        return self.make(self.path, line, f"not {self.kind} ({reason if plain is None else plain})")


@dataclass(frozen=True, eq=False)  # eq on tensors would be ambiguous
class FaceRecord:
    """The annotation of one image, usable without the image.

    Attributes:
        image_path (str): the path as written in the annotation file (relative to an image root).
        boxes (Tensor[N, 4]): ``float32`` ``(x1, y1, x2, y2)`` pixels, degenerate boxes already dropped.
        ignore (Tensor[N]): ``bool``, faces that are neither positive nor negative.
        image_size (tuple[int, int] | None): ``(height, width)`` when the annotation states it.
        num_dropped (int): boxes of this image dropped as degenerate while parsing.
        attributes (Tensor[N, 6] | None): ``int64`` WIDER attribute columns
            (``srn.data.formats.wider.WIDER_ATTRIBUTES``), for the official WIDER format only.
    """

    image_path: str
    boxes: Tensor
    ignore: Tensor
    image_size: tuple[int, int] | None = None
    num_dropped: int = 0
    attributes: Tensor | None = None

    @property
    def image_id(self) -> str:
        return self.image_path


def read_text(path: str | os.PathLike[str], error: FileError = AnnotationError) -> str:
    """The text of a UTF-8 file without its byte-order mark; universal newlines become ``\\n``.

    Raises:
        ``error(path, None, ...)``: the file cannot be read, or is not UTF-8 text.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise error(path, None, f"cannot be read ({os.strerror(exc.errno) if exc.errno else exc})") from None
    offset = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[offset:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(path, None, f"not a text file ({exc.reason} at byte {exc.start + offset})") from None
    # The newline rule of open(): \r\n and a lone \r end a line, so numbers match an editor's.
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_lines(path: str | os.PathLike[str], error: FileError = AnnotationError) -> tuple[list[tuple[int, str]], int]:
    """The significant lines of a text annotation file.

    Returns:
        lines: ``(1-based line number, text without its line end)`` of every line that is neither
            blank nor a ``#`` comment.
        num_lines: the number of lines in the file (for "the file ends after" messages).
    """
    all_lines = read_text(path, error).split("\n")
    if all_lines and all_lines[-1] == "":
        all_lines.pop()  # the text after the final newline is not a line
    lines = [(n, line) for n, line in enumerate(all_lines, start=1) if line.strip() and not line.lstrip().startswith("#")]
    return lines, len(all_lines)


def parse_count(text: str) -> int | None:
    """A count line's integer, or None unless the stripped line is 1 to 18 ASCII digits."""
    token = text.strip()
    return int(token) if _COUNT.fullmatch(token) else None


def parse_floats(text: str) -> list[float] | None:
    """The whitespace-separated numbers of a line, or None if one is not a plain decimal number.

    ``nan`` and ``inf`` parse (a non-finite box is dropped later, see :func:`build_records`);
    ``float()``'s extras, digit-group underscores and non-ASCII digits, do not.
    """
    tokens = text.split()
    if not all(t.isascii() and "_" not in t for t in tokens):
        return None
    try:
        return [float(t) for t in tokens]
    except ValueError:
        return None


def parse_finite(token: str, path: str | os.PathLike[str], line_number: int, error: FileError = AnnotationError) -> float:
    """``token`` as a finite float, or ``error(path, line_number, ...)``."""
    numbers = parse_floats(token)
    if numbers is None or len(numbers) != 1:
        raise error(path, line_number, f"not a number: {quoted(token)}")
    if not math.isfinite(numbers[0]):
        raise error(path, line_number, f"non-finite value {quoted(token)}")
    return numbers[0]


def xywh_to_xyxy(xywh: Tensor) -> Tensor:
    # (N, 4) x y w h -> (N, 4) x1 y1 x2 y2
    return torch.cat((xywh[:, :2], xywh[:, :2] + xywh[:, 2:4]), dim=1)


def clip_and_filter_boxes(
    boxes: Tensor, image_size: tuple[int, int] | tuple[Tensor, Tensor] | None = None
) -> tuple[Tensor, Tensor]:
    """Clip boxes to the image and find the degenerate ones.

    Args:
        boxes (Tensor[N, 4]): ``(x1, y1, x2, y2)``.
        image_size: ``(height, width)``; or per box, two Tensor[N] with ``inf`` where the size is
            unknown; or ``None`` when unknown for all (then nothing is clipped).

    Returns:
        boxes (Tensor[N, 4]): clipped to ``[0, width] x [0, height]`` where the size is known.
        keep (Tensor[N]): ``bool``, False for a box with no width or height (after clipping), or with
            a non-finite coordinate.
    """
    if image_size is not None:
        height, width = (torch.as_tensor(v, dtype=boxes.dtype, device=boxes.device) for v in image_size)
        # Unknown sizes bound neither side.
        low = torch.where(torch.isfinite(width), 0.0, -math.inf).to(boxes.dtype)
        boxes = torch.stack(
            (
                boxes[:, 0].clamp(low, width),
                boxes[:, 1].clamp(low, height),
                boxes[:, 2].clamp(low, width),
                boxes[:, 3].clamp(low, height),
            ),
            dim=1,
        )
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & torch.isfinite(boxes).all(dim=1)
    return boxes, keep


def build_records(
    path: str | os.PathLike[str],
    image_paths: Sequence[str],
    image_sizes: Sequence[tuple[int, int] | None],
    counts: Sequence[int],
    boxes: Tensor,
    ignore: Tensor,
    attributes: Tensor | None,
) -> list[FaceRecord]:
    """Clip and filter the boxes of a whole file at once, then split them into per-image records.

    **Degenerate boxes.** A box with ``w <= 0`` or ``h <= 0``, or a non-finite coordinate, is
    dropped. When the annotation gives the image size the boxes are clipped to the image, and a box
    left with no area, being entirely outside, is dropped too. Drops are counted
    (``FaceRecord.num_dropped``) and logged as one warning for the file.

    Args:
        boxes (Tensor[R, 4]): all rows of the file, image after image (``counts`` rows each).
        ignore (Tensor[R]): ``bool``.
        attributes (Tensor[R, 6] | None): WIDER attribute columns.
    """
    counts_t = torch.tensor(counts, dtype=torch.int64)
    # Per-row image sizes; an image of unknown size has infinite ones: not clipped, only checked.
    height = torch.tensor([s[0] if s is not None else math.inf for s in image_sizes], dtype=torch.float64)
    width = torch.tensor([s[1] if s is not None else math.inf for s in image_sizes], dtype=torch.float64)
    boxes, keep = clip_and_filter_boxes(boxes, (height.repeat_interleave(counts_t), width.repeat_interleave(counts_t)))

    image_index = torch.arange(len(counts)).repeat_interleave(counts_t)
    kept_counts = torch.zeros(len(counts), dtype=torch.int64).index_add_(0, image_index, keep.to(torch.int64))
    dropped_counts = (counts_t - kept_counts).tolist()
    sizes = kept_counts.tolist()
    # clone(): each record owns its rows, so pickling or saving one does not drag the whole file along
    boxes_per_image = [b.clone() for b in boxes[keep].to(torch.float32).split(sizes)]
    ignore_per_image = [g.clone() for g in ignore[keep].split(sizes)]
    attributes_per_image = [a.clone() for a in attributes[keep].split(sizes)] if attributes is not None else None

    records = [
        FaceRecord(
            image_path=image_paths[n],
            boxes=boxes_per_image[n],
            ignore=ignore_per_image[n],
            image_size=image_sizes[n],
            num_dropped=dropped_counts[n],
            attributes=None if attributes_per_image is None else attributes_per_image[n],
        )
        for n in range(len(image_paths))
    ]
    dropped = sum(dropped_counts)
    if dropped:
        logger.warning(
            "%s: dropped %d degenerate box(es) in %d image(s) (width or height <= 0, or outside the image)",
            os.fspath(path),
            dropped,
            sum(1 for d in dropped_counts if d),
        )
    return records
