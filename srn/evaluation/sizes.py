"""AP and recall of plain labelled boxes, overall and per face size.

The benchmarks' protocols (WIDER FACE, FDDB, AFW, PASCAL) each fix their own matching rules; this
module scores detections against any list of labelled boxes (a held-out split, a user's own labels)
the way COCO scores an area range, with the face size as the range:

- a face's **size** is the shorter side of its labelled box, in the pixels of the image evaluated;
  the bins are half-open, ``[low, high)``;
- each detection, in descending score order, takes the labelled face it overlaps most (IoU at least
  ``iou``, the plain IoU of ``torchvision.ops.box_iou``); the first detection on a face in the bin is
  a true positive, later ones are false positives (duplicates);
- a detection on a face outside the bin, or on a face marked ignored, counts for nothing; an
  unmatched detection is a false positive only when its own size falls in the bin;
- AP is VOC's (:func:`srn.evaluation.common.voc_ap`) over every detection given; recall at a score
  threshold is the share of the bin's faces with a true positive at or above it.

Labels of partially labelled photos make AP a lower bound: an unlabelled face is a false positive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from srn.evaluation.common import voc_ap

__all__ = ["SIZE_BINS", "bin_name", "score_by_size", "size_of"]

# The face sizes a crowd photo holds: tiny, small, medium and large (shorter side, pixels).
SIZE_BINS: tuple[tuple[float, float], ...] = ((0.0, 16.0), (16.0, 32.0), (32.0, 64.0), (64.0, math.inf))


def bin_name(low: float, high: float) -> str:
    """``"<16"``, ``"16-32"``, ``">=64"``: the key of a bin in :func:`score_by_size`'s result."""
    if low <= 0:
        return f"<{high:g}"
    if math.isinf(high):
        return f">={low:g}"
    return f"{low:g}-{high:g}"


def size_of(boxes: torch.Tensor) -> torch.Tensor:
    """The shorter side of ``(N, 4)`` x1 y1 x2 y2 boxes."""
    return torch.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


def _as_boxes(value: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(value, dtype=np.float64) if not isinstance(value, torch.Tensor) else value).double().reshape(-1, 4)


def _match(detections: Sequence[tuple[Any, Any]], labels: Sequence[Any], iou: float):
    """Per detection, in global descending-score order: score, own size, the (image, face) it
    takes or -1, and per image the label sizes."""
    scores, sizes, face_ids, label_sizes, offsets = [], [], [], [], 0
    for (boxes, conf), gt in zip(detections, labels, strict=True):
        boxes, gt = _as_boxes(boxes), _as_boxes(gt)
        conf = torch.as_tensor(np.asarray(conf, dtype=np.float64) if not isinstance(conf, torch.Tensor) else conf).double().reshape(-1)
        if len(conf) != len(boxes):
            raise ValueError(f"{len(boxes)} boxes but {len(conf)} scores")
        face = torch.full((len(boxes),), -1, dtype=torch.int64)
        if len(boxes) and len(gt):
            overlap = box_iou(boxes, gt)
            best_iou, best = overlap.max(dim=1)
            face = torch.where(best_iou >= iou, best + offsets, face)
        scores.append(conf)
        sizes.append(size_of(boxes))
        face_ids.append(face)
        label_sizes.append(size_of(gt))
        offsets += len(gt)
    scores_t = torch.cat(scores) if scores else torch.zeros(0, dtype=torch.float64)
    order = torch.argsort(-scores_t, stable=True)
    cat = (lambda parts, dtype: torch.cat(parts) if parts else torch.zeros(0, dtype=dtype))
    return (scores_t[order], cat(sizes, torch.float64)[order], cat(face_ids, torch.int64)[order],
            cat(label_sizes, torch.float64))


def score_by_size(
    detections: Sequence[tuple[Any, Any]],
    labels: Sequence[Any],
    thresholds: Sequence[float] = (),
    bins: Sequence[tuple[float, float]] = SIZE_BINS,
    iou: float = 0.5,
    ignore: Sequence[Any] | None = None,
    curves: bool = False,
) -> dict[str, dict[str, Any]]:
    """AP and recall of ``detections`` against ``labels``, overall (``"all"``) and per size bin.

    Args:
        detections: per image, ``(boxes (K, 4) x1 y1 x2 y2, scores (K,))`` (tensors or arrays).
        labels: per image, the labelled faces ``(G, 4)`` x1 y1 x2 y2, in the same order.
        thresholds: score thresholds at which recall (and precision) are reported.
        bins: ``(low, high)`` face sizes, half-open.
        iou: the IoU a detection needs to take a face.
        ignore: per image, ``bool (G,)``: faces that count neither way (crowds, unclear faces).
        curves: also return each bin's PR curve, ``"curve": {"recall", "precision", "scores"}``
            (float64 arrays, one point per counted detection, best score first).

    Returns:
        ``{"all" | bin name: {"faces", "ap", "recall": {thr: r}, "precision": {thr: p}}}``;
        ``ap`` is NaN for a bin without faces.
    """
    scores, det_sizes, face, label_sizes = _match(detections, labels, iou)
    ignored = torch.zeros(len(label_sizes), dtype=torch.bool)
    if ignore is not None:
        ignored = torch.cat([torch.as_tensor(np.asarray(flags, dtype=bool)).reshape(-1) for flags in ignore]) if len(ignore) else ignored
        if len(ignored) != len(label_sizes):
            raise ValueError(f"{len(ignored)} ignore flags for {len(label_sizes)} labelled faces")
    # The first detection (in score order) on each face: a true positive if that face counts.
    first = torch.zeros(len(face), dtype=torch.bool)
    matched = torch.nonzero(face >= 0).flatten()
    if len(matched):
        _, inverse = torch.unique(face[matched], return_inverse=True)
        first_pos = torch.full((int(inverse.max()) + 1,), len(face), dtype=torch.int64).scatter_reduce(0, inverse, matched, "amin")
        first[first_pos] = True
    result: dict[str, dict[str, Any]] = {}
    for name, (low, high) in [("all", (0.0, math.inf)), *((bin_name(lo, hi), (lo, hi)) for lo, hi in bins)]:
        counted = (label_sizes >= low) & (label_sizes < high) & ~ignored
        num_faces = int(counted.sum())
        on_face = face >= 0
        on_counted = on_face & counted[face.clamp(min=0)]
        # Detections on faces outside the bin (or ignored) are left out; unmatched ones only count
        # when their own size is in the bin.
        keep = on_counted | (~on_face & (det_sizes >= low) & (det_sizes < high))
        tp = (first & on_counted)[keep]
        kept_scores = scores[keep]
        tp_cum = torch.cumsum(tp.double(), 0)
        fp_cum = torch.cumsum((~tp).double(), 0)
        recall = (tp_cum / max(num_faces, 1)).numpy()
        precision = (tp_cum / (tp_cum + fp_cum).clamp(min=1)).numpy()
        ap = voc_ap(recall, precision) if num_faces else float("nan")
        at: dict[str, Any] = {"recall": {}, "precision": {}}
        for t in thresholds:
            above = kept_scores >= t
            hits = int(tp[above].sum())
            at["recall"][f"{t:g}"] = hits / num_faces if num_faces else float("nan")
            at["precision"][f"{t:g}"] = hits / int(above.sum()) if int(above.sum()) else float("nan")
        result[name] = {"faces": num_faces, "ap": ap, **at}
        if curves:
            result[name]["curve"] = {"recall": recall, "precision": precision, "scores": kept_scores.numpy()}
    return result
