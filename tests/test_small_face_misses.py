"""experiments/small_face_misses.py: each small face sorted by the model's best box for it."""

from __future__ import annotations

import math

import torch
from torch.testing import assert_close

from tests.scripts import load_script

misses = load_script("experiments/small_face_misses.py")


def test_each_class_and_the_offset_of_the_nearest_box():
    labels = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 0.0, 110.0, 10.0], [200.0, 0.0, 210.0, 10.0],
                           [300.0, 0.0, 310.0, 10.0], [400.0, 0.0, 410.0, 10.0]], dtype=torch.float64)
    boxes = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],      # face 0: exact, 0.9 -> found
        [1.0, 0.0, 11.0, 10.0],      # face 0 again (IoU 0.82), lower score: the best score counts
        [100.0, 0.0, 110.0, 10.0],   # face 1: exact, 0.2 -> weak
        [200.0, 0.0, 210.0, 10.0],   # face 2: exact, 0.05 -> low score
        [300.0, 0.0, 312.0, 14.0],   # face 3: IoU 100/168 = 0.595, but 0.001 -> low score
        [402.0, 0.0, 414.0, 12.0],   # face 4: IoU 80/164 = 0.49 -> misplaced
    ], dtype=torch.float64)
    scores = torch.tensor([0.9, 0.5, 0.2, 0.05, 0.001, 0.95], dtype=torch.float64)
    classes, offsets = misses.classify(labels, boxes, scores)
    assert classes == ["found", "weak", "low score", "low score", "misplaced"]
    # face 4's nearest box: centre (408, 6) against (405, 5), sides 12 x 12 against 10 x 10
    assert_close(offsets[4], torch.tensor([0.3, 0.1, math.log(1.44) / 2], dtype=torch.float64))
    assert_close(offsets[0], torch.zeros(3, dtype=torch.float64))
    # a face far from every box, and an image without boxes
    far, _ = misses.classify(torch.tensor([[500.0, 0.0, 510.0, 10.0]], dtype=torch.float64), boxes, scores)
    assert far == ["nothing"]
    empty, offsets = misses.classify(labels[:2], torch.zeros(0, 4, dtype=torch.float64), torch.zeros(0, dtype=torch.float64))
    assert empty == ["nothing", "nothing"] and offsets.shape == (2, 3)
