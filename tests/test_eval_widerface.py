from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from srn.errors import PredictionFormatError
from srn.evaluation.common import voc_ap
from srn.evaluation.plots import plot_wider_pr
from srn.evaluation.widerface import (
    WiderGroundTruth,
    evaluate,
    format_table,
    load_wider_gt,
    read_prediction_file,
    read_predictions,
    write_predictions,
)


def make_gt(images: dict[tuple[str, str], tuple[list[list[int]], list[bool]]]) -> WiderGroundTruth:
    """Ground truth with one setting, 'hard', from {(event, name): (xywh boxes, kept flags)}."""
    keys = tuple(images)
    boxes = tuple(np.array(b, dtype=np.int64).reshape(-1, 4) for b, _ in images.values())
    keep = tuple(np.array(k, dtype=bool) for _, k in images.values())
    return WiderGroundTruth(keys, boxes, {"hard": keep})


# --------------------------------------------------------------------------- hand-made cases


def test_ap_of_a_hand_made_image():
    # Two kept faces. Scores 0.9 / 0.5 / 0.1 normalise to 1 / 0.5 / 0.
    #   k <  500 (t > 0.5): only the face-0 box passes -> TP 1, proposals 1: P = 1,   R = 1/2
    #   500 <= k < 1000:     + the FP                   -> TP 1, proposals 2: P = 1/2, R = 1/2
    #   k = 1000 (t = 0):    + the face-1 box            -> TP 2, proposals 3: P = 2/3, R = 1
    # AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    gt = make_gt({("e", "a"): ([[10, 10, 20, 20], [100, 100, 30, 30]], [True, True])})
    preds = {
        ("e", "a"): np.array(
            [
                [300, 300, 20, 20, 0.5],  # FP, given unsorted on purpose
                [100, 100, 30, 30, 0.1],
                [10, 10, 20, 20, 0.9],
            ]
        )
    }
    result = evaluate(preds, gt)
    assert result.ap["hard"] == pytest.approx(5 / 6, abs=1e-12)
    precision, recall = result.pr["hard"]
    assert precision.shape == recall.shape == (1000,)
    assert_allclose(precision[[0, 498, 499, 998, 999]], [1, 1, 0.5, 0.5, 2 / 3])
    assert_allclose(recall[[0, 498, 499, 998, 999]], [0.5, 0.5, 0.5, 0.5, 1])
    assert result.thresholds[499] == 0.5 and result.thresholds[-1] == 0.0
    assert result.official and result.num_missing == 0 and result.num_predictions == 3


def test_first_face_in_gt_order_wins_not_the_best_one():
    # Face 0 (ignored) and face 1 (kept) both overlap the first box with IoU >= 0.5:
    # face 0: inter 9*11 = 99, union 121+121-99 = 143, IoU 0.69; face 1: IoU 1.
    # MATLAB's int32 overlap is 1 for both, max() picks face 0 -> the box is ignored, and the
    # second box is an FP: no TP at all, AP 0. A float evaluator picks face 1: TP, AP 1.
    gt = make_gt({("e", "a"): ([[0, 0, 10, 10], [2, 0, 10, 10]], [False, True])})
    preds = {("e", "a"): np.array([[2, 0, 10, 10, 0.9], [500, 500, 10, 10, 0.1]])}
    assert evaluate(preds, gt).ap["hard"] == 0.0
    floating = evaluate(preds, gt, int32_overlap=False)
    assert floating.ap["hard"] == 1.0 and not floating.official


def _ap_of_one_box(box_xywh: list[float], int32_overlap: bool = True) -> float:
    # One kept face [0 0 9 9] (x2 = 9, area 10*10); the box scores 0.9 and a far FP scores 0.1.
    # A TP gives AP 1 (P = 1 up to R = 1), an FP gives AP 0.
    gt = make_gt({("e", "a"): ([[0, 0, 9, 9]], [True])})
    preds = {("e", "a"): np.array([[*box_xywh, 0.9], [500, 500, 9, 9, 0.1]])}
    return evaluate(preds, gt, int32_overlap=int32_overlap).ap["hard"]


