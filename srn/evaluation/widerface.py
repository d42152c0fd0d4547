"""WIDER FACE evaluation with the official MATLAB semantics (docs/design.md, Evaluation protocols).

The official toolbox (``wider_eval.m``) differs from the popular Python port in ways that move
AP by a few 1e-4, so this module reproduces the MATLAB code path exactly:

* each image's predictions are sorted by score, descending (MATLAB's ``sort`` is stable, and so
  is ours), and a missing file means "no detections";
* scores are normalised globally, ``(s - min) / (max - min)``, starting from MATLAB's
  ``realmin('single')`` / ``realmax('single')``;
* ``boxoverlap`` runs on **int32** ground truth, so every mixed int32/double operation is done
  in int32: prediction coordinates are rounded half away from zero, the union is rounded, and the
  final division is rounded. Each overlap is therefore 0 or 1, and ``max`` picks the *first* face
  (in ground-truth order) whose IoU is at least 0.5;
* a prediction whose picked face is not in the setting's ``gt_list`` is neither TP nor FP; a
  second prediction on an already recalled face is an FP;
* thresholds are ``t = 1 - k/1000`` (k = 1..1000); AP is VOC-style with a monotone envelope.

Everything is vectorised with numpy: the overlap matching is done once per image (it does not
depend on the setting), and the per-threshold counts come from one histogram over all
predictions, so the whole val set evaluates in about a second.

Typical use::

    gt = load_wider_gt("eval_tools/ground_truth")
    result = evaluate(read_predictions("runs/wider_val"), gt)
    print(format_table(result))

This module only computes; :mod:`srn.evaluation.plots` draws the PR curves and ``srn eval`` writes
the report.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from srn.atomic import atomic_write_text
from srn.data.formats.common import Quoting, parse_count, parse_finite, quoted, read_text
from srn.errors import AnnotationError, PredictionFormatError
from srn.evaluation.common import (
    JsonResult,
    as_numpy,
    jsonable,
    load_mat,
    require_variables,
    voc_ap,
    xywh_line,
)
from srn.paths import check_input_dir, is_temporary

__all__ = [
    "SETTINGS",
    "WiderGroundTruth",
    "WiderResult",
    "load_wider_gt",
    "read_prediction_file",
    "read_predictions",
    "write_prediction_folder",
    "write_predictions",
    "evaluate",
    "format_table",
]

SETTINGS: tuple[str, ...] = ("easy", "medium", "hard")
NUM_THRESHOLDS = 1000

_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1
# norm_score.m starts its running max/min from these, not from +-inf.
_REALMIN_SINGLE = float(np.finfo(np.float32).tiny)
_REALMAX_SINGLE = float(np.finfo(np.float32).max)
# Pairs per overlap block: bounds the transient memory of an image with many faces and boxes.
_MAX_PAIRS_PER_BLOCK = 1 << 20
_NO_SATURATION_BOUND = 20000


# --------------------------------------------------------------------------- ground truth


@dataclass(frozen=True, eq=False)
class WiderGroundTruth:
    """The official evaluation ground truth, in the official image order.

    Attributes:
        image_keys: ``(event, name)`` per image, e.g. ``("0--Parade", "0_Parade_marchingband_1_465")``.
        boxes: per image, ``int64[G, 4]`` boxes ``x y w h`` (the ``.mat`` holds int32).
        keep: per setting, per image, ``bool[G]``: the faces listed in that setting's ``gt_list``.
            Every other face is "ignore".
    """

    image_keys: tuple[tuple[str, str], ...]
    boxes: tuple[np.ndarray, ...]
    keep: dict[str, tuple[np.ndarray, ...]]

    @property
    def num_images(self) -> int:
        return len(self.image_keys)

    @property
    def settings(self) -> tuple[str, ...]:
        return tuple(self.keep)

    def num_faces(self, setting: str | None = None) -> int:
        """All annotated faces, or the faces kept by ``setting``."""
        if setting is None:
            return int(sum(b.shape[0] for b in self.boxes))
        return int(sum(int(k.sum()) for k in self.keep[setting]))


def _mat_str(cell: Any) -> str:
    # scipy gives MATLAB char arrays as a 1-element array of str
    value = np.asarray(cell).reshape(-1)[0]
    if not isinstance(value, str):
        raise TypeError(f"expected a name, got {type(value).__name__}")
    return value


def _boxes(cell: Any) -> np.ndarray:
    # int64 holds every int32 intermediate of boxoverlap exactly; saturation is emulated.
    array = np.asarray(cell)
    if array.dtype.kind not in "iuf" or array.size % 4:
        raise ValueError(f"face boxes must be an N x 4 number array, got {array.dtype} {array.shape}")
    return array.astype(np.int64).reshape(-1, 4)


_GT_KIND = "WIDER FACE ground-truth .mat"
# The interpretation of a .mat's cells fails with these when the file is of another layout.
_LAYOUT_ERRORS = (ValueError, TypeError, IndexError, AttributeError)


def _read_main(path: Path) -> tuple[list[tuple[str, str]], list[np.ndarray]]:
    mat = load_mat(path, what="WIDER FACE ground-truth file")
    require_variables(path, mat, ("event_list", "file_list", "face_bbx_list"), _GT_KIND)
    image_keys: list[tuple[str, str]] = []
    boxes: list[np.ndarray] = []
    try:
        events = [_mat_str(e) for e in mat["event_list"].reshape(-1)]
        for ev, files, bbx in zip(
            events, mat["file_list"].reshape(-1), mat["face_bbx_list"].reshape(-1), strict=True
        ):
            for f, b in zip(files.reshape(-1), bbx.reshape(-1), strict=True):
                image_keys.append((ev, _mat_str(f)))
                boxes.append(_boxes(b))
    except _LAYOUT_ERRORS as exc:
        raise AnnotationError(path, None, f"not laid out as a {_GT_KIND} ({exc})") from None
    if not image_keys:
        raise AnnotationError(path, None, "holds no images")
    return image_keys, boxes


def _read_setting(
    path: Path, main_name: str, image_keys: list[tuple[str, str]], boxes: list[np.ndarray]
) -> tuple[np.ndarray, ...]:
    """The ``gt_list`` masks of one setting file, checked against the main file."""
    mat = load_mat(path, what="WIDER FACE ground-truth file")
    require_variables(path, mat, ("file_list", "face_bbx_list", "gt_list"), _GT_KIND)
    masks: list[np.ndarray] = []
    try:
        for files, bbx, lists in zip(
            mat["file_list"].reshape(-1),
            mat["face_bbx_list"].reshape(-1),
            mat["gt_list"].reshape(-1),
            strict=True,
        ):
            for f, b, g in zip(files.reshape(-1), bbx.reshape(-1), lists.reshape(-1), strict=True):
                i = len(masks)
                if i >= len(image_keys) or _mat_str(f) != image_keys[i][1]:
                    raise AnnotationError(path, None, f"image list differs from {main_name}")
                if not np.array_equal(_boxes(b), boxes[i]):
                    raise AnnotationError(path, None, f"boxes of {'/'.join(image_keys[i])} differ from {main_name}")
                kept = np.asarray(g).reshape(-1)
                if kept.dtype.kind not in "iuf" or not np.all((kept >= 1) & (kept <= boxes[i].shape[0])):
                    raise AnnotationError(path, None, f"gt_list of {'/'.join(image_keys[i])} is not a list of face numbers")
                mask = np.zeros(boxes[i].shape[0], dtype=bool)
                mask[kept.astype(np.int64) - 1] = True  # gt_list is 1-based
                masks.append(mask)
    except AnnotationError:
        raise
    except _LAYOUT_ERRORS as exc:
        raise AnnotationError(path, None, f"not laid out as a {_GT_KIND} ({exc})") from None
    if len(masks) != len(image_keys):
        raise AnnotationError(path, None, f"{len(masks)} images, {main_name} has {len(image_keys)}")
    return tuple(masks)


def load_wider_gt(
    gt_dir: str | os.PathLike[str],
    split: str = "val",
    settings: tuple[str, ...] = SETTINGS,
) -> WiderGroundTruth:
    """Read ``wider_face_<split>.mat`` and ``wider_<setting>_<split>.mat`` from ``gt_dir``.

    Raises:
        InputPathError: the folder or a ``.mat`` file is missing or unreadable.
        AnnotationError: naming the file: it is not a readable ``.mat``, not the WIDER FACE ground
            truth, or a setting file disagrees with the main file on images or boxes (the official
            code reads the boxes from the setting file, so they must be the same).
    """
    gt_dir = check_input_dir(gt_dir, what="ground-truth folder")
    main_name = f"wider_face_{split}.mat"
    image_keys, boxes = _read_main(gt_dir / main_name)
    keep = {
        setting: _read_setting(gt_dir / f"wider_{setting}_{split}.mat", main_name, image_keys, boxes)
        for setting in settings
    }
    return WiderGroundTruth(tuple(image_keys), tuple(boxes), keep)


# --------------------------------------------------------------------------- prediction files


def read_prediction_file(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one ``<image>.txt``: a name line, a count line, then ``x y w h score`` lines.

    The text is read as every annotation file is (:func:`srn.data.formats.common.read_text`: UTF-8,
    a byte-order mark dropped, any line end). The count is a whole line of ASCII digits, as
    :func:`~srn.data.formats.common.parse_count` takes it: ``1_0``, ``+3`` or ``3.0``, which ``int()``
    or ``float()`` would take, are errors. Numbers are plain decimals, finite.

    Returns:
        float64[K, 5]: ``x y w h score`` in file order.

    Raises:
        PredictionFormatError: naming the file and the 1-based line number.
    """
    path = Path(path)
    lines = read_text(path, PredictionFormatError).split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the text after the final newline is not a line
    if len(lines) < 2:
        raise PredictionFormatError(path, len(lines) + 1, "missing the box count line")
    # What an error may quote of the file: nothing of one that is no prediction file (a password file).
    rule = Quoting(path, "a WIDER FACE prediction file", [(n, line) for n, line in enumerate(lines, start=1) if line.strip()],
                   PredictionFormatError)
    count = parse_count(lines[1])
    if count is None:
        raise rule.error(2, f"expected the box count (a whole number >= 0), got {quoted(lines[1])}",
                         plain="expected the box count, a whole number >= 0")

    data = lines[2 : 2 + count]
    if len(data) < count:
        raise PredictionFormatError(
            path, len(lines) + 1, f"the count line says {count} boxes but the file has {len(data)}"
        )
    for offset, extra in enumerate(lines[2 + count :]):
        if extra.strip():
            raise PredictionFormatError(
                path, 3 + count + offset, f"more box lines than the count line's {count}"
            )
    if count == 0:
        return np.zeros((0, 5), dtype=np.float64)

    rows = [line.split() for line in data]
    for i, row in enumerate(rows):
        if len(row) != 5:
            raise rule.error(3 + i, f"expected 'x y w h score', got {quoted(data[i])}", plain="expected 'x y w h score'")
    boxes = None
    block = "".join(data)
    if block.isascii() and "_" not in block:  # what float() takes beyond plain decimals
        try:
            boxes = np.array(rows, dtype=np.float64)
        except ValueError:
            boxes = None
    if boxes is None or not np.isfinite(boxes).all():
        # Slow path only to name the offending line.
        for i, row in enumerate(rows):
            for token in row:
                parse_finite(token, path, 3 + i, PredictionFormatError)
        raise PredictionFormatError(path, None, "unparsable box lines")  # pragma: no cover
    return boxes


