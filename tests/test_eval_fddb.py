from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy.optimize import linear_sum_assignment

from srn.errors import PredictionFormatError
from srn.evaluation.fddb import (
    ellipse_rect_overlap,
    evaluate_fddb,
    format_table,
    image_statistics,
    load_fddb_folds,
    read_fddb_detections,
    read_fddb_ellipses,
    stretch_rects,
    write_fddb_detections,
)
from srn.evaluation.plots import plot_fddb_roc

# A radius-10 circle at (50, 50): the pixels with dx^2 + dy^2 <= 100 number 317 (Gauss's circle
# problem, N(10) = 317). Its bounding box [40, 60]^2 holds 21 * 21 = 441 pixels.
CIRCLE = np.array([[10.0, 10.0, 0.0, 50.0, 50.0]])
CIRCLE_BOX_IOU = 317 / 441


# --------------------------------------------------------------------------- rasterised overlap


def test_circle_against_rectangles():
    rects = np.array(
        [
            [40, 40, 20, 20],  # the bounding box: 317 / 441
            [35, 35, 30, 30],  # a larger window: 317 / 961
            [39.5, 39.5, 21, 21],  # cvRound is half-to-even: 39.5 -> 40, 60.5 -> 60: the same box
            [50, 30, 10, 10],  # 11x11 px reaching down to row 40: only the top pixel (50, 40) is shared
            [200, 200, 10, 10],  # far away
        ]
    )
    overlap = ellipse_rect_overlap(CIRCLE, rects)
    assert_allclose(overlap, [[317 / 441, 317 / 961, 317 / 441, 1 / 437, 0.0]], rtol=0, atol=1e-15)


def test_rotation_by_90_degrees_swaps_the_axes():
    rng = np.random.default_rng(0)
    rects = np.column_stack([rng.uniform(60, 140, 50), rng.uniform(60, 140, 50), rng.uniform(5, 60, 50), rng.uniform(5, 60, 50)])
    upright = ellipse_rect_overlap(np.array([[30.0, 12.0, np.pi / 2, 100.0, 100.0]]), rects)
    swapped = ellipse_rect_overlap(np.array([[12.0, 30.0, 0.0, 100.0, 100.0]]), rects)
    assert_array_equal(upright, swapped)
    assert (upright > 0).sum() > 10


def test_clipping_to_the_image():
    # An image 51 px wide ends at column 50, the circle's centre column: the circle keeps its
    # pixels with dx <= 0, (317 + 21) / 2 = 169 (the dx = 0 column holds 21), and the box keeps
    # columns 40..50, 11 * 21 = 231 pixels.
    rect = np.array([[40, 40, 20, 20]])
    assert ellipse_rect_overlap(CIRCLE, rect)[0, 0] == pytest.approx(CIRCLE_BOX_IOU)
    assert_allclose(ellipse_rect_overlap(CIRCLE, rect, image_size=(100, 51)), [[169 / 231]])


def test_stretch_rects():
    rects = np.array([[10.0, 20.0, 30.0, 40.0, 0.9]])
    assert_array_equal(stretch_rects(rects, 1.2), [[10, 16, 30, 48, 0.9]])  # centre 40 kept
    assert_array_equal(stretch_rects(rects, 1.2, anchor="bottom"), [[10, 12, 30, 48, 0.9]])  # bottom 60 kept
    assert_array_equal(stretch_rects(rects), rects)


# --------------------------------------------------------------------------- matching


def test_hungarian_beats_greedy():
    # Annotations A, B; det1 (score 0.9) overlaps A 0.6 and B 0.55; det2 (0.8) overlaps A 0.58.
    # At 0.9: det1 -> A: 1 TP, cont 0.6. At 0.8 the maximum-weight matching is det1 -> B,
    # det2 -> A (0.55 + 0.58 = 1.13 > 0.6): 2 TPs, no FP. Greedy would leave det2 an FP.
    overlap = np.array([[0.6, 0.58], [0.55, 0.0]])
    thr, disc, cont, fp = image_statistics(overlap, np.array([0.9, 0.8]))
    assert_array_equal(thr, [0.9, 0.8])
    assert_array_equal(disc, [1, 2])
    assert_allclose(cont, [0.6, 1.13])
    assert_array_equal(fp, [0, 0])


def test_discrete_needs_more_than_half_and_ties_enter_together():
    # Overlap exactly 0.5 is not a discrete TP (the official test is "> 0.5") but adds 0.5 to
    # the continuous score. The second and third detections share a score: one threshold.
    overlap = np.array([[0.5, 0.0, 0.7]])
    thr, disc, cont, fp = image_statistics(overlap, np.array([0.9, 0.4, 0.4]))
    assert_array_equal(thr, [0.9, 0.4])
    assert_array_equal(disc, [0, 1])
    assert_allclose(cont, [0.5, 0.7])
    assert_array_equal(fp, [1, 2])


def _brute_force(overlap: np.ndarray, scores_desc: np.ndarray):
    """The official procedure verbatim: a fresh Hungarian step at every distinct score."""
    out = []
    for s in np.unique(scores_desc)[::-1]:
        valid = scores_desc >= s
        sub = overlap[:, valid]
        sub = sub[:, sub.sum(axis=0) != 0]
        sub = sub[sub.sum(axis=1) != 0]
        r, c = linear_sum_assignment(sub, maximize=True)
        m = sub[r, c]
        m = m[m > 0]
        out.append((s, float((m > 0.5).sum()), float(m.sum()), valid.sum() - float((m > 0.5).sum())))
    return [np.array(x) for x in zip(*out)]