def test_int32_overlap_rounds_coordinates_union_and_division():
    # x = 3.4, w = 9 -> [3.4, 12.4]. MATLAB: x1 = 3, inter 7*10 = 70, union 100 + 100 - 70 = 130,
    # int32(70/130 = 0.54) = 1 -> TP. Float: inter 6.6*10 = 66, union 134 -> 0.4925 -> FP.
    assert _ap_of_one_box([3.4, 0, 9, 9]) == 1.0
    assert _ap_of_one_box([3.4, 0, 9, 9], int32_overlap=False) == 0.0
    # x = 4.5, w = 5 -> [4.5, 9.5]. Half away from zero: x1 = 5, inter 5*10 = 50,
    # union int32(100 + 60.0) - 50 = 110, 50/110 = 0.45 -> 0: FP. Banker's rounding (x1 = 4,
    # 60/100) and float IoU (55/105 = 0.524) would both call it a TP.
    assert _ap_of_one_box([4.5, 0, 5, 9]) == 0.0
    assert _ap_of_one_box([4.5, 0, 5, 9], int32_overlap=False) == 1.0
    # w = 19 -> inter 100, union 100 + 200 - 100 = 200: int32(0.5) rounds half away to 1 -> TP.
    assert _ap_of_one_box([0, 0, 19, 9]) == 1.0


def test_duplicates_are_fps_and_ignored_faces_are_not_proposals():
    # Face 0 kept, face 1 ignored. Scores 1.0, 0.8, 0.6, 0.0 (already normalised: min 0, max 1).
    #   box A on face 0 (1.0): TP; box B on face 0 again (0.8): FP;
    #   box C on face 1 (0.6): ignored; box D nowhere (0.0): FP.
    # k < 200: TP 1 / 1; 200 <= k < 1000: TP 1 / 2 (C is not a proposal); k = 1000: 1 / 3.
    # Recall is 1 throughout (one kept face): AP = envelope at R = 1 = 1.
    gt = make_gt({("e", "a"): ([[0, 0, 50, 50], [200, 0, 50, 50]], [True, False])})
    preds = {
        ("e", "a"): np.array(
            [
                [0, 0, 50, 50, 1.0],
                [1, 1, 50, 50, 0.8],
                [200, 0, 50, 50, 0.6],
                [900, 900, 10, 10, 0.0],
            ]
        )
    }
    result = evaluate(preds, gt)
    precision, recall = result.pr["hard"]
    assert_allclose(precision[[0, 198, 199, 398, 399, 998, 999]], [1, 1, 0.5, 0.5, 0.5, 0.5, 1 / 3])
    assert_allclose(recall, np.ones(1000))
    assert result.ap["hard"] == 1.0
    assert result.num_faces["hard"] == 1


def test_missing_files_count_as_no_detections_and_subset_mode():
    # Image b has no prediction file; its face still counts: recall is at most 1/2.
    # Full: k < 1000: TP 1 / 1, R 1/2; k = 1000 adds the FP (score 0): P 1/2. AP = 1/2 * 1.
    gt = make_gt(
        {
            ("e", "a"): ([[0, 0, 40, 40]], [True]),
            ("e", "b"): ([[0, 0, 40, 40]], [True]),
        }
    )
    preds = {"e/a.jpg": np.array([[0, 0, 40, 40, 0.7], [300, 300, 40, 40, 0.2]])}
    full = evaluate(preds, gt)
    assert full.num_missing == 1 and full.num_images == 2 and full.official
    assert full.ap["hard"] == 0.5
    # Subset: only image a, one face, recall 1 -> AP 1, and the result says it is not official.
    sub = evaluate(preds, gt, subset=True)
    assert sub.num_images == 1 and not sub.official and sub.num_faces["hard"] == 1
    assert sub.ap["hard"] == 1.0
    assert "NOT official" in format_table(sub)


def test_voc_ap_envelope_and_nan_precision():
    # NaN precision (no proposals) is skipped; the envelope lifts P(R=0.5) to 0.8.
    recall = np.array([0.0, 0.25, 0.5, 0.5, 1.0])
    precision = np.array([np.nan, 0.5, 0.4, 0.8, 0.6])
    # steps: 0 -> 0.25 at max(0.5, 0.4, 0.8, 0.6) = 0.8; 0.25 -> 0.5 at 0.8; 0.5 -> 1 at 0.6
    assert voc_ap(recall, precision) == pytest.approx(0.25 * 0.8 + 0.25 * 0.8 + 0.5 * 0.6)


