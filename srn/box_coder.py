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


def centre_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(cx, cy, w, h) of (x1, y1, x2, y2) boxes (Tensor[..., 4]), each Tensor[...]."""
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * widths, boxes[..., 1] + 0.5 * heights, widths, heights


def decode(deltas: Tensor, anchors: Tensor) -> Tensor:
    """Apply deltas to anchors.

    Args:
        deltas (Tensor[..., 4]): (dx, dy, dw, dh).
        anchors (Tensor[..., 4]): (x1, y1, x2, y2), broadcastable against ``deltas``.

    Returns:
        boxes (Tensor[..., 4]): (x1, y1, x2, y2).
    """
    ctr_x, ctr_y, widths, heights = centre_size(anchors)
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
    ctr_x, ctr_y, widths, heights = centre_size(anchors)
    gt_ctr_x, gt_ctr_y, gt_widths, gt_heights = centre_size(boxes)

    return torch.stack(
        (
            (gt_ctr_x - ctr_x) / widths,
            (gt_ctr_y - ctr_y) / heights,
            torch.log(gt_widths / widths),
            torch.log(gt_heights / heights),
        ),
        dim=-1,
    )
