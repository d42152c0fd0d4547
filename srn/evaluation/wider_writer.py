"""Detections written in the WIDER FACE submission layout, as they come: ``OUT/<event>/<image>.txt``,
one file per image (:func:`srn.evaluation.widerface.write_predictions`), each written atomically as
soon as its image is done.

The layout names a file by the image's event folder (its parent folder's name) and its name without
the image suffix, so two inputs can claim one file: :class:`WiderWriter` refuses them when it is
made, before any image is read. The file's first line is the image's name, so a name that holds a
line break cannot be written in this layout; it is refused the same way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from srn.errors import InputPathError, OutputCollisionError
from srn.evaluation.widerface import image_stem, write_predictions
from srn.inference.loop import Item
from srn.inference.results import Faces
from srn.inference.sinks import register_sink
from srn.inference.writers import Record, RecordWriter

__all__ = ["WiderWriter"]


def _target(key: str) -> str:
    """The file, below the output folder, that ``"<event>/<image name>"`` is written to."""
    event, _, name = key.rpartition("/")
    return f"{event}/{image_stem(name)}.txt"


@register_sink("wider")
class WiderWriter(RecordWriter):
    """The WIDER FACE submission layout under the folder ``path`` (see the module doc).

    Args:
        path: the output folder, checked by the caller (:func:`srn.paths.check_output_dir`).
        images: every image that will be written, to refuse two on one file now.

    Raises:
        InputPathError: an image that is in no event folder (at the file system's root), or whose
            name holds a line break.
        OutputCollisionError: two images that would be written to one file.
    """

    def __init__(self, path: Path, images: Sequence[Path]) -> None:
        super().__init__(Path(path))
        self.keys: dict[str, str] = {}  # image -> "<event>/<image name>"
        first: dict[str, Path] = {}
        for image in images:
            event = Path(os.path.abspath(image)).parent.name
            if not event:
                raise InputPathError(image, "the WIDER format names files by their event folder, and this image is in none")
            if any(mark in image.name for mark in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"):
                raise InputPathError(image, "the WIDER format writes an image's name on a line of its own, and this "
                                            "name holds a line break; rename it, or write the detections as JSON Lines or CSV")
            key = f"{event}/{image.name}"
            target = _target(key)
            if target in first:
                raise OutputCollisionError(first[target], image, Path(path) / target,
                                           "the WIDER format names files by event folder and image name")
            first[target] = image
            self.keys[str(image)] = key

    def write(self, faces: Faces, item: Item | None = None) -> None:
        """Write the file of ``faces.source``, with the boxes and scores as the detector gave them."""
        assert self.path is not None and faces.source is not None
        write_predictions(self.path, {self.keys[faces.source]: (faces.boxes.numpy(), faces.scores.numpy())})

    def write_record(self, record: Record) -> None:
        raise TypeError("the WIDER layout is written from Faces (unrounded boxes), not from records")
