"""WIDER FACE style annotation files: the one parser of their three layouts.

Per image: a line ``<path>`` or ``<path> <width> <height>``, a line with the face count, then one
line per face. The three layouts differ only in those optional parts:

- the official ``wider_face_{train,val}_bbx_gt.txt``: no size, faces as
  ``x y w h blur expression illumination invalid occlusion pose`` (:data:`WIDER_ATTRIBUTES`);
- the list format of ``labels.txt`` files: no size, faces as ``x y w h``;
- the "with sizes" list ``wider_face_train_boxes_with_sizes.txt``: ``<event>/<name>.jpg <w> <h>``,
  faces as ``x y w h``.

The official files write an image with no faces as a count of 0 followed by one all-zero line;
that line is consumed and gives no face. Boxes are continuous ``x y w h`` pixels: ``(x, y, x + w,
y + h)``, no +1.

:func:`parse_wider_file` gives training's and evaluation's :class:`FaceRecord` (boxes cleaned by
:func:`~srn.data.formats.common.build_records`); :func:`read_wider_boxes` gives the analysis the
rows exactly as written, degenerate ones included, for files with sizes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

from srn.data.formats.common import FaceRecord, Quoting, build_records, parse_count, parse_floats, quoted, read_lines, xywh_to_xyxy
from srn.errors import AnnotationError

__all__ = ["WIDER_ATTRIBUTES", "WiderFile", "parse_wider_file", "read_wider_boxes", "read_wider_file"]

# The six attribute columns of WIDER FACE's official annotation files, after "x y w h".
WIDER_ATTRIBUTES: tuple[str, ...] = ("blur", "expression", "illumination", "invalid", "occlusion", "pose")
_WIDER_INVALID = WIDER_ATTRIBUTES.index("invalid")


@dataclass(frozen=True, eq=False)
class WiderFile:
    """A WIDER-style file as written: no box is dropped, clipped or converted.

    Attributes:
        image_paths: per image, the path as written.
        image_sizes: per image, ``(height, width)`` when the image line gives ``<w> <h>``.
        image_lines: per image, ``(line number, the image line stripped)``.
        counts: per image, its number of face lines.
        values (Tensor[R, C]): ``float64`` face lines of all images in order, C = 4 or 10.
    """

    image_paths: list[str]
    image_sizes: list[tuple[int, int] | None]
    image_lines: list[tuple[int, str]]
    counts: list[int]
    values: Tensor


def read_wider_file(path: str | os.PathLike[str]) -> WiderFile:
    """Read any of the three layouts (see the module docstring). Blank and ``#`` lines are skipped.

    Raises:
        AnnotationError: naming the file and line of the first malformed line.
    """
    lines, _ = read_lines(path)
    rule = Quoting(path, "a WIDER FACE annotation file", lines)  # what an error may quote of the file
    image_paths: list[str] = []
    image_sizes: list[tuple[int, int] | None] = []
    image_lines: list[tuple[int, str]] = []
    counts: list[int] = []
    rows: list[list[float]] = []
    num_columns = 0
    i = 0
    while i < len(lines):
        line_number, text = lines[i]
        image_path, image_size = _parse_image_line(rule, line_number, text)
        i += 1
        if i >= len(lines):
            raise rule.error(line_number, f"image {quoted(image_path)} has no face count line after it",
                             "an image line has no face count line after it")
        count = parse_count(lines[i][1])
        if count is None:
            raise rule.error(lines[i][0], f"expected a face count (an integer >= 0), got {quoted(lines[i][1])}",
                             "expected a face count (an integer >= 0)")
        i += 1
        if count == 0 and i < len(lines) and _is_zero_row(lines[i][1]):
            i += 1  # the official files' placeholder row of an image without faces
        for k in range(count):
            if i >= len(lines):
                raise rule.error(lines[-1][0], f"image {quoted(image_path)} announces {count} faces, the file ends after {k}")
            row_number, row_text = lines[i]
            row = parse_floats(row_text)
            if row is None or len(row) not in (4, 4 + len(WIDER_ATTRIBUTES)):
                raise rule.error(row_number, f"expected 'x y w h' or 'x y w h' + 6 attributes, got {quoted(row_text)}",
                                 "expected 'x y w h' or 'x y w h' + 6 attributes")
            if num_columns and len(row) != num_columns:
                raise AnnotationError(path, row_number, f"{len(row)} numbers where the file's first face line has {num_columns}")
            num_columns = len(row)
            rows.append(row)
            i += 1
        image_paths.append(image_path)
        image_sizes.append(image_size)
        image_lines.append((line_number, text.strip()))
        counts.append(count)
    values = torch.tensor(rows, dtype=torch.float64).reshape(-1, num_columns or 4)
    return WiderFile(image_paths, image_sizes, image_lines, counts, values)


def parse_wider_file(path: str | os.PathLike[str], *, ignore_invalid: bool = True) -> list[FaceRecord]:
    """Parse a WIDER FACE style annotation file (any layout) into cleaned per-image records.

    A box with ``w <= 0`` or ``h <= 0`` is dropped; when the file gives the image size, boxes are
    clipped to the image and those left without area are dropped too
    (:func:`~srn.data.formats.common.build_records`).

    Args:
        path: the annotation file.
        ignore_invalid: mark faces whose ``invalid`` attribute is 1 as ignored.

    Returns:
        One record per image, in file order.

    Raises:
        AnnotationError: naming the file and line of the first malformed line.
    """
    parsed = read_wider_file(path)
    values = parsed.values
    attributes = values[:, 4:].to(torch.int64) if values.shape[1] > 4 else None
    ignore = torch.zeros(len(values), dtype=torch.bool)
    if ignore_invalid and attributes is not None:
        ignore = attributes[:, _WIDER_INVALID] == 1
    return build_records(
        path, parsed.image_paths, parsed.image_sizes, parsed.counts, xywh_to_xyxy(values[:, :4]), ignore, attributes
    )


def read_wider_boxes(path: str | os.PathLike[str]) -> list[tuple[str, int, int, Tensor]]:
    """Read a WIDER file whose image lines all give the size, ``<event>/<name>.jpg <width> <height>``.

    Returns:
        One ``(name, width, height, boxes)`` per image, ``boxes`` (Tensor[M, 4], ``float64``) the
        ``x y w h`` columns as written, degenerate boxes included.

    Raises:
        AnnotationError: a malformed line, an image line without its size, or a file with no image.
    """
    parsed = read_wider_file(path)
    if not parsed.image_paths:
        raise AnnotationError(path, None, "no image in the file")
    for size, (line_number, text) in zip(parsed.image_sizes, parsed.image_lines):
        if size is None:
            raise AnnotationError(path, line_number, f"expected '<event>/<name>.jpg <width> <height>', got {quoted(' '.join(text.split()))}")
    boxes = parsed.values[:, :4].split(parsed.counts)
    return [
        (name, size[1], size[0], image_boxes)
        for name, size, image_boxes in zip(parsed.image_paths, parsed.image_sizes, boxes)  # type: ignore[index]
    ]


def _is_zero_row(text: str) -> bool:
    numbers = parse_floats(text)
    return bool(numbers) and len(numbers) >= 4 and all(v == 0 for v in numbers)


def _parse_image_line(rule: Quoting, line_number: int, text: str) -> tuple[str, tuple[int, int] | None]:
    text = text.strip()
    if parse_floats(text) is not None:
        # A face or count line where an image path belongs: the previous count is wrong.
        raise rule.error(line_number, f"expected an image path, got numbers {quoted(text)} (is a face count above wrong?)")
    parts = text.rsplit(maxsplit=2)
    if len(parts) == 3:
        width, height = parse_count(parts[1]), parse_count(parts[2])
        if width is not None and height is not None:
            return parts[0], (height, width)  # the file says "<w> <h>"; we keep (h, w)
    return text, None
