"""The face target of one image: what datasets yield, transforms carry and the criterion reads."""

from __future__ import annotations

from typing import TypedDict

from torch import Tensor

__all__ = ["Sample", "Target"]


class _Boxes(TypedDict):
    boxes: Tensor


class Target(_Boxes, total=False):
    """One image's faces. Only ``boxes`` is required: the criterion takes a missing ``ignore`` as
    all False, and transforms pass keys they do not know through.

    Keys:
        boxes (Tensor[N, 4]): ``float32`` ``(x1, y1, x2, y2)`` pixels, continuous coordinates (a WIDER
            ``x y w h`` becomes ``(x, y, x + w, y + h)``, no +1). Inside a transform pipeline, a
            ``tv_tensors.BoundingBoxes``.
        ignore (Tensor[N]): ``bool``; an ignored face is neither a positive nor a negative in training
            (WIDER ``invalid`` faces, COCO crowds, faces too small after augmentation).
        image_id (str): the image path as written in the annotation file.
        labels (Tensor[N]): per-box labels, filtered with the boxes when a transform drops some.
    """

    ignore: Tensor
    image_id: str
    labels: Tensor


# A dataset item: the uint8 (3, H, W) image and its target.
Sample = tuple[Tensor, Target]
