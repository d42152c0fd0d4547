"""Delta encoding and decoding of boxes against anchors, as in the SRN release (docs/design.md, Box coding).

A box (x1, y1, x2, y2) has width ``x2 - x1`` and height ``y2 - y1`` (no +1) and centre
``((x1 + x2) / 2, (y1 + y2) / 2)``. Deltas are ``(dx, dy, dw, dh)`` with no variances or weights.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# exp() of a larger dw/dh would overflow; real outputs never come near it.
DELTA_CLAMP = math.log(1000.0 / 16)


def decode(deltas: Tensor, anchors: Tensor) -> Tensor:
    """Apply deltas to anchors.

    Args:
        deltas (Tensor[..., 4]): (dx, dy, dw, dh).
        anchors (Tensor[..., 4]): (x1, y1, x2, y2), broadcastable against ``deltas``.

    Returns:
        boxes (Tensor[..., 4]): (x1, y1, x2, y2).
    """
    widths = anchors[..., 2] - anchors[..., 0]
    heights = anchors[..., 3] - anchors[..., 1]
    ctr_x = anchors[..., 0] + 0.5 * widths
    ctr_y = anchors[..., 1] + 0.5 * heights

    dx, dy, dw, dh = deltas.unbind(-1)
    dw = dw.clamp(max=DELTA_CLAMP)
    dh = dh.clamp(max=DELTA_CLAMP)
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    pred_w = torch.exp(dw) * widths
    pred_h = torch.exp(dh) * heights
    return torch.stack(
        (
            pred_ctr_x - 0.5 * pred_w,
            pred_ctr_y - 0.5 * pred_h,
            pred_ctr_x + 0.5 * pred_w,
            pred_ctr_y + 0.5 * pred_h,
        ),
        dim=-1,
    )


def encode(boxes: Tensor, anchors: Tensor) -> Tensor:
    """The exact inverse of :func:`decode`: the deltas that take ``anchors`` to ``boxes``.

    Args:
        boxes (Tensor[..., 4]): target boxes (x1, y1, x2, y2).
        anchors (Tensor[..., 4]): anchors (x1, y1, x2, y2), broadcastable against ``boxes``.

    Returns:
        deltas (Tensor[..., 4]): (dx, dy, dw, dh).
    """
    widths = anchors[..., 2] - anchors[..., 0]
    heights = anchors[..., 3] - anchors[..., 1]
    ctr_x = anchors[..., 0] + 0.5 * widths
    ctr_y = anchors[..., 1] + 0.5 * heights

    gt_widths = boxes[..., 2] - boxes[..., 0]
    gt_heights = boxes[..., 3] - boxes[..., 1]
    gt_ctr_x = boxes[..., 0] + 0.5 * gt_widths
    gt_ctr_y = boxes[..., 1] + 0.5 * gt_heights

    return torch.stack(
        (
            (gt_ctr_x - ctr_x) / widths,
            (gt_ctr_y - ctr_y) / heights,
            torch.log(gt_widths / widths),
            torch.log(gt_heights / heights),
        ),
        dim=-1,
    )
