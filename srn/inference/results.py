"""What :meth:`srn.inference.Detector.detect` returns: :class:`Faces` for one image, and the
:class:`Face` objects it iterates over.

``Faces`` holds the boxes and scores on the CPU and a reference to the image the detector decoded,
so that it can draw itself (:meth:`Faces.plot`, :meth:`Faces.save`) and cut faces out
(:meth:`Faces.crops`) without reading the file again. That reference costs ``3 * H * W`` bytes per
result (36 MB for a 12-megapixel photo) for as long as the result lives: a list from
``detect(list_of_paths)`` keeps every image, :meth:`Detector.stream <srn.inference.Detector.stream>`
only the batch in flight. ``faces.image = None`` lets it go; plot, save and crops then raise.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np
import PIL.Image
import torch
from torch import Tensor

from srn.atomic import atomic_file
from srn.errors import OutputPathError
from srn.inference.draw import draw_faces
from srn.postprocess import Detections

__all__ = ["Face", "Faces", "expand_boxes", "write_image"]

JPEG_QUALITY = 95


def expand_boxes(boxes: Tensor, margin: float, width: int, height: int) -> Tensor:
    """Boxes grown by ``margin`` times their size on each side, as whole-pixel regions in the image.

    A box ``x1, y1, x2, y2`` of size ``w, h`` becomes ``floor(x1 - margin * w), floor(y1 - margin * h),
    ceil(x2 + margin * w), ceil(y2 + margin * h)``, clipped to the image and at least one pixel wide
    and high; ``image[:, y1:y2, x1:x2]`` is then the region. Growing a box ``s`` times around its
    centre is ``margin = (s - 1) / 2``.

    Args:
        boxes (Tensor[D, 4]): x1, y1, x2, y2 in pixels.
        margin: fraction of the box's width (height) added left and right (above and below).
        width, height: the image size.

    Returns:
        regions (Tensor[D, 4]): int64 x1, y1, x2, y2 with ``0 <= x1 < x2 <= width`` and
        ``0 <= y1 < y2 <= height``.
    """
    boxes = boxes.detach().to("cpu", torch.float64).reshape(-1, 4)
    size = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).repeat(1, 2)  # (D, 2) -> (D, 4): w, h, w, h
    grown = boxes + size * torch.tensor([-margin, -margin, margin, margin], dtype=torch.float64)
    low = grown[:, :2].floor().long()
    high = grown[:, 2:].ceil().long()
    limit = torch.tensor([width, height])
    low = torch.minimum(low.clamp(min=0), limit - 1)
    high = torch.maximum(torch.minimum(high, limit), low + 1)
    return torch.cat([low, high], dim=1)  # (D, 2) + (D, 2) -> (D, 4)


def write_image(path: str | Path, image: np.ndarray | Tensor) -> Path:
    """Write an RGB uint8 image (``ndarray (H, W, 3)`` or ``Tensor[3, H, W]``) atomically, in the
    format its suffix names (JPEG at quality 95); returns ``path``.

    The file is written beside ``path`` and renamed over it (:mod:`srn.atomic`): a symbolic link at
    ``path`` is replaced, never written through, and a failure leaves no torn file.

    Raises:
        OutputPathError: the suffix names no format that can be written, or the file or its folder
            cannot be written (a file in the way of the folder, no permission, a full disk).
    """
    path = Path(path)
    image_format = PIL.Image.registered_extensions().get(path.suffix.lower())
    if image_format is None or image_format not in PIL.Image.SAVE:
        raise OutputPathError(path, f"cannot write images of type {path.suffix or '(no suffix)'!r}; use .jpg, .png, .webp, ...")
    if isinstance(image, Tensor):
        image = image.detach().cpu().permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)
    picture = PIL.Image.fromarray(np.ascontiguousarray(image))
    options: dict[str, Any] = {"quality": JPEG_QUALITY} if image_format in ("JPEG", "WEBP") else {}
    try:
        with atomic_file(path) as handle:  # every byte the encoder gives reaches the disk, or an error
            picture.save(handle, format=image_format, **options)
    except OSError as exc:
        raise OutputPathError(path, _write_failure(path, exc)) from None
    return path


def _write_failure(path: Path, exc: OSError) -> str:
    """Why ``path`` could not be written, in words: a file standing where a folder should be is the
    common case (``crops/a.jpg`` exists as a file, and ``crops/a.jpg/face_000.jpg`` is wanted)."""
    if isinstance(exc, FileExistsError | NotADirectoryError):
        for folder in path.parents:
            if folder.exists() and not folder.is_dir():
                return f"cannot be written: {folder} is a file, not a folder"
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"cannot be written ({reason[0].lower()}{reason[1:]})"


def _as_hwc(image: Tensor) -> np.ndarray:
    return image.detach().cpu().permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3), a view


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face.

    Attributes:
        box (Tensor[4]): x1, y1, x2, y2 in the original image's pixels (float32, CPU).
        score (float): the detector's confidence.
        index (int): its rank in :class:`Faces` (0: the highest score).
    """

    box: Tensor
    score: float
    index: int
    faces: Faces = field(repr=False)

    def crop(self, margin: float = 0.2) -> np.ndarray:
        """This face cut out of the image, as :meth:`Faces.crops` cuts it."""
        return self.faces.crops(margin, indices=[self.index])[0]

    def __repr__(self) -> str:
        x1, y1, x2, y2 = (round(v, 1) for v in self.box.tolist())
        return f"Face(box=[{x1}, {y1}, {x2}, {y2}], score={self.score:.4f})"