# --------------------------------------------------------------------------- files


def test_write_then_read_round_trip(tmp_path: Path):
    records = {
        "0--Parade/img_1.jpg": (np.array([[10.0, 20.0, 40.0, 60.0], [0, 0, 5.5, 5.5]]), np.array([0.9, 0.25])),
        "0--Parade/img_2": (np.zeros((0, 4)), np.zeros(0)),
    }
    written = write_predictions(tmp_path, records)
    assert [p.name for p in written] == ["img_1.txt", "img_2.txt"]
    assert (tmp_path / "0--Parade" / "img_1.txt").read_text().splitlines()[:2] == ["img_1", "2"]
    preds = read_predictions(tmp_path)
    assert set(preds) == {("0--Parade", "img_1"), ("0--Parade", "img_2")}
    assert_array_equal(preds[("0--Parade", "img_1")], [[10, 20, 30, 40, 0.9], [0, 0, 5.5, 5.5, 0.25]])
    assert preds[("0--Parade", "img_2")].shape == (0, 5)
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_byte_order_mark_and_windows_line_ends_change_nothing(tmp_path: Path):
    plain, marked = tmp_path / "plain.txt", tmp_path / "marked.txt"
    plain.write_bytes(b"img_1\n2\n10 20 30 40 0.9\n0 0 5.5 5.5 0.25\n")
    marked.write_bytes(b"\xef\xbb\xbfimg_1\r\n2\r\n10 20 30 40 0.9\r\n0 0 5.5 5.5 0.25\r\n")
    assert_array_equal(read_prediction_file(marked), read_prediction_file(plain))


def test_a_writers_temporary_file_is_not_a_prediction(tmp_path: Path):
    (tmp_path / "0--Parade").mkdir()
    (tmp_path / "0--Parade" / "img_1.txt").write_text("img_1\n0\n")
    (tmp_path / "0--Parade" / ".img_2.txt.ab12cd34.partial.txt").write_text("img_2\n1\n")  # a killed run's
    assert set(read_predictions(tmp_path)) == {("0--Parade", "img_1")}


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        ("img\n", 2, "count"),
        ("img\nthree\n", 2, "expected the box count"),
        ("img\n1_0\n", 2, r"expected the box count \(a whole number >= 0\), got '1_0'"),  # int() would say 10
        ("img\n1.0\n1 2 3 4 0.5\n", 2, "expected the box count"),
        ("img\n-1\n", 2, "expected the box count"),
        ("img\n1\n1 2 3_0 4 0.5\n", 3, "not a number: '3_0'"),
        ("img\n1\n1 2 \u0663 4 0.5\n", 3, "not a number"),
        ("img\n2\n1 2 3 4 0.5\n", 4, "has 1"),
        ("img\n1\n1 2 3 4 0.5\n5 6 7 8 0.1\n", 4, "more box lines"),
        ("img\n2\n1 2 3 4 0.5\n1 2 3 4\n", 4, "expected 'x y w h score'"),
        ("img\n2\n1 2 3 4 0.5\n1 2 x 4 0.5\n", 4, "not a number: 'x'"),
        ("img\n1\n1 2 3 4 nan\n", 3, "non-finite"),
    ],
)
def test_malformed_files_name_the_file_and_line(tmp_path: Path, content: str, line: int, message: str):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(PredictionFormatError, match=message) as info:
        read_prediction_file(path)
    assert info.value.line == line
    assert str(path) in str(info.value) and f"line {line}" in str(info.value)


