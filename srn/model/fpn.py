"""The two feature branches of SRN: the first-step "C branch" and the second-step FPN "P branch"."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from srn.model.layers import conv3x3


class ExtraLayers(nn.Module):
    """C6 and C7: 3x3 stride-2 convolutions with bias and no activation (C6 on C5, C7 on C6)."""

    def __init__(self, c5_channels: int, c6_channels: int, c7_channels: int, with_c7: bool = True) -> None:
        super().__init__()
        self.c6 = nn.Conv2d(c5_channels, c6_channels, 3, stride=2, padding=1)
        self.c7 = nn.Conv2d(c6_channels, c7_channels, 3, stride=2, padding=1) if with_c7 else None

    def forward(self, c5: Tensor) -> list[Tensor]:
        c6 = self.c6(c5)
        return [c6] if self.c7 is None else [c6, self.c7(c6)]


class FirstStepFeatures(nn.Module):
    """1x1 convolutions (bias, no activation) that bring C2..C7 to the head width.

    Only the levels that have a first step (STC or STR levels) get a convolution; the keys of
    ``convs`` are the level indices.
    """

    def __init__(self, in_channels: Sequence[int], width: int, levels: Sequence[int]) -> None:
        super().__init__()
        self.levels = tuple(sorted(levels))
        self.convs = nn.ModuleDict({str(l): nn.Conv2d(in_channels[l], width, 1) for l in self.levels})

    def forward(self, c_features: Sequence[Tensor]) -> dict[int, Tensor]:
        return {l: self.convs[str(l)](c_features[l]) for l in self.levels}


class FPN(nn.Module):
    """The release's FPN: P2..P5 from top-down sums, P6 on L5 (stride 2) and P7 on P6 (stride 2).

    Upsampling is bilinear with ``align_corners=True`` to the lateral's exact size, so any input
    size works without padding.

    Args:
        separable: depthwise-separable 3x3 output convolutions (see :func:`srn.model.layers.conv3x3`).
    """

    def __init__(self, in_channels: Sequence[int], width: int, separable: bool = False) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv2d(c, width, 1) for c in in_channels)  # on C2..C5
        self.outputs = nn.ModuleList(
            [conv3x3(width, width, separable=separable) for _ in range(4)]  # P2..P5
            + [conv3x3(width, width, stride=2, separable=separable) for _ in range(2)]  # P6, P7
        )

    def forward(self, c_features: Sequence[Tensor]) -> list[Tensor]:
        laterals = [conv(c) for conv, c in zip(self.laterals, c_features)]
        top_down = [laterals[3]]  # L5
        for lateral in laterals[2::-1]:  # L4, L3, L2
            up = F.interpolate(top_down[0], size=lateral.shape[-2:], mode="bilinear", align_corners=True)
            top_down.insert(0, up + lateral)
        p_features = [conv(t) for conv, t in zip(self.outputs[:4], top_down)]
        p6 = self.outputs[4](laterals[3])  # on L5, not on P5 or C5
        p7 = self.outputs[5](p6)  # no ReLU in between
        return p_features + [p6, p7]
