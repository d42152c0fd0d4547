from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from srn.evaluation.facebox import (
    FaceboxImage,
    evaluate_facebox,
    format_table,
    image_key,
    load_facebox_annotations,
    read_facebox_detections,
)
from srn.evaluation.plots import plot_facebox_pr


def make_annotations(**images: tuple[list[list[float]], list[bool]]) -> dict[str, FaceboxImage]:
    return {
        name: FaceboxImage(f"{name}.jpg", (500, 500, 3), np.array(b, dtype=np.float64).reshape(-1, 4), np.array(i, dtype=bool))
        for name, (b, i) in images.items()
    }


FACES = make_annotations(
    a=([[0, 0, 49, 49], [100, 0, 149, 49], [200, 0, 249, 49]], [False, False, True]),
)


def test_ap_with_duplicates_ignored_faces_and_misses():
    # In score order, leaving out the detection on the ignored face:
    #   0.9 face 0 TP, 0.8 face 0 again FP, (0.7 ignored face: neither), 0.6 nowhere FP, 0.5 face 1 TP
    # TP 1 1 1 2, FP 0 1 2 2 -> recall 1/2 1/2 1/2 1, precision 1 1/2 1/3 1/2
    # AP = 1/2 * 1 + 1/2 * 1/2 = 0.75
    boxes = np.array(
        [
            [101, 1, 150, 50],  # face 1
            [0, 0, 49, 49],  # face 0
            [2, 2, 50, 50],  # face 0 again
            [200, 0, 249, 49],  # the ignored face
            [400, 400, 450, 450],  # nothing
        ]
    )
    scores = np.array([0.5, 0.9, 0.8, 0.7, 0.6])
    result = evaluate_facebox({"folder/a.jpg": (boxes, scores)}, FACES)
    assert result.ap == pytest.approx(0.75)
    assert result.to_dict()["ap"] == pytest.approx(0.75)
    assert_allclose(result.recall, [0.5, 0.5, 0.5, 1.0])
    assert_allclose(result.precision, [1, 0.5, 1 / 3, 0.5])
    assert_allclose(result.scores, [0.9, 0.8, 0.6, 0.5])
    assert result.num_faces == 2 and result.num_detections == 5 and result.num_missing == 0


def test_iou_must_exceed_the_threshold_with_plus_one_areas():
    # face [0 0 9 9]: 10 x 10 = 100 px; box [0 0 19 9]: 200 px; intersection 100 -> IoU 0.5 exactly,
    # not > 0.5: an FP. One pixel narrower, [0 0 18 9]: 100 / 190 = 0.526: a TP.
    faces = make_annotations(a=([[0, 0, 9, 9]], [False]))
    assert evaluate_facebox({"a": (np.array([[0, 0, 19, 9]]), np.array([1.0]))}, faces).ap == 0.0
    assert evaluate_facebox({"a": (np.array([[0, 0, 18, 9]]), np.array([1.0]))}, faces).ap == 1.0


def test_equal_overlaps_pick_the_later_face():
    # Two identical faces; the toolbox's ">= maxovr" keeps the later one.
    box = torch.tensor([[0.0, 0.0, 9.0, 9.0]])  # tensors are accepted too
    later_ignored = make_annotations(a=([[0, 0, 9, 9], [0, 0, 9, 9]], [False, True]))
    earlier_ignored = make_annotations(a=([[0, 0, 9, 9], [0, 0, 9, 9]], [True, False]))
    # picks the ignored face: neither TP nor FP -> recall stays 0
    assert evaluate_facebox({"a": (box, torch.tensor([1.0]))}, later_ignored).ap == 0.0
    assert evaluate_facebox({"a": (box, torch.tensor([1.0]))}, earlier_ignored).ap == 1.0


def test_detections_on_unannotated_images_are_false_positives():
    # Two faces (images a and b). The 1.0 detection is on an image with no annotation: an FP.
    # Then the 0.5 detection finds face a: precision 1/2 at recall 1/2 -> AP 1/4.
    faces = make_annotations(a=([[0, 0, 9, 9]], [False]), b=([[0, 0, 9, 9]], [False]))
    dets = {"a": (np.array([[0, 0, 9, 9]]), np.array([0.5])), "zzz": (np.array([[0, 0, 9, 9]]), np.array([1.0]))}
    result = evaluate_facebox(dets, faces)
    assert result.ap == pytest.approx(0.25)
    assert result.num_missing == 1 and result.extra == ("zzz",)


