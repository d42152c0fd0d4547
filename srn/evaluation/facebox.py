"""AFW and PASCAL Face: VOC-style AP at IoU 0.5 against the face-eval re-annotations.

The ground truth is the re-annotation of Mathias et al. ("Face detection without bells and
whistles", ECCV 2014), shipped as MATLAB structs with ``imgname``, ``imgsize`` and ``objects``
(rows ``[x1 y1 x2 y2 ? ignore]``). The protocol follows that toolbox's ``VOCpr.py``:

* all detections of the dataset are sorted by score, descending;
* each detection takes the face of its image with the highest IoU (ties: the later face) and is
  a match if that IoU is **greater than** 0.5; IoU uses the +1 pixel convention;
* a match to a face marked "ignore" is neither TP nor FP; the first match to any other face is a
  TP and later matches to it are FPs; an unmatched detection is an FP;
* AP is VOC's: sentinels, monotone precision envelope, sum over recall steps.

The toolbox's ``plot_AP.py`` adds two steps, available here as options and off by default:
``min_size=30`` (faces narrower or shorter than 30 px become "ignore", and detections whose
sides are both at most ``int(sqrt(0.5 * 30 * 30)) = 21`` px are dropped) and
``calibrate_iters=5`` (a global shift and scale of all detections fitted to the matched faces,
re-fitted 5 times, because annotation styles differ between datasets).

See docs/design.md, "Evaluation protocols". This module only computes; :mod:`srn.evaluation.plots`
draws the PR curve and ``srn eval`` writes the report.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from srn.errors import AnnotationError, PredictionFormatError, brief, excerpt
from srn.data.formats.common import read_text
from srn.evaluation.common import JsonResult, as_numpy, jsonable, load_mat, require_variables, voc_ap
from srn.paths import check_input_file

__all__ = [
    "FaceboxImage",
    "FaceboxResult",
    "load_facebox_annotations",
    "read_facebox_detections",
    "evaluate_facebox",
    "format_table",
    "image_key",
]

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def image_key(name: str) -> str:
    """The lookup key of an image: its base name without an image suffix."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return base[: base.rfind(".")] if base.lower().endswith(_IMAGE_SUFFIXES) else base


@dataclass(frozen=True, eq=False)
class FaceboxImage:
    """One annotated image.

    Attributes:
        name: ``imgname`` as stored, e.g. ``"5002723411.jpg"``.
        size: ``imgsize`` as stored (the order of height and width is not documented).
        boxes: ``float64[G, 4]`` faces ``x1 y1 x2 y2``.
        ignore: ``bool[G]``, True for faces marked "ignore" (column 6).
    """

    name: str
    size: tuple[int, ...]
    boxes: np.ndarray
    ignore: np.ndarray


def load_facebox_annotations(path: str | os.PathLike[str]) -> dict[str, FaceboxImage]:
    """Read ``new_annotations_AFW.mat`` or ``Annotations_Face_PASCALLayout_large_fixed.mat``.

    Rows with only 4 columns (the older, unfixed PASCAL file) have no ignore flag.

    Returns:
        ``{image_key(imgname): FaceboxImage}`` in file order.

    Raises:
        InputPathError: the file is missing or unreadable.
        AnnotationError: naming the file: not a readable ``.mat``, or not a face-eval
            re-annotation (``anno2.mat``, say, or a WIDER FACE ground-truth file).
    """
    kind = "face-eval re-annotation .mat"
    path = Path(path)
    mat = load_mat(path, what="annotation file")
    require_variables(path, mat, ("Annotations",), kind)
    images: dict[str, FaceboxImage] = {}
    try:
        records = np.asarray(mat["Annotations"]).reshape(-1)
        missing = [f for f in ("imgname", "imgsize", "objects") if f not in (records.dtype.names or ())]
        if missing:
            raise AnnotationError(path, None, f"not a {kind} (its Annotations have no field {missing[0]!r})")
        for rec in records:
            name = np.asarray(rec["imgname"]).reshape(-1)[0]
            if not isinstance(name, str):
                raise TypeError(f"imgname is {type(name).__name__}, not a name")
            size = tuple(int(v) for v in np.asarray(rec["imgsize"], dtype=np.float64).reshape(-1))
            objects = np.asarray(rec["objects"], dtype=np.float64)
            objects = objects.reshape(-1, objects.shape[-1]) if objects.size else np.zeros((0, 6))
            if objects.shape[1] < 4:
                raise ValueError(f"the faces of {name} have {objects.shape[1]} columns, not x1 y1 x2 y2 ...")
            boxes = objects[:, :4].copy()
            ignore = objects[:, 5] == 1 if objects.shape[1] >= 6 else np.zeros(len(objects), dtype=bool)
            images[image_key(name)] = FaceboxImage(name, size, boxes, ignore)
    except AnnotationError:
        raise
    except (ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError) as exc:
        raise AnnotationError(path, None, f"not laid out as a {kind} ({brief(str(exc))})") from None
    if not images:
        raise AnnotationError(path, None, "holds no annotated images")
    return images


