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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from srn.errors import SRNError

MIN_SCORE = 0.05  # detections the network itself scores below this are left out of the fit

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


class CalibrationError(SRNError, ValueError):
    """The held-out photos cannot determine a calibration (no detection, or only one kind)."""


def fit_on_photos(detector: Any, records: Sequence[Any], image_root: str | Path, score_scale: float = 1.0, score_shift: float = 0.0,
                  workers: int = 0, where: str = "") -> dict[str, Any]:
    """Fit Platt scaling (``score_scale`` a, ``score_shift`` b) of ``detector``'s network on labelled photos.

    The detector must keep every detection (``score_thresh=0``); its scores are mapped back to the
    network's own logit with the calibration it has (``score_scale``, ``score_shift``), and those the
    network scores at least :data:`MIN_SCORE` are labelled true or false by :func:`true_positives`
    against the counted faces. A detection on an ignored face (IoU >= 0.5) is left out.

    Args:
        records: :class:`srn.data.formats.FaceRecord` s; their images are under ``image_root``.
        where: what the photos are, for the error message.

    Returns:
        ``{"a", "b", "images", "detections", "true", "ece_before", "ece_after", "failures"}``; the ECEs are
        measured on the same detections (before: with the calibration the detector had).

    Raises:
        CalibrationError: no detection, only true or only false ones, or a scale that is not positive.
    """
    from srn.evaluation.run import detect_images

    root = Path(image_root)
    paths = [root / record.image_path for record in records]
    results, failures = detect_images(detector, paths, workers=workers)
    logits, hits = [], []
    for record, path in zip(records, paths):
        if path not in results:
            continue
        boxes, scores = results[path]
        raw = (torch.logit(scores.double().clamp(1e-12, 1 - 1e-12)) - score_shift) / score_scale
        keep = torch.sigmoid(raw) >= MIN_SCORE
        boxes, raw = boxes[keep].double(), raw[keep]
        ignore = torch.as_tensor(record.ignore, dtype=torch.bool).reshape(-1)
        faces = record.boxes.double().reshape(-1, 4)
        found = true_positives(boxes, raw, faces[~ignore])
        if bool(ignore.any()) and len(boxes):
            on_ignored = box_iou(boxes, faces[ignore]).amax(dim=1).numpy() >= 0.5
            kept = found | ~on_ignored
            boxes, raw, found = boxes[torch.from_numpy(kept)], raw[torch.from_numpy(kept)], found[kept]
        logits.append(raw.numpy())
        hits.append(found)
    z = np.concatenate(logits) if logits else np.zeros(0)
    y = np.concatenate(hits) if hits else np.zeros(0, dtype=bool)
    try:
        a, b = fit_platt(z, y)
    except ValueError as exc:
        raise CalibrationError(f"{where or root}: {exc} on {len(results)} photos; "
                               "label more photos, or hold out more") from None
    if a <= 0:
        raise CalibrationError(f"{where or root}: the fitted score scale is {a:.3g}: on these photos a higher score is not "
                               "more often a face; the model needs more training first")
    _, before = reliability(1 / (1 + np.exp(-(score_scale * z + score_shift))), y)
    _, after = reliability(1 / (1 + np.exp(-(a * z + b))), y)
    return {"a": a, "b": b, "images": len(results), "detections": int(len(z)), "true": int(y.sum()),
            "ece_before": before, "ece_after": after, "failures": failures}


def calibrate_checkpoint(weights: str | Path, records: Sequence[Any], image_root: str | Path, out: str | Path, device: str | None = None,
                         max_size: int = 2100, batch_size: int = 8, workers: int = 0) -> dict[str, Any]:
    """``srn calibrate``: fit the score calibration of the checkpoint ``weights`` on labelled photos
    (:func:`fit_on_photos`) and write a copy that carries it to ``out`` (atomically); the weights
    are unchanged, so boxes, their order and AP stay as they are.

    Returns:
        The fit, with the written ``score_scale`` and ``score_shift`` (rounded to 4 decimals).

    Raises:
        WeightsError: ``weights`` is not a checkpoint (an ``.onnx`` file cannot be rewritten).
        CalibrationError: see :func:`fit_on_photos`.
    """
    import dataclasses

    from srn.inference import Detector
    from srn.weights import load_model, save_checkpoint

    model, config = load_model(weights)
    post = config.postprocess
    detector = Detector(model=model, config=config, device=device, score_thresh=0.0, max_size=max_size, batch_size=batch_size)
    fit = fit_on_photos(detector, records, image_root, post.score_scale, post.score_shift, workers=workers, where=str(image_root))
    scale, shift = round(fit["a"], 4), round(fit["b"], 4)
    calibrated = dataclasses.replace(config, postprocess=dataclasses.replace(post, score_scale=scale, score_shift=shift))
    save_checkpoint(model, calibrated, out)
    return {"score_scale": scale, "score_shift": shift, "previous_score_scale": post.score_scale,
            "previous_score_shift": post.score_shift, **fit}