def test_min_size_ignores_small_faces_and_drops_small_detections():
    faces = make_annotations(a=([[0, 0, 24, 60], [100, 0, 160, 60]], [False, False]))
    dets = {
        "a": (
            np.array([[0, 0, 24, 60], [100, 0, 160, 60], [300, 300, 320, 320]]),
            np.array([0.9, 0.8, 0.95]),
        )
    }
    # Without the size rule: FP (0.95), TP, TP -> precision 0, 1/2, 2/3 at recall 0, 1/2, 1;
    # the envelope is 2/3 at both recall steps -> AP 2/3.
    assert evaluate_facebox(dets, faces).ap == pytest.approx(2 / 3)
    # min_size 30: the 24-px-wide face is ignored, the 20-px detection (<= 21 on both sides) is
    # dropped: one face, one TP -> AP 1.
    result = evaluate_facebox(dets, faces, min_size=30)
    assert result.ap == 1.0 and result.num_faces == 1 and result.num_detections == 2


def test_calibration_recovers_a_global_scale():
    # Every detection is its face shrunk to 0.8 of its size about the centre (IoU 0.64): one
    # calibration step finds sx = sy = 1 / 0.8 = 1.25 and no shift; later steps are identities.
    faces = make_annotations(a=([[0, 0, 99, 99], [200, 100, 279, 219]], [False, False]))
    gt = faces["a"].boxes
    centre = (gt[:, :2] + gt[:, 2:]) / 2
    half = (gt[:, 2:] - gt[:, :2]) / 2 * 0.8
    dets = {"a": (np.concatenate([centre - half, centre + half], axis=1), np.array([0.9, 0.8]))}
    result = evaluate_facebox(dets, faces, calibrate_iters=5)
    assert_allclose(result.calibration, (0.0, 0.0, 1.25, 1.25), atol=1e-12)
    assert result.ap == 1.0


def test_image_key_and_plot(tmp_path: Path):
    result = evaluate_facebox({"a": (np.array([[0, 0, 49, 49]]), np.array([1.0]))}, FACES)
    assert plot_facebox_pr(result, tmp_path / "pr.png").read_bytes()[:4] == b"\x89PNG"
    assert format_table(result, "AFW") == "AFW (1 images, 2 faces): AP 0.5000"
    assert image_key("2007_000272.jpg") == "2007_000272"
    assert image_key("afw/1004109301") == "1004109301"


def test_real_annotation_files(shared_dir: Path):
    folder = shared_dir / "data" / "afw_pascal" / "annotations"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    afw = load_facebox_annotations(folder / "new_annotations_AFW.mat")
    pascal = load_facebox_annotations(folder / "Annotations_Face_PASCALLayout_large_fixed.mat")
    assert len(afw) == 205 and len(pascal) == 851
    assert sum(len(i.boxes) for i in afw.values()) == 545
    assert sum(int(i.ignore.sum()) for i in afw.values()) == 71
    assert sum(len(i.boxes) for i in pascal.values()) == 1635
    assert afw["5002723411"].name == "5002723411.jpg"
    # the annotations themselves, as detections with decreasing scores, score AP 1
    dets = {i.name: (i.boxes, np.linspace(1.0, 0.5, len(i.boxes))) for i in pascal.values()}
    result = evaluate_facebox(dets, pascal)
    assert result.ap == 1.0 and result.num_faces == 1635 - 55


def test_detections_json_round_trip(tmp_path: Path):
    # The layout srn eval writes: {image: {"boxes": [[x1, y1, x2, y2], ...], "scores": [...]}};
    # an image without faces may write "boxes": [].
    path = tmp_path / "detections.json"
    path.write_text('{"afw/a.jpg": {"boxes": [[0, 0, 49, 49], [1, 2, 3, 4.5]], "scores": [0.9, 0.1]},'
                    ' "b": {"boxes": [], "scores": []}}')
    dets = read_facebox_detections(path)
    assert list(dets) == ["a", "b"]
    assert_allclose(dets["a"][0], [[0, 0, 49, 49], [1, 2, 3, 4.5]])
    assert_allclose(dets["a"][1], [0.9, 0.1])
    assert dets["b"][0].shape == (0, 4) and dets["b"][1].shape == (0,)
