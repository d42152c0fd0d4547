"""One parser per annotation format; training, evaluation and the analysis all read through them.

- :mod:`~srn.data.formats.wider`: WIDER FACE ``*_bbx_gt.txt`` files, ``labels.txt`` lists and the
  ``<event>/<name>.jpg <w> <h>`` list with image sizes;
- :mod:`~srn.data.formats.fddb`: FDDB ellipse lists (and the same blocks as detection files);
- :mod:`~srn.data.formats.coco`: COCO-format detection JSON;
- :mod:`~srn.data.formats.common`: the per-image :class:`FaceRecord` they return, text reading (a
  byte-order mark at the start is dropped), strict count lines and the clean-up of boxes.

Every parser raises :class:`srn.errors.AnnotationError`, one line naming the file and line.
"""

from srn.data.formats.coco import parse_coco_json
from srn.data.formats.common import FaceRecord
from srn.data.formats.fddb import ellipses_to_boxes, parse_fddb_ellipses, read_fddb_ellipses
from srn.data.formats.wider import WIDER_ATTRIBUTES, parse_wider_file, read_wider_boxes

__all__ = [
    "WIDER_ATTRIBUTES",
    "FaceRecord",
    "ellipses_to_boxes",
    "parse_coco_json",
    "parse_fddb_ellipses",
    "parse_wider_file",
    "read_fddb_ellipses",
    "read_wider_boxes",
]
