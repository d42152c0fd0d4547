"""The release's single-pass inference (SPEC §4), batched and on the device.

Per level: the STC gate, the STR double decode, the per-level candidate threshold and top-k; then
NMS over all levels of each image at once with ``torchvision.ops.batched_nms`` and a per-image
top-k. There is no loop over boxes and no host round trip until the per-image split at the end.

NMS uses torchvision's continuous-coordinate IoU; the release's NMS used the "+1 pixel" area
convention, which differs only for boxes a few pixels wide.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from srn.box_coder import decode
from srn.config import PostProcessConfig


@torch.no_grad()
def select_candidates(
    outputs: dict[str, list],
    stc_levels: Sequence[int],
    str_levels: Sequence[int],
    config: PostProcessConfig = PostProcessConfig(),
    num_anchors: int = 2,
) -> tuple[Tensor, Tensor]:
    """Per-level gating, top-k and decoding, before NMS.

    Returns:
        boxes (Tensor[N, K, 4]) and scores (Tensor[N, K]) of the candidates of every level, where
        K = sum over levels of min(pre_nms_top_k, R_l). Slots that are not candidates score -1.
    """
    boxes_per_level, scores_per_level = [], []
    for level, anchors in enumerate(outputs["anchors"]):
        logits = outputs["step2_logits"][level]  # (N, R)
        scores = logits.sigmoid()
        num_cells = logits.shape[1] // num_anchors
        thresh = config.candidate_thresh if num_cells >= config.min_cells_for_thresh else 0.0
        is_candidate = scores > thresh
        if level in stc_levels:
            # STC gate: an easy negative of the first step (negative confidence >= theta) is no candidate.
            is_candidate &= outputs["step1_logits"][level].sigmoid() > 1.0 - config.stc_theta
        masked = torch.where(is_candidate, scores, torch.full_like(scores, -1.0))
        k = min(config.pre_nms_top_k, masked.shape[1])
        top_scores, top_idxs = masked.topk(k, dim=1)  # (N, k)
        level_anchors = anchors[top_idxs]  # (R, 4)[(N, k)] -> (N, k, 4)
        gather_idxs = top_idxs.unsqueeze(-1).expand(-1, -1, 4)  # (N, k) -> (N, k, 4)
        if level in str_levels:
            # STR: the second step regresses from the anchors the first step refined.
            step1_deltas = outputs["step1_deltas"][level].gather(1, gather_idxs)
            level_anchors = decode(step1_deltas, level_anchors)
        step2_deltas = outputs["step2_deltas"][level].gather(1, gather_idxs)
        boxes_per_level.append(decode(step2_deltas, level_anchors))
        scores_per_level.append(top_scores)
    # 6 x (N, k_l, 4) -> (N, K, 4); 6 x (N, k_l) -> (N, K)
    return torch.cat(boxes_per_level, dim=1), torch.cat(scores_per_level, dim=1)


@torch.no_grad()
def batched_detections(
    boxes: Tensor, scores: Tensor, nms_iou: float, max_detections: int, min_score: float = 0.0
) -> list[dict[str, Tensor]]:
    """NMS per image and the top ``max_detections`` per image, for all images in one call.

    Args:
        boxes (Tensor[N, K, 4]), scores (Tensor[N, K]): candidates; a score < 0 marks an empty slot.
        min_score: detections must score at least this (after NMS, so it never changes which
            boxes suppress which).

    Returns:
        One dict per image with ``boxes`` (Tensor[D, 4]) and ``scores`` (Tensor[D]), by score descending.
    """
    n, k = scores.shape
    image_idxs = torch.arange(n, device=scores.device).unsqueeze(1).expand(n, k).reshape(-1)  # (N*K,)
    flat_boxes = boxes.reshape(-1, 4)  # (N, K, 4) -> (N*K, 4)
    flat_scores = scores.reshape(-1)
    valid = (flat_scores >= 0).nonzero().squeeze(1)
    keep = valid[batched_nms(flat_boxes[valid].float(), flat_scores[valid].float(), image_idxs[valid], nms_iou)]
    keep = keep[flat_scores[keep] >= min_score]
    # batched_nms sorts by score; a stable sort by image keeps that order within each image.
    keep = keep[torch.argsort(image_idxs[keep], stable=True)]
    kept_images = image_idxs[keep]
    counts = torch.bincount(kept_images, minlength=n)
    starts = counts.cumsum(0) - counts
    rank = torch.arange(keep.numel(), device=keep.device) - starts[kept_images]
    keep = keep[rank < max_detections]
    counts = counts.clamp(max=max_detections)
    results = []
    for idxs in keep.split(counts.tolist()):
        results.append({"boxes": flat_boxes[idxs], "scores": flat_scores[idxs]})
    return results


@torch.no_grad()
def postprocess(
    outputs: dict[str, list],
    stc_levels: Sequence[int],
    str_levels: Sequence[int],
    config: PostProcessConfig = PostProcessConfig(),
    min_score: float = 0.0,
    num_anchors: int = 2,
) -> list[dict[str, Tensor]]:
    """Detections of every image of a batch from the raw network outputs (SPEC §4).

    Returns:
        One dict per image: ``boxes`` (Tensor[D, 4], x1 y1 x2 y2 in input pixels) and ``scores``
        (Tensor[D]), at most ``config.max_detections``, by score descending.
    """
    boxes, scores = select_candidates(outputs, stc_levels, str_levels, config, num_anchors)
    return batched_detections(boxes, scores, config.nms_iou, config.max_detections, min_score)