def test_shortcuts_equal_the_brute_force_procedure():
    rng = np.random.default_rng(0)
    for _ in range(60):
        g, k = rng.integers(1, 6), rng.integers(1, 25)
        # sparse overlaps on a coarse grid so that ties and zero columns/rows are common
        overlap = rng.integers(0, 10, (g, k)) / 10 * (rng.random((g, k)) < 0.3)
        scores = np.sort(rng.integers(0, 8, k) / 8)[::-1]
        got = image_statistics(overlap, scores)
        want = _brute_force(overlap, scores)
        assert_allclose(got[0], want[0])
        assert_allclose(got[2], want[2], atol=1e-12)  # the optimum value is unique
        # Equally good matchings could in principle differ in their count of overlaps > 0.5;
        # with this seed they never do.
        assert_allclose(got[1], want[1])
        assert_allclose(got[3], want[3])


def test_roc_merges_images_by_threshold():
    # Image a: the circle's bounding box at 0.9 (TP) and a far FP at 0.5.
    # Image b: a far FP at 0.7; its circle is never found. Image c has no detection entry.
    # Thresholds 0.9, 0.7, 0.5: FP 0, 1, 2; discrete TP 1 of 3 faces throughout.
    annotations = {
        "a": CIRCLE,
        "b": CIRCLE,
        "c": CIRCLE,
    }
    detections = {
        "a": np.array([[40, 40, 20, 20, 0.9], [300, 300, 10, 10, 0.5]]),
        "b": np.array([[300, 300, 10, 10, 0.7]]),
        "zzz": np.array([[0, 0, 1, 1, 0.1]]),  # not annotated: ignored
    }
    result = evaluate_fddb(detections, annotations)
    assert_array_equal(result.thresholds, [0.9, 0.7, 0.5])
    assert_array_equal(result.false_positives, [0, 1, 2])
    assert_allclose(result.tpr_discrete, [1 / 3] * 3)
    assert_allclose(result.tpr_continuous, [CIRCLE_BOX_IOU / 3] * 3)
    assert (result.num_faces, result.num_images, result.num_missing, result.num_extra) == (3, 3, 1, 1)
    assert result.tpr_at(1) == pytest.approx(1 / 3)
    assert result.tpr_at(1000, continuous=True) == pytest.approx(CIRCLE_BOX_IOU / 3)


# --------------------------------------------------------------------------- files


def test_detection_file_round_trip_and_errors(tmp_path: Path):
    path = write_fddb_detections(
        tmp_path / "dets.txt",
        {
            "2002/08/11/big/img_591": (np.array([[10.0, 20.0, 40.0, 70.0]]), np.array([0.75])),
            "2002/08/26/big/img_265": (np.zeros((0, 4)), np.zeros(0)),
        },
    )
    assert path.read_text().splitlines() == [
        "2002/08/11/big/img_591",
        "1",
        "10.000 20.000 30.000 50.000 0.750000",
        "2002/08/26/big/img_265",
        "0",
    ]
    dets = read_fddb_detections(path)
    assert_array_equal(dets["2002/08/11/big/img_591"], [[10, 20, 30, 50, 0.75]])
    assert dets["2002/08/26/big/img_265"].shape == (0, 5)

    bad = tmp_path / "bad.txt"
    bad.write_text("img_1\n2\n1 2 3 4 0.5\n1 2 3 0.5\n")
    with pytest.raises(PredictionFormatError) as info:
        read_fddb_detections(bad)
    assert str(info.value) == f"{bad}, line 4: expected 5 numbers per detection line, got 4"


def test_roc_plot(tmp_path: Path):
    result = evaluate_fddb({"a": np.array([[40, 40, 20, 20, 0.9]])}, {"a": CIRCLE})
    png = plot_fddb_roc(result, tmp_path / "roc.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert result.to_dict()["tpr_at_1000fp_discrete"] == 1.0
    assert format_table(result) == "FDDB (1 images, 1 faces): TPR at 1000 FP 1.0000 discrete, 0.7188 continuous"


def test_no_detection_for_an_annotated_image_gives_an_empty_roc():
    # Detections only for an image that is not annotated (another fold): nothing to merge.
    result = evaluate_fddb({"other": np.array([[40, 40, 20, 20, 0.9]])}, {"a": CIRCLE})
    assert result.thresholds.shape == result.false_positives.shape == (0,)
    assert (result.num_missing, result.extra, result.tpr_at(1000)) == (1, ("other",), 0.0)


# --------------------------------------------------------------------------- real annotations


def test_real_annotations_load_and_score_their_bounding_boxes(shared_dir: Path):
    fddb = shared_dir / "data" / "fddb"
    if not fddb.is_dir():
        pytest.skip(f"{fddb} is absent")
    folds = load_fddb_folds(fddb / "FDDB-folds")
    sfd = read_fddb_ellipses(fddb / "FDDB_annotation_ellipseList_new_SFD.txt")
    assert (len(folds), sum(len(v) for v in folds.values())) == (2845, 5171)
    assert (len(sfd), sum(len(v) for v in sfd.values())) == (2845, 5409)
    assert set(folds) == set(sfd)

    # Detections = each ellipse's axis-aligned bounding box. An axis-aligned ellipse covers pi/4
    # of its box, so every face but the tiniest is a discrete TP; one 0.48 overlap is the FP.
    detections = {}
    for name, e in folds.items():
        a, b, t, cx, cy = e.T
        hw = np.hypot(a * np.cos(t), b * np.sin(t))
        hh = np.hypot(a * np.sin(t), b * np.cos(t))
        detections[name] = np.column_stack([cx - hw, cy - hh, 2 * hw, 2 * hh, np.full(len(e), 0.9)])
    result = evaluate_fddb(detections, folds)
    assert result.tpr_at(1000) == pytest.approx(5170 / 5171)
    assert_array_equal(result.false_positives, [1])
    assert 0.74 < result.tpr_at(1000, continuous=True) < 0.75