def read_predictions(pred_dir: str | os.PathLike[str]) -> dict[tuple[str, str], np.ndarray]:
    """Read a submission folder laid out as ``<event>/<image>.txt``.

    Files elsewhere (not ``.txt``, or not one folder deep) are not predictions and are skipped.

    Returns:
        ``{(event, image): float64[K, 5]}`` with ``x y w h score`` rows in file order.

    Raises:
        InputPathError: the folder is missing or cannot be listed.
        PredictionFormatError: a file does not follow the format (naming it and the line).
    """
    pred_dir = check_input_dir(pred_dir, what="prediction folder")
    predictions: dict[tuple[str, str], np.ndarray] = {}
    for event in sorted(os.scandir(pred_dir), key=lambda e: e.name):
        if not event.is_dir():
            continue
        for entry in os.scandir(check_input_dir(event.path, what="prediction folder")):
            # A writer's temporary file (.<name>.txt.<random>.partial.txt) is no prediction.
            if entry.is_file() and entry.name.endswith(".txt") and not is_temporary(entry.name):
                predictions[(event.name, entry.name[: -len(".txt")])] = read_prediction_file(
                    entry.path
                )
    return predictions


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # what a WIDER key or prediction file name drops


def image_stem(name: str) -> str:
    """``"0_Parade_marchingband_1_5.jpg"`` -> ``"0_Parade_marchingband_1_5"``: the one rule by which an
    image name becomes a WIDER image key and prediction file name (only image suffixes are dropped)."""
    return os.path.splitext(name)[0] if name.lower().endswith(IMAGE_SUFFIXES) else name


