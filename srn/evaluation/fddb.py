"""FDDB evaluation: ellipse annotations, rectangle detections, discrete and continuous ROC.

This follows Vidit Jain's official ``evaluate`` program:

* Overlap is intersection / union of **pixel masks**: the annotation ellipse and the detection
  rectangle. As the official code draws them with OpenCV, the ellipse centre is rounded, its axes
  are truncated to integers and its angle is rounded to whole degrees; the rectangle covers the
  pixels from ``round(x), round(y)`` to ``round(x + w), round(y + h)`` inclusive.
* For every distinct detection score ``s`` of an image, the detections with score >= ``s`` are
  matched one-to-one to the annotations by maximum total overlap (Hungarian). A matched pair
  adds its overlap to the continuous TP and, if the overlap is > 0.5, one discrete TP; every
  other kept detection is a false positive.
* The per-image results are merged over all images (all folds together) into one ROC: at each
  threshold, each image contributes its statistics at its smallest distinct score >= threshold.

Two known, documented differences from the official binary, both because the images are not
available here:

* Masks are rasterised without an image canvas, so regions are **not clipped** to the image
  border unless ``image_sizes`` is given.
* The ellipse is rasterised exactly (pixel centres inside the ellipse), while OpenCV fills a
  polygon with 5-degree steps including its outline; boundary pixels can differ by about one.

The matching is not re-run from scratch at every threshold; see :func:`image_statistics` for the
two exact shortcuts (detections touching no annotation, and connected components).

Detection rectangles may be stretched toward the ellipse shape first (``height_scale``). WIDER
FACE-style boxes are shorter than FDDB's ellipses, which reach over the forehead, so evaluations
often scale the height (e.g. by 1.2). The default is 1.0 (off), the official protocol.

Ellipse lists and detection files are read by the one FDDB parser, :mod:`srn.data.formats.fddb`
(:func:`read_fddb_ellipses` is re-exported here).

See docs/design.md, "Evaluation protocols". This module only computes; :mod:`srn.evaluation.plots`
draws the ROC and ``srn eval`` writes the report.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy.optimize import linear_sum_assignment

from srn.atomic import atomic_write_text
from srn.data.formats.fddb import read_fddb_blocks, read_fddb_ellipses
from srn.errors import ConfigError, InputPathError, PredictionFormatError
from srn.evaluation.common import JsonResult, as_numpy, jsonable, xywh_line
from srn.paths import check_input_dir, check_input_file

__all__ = [
    "read_fddb_ellipses",
    "load_fddb_folds",
    "read_fddb_detections",
    "write_fddb_detections",
    "stretch_rects",
    "ellipse_rect_overlap",
    "image_statistics",
    "FddbResult",
    "evaluate_fddb",
    "format_table",
]


# --------------------------------------------------------------------------- reading and writing


def load_fddb_folds(folds_dir: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """All ten ``FDDB-fold-XX-ellipseList.txt`` files of ``folds_dir``, in fold order."""
    folds_dir = check_input_dir(folds_dir, what="FDDB folds folder")
    paths = sorted(folds_dir.glob("FDDB-fold-*-ellipseList.txt"))
    if not paths:
        raise InputPathError(folds_dir, "holds no FDDB-fold-*-ellipseList.txt")
    return read_fddb_ellipses(paths)


def read_fddb_detections(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
) -> dict[str, np.ndarray]:
    """Read FDDB rectangle detections: ``name / count / x y w h score`` blocks.

    ``paths`` may be one file, several (e.g. one per fold), or a folder (all its ``*.txt``).

    Returns:
        ``{image name: float64[K, 5]}`` ``(x, y, w, h, score)``, in file order.

    Raises:
        InputPathError: a file or folder is missing or unreadable, a folder holds no ``*.txt``.
        PredictionFormatError: naming the file and the line of a malformed block.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in check_input_dir(p, what="detection folder").glob("*.txt") if q.is_file())
            if not found:
                raise InputPathError(p, "holds no *.txt detection file")
            files += found
        else:
            files.append(check_input_file(p, what="FDDB detection file"))
    for k, path in enumerate(files):
        # the same file twice would count every detection twice
        if any(os.path.samefile(path, earlier) for earlier in files[:k]):
            raise InputPathError(path, "appears twice in the list of detection files")
    detections: dict[str, np.ndarray] = {}
    for path in files:
        for name, rows, _ in read_fddb_blocks(path, (5,), "detection", PredictionFormatError):
            # the same image in two files (or twice) accumulates, as in a concatenated file
            detections[name] = np.concatenate([detections[name], rows]) if name in detections else rows
    return detections


