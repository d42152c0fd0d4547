"""Element-wise losses of SRN (docs/design.md, Training targets): sigmoid focal loss and smooth-L1.

Both return unreduced losses so that the criterion can mask ignored anchors and normalise
by the number of positives itself, without boolean indexing (which would sync with the host).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

# Detectron's RetinaNet uses beta = 0.11 (~1/9): below ~0.11 the loss is quadratic, so
# nearly-right deltas of well-matched anchors are not pushed as hard as with L1.
# SRN builds on that RetinaNet and publishes no value, so 1/9 is the default.
DEFAULT_SMOOTH_L1_BETA = 1.0 / 9.0


def focal_loss(
    pred_logits: Tensor,
    gt_labels: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> Tensor:
    """Sigmoid focal loss of RetinaNet, per element (torchvision's implementation).

    loss = -alpha_t * (1 - p_t)^gamma * log(p_t), with p_t = p for positives and 1 - p for
    negatives, and alpha_t = alpha for positives and 1 - alpha for negatives.

    Args:
        pred_logits (Tensor[...]): classification logits.
        gt_labels (Tensor[...]): targets in {0, 1}, any dtype; same shape as ``pred_logits``.
        alpha: weight of positives in [0, 1], or -1 for no weighting. Default 0.25 (RetinaNet's).
        gamma: focusing exponent; 0 gives plain binary cross-entropy. Default 2 (RetinaNet's).

    Returns:
        loss (Tensor[...]): same shape as ``pred_logits``, unreduced.
    """
    return sigmoid_focal_loss(
        pred_logits, gt_labels.to(pred_logits.dtype), alpha=alpha, gamma=gamma, reduction="none"
    )


def smooth_l1_loss(
    pred_deltas: Tensor,
    gt_deltas: Tensor,
    beta: float = DEFAULT_SMOOTH_L1_BETA,
) -> Tensor:
    """Smooth-L1 (Huber divided by beta) per element: 0.5 x^2 / beta if |x| < beta else |x| - beta / 2.

    Args:
        pred_deltas (Tensor[..., 4]): predicted (dx, dy, dw, dh).
        gt_deltas (Tensor[..., 4]): target deltas, same shape.
        beta: the quadratic-to-linear transition; 0 gives L1.

    Returns:
        loss (Tensor[..., 4]): unreduced.
    """
    return F.smooth_l1_loss(pred_deltas, gt_deltas, reduction="none", beta=beta)


def soft_focal_loss(pred_logits: Tensor, target_probs: Tensor, gamma: float = 2.0) -> Tensor:
    """Binary cross-entropy against soft targets, scaled by ``|p - t|^gamma`` per element: the
    quality focal loss of GFL (Li et al., NeurIPS 2020), used here to match a teacher's scores.
    Like the focal loss it lets the many anchors that already agree fall silent; it is 0 where the
    prediction equals the target.

    Args:
        pred_logits (Tensor[...]): classification logits.
        target_probs (Tensor[...]): target probabilities in [0, 1], same shape.
        gamma: focusing exponent; 0 gives plain soft binary cross-entropy.

    Returns:
        loss (Tensor[...]): unreduced, >= 0 (the targets' own entropy is subtracted).
    """
    target_probs = target_probs.to(pred_logits.dtype)
    bce = F.binary_cross_entropy_with_logits(pred_logits, target_probs, reduction="none")
    entropy = F.binary_cross_entropy(target_probs, target_probs, reduction="none")
    return (bce - entropy).clamp(min=0) * (pred_logits.sigmoid() - target_probs).abs().pow(gamma)
