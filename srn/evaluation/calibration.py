"""Score calibration: Platt scaling of a detector's scores, fitted on labelled photos
(docs/design.md, "Inference": score calibration).

A detection's calibrated score is ``sigmoid(a * z + b)``, ``z`` the network's final logit; ``a`` and
``b`` maximise the likelihood of "this detection is a labelled face" over a set of detections
(Platt, 1999). :func:`true_positives` gives those labels (greedy matching at IoU 0.5, best score
first, as the AP protocols match), :func:`fit_platt` the two numbers, :func:`reliability` the check:
per score bin, the mean score against the share of true faces, and the expected calibration error.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

DEFAULT_BINS = (0.05, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0)


def true_positives(boxes: Tensor, scores: Tensor, labels: Tensor, iou_thresh: float = 0.5) -> np.ndarray:
    """Whether each detection (in any order) takes a still-free labelled face at IoU >= ``iou_thresh``,
    the detections taken best score first.

    Args:
        boxes (Tensor[D, 4]), scores (Tensor[D]): the detections of one image.
        labels (Tensor[G, 4]): its labelled faces.

    Returns:
        bool array of length D.
    """
    hits = np.zeros(len(boxes), dtype=bool)
    if len(boxes) and len(labels):
        iou = box_iou(boxes.double(), labels.double())  # (D, G)
        taken = torch.zeros(len(labels), dtype=torch.bool)
        for index in torch.argsort(scores, descending=True).tolist():
            row = torch.where(taken, -1.0, iou[index])
            best = int(row.argmax())
            if row[best] >= iou_thresh:
                taken[best] = True
                hits[index] = True
    return hits


def fit_platt(logits: np.ndarray, hits: np.ndarray) -> tuple[float, float]:
    """``(a, b)`` maximising the likelihood of ``hits`` under ``sigmoid(a * logits + b)``.

    Raises:
        ValueError: fewer than two detections, or only one kind (all true or all false), which
            leaves the fit undetermined.
    """
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    y = torch.as_tensor(np.asarray(hits, dtype=np.float64))
    if z.numel() < 2 or y.min() == y.max():
        raise ValueError(f"score calibration needs true and false detections; got {int(y.sum())} true of {z.numel()}")
    params = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([params], max_iter=200, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(params[0] * z + params[1], y)
        loss.backward()
        return loss

    optimizer.step(closure)
    a, b = (float(v) for v in params.detach())
    return a, b


def reliability(scores: np.ndarray, hits: np.ndarray, bins: Sequence[float] = DEFAULT_BINS) -> tuple[list[dict], float]:
    """Per score bin ``[low, high)`` (the last one closed): detections, mean score, share of true
    faces; and the expected calibration error over the binned detections (their count-weighted
    mean gap between mean score and true share)."""
    scores, hits = np.asarray(scores, dtype=np.float64), np.asarray(hits, dtype=bool)
    rows, gap, counted = [], 0.0, 0
    edges = list(bins)
    for index, (low, high) in enumerate(zip(edges, edges[1:])):
        last = index == len(edges) - 2
        inside = (scores >= low) & ((scores <= high) if last else (scores < high))
        if inside.any():
            mean, share = float(scores[inside].mean()), float(hits[inside].mean())
            rows.append({"bin": [low, high], "detections": int(inside.sum()), "mean_score": mean, "true_share": share})
            gap += int(inside.sum()) * abs(mean - share)
            counted += int(inside.sum())
    return rows, gap / max(counted, 1)
