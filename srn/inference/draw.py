"""The one way detections are drawn: :meth:`srn.inference.Faces.plot`, ``srn detect --save-vis`` and
annotated videos (:mod:`srn.media.video`) all call :func:`draw_faces`.

Each face gets a lime rectangle and its score in black on a lime label. The label's font grows
with the face and with the photo (:func:`label_font_size`), so that it stays readable when a large
photo is shown shrunk to a screen, and it is placed where it covers no other face if there is such
a place (:func:`place_labels`): above the box, else below it, else inside it. Nothing is drawn
elsewhere: pixels away from every box and label keep their values.
"""

from __future__ import annotations

import functools
from typing import TypeVar

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import torch
from torch import Tensor

__all__ = ["BOX_COLOUR", "draw_faces", "label_font_size", "line_width", "place_labels"]

BOX_COLOUR = (0, 255, 0)  # lime
_TEXT_COLOUR = (0, 0, 0)

ImageT = TypeVar("ImageT", np.ndarray, Tensor)


def line_width(height: int, width: int) -> int:
    """Rectangle thickness in pixels: 2 up to 800 pixels on the longer side, then 1 more per 400."""
    return max(2, round(max(height, width) / 400))


def label_font_size(box_height: float, height: int, width: int) -> int:
    """The score label's font size in pixels, for a face ``box_height`` pixels tall in a
    ``height`` x ``width`` photo.

    A third of the box's height, kept between a readable minimum and a maximum that both grow with
    the photo: at least 12 pixels and 1/120 of the longer side (a 4000-pixel photo shown 1000
    pixels wide still shows 8-pixel text), at most 1/30 of the longer side (a face that fills the
    photo does not get a label the size of a headline).
    """
    longer = max(height, width)
    low = max(12, round(longer / 120))
    high = max(low, round(longer / 30))
    return int(min(high, max(low, round(box_height / 3))))


@functools.lru_cache(maxsize=64)
def _font(size: int) -> PIL.ImageFont.ImageFont | PIL.ImageFont.FreeTypeFont:
    # Pillow's bundled scalable font where FreeType is available, its fixed bitmap font otherwise.
    return PIL.ImageFont.load_default(size=size)


