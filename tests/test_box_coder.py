import math

import torch
from torch.testing import assert_close

from srn.box_coder import decode, encode


def test_known_values():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # w=10, h=20, centre (5, 10)
    deltas = torch.tensor([[0.5, -0.25, math.log(2.0), 0.0]])
    # centre (5 + 0.5*10, 10 - 0.25*20) = (10, 5); size (20, 20)
    assert_close(decode(deltas, anchors), torch.tensor([[0.0, -5.0, 20.0, 15.0]]))
    assert_close(encode(torch.tensor([[0.0, -5.0, 20.0, 15.0]]), anchors), deltas)


def test_no_plus_one_in_widths():
    anchors = torch.tensor([[-2.0, -3.0, 5.0, 6.0]])  # w = 7, h = 9 (no +1)
    assert_close(decode(torch.zeros(1, 4), anchors), anchors)
    assert_close(decode(torch.tensor([[1.0, 1.0, 0.0, 0.0]]), anchors), anchors + torch.tensor([7.0, 9.0, 7.0, 9.0]))


def test_round_trip():
    gen = torch.Generator().manual_seed(1)
    xy = torch.rand(100, 2, generator=gen) * 500
    wh = torch.rand(100, 2, generator=gen) * 190 + 10  # ratios stay inside the exp clamp
    boxes = torch.cat([xy, xy + wh], dim=1).double()
    xy = torch.rand(100, 2, generator=gen) * 500
    wh = torch.rand(100, 2, generator=gen) * 190 + 10  # ratios stay inside the exp clamp
    anchors = torch.cat([xy, xy + wh], dim=1).double()
    assert_close(decode(encode(boxes, anchors), anchors), boxes)


def test_broadcast_and_clamp():
    anchors = torch.tensor([0.0, 0.0, 16.0, 16.0])
    deltas = torch.tensor([[[0.0, 0.0, 100.0, 100.0]]])  # exp(100) would overflow
    boxes = decode(deltas, anchors)
    assert boxes.shape == (1, 1, 4)
    assert torch.isfinite(boxes).all()
    assert_close(boxes[0, 0, 2] - boxes[0, 0, 0], torch.tensor(1000.0))
