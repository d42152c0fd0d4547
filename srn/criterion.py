"""Target assignment and the SRN loss dict (docs/design.md, Training targets).

``SRNCriterion(outputs, targets)`` returns ``loss_step1_cls``, ``loss_step1_reg``,
``loss_step2_cls`` and ``loss_step2_reg``; the training loop sums them.

- Step 1 (C branch) matches the original anchors at 0.3 / 0.7. It classifies on the STC
  levels and regresses on the STR levels.
- Step 2 (P branch) matches at 0.4 / 0.5 and classifies and regresses on every level. On STR
  levels its anchors are the refined anchors ``decode(step-1 deltas, anchors)``, detached, which
  differ per image. On STC levels, anchors whose step-1 negative confidence ``1 - p1`` exceeds
  ``stc_theta`` leave the step-2 classification loss: the negatives by default (RefineDet's
  ARM filtering, and what inference does to candidates), positives too if asked.
- Each step's losses are divided by that step's number of positive anchors in the whole batch
  (at least 1), as RetinaNet does and as the paper's loss writes it (one N_s1, one N_s2). For
  step 1 that is its positives on the levels it trains (STC and STR levels together), so its
  classification and regression share one normaliser. The count is this process's own; no
  all-reduce across DDP ranks is done here.

Everything is batched over images; targets of different lengths are padded. Nothing calls
``.item()`` or indexes with a boolean mask, so the loss never waits for the device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from srn.box_coder import decode, encode
from srn.config import LossConfig, ModelConfig
from srn.data.target import Target
from srn.losses import DEFAULT_SMOOTH_L1_BETA, focal_loss, smooth_l1_loss, soft_focal_loss
from srn.matcher import IGNORE, NEGATIVE, POSITIVE, Matcher
from srn.model.outputs import SRNOutputs


@dataclass
class Assignment:
    """The labels and matches of both steps for one batch; all levels concatenated along R.

    Attributes:
        num_anchors_per_level: R_l for each level; R = sum(R_l).
        level_ids (Tensor[R], int64): the level of each anchor.
        stc_mask (Tensor[R], bool): anchor lies on an STC level.
        str_mask (Tensor[R], bool): anchor lies on an STR level.
        anchors (Tensor[R, 4]): the original anchors, used by step 1.
        step2_anchors (Tensor[N, R, 4]): step 2's anchors: refined on STR levels (when step-1
            deltas were given), original elsewhere.
        gt_boxes (Tensor[N, M, 4]): faces padded to M = max(1, max M_i) with zero boxes.
        gt_valid (Tensor[N, M], bool): False on padding.
        step1_matched_idxs, step2_matched_idxs (Tensor[N, R], int64): matched face per anchor.
        step1_labels, step2_labels (Tensor[N, R], int8): -1 / 0 / 1, before STC. Labels exist on
            every level; the loss only uses the levels each step trains.
        stc_filtered (Tensor[N, R], bool) or None: anchors on STC levels whose step-1 negative
            confidence exceeds theta. None without step-1 logits.
        step2_labels_stc (Tensor[N, R], int8) or None: ``step2_labels`` with the anchors STC
            removes set to -1. None without step-1 logits.
    """

    num_anchors_per_level: list[int]
    level_ids: Tensor
    stc_mask: Tensor
    str_mask: Tensor
    anchors: Tensor
    step2_anchors: Tensor
    gt_boxes: Tensor
    gt_valid: Tensor
    step1_matched_idxs: Tensor
    step1_labels: Tensor
    step2_matched_idxs: Tensor
    step2_labels: Tensor
    stc_filtered: Tensor | None
    step2_labels_stc: Tensor | None


class SRNCriterion(nn.Module):
    """The SRN training loss: two-step focal loss and smooth-L1 with STC and STR.

    Args:
        stc_levels: levels (0 = stride 4) with two-step classification. Empty = RetinaNet.
        str_levels: levels with two-step regression.
        stc_theta: step-2 anchors whose step-1 negative confidence exceeds this are filtered.
        step1_thresholds: (negative below, positive at or above) IoU of step 1.
        step2_thresholds: the same for step 2.
        allow_low_quality_matches: also make each face's best anchor positive (both steps).
        focal_alpha, focal_gamma: focal-loss parameters (RetinaNet's 0.25, 2; docs/design.md, Training targets).
        smooth_l1_beta: smooth-L1 transition point; default 1/9 (Detectron's RetinaNet).
        step1_cls_weight, step1_reg_weight, step2_cls_weight, step2_reg_weight: multipliers of
            the four returned losses.
        stc_filter_positives: let STC also drop positives (from step-2 classification,
            regression and the positive count). Default: negatives only.
        max_iou_elements: matching is done on image chunks whose IoU matrix (n, M, R) holds at
            most this many elements (at least one image per chunk), to bound memory.
    """

    def __init__(
        self,
        stc_levels: Sequence[int] = (0, 1, 2),
        str_levels: Sequence[int] = (3, 4, 5),
        stc_theta: float = 0.99,
        step1_thresholds: tuple[float, float] = (0.3, 0.7),
        step2_thresholds: tuple[float, float] = (0.4, 0.5),
        allow_low_quality_matches: bool = False,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        smooth_l1_beta: float = DEFAULT_SMOOTH_L1_BETA,
        step1_cls_weight: float = 1.0,
        step1_reg_weight: float = 1.0,
        step2_cls_weight: float = 1.0,
        step2_reg_weight: float = 1.0,
        stc_filter_positives: bool = False,
        max_iou_elements: int = 2**25,
    ) -> None:
        super().__init__()
        self.stc_levels = tuple(sorted(set(stc_levels)))
        self.str_levels = tuple(sorted(set(str_levels)))
        self.stc_theta = stc_theta
        self.step1_matcher = Matcher(*step1_thresholds, allow_low_quality_matches)
        self.step2_matcher = Matcher(*step2_thresholds, allow_low_quality_matches)
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.smooth_l1_beta = smooth_l1_beta
        self.step1_cls_weight = step1_cls_weight
        self.step1_reg_weight = step1_reg_weight
        self.step2_cls_weight = step2_cls_weight
        self.step2_reg_weight = step2_reg_weight
        self.stc_filter_positives = stc_filter_positives
        self.max_iou_elements = max_iou_elements
        # Maps this process's positive count to its loss normaliser (default: the count, at least
        # 1). Under DDP the trainer makes it max(global count, 1) / world size, so that N
        # processes, whose gradients DDP averages, compute one process's gradient.
        self.normalizer_fn: Callable[[Tensor], Tensor] | None = None

    @classmethod
    def from_config(cls, loss: LossConfig, model: ModelConfig) -> SRNCriterion:
        """The criterion of a training config: the loss section, and the model's STC and STR levels."""
        return cls(
            stc_levels=model.stc_levels,
            str_levels=model.str_levels,
            stc_theta=loss.stc_theta,
            step1_thresholds=tuple(loss.step1_thresholds),
            step2_thresholds=tuple(loss.step2_thresholds),
            allow_low_quality_matches=loss.allow_low_quality_matches,
            focal_alpha=loss.focal_alpha,
            focal_gamma=loss.focal_gamma,
            smooth_l1_beta=loss.smooth_l1_beta,
            step1_cls_weight=loss.step1_cls_weight,
            step1_reg_weight=loss.step1_reg_weight,
            step2_cls_weight=loss.step2_cls_weight,
            step2_reg_weight=loss.step2_reg_weight,
            stc_filter_positives=loss.stc_filter_positives,
        )

    def extra_repr(self) -> str:
        return (
            f"stc_levels={self.stc_levels}, str_levels={self.str_levels}, "
            f"stc_theta={self.stc_theta}, step1={self.step1_matcher}, step2={self.step2_matcher}"
        )

    def forward(self, outputs: SRNOutputs, targets: list[Target], images: Tensor | None = None) -> dict[str, Tensor]:
        """Compute the four losses. ``images``, the batch the outputs are of, is not used: it is part
        of the call so that a criterion that needs it (:class:`TeacherDistillation`) takes its place.

        Args:
            outputs: the model's per-level lists (levels 0..L-1, :class:`srn.model.SRNOutputs`):
                ``step1_logits`` / ``step2_logits`` (Tensor[N, R_l]),
                ``step1_deltas`` / ``step2_deltas`` (Tensor[N, R_l, 4]),
                ``anchors`` (Tensor[R_l, 4], shared by the batch). A ``step1_*`` entry may be
                None on a level where step 1 does not use it (all of them, in the RetinaNet
                baseline).
            targets: N :class:`~srn.data.target.Target` with ``boxes`` (Tensor[M_i, 4], x1y1x2y2)
                and optionally ``ignore`` (Tensor[M_i], bool). M_i may be 0.

        Returns:
            ``loss_step1_cls``, ``loss_step1_reg``, ``loss_step2_cls``, ``loss_step2_reg``:
            scalar tensors, already weighted and normalised.
        """
        anchors_per_level = outputs.anchors
        num_levels = len(anchors_per_level)
        num_anchors_per_level = [a.shape[0] for a in anchors_per_level]
        stc_set, str_set = set(self.stc_levels), set(self.str_levels)

        step2_logits = torch.cat(list(outputs.step2_logits), dim=1).float()  # [(N, R_l)] -> (N, R)
        step2_deltas = torch.cat(list(outputs.step2_deltas), dim=1).float()  # [(N, R_l, 4)] -> (N, R, 4)
        # Step-1 outputs are only needed where step 1 trains; the rest may be absent.
        step1_logits = _cat_levels(
            outputs.step1_logits or [None] * num_levels, num_anchors_per_level, step2_logits, (),
            required=[lv in stc_set for lv in range(num_levels)], name="step1_logits",
        ).float()  # [(N, R_l)] -> (N, R)
        step1_deltas = _cat_levels(
            outputs.step1_deltas or [None] * num_levels, num_anchors_per_level, step2_logits, (4,),
            required=[lv in str_set for lv in range(num_levels)], name="step1_deltas",
        ).float()  # [(N, R_l, 4)] -> (N, R, 4)

        assignment = self.assign(
            anchors_per_level,
            targets,
            step1_logits_per_level=step1_logits.split(num_anchors_per_level, dim=1),
            step1_deltas_per_level=step1_deltas.split(num_anchors_per_level, dim=1),
        )
        stc_mask = assignment.stc_mask[None]  # (1, R)
        str_mask = assignment.str_mask[None]  # (1, R)

        # Step 1: classification on STC levels, regression on STR levels, original anchors.
        labels1 = assignment.step1_labels
        positive1 = labels1 == POSITIVE
        num_pos1 = self._normalizer((positive1 & (stc_mask | str_mask)).sum().to(step1_logits.dtype))
        loss_step1_cls = self._cls_loss(step1_logits, labels1, labels1.ge(0) & stc_mask)
        loss_step1_reg = self._reg_loss(
            step1_deltas,
            assignment.gt_boxes,
            assignment.step1_matched_idxs,
            assignment.anchors[None],
            positive1 & str_mask,
        )

        # Step 2: every level; STC-filtered labels, refined anchors on STR levels.
        labels2 = assignment.step2_labels_stc
        positive2 = labels2 == POSITIVE
        num_pos2 = self._normalizer(positive2.sum().to(step2_logits.dtype))
        loss_step2_cls = self._cls_loss(step2_logits, labels2, labels2.ge(0))
        loss_step2_reg = self._reg_loss(
            step2_deltas,
            assignment.gt_boxes,
            assignment.step2_matched_idxs,
            assignment.step2_anchors,
            positive2,
        )

        return {
            "loss_step1_cls": self.step1_cls_weight * loss_step1_cls / num_pos1,
            "loss_step1_reg": self.step1_reg_weight * loss_step1_reg / num_pos1,
            "loss_step2_cls": self.step2_cls_weight * loss_step2_cls / num_pos2,
            "loss_step2_reg": self.step2_reg_weight * loss_step2_reg / num_pos2,
        }

    def _normalizer(self, num_positives: Tensor) -> Tensor:
        if self.normalizer_fn is not None:
            return self.normalizer_fn(num_positives)
        return num_positives.clamp(min=1)

    def _cls_loss(self, pred_logits: Tensor, labels: Tensor, valid: Tensor) -> Tensor:
        """Summed focal loss over ``valid`` anchors. pred_logits, labels, valid: (N, R)."""
        loss = focal_loss(pred_logits, labels == POSITIVE, self.focal_alpha, self.focal_gamma)
        # Multiply rather than index: boolean indexing would sync with the host.
        return (loss * valid).sum()

    def _reg_loss(
        self,
        pred_deltas: Tensor,
        gt_boxes: Tensor,
        matched_idxs: Tensor,
        anchors: Tensor,
        positive: Tensor,
    ) -> Tensor:
        """Summed smooth-L1 over positive anchors.

        Args:
            pred_deltas (Tensor[N, R, 4]), gt_boxes (Tensor[N, M, 4]),
            matched_idxs (Tensor[N, R]), anchors (Tensor[N or 1, R, 4]), positive (Tensor[N, R]).
        """
        matched_boxes = torch.gather(
            gt_boxes, 1, matched_idxs[:, :, None].expand(-1, -1, 4)
        )  # (N, M, 4) -> (N, R, 4)
        gt_deltas = encode(matched_boxes, anchors)
        # Non-positive anchors may be matched to padding or degenerate faces (log 0 = -inf):
        # give them the prediction itself as target, so their loss and gradient are exactly 0.
        gt_deltas = torch.where(positive[:, :, None], gt_deltas, pred_deltas.detach())
        loss = smooth_l1_loss(pred_deltas, gt_deltas, self.smooth_l1_beta).sum(dim=2)  # (N, R)
        return (loss * positive).sum()

    @torch.no_grad()
    def assign(
        self,
        anchors_per_level: Sequence[Tensor],
        targets: list[Target],
        step1_logits_per_level: Sequence[Tensor] | None = None,
        step1_deltas_per_level: Sequence[Tensor] | None = None,
    ) -> Assignment:
        """Match the anchors of both steps to the faces and apply the STC filter.

        Without a network (the class-imbalance analysis), leave out the step-1 outputs: without
        ``step1_deltas_per_level`` step 2 matches the original anchors on STR levels too, and
        without ``step1_logits_per_level`` there is no STC filtering (``stc_filtered`` and
        ``step2_labels_stc`` are None). To try a given step-1 probability p, pass logit(p).

        Args:
            anchors_per_level (list of Tensor[R_l, 4]): anchors shared by the batch.
            targets: N dicts with ``boxes`` (Tensor[M_i, 4]) and optional ``ignore``.
            step1_logits_per_level (list of Tensor[N, R_l], optional): first-step logits.
            step1_deltas_per_level (list of Tensor[N, R_l, 4], optional): first-step deltas.

        Returns:
            The :class:`Assignment` of the batch.
        """
        num_anchors_per_level = [a.shape[0] for a in anchors_per_level]
        anchors = torch.cat(list(anchors_per_level), dim=0)  # [(R_l, 4)] -> (R, 4)
        device, dtype = anchors.device, anchors.dtype
        num_images, num_anchors = len(targets), anchors.shape[0]
        level_ids = torch.cat(
            [torch.full((n,), lv, dtype=torch.int64, device=device)
             for lv, n in enumerate(num_anchors_per_level)]
        )  # (R,)
        stc_mask = _level_mask(level_ids, self.stc_levels)
        str_mask = _level_mask(level_ids, self.str_levels)
        gt_boxes, gt_valid, gt_ignore = _pad_targets(targets, device, dtype)

        step2_anchors = anchors.expand(num_images, num_anchors, 4)
        refine = step1_deltas_per_level is not None and len(self.str_levels) > 0
        if refine:
            step1_deltas = torch.cat(list(step1_deltas_per_level), dim=1).to(dtype)  # (N, R, 4)
            refined = decode(step1_deltas.detach(), anchors)  # (N, R, 4)
            step2_anchors = torch.where(str_mask[None, :, None], refined, step2_anchors)

        starts = [0]
        for n in num_anchors_per_level:
            starts.append(starts[-1] + n)
        str_slices = [slice(starts[lv], starts[lv + 1]) for lv in self.str_levels
                      if lv < len(num_anchors_per_level)]

        num_gt = gt_boxes.shape[1]
        chunk = max(1, self.max_iou_elements // max(1, num_gt * num_anchors))
        matches1, labels1, matches2, labels2 = [], [], [], []
        for i in range(0, num_images, chunk):
            boxes, valid, ignore = gt_boxes[i:i + chunk], gt_valid[i:i + chunk], gt_ignore[i:i + chunk]
            n = boxes.shape[0]
            iou = box_iou(boxes.reshape(n * num_gt, 4), anchors).view(n, num_gt, num_anchors)
            m1, l1 = self.step1_matcher(iou, valid, ignore)
            if refine:
                # Step 1 is done with the original IoU; overwrite only the STR columns rather
                # than building a second (n, M, R) matrix.
                for sl in str_slices:
                    iou[:, :, sl] = _batched_box_iou(boxes, step2_anchors[i:i + chunk, sl])
            m2, l2 = self.step2_matcher(iou, valid, ignore)
            matches1.append(m1)
            labels1.append(l1)
            matches2.append(m2)
            labels2.append(l2)
        step1_matched_idxs = torch.cat(matches1)  # [(n, R)] -> (N, R)
        step1_labels = torch.cat(labels1)
        step2_matched_idxs = torch.cat(matches2)
        step2_labels = torch.cat(labels2)

        stc_filtered = step2_labels_stc = None
        if step1_logits_per_level is not None:
            step1_logits = torch.cat(list(step1_logits_per_level), dim=1)  # [(N, R_l)] -> (N, R)
            # sigmoid(-x) is 1 - sigmoid(x) without the cancellation near p1 = 1.
            step1_neg_conf = torch.sigmoid(-step1_logits.detach().float())
            stc_filtered = (step1_neg_conf > self.stc_theta) & stc_mask[None]
            if self.stc_filter_positives:
                filterable = step2_labels != IGNORE
            else:
                filterable = step2_labels == NEGATIVE
            step2_labels_stc = step2_labels.masked_fill(stc_filtered & filterable, IGNORE)

        return Assignment(
            num_anchors_per_level=num_anchors_per_level,
            level_ids=level_ids,
            stc_mask=stc_mask,
            str_mask=str_mask,
            anchors=anchors,
            step2_anchors=step2_anchors,
            gt_boxes=gt_boxes,
            gt_valid=gt_valid,
            step1_matched_idxs=step1_matched_idxs,
            step1_labels=step1_labels,
            step2_matched_idxs=step2_matched_idxs,
            step2_labels=step2_labels,
            stc_filtered=stc_filtered,
            step2_labels_stc=step2_labels_stc,
        )


def count_samples(assignment: Assignment) -> dict[str, Tensor]:
    """Per-level sample counts of a batch, summed over its images, for class-imbalance analysis.

    Returns:
        Tensors of shape (L,), int64, on the assignment's device (no host sync):
        ``anchors``; ``step1_{positive,negative,ignored}``; ``step2_{positive,negative,ignored}``
        before STC; and, when the assignment has step-1 logits, ``stc_filtered`` (anchors over
        theta) and ``step2_stc_{positive,negative,ignored}`` after STC filtering (filtered
        anchors count as ignored). Counts cover every level; which levels a step trains on is
        the caller's choice (step 1 classifies on STC levels only).
    """
    level_ids = assignment.level_ids
    num_levels = len(assignment.num_anchors_per_level)

    def per_level(mask: Tensor) -> Tensor:
        # (N, R) -> (R,) -> (L,)
        counts = torch.zeros(num_levels, dtype=torch.int64, device=level_ids.device)
        return counts.index_add_(0, level_ids, mask.sum(dim=0))

    num_images = assignment.step1_labels.shape[0]
    counts = {
        "anchors": torch.tensor(
            assignment.num_anchors_per_level, dtype=torch.int64, device=level_ids.device
        ) * num_images,
    }
    steps = [("step1", assignment.step1_labels), ("step2", assignment.step2_labels)]
    if assignment.step2_labels_stc is not None:
        counts["stc_filtered"] = per_level(assignment.stc_filtered)
        steps.append(("step2_stc", assignment.step2_labels_stc))
    for name, labels in steps:
        counts[f"{name}_positive"] = per_level(labels == POSITIVE)
        counts[f"{name}_negative"] = per_level(labels == NEGATIVE)
        counts[f"{name}_ignored"] = per_level(labels == IGNORE)
    return counts


def _level_mask(level_ids: Tensor, levels: Sequence[int]) -> Tensor:
    """(R,) bool: the anchor's level is in ``levels``."""
    mask = torch.zeros_like(level_ids, dtype=torch.bool)
    for lv in levels:
        mask |= level_ids == lv
    return mask


def _pad_targets(
    targets: list[Target], device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
    """Pad the faces of a batch to one length.

    Returns:
        gt_boxes (Tensor[N, M, 4]), gt_valid (Tensor[N, M], bool), gt_ignore (Tensor[N, M], bool),
        with M = max(1, max M_i), so that gathering a matched face always has something to
        gather. Padding boxes are zeros, whose IoU with anything is 0.
    """
    num_images = len(targets)
    num_gt = max([1] + [t["boxes"].shape[0] for t in targets])
    gt_boxes = torch.zeros((num_images, num_gt, 4), dtype=dtype, device=device)
    gt_valid = torch.zeros((num_images, num_gt), dtype=torch.bool, device=device)
    gt_ignore = torch.zeros((num_images, num_gt), dtype=torch.bool, device=device)
    for i, t in enumerate(targets):
        m = t["boxes"].shape[0]
        gt_boxes[i, :m] = t["boxes"].to(device=device, dtype=dtype)
        gt_valid[i, :m] = True
        if "ignore" in t:
            gt_ignore[i, :m] = t["ignore"].to(device=device, dtype=torch.bool)
    return gt_boxes, gt_valid, gt_ignore


def _batched_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU between two sets of boxes per image, continuous coordinates (as torchvision's box_iou).

    Args:
        boxes1 (Tensor[N, M, 4]), boxes2 (Tensor[N, R, 4]): x1y1x2y2.

    Returns:
        iou (Tensor[N, M, R]).
    """
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])  # (N, M)
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])  # (N, R)
    lt = torch.maximum(boxes1[:, :, None, :2], boxes2[:, None, :, :2])  # (N, M, R, 2)
    rb = torch.minimum(boxes1[:, :, None, 2:], boxes2[:, None, :, 2:])  # (N, M, R, 2)
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]  # (N, M, R)
    return inter / (area1[:, :, None] + area2[:, None, :] - inter)


def _cat_levels(
    tensors: Sequence[Tensor | None],
    num_anchors_per_level: list[int],
    like: Tensor,
    trailing: tuple[int, ...],
    required: list[bool],
    name: str,
) -> Tensor:
    """Concatenate per-level outputs along R, with zeros for absent (None) unused levels.

    Args:
        like (Tensor[N, ...]): gives the batch size, dtype and device of the zeros.

    Returns:
        Tensor[N, R, *trailing].
    """
    parts = []
    for lv, (t, n) in enumerate(zip(tensors, num_anchors_per_level, strict=True)):
        if t is None:
            if required[lv]:
                raise ValueError(f"outputs[{name!r}][{lv}] is None but level {lv} needs it")
            t = like.new_zeros((like.shape[0], n, *trailing))
        parts.append(t)
    return torch.cat(parts, dim=1)  # [(N, R_l, *trailing)] -> (N, R, *trailing)


class DistillationCriterion(nn.Module):
    """Losses that pull a student's outputs towards a teacher's on the same images, anchor by anchor
    (a new, cheaper head learning what a trained one does: both models must share levels and anchors).

    - ``loss_distill_cls``: :func:`srn.losses.soft_focal_loss` of every step and level that both
      models output, the teacher's probabilities as targets, summed over anchors;
    - ``loss_distill_reg``: smooth-L1 between the deltas of every step and level, weighted per
      anchor by the teacher's final (step-2) probability where it is at least ``reg_min_score``,
      so that only what the teacher takes for a face steers the boxes.

    ``forward``'s optional ``defer`` mask (Tensor[N, R] bool) leaves anchors out of both losses:
    :class:`TeacherDistillation` passes the anchors near a labelled face, where the ground truth
    alone decides (a student taught a teacher's misses on the faces it labels would keep them).

    Both are divided by the number of anchors that the teacher scores at 0.5 or more in the batch
    (at least 1), the teacher's count of positives, as the ground-truth losses divide by theirs;
    ``normalizer_fn``, when set, turns that count into the divisor (the trainer sums it over DDP
    processes, as it does for :class:`SRNCriterion`).
    """

    def __init__(self, cls_weight: float = 1.0, reg_weight: float = 1.0, gamma: float = 2.0,
                 reg_min_score: float = 0.3, smooth_l1_beta: float = DEFAULT_SMOOTH_L1_BETA) -> None:
        super().__init__()
        self.cls_weight, self.reg_weight, self.gamma = cls_weight, reg_weight, gamma
        self.reg_min_score, self.smooth_l1_beta = reg_min_score, smooth_l1_beta
        self.normalizer_fn: Callable[[Tensor], Tensor] | None = None

    def extra_repr(self) -> str:
        return f"cls_weight={self.cls_weight}, reg_weight={self.reg_weight}, gamma={self.gamma}, reg_min_score={self.reg_min_score}"

    def forward(self, student: SRNOutputs, teacher: SRNOutputs, defer: Tensor | None = None) -> dict[str, Tensor]:
        if [a.shape for a in student.anchors] != [a.shape for a in teacher.anchors]:
            raise ValueError("student and teacher must have the same levels and anchors per level")
        final = torch.cat([t.float().sigmoid() for t in teacher.step2_logits], dim=1)  # (N, R)
        keep = torch.ones_like(final) if defer is None else (~defer).to(final.dtype)  # (N, R)
        weight = final * (final >= self.reg_min_score) * keep
        positives = (final >= 0.5).sum().to(final.dtype)
        normalizer = self.normalizer_fn(positives) if self.normalizer_fn is not None else positives.clamp(min=1)
        cls_loss = final.new_zeros(())
        reg_loss = final.new_zeros(())
        levels = [a.shape[0] for a in teacher.anchors]
        keep_per_level = keep.split(levels, dim=1)
        for s_logits, t_logits, s_deltas, t_deltas in (
            (student.step1_logits, teacher.step1_logits, student.step1_deltas, teacher.step1_deltas),
            (student.step2_logits, teacher.step2_logits, student.step2_deltas, teacher.step2_deltas),
        ):
            for s, t, k in zip(s_logits, t_logits, keep_per_level):
                if s is not None and t is not None:
                    cls_loss = cls_loss + (soft_focal_loss(s.float(), t.float().sigmoid(), self.gamma) * k).sum()
            for s, t, w in zip(s_deltas, t_deltas, weight.split(levels, dim=1)):
                if s is not None and t is not None:
                    reg = smooth_l1_loss(s.float(), t.float(), self.smooth_l1_beta).sum(dim=2)  # (N, R_l)
                    reg_loss = reg_loss + (reg * w).sum()
        return {
            "loss_distill_cls": self.cls_weight * cls_loss / normalizer,
            "loss_distill_reg": self.reg_weight * reg_loss / normalizer,
        }


class TeacherDistillation(nn.Module):
    """A ground-truth criterion plus distillation from a teacher network, in one call
    (docs/design.md, Training recipe, "Distillation"), in the manner of DETR's ``SetCriterion``: the
    training step computes ``criterion(outputs, targets, images)`` whether or not a teacher is used.

    The teacher runs on the same ``images``, without gradients, in eval mode, under bf16 autocast
    when ``autocast`` is set (as the student does); its outputs and the student's go to
    ``distillation``. The loss dict is ``criterion``'s four losses followed by ``distillation``'s.

    With ``defer_iou``, the anchors whose IoU with a labelled box (a face or an ignore region) is
    at least that learn from the labels only: the teacher teaches the background and the faces the
    labels leave out, not its own misses on the labelled faces (small faces, mostly).

    Args:
        criterion: the ground-truth criterion (:class:`SRNCriterion`).
        teacher: the trained network; frozen and kept in eval mode here.
        distillation: :class:`DistillationCriterion`.
        autocast: run the teacher under bf16 autocast on the images' device type.
        defer_iou: the IoU with a labelled box at which an anchor leaves the teacher; None: never.
    """

    def __init__(self, criterion: nn.Module, teacher: nn.Module, distillation: DistillationCriterion,
                 autocast: bool = False, defer_iou: float | None = None) -> None:
        super().__init__()
        self.criterion, self.teacher, self.distillation = criterion, teacher, distillation
        self.autocast, self.defer_iou = autocast, defer_iou
        self.teacher.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> TeacherDistillation:
        super().train(mode)
        self.teacher.eval()  # the teacher's BatchNorm and outputs never change
        return self

    def forward(self, outputs: SRNOutputs, targets: list[Target], images: Tensor | None = None) -> dict[str, Tensor]:
        if images is None:
            raise ValueError("distillation needs the images the outputs are of")
        losses = self.criterion(outputs, targets)
        with torch.no_grad(), torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            teacher_outputs = self.teacher(images)
        defer = None if self.defer_iou is None else _near_labels(outputs.anchors, targets, self.defer_iou)
        losses.update(self.distillation(outputs, teacher_outputs, defer))
        return losses


def _near_labels(anchors_per_level: Sequence[Tensor], targets: list[Target], min_iou: float) -> Tensor:
    """Tensor[N, R] bool: the anchors (all levels, concatenated) whose IoU with one of the image's
    boxes, faces and ignore regions alike, is at least ``min_iou``."""
    anchors = torch.cat(list(anchors_per_level), dim=0)  # [(R_l, 4)] -> (R, 4)
    near = [box_iou(t["boxes"].to(anchors), anchors).amax(dim=0) >= min_iou if len(t["boxes"])
            else anchors.new_zeros(anchors.shape[0], dtype=torch.bool) for t in targets]
    return torch.stack(near)
