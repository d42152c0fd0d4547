"""The pure parts of benchmarks/bench_privacy.py: which pixels a face is, and when it counts as hidden."""

from __future__ import annotations

import numpy as np

from tests.scripts import load_script

privacy = load_script("benchmarks/bench_privacy.py")


def test_ellipse_mask_of_a_box():
    mask = privacy.ellipse_mask(6, 8, (1, 1, 7, 5))  # centre (4, 3), radii 3 and 2
    assert mask.sum() == 20  # rows of 4, 6, 6 and 4 pixels
    assert mask[3, 4] and mask[3, 1] and mask[3, 6] and not mask[1, 1] and not mask[3, 0]
    np.testing.assert_array_equal(mask, mask[:, ::-1])  # symmetric about x = 4


def test_hidden_share_counts_changed_pixels_in_the_ellipse():
    before = np.zeros((20, 20, 3), np.uint8)
    after = before.copy()
    after[:, :10, 1] = 1  # the left half changed by one level in one channel
    shares = privacy.hidden_share(before, after, np.array([[0, 0, 10, 10], [10, 10, 20, 20], [5, 0, 15, 10]]))
    np.testing.assert_allclose(shares, [1.0, 0.0, 0.5])


def test_consensus_faces_needs_both_detectors():
    a = (np.array([[0, 0, 10, 10], [50, 50, 60, 60], [80, 80, 90, 90]], float), np.array([0.9, 0.9, 0.4]))
    b = (np.array([[1, 0, 11, 10], [80, 80, 90, 90]], float), np.array([0.8, 0.9]))
    np.testing.assert_array_equal(privacy.consensus_faces(a, b), [[0, 0, 10, 10]])
    assert privacy.consensus_faces(a, (np.zeros((0, 4)), np.zeros(0))).shape == (0, 4)