@dataclass(eq=False)
class Faces:
    """Detections of one image, in the original image's pixel coordinates: the post-processor's
    :class:`srn.postprocess.Detections` (:meth:`from_detections`) with the image they belong to.

    Attributes:
        boxes (Tensor[D, 4]): x1, y1, x2, y2, float32 on the CPU.
        scores (Tensor[D]): by descending score, float32 on the CPU.
        width, height: the original image size.
        source: where the image came from, set when the result is made: the image's path (or the
            name a caller gave it), or the video or live source a frame came from.
        frame, time: a video frame's number and its time in seconds from the stream's start
            (None for a photo).
        image (Tensor[3, H, W] or None): the uint8 RGB image the detector ran on, kept for
            :meth:`plot`, :meth:`save` and :meth:`crops` (see the module doc for its memory cost).
            It is the caller's own tensor when a uint8 ``Tensor[3, H, W]`` was passed; nothing here
            modifies it.
    """

    boxes: Tensor
    scores: Tensor
    width: int
    height: int
    source: str | None = None
    image: Tensor | None = field(default=None, repr=False)
    frame: int | None = None
    time: float | None = None

    def __post_init__(self) -> None:
        # Once, here: the detector leaves its results on its device, and every use below needs the
        # CPU. Outside inference mode, so that callers get ordinary tensors they may modify.
        with torch.inference_mode(False):
            self.boxes = self.boxes.detach().to("cpu", torch.float32).reshape(-1, 4).clone()
            self.scores = self.scores.detach().to("cpu", torch.float32).reshape(-1).clone()
        if len(self.boxes) != len(self.scores):
            raise ValueError(f"Faces: {len(self.boxes)} boxes but {len(self.scores)} scores")
        if self.image is not None and (self.image.dtype != torch.uint8 or tuple(self.image.shape) != (3, self.height, self.width)):
            raise ValueError(
                f"Faces: the image must be uint8 of shape (3, {self.height}, {self.width}), "
                f"got {self.image.dtype} of shape {tuple(self.image.shape)}"
            )

    @classmethod
    def from_detections(cls, detections: Detections, width: int, height: int, source: str | None = None,
                        image: Tensor | None = None, frame: int | None = None, time: float | None = None) -> Faces:
        """The :class:`Faces` of one image's :class:`srn.postprocess.Detections`, whose boxes are
        already in the original image's pixels (:meth:`srn.inference.Detector.detect` maps them)."""
        return cls(detections.boxes, detections.scores, width, height, source, image, frame, time)

    def __len__(self) -> int:
        return int(self.scores.numel())

    def __iter__(self) -> Iterator[Face]:
        return (self[i] for i in range(len(self)))

    @overload
    def __getitem__(self, index: int) -> Face: ...
    @overload
    def __getitem__(self, index: slice) -> Faces: ...
    def __getitem__(self, index: int | slice) -> Face | Faces:
        """``faces[i]``: the i-th :class:`Face`; ``faces[:3]``: the three best as :class:`Faces`."""
        if isinstance(index, slice):
            return Faces(self.boxes[index], self.scores[index], self.width, self.height, self.source, self.image,
                         self.frame, self.time)
        if not -len(self) <= index < len(self):
            raise IndexError(f"face {index} of {len(self)}")
        index %= len(self)
        return Face(self.boxes[index], float(self.scores[index]), index, self)

    def __repr__(self) -> str:
        source = f", source={self.source!r}" if self.source else ""
        count = f"{len(self)} face" + ("" if len(self) == 1 else "s")
        return f"Faces({count}, {self.width}x{self.height}{source})"

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """``(boxes, scores)`` as new float32 arrays of shapes (D, 4) and (D,);
        ``np.column_stack(faces.numpy())`` is the (D, 5) ``x1, y1, x2, y2, score`` layout."""
        return self.boxes.numpy().copy(), self.scores.numpy().copy()

    def _where(self) -> dict[str, Any]:
        """Which image (or video frame) these faces are in, and its size: the head of every record."""
        if self.frame is None:
            head: dict[str, Any] = {"image": self.source}
        else:
            head = {"video": self.source, "frame": self.frame, "time": round(self.time or 0.0, 4)}
        return {**head, "width": self.width, "height": self.height}

    def _faces(self, decimals: int = 2) -> list[dict[str, Any]]:
        boxes = self.boxes.detach().cpu().double().numpy().round(decimals)
        scores = self.scores.detach().cpu().double().numpy().round(4)
        return [{"box": b.tolist(), "score": float(s)} for b, s in zip(boxes, scores)]

    def to_records(self, decimals: int = 2) -> list[dict[str, Any]]:
        """One flat record per face, ready for a table (``pandas.DataFrame(faces.to_records())``):
        ``{"image", "width", "height", "box": [x1, y1, x2, y2], "score"}`` (``"video", "frame",
        "time"`` in place of ``"image"`` for a video frame); boxes rounded to ``decimals``, scores to 4."""
        where = self._where()
        return [{**where, **face} for face in self._faces(decimals)]

    def record(self) -> dict[str, Any]:
        """This image's record, the one every output of ``srn detect`` writes (JSON Lines, JSON,
        CSV): ``{"image", "width", "height", "faces": [{"box", "score"}]}`` for a photo, and
        ``{"video", "frame", "time", "width", "height", "faces"}`` for a frame of a video or a live
        source (``time`` rounded to 4 decimals); boxes rounded to 2 decimals, scores to 4."""
        return {**self._where(), "faces": self._faces()}

    def to_json(self, indent: int | None = None) -> str:
        """:meth:`record` as JSON text: one line (``srn detect``'s JSON Lines record), or indented."""
        return json.dumps(self.record(), indent=indent, ensure_ascii=False)

    def _image(self) -> Tensor:
        if self.image is None:
            raise ValueError("these Faces hold no image (it was released or never given); plot, save and crops need it")
        return self.image

    def plot(self, scores: bool = True) -> np.ndarray:
        """The image with every box (and, with ``scores``, its score) drawn by
        :func:`srn.inference.draw.draw_faces`: a new RGB uint8 array (H, W, 3)."""
        return draw_faces(_as_hwc(self._image()), self.boxes, self.scores if scores else None)

    def save(self, path: str | Path, scores: bool = True) -> Path:
        """Write :meth:`plot`'s image to ``path`` atomically, in the format of its suffix (JPEG at
        quality 95, PNG, WebP, ...); returns ``path``.

        Raises:
            OutputPathError: ``path`` cannot be written (see :func:`write_image`).
        """
        return write_image(path, self.plot(scores))

    def crops(self, margin: float = 0.2, indices: list[int] | None = None) -> list[np.ndarray]:
        """Each face cut out of the image, best first.

        Args:
            margin: each box grows by ``margin`` times its width (height) on the left and right
                (top and bottom) before it is clipped to the image (see :func:`expand_boxes`).
            indices: only these faces (default: all).

        Returns:
            New RGB uint8 arrays (h, w, 3), one per face.
        """
        if margin < 0 or not math.isfinite(margin):
            raise ValueError(f"the crop margin must be a finite number >= 0, got {margin}")
        image = _as_hwc(self._image())
        boxes = self.boxes if indices is None else self.boxes[indices]
        regions = expand_boxes(boxes, margin, self.width, self.height).tolist()
        return [image[y1:y2, x1:x2].copy() for x1, y1, x2, y2 in regions]

    def save_crops(self, folder: str | Path, margin: float = 0.2) -> list[Path]:
        """Write each face cut out by :meth:`crops` to ``folder/face_000.jpg``, ``face_001.jpg`` ...
        (best first, JPEG at quality 95, each atomically; the folder is created); returns the files.
        ``srn detect --save-crops DIR`` writes a photo ``a/x.jpg``'s faces this way into
        ``DIR/a/x_jpg/``.

        Raises:
            OutputPathError: a file cannot be written (see :func:`write_image`).
        """
        folder = Path(folder)
        return [write_image(folder / f"face_{number:03d}.jpg", crop) for number, crop in enumerate(self.crops(margin))]
