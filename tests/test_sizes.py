"""srn.evaluation.sizes: AP and recall per face size, on a hand-worked example."""

import math

import pytest
import torch

from srn.evaluation.sizes import SIZE_BINS, bin_name, score_by_size

# Three labelled faces: A (10 px), B (50 px) and C (40 px, never found).
LABELS = [torch.tensor([[0, 0, 10, 10], [100, 100, 150, 150], [200, 200, 240, 240]], dtype=torch.float64)]
DETECTIONS = [(
    torch.tensor([
        [400, 400, 412, 412],  # 0.95: nothing there, 12 px -> a false positive in "<16" and "all"
        [0, 0, 10, 10],  # 0.9: A
        [100, 100, 150, 150],  # 0.8: B
        [1, 0, 11, 10],  # 0.7: A again, a duplicate
        [300, 300, 320, 320],  # 0.6: nothing there, 20 px -> a false positive in "16-32" and "all"
    ], dtype=torch.float64),
    torch.tensor([0.95, 0.9, 0.8, 0.7, 0.6], dtype=torch.float64),
)]


def test_bins_and_names():
    assert [bin_name(lo, hi) for lo, hi in SIZE_BINS] == ["<16", "16-32", "32-64", ">=64"]


def test_score_by_size_hand_worked():
    result = score_by_size(DETECTIONS, LABELS, thresholds=(0.75,))
    # all: F T T F F over 3 faces -> recall 0 1/3 2/3 2/3 2/3, precision 0 .5 2/3 .5 .4; VOC AP 4/9
    assert result["all"]["faces"] == 3
    assert result["all"]["ap"] == pytest.approx(4 / 9)
    assert result["all"]["recall"]["0.75"] == pytest.approx(2 / 3)
    assert result["all"]["precision"]["0.75"] == pytest.approx(2 / 3)
    # <16: B's detection is left out (its face is outside the bin), so is the 20 px one: F T F
    assert result["<16"]["faces"] == 1
    assert result["<16"]["ap"] == pytest.approx(0.5)
    assert result["<16"]["precision"]["0.75"] == pytest.approx(0.5)
    # 16-32: no face, one false positive
    assert result["16-32"]["faces"] == 0 and math.isnan(result["16-32"]["ap"])
    # 32-64: B found, C not
    assert result["32-64"]["faces"] == 2
    assert result["32-64"]["ap"] == pytest.approx(0.5)
    assert result["32-64"]["recall"]["0.75"] == pytest.approx(0.5)
    assert result[">=64"]["faces"] == 0


def test_ignored_faces_count_neither_way():
    result = score_by_size(DETECTIONS, LABELS, thresholds=(0.5,), ignore=[torch.tensor([True, False, False])])
    # A ignored: its two detections vanish; F T F over B and C
    assert result["all"]["faces"] == 2
    assert result["all"]["ap"] == pytest.approx(0.25)
    assert result["<16"]["faces"] == 0


def test_images_without_detections_or_labels():
    empty = (torch.zeros(0, 4), torch.zeros(0))
    result = score_by_size([empty, DETECTIONS[0]], [LABELS[0], torch.zeros(0, 4)], thresholds=(0.5,))
    assert result["all"]["faces"] == 3
    assert result["all"]["ap"] == 0.0 and result["all"]["recall"]["0.5"] == 0.0


def test_mismatched_scores_is_an_error():
    with pytest.raises(ValueError, match="5 boxes but 4 scores"):
        score_by_size([(DETECTIONS[0][0], DETECTIONS[0][1][:4])], LABELS)
