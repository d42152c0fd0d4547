"""Focal loss and smooth-L1 (torchvision test/test_ops.py::TestFocalLoss style)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.testing import assert_close

from srn.losses import DEFAULT_SMOOTH_L1_BETA, focal_loss, smooth_l1_loss


def test_focal_loss_gamma_0_no_alpha_is_bce_with_gradients() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = (4 * torch.randn(64, generator=generator, dtype=torch.float64)).requires_grad_()
    labels = torch.randint(0, 2, (64,), generator=generator)
    logits_ref = logits.detach().clone().requires_grad_()

    loss = focal_loss(logits, labels, alpha=-1, gamma=0.0)
    expected = F.binary_cross_entropy_with_logits(logits_ref, labels.double(), reduction="none")
    assert_close(loss, expected)

    weights = torch.rand(64, generator=generator, dtype=torch.float64)
    (loss * weights).sum().backward()
    (expected * weights).sum().backward()
    assert_close(logits.grad, logits_ref.grad)


def test_focal_loss_hand_values() -> None:
    # loss = alpha_t * (1 - p_t)^2 * -log(p_t), alpha = 0.25 for positives, 0.75 for negatives.
    # x = 0, p = 0.5:
    #   positive: 0.25 * 0.5^2 * ln 2         = 0.0625 * 0.693147  = 0.0433217
    #   negative: 0.75 * 0.5^2 * ln 2         = 0.1875 * 0.693147  = 0.1299651
    # x = ln 3, p = 0.75:
    #   positive: 0.25 * 0.25^2 * -ln 0.75    = 0.015625 * 0.287682 = 0.00449503
    #   negative: 0.75 * 0.75^2 * -ln 0.25    = 0.421875 * 1.386294 = 0.5848429
    logits = torch.tensor([0.0, 0.0, math.log(3), math.log(3)], dtype=torch.float64)
    labels = torch.tensor([1, 0, 1, 0])
    expected = torch.tensor([0.0433217, 0.1299651, 0.00449503, 0.5848429], dtype=torch.float64)
    assert_close(focal_loss(logits, labels), expected, rtol=0, atol=1e-7)
    # Booleans are accepted as labels.
    assert_close(focal_loss(logits, labels.bool()), expected, rtol=0, atol=1e-7)


def test_smooth_l1_default_beta_is_one_ninth() -> None:
    assert DEFAULT_SMOOTH_L1_BETA == 1.0 / 9.0


def test_smooth_l1_hand_values() -> None:
    # beta = 1/9: |d| < beta -> 0.5 d^2 / beta = 4.5 d^2; else |d| - beta / 2 = |d| - 1/18.
    #   d = 0.05: 4.5 * 0.0025 = 0.01125;  d = 0.5: 0.5 - 0.0555556 = 0.4444444;
    #   d = -1:   1 - 0.0555556 = 0.9444444; d = 0: 0.
    pred = torch.tensor([[0.05, 0.5, -1.0, 0.0]], dtype=torch.float64)
    target = torch.zeros_like(pred)
    assert_close(
        smooth_l1_loss(pred, target),
        torch.tensor([[0.01125, 0.4444444, 0.9444444, 0.0]], dtype=torch.float64),
        rtol=0,
        atol=1e-7,
    )
    # beta = 1: d = 0.5 -> 0.5 * 0.25 = 0.125; d = -1 -> 1 - 0.5 = 0.5.
    assert_close(
        smooth_l1_loss(pred, target, beta=1.0),
        torch.tensor([[0.00125, 0.125, 0.5, 0.0]], dtype=torch.float64),
    )