def read_facebox_detections(path: str | os.PathLike[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read a ``detections.json``: ``{image: {"boxes": [[x1, y1, x2, y2], ...], "scores": [...]}}``.

    This is the file ``srn eval afw`` and ``srn eval pascal`` write next to their report.

    Returns:
        ``{image_key(image): (float64[K, 4] boxes, float64[K] scores)}`` in file order.

    Raises:
        InputPathError: the file is missing or unreadable.
        PredictionFormatError: naming the file (and the line, for a JSON syntax error) and the image.
    """
    path = check_input_file(path, what="detections file")
    try:
        raw = json.loads(read_text(path, PredictionFormatError))
    except json.JSONDecodeError as exc:
        raise PredictionFormatError(path, exc.lineno, f"not JSON ({exc.msg}, column {exc.colno})") from None
    except RecursionError:
        raise PredictionFormatError(path, None, "not JSON this reader can take (nested too deeply)") from None
    entry_layout = '{"boxes": [[x1, y1, x2, y2], ...], "scores": [...]}'
    if not isinstance(raw, dict):
        raise PredictionFormatError(
            path, None, f"expected a JSON object {{image: {entry_layout}}}, got a JSON {_json_kind(raw)}"
        )
    detections: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict) or "boxes" not in entry or "scores" not in entry:
            raise PredictionFormatError(path, None, f"image {excerpt(name)}: expected {entry_layout}, got a JSON {_json_kind(entry)}")
        boxes = _number_array(path, name, "boxes", entry["boxes"])
        scores = _number_array(path, name, "scores", entry["scores"])
        if boxes.size == 0 and boxes.ndim == 1:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            got = f"{boxes.shape[-1]} numbers" if boxes.ndim == 2 else f"an array of {boxes.ndim} dimensions"
            raise PredictionFormatError(path, None, f"image {excerpt(name)}: each box must be 4 numbers [x1, y1, x2, y2], got {got}")
        if scores.ndim != 1:
            raise PredictionFormatError(path, None, f"image {excerpt(name)}: scores must be a flat list of numbers")
        if scores.shape[0] != boxes.shape[0]:
            raise PredictionFormatError(path, None, f"image {excerpt(name)}: {boxes.shape[0]} boxes but {scores.shape[0]} scores")
        detections[image_key(name)] = (boxes, scores)
    return detections


def _json_kind(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _number_array(path: Path, name: str, key: str, value: Any) -> np.ndarray:
    """``value`` (a JSON list of numbers) as float64, or an error naming the file and the image."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        array = None  # ragged lists
    if array is None or (array.dtype.kind not in "iuf" and array.size > 0):
        raise PredictionFormatError(path, None, f"image {excerpt(name)}: {key} must be a list of numbers")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise PredictionFormatError(path, None, f"image {excerpt(name)}: {key} hold a non-finite number")
    return array


def _iou_plus_one(boxes: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU with +1 pixel areas, float64[D, G], for ``x1 y1 x2 y2`` boxes."""
    w = np.minimum(boxes[:, None, 2], gt[None, :, 2]) - np.maximum(boxes[:, None, 0], gt[None, :, 0]) + 1
    h = np.minimum(boxes[:, None, 3], gt[None, :, 3]) - np.maximum(boxes[:, None, 1], gt[None, :, 1]) + 1
    inter = np.maximum(w, 0) * np.maximum(h, 0)
    area_d = (np.abs(boxes[:, 2] - boxes[:, 0]) + 1) * (np.abs(boxes[:, 3] - boxes[:, 1]) + 1)
    area_g = (np.abs(gt[:, 2] - gt[:, 0]) + 1) * (np.abs(gt[:, 3] - gt[:, 1]) + 1)
    return inter / (area_d[:, None] + area_g[None, :] - inter)


@dataclass(eq=False)
class FaceboxResult(JsonResult):
    """VOC AP and the PR curve.

    Attributes:
        ap: average precision.
        precision / recall: ``float64[N]`` after each TP or FP detection in score order
            (detections on ignored faces are left out; they move neither).
        scores: ``float64[N]`` the matching detection scores.
        num_faces: faces that count (not ignored).
        num_images: annotated images.
        num_detections: detections evaluated (after ``min_size`` filtering).
        num_missing: annotated images with no detection entry.
        extra: keys of the detection entries for images that are not annotated, in input order
            (their detections are false positives, as in the toolbox).
        calibration: ``(tx, ty, sx, sy)`` applied to the detections (identity if not calibrated).
    """

    ap: float
    precision: np.ndarray
    recall: np.ndarray
    scores: np.ndarray
    num_faces: int
    num_images: int
    num_detections: int
    num_missing: int
    calibration: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    extra: tuple[str, ...] = ()

    @property
    def num_extra(self) -> int:
        """Detection entries for images that are not annotated."""
        return len(self.extra)

    @property
    def metrics(self) -> dict[str, float]:
        """The headline number: ``ap``."""
        return {"ap": float(self.ap)}

    def to_dict(self, curves: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ap": self.ap,
            "num_faces": self.num_faces,
            "num_images": self.num_images,
            "num_detections": self.num_detections,
            "num_missing": self.num_missing,
            "calibration": list(self.calibration),
        }
        if curves:
            out["precision"] = self.precision.tolist()
            out["recall"] = self.recall.tolist()
        return jsonable(out)


def _match(
    keys: list[str],
    boxes: list[np.ndarray],
    annotations: Mapping[str, FaceboxImage],
    ignore: dict[str, np.ndarray],
    iou_threshold: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Per detection (concatenated in input order): the face it matches or -1, and whether that
    face is ignored. The face a detection picks does not depend on the other detections, so this
    is vectorised per image."""
    face_parts, ignored_parts = [], []
    for key, b in zip(keys, boxes, strict=True):
        ann = annotations.get(key)
        if ann is None or ann.boxes.shape[0] == 0 or b.shape[0] == 0:
            face_parts.append(np.full(b.shape[0], -1))
            ignored_parts.append(np.zeros(b.shape[0], dtype=bool))
            continue
        iou = _iou_plus_one(b, ann.boxes)  # (D, G)
        g = iou.shape[1]
        best = g - 1 - np.argmax(iou[:, ::-1], axis=1)  # ">= maxovr": ties go to the later face
        ok = iou[np.arange(b.shape[0]), best] > iou_threshold
        face_parts.append(np.where(ok, best, -1))
        ignored_parts.append(ok & ignore[key][best])
    if not face_parts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    return np.concatenate(face_parts), np.concatenate(ignored_parts)


def evaluate_facebox(
    detections: Mapping[str, tuple[Any, Any]],
    annotations: Mapping[str, FaceboxImage],
    iou_threshold: float = 0.5,
    min_size: float = 0.0,
    calibrate_iters: int = 0,
) -> FaceboxResult:
    """AP of ``detections`` against AFW or PASCAL Face annotations.

    Args:
        detections: ``{image name: (boxes (K, 4) x1 y1 x2 y2, scores (K,))}``; names may carry
            a folder or an image suffix (see :func:`image_key`). Numpy arrays or tensors.
        annotations: from :func:`load_facebox_annotations`.
        iou_threshold: a match needs IoU strictly greater than this.
        min_size: the toolbox's ``minw = minh``: faces under this width or height become ignore,
            detections with both sides <= ``int(sqrt(0.5 * min_size**2))`` are dropped. 0 = off.
        calibrate_iters: the toolbox's box calibration iterations (``plot_AP.py`` uses 5). As in
            the toolbox, the reported matching is the one computed before the last update.
    """
    keys: list[str] = []
    boxes: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    min_pixels = int(math.sqrt(0.5 * min_size * min_size)) if min_size > 0 else None
    for name, (b, s) in detections.items():
        b = as_numpy(b).reshape(-1, 4)
        s = as_numpy(s).reshape(-1)
        if b.shape[0] != s.shape[0]:
            raise ValueError(f"{name}: {b.shape[0]} boxes but {s.shape[0]} scores")
        if min_pixels is not None:
            keep = ((b[:, 2] - b[:, 0]) > min_pixels) | ((b[:, 3] - b[:, 1]) > min_pixels)
            b, s = b[keep], s[keep]
        keys.append(image_key(name))
        boxes.append(b)
        scores.append(s)

    ignore: dict[str, np.ndarray] = {}
    num_faces = 0
    for key, ann in annotations.items():
        flags = ann.ignore.copy()
        if min_size > 0:
            w = np.abs(ann.boxes[:, 2] - ann.boxes[:, 0])
            h = np.abs(ann.boxes[:, 3] - ann.boxes[:, 1])
            flags |= (w < min_size) | (h < min_size)
        ignore[key] = flags
        num_faces += int((~flags).sum())
    num_missing = sum(1 for key in annotations if key not in set(keys))

    all_scores = np.concatenate(scores) if scores else np.zeros(0)
    # Python's sort is stable: equal scores keep the input order, as in the toolbox.
    order = np.argsort(-all_scores, kind="stable")
    image_of = np.repeat(np.arange(len(keys)), [b.shape[0] for b in boxes])
    calibration = (0.0, 0.0, 1.0, 1.0)
    iterations = max(calibrate_iters, 1)
    for it in range(iterations):
        face, on_ignored = _match(keys, boxes, annotations, ignore, iou_threshold)
        # the first match to a counted face, in global score order, is the TP
        counted = np.flatnonzero((face[order] >= 0) & ~on_ignored[order])
        pair = image_of[order][counted] * (1 << 32) + face[order][counted]
        _, first = np.unique(pair, return_index=True)
        tp_sorted = np.zeros(order.shape[0], dtype=bool)
        tp_sorted[counted[first]] = True
        if it == iterations - 1:
            break  # the toolbox reports the matching from before its last update
        step = _fit_step(keys, boxes, annotations, order[tp_sorted], image_of, face)
        if step is None:
            break
        boxes = [_transform(b, step) for b in boxes]
        calibration = (
            calibration[0] + step[0],
            calibration[1] + step[1],
            calibration[2] * step[2],
            calibration[3] * step[3],
        )

    counts = ~on_ignored[order]  # detections on ignored faces move neither TP nor FP
    tp = np.cumsum(tp_sorted[counts])
    fp = np.cumsum(~tp_sorted[counts])
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = tp / num_faces if num_faces else np.full(tp.shape, np.nan)
        precision = tp / np.maximum(tp + fp, 1)
    ap = voc_ap(recall, precision) if num_faces else float("nan")
    return FaceboxResult(
        ap=ap,
        precision=precision,
        recall=recall,
        scores=all_scores[order][counts],
        num_faces=num_faces,
        num_images=len(annotations),
        num_detections=int(all_scores.shape[0]),
        num_missing=num_missing,
        calibration=calibration,
        extra=tuple(key for key in keys if key not in annotations),
    )


def format_table(result: FaceboxResult, name: str) -> str:
    """One line: the benchmark ``name`` ("AFW", "PASCAL"), its size and the AP."""
    return f"{name} ({result.num_images} images, {result.num_faces} faces): AP {result.ap:.4f}"


def _transform(boxes: np.ndarray, step: tuple[float, float, float, float]) -> np.ndarray:
    """The toolbox's ``transf_dets``: shift the centre by (tx*w, ty*h), scale sides by (sx, sy)."""
    tx, ty, sx, sy = step
    half_w = (boxes[:, 2] - boxes[:, 0]) / 2
    half_h = (boxes[:, 3] - boxes[:, 1]) / 2
    cx = (boxes[:, 2] + boxes[:, 0]) / 2 + tx * half_w * 2
    cy = (boxes[:, 3] + boxes[:, 1]) / 2 + ty * half_h * 2
    return np.stack([cx - half_w * sx, cy - half_h * sy, cx + half_w * sx, cy + half_h * sy], axis=1)


def _fit_step(
    keys: list[str],
    boxes: list[np.ndarray],
    annotations: Mapping[str, FaceboxImage],
    tp_index: np.ndarray,
    image_of: np.ndarray,
    face: np.ndarray,
) -> tuple[float, float, float, float] | None:
    """One toolbox calibration step: the mean relative centre shift (tx, ty) and side ratio
    (sx, sy) from the TP detections (indices into the concatenated detections) to their faces.
    None when there is no TP."""
    if tp_index.size == 0:
        return None
    det = np.concatenate(boxes)[tp_index]
    gt = np.stack(
        [annotations[keys[i]].boxes[f] for i, f in zip(image_of[tp_index], face[tp_index], strict=True)]
    )
    dw, dh = det[:, 2] - det[:, 0], det[:, 3] - det[:, 1]
    tx = float(np.mean(((gt[:, 2] + gt[:, 0]) / 2 - (det[:, 2] + det[:, 0]) / 2) / dw))
    ty = float(np.mean(((gt[:, 3] + gt[:, 1]) / 2 - (det[:, 3] + det[:, 1]) / 2) / dh))
    sx = float(np.mean((gt[:, 2] - gt[:, 0]) / dw))
    sy = float(np.mean((gt[:, 3] - gt[:, 1]) / dh))
    return tx, ty, sx, sy