def test_result_dict_json_and_plot(tmp_path: Path):
    gt = make_gt({("e", "a"): ([[10, 10, 20, 20]], [True])})
    result = evaluate({("e", "a"): np.array([[10, 10, 20, 20, 0.9], [90, 90, 9, 9, 0.3]])}, gt)
    d = result.to_dict()
    assert d["ap"] == {"hard": 1.0} and len(d["pr"]["hard"]["recall"]) == 1000
    assert '"official": true' in result.to_json()
    png = plot_wider_pr(result, tmp_path / "pr.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_writes_null_for_nan():
    # The only face is ignored: no face counts, so AP and recall are NaN. The one box (score 0.9
    # alone: max == min) normalises to NaN and passes no threshold, so precision is NaN too.
    gt = make_gt({("e", "a"): ([[10, 10, 20, 20]], [False])})
    with pytest.warns(UserWarning, match="all scores are equal"):
        result = evaluate({("e", "a"): np.array([[10, 10, 20, 20, 0.9]])}, gt)
    assert np.isnan(result.ap["hard"])
    # json.loads calls parse_constant only for the bare NaN, Infinity and -Infinity strict JSON lacks
    parsed = json.loads(result.to_json(), parse_constant=pytest.fail)
    assert parsed["ap"] == {"hard": None}
    assert parsed["pr"]["hard"]["precision"] == [None] * 1000
    assert parsed["pr"]["hard"]["recall"] == [None] * 1000
    assert json.loads(result.to_json(curves=False))["num_faces"] == {"hard": 0}


# --------------------------------------------------------------------------- the real check case


@pytest.fixture(scope="module")
def wider_gt(shared_dir: Path) -> WiderGroundTruth:
    gt_dir = shared_dir / "data" / "widerface" / "eval_gt"
    if not gt_dir.is_dir():
        pytest.skip(f"{gt_dir} is absent")
    return load_wider_gt(gt_dir)


def test_official_gt_set_sizes(wider_gt: WiderGroundTruth):
    assert wider_gt.num_images == 3226
    assert wider_gt.num_faces() == 39708
    assert {s: wider_gt.num_faces(s) for s in wider_gt.settings} == {
        "easy": 7211,
        "medium": 13319,
        "hard": 31958,
    }


def test_reference_case1_matches_official_matlab(wider_gt: WiderGroundTruth, shared_dir: Path):
    pred_dir = shared_dir / "reference" / "wider_eval_case1" / "predictions"
    if not pred_dir.is_dir():
        pytest.skip(f"{pred_dir} is absent")
    preds = read_predictions(pred_dir)
    result = evaluate(preds, wider_gt)
    assert result.official and result.num_missing == 66 and result.num_images == 3226
    # EXPECTED.md: the authors' MATLAB wider_eval. 1e-4 would do; we agree to the printed digits.
    ap = [result.ap[s] for s in ("easy", "medium", "hard")]
    assert_allclose(ap, [0.678934, 0.695847, 0.525187], atol=1e-6, rtol=0)
    # The case is built to catch float-IoU evaluators: they are off by more than 1e-4.
    floating = evaluate(preds, wider_gt, int32_overlap=False)
    assert abs(floating.ap["hard"] - 0.525187) > 1e-4


def test_saturating_int32_path_agrees_with_the_fast_path(monkeypatch: pytest.MonkeyPatch):
    # The fast path skips int32 saturation when every coordinate is small; forcing the general
    # path must not change a single overlap, and absurd coordinates must still work.
    from srn.evaluation import widerface

    rng = np.random.default_rng(0)
    gt = rng.integers(0, 500, (40, 4)).astype(np.int64)
    gt[:, 2:] += gt[:, :2]
    # jittered copies of the faces (many overlaps near 0.5) and random boxes
    pred = np.concatenate([gt[rng.integers(0, 40, 200)] + rng.normal(0, 15, (200, 4)), rng.uniform(-50, 600, (100, 4))])
    pred[::7] = np.round(pred[::7] * 2) / 2  # exact halves exercise the rounding
    fast = widerface._overlap_int32(gt, pred)
    monkeypatch.setattr(widerface, "_NO_SATURATION_BOUND", 0)
    np.testing.assert_array_equal(widerface._overlap_int32(gt, pred), fast)
    assert fast.sum() > 0 and set(np.unique(fast)) <= {0, 1}
    huge = np.array([[1e12, 1e12, 3e12, 3e12], [-1e12, -1e12, 1e12, 1e12]])
    np.testing.assert_array_equal(widerface._overlap_int32(gt, huge), 0)
