"""A model on one's own labelled photos: AP at IoU 0.5 and 0.5:0.95, recall at the model's score
thresholds, each overall and per face size (``srn eval labels``, docs/evaluation.md).

The labels are any annotation file that :mod:`srn.data.formats` reads (a WIDER-style list, COCO
JSON, FDDB ellipses), as :class:`~srn.data.formats.FaceRecord` s; ignored faces (COCO ``iscrowd``,
WIDER ``invalid``) count neither way. Matching and AP are :func:`srn.evaluation.sizes.score_by_size`'s:
each detection, best score first, takes the labelled face it overlaps most, the first detection on a
face is a true positive, and AP is VOC's. AP@0.5:0.95 is the mean of the AP at IoU 0.50, 0.55, ...,
0.95 (COCO's). Recall and precision are given at the score thresholds the commands use (0.3 for
``srn detect``, 0.1 for ``srn anonymize``), so a user reads what a run with those defaults finds.

Predictions are the records ``srn detect`` writes (JSON Lines or a JSON array of
``{"image", "faces": [{"box": [x1, y1, x2, y2], "score"}]}``); :func:`read_detection_records` reads
them, :func:`write_detection_records` writes them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from srn.atomic import atomic_write_text
from srn.data.formats.common import read_text
from srn.errors import PredictionFormatError
from srn.evaluation.common import JsonResult, as_numpy
from srn.evaluation.sizes import SIZE_BINS, bin_name, score_by_size
from srn.paths import check_input_file

__all__ = ["IOU_RANGE", "THRESHOLDS", "LabelsResult", "evaluate_labels", "format_table", "match_image", "read_detection_records",
           "write_detection_records"]

IOU_RANGE = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))  # COCO's 0.50:0.05:0.95
THRESHOLDS = (0.3, 0.1)  # srn detect's and srn anonymize's default score thresholds


@dataclass
class LabelsResult(JsonResult):
    """The scores of one evaluation.

    Attributes:
        by_size: ``{"all" | bin: {"faces", "ap50", "ap50_95", "recall": {thr: r}, "precision": {thr: p}}}``.
        curve: the PR curve of all faces at IoU 0.5 (``recall``, ``precision``, ``scores`` arrays).
        size_curves: the same per size bin.
        num_images, num_faces, num_ignored, num_detections: what was evaluated.
        num_missing: annotated images without predictions (counted as no detections).
        extra: predicted images that are not annotated (not evaluated).
    """

    by_size: dict[str, dict[str, Any]]
    curve: dict[str, np.ndarray]
    thresholds: tuple[float, ...]
    num_images: int
    num_faces: int
    num_ignored: int
    num_detections: int
    num_missing: int = 0
    extra: list[str] = field(default_factory=list)
    size_curves: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def num_extra(self) -> int:
        return len(self.extra)

    @property
    def metrics(self) -> dict[str, float]:
        everything = self.by_size["all"]
        metrics = {"ap50": everything["ap50"], "ap50_95": everything["ap50_95"]}
        for t in self.thresholds:
            metrics[f"recall@{t:g}"] = everything["recall"][f"{t:g}"]
            metrics[f"precision@{t:g}"] = everything["precision"][f"{t:g}"]
        return metrics

    def to_dict(self, curves: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "metrics": self.metrics,
            "by_size": self.by_size,
            "thresholds": list(self.thresholds),
            "iou": {"ap50": 0.5, "ap50_95": list(IOU_RANGE)},
            "size": "shorter side of the labelled box, pixels",
            "num_images": self.num_images,
            "num_faces": self.num_faces,
            "num_ignored": self.num_ignored,
            "num_detections": self.num_detections,
            "num_missing": self.num_missing,
            "num_extra": self.num_extra,
        }
        if curves:
            data["pr_curve"] = self.curve
            data["pr_curve_by_size"] = self.size_curves
        return data


def evaluate_labels(
    detections: Mapping[str, tuple[Any, Any]],
    records: Sequence[Any],
    thresholds: Sequence[float] = THRESHOLDS,
    bins: Sequence[tuple[float, float]] = SIZE_BINS,
) -> LabelsResult:
    """Score ``detections`` (``{image_path: (boxes (K, 4) x1 y1 x2 y2, scores (K,))}``) against the
    records' labels; an image without an entry has no detections.

    Returns:
        :class:`LabelsResult`; AP of a size bin without faces is NaN.
    """
    empty = (np.zeros((0, 4)), np.zeros(0))
    dets = [tuple(as_numpy(v) for v in detections.get(r.image_path, empty)) for r in records]
    labels = [as_numpy(r.boxes).reshape(-1, 4) for r in records]
    ignore = [np.asarray(r.ignore, dtype=bool).reshape(-1) for r in records]
    thresholds = tuple(float(t) for t in thresholds)
    at = {iou: score_by_size(dets, labels, thresholds=thresholds, bins=bins, iou=iou, ignore=ignore, curves=iou == 0.5) for iou in IOU_RANGE}
    by_size: dict[str, dict[str, Any]] = {}
    for name in ["all", *(bin_name(lo, hi) for lo, hi in bins)]:
        base = at[0.5][name]
        aps = [at[iou][name]["ap"] for iou in IOU_RANGE]
        by_size[name] = {"faces": base["faces"], "ap50": base["ap"], "ap50_95": float(np.mean(aps)) if base["faces"] else math.nan,
                         "recall": base["recall"], "precision": base["precision"]}
    known = {r.image_path for r in records}
    return LabelsResult(
        by_size=by_size,
        curve=at[0.5]["all"]["curve"],
        thresholds=thresholds,
        num_images=len(records),
        num_faces=by_size["all"]["faces"],
        num_ignored=int(sum(int(flags.sum()) for flags in ignore)),
        num_detections=int(sum(len(s) for _, s in dets)),
        num_missing=sum(r.image_path not in detections for r in records),
        extra=[name for name in detections if name not in known],
        size_curves={name: at[0.5][name]["curve"] for name in by_size if name != "all"},
    )


def _number(value: float) -> str:
    return "   -  " if value is None or not math.isfinite(value) else f"{value:.4f}"


def format_table(result: LabelsResult, title: str = "") -> str:
    """The result as a text table: a row per face size, AP at 0.5 and 0.5:0.95, recall at each threshold."""
    heads = ["faces", "AP@0.5", "AP@.5:.95", *(f"R@{t:g}" for t in result.thresholds), *(f"P@{t:g}" for t in result.thresholds)]
    lines = [title or f"{result.num_images} images, {result.num_faces} faces ({result.num_ignored} ignored), "
             f"{result.num_detections} detections", f"{'size (px)':<10}" + "".join(f"{h:>10}" for h in heads)]
    for name, row in result.by_size.items():
        cells = [f"{row['faces']:>10}", f"{_number(row['ap50']):>10}", f"{_number(row['ap50_95']):>10}"]
        cells += [f"{_number(row['recall'][f'{t:g}']):>10}" for t in result.thresholds]
        cells += [f"{_number(row['precision'][f'{t:g}']):>10}" for t in result.thresholds]
        lines.append(f"{name:<10}" + "".join(cells))
    return "\n".join(lines)


# --------------------------------------------------------------------------- prediction files


def match_image(name: str, ids: Sequence[str]) -> str | None:
    """The annotated image id that a predicted image ``name`` is: the same path, or the one id whose
    path ``name`` ends with (``srn detect`` records the paths it was given, e.g. ``photos/a/x.jpg``
    for the id ``a/x.jpg``)."""
    name = name.replace("\\", "/")
    if name in ids:
        return name
    hits = [i for i in ids if name.endswith("/" + i.lstrip("./"))]
    return hits[0] if len(hits) == 1 else None


def read_detection_records(path: str | os.PathLike[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read ``srn detect``'s records (JSON Lines, or one JSON array):
    ``{"image": ..., "faces": [{"box": [x1, y1, x2, y2], "score": s}, ...]}`` per image.

    Returns:
        ``{image: (float64[K, 4], float64[K])}`` in file order.

    Raises:
        InputPathError: the file is missing or unreadable.
        PredictionFormatError: naming the file and the line (the record, for an array) that is wrong;
            it quotes no more than the image's name.
    """
    path = check_input_file(path, what="detections file")
    text = read_text(path, PredictionFormatError)
    stripped = text.lstrip()
    entries: list[tuple[int | None, Any]] = []
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PredictionFormatError(path, exc.lineno, f"not JSON ({exc.msg}, column {exc.colno})") from None
        entries = [(None, item) for item in data] if isinstance(data, list) else []
    else:
        for number, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                entries.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise PredictionFormatError(path, number, f"not a JSON record ({exc.msg}, column {exc.colno}); "
                                            "expected srn detect's JSON Lines") from None
    detections: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    layout = '{"image": ..., "faces": [{"box": [x1, y1, x2, y2], "score": s}]}'
    for index, (line, item) in enumerate(entries):
        where = "" if line is not None else f"record {index + 1}: "
        if not isinstance(item, dict) or not isinstance(item.get("image"), str) or not isinstance(item.get("faces"), list):
            raise PredictionFormatError(path, line, f"{where}expected a record {layout}")
        try:
            boxes = np.array([face["box"] for face in item["faces"]], dtype=np.float64).reshape(-1, 4)
            scores = np.array([face["score"] for face in item["faces"]], dtype=np.float64).reshape(-1)
        except (TypeError, KeyError, ValueError):
            raise PredictionFormatError(path, line, f"{where}image {item['image']!r}: each face must be "
                                        '{"box": [x1, y1, x2, y2], "score": s}') from None
        if len(boxes) != len(scores) or not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
            raise PredictionFormatError(path, line, f"{where}image {item['image']!r}: boxes and scores must be finite numbers")
        detections[item["image"]] = (boxes, scores)
    return detections


def write_detection_records(path: str | os.PathLike[str], detections: Mapping[str, tuple[Any, Any]]) -> Path:
    """Write ``{image: (boxes, scores)}`` as ``srn detect``'s JSON Lines, atomically; returns ``path``."""
    lines = []
    for image, (boxes, scores) in detections.items():
        b, s = as_numpy(boxes).reshape(-1, 4), as_numpy(scores).reshape(-1)
        faces = [{"box": [round(float(v), 2) for v in box], "score": round(float(score), 6)} for box, score in zip(b, s)]
        lines.append(json.dumps({"image": image, "faces": faces}))
    return atomic_write_text(path, "".join(line + "\n" for line in lines))
