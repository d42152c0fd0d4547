"""The detection head shared by all six levels and both steps."""

from __future__ import annotations

import math

from torch import Tensor, nn

from srn.model.rfe import RFE


def _tower(width: int, rfe: bool) -> nn.Sequential:
    # Index layout matches the release: 0 conv, 1 ReLU, 2 RFE, 3 conv, 4 ReLU.
    middle = RFE(width) if rfe else nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True))
    return nn.Sequential(
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(inplace=True),
        middle,
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(inplace=True),
    )


class SRNHead(nn.Module):
    """Classification and box towers ending in 1x1 predictors for ``num_anchors`` anchors per cell."""

    def __init__(self, width: int = 256, num_anchors: int = 2, rfe: bool = True, prior_prob: float = 0.01) -> None:
        super().__init__()
        self.num_anchors = num_anchors
        self.cls_tower = _tower(width, rfe)
        self.box_tower = _tower(width, rfe)
        self.cls_pred = nn.Conv2d(width, num_anchors, 1)
        self.box_pred = nn.Conv2d(width, 4 * num_anchors, 1)
        self.prior_prob = prior_prob

    def reset_parameters(self, init: str = "normal") -> None:
        from srn.model.srn import init_conv

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
