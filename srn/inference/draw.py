"""The one way detections are drawn: :meth:`srn.inference.Faces.plot`, ``srn detect --save-vis`` and
annotated videos (:mod:`srn.media.video`) all call :func:`draw_faces`.

Each face gets a lime rectangle and, above its top-left corner (inside the box where there is no
room above), its score in black on a lime label. Nothing is drawn elsewhere: pixels away from every
box and label keep their values.
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

__all__ = ["BOX_COLOUR", "draw_faces", "line_width"]

BOX_COLOUR = (0, 255, 0)  # lime
_TEXT_COLOUR = (0, 0, 0)

ImageT = TypeVar("ImageT", np.ndarray, Tensor)


def line_width(height: int, width: int) -> int:
    """Rectangle thickness in pixels: 2 up to 800 pixels on the longer side, then 1 more per 400."""
    return max(2, round(max(height, width) / 400))


@functools.lru_cache(maxsize=16)
def _font(size: int) -> PIL.ImageFont.ImageFont | PIL.ImageFont.FreeTypeFont:
    # Pillow's bundled scalable font where FreeType is available, its fixed bitmap font otherwise.
    return PIL.ImageFont.load_default(size=size)


def draw_faces(image: ImageT, boxes: Tensor | np.ndarray, scores: Tensor | np.ndarray | None = None) -> ImageT:
    """A copy of ``image`` with each face's box and score drawn on it.

    Args:
        image: RGB uint8, either ``Tensor[3, H, W]`` or ``ndarray (H, W, 3)``; it is not modified.
        boxes (Tensor[D, 4] or ndarray (D, 4)): x1, y1, x2, y2 in pixels.
        scores (Tensor[D] or ndarray (D,)): written above each box as ``0.82``; None draws boxes only.

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
    font = _font(max(10, round(max(height, width) / 64)))
    for index, (x1, y1, x2, y2) in enumerate(np.round(boxes).astype(np.int64).tolist()):
        # PIL's rectangle includes its far corner; the box's x2, y2 is the first pixel past it.
        draw.rectangle((x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)), outline=BOX_COLOUR, width=thickness)
        if scores is None:
            continue
        text = f"{scores[index]:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        label_w, label_h = right - left + 2 * thickness, bottom - top + 2 * thickness
        label_y = y1 - label_h if y1 - label_h >= 0 else y1
        draw.rectangle((x1, label_y, x1 + label_w - 1, label_y + label_h - 1), fill=BOX_COLOUR)
        draw.text((x1 + thickness - left, label_y + thickness - top), text, fill=_TEXT_COLOUR, font=font)
    drawn = np.array(canvas)  # writable, unlike np.asarray of a PIL image
    if not as_tensor:
        return drawn  # type: ignore[return-value]
    return torch.from_numpy(drawn).permute(2, 0, 1).to(image.device)  # (H, W, 3) -> (3, H, W)