def write_fddb_detections(
    path: str | os.PathLike[str],
    records: Mapping[str, tuple[Any, Any]],
    format_line: Callable[[np.ndarray, float], str] | None = None,
) -> Path:
    """Write one FDDB detection file (atomically) from ``{name: (boxes xyxy (K, 4), scores (K,))}``.

    The default line is ``x1 y1 (x2-x1) (y2-y1) score``.
    """
    format_line = format_line or xywh_line
    out: list[str] = []
    for name, (boxes, scores) in records.items():
        boxes_np = as_numpy(boxes).reshape(-1, 4)
        scores_np = as_numpy(scores).reshape(-1)
        if boxes_np.shape[0] != scores_np.shape[0]:
            raise ValueError(f"{name}: {boxes_np.shape[0]} boxes but {scores_np.shape[0]} scores")
        out += [name, str(boxes_np.shape[0])]
        out += [format_line(b, float(s)) for b, s in zip(boxes_np, scores_np, strict=True)]
    return atomic_write_text(path, "\n".join(out) + "\n")


# --------------------------------------------------------------------------- geometry


def stretch_rects(
    rects_xywh: np.ndarray,
    height_scale: float = 1.0,
    anchor: Literal["center", "bottom"] = "center",
) -> np.ndarray:
    """Scale detection heights toward the FDDB ellipse shape.

    Args:
        rects_xywh (float64[K, 4+]): ``x y w h ...``; extra columns pass through.
        height_scale: new height = ``h * height_scale``.
        anchor: keep the vertical centre (``"center"``) or the bottom edge, the chin
            (``"bottom"``: the box grows upward over the forehead).
    """
    if not (math.isfinite(height_scale) and height_scale > 0):
        raise ConfigError(f"the height scale must be a finite number > 0, got {height_scale}")
    out = np.array(rects_xywh, dtype=np.float64, copy=True)
    if height_scale == 1.0:
        return out
    new_h = out[:, 3] * height_scale
    if anchor == "center":
        out[:, 1] -= (new_h - out[:, 3]) / 2
    elif anchor == "bottom":
        out[:, 1] -= new_h - out[:, 3]
    else:
        raise ValueError(f"anchor must be 'center' or 'bottom', got {anchor!r}")
    out[:, 3] = new_h
    return out


def _cv_round(x: np.ndarray | float) -> np.ndarray:
    # cvPointFrom32f: float32, then cvRound (round half to even)
    return np.rint(np.asarray(x, dtype=np.float32).astype(np.float64))


def _ellipse_row_spans(
    ellipse: np.ndarray, image_size: tuple[int, int] | None
) -> tuple[int, np.ndarray, np.ndarray]:
    """Rasterise one ellipse as inclusive pixel spans per row.

    A pixel belongs to the ellipse when its centre does. The ellipse is convex, so each row's
    pixels form one run ``[x_lo, x_hi]``, solved from the quadratic in x: O(rows), no mask.

    Returns:
        (first_row, x_lo int64[R], x_hi int64[R]); empty rows have ``x_hi < x_lo``.
    """
    major, minor, angle, cx, cy = (float(v) for v in ellipse)
    a = float(math.trunc(major))  # cvSize(int(ra), int(rb))
    b = float(math.trunc(minor))
    theta = math.radians(float(np.rint(math.degrees(angle))))  # cvEllipse takes whole degrees
    ccx = float(_cv_round(cx))
    ccy = float(_cv_round(cy))
    a, b = max(a, 0.5), max(b, 0.5)  # a zero axis still draws a one-pixel-wide line
    c, s = math.cos(theta), math.sin(theta)
    # inside: (u/a)^2 + (v/b)^2 <= 1 with u = dx c + dy s, v = -dx s + dy c.
    # As a quadratic in dx for a row dy: qa dx^2 + qb dx + qc <= 0.
    qa = c * c / (a * a) + s * s / (b * b)
    half_height = math.sqrt((a * s) ** 2 + (b * c) ** 2)  # vertical half-extent
    first = int(math.ceil(ccy - half_height - 1e-9))
    last = int(math.floor(ccy + half_height + 1e-9))
    if image_size is not None:
        first, last = max(first, 0), min(last, image_size[0] - 1)
    dy = np.arange(first, last + 1, dtype=np.float64) - ccy
    qb = 2 * dy * c * s * (1 / (a * a) - 1 / (b * b))
    qc = dy * dy * (s * s / (a * a) + c * c / (b * b)) - 1
    disc = qb * qb - 4 * qa * qc
    root = np.sqrt(np.maximum(disc, 0.0))
    # the 1e-9 keeps pixels that lie exactly on the outline (e.g. (6, 8) on a radius-10 circle)
    x_lo = np.ceil(ccx + (-qb - root) / (2 * qa) - 1e-9).astype(np.int64)
    x_hi = np.floor(ccx + (-qb + root) / (2 * qa) + 1e-9).astype(np.int64)
    # rows are limited to the vertical extent, so a negative discriminant is only roundoff at the
    # extreme rows: there the run is empty unless the tangent point is exactly a pixel centre.
    if image_size is not None:
        x_lo = np.maximum(x_lo, 0)
        x_hi = np.minimum(x_hi, image_size[1] - 1)
    return first, x_lo, x_hi


