"""Matcher on hand-written IoU matrices (detectron2 tests/modeling/test_matcher.py style)."""

from __future__ import annotations

import torch
from torch.testing import assert_close

from srn.matcher import Matcher


def _labels(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int8)


# Rows are faces, columns anchors. Column by column, the best IoU is
#   0.9 (f0), 0.7 (f0), 0.75 (f1), 0.3 (f0), 0.29 (f0), 0.5 (f1), 0.4 (f1), 0.0
IOU = torch.tensor(
    [
        [0.9, 0.7, 0.69, 0.3, 0.29, 0.1, 0.2, 0.0],
        [0.1, 0.2, 0.75, 0.1, 0.00, 0.5, 0.4, 0.0],
    ]
)


def test_step1_thresholds() -> None:
    # >= 0.7 positive (0.7 itself included), [0.3, 0.7) ignored, < 0.3 negative.
    matched_idxs, labels = Matcher(0.3, 0.7)(IOU)
    assert labels.dtype == torch.int8
    assert_close(labels, _labels([1, 1, 1, -1, 0, -1, -1, 0]))
    assert matched_idxs[:3].tolist() == [0, 0, 1]


def test_step2_thresholds() -> None:
    # >= 0.5 positive (0.5 included), [0.4, 0.5) ignored (0.4 included), < 0.4 negative.
    matched_idxs, labels = Matcher(0.4, 0.5)(IOU)
    assert_close(labels, _labels([1, 1, 1, 0, 0, 1, -1, 0]))
    assert matched_idxs[[0, 1, 2, 5]].tolist() == [0, 0, 1, 1]


def test_ignore_band_edges() -> None:
    iou = torch.tensor([[0.39999, 0.4, 0.49999, 0.5]])
    _, labels = Matcher(0.4, 0.5)(iou)
    assert_close(labels, _labels([0, -1, -1, 1]))


def test_batched_with_padding_equals_per_image() -> None:
    # Image 1 has one real face; its padding row holds a large value that must never match.
    iou = torch.stack([IOU, torch.tensor([[0.2, 0.8, 0.35, 0.0, 0.6, 0.0, 0.0, 0.0], [0.99] * 8])])
    gt_valid = torch.tensor([[True, True], [True, False]])
    matcher = Matcher(0.3, 0.7)
    matched_idxs, labels = matcher(iou, gt_valid)
    assert matched_idxs.shape == labels.shape == (2, 8)
    for i, num_gt in enumerate([2, 1]):
        expected_idxs, expected_labels = matcher(iou[i, :num_gt])
        assert_close(labels[i], expected_labels)
        positive = expected_labels == 1
        assert_close(matched_idxs[i][positive], expected_idxs[positive])
    assert_close(labels[1], _labels([0, 1, -1, 0, -1, 0, 0, 0]))


def test_all_padding_image_is_negative() -> None:
    iou = torch.full((1, 2, 3), 0.9)
    _, labels = Matcher(0.3, 0.7)(iou, gt_valid=torch.zeros(1, 2, dtype=torch.bool))
    assert_close(labels, torch.zeros(1, 3, dtype=torch.int8))


def test_no_faces() -> None:
    matched_idxs, labels = Matcher(0.4, 0.5, allow_low_quality_matches=True)(torch.zeros(3, 0, 5))
    assert_close(labels, torch.zeros(3, 5, dtype=torch.int8))
    assert_close(matched_idxs, torch.zeros(3, 5, dtype=torch.int64))


def test_ignored_face_makes_its_anchors_ignored() -> None:
    # Face 1 is ignored: anchor 2 (best match f1 at 0.75) and anchor 5 (f1 at 0.5) are ignored;
    # anchors best matched to face 0 keep their labels.
    gt_ignore = torch.tensor([False, True])
    _, labels = Matcher(0.3, 0.7)(IOU, gt_ignore=gt_ignore)
    assert_close(labels, _labels([1, 1, -1, -1, 0, -1, -1, 0]))
    _, labels = Matcher(0.4, 0.5)(IOU, gt_ignore=gt_ignore)
    assert_close(labels, _labels([1, 1, -1, 0, 0, -1, -1, 0]))


def test_best_match_to_ignored_face_wins_over_a_real_face() -> None:
    # IoU 0.72 with the ignored face beats 0.71 with the real one: the anchor is ignored.
    iou = torch.tensor([[0.71], [0.72]])
    _, labels = Matcher(0.3, 0.7)(iou, gt_ignore=torch.tensor([False, True]))
    assert_close(labels, _labels([-1]))


def test_low_quality_matches_off_by_default() -> None:
    assert Matcher(0.3, 0.7).allow_low_quality_matches is False


def test_low_quality_matches() -> None:
    # f0's best anchors are a0 and a1 (a tie at 0.45): both promoted, matched to f0.
    # f1's best is a2 at 0.4, although a2 overlaps f2 more (0.6): promoted, matched to f1.
    # f2's best is a3 (0.8, already positive). f3 overlaps nothing: promotes nothing.
    # f4 is ignored: its best anchor a4 (0.2) stays negative.
    iou = torch.tensor(
        [
            [0.45, 0.45, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.4, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.6, 0.8, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.2, 0.0],
        ]
    )
    gt_ignore = torch.tensor([False, False, False, False, True])
    matched_idxs, labels = Matcher(0.3, 0.7)(iou, gt_ignore=gt_ignore)
    assert_close(labels, _labels([-1, -1, -1, 1, 0, 0]))
    matched_idxs, labels = Matcher(0.3, 0.7, allow_low_quality_matches=True)(iou, gt_ignore=gt_ignore)
    assert_close(labels, _labels([1, 1, 1, 1, 0, 0]))
    assert matched_idxs[:4].tolist() == [0, 0, 1, 2]


def test_low_quality_ignores_padding() -> None:
    iou = torch.tensor([[[0.2, 0.1], [0.0, 0.3]]])
    gt_valid = torch.tensor([[True, False]])
    _, labels = Matcher(0.4, 0.5, allow_low_quality_matches=True)(iou, gt_valid)
    assert_close(labels, _labels([[1, 0]]))
