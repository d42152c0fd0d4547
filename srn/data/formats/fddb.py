"""FDDB files: the one parser of their ``name / count / rows`` blocks.

Ellipse lists (``FDDB-fold-XX-ellipseList.txt``, or the corrected single file
``FDDB_annotation_ellipseList_new_SFD.txt``) hold, per image, its name without extension, the
ellipse count, then one ``major_radius minor_radius angle center_x center_y 1`` line per face.
Detection files, which FDDB's evaluation reads, are the same blocks with ``x y w h score`` lines;
:func:`read_fddb_blocks` reads both.

:func:`read_fddb_ellipses` gives evaluation the ellipses as written; :func:`parse_fddb_ellipses`
gives training each ellipse's axis-aligned bounding box as a :class:`FaceRecord`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from srn.data.formats.common import (
    FaceRecord,
    FileError,
    Quoting,
    build_records,
    parse_count,
    parse_finite,
    quoted,
    read_lines,
)
from srn.errors import AnnotationError, InputPathError
from srn.paths import check_input_file

__all__ = ["ellipses_to_boxes", "parse_fddb_ellipses", "read_fddb_blocks", "read_fddb_ellipses"]


def read_fddb_blocks(
    path: str | os.PathLike[str], num_fields: tuple[int, ...], what: str, error: FileError = AnnotationError
) -> Iterator[tuple[str, np.ndarray, int]]:
    """Parse ``name / count / rows`` blocks: ``(name, rows, line number of the name)`` per block.

    Blank and ``#`` lines are skipped (:func:`~srn.data.formats.common.read_lines`). Rows are
    float64 ``(count, max(num_fields))``; a row of fewer fields is zero-padded. Every number must
    be finite.

    Args:
        num_fields: the numbers a row may have, e.g. ``(5, 6)`` for ellipses.
        what: the row's name in messages ("ellipse", "detection").
        error: ``error(path, line, reason)`` makes the exception: :class:`AnnotationError` for
            ground truth, ``PredictionFormatError`` for detections.
    """
    lines, num_lines = read_lines(path, error)
    rule = Quoting(path, f"an FDDB {what} list", lines, error)  # what an error may quote of the file
    i = 0
    while i < len(lines):
        line_number, text = lines[i]
        name = text.strip()
        if i + 1 >= len(lines):
            raise rule.error(line_number + 1, f"missing the {what} count after {quoted(name)}", f"missing the {what} count")
        count = parse_count(lines[i + 1][1])
        if count is None:
            raise rule.error(lines[i + 1][0], f"expected the {what} count of {quoted(name)}, got {quoted(lines[i + 1][1])}",
                             f"expected the {what} count")
        if i + 2 + count > len(lines):
            raise rule.error(num_lines + 1, f"{quoted(name)[1:-1]}: the count says {count} {what} lines, the file ends after "
                                            f"{len(lines) - i - 2}")
        rows = np.zeros((count, max(num_fields)), dtype=np.float64)
        for r in range(count):
            row_number, row_text = lines[i + 2 + r]
            tokens = row_text.split()
            if len(tokens) not in num_fields:
                fields = " or ".join(map(str, num_fields))
                raise rule.error(row_number, f"expected {fields} numbers per {what} line, got {len(tokens)}")
            rows[r, : len(tokens)] = [parse_finite(t, path, row_number, error) for t in tokens]
        yield name, rows, line_number
        i += 2 + count


def _read_ellipse_files(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
) -> list[tuple[Path, dict[str, np.ndarray]]]:
    """Per file, in the order given: its ``{image name: float64[G, 5]}``, checked across files."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    first_seen: dict[str, str] = {}
    files: list[tuple[Path, dict[str, np.ndarray]]] = []
    for path in paths:
        path = check_input_file(path, what="FDDB ellipse list")
        if any(os.path.samefile(path, earlier) for earlier, _ in files):
            raise InputPathError(path, "appears twice in the list of ellipse files")
        annotations: dict[str, np.ndarray] = {}
        for name, rows, line_no in read_fddb_blocks(path, (5, 6), "ellipse", AnnotationError):
            if name in first_seen:
                raise AnnotationError(path, line_no, f"image {quoted(name)[1:-1]} is annotated twice (also in {first_seen[name]})")
            annotations[name] = rows[:, :5]
            first_seen[name] = str(path)
        if not annotations:
            raise AnnotationError(path, None, "holds no annotated image")
        files.append((path, annotations))
    return files


def read_fddb_ellipses(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
) -> dict[str, np.ndarray]:
    """Read ellipse annotation files (``major minor angle cx cy 1`` rows).

    Returns:
        ``{image name: float64[G, 5]}`` with rows ``(major_radius, minor_radius, angle_rad, cx, cy)``,
        in file order.

    Raises:
        InputPathError: a file is missing or unreadable, or the same file is listed twice.
        AnnotationError: ``"<file>:<line>: ..."``, a malformed line or an image annotated twice.
    """
    return {name: ellipses for _, annotations in _read_ellipse_files(paths) for name, ellipses in annotations.items()}


def ellipses_to_boxes(ellipses: Tensor) -> Tensor:
    """Axis-aligned bounding boxes of rotated ellipses, as FDDB annotates faces.

    An FDDB ellipse has its major radius ``a`` along the direction ``angle`` (radians) and its minor
    radius ``b`` across it, so its half-extents are ``sqrt((a cos t)^2 + (b sin t)^2)`` in x and
    ``sqrt((a sin t)^2 + (b cos t)^2)`` in y.

    Args:
        ellipses (Tensor[N, 5]): ``(major_radius, minor_radius, angle, center_x, center_y)``.

    Returns:
        boxes (Tensor[N, 4]): ``(x1, y1, x2, y2)``, same dtype.
    """
    a, b, angle, cx, cy = ellipses.unbind(dim=1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    half_w = torch.sqrt((a * cos) ** 2 + (b * sin) ** 2)
    half_h = torch.sqrt((a * sin) ** 2 + (b * cos) ** 2)
    return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=1)


def parse_fddb_ellipses(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *, image_ext: str = ".jpg"
) -> list[FaceRecord]:
    """FDDB ellipse lists as training records: each ellipse becomes its bounding box
    (:func:`ellipses_to_boxes`). Image sizes are not in the file, so clipping waits until the image
    is decoded.

    Args:
        paths: one ellipse-list file or several (for example the ten folds).
        image_ext: appended to each name to form ``FaceRecord.image_path``.

    Returns:
        One record per image, in file order.
    """
    records: list[FaceRecord] = []
    for path, annotations in _read_ellipse_files(paths):
        ellipses = [torch.from_numpy(e) for e in annotations.values()]
        boxes = ellipses_to_boxes(torch.cat(ellipses).reshape(-1, 5))  # [(G_i, 5)] -> (sum G_i, 5) -> (sum G_i, 4)
        counts = [len(e) for e in ellipses]
        ignore = torch.zeros(len(boxes), dtype=torch.bool)
        names = [name + image_ext for name in annotations]
        records.extend(build_records(path, names, [None] * len(names), counts, boxes, ignore, None))
    return records
