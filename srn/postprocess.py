"""The release's single-pass inference (docs/design.md, Inference), batched and on the device.

Per level: the STC gate, the STR double decode, the per-level candidate threshold and top-k; then
NMS over all levels of each image at once with ``torchvision.ops.batched_nms`` and a per-image
top-k. There is no loop over boxes and no host round trip until the per-image split at the end.

NMS uses torchvision's continuous-coordinate IoU; the release's NMS used the "+1 pixel" area
convention, which differs only for boxes a few pixels wide.

Two ways to run the NMS step:

- :func:`batched_detections`: ``torchvision.ops.batched_nms``, exact; its output sizes depend on the
  data, so it synchronises with the host (torchvision's CUDA NMS finishes its scan on the CPU).
- :func:`static_detections` + :func:`unpack_static`: fixed shapes and no host synchronisation, so the
  whole post-processing can be captured in a CUDA graph. Greedy NMS is the unique solution of
  ``keep[i] = valid[i] and no kept j before i overlaps i``, a triangular system; it is solved by a
  fixed number of parallel sweeps, and the sweep that changes nothing proves the answer exact. Images
  whose answer is not proven (too many candidates, or a suppression chain longer than the sweeps) are
  redone by :func:`batched_detections` when they are unpacked, so the result is always greedy NMS's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_iou

from srn.box_coder import decode
from srn.config import PostProcessConfig
from srn.model.outputs import SRNOutputs


@torch.no_grad()
def select_candidates(
    outputs: SRNOutputs,
    stc_levels: Sequence[int],
    str_levels: Sequence[int],
    config: PostProcessConfig = PostProcessConfig(),
    num_anchors: int = 2,
) -> tuple[Tensor, Tensor]:
    """Per-level gating and top-k, then one decode for all levels, before NMS.

    Returns:
        boxes (Tensor[N, K, 4]) and scores (Tensor[N, K]) of the candidates of every level, where
        K = sum over levels of min(pre_nms_top_k, R_l). Slots that are not candidates score -1.
    """
    scores_per_level, anchors_per_level, step1_per_level, step2_per_level, refined = [], [], [], [], []
    for level, anchors in enumerate(outputs.anchors):
        logits = outputs.step2_logits[level]  # (N, R)
        scores = logits.sigmoid()
        num_cells = logits.shape[1] // num_anchors
        thresh = config.candidate_thresh if num_cells >= config.min_cells_for_thresh else 0.0
        is_candidate = scores > thresh
        if level in stc_levels:
            # STC gate: an easy negative of the first step (negative confidence >= theta) is no candidate.
            is_candidate &= outputs.step1_logits[level].sigmoid() > 1.0 - config.stc_theta
        masked = torch.where(is_candidate, scores, torch.full_like(scores, -1.0))
        k = min(config.pre_nms_top_k, masked.shape[1])
        top_scores, top_idxs = masked.topk(k, dim=1)  # (N, k)
        gather_idxs = top_idxs.unsqueeze(-1).expand(-1, -1, 4)  # (N, k) -> (N, k, 4)
        step2_deltas = outputs.step2_deltas[level].gather(1, gather_idxs)
        # STR: the second step regresses from the anchors the first step refined.
        is_str = level in str_levels
        step1_deltas = outputs.step1_deltas[level].gather(1, gather_idxs) if is_str else torch.zeros_like(step2_deltas)
        scores_per_level.append(top_scores)
        anchors_per_level.append(anchors[top_idxs])  # (R, 4)[(N, k)] -> (N, k, 4)
        step1_per_level.append(step1_deltas)
        step2_per_level.append(step2_deltas)
        refined.append(torch.full((k,), is_str, dtype=torch.bool, device=logits.device))
    # Every level at once: 6 x (N, k_l, ...) -> (N, K, ...), and two decodes instead of nine.
    anchors = torch.cat(anchors_per_level, dim=1)
    refined_anchors = decode(torch.cat(step1_per_level, dim=1), anchors)
    anchors = torch.where(torch.cat(refined).view(1, -1, 1), refined_anchors, anchors)
    return decode(torch.cat(step2_per_level, dim=1), anchors), torch.cat(scores_per_level, dim=1)


@torch.no_grad()
def batched_detections(
    boxes: Tensor,
    scores: Tensor,
    nms_iou: float,
    max_detections: int,
    min_score: float = 0.0,
    first_pass: int = 2048,
) -> list[dict[str, Tensor]]:
    """NMS per image and the top ``max_detections`` per image, for all images in one call.

    Greedy NMS decides each box from the higher-scored boxes alone. So candidates scoring below
    ``min_score`` are dropped first, and an image with more than ``first_pass`` candidates goes
    through NMS with its best ``first_pass`` only, then 4x as many, until ``max_detections`` survive
    or none is left out: the same detections, without NMS over thousands of boxes that could not
    reach the top ``max_detections``.

    Args:
        boxes (Tensor[N, K, 4]), scores (Tensor[N, K]): candidates; a score < 0 marks an empty slot.
        min_score: detections must score at least this.

    Returns:
        One dict per image with ``boxes`` (Tensor[D, 4]) and ``scores`` (Tensor[D]), by score descending.
    """
    if min_score > 0:
        scores = torch.where(scores >= min_score, scores, -1.0)
    k = scores.shape[1]
    valid_counts = (scores >= 0).sum(1)
    limit = k
    if valid_counts.numel() and int(valid_counts.max()) > first_pass:
        scores, order = scores.sort(dim=1, descending=True)
        boxes = boxes.gather(1, order.unsqueeze(-1).expand(-1, -1, 4))
        limit = first_pass
    while True:
        results, kept = _greedy_nms(boxes[:, :limit], scores[:, :limit], nms_iou, max_detections)
        if limit >= k or bool(((kept >= max_detections) | (valid_counts <= limit)).all()):
            return results
        limit = min(4 * limit, k)


def _greedy_nms(boxes: Tensor, scores: Tensor, nms_iou: float, max_detections: int) -> tuple[list[dict[str, Tensor]], Tensor]:
    """:func:`batched_detections` on exactly these candidates; also each image's number of
    surviving boxes before the ``max_detections`` cut."""
    n, k = scores.shape
    image_idxs = torch.arange(n, device=scores.device).unsqueeze(1).expand(n, k).reshape(-1)  # (N*K,)
    flat_boxes = boxes.reshape(-1, 4)  # (N, K, 4) -> (N*K, 4)
    flat_scores = scores.reshape(-1)
    valid = (flat_scores >= 0).nonzero().squeeze(1)
    keep = valid[batched_nms(flat_boxes[valid].float(), flat_scores[valid].float(), image_idxs[valid], nms_iou)]
    # batched_nms sorts by score; a stable sort by image keeps that order within each image.
    keep = keep[torch.argsort(image_idxs[keep], stable=True)]
    kept_images = image_idxs[keep]
    kept = torch.bincount(kept_images, minlength=n)
    starts = kept.cumsum(0) - kept
    rank = torch.arange(keep.numel(), device=keep.device) - starts[kept_images]
    keep = keep[rank < max_detections]
    results = []
    for idxs in keep.split(kept.clamp(max=max_detections).tolist()):
        results.append({"boxes": flat_boxes[idxs], "scores": flat_scores[idxs]})
    return results, kept


@torch.no_grad()
def static_detections(boxes: Tensor, scores: Tensor, nms_iou: float, max_detections: int, min_score: float = 0.0,
                      max_candidates: int = 1024, sweeps: int = 8) -> dict[str, Tensor]:
    """:func:`batched_detections` with fixed output shapes and no host synchronisation.

    Candidates scoring below ``min_score`` are dropped before NMS; greedy NMS only lets a box
    suppress lower-scored ones, so this never changes which of the others survive. The best
    ``max_candidates`` of the rest enter NMS.

    Args:
        boxes (Tensor[N, K, 4]), scores (Tensor[N, K]): candidates; a score < 0 marks an empty slot.

    Returns:
        ``boxes`` (Tensor[N, D, 4]) and ``scores`` (Tensor[N, D], -1 in empty slots) by score
        descending, ``counts`` (Tensor[N]) and ``exact`` (Tensor[N] bool), with
        D = min(max_detections, max_candidates, K). ``exact[i]`` is False when ``sweeps`` did not
        settle image i's NMS, or when it had more than ``max_candidates`` candidates and fewer than
        ``max_detections`` of the best ones survived; :func:`unpack_static` then redoes it.
    """
    n, k = scores.shape
    c = min(max_candidates, k)
    d = min(max_detections, c)
    scores = torch.where(scores >= min_score, scores, -1.0) if min_score > 0 else scores
    fits = (scores >= 0).sum(1) <= c
    top_scores, order = scores.topk(c, dim=1)  # (N, C), by score descending
    top_boxes = boxes.gather(1, order.unsqueeze(-1).expand(-1, -1, 4)).float()  # (N, C, 4)
    valid = top_scores >= 0
    # suppresses[b, j, i]: j scores higher than i, is a candidate and overlaps i by more than nms_iou.
    earlier = torch.ones(c, c, dtype=torch.bool, device=scores.device).triu(1)
    suppresses = (torch.vmap(box_iou)(top_boxes, top_boxes) > nms_iou) & earlier & valid.unsqueeze(2)
    suppresses = suppresses.to(top_boxes.dtype)  # (N, C, C); 0/1 sums below 2**24 are exact in fp32
    keep = valid
    settled = torch.zeros_like(fits)
    for _ in range(sweeps):
        hits = torch.bmm(keep.to(suppresses.dtype).unsqueeze(1), suppresses).squeeze(1)  # (N, C)
        new_keep = valid & (hits == 0)
        settled = (new_keep == keep).all(1)
        keep = new_keep
    ranked_scores, slots = torch.where(keep, top_scores, -2.0).topk(d, dim=1)  # kept first, in order
    kept = keep.sum(1)
    counts = kept.clamp(max=d)
    filled = torch.arange(d, device=scores.device) < counts.unsqueeze(1)
    return {
        "boxes": top_boxes.gather(1, slots.unsqueeze(-1).expand(-1, -1, 4)) * filled.unsqueeze(-1),
        "scores": torch.where(filled, ranked_scores, -1.0),
        "counts": counts,
        # Candidates beyond the best C cannot change the first max_detections survivors.
        "exact": settled & (fits | (kept >= max_detections)),
    }


def unpack_static(
    static: dict[str, Tensor],
    boxes: Tensor,
    scores: Tensor,
    nms_iou: float,
    max_detections: int,
    min_score: float = 0.0,
) -> list[dict[str, Tensor]]:
    """Per-image detections from :func:`static_detections`' output (one host synchronisation);
    an image whose static answer is not proven exact is redone from its candidates ``boxes`` and
    ``scores`` by :func:`batched_detections`."""
    counts, exact = torch.stack([static["counts"], static["exact"].long()]).tolist()
    results = []
    for i, (count, ok) in enumerate(zip(counts, exact)):
        if ok:
            results.append({"boxes": static["boxes"][i, :count], "scores": static["scores"][i, :count]})
        else:
            results.extend(batched_detections(boxes[i : i + 1], scores[i : i + 1], nms_iou, max_detections, min_score))
    return results


@torch.no_grad()
def postprocess(outputs: SRNOutputs, stc_levels: Sequence[int], str_levels: Sequence[int],
                config: PostProcessConfig = PostProcessConfig(), min_score: float = 0.0,
                num_anchors: int = 2) -> list[dict[str, Tensor]]:
    """Detections of every image of a batch from the raw network outputs (docs/design.md, Inference).

    Returns:
        One dict per image: ``boxes`` (Tensor[D, 4], x1 y1 x2 y2 in input pixels) and ``scores``
        (Tensor[D]), at most ``config.max_detections``, by score descending.
    """
    boxes, scores = select_candidates(outputs, stc_levels, str_levels, config, num_anchors)
    return batched_detections(boxes, scores, config.nms_iou, config.max_detections, min_score)
