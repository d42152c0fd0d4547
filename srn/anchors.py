"""Anchor generation, equal to the SRN release's (docs/design.md, Anchors).

Level ``l`` has stride ``4 * 2**l``. Each cell carries two anchors of aspect ratio 1.25 (h/w) at scales
2 and 2*sqrt(2) of the stride, built Detectron-style from the window (0, 0, s-1, s-1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

DEFAULT_STRIDES = (4, 8, 16, 32, 64, 128)
DEFAULT_SCALES = (2.0, 2.828427)
DEFAULT_RATIO = 1.25


def cell_anchors(stride: int, scales: Sequence[float] = DEFAULT_SCALES, ratio: float = DEFAULT_RATIO) -> Tensor:
    """The anchors of cell (0, 0) of a level.

    Returns:
        anchors (Tensor[len(scales), 4]): (x1, y1, x2, y2), float64, ordered by scale.
    """
    centre = (stride - 1) / 2.0
    # Detectron's _ratio_enum rounds the width first, then derives the height from it.
    w0 = round(math.sqrt(stride * stride / ratio))
    h0 = round(w0 * ratio)
    rows = []
    for scale in scales:
        w, h = w0 * scale, h0 * scale
        rows.append((centre - (w - 1) / 2, centre - (h - 1) / 2, centre + (w - 1) / 2, centre + (h - 1) / 2))
    return torch.tensor(rows, dtype=torch.float64, device="cpu")


class AnchorGenerator(nn.Module):
    """Anchors for every level of a feature pyramid, cached by (feature sizes, device, dtype).

    Anchors of cell (i, j) are the cell-(0, 0) anchors shifted by (j*s, i*s); cells are row-major and
    the anchors of one cell are ordered by scale, matching the head's ``(N, H*W*A, K)`` layout.
    """

    def __init__(
        self,
        strides: Sequence[int] = DEFAULT_STRIDES,
        scales: Sequence[float] = DEFAULT_SCALES,
        ratio: float = DEFAULT_RATIO,
    ) -> None:
        super().__init__()
        self.strides = tuple(int(s) for s in strides)
        self.scales = tuple(float(s) for s in scales)
        self.ratio = float(ratio)
        self.cell_anchors = [cell_anchors(s, self.scales, self.ratio) for s in self.strides]
        self._cache: dict[tuple, list[Tensor]] = {}

    @property
    def num_anchors_per_cell(self) -> int:
        return len(self.scales)

    # Outside torch.compile: the anchors are cached constants, and a compiled graph that looked into
    # the cache would be recompiled once the cache fills.
    @torch.compiler.disable
    def grid_anchors(self, feature_sizes: Sequence[tuple[int, int]], device: torch.device, dtype: torch.dtype = torch.float32) -> list[Tensor]:
        """Anchors of every level.

        Args:
            feature_sizes: (H_l, W_l) of each level.

        Returns:
            anchors_per_level (list[Tensor[H_l*W_l*A, 4]]).
        """
        key = (tuple((int(h), int(w)) for h, w in feature_sizes), str(device), dtype)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        anchors_per_level = []
        for (height, width), stride, base in zip(feature_sizes, self.strides, self.cell_anchors):
            shifts_x = torch.arange(width, dtype=torch.float64, device="cpu") * stride
            shifts_y = torch.arange(height, dtype=torch.float64, device="cpu") * stride
            shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=-1).reshape(-1, 1, 4)
            # (H*W, 1, 4) + (1, A, 4) -> (H*W*A, 4), row-major cells, anchors by scale within a cell
            anchors = (shifts + base.reshape(1, -1, 4)).reshape(-1, 4)
            anchors_per_level.append(anchors.to(device=device, dtype=dtype))
        if len(self._cache) > 64:
            self._cache.clear()
        self._cache[key] = anchors_per_level
        return anchors_per_level

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        sizes = [tuple(f.shape[-2:]) for f in features]
        return self.grid_anchors(sizes, features[0].device, features[0].dtype if features[0].is_floating_point() else torch.float32)


def feature_sizes_for_image(height: int, width: int, num_levels: int = 6) -> list[tuple[int, int]]:
    """Feature sizes the ResNet backbone produces for an input of (height, width).

    Every stride-2 step of the network (3x3/2 convs with padding 1, the 3x3/2 max pool) maps n to
    ceil(n / 2).
    """
    sizes = []
    h, w = height, width
    for _ in range(2):  # conv1 and maxpool: stride 4 for level 0
        h, w = (h + 1) // 2, (w + 1) // 2
    sizes.append((h, w))
    for _ in range(num_levels - 1):
        h, w = (h + 1) // 2, (w + 1) // 2
        sizes.append((h, w))
    return sizes
