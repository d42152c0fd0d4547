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

from srn.data.formats.coco import parse_coco_json
from srn.data.formats.common import FaceRecord
from srn.data.formats.fddb import ellipses_to_boxes, parse_fddb_ellipses, read_fddb_ellipses
from srn.data.formats.wider import WIDER_ATTRIBUTES, parse_wider_file, read_wider_boxes
from srn.errors import ConfigError


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


__all__ = [
    "FORMATS",
    "WIDER_ATTRIBUTES",
    "AnnotationFormat",
    "FaceRecord",
    "check_format",
    "ellipses_to_boxes",
    "parse_coco_json",
    "parse_fddb_ellipses",
    "parse_wider_file",
    "read_fddb_ellipses",
    "read_wider_boxes",
]
