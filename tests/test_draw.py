"""Drawing: score labels that scale with the face and the photo, and that do not cover other faces."""

import numpy as np
import pytest
import torch

from srn.inference.draw import BOX_COLOUR, draw_faces, label_font_size, line_width, place_labels


@pytest.mark.parametrize(("box_height", "size", "expected"), [
    (30, (512, 512), 12),  # a third of 30 is 10: the readable minimum, 12
    (45, (512, 512), 15),  # a third of the box
    (300, (512, 512), 17),  # at most 1/30 of the longer side: round(512 / 30)
    (60, (1410, 3678), 31),  # a small face in a large photo: 1/120 of 3678, readable when shown shrunk
    (600, (1410, 3678), 123),  # a large face: capped at round(3678 / 30)
])
def test_label_font_size(box_height, size, expected):
    assert label_font_size(box_height, *size) == expected


def test_labels_go_above_then_below_then_inside_never_over_another_face():
    boxes = np.array([
        [10, 40, 50, 80],  # A: room above
        [10, 85, 50, 125],  # B: right under A; above it is A, so below it
        [100, 0, 140, 40],  # C: at the top edge: no room above, and nothing else near: inside its top
        [100, 44, 140, 84],  # D: under C, whose box fills the space above D: below
    ])
    sizes = np.array([[30, 12]] * 4)
    corners = place_labels(boxes, sizes, height=200, width=200)
    assert corners.tolist() == [[10, 28], [10, 125], [100, 0], [100, 84]]
    labels = np.column_stack([corners, corners + sizes])
    for index, (x1, y1, x2, y2) in enumerate(labels):
        for other, (bx1, by1, bx2, by2) in enumerate(boxes):
            if other != index:
                assert x2 <= bx1 or bx2 <= x1 or y2 <= by1 or by2 <= y1, (index, other)


def test_labels_stay_in_the_image_and_a_crowd_gets_the_least_cover():
    # Three boxes side by side filling a strip 20 pixels high: every spot overlaps something; the
    # label of the middle box takes the spot that covers least of its neighbours.
    boxes = np.array([[0, 0, 20, 20], [20, 0, 40, 20], [40, 0, 60, 20]])
    corners = place_labels(boxes, np.array([[16, 8]] * 3), height=20, width=60)
    assert ((corners >= 0) & (corners + [16, 8] <= [60, 20])).all()
    assert corners[1].tolist() == [20, 0]  # inside its own box, over no neighbour


def test_a_label_covers_no_neighbouring_face_in_the_drawing():
    image = np.full((200, 200, 3), 90, dtype=np.uint8)
    boxes = torch.tensor([[10.0, 40.0, 70.0, 100.0], [10.0, 104.0, 70.0, 164.0]])  # two faces, one above the other
    drawn = draw_faces(image, boxes, torch.tensor([0.91, 0.85]))
    t = line_width(200, 200)
    inside_first = drawn[40 + t : 100 - t, 10 + t : 70 - t]
    assert (inside_first == 90).all()  # the second face's label is not on the first face
    assert (drawn[:40] != 90).any()  # the first face's label is above it
    assert (drawn[164:] != 90).any()  # the second face's label is below it
    assert tuple(drawn[99, 40]) == BOX_COLOUR


def test_no_scores_draws_boxes_only_and_types_round_trip():
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    drawn = draw_faces(image, torch.tensor([[8.0, 8.0, 40.0, 40.0]]))
    assert drawn.shape == image.shape and drawn.dtype == torch.uint8
    assert drawn[:, :8].sum() == 0  # no label above
    assert tuple(drawn[:, 8, 20].tolist()) == BOX_COLOUR
    assert draw_faces(image, torch.zeros(0, 4), torch.zeros(0)).equal(image)
