"""One parser per annotation format; training, evaluation and the analysis all read through them.

- :mod:`~srn.data.formats.wider`: WIDER FACE ``*_bbx_gt.txt`` files, ``labels.txt`` lists and the
  ``<event>/<name>.jpg <w> <h>`` list with image sizes;
- :mod:`~srn.data.formats.fddb`: FDDB ellipse lists (and the same blocks as detection files);
- :mod:`~srn.data.formats.coco`: COCO-format detection JSON;
- :mod:`~srn.data.formats.common`: the per-image :class:`FaceRecord` they return, text reading (a
  byte-order mark at the start is dropped), strict count lines and the clean-up of boxes.

Every parser raises :class:`srn.errors.AnnotationError`, one line naming the file and line.

:data:`FORMATS` is the one list of formats that a config's ``format`` may name (``data.train``,
``train.eval_format``): a name maps to its parser, called on the annotation files, and says whether
the source needs an image folder. A new format is a parser module here and one entry in it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from srn.data.formats.coco import parse_coco_json
from srn.data.formats.common import FaceRecord
from srn.data.formats.fddb import ellipses_to_boxes, parse_fddb_ellipses, read_fddb_ellipses
from srn.data.formats.wider import WIDER_ATTRIBUTES, parse_wider_file, read_wider_boxes
from srn.errors import AnnotationError, ConfigError


@dataclass(frozen=True)
class AnnotationFormat:
    """A registered annotation format.

    Attributes:
        parse: ``parse(files, ignore_invalid) -> records``; ``files`` holds one annotation file, or
            several when ``many_files``; ``ignore_invalid`` is the source's option of that name.
        many_files: the source's ``annotations`` may be a glob or a comma-separated list of files.
        needs_images: the source must name its image folder (else it defaults to the annotation
            file's folder).
        file_kind: what an annotation file is called in messages.
    """

    parse: Callable[[Sequence[str | os.PathLike[str]], bool], list[FaceRecord]]
    many_files: bool = False
    needs_images: bool = True
    file_kind: str = "annotation file"


FORMATS: dict[str, AnnotationFormat] = {
    "wider": AnnotationFormat(lambda files, ignore_invalid: parse_wider_file(files[0], ignore_invalid=ignore_invalid), needs_images=False),
    "fddb": AnnotationFormat(lambda files, ignore_invalid: parse_fddb_ellipses(files), many_files=True, file_kind="FDDB ellipse file"),
    "coco": AnnotationFormat(lambda files, ignore_invalid: parse_coco_json(files[0])),
}


def check_format(name: str, key: str = "data.train.format") -> AnnotationFormat:
    """The registered format ``name``.

    Raises:
        ConfigError: ``"<key>: must be one of wider, fddb, coco, got 'x'"``.
    """
    if name not in FORMATS:
        raise ConfigError(f"{key}: must be one of {', '.join(FORMATS)}, got {name!r}")
    return FORMATS[name]


def detect_format(path: str | os.PathLike[str]) -> str:
    """The name in :data:`FORMATS` of the annotation file ``path``, from its suffix or its content.

    ``.json``, or text that starts with ``{`` or ``[``, is ``coco``; a text list whose first box line
    holds six numbers (``major minor angle cx cy 1``) is ``fddb``; any other text is ``wider``. Only
    the first few kilobytes are read. Choosing the parser this way means a COCO file is never read
    as a WIDER list (whose error would quote the JSON).

    Raises:
        AnnotationError: ``path`` is a MATLAB ``.mat`` file or not text; one line naming it.
        InputPathError: ``path`` is missing or not a readable file.
    """
    from srn.paths import check_input_file

    path = check_input_file(path, what="annotation file")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "coco"
    with open(path, "rb") as handle:
        head = handle.read(8192)
    if suffix == ".mat" or head.startswith(b"MATLAB"):
        raise AnnotationError(path, None, "a MATLAB .mat file, not a face list (AFW and PASCAL Face .mat files: srn eval afw/pascal)")
    text = head.removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="replace")
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        return "coco"
    if "\x00" in text:
        raise AnnotationError(path, None, "not a text file (a WIDER or FDDB list, or a COCO .json, is expected)")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    # name, count, then the first box line (the last line may be cut by the 8 KB read).
    if len(lines) >= 3 and lines[1].isdigit() and int(lines[1]) > 0 and len(lines[2].split()) == 6:
        return "fddb"
    return "wider"


__all__ = [
    "FORMATS",
    "WIDER_ATTRIBUTES",
    "AnnotationFormat",
    "FaceRecord",
    "check_format",
    "detect_format",
    "ellipses_to_boxes",
    "parse_coco_json",
    "parse_fddb_ellipses",
    "parse_wider_file",
    "read_fddb_ellipses",
    "read_wider_boxes",
]
