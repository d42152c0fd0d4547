"""The release's single-pass inference (docs/design.md, Inference), batched and on the device.

One :class:`PostProcessor`, built once from the network's levels and a :class:`PostProcessConfig`,
is what the PyTorch runner, the onnxruntime backend, the ONNX export and ``srn bench`` all run.

Per level: the STC gate, the per-level candidate threshold and top-k, and the STR double decode
(:meth:`PostProcessor.candidates`); then NMS over all levels of each image at once with
``torchvision.ops.batched_nms`` and a per-image top-k. There is no loop over boxes and no host round
trip until the per-image split at the end. Each image's result is one :class:`Detections`.

NMS uses torchvision's continuous-coordinate IoU; the release's NMS used the "+1 pixel" area
convention, which differs only for boxes a few pixels wide.

Three ways to run the NMS step on the candidates:

- :func:`batched_detections` (:meth:`PostProcessor.__call__`): ``torchvision.ops.batched_nms``,
  exact; its output sizes depend on the data, so it synchronises with the host (torchvision's CUDA
  NMS finishes its scan on the CPU).
- :func:`static_detections` + :func:`unpack_static` (:meth:`PostProcessor.static` +
  :meth:`PostProcessor.unpack`): fixed shapes and no host synchronisation, so the whole
  post-processing can be captured in a CUDA graph. Greedy NMS is the unique solution of
  ``keep[i] = valid[i] and no kept j before i overlaps i``, a triangular system; it is solved by a
  fixed number of parallel sweeps, and the sweep that changes nothing proves the answer exact. Images
  whose answer is not proven (too many candidates, or a suppression chain longer than the sweeps) are
  redone by :func:`batched_detections` when they are unpacked, so the result is always greedy NMS's.
- the ONNX export (:mod:`srn.export.onnx`) traces :meth:`PostProcessor.candidates` and follows it
  with ONNX's own ``NonMaxSuppression``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_iou

from srn.box_coder import decode
from srn.config import PostProcessConfig
from srn.model.outputs import SRNOutputs

if TYPE_CHECKING:
    from srn.model import SRN


class Detections(NamedTuple):
    """The detections of one image, from the post-processing up to :class:`srn.inference.Faces`.

    A NamedTuple, so that ``boxes, scores = detections`` unpacks it as the pair it is.

    Attributes:
        boxes (Tensor[D, 4]): x1, y1, x2, y2 in the pixels of the image the network saw.
        scores (Tensor[D]): by score descending.
    """

    boxes: Tensor
    scores: Tensor


class StaticDetections(NamedTuple):
    """What :func:`static_detections` computes with fixed shapes, for a batch of N images.

    Attributes:
        boxes (Tensor[N, D, 4]): by score descending; zero in empty slots.
        scores (Tensor[N, D]): -1 in empty slots.
        counts (Tensor[N]): filled slots per image.
        exact (Tensor[N] bool): False where the answer is not proven greedy NMS's;
            :func:`unpack_static` redoes those images from the candidates.
        candidate_boxes (Tensor[N, K, 4]), candidate_scores (Tensor[N, K]): the NMS's input.
    """

    boxes: Tensor
    scores: Tensor
    counts: Tensor
    exact: Tensor
    candidate_boxes: Tensor
    candidate_scores: Tensor


def traced_size(x: Tensor, dim: int) -> int | Tensor:
    """``x.shape[dim]``, kept a graph value when traced, so that choices made from a size (a level's
    threshold, a top-k's k) follow the input size in an exported graph.

    Eagerly a Python int; while tracing, a (1,) int64 tensor read by a ``Shape`` node (the trick
    torchvision's detection models use for their ONNX export).
    """
    if not torch.jit.is_tracing():
        return x.shape[dim]
    return torch._shape_as_tensor(x)[dim : dim + 1]


def clamped_size(x: Tensor, dim: int, limit: int) -> int | Tensor:
    """``min(x.shape[dim], limit)`` as :func:`traced_size` gives sizes: a Python int eagerly; while
    tracing, a 0-d int64 tensor that ``topk`` accepts as its ``k``."""
    size = traced_size(x, dim)
    if isinstance(size, Tensor):
        return torch.minimum(size, torch.tensor([limit], dtype=size.dtype)).squeeze(0)
    return min(limit, size)


@dataclass(frozen=True)
class PostProcessor:
    """Raw network outputs to detections (docs/design.md, Inference), written once for every runtime.

    A plain frozen dataclass rather than an ``nn.Module``: it holds no parameters and no buffers
    (the anchors arrive with the outputs), so there is nothing for ``.to()`` or a ``state_dict`` to
    carry, and two post-processors with the same settings compare equal.

    Args:
        stc_levels: levels whose candidates pass the STC gate.
        str_levels: levels whose anchors the first step refines (STR).
        num_anchors: anchors per cell (A).
        config: thresholds, top-k and NMS settings.
    """

    stc_levels: tuple[int, ...]
    str_levels: tuple[int, ...]
    num_anchors: int = 2
    config: PostProcessConfig = field(default_factory=PostProcessConfig)

    def __post_init__(self) -> None:
        # Tuples, so that the object hashes and `level in ...` reads the same for any sequence given.
        object.__setattr__(self, "stc_levels", tuple(sorted(set(self.stc_levels))))
        object.__setattr__(self, "str_levels", tuple(sorted(set(self.str_levels))))

    @classmethod
    def from_model(cls, model: SRN, config: PostProcessConfig | None = None) -> PostProcessor:
        """The post-processing of ``model``'s levels and anchors per cell."""
        return cls(model.stc_levels, model.str_levels, model.head.num_anchors, config or PostProcessConfig())

    # -- candidates: the part every runtime shares ---------------------------------------------
    @torch.no_grad()
    def candidates(self, outputs: SRNOutputs) -> tuple[Tensor, Tensor]:
        """Per-level gating and top-k, then one decode for all levels, before NMS.

        Traceable: every choice that depends on a level's size (its threshold, its top-k's k) stays
        a graph value under ``torch.jit.trace``, so that an exported graph follows any input size.

        Args:
            outputs: the network's raw outputs; ``outputs.anchors`` are the anchors to decode from.

        Returns:
            boxes (Tensor[N, K, 4]) and scores (Tensor[N, K]) of the candidates of every level, where
            K = sum over levels of min(pre_nms_top_k, R_l). Slots that are not candidates score -1.
        """
        config = self.config
        scores_per_level, anchors_per_level, step1_per_level, step2_per_level, refined = [], [], [], [], []
        for level, anchors in enumerate(outputs.anchors):
            logits = outputs.step2_logits[level]  # (N, R)
            scores = logits.sigmoid()
            thresh = self._level_thresh(traced_size(logits, 1))
            is_candidate = scores > thresh
            if level in self.stc_levels:
                # STC gate: an easy negative of the first step (negative confidence >= theta) is no candidate.
                is_candidate = is_candidate & (outputs.step1_logits[level].sigmoid() > 1.0 - config.stc_theta)
            masked = torch.where(is_candidate, scores, torch.full_like(scores, -1.0))
            top_scores, top_idxs = masked.topk(clamped_size(masked, 1, config.pre_nms_top_k), dim=1)  # (N, k)
            if (config.score_scale, config.score_shift) != (1.0, 0.0):
                # Platt scaling of the candidates' logits; a monotone map, so the order above stands.
                calibrated = torch.sigmoid(logits.gather(1, top_idxs) * config.score_scale + config.score_shift)
                top_scores = torch.where(top_scores >= 0, calibrated, top_scores)
            gather_idxs = top_idxs.unsqueeze(-1).expand(-1, -1, 4)  # (N, k) -> (N, k, 4)
            step2_deltas = outputs.step2_deltas[level].gather(1, gather_idxs)
            # STR: the second step regresses from the anchors the first step refined.
            is_str = level in self.str_levels
            step1_deltas = outputs.step1_deltas[level].gather(1, gather_idxs) if is_str else torch.zeros_like(step2_deltas)
            scores_per_level.append(top_scores)
            anchors_per_level.append(anchors[top_idxs])  # (R, 4)[(N, k)] -> (N, k, 4)
            step1_per_level.append(step1_deltas)
            step2_per_level.append(step2_deltas)
            refined.append((torch.ones_like if is_str else torch.zeros_like)(top_idxs, dtype=torch.bool))  # (N, k)
        # Every level at once: 6 x (N, k_l, ...) -> (N, K, ...), and two decodes instead of nine.
        anchors = torch.cat(anchors_per_level, dim=1)
        refined_anchors = decode(torch.cat(step1_per_level, dim=1), anchors)
        # decode(0, a) is not bit-exactly a, so levels without STR keep their anchors as they are.
        anchors = torch.where(torch.cat(refined, dim=1).unsqueeze(-1), refined_anchors, anchors)  # (N, K, 4)
        return decode(torch.cat(step2_per_level, dim=1), anchors), torch.cat(scores_per_level, dim=1)

    def _level_thresh(self, num_anchors: int | Tensor) -> float | Tensor:
        """The candidate threshold of a level with ``num_anchors`` anchors (H*W*A): the release
        lowers it to 0 on levels with few cells (docs/design.md, Inference, step 2)."""
        config = self.config
        enough_cells = num_anchors >= config.min_cells_for_thresh * self.num_anchors  # H*W >= 120
        if isinstance(enough_cells, Tensor):
            return torch.where(enough_cells, torch.tensor(config.candidate_thresh), torch.tensor(0.0))
        return config.candidate_thresh if enough_cells else 0.0

    # -- the exact path --------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, outputs: SRNOutputs, min_score: float = 0.0) -> list[Detections]:
        """Detections of every image of a batch from the raw network outputs, by
        :func:`batched_detections`.

        Args:
            min_score: detections must score at least this.

        Returns:
            One :class:`Detections` per image: at most ``config.max_detections``, by score descending,
            boxes x1 y1 x2 y2 in input pixels.
        """
        boxes, scores = self.candidates(outputs)
        return batched_detections(boxes, scores, self.config.nms_iou, self.config.max_detections, min_score)

    # -- the fixed-shape path (CUDA graphs) ------------------------------------------------------
    @torch.no_grad()
    def static(self, outputs: SRNOutputs, min_score: float = 0.0, max_candidates: int = 1024,
               sweeps: int = 12) -> StaticDetections:
        """Candidates and :func:`static_detections` of raw outputs: fixed shapes, no host sync."""
        boxes, scores = self.candidates(outputs)
        return static_detections(boxes, scores, self.config.nms_iou, self.config.max_detections, min_score,
                                 max_candidates, sweeps)

    def unpack(self, static: StaticDetections, min_score: float = 0.0) -> list[Detections]:
        """:meth:`static`'s answer per image (one host synchronisation), unproven images redone;
        ``min_score`` must be the one :meth:`static` was given."""
        return unpack_static(static, self.config.nms_iou, self.config.max_detections, min_score)


# ---------------------------------------------------------------------------------------------
# NMS on candidates
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def batched_detections(
    boxes: Tensor,
    scores: Tensor,
    nms_iou: float,
    max_detections: int,
    min_score: float = 0.0,
    first_pass: int = 2048,
) -> list[Detections]:
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
        One :class:`Detections` per image, by score descending.
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


def _greedy_nms(boxes: Tensor, scores: Tensor, nms_iou: float, max_detections: int) -> tuple[list[Detections], Tensor]:
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
    results = [Detections(flat_boxes[idxs], flat_scores[idxs]) for idxs in keep.split(kept.clamp(max=max_detections).tolist())]
    return results, kept


@torch.no_grad()
def static_detections(boxes: Tensor, scores: Tensor, nms_iou: float, max_detections: int, min_score: float = 0.0,
                      max_candidates: int = 1024, sweeps: int = 8) -> StaticDetections:
    """:func:`batched_detections` with fixed output shapes and no host synchronisation.

    Candidates scoring below ``min_score`` are dropped before NMS; greedy NMS only lets a box
    suppress lower-scored ones, so this never changes which of the others survive. The best
    ``max_candidates`` of the rest enter NMS.

    Args:
        boxes (Tensor[N, K, 4]), scores (Tensor[N, K]): candidates; a score < 0 marks an empty slot.

    Returns:
        :class:`StaticDetections` with D = min(max_detections, max_candidates, K). ``exact[i]`` is
        False when ``sweeps`` did not settle image i's NMS, or when it had more than
        ``max_candidates`` candidates and fewer than ``max_detections`` of the best ones survived;
        :func:`unpack_static` then redoes it.
    """
    candidate_boxes, candidate_scores = boxes, scores
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
    return StaticDetections(
        boxes=top_boxes.gather(1, slots.unsqueeze(-1).expand(-1, -1, 4)) * filled.unsqueeze(-1),
        scores=torch.where(filled, ranked_scores, -1.0),
        counts=counts,
        # Candidates beyond the best C cannot change the first max_detections survivors.
        exact=settled & (fits | (kept >= max_detections)),
        candidate_boxes=candidate_boxes,
        candidate_scores=candidate_scores,
    )


def unpack_static(static: StaticDetections, nms_iou: float, max_detections: int, min_score: float = 0.0) -> list[Detections]:
    """Per-image detections from :func:`static_detections`' output (one host synchronisation);
    an image whose static answer is not proven exact is redone from its candidates by
    :func:`batched_detections`."""
    counts, exact = torch.stack([static.counts, static.exact.long()]).tolist()
    results = []
    for i, (count, ok) in enumerate(zip(counts, exact)):
        if ok:
            results.append(Detections(static.boxes[i, :count], static.scores[i, :count]))
        else:
            candidates = static.candidate_boxes[i : i + 1], static.candidate_scores[i : i + 1]
            results.extend(batched_detections(*candidates, nms_iou, max_detections, min_score))
    return results
