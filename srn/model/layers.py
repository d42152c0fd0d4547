"""The 3x3 convolution of the FPN and the head, dense or depthwise-separable."""

from __future__ import annotations

from torch import nn


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, separable: bool = False) -> nn.Module:
    """A 3x3 convolution with bias and "same" padding.

    ``separable``: a depthwise 3x3 followed by a pointwise 1x1, with no activation in between, so
    it replaces the dense layer one for one; a cell costs C_in * 9 + C_in * C_out multiply-adds
    instead of C_in * C_out * 9 (MobileNet, Howard et al. 2017, section 3.1). There is no
    BatchNorm: the head is shared by the C and P branches, whose statistics differ.
    """
    if not separable:
        return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels),
        nn.Conv2d(in_channels, out_channels, 1),
    )
