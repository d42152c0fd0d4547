"""The network's output contract: what :class:`srn.model.SRN` returns and everything downstream reads."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class SRNOutputs(NamedTuple):
    """Raw per-level outputs of both steps, before any sigmoid or decoding.

    Level ``l`` has stride ``4 * 2**l`` and ``R_l = H_l * W_l * A`` anchors (row-major cells, the
    ``A`` anchors of a cell together). Levels without a first step (neither STC nor STR) hold None
    in ``step1_logits`` and ``step1_deltas``.

    Attributes:
        step1_logits (list[Tensor[N, R_l] | None]): first-step (C-branch) classification logits.
        step1_deltas (list[Tensor[N, R_l, 4] | None]): first-step deltas (dx, dy, dw, dh).
        step2_logits (list[Tensor[N, R_l]]): second-step (FPN-branch) classification logits.
        step2_deltas (list[Tensor[N, R_l, 4]]): second-step deltas.
        anchors (list[Tensor[R_l, 4]]): each level's anchors (x1, y1, x2, y2), shared by the batch.
    """

    step1_logits: list[Tensor | None]
    step1_deltas: list[Tensor | None]
    step2_logits: list[Tensor]
    step2_deltas: list[Tensor]
    anchors: list[Tensor]

    @classmethod
    def empty(cls) -> SRNOutputs:
        """Five empty lists, to be filled level by level."""
        return cls([], [], [], [], [])
