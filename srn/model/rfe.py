"""Receptive field enhancement (RFE), the SRN head block with rectangular kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# (kernel, padding) of the k x l convolution of branches 0..3: faces are not square, so the block
# mixes 1x5, 5x1, 1x3 and 3x1 receptive fields.
_BRANCH_KERNELS = (((1, 5), (0, 2)), ((5, 1), (2, 0)), ((1, 3), (0, 1)), ((3, 1), (1, 0)))


class RFE(nn.Module):
    """Four 1x1 -> k x l -> 1x1 branches, concatenated, fused by a 1x1 conv, plus the input.

    Module names follow the release (``branch0..3``, ``cated_conv``) so that its weights map 1:1.

    Args:
        separable: make the k x l convolutions depthwise. The 1x1 that follows each of them is
            already the pointwise half, so the block stays 1x1 -> k x l -> 1x1 and only the k x l
            cost falls, from C/4 * C/4 * k * l to C/4 * k * l multiply-adds per cell.

    With ``separable`` the forward pass runs the four branches as one: the first 1x1s stacked
    into one C -> C convolution, the depthwise k x l kernels zero-padded into one 5x5 depthwise
    convolution, and the last 1x1s as one block-diagonal C -> C convolution. That is the same
    function with the same parameters, in four full-width layers instead of twelve quarter-width
    ones and a concatenation: on a CPU the head is memory-bound, and the quarter-width tensors
    (C/4 = 12 channels at width 48) also fall out of onnxruntime's blocked channel layout.
    """

    def __init__(self, channels: int = 256, separable: bool = False) -> None:
        super().__init__()
        inner = channels // 4
        self.separable = separable
        for index, (kernel, padding) in enumerate(_BRANCH_KERNELS):
            branch = nn.Sequential(
                nn.Conv2d(channels, inner, 1),
                nn.ReLU(inplace=True),
                nn.Conv2d(inner, inner, kernel, padding=padding, groups=inner if separable else 1),
                nn.ReLU(inplace=True),
                nn.Conv2d(inner, inner, 1),
                nn.ReLU(inplace=True),
            )
            self.add_module(f"branch{index}", branch)
        self.cated_conv = nn.Sequential(nn.Conv2d(4 * inner, channels, 1), nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        if self.separable:
            return self._forward_fused(x)
        branches = [self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)]
        # 4 x (N, C/4, H, W) -> (N, C, H, W)
        fused = self.cated_conv(torch.cat(branches, dim=1))
        return fused + x  # residual, no ReLU after the sum (as released)

    def _forward_fused(self, x: Tensor) -> Tensor:
        branches = [self.branch0, self.branch1, self.branch2, self.branch3]
        reduce, spatial, expand = ([b[i] for b in branches] for i in (0, 2, 4))
        # Built by concatenation alone (no pad, no block_diag), so that the ONNX tracer knows
        # every kernel's shape.
        # 4 x (C/4, C, 1, 1) -> (C, C, 1, 1)
        y = F.relu(F.conv2d(x, torch.cat([c.weight for c in reduce]), torch.cat([c.bias for c in reduce])))
        # Each (C/4, 1, k, l) depthwise kernel, centred in a 5x5 of zeros -> (C, 1, 5, 5)
        kernels = [_centre_in_5x5(c.weight) for c in spatial]
        y = F.relu(F.conv2d(y, torch.cat(kernels), torch.cat([c.bias for c in spatial]), padding=2, groups=y.shape[1]))
        # 4 x (C/4, C/4, 1, 1) -> block-diagonal (C, C, 1, 1)
        inner = expand[0].weight.shape[0]
        rows = []
        for index, conv in enumerate(expand):
            zeros = conv.weight.new_zeros(inner, inner * index, 1, 1), conv.weight.new_zeros(inner, inner * (3 - index), 1, 1)
            rows.append(torch.cat([zeros[0], conv.weight, zeros[1]], dim=1))
        y = F.relu(F.conv2d(y, torch.cat(rows), torch.cat([c.bias for c in expand])))
        fused = self.cated_conv(y)
        return fused + x  # residual, no ReLU after the sum (as released)


def _centre_in_5x5(weight: Tensor) -> Tensor:
    """(C, 1, k, l) with k, l in {1, 3, 5} -> (C, 1, 5, 5), zeros around."""
    c, _, k, l = weight.shape
    if l < 5:
        side = weight.new_zeros(c, 1, k, (5 - l) // 2)
        weight = torch.cat([side, weight, side], dim=3)
    if k < 5:
        side = weight.new_zeros(c, 1, (5 - k) // 2, 5)
        weight = torch.cat([side, weight, side], dim=2)
    return weight