def ellipse_rect_overlap(
    ellipses: np.ndarray,
    rects_xywh: np.ndarray,
    image_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Mask intersection over mask union of every (ellipse, rectangle) pair.

    The ellipse mask is its per-row pixel runs; the intersection with an axis-aligned rectangle is
    then a sum of clipped run lengths, vectorised over rows and rectangles.

    Args:
        ellipses (float64[G, 5]): ``(major_radius, minor_radius, angle_rad, cx, cy)``.
        rects_xywh (float64[K, 4+]): ``x y w h`` detections.
        image_size: ``(height, width)`` to clip both masks to the image, as the official code does
            implicitly; None rasterises without clipping.

    Returns:
        float64[G, K] overlaps in [0, 1].
    """
    ellipses = np.asarray(ellipses, dtype=np.float64).reshape(-1, 5)
    rects = np.asarray(rects_xywh, dtype=np.float64).reshape(len(rects_xywh), -1)
    out = np.zeros((ellipses.shape[0], rects.shape[0]), dtype=np.float64)
    if out.size == 0:
        return out

    # The rectangle mask is the inclusive pixel range between the rounded corners.
    rx1 = _cv_round(rects[:, 0]).astype(np.int64)
    ry1 = _cv_round(rects[:, 1]).astype(np.int64)
    rx2 = _cv_round(rects[:, 0] + rects[:, 2]).astype(np.int64)
    ry2 = _cv_round(rects[:, 1] + rects[:, 3]).astype(np.int64)
    # OpenCV draws a rectangle with swapped corners the same way
    rx1, rx2 = np.minimum(rx1, rx2), np.maximum(rx1, rx2)
    ry1, ry2 = np.minimum(ry1, ry2), np.maximum(ry1, ry2)
    if image_size is not None:
        height, width = image_size
        rx1, rx2 = np.maximum(rx1, 0), np.minimum(rx2, width - 1)
        ry1, ry2 = np.maximum(ry1, 0), np.minimum(ry2, height - 1)
    rect_area = (np.maximum(rx2 - rx1 + 1, 0) * np.maximum(ry2 - ry1 + 1, 0)).astype(np.float64)

    for g in range(ellipses.shape[0]):
        first, x_lo, x_hi = _ellipse_row_spans(ellipses[g], image_size)
        run = np.maximum(x_hi - x_lo + 1, 0)
        ellipse_area = float(run.sum())
        if ellipse_area == 0:
            continue
        last = first + run.shape[0] - 1
        # only rectangles that reach the ellipse's bounding box can intersect it
        cand = np.flatnonzero(
            (rx2 >= x_lo.min()) & (rx1 <= x_hi.max()) & (ry2 >= first) & (ry1 <= last)
        )
        if cand.size == 0:
            continue
        rows = np.arange(first, last + 1)[:, None]  # (R, 1)
        in_rows = (rows >= ry1[cand]) & (rows <= ry2[cand])  # (R, C)
        width = np.minimum(x_hi[:, None], rx2[cand]) - np.maximum(x_lo[:, None], rx1[cand]) + 1
        inter = (np.maximum(width, 0) * in_rows).sum(axis=0).astype(np.float64)  # (C,)
        out[g, cand] = inter / (ellipse_area + rect_area[cand] - inter)
    return out


# --------------------------------------------------------------------------- evaluation


def _annotation_components(touches: np.ndarray) -> np.ndarray:
    """Label annotations linked through detections that touch both (transitively).

    Args:
        touches (bool[G, K]).

    Returns:
        int64[G]: the lowest annotation index of each annotation's component.
    """
    t = touches.astype(np.int64)
    reach = ((t @ t.T) > 0) | np.eye(t.shape[0], dtype=bool)  # (G, G)
    while True:  # transitive closure by squaring: log2(G) steps, G is small
        r = reach.astype(np.int64)
        wider = (r @ r) > 0
        if (wider == reach).all():
            return reach.argmax(axis=1)
        reach = wider


def _matching_by_prefix(overlap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Optimal one-to-one matching of annotations to the first n detections, for every n.

    Args:
        overlap (float64[G, K]): every column overlaps at least one annotation and every row at
            least one detection; columns in score order.

    Returns:
        (discrete TP, continuous TP), each float64[K]: index n-1 holds the values when the first
        n detections pass.
    """
    num_annots, num_dets = overlap.shape
    if num_annots == 1:
        # One annotation: the Hungarian step just takes the best passing detection.
        best = np.maximum.accumulate(overlap[0])
        return (best > 0.5).astype(np.float64), best
    disc = np.empty(num_dets)
    cont = np.empty(num_dets)
    for n in range(1, num_dets + 1):
        sub = overlap[:, :n]
        sub = sub[sub.any(axis=1)]  # the official code drops annotations no detection touches
        r, c = linear_sum_assignment(sub, maximize=True)
        matched = sub[r, c]
        disc[n - 1] = np.count_nonzero(matched > 0.5)
        cont[n - 1] = matched.sum()  # zero-overlap pairs add nothing
    return disc, cont


def image_statistics(
    overlap: np.ndarray, scores_desc: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct score of one image (descending): (threshold, TP discrete, TP continuous, FP).

    At each distinct score ``s``, the detections with score >= ``s`` are matched to the
    annotations by maximum total overlap, as the official code does. Two exact shortcuts keep this
    fast without re-matching from scratch at every threshold:

    * A detection that overlaps no annotation never changes the matching; it only adds an FP.
    * The optimum splits over connected components of the annotation-detection overlap graph
      (taken at the lowest threshold, so no edge ever crosses two components). A component with
      one annotation is a running maximum; only larger components run the Hungarian step, once
      per admitted detection of that component.

    Args:
        overlap (float64[G, K]): detections sorted by score, descending.
        scores_desc (float64[K]).
    """
    num_annots, num_dets = overlap.shape
    # end of each group of equal scores: detections [0, end) pass threshold scores_desc[end-1]
    ends = np.flatnonzero(np.r_[scores_desc[1:] != scores_desc[:-1], True]) + 1
    disc_by_prefix = np.zeros(num_dets)
    cont_by_prefix = np.zeros(num_dets)
    touches = overlap > 0  # (G, K)
    if num_annots and touches.any():
        labels = _annotation_components(touches)
        for label in np.unique(labels):
            rows = np.flatnonzero(labels == label)
            cols = np.flatnonzero(touches[rows].any(axis=0))
            if cols.size == 0:
                continue
            disc, cont = _matching_by_prefix(overlap[np.ix_(rows, cols)])
            # the component's value holds from its k-th detection until its next one
            slot = np.searchsorted(cols, np.arange(num_dets), side="right") - 1
            has = slot >= 0
            disc_by_prefix[has] += disc[slot[has]]
            cont_by_prefix[has] += cont[slot[has]]
    tp_disc = disc_by_prefix[ends - 1]
    tp_cont = cont_by_prefix[ends - 1]
    fp = ends - tp_disc
    return scores_desc[ends - 1], tp_disc, tp_cont, fp


@dataclass(eq=False)
class FddbResult(JsonResult):
    """The FDDB ROC over all evaluated images.

    Attributes:
        thresholds: ``float64[T]`` distinct detection scores, descending.
        false_positives: ``float64[T]`` FPs with score >= threshold.
        tpr_discrete / tpr_continuous: ``float64[T]`` true-positive rates at each threshold.
        num_faces / num_images: annotations and images evaluated.
        num_missing: annotated images with no detection entry (no detections).
        extra: names of the detection entries for images not in the annotations (ignored), in
            input order.
    """

    thresholds: np.ndarray
    false_positives: np.ndarray
    tpr_discrete: np.ndarray
    tpr_continuous: np.ndarray
    num_faces: int
    num_images: int
    num_missing: int
    extra: tuple[str, ...] = field(default=())

    @property
    def num_extra(self) -> int:
        """Detection entries for images that are not annotated."""
        return len(self.extra)

    @property
    def metrics(self) -> dict[str, float]:
        """The headline numbers: the TPR at 1000 false positives, discrete and continuous."""
        return {"tpr_at_1000": self.tpr_at(1000), "tpr_at_1000_continuous": self.tpr_at(1000, continuous=True)}

    def tpr_at(self, max_false_positives: float = 1000, continuous: bool = False) -> float:
        """The best TPR among ROC points with at most ``max_false_positives`` FPs (0 if none)."""
        tpr = self.tpr_continuous if continuous else self.tpr_discrete
        ok = self.false_positives <= max_false_positives
        return float(tpr[ok].max()) if ok.any() else 0.0

    def to_dict(self, curves: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "tpr_at_1000fp_discrete": self.tpr_at(1000),
            "tpr_at_1000fp_continuous": self.tpr_at(1000, continuous=True),
            "num_faces": self.num_faces,
            "num_images": self.num_images,
            "num_missing": self.num_missing,
            "num_extra": self.num_extra,
        }
        if curves:
            out["roc"] = {
                "thresholds": self.thresholds.tolist(),
                "false_positives": self.false_positives.tolist(),
                "tpr_discrete": self.tpr_discrete.tolist(),
                "tpr_continuous": self.tpr_continuous.tolist(),
            }
        return jsonable(out)


def evaluate_fddb(
    detections: Mapping[str, np.ndarray],
    annotations: Mapping[str, np.ndarray],
    height_scale: float = 1.0,
    anchor: Literal["center", "bottom"] = "center",
    image_sizes: Mapping[str, tuple[int, int]] | None = None,
) -> FddbResult:
    """Discrete and continuous ROC of rectangle detections against FDDB ellipses.

    Args:
        detections: ``{image name: (K, 5) x y w h score}`` (see :func:`read_fddb_detections`).
        annotations: ``{image name: (G, 5) major minor angle cx cy}``; every annotated image is
            evaluated, with no detections if it has no entry in ``detections``.
        height_scale, anchor: optional stretching of the rectangles, see :func:`stretch_rects`.
        image_sizes: optional ``{image name: (height, width)}`` to clip masks to the image.
    """
    stretch_rects(np.zeros((0, 4)), height_scale, anchor)  # a bad scale fails here, not on the first detection
    extra = tuple(name for name in detections if name not in annotations)
    num_missing = 0
    num_faces = 0
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for name, ellipses in annotations.items():
        ellipses = np.asarray(ellipses, dtype=np.float64).reshape(-1, 5)
        num_faces += ellipses.shape[0]
        dets = detections.get(name)
        if dets is None:
            num_missing += 1
            continue
        dets = np.asarray(dets, dtype=np.float64).reshape(-1, 5)
        if dets.shape[0] == 0:
            continue
        dets = dets[np.argsort(-dets[:, 4], kind="stable")]
        rects = stretch_rects(dets, height_scale, anchor)
        size = image_sizes.get(name) if image_sizes is not None else None
        overlap = ellipse_rect_overlap(ellipses, rects[:, :4], size)
        thr, disc, cont, fp = image_statistics(overlap, dets[:, 4])
        # store increments so that the global curve is one cumulative sum
        parts.append((thr, np.diff(disc, prepend=0.0), np.diff(cont, prepend=0.0), np.diff(fp, prepend=0.0)))

    if parts:
        thr, d_disc, d_cont, d_fp = (np.concatenate(x) for x in zip(*parts, strict=True))
    else:
        thr = d_disc = d_cont = d_fp = np.zeros(0)
    # At threshold t an image contributes its statistics at its smallest distinct score >= t,
    # i.e. the sum of its increments at scores >= t: a cumulative sum in descending score order.
    order = np.argsort(-thr, kind="stable")
    thr = thr[order]
    disc = np.cumsum(d_disc[order])
    cont = np.cumsum(d_cont[order])
    fp = np.cumsum(d_fp[order])
    # the end of each equal-score run (none when no annotated image has a detection)
    last = np.flatnonzero(np.r_[thr[1:] != thr[:-1], True]) if thr.size else np.zeros(0, dtype=np.int64)
    denom = max(num_faces, 1)
    return FddbResult(
        thresholds=thr[last],
        false_positives=fp[last],
        tpr_discrete=disc[last] / denom,
        tpr_continuous=cont[last] / denom,
        num_faces=num_faces,
        num_images=len(annotations),
        num_missing=num_missing,
        extra=extra,
    )


def format_table(result: FddbResult) -> str:
    """One line: the TPR at 1000 false positives, discrete and continuous."""
    return (
        f"FDDB ({result.num_images} images, {result.num_faces} faces): TPR at 1000 FP "
        f"{result.tpr_at(1000):.4f} discrete, {result.tpr_at(1000, continuous=True):.4f} continuous"
    )