def _overlap(rects: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Intersection areas of every rectangle of ``rects`` (K, 4) with every one of ``others``
    (M, 4), all x1, y1, x2, y2 with x2, y2 exclusive; returns (K, M)."""
    if len(others) == 0:
        return np.zeros((len(rects), 0))
    left = np.maximum(rects[:, None, 0], others[None, :, 0])
    top = np.maximum(rects[:, None, 1], others[None, :, 1])
    right = np.minimum(rects[:, None, 2], others[None, :, 2])
    bottom = np.minimum(rects[:, None, 3], others[None, :, 3])
    return np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)


def place_labels(boxes: np.ndarray, label_sizes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Where each face's label goes: the top-left corner of a ``label_sizes[i]`` (w, h) rectangle
    near ``boxes[i]``, inside the image.

    Labels are placed in the order given (best score first, as :class:`srn.inference.Faces` holds
    them). Each takes the first of these spots that overlaps no other face's box and no label
    already placed: above the box at its left edge, above at its right edge, below at the left,
    below at the right, inside at the top left, inside at the bottom left. Where every spot
    overlaps something (a crowd), it takes the one that covers the least area of other faces and
    labels.

    Args:
        boxes (ndarray (D, 4)): x1, y1, x2, y2 in pixels.
        label_sizes (ndarray (D, 2)): each label's width and height in pixels.

    Returns:
        ndarray (D, 2) of int64: x, y of each label's top-left pixel.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    sizes = np.asarray(label_sizes, dtype=np.float64).reshape(-1, 2)
    placed = np.zeros((len(boxes), 4))
    corners = np.zeros((len(boxes), 2), dtype=np.int64)
    for index, ((x1, y1, x2, y2), (w, h)) in enumerate(zip(boxes, sizes)):
        spots = np.array([
            (x1, y1 - h), (x2 - w, y1 - h),  # above
            (x1, y2), (x2 - w, y2),  # below
            (x1, y1), (x1, y2 - h),  # inside
        ])
        # Keep each spot inside the image; a spot pushed back over its own box is still a spot.
        spots[:, 0] = np.clip(spots[:, 0], 0, max(0, width - w))
        spots[:, 1] = np.clip(spots[:, 1], 0, max(0, height - h))
        spots = np.round(spots)
        rects = np.column_stack([spots, spots + (w, h)])
        others = np.delete(boxes, index, axis=0)
        cost = _overlap(rects, others).sum(axis=1) + _overlap(rects, placed[:index]).sum(axis=1)
        best = int(np.flatnonzero(cost == cost.min())[0])
        placed[index] = rects[best]
        corners[index] = spots[best]
    return corners


def draw_faces(image: ImageT, boxes: Tensor | np.ndarray, scores: Tensor | np.ndarray | None = None) -> ImageT:
    """A copy of ``image`` with each face's box and score drawn on it.

    Args:
        image: RGB uint8, either ``Tensor[3, H, W]`` or ``ndarray (H, W, 3)``; it is not modified.
        boxes (Tensor[D, 4] or ndarray (D, 4)): x1, y1, x2, y2 in pixels.
        scores (Tensor[D] or ndarray (D,)): written on a label by each box as ``0.82``
            (:func:`place_labels` says where); None draws boxes only.

    Returns:
        The drawn image, of the type, layout and device of ``image``.
    """
    as_tensor = isinstance(image, Tensor)
    if as_tensor:
        if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
            raise ValueError(f"draw_faces: expected a uint8 Tensor[3, H, W], got {image.dtype} of shape {tuple(image.shape)}")
        array = image.detach().cpu().permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)
    else:
        array = np.asarray(image)
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise ValueError(f"draw_faces: expected a uint8 array (H, W, 3), got {array.dtype} of shape {array.shape}")
    boxes = boxes.detach().cpu().double().numpy() if isinstance(boxes, Tensor) else np.asarray(boxes, dtype=np.float64)
    boxes = boxes.reshape(-1, 4)
    if scores is not None:
        scores = scores.detach().cpu().double().numpy() if isinstance(scores, Tensor) else np.asarray(scores, dtype=np.float64)
        if scores.shape != (len(boxes),):
            raise ValueError(f"draw_faces: {len(boxes)} boxes but scores of shape {scores.shape}")

    height, width = array.shape[:2]
    canvas = PIL.Image.fromarray(np.ascontiguousarray(array))
    draw = PIL.ImageDraw.Draw(canvas)
    thickness = line_width(height, width)
    pixels = np.round(boxes).astype(np.int64)
    for x1, y1, x2, y2 in pixels.tolist():
        # PIL's rectangle includes its far corner; the box's x2, y2 is the first pixel past it.
        draw.rectangle((x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)), outline=BOX_COLOUR, width=thickness)
    if scores is None or len(boxes) == 0:
        return _back(canvas, image, as_tensor)

    # Labels after every box, so that no box outline is drawn over a label.
    texts, fonts, sizes, offsets = [], [], [], []
    for (x1, y1, x2, y2), score in zip(boxes.tolist(), scores.tolist()):
        size = label_font_size(y2 - y1, height, width)
        font = _font(size)
        text = f"{score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        pad = max(1, round(size / 8))
        texts.append(text)
        fonts.append(font)
        sizes.append((right - left + 2 * pad, bottom - top + 2 * pad))
        offsets.append((pad - left, pad - top))
    for (x, y), text, font, (w, h), (dx, dy) in zip(place_labels(boxes, np.array(sizes), height, width).tolist(),
                                                    texts, fonts, sizes, offsets):
        draw.rectangle((x, y, x + w - 1, y + h - 1), fill=BOX_COLOUR)
        draw.text((x + dx, y + dy), text, fill=_TEXT_COLOUR, font=font)
    return _back(canvas, image, as_tensor)


def _back(canvas: PIL.Image.Image, image: ImageT, as_tensor: bool) -> ImageT:
    """The drawn canvas as the caller's type: an (H, W, 3) array, or a Tensor[3, H, W] on its device."""
    drawn = np.array(canvas)  # writable, unlike np.asarray of a PIL image
    if not as_tensor:
        return drawn  # type: ignore[return-value]
    return torch.from_numpy(drawn).permute(2, 0, 1).to(image.device)  # (H, W, 3) -> (3, H, W)