def write_predictions(
    pred_dir: str | os.PathLike[str],
    records: Mapping[str, tuple[Any, Any]],
    format_line: Callable[[np.ndarray, float], str] | None = None,
) -> list[Path]:
    """Write detections in the submission layout, one file per image, each atomically.

    Args:
        pred_dir: output folder; ``<event>/<image>.txt`` files are created under it.
        records: ``{"<event>/<image>": (boxes, scores)}`` with boxes ``(K, 4)`` ``x1 y1 x2 y2``
            and scores ``(K,)`` (numpy arrays or tensors). An image suffix such as ``.jpg`` is
            dropped from the file name and the name line.
        format_line: turns one ``(box_xyxy, score)`` into a line. The default writes
            ``x1 y1 (x2-x1) (y2-y1) score`` with 3 and 6 decimals (continuous-coordinate width);
            pass :func:`srn.evaluation.tta.format_release_line` for the release's rounded
            ``x y round(w+1) round(h+1) round(score, 3)``.

    Returns:
        The written paths.
    """
    pred_dir = Path(pred_dir)
    format_line = format_line or xywh_line
    written: list[Path] = []
    for key, (boxes, scores) in records.items():
        event, sep, name = key.replace("\\", "/").rpartition("/")
        if not sep or not event or not name:
            raise ValueError(f"record key {key!r} is not '<event>/<image>'")
        stem = image_stem(name)
        boxes_np = as_numpy(boxes).reshape(-1, 4)
        scores_np = as_numpy(scores).reshape(-1)
        if boxes_np.shape[0] != scores_np.shape[0]:
            raise ValueError(f"{key}: {boxes_np.shape[0]} boxes but {scores_np.shape[0]} scores")
        lines = [stem, str(boxes_np.shape[0])]
        lines += [format_line(b, float(s)) for b, s in zip(boxes_np, scores_np, strict=True)]
        # temp file + rename: an interrupted run never leaves a torn file behind
        written.append(atomic_write_text(pred_dir / event / f"{stem}.txt", "\n".join(lines) + "\n"))
    return written


