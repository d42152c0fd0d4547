"""Receptive field enhancement (RFE), the SRN head block with rectangular kernels."""

from __future__ import annotations

import torch
from torch import Tensor, nn

# (kernel, padding) of the k x l convolution of branches 0..3: faces are not square, so the block
# mixes 1x5, 5x1, 1x3 and 3x1 receptive fields.
_BRANCH_KERNELS = (((1, 5), (0, 2)), ((5, 1), (2, 0)), ((1, 3), (0, 1)), ((3, 1), (1, 0)))


class RFE(nn.Module):
    """Four 1x1 -> k x l -> 1x1 branches, concatenated, fused by a 1x1 conv, plus the input.

    Module names follow the release (``branch0..3``, ``cated_conv``) so that its weights map 1:1.
    """

    def __init__(self, channels: int = 256) -> None:
        super().__init__()
        inner = channels // 4
        for index, (kernel, padding) in enumerate(_BRANCH_KERNELS):
            branch = nn.Sequential(
                nn.Conv2d(channels, inner, 1),
                nn.ReLU(inplace=True),
                nn.Conv2d(inner, inner, kernel, padding=padding),
                nn.ReLU(inplace=True),
                nn.Conv2d(inner, inner, 1),
                nn.ReLU(inplace=True),
            )
            self.add_module(f"branch{index}", branch)
        self.cated_conv = nn.Sequential(nn.Conv2d(4 * inner, channels, 1), nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        branches = [self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)]
        # 4 x (N, C/4, H, W) -> (N, C, H, W)
        fused = self.cated_conv(torch.cat(branches, dim=1))
        return fused + x  # residual, no ReLU after the sum (as released)
