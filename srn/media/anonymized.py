"""Anonymised files as sinks of the run loop (:func:`srn.inference.loop.run`): each image written
with its faces hidden (:func:`srn.media.anonymize.anonymize`), in its own format.

An image that RGB would not hold whole (frames, pages, an alpha channel, 16 bits:
:func:`srn.media.image_file.what_rgb_loses`) is rewritten from the file itself
(:func:`srn.media.image_file.anonymize_image_file`), its first frame with the boxes the run found and
every other frame with the detector's. Videos are hidden by a :class:`srn.media.video.VideoSink`
whose ``render`` is :meth:`Hide.__call__`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from srn.errors import SRNError
from srn.inference.loop import BaseSink, Item, ItemFailed, failure_line
from srn.inference.results import Faces, write_image
from srn.inference.sinks import register_sink
from srn.media.anonymize import anonymize
from srn.media.image_file import anonymize_image_file, what_rgb_loses

__all__ = ["AnonymizedImageSink", "Hide"]


@dataclass(frozen=True)
class Hide:
    """How faces are hidden (see :func:`srn.media.anonymize.anonymize`); called as a video sink's
    ``render(image, faces)``."""

    method: str = "blur"
    mask: str = "box"
    mask_scale: float = 1.3

    def __call__(self, image: Any, faces: Faces) -> Any:
        return anonymize(image, faces.boxes, method=self.method, mask=self.mask, mask_scale=self.mask_scale)


@register_sink("anonymized")
class AnonymizedImageSink(BaseSink):
    """Each image with its faces hidden, written to ``target(item)``.

    Args:
        target: the output file of an item.
        detector: finds the faces of an image's other frames and pages.
        hide: how faces are hidden.
        warn: told, in one line naming the image, what the written file could not keep.
    """

    def __init__(self, target: Callable[[Item], Path], detector: Any, hide: Hide,
                 warn: Callable[[str], None] = lambda line: None) -> None:
        self.target, self.detector, self.hide, self.warn = target, detector, hide, warn

    def _boxes(self, frames: list[np.ndarray]) -> list[Any]:
        return [faces.boxes for faces in self.detector.detect(frames)]

    def write(self, faces: Faces, item: Item | None = None) -> Path:
        assert item is not None
        source, target = Path(item.source), self.target(item)
        try:
            if what_rgb_loses(source):  # frames, pages, alpha or 16 bits: rewritten from the file itself
                notes = anonymize_image_file(source, target, self._boxes, method=self.hide.method, mask=self.hide.mask,
                                             mask_scale=self.hide.mask_scale, first_boxes=faces.boxes)
                for note in notes:
                    self.warn(f"{source}: {note}")
            else:
                write_image(target, self.hide(faces.image, faces))
        except (OSError, SRNError, ValueError) as exc:
            raise ItemFailed(failure_line(target, exc)) from None
        return target