def write_prediction_folder(
    pred_dir: str | os.PathLike[str],
    records: Mapping[str, tuple[Any, Any]],
    format_line: Callable[[np.ndarray, float], str] | None = None,
) -> Path:
    """Write ``records`` as :func:`write_predictions` does, as the whole of ``pred_dir``: into a
    fresh folder beside it, which then replaces it. A file that an earlier run left there (for an
    image this run did not detect) can never be read back as this run's, and a run killed midway
    leaves the previous folder whole.

    Returns:
        ``pred_dir``.
    """
    pred_dir = Path(pred_dir)
    pred_dir.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=f".{pred_dir.name}.", suffix=".partial", dir=pred_dir.parent))
    try:
        write_predictions(fresh, records, format_line)
        os.chmod(fresh, 0o777 & ~_umask())
        if pred_dir.exists() or pred_dir.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{pred_dir.name}.", suffix=".partial", dir=pred_dir.parent))
            os.replace(pred_dir, old / pred_dir.name)
            os.replace(fresh, pred_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(fresh, pred_dir)
    finally:
        if fresh.exists():
            shutil.rmtree(fresh, ignore_errors=True)
    return pred_dir


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------- matching


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """MATLAB's rounding (half away from zero), exact for all doubles.

    ``floor(x + 0.5)`` is wrong for 0.49999999999999994; ``x - floor(x)`` is exact.
    """
    lo = np.floor(x)
    frac = x - lo
    up = np.where(x >= 0, frac >= 0.5, frac > 0.5)
    return lo + up


def _sat(x: np.ndarray) -> np.ndarray:
    """int32 saturation, as every MATLAB int32 operation does."""
    return np.clip(x, _INT32_MIN, _INT32_MAX)


def _overlap_int32(gt_xyxy: np.ndarray, pred_xyxy: np.ndarray) -> np.ndarray:
    """``boxoverlap(gt, pred)`` as MATLAB evaluates it with int32 ``gt``.

    Args:
        gt_xyxy (int64[G, 4]): ``x, y, x+w, y+h`` (int32 values).
        pred_xyxy (float64[K, 4]): ``x, y, x+w, y+h`` (double).

    Returns:
        int64[K, G]: the int32 overlap, 0 or 1 in practice (1 iff IoU >= 0.5).
    """
    # max/min of int32 and double: the double is converted (rounded) to int32 first; for integer
    # a, max(a, round(b)) == round(max(a, b)), so the order does not matter.
    p_round = _round_half_away(pred_xyxy)
    g = gt_xyxy
    # With every coordinate under 20000 px no int32 step can saturate: the areas stay under
    # 40001^2 < 2^31, and where w or h <= 0 the overlap is zeroed anyway. Then the plain int64
    # arithmetic below is exactly MATLAB's, and saturation (slow in numpy) can be skipped.
    small = max(np.abs(p_round).max(initial=0), np.abs(g).max(initial=0)) < _NO_SATURATION_BOUND
    sat = (lambda x: x) if small else _sat
    p = sat(p_round).astype(np.int64)  # (K, 4)
    x1 = np.maximum(g[None, :, 0], p[:, None, 0])  # (K, G)
    y1 = np.maximum(g[None, :, 1], p[:, None, 1])
    x2 = np.minimum(g[None, :, 2], p[:, None, 2])
    y2 = np.minimum(g[None, :, 3], p[:, None, 3])
    w = sat(x2 - x1 + 1)
    h = sat(y2 - y1 + 1)
    valid = (w > 0) & (h > 0)
    inter = sat(w * h)
    a_area = sat(sat(g[:, 2] - g[:, 0] + 1) * sat(g[:, 3] - g[:, 1] + 1))  # int32, (G,)
    # b's area stays double: b is all-double.
    b_area = (pred_xyxy[:, 2] - pred_xyxy[:, 0] + 1) * (pred_xyxy[:, 3] - pred_xyxy[:, 1] + 1)
    # aarea + barea - inter: int32 + double -> int32 (rounded), then int32 - int32
    union = sat(sat(_round_half_away(a_area[None, :] + b_area[:, None])).astype(np.int64) - inter)
    o = np.zeros(inter.shape, dtype=np.int64)
    if small:
        # valid pairs have union >= max(aarea, round(barea)) > 0: no division by zero
        o[valid] = _round_half_away(inter[valid] / union[valid]).astype(np.int64)
        return o
    with np.errstate(divide="ignore", invalid="ignore"):
        quotient = _round_half_away(inter / union)
    # int32 division by zero saturates (0/0 is 0)
    by_zero = np.where(inter > 0, _INT32_MAX, np.where(inter < 0, _INT32_MIN, 0))
    o = np.where(union == 0, by_zero, _sat(np.nan_to_num(quotient))).astype(np.int64)
    o[~valid] = 0
    return o


def _overlap_float(gt_xyxy: np.ndarray, pred_xyxy: np.ndarray) -> np.ndarray:
    """``boxoverlap`` in double precision (+1 convention), float64[K, G]."""
    g = gt_xyxy.astype(np.float64)
    p = pred_xyxy
    w = np.minimum(g[None, :, 2], p[:, None, 2]) - np.maximum(g[None, :, 0], p[:, None, 0]) + 1
    h = np.minimum(g[None, :, 3], p[:, None, 3]) - np.maximum(g[None, :, 1], p[:, None, 1]) + 1
    inter = w * h
    a_area = (g[:, 2] - g[:, 0] + 1) * (g[:, 3] - g[:, 1] + 1)
    b_area = (p[:, 2] - p[:, 0] + 1) * (p[:, 3] - p[:, 1] + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        o = inter / (a_area[None, :] + b_area[:, None] - inter)
    o[(w <= 0) | (h <= 0)] = 0
    return np.nan_to_num(o)


def _first_match(
    gt_xywh: np.ndarray, pred_xywh: np.ndarray, iou_threshold: float, int32_overlap: bool
) -> np.ndarray:
    """Per prediction, the face MATLAB's ``[m, idx] = max(overlap); m >= thr`` picks, or -1.

    Args:
        gt_xywh (int64[G, 4]), pred_xywh (float64[K, 4]).

    Returns:
        int64[K]: face index into ``gt_xywh``, -1 when the best overlap is under the threshold.
    """
    gt_xyxy = gt_xywh.copy()
    gt_xyxy[:, 2:] += gt_xyxy[:, :2]
    pred_xyxy = pred_xywh.copy()
    pred_xyxy[:, 2:] += pred_xyxy[:, :2]
    overlap_fn = _overlap_int32 if int32_overlap else _overlap_float
    num_gt = gt_xyxy.shape[0]
    block = max(1, _MAX_PAIRS_PER_BLOCK // max(num_gt, 1))
    picked = np.empty(pred_xyxy.shape[0], dtype=np.int64)
    for start in range(0, pred_xyxy.shape[0], block):
        o = overlap_fn(gt_xyxy, pred_xyxy[start : start + block])  # (k, G)
        idx = np.argmax(o, axis=1)  # the first maximum, as MATLAB's max
        best = o[np.arange(o.shape[0]), idx]
        picked[start : start + block] = np.where(best >= iou_threshold, idx, -1)
    return picked


# --------------------------------------------------------------------------- evaluation


@dataclass(eq=False)
class WiderResult(JsonResult):
    """AP and PR curves per setting.

    Attributes:
        ap: ``{setting: AP}``.
        pr: ``{setting: (precision, recall)}``, each ``float64[1000]``, at ``thresholds``.
            Precision is NaN where no prediction passes the threshold.
        thresholds: ``float64[1000]``, ``1 - k/1000`` for k = 1..1000 (decreasing).
        num_images: images evaluated.
        num_missing: evaluated ground-truth images without a prediction file (no detections).
        num_faces: ``{setting: faces that count}`` over the evaluated images.
        num_predictions: prediction boxes over the evaluated images.
        extra: ``(event, image)`` of the predictions for images that are not in the ground truth
            (not evaluated), in input order.
        official: True only for the full set at the official IoU 0.5 with int32 overlap;
            ``subset=True`` or another IoU threshold gives False.
        iou_threshold: the IoU threshold used.
    """

    ap: dict[str, float]
    pr: dict[str, tuple[np.ndarray, np.ndarray]]
    thresholds: np.ndarray
    num_images: int
    num_missing: int
    num_faces: dict[str, int]
    num_predictions: int
    extra: tuple[tuple[str, str], ...] = ()
    official: bool = True
    iou_threshold: float = 0.5
    notes: list[str] = field(default_factory=list)

    @property
    def num_extra(self) -> int:
        """Predictions for images that are not in the ground truth."""
        return len(self.extra)

    @property
    def metrics(self) -> dict[str, float]:
        """The headline numbers: ``ap_easy``, ``ap_medium``, ``ap_hard``."""
        return {f"ap_{setting}": float(ap) for setting, ap in self.ap.items()}

    def to_dict(self, curves: bool = True) -> dict[str, Any]:
        """A JSON-serialisable dict (NaN is None); ``curves=False`` leaves out the PR arrays."""
        out: dict[str, Any] = {
            "ap": dict(self.ap),
            "official": self.official,
            "iou_threshold": self.iou_threshold,
            "num_images": self.num_images,
            "num_missing": self.num_missing,
            "num_extra": self.num_extra,
            "num_predictions": self.num_predictions,
            "num_faces": dict(self.num_faces),
            "notes": list(self.notes),
        }
        if curves:
            out["thresholds"] = self.thresholds.tolist()
            # no proposals at a threshold: precision NaN -> null
            out["pr"] = {s: {"precision": p, "recall": r} for s, (p, r) in self.pr.items()}
        return jsonable(out)


def _normalise_key(key: Any) -> tuple[str, str]:
    if isinstance(key, str):
        event, _, name = key.replace("\\", "/").rpartition("/")
        return event, image_stem(name)
    event, name = key
    return str(event), str(name)


def evaluate(
    predictions: Mapping[Any, np.ndarray],
    gt: WiderGroundTruth,
    subset: bool = False,
    iou_threshold: float = 0.5,
    int32_overlap: bool | None = None,
) -> WiderResult:
    """Evaluate predictions against the WIDER FACE ground truth.

    Args:
        predictions: ``{(event, image): (K, 5) x y w h score}`` as from :func:`read_predictions`
            (keys may also be ``"event/image"`` strings). Order within an image does not matter.
        gt: from :func:`load_wider_gt`.
        subset: evaluate only the images that have predictions (an empty array counts as
            having predictions). The result is flagged ``official=False``; when no prediction is
            for an image of ``gt``, no image is evaluated and every AP is NaN.
        iou_threshold: 0.5 is the official protocol.
        int32_overlap: emulate MATLAB's int32 ``boxoverlap`` (the official behaviour). Default:
            True at IoU 0.5; False otherwise, because int32 rounding turns every overlap into 0 or
            1 and would make any other threshold behave like 0.5. Float overlap picks the
            best-overlapping face, as MATLAB's ``max`` does on doubles.

    Returns:
        :class:`WiderResult`.
    """
    if int32_overlap is None:
        int32_overlap = iou_threshold == 0.5
    preds = {_normalise_key(k): v for k, v in predictions.items()}
    gt_index = {k: i for i, k in enumerate(gt.image_keys)}
    extra = tuple(k for k in preds if k not in gt_index)
    missing = [i for i, k in enumerate(gt.image_keys) if k not in preds]
    selected = [i for i, k in enumerate(gt.image_keys) if k in preds] if subset else list(
        range(gt.num_images)
    )

    # Sort each image's boxes by score, descending, stable like MATLAB's sort(..., 'descend').
    per_image: dict[int, np.ndarray] = {}
    for i in selected:
        p = preds.get(gt.image_keys[i])
        if p is None:
            continue
        p = np.asarray(p, dtype=np.float64)
        if p.size == 0:
            continue
        if p.ndim != 2 or p.shape[1] != 5:
            raise ValueError(f"predictions of {gt.image_keys[i]} must be (K, 5), got {p.shape}")
        if not np.isfinite(p).all():
            raise ValueError(f"predictions of {gt.image_keys[i]} contain non-finite values")
        per_image[i] = p[np.argsort(-p[:, 4], kind="stable")]

    num_predictions = int(sum(p.shape[0] for p in per_image.values()))
    notes: list[str] = []
    max_score, min_score = _REALMIN_SINGLE, _REALMAX_SINGLE
    for p in per_image.values():
        max_score = max(max_score, float(p[:, 4].max()))
        min_score = min(min_score, float(p[:, 4].min()))
    if per_image and max_score == min_score:
        notes.append("all scores are equal: normalisation gives NaN and no box passes any threshold")
        warnings.warn(notes[-1], stacklevel=2)

    # Matching does not depend on the setting: do it once, then only the flags change.
    # Images with no faces are skipped entirely, as in the MATLAB code, so their boxes are not FPs.
    face_offsets = np.concatenate(([0], np.cumsum([b.shape[0] for b in gt.boxes])))
    picked_parts: list[np.ndarray] = []
    score_parts: list[np.ndarray] = []
    for i, p in per_image.items():
        if gt.boxes[i].shape[0] == 0:
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            norm = (p[:, 4] - min_score) / (max_score - min_score)
        picked = _first_match(gt.boxes[i], p[:, :4], iou_threshold, int32_overlap)
        picked_parts.append(np.where(picked >= 0, picked + face_offsets[i], -1))
        score_parts.append(norm)
    picked_all = np.concatenate(picked_parts) if picked_parts else np.zeros(0, dtype=np.int64)
    scores_all = np.concatenate(score_parts) if score_parts else np.zeros(0)

    # Threshold bin of each box: the smallest k with score >= 1 - k/1000 (computed exactly as
    # MATLAB does, in double). The box then counts at every k' >= k: a histogram + cumsum.
    k_range = np.arange(1, NUM_THRESHOLDS + 1, dtype=np.float64)
    thresholds = 1.0 - k_range / NUM_THRESHOLDS  # decreasing
    num_passed = np.searchsorted(thresholds[::-1], scores_all, side="right")
    first_bin = NUM_THRESHOLDS + 1 - num_passed  # 1..1001; 1001 = never
    first_bin = np.where(np.isnan(scores_all), NUM_THRESHOLDS + 1, first_bin)

    matched = picked_all >= 0
    ap: dict[str, float] = {}
    pr: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    num_faces: dict[str, int] = {}
    for setting in gt.settings:
        keep_all = np.concatenate(gt.keep[setting])
        faces = int(sum(int(gt.keep[setting][i].sum()) for i in selected))
        kept = np.zeros_like(matched)
        kept[matched] = keep_all[picked_all[matched]]
        # a box on an ignored face is not a proposal; the first box on a kept face is a TP
        proposal = ~(matched & ~kept)
        tp = np.zeros_like(matched)
        kept_idx = np.flatnonzero(kept)
        _, first = np.unique(picked_all[kept_idx], return_index=True)
        tp[kept_idx[first]] = True
        tp_k = np.cumsum(np.bincount(first_bin, weights=tp, minlength=NUM_THRESHOLDS + 2))
        prop_k = np.cumsum(np.bincount(first_bin, weights=proposal, minlength=NUM_THRESHOLDS + 2))
        tp_k = tp_k[1 : NUM_THRESHOLDS + 1]
        prop_k = prop_k[1 : NUM_THRESHOLDS + 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = tp_k / prop_k
            recall = tp_k / faces if faces else np.full_like(tp_k, np.nan)
        pr[setting] = (precision, recall)
        ap[setting] = voc_ap(recall, precision) if faces else float("nan")
        num_faces[setting] = faces

    official = not subset and iou_threshold == 0.5 and int32_overlap
    if subset:
        notes.append(f"subset: {len(selected)} of {gt.num_images} images (not the official number)")
    return WiderResult(
        ap=ap,
        pr=pr,
        thresholds=thresholds,
        num_images=len(selected),
        num_missing=0 if subset else len(missing),
        num_faces=num_faces,
        num_predictions=num_predictions,
        extra=extra,
        official=official,
        iou_threshold=iou_threshold,
        notes=notes,
    )


# --------------------------------------------------------------------------- reporting


def format_table(result: WiderResult) -> str:
    """A short text table of the APs and the bookkeeping counts."""
    kind = "official" if result.official else "NOT official"
    lines = [
        f"WIDER FACE ({kind}, IoU {result.iou_threshold:g}): {result.num_images} images, "
        f"{result.num_missing} without predictions, {result.num_predictions} boxes",
        f"{'setting':<8} {'AP':>8} {'faces':>7}",
    ]
    for setting, ap in result.ap.items():
        lines.append(f"{setting:<8} {ap:>8.4f} {result.num_faces[setting]:>7d}")
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)
