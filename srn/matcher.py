"""Turn an IoU matrix into per-anchor labels (-1 ignore / 0 negative / 1 positive); docs/design.md, Training targets.

In the spirit of detectron2's ``modeling/matcher.py``, but batched over images: the IoU
matrix is ``(N, M, R)`` for N images, M (padded) faces and R anchors, so a batch is matched
in a few tensor operations instead of a loop over images or anchors.

SRN uses two instances:

- step 1: ``Matcher(0.3, 0.7)``: negative below 0.3, positive at 0.7 or above;
- step 2: ``Matcher(0.4, 0.5)``: negative below 0.4, positive at 0.5 or above.
"""

from __future__ import annotations

import torch
from torch import Tensor

IGNORE = -1
NEGATIVE = 0
POSITIVE = 1


class Matcher:
    """Assign every anchor to its best-overlapping face and label it by two IoU thresholds.

    An anchor whose best IoU is below ``low_threshold`` is negative, at or above
    ``high_threshold`` positive, and ignored in between. An anchor whose best match is an
    *ignored* face (a face marked ``ignore`` in the annotations) is ignored when it would
    otherwise be positive; below ``low_threshold`` it stays negative, as it overlaps no face
    enough to matter.

    Args:
        low_threshold: IoU under which an anchor is negative.
        high_threshold: IoU at or above which an anchor is positive.
        allow_low_quality_matches: also make every face's best anchor(s) positive, even when
            their IoU is below ``high_threshold`` (Faster R-CNN's rule). The SRN paper does not
            mention it, so it is off by default. Ties are all promoted, as in detectron2; a
            face whose best IoU is 0 promotes nothing (detectron2 would promote every anchor),
            and ignored faces promote nothing.
    """

    def __init__(
        self,
        low_threshold: float,
        high_threshold: float,
        allow_low_quality_matches: bool = False,
    ) -> None:
        if not 0.0 <= low_threshold <= high_threshold:
            raise ValueError(
                f"need 0 <= low_threshold <= high_threshold, got {low_threshold}, {high_threshold}"
            )
        self.low_threshold = low_threshold
        self.high_threshold = high_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __repr__(self) -> str:
        return (
            f"Matcher(low_threshold={self.low_threshold}, high_threshold={self.high_threshold}, "
            f"allow_low_quality_matches={self.allow_low_quality_matches})"
        )

    def __call__(
        self,
        match_quality: Tensor,
        gt_valid: Tensor | None = None,
        gt_ignore: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Match anchors to faces.

        Args:
            match_quality (Tensor[N, M, R] or Tensor[M, R]): IoU of face m with anchor r in
                image n. Without the batch dimension, one image is assumed.
            gt_valid (Tensor[N, M] or Tensor[M], bool, optional): False for padding faces, which
                never match. Default: all valid.
            gt_ignore (Tensor[N, M] or Tensor[M], bool, optional): True for ignored faces.
                Default: none ignored.

        Returns:
            matched_idxs (Tensor[N, R] or Tensor[R], int64): index of the face each anchor is
                matched to; meaningful only where the label is 1 (0 where there is no face).
            labels (Tensor[N, R] or Tensor[R], int8): -1 ignore, 0 negative, 1 positive.
        """
        unbatched = match_quality.dim() == 2
        if unbatched:
            match_quality = match_quality.unsqueeze(0)
            gt_valid = gt_valid.unsqueeze(0) if gt_valid is not None else None
            gt_ignore = gt_ignore.unsqueeze(0) if gt_ignore is not None else None
        num_images, num_gt, num_anchors = match_quality.shape
        device = match_quality.device

        if num_gt == 0 or num_anchors == 0:
            # No face in any image: every anchor is a negative.
            matched_idxs = torch.zeros((num_images, num_anchors), dtype=torch.int64, device=device)
            labels = torch.zeros((num_images, num_anchors), dtype=torch.int8, device=device)
        else:
            if gt_valid is not None:
                # Real IoUs are >= 0, so -1 makes padding lose every max, and an image whose
                # faces are all padding gets best IoU -1 < low_threshold: all negatives.
                match_quality = match_quality.masked_fill(~gt_valid[:, :, None], -1.0)
            matched_vals, matched_idxs = match_quality.max(dim=1)  # (N, M, R) -> (N, R)

            labels = torch.full_like(matched_idxs, POSITIVE, dtype=torch.int8)
            # masked_fill_ rather than boolean-index assignment, which would sync with the host.
            labels.masked_fill_(matched_vals < self.high_threshold, IGNORE)
            labels.masked_fill_(matched_vals < self.low_threshold, NEGATIVE)
            if gt_ignore is not None:
                matched_ignored = torch.gather(gt_ignore, 1, matched_idxs)  # (N, R)
                labels.masked_fill_((labels == POSITIVE) & matched_ignored, IGNORE)

            if self.allow_low_quality_matches:
                matched_idxs, labels = self._set_low_quality_matches(
                    match_quality, matched_idxs, labels, gt_ignore
                )

        if unbatched:
            return matched_idxs[0], labels[0]
        return matched_idxs, labels

    @staticmethod
    def _set_low_quality_matches(
        match_quality: Tensor, matched_idxs: Tensor, labels: Tensor, gt_ignore: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Make each face's best anchors positive, matched to that face.

        Args:
            match_quality (Tensor[N, M, R]): IoU, with padding already at -1.
            matched_idxs (Tensor[N, R]), labels (Tensor[N, R]): the threshold assignment.
            gt_ignore (Tensor[N, M], optional): ignored faces promote no anchor.

        Returns:
            matched_idxs (Tensor[N, R]), labels (Tensor[N, R]): updated copies.
        """
        best_per_gt = match_quality.max(dim=2).values  # (N, M, R) -> (N, M)
        # A face with best IoU 0 (or padding, -1) overlaps no anchor: promoting its "best"
        # anchors would promote all of them.
        gt_can_promote = best_per_gt > 0
        if gt_ignore is not None:
            gt_can_promote = gt_can_promote & ~gt_ignore
        promotes = (match_quality == best_per_gt[:, :, None]) & gt_can_promote[:, :, None]  # (N, M, R)
        promoted = promotes.any(dim=1)  # (N, R)
        # Match a promoted anchor to the face that promoted it (the best such face if
        # several did), not to its overall argmax, so that face really gains a positive.
        promoter_idxs = match_quality.masked_fill(~promotes, -2.0).argmax(dim=1)  # (N, R)
        matched_idxs = torch.where(promoted, promoter_idxs, matched_idxs)
        labels = torch.where(promoted, torch.ones_like(labels), labels)
        return matched_idxs, labels
