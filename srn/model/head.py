"""The detection head shared by all six levels and both steps."""

from __future__ import annotations

import math

from torch import Tensor, nn

from srn.model.init import init_conv
from srn.model.layers import conv3x3
from srn.model.rfe import RFE


def _tower(width: int, rfe: bool, num_convs: int = 2, separable: bool = False) -> nn.Sequential:
    """``num_convs`` conv3x3+ReLU layers with the RFE (or, without it, one more conv3x3+ReLU) after
    the first of them. With two layers the index layout is the release's: 0 conv, 1 ReLU, 2 RFE,
    3 conv, 4 ReLU."""
    middle = RFE(width, separable) if rfe else nn.Sequential(conv3x3(width, width, separable=separable), nn.ReLU(inplace=True))
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [conv3x3(width, width, separable=separable), nn.ReLU(inplace=True)]
    layers.insert(min(2, len(layers)), middle)
    return nn.Sequential(*layers)


class SRNHead(nn.Module):
    """Classification and box towers ending in 1x1 predictors for ``num_anchors`` anchors per cell.

    Args:
        tower_convs: conv3x3+ReLU layers per tower around the RFE; the paper's head has 2.
        separable: depthwise-separable 3x3 convolutions in the towers and a depthwise RFE, for
            light models (see :func:`srn.model.layers.conv3x3`).
    """

    def __init__(
        self,
        width: int = 256,
        num_anchors: int = 2,
        rfe: bool = True,
        prior_prob: float = 0.01,
        tower_convs: int = 2,
        separable: bool = False,
    ) -> None:
        super().__init__()
        if tower_convs < 0:
            raise ValueError(f"tower_convs must be >= 0, got {tower_convs}")
        self.num_anchors = num_anchors
        self.cls_tower = _tower(width, rfe, tower_convs, separable)
        self.box_tower = _tower(width, rfe, tower_convs, separable)
        self.cls_pred = nn.Conv2d(width, num_anchors, 1)
        self.box_pred = nn.Conv2d(width, 4 * num_anchors, 1)
        self.prior_prob = prior_prob

    def reset_parameters(self, init: str = "normal") -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                init_conv(module, init)
        for predictor in (self.cls_pred, self.box_pred):
            nn.init.normal_(predictor.weight, std=0.01)
        # Start every anchor at probability pi so that the many negatives do not swamp the first steps.
        nn.init.constant_(self.cls_pred.bias, -math.log((1 - self.prior_prob) / self.prior_prob))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """
        Args:
            x (Tensor[N, C, H, W]): one level's features.

        Returns:
            logits (Tensor[N, H*W*A]) and deltas (Tensor[N, H*W*A, 4]), anchors of a cell adjacent.
        """
        n, _, h, w = x.shape
        logits = self.cls_pred(self.cls_tower(x))
        deltas = self.box_pred(self.box_tower(x))
        # (N, A, H, W) -> (N, H, W, A) -> (N, H*W*A)
        logits = logits.permute(0, 2, 3, 1).reshape(n, -1)
        # (N, A*4, H, W) -> (N, H, W, A*4) -> (N, H*W*A, 4); anchor a owns channels 4a..4a+3
        deltas = deltas.permute(0, 2, 3, 1).reshape(n, -1, 4)
        return logits, deltas
