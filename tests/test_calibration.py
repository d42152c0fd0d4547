"""Score calibration: matching detections to labels, the Platt fit and the reliability table."""

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from srn.evaluation.calibration import fit_platt, reliability, true_positives


def test_true_positives_take_each_face_once_best_score_first():
    labels = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 120.0, 120.0]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 11.0],    # IoU 0.91 with face 0, lower score
                          [1.0, 0.0, 10.0, 10.0],    # IoU 0.90 with face 0, best score: takes it
                          [100.0, 100.0, 125.0, 120.0],  # IoU 0.8 with face 1
                          [50.0, 50.0, 60.0, 60.0]])  # nothing
    scores = torch.tensor([0.5, 0.9, 0.7, 0.8])
    assert true_positives(boxes, scores, labels).tolist() == [False, True, True, False]
    assert true_positives(boxes, scores, labels[:0]).tolist() == [False] * 4
    assert true_positives(boxes[:0], scores[:0], labels).tolist() == []


def test_fit_platt_recovers_the_generating_map():
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 2.0, 200_000)
    hits = rng.random(z.size) < 1 / (1 + np.exp(-(2.5 * z - 0.7)))
    a, b = fit_platt(z, hits)
    assert abs(a - 2.5) < 0.05 and abs(b + 0.7) < 0.05
    # Already calibrated scores fit the identity.
    hits = rng.random(z.size) < 1 / (1 + np.exp(-z))
    a, b = fit_platt(z, hits)
    assert abs(a - 1.0) < 0.03 and abs(b) < 0.03


def test_fit_platt_needs_both_kinds():
    with pytest.raises(ValueError, match="needs true and false detections; got 3 true of 3"):
        fit_platt(np.array([0.1, 0.2, 0.3]), np.array([True, True, True]))


def test_reliability_table_and_error():
    scores = np.array([0.1, 0.1, 0.5, 0.5, 0.95, 1.0, 0.01])
    hits = np.array([False, False, True, False, True, True, True])
    rows, ece = reliability(scores, hits, bins=(0.05, 0.2, 0.9, 1.0))
    assert rows == [
        {"bin": [0.05, 0.2], "detections": 2, "mean_score": 0.1, "true_share": 0.0},
        {"bin": [0.2, 0.9], "detections": 2, "mean_score": 0.5, "true_share": 0.5},
        {"bin": [0.9, 1.0], "detections": 2, "mean_score": 0.975, "true_share": 1.0},
    ]
    # Count-weighted mean gap of the binned detections (the 0.01 one is in no bin).
    assert_close(ece, (2 * 0.1 + 2 * 0.0 + 2 * 0.025) / 6)
