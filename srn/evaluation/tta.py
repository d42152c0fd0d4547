"""The release's test-time augmentation for WIDER FACE: multi-scale + flip + box voting.

Let ``M = max_size**2`` and ``H x W`` the image size (docs/design.md, Test-time augmentation).

* ``H*W < M``: the image, its horizontal flip, a 0.5x pass (boxes kept if their longer side is
  over 30 px), enlarged passes at 1.5**t for t = 1..floor(log_2.25(M / (H*W))) and a last one at
  sqrt(M / (H*W)) (boxes kept if their shorter side is under 100 px).
* ``H*W >= M``: the image resized to area M, its flip, and 0.75x and 0.5x versions of the resized
  image (those two keep boxes whose longer side is over 30 px).

Boxes found at scale ``f`` map back with ``(x - (f - 1)/2) / f``; flipped boxes first with
``x1' = w - x2 - 1``. All passes are merged by box voting, the top 750 kept and clipped to the
image. Sizes use the release's "+1" convention (``x2 - x1 + 1``) for the size filters and the
voting IoU.

Resizing mimics ``cv2.resize(img, (0, 0), fx=f, fy=f, interpolation=INTER_LINEAR)``: the output
size is ``round(W*f) x round(H*f)`` (half to even, as cvRound), the sampling grid uses ``1/f``
exactly, and there is no antialiasing. A uint8 image is resized in float and rounded back to
uint8 (halves up), as cv2 does in fixed point (so a pixel can differ by one grey level).

Known difference from the release: its enlarged-pass accumulator starts as a row of zeros that
it never removes, so a zero box with score 0 joins the voting; it is not reproduced here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou, nms

__all__ = [
    "TTAPass",
    "tta_passes",
    "resized_size",
    "resize_like_cv2",
    "map_to_original",
    "box_voting",
    "tta_detect",
    "format_release_line",
]

SizeFilter = Literal["none", "longer_over_30", "shorter_under_100"]
DetectFn = Callable[[list[Tensor]], Sequence[tuple[Tensor, Tensor]]]


@dataclass(frozen=True)
class TTAPass:
    """One detection pass.

    Attributes:
        resize: successive resize factors applied to the original image; the release resizes the
            large-image branch twice (to area M, then by 0.75 or 0.5), so sizes round twice.
        flip: run on the horizontal flip.
        size_filter: which boxes of this pass survive, judged in original-image pixels.
    """

    resize: tuple[float, ...]
    flip: bool = False
    size_filter: SizeFilter = "none"

    @property
    def scale(self) -> float:
        """The factor boxes are mapped back with (the product of ``resize``, left to right)."""
        scale = 1.0
        for f in self.resize:
            scale *= f
        return scale


def tta_passes(height: int, width: int, max_size: int = 2100) -> list[TTAPass]:
    """The release's passes for an ``height x width`` image, in the release's order."""
    largest = max_size * max_size
    if height * width < largest:
        passes = [
            TTAPass((1.0,)),
            TTAPass((1.0,), flip=True),
            TTAPass((0.5,), size_filter="longer_over_30"),
        ]
        # the release's own expressions, so that float rounding picks the same count and ratio
        enlarge_times = int(math.floor(math.log(largest / width / height, 2.25)))
        passes += [TTAPass((math.pow(1.5, t + 1),), size_filter="shorter_under_100") for t in range(enlarge_times)]
        final = math.sqrt(largest / height / width)
        passes.append(TTAPass((final,), size_filter="shorter_under_100"))
        return passes
    ratio = math.sqrt(largest / width / height)
    return [
        TTAPass((ratio,)),
        TTAPass((ratio,), flip=True),
        TTAPass((ratio, 0.75), size_filter="longer_over_30"),
        TTAPass((ratio, 0.5), size_filter="longer_over_30"),
    ]


def resized_size(height: int, width: int, factors: Sequence[float]) -> tuple[int, int]:
    """Output size after cv2-style resizes by each factor in turn (cvRound: half to even)."""
    for f in factors:
        height, width = int(np.rint(height * f)), int(np.rint(width * f))
    return height, width


def resize_like_cv2(image: Tensor, factor: float) -> Tensor:
    """Bilinear resize by ``factor`` like ``cv2.resize(..., fx=factor, fy=factor)``.

    Args:
        image (Tensor[C, H, W]): float or uint8.

    Returns:
        Tensor[C, round(H*factor), round(W*factor)] of the same dtype.
    """
    if factor == 1.0:
        return image
    out_h, out_w = resized_size(image.shape[-2], image.shape[-1], [factor])
    if out_h < 1 or out_w < 1:
        raise ValueError(f"resizing {tuple(image.shape[-2:])} by {factor} leaves no pixels")
    x = image.unsqueeze(0)  # (C, H, W) -> (1, C, H, W)
    x = x.float() if not x.is_floating_point() else x
    # Passing the scale makes the sampling grid use 1/factor exactly, as cv2 does with fx/fy,
    # rather than in/out size ratios.
    y = torch.ops.aten.upsample_bilinear2d(x, [out_h, out_w], False, factor, factor)[0]
    if image.dtype == torch.uint8:
        # cv2's fixed-point path rounds halves up
        y = (y + 0.5).floor_().clamp_(0, 255).to(torch.uint8)
    return y


def map_to_original(boxes: Tensor, scale: float, flip: bool, width: int) -> Tensor:
    """Map boxes found on a resized (and maybe flipped) image back to the original image.

    Args:
        boxes (Tensor[K, 4]): ``x1 y1 x2 y2`` in the pass image.
        scale: the pass's total resize factor ``f``.
        flip: the pass image was flipped horizontally.
        width: the pass image's width (the flip axis).

    Returns:
        Tensor[K, 4]: ``flip: x1' = width - x2 - 1, x2' = width - x1 - 1``, then
        ``(x - (f - 1)/2) / f``.
    """
    boxes = boxes.clone()
    if flip:
        x1 = boxes[:, 0].clone()
        boxes[:, 0] = width - boxes[:, 2] - 1
        boxes[:, 2] = width - x1 - 1
    if scale != 1.0:
        boxes = (boxes - (scale - 1) / 2.0) / scale
    return boxes


def _size_mask(boxes: Tensor, size_filter: SizeFilter) -> Tensor:
    widths = boxes[:, 2] - boxes[:, 0] + 1
    heights = boxes[:, 3] - boxes[:, 1] + 1
    if size_filter == "longer_over_30":
        return torch.maximum(widths, heights) > 30
    if size_filter == "shorter_under_100":
        return torch.minimum(widths, heights) < 100
    return torch.ones_like(widths, dtype=torch.bool)


# Keeps the (heads x boxes) IoU blocks of box voting under ~32 MB of float64.
_VOTE_BLOCK_ELEMENTS = 1 << 22


def box_voting(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float = 0.5,
    keep_singletons: bool = False,
    max_detections: int = 750,
) -> tuple[Tensor, Tensor]:
    """The release's box voting, vectorised.

    The release repeatedly takes the highest remaining box and every remaining box with
    IoU >= 0.5 to it, merges them into their score-weighted mean box with the cluster's maximum
    score, and drops clusters of one box. Its cluster heads are exactly the boxes that greedy NMS
    (at IoU >= threshold) keeps, and each other box joins the first head, in score order, that
    it overlaps enough. So: heads from ``torchvision.ops.nms``, membership from
    ``torchvision.ops.box_iou``, sums by ``index_add``. IoU uses the release's +1 convention
    (boxes are shifted by one pixel on x2/y2 before the continuous-coordinate IoU).

    A cluster whose scores are all zero gets the plain mean box (the release divides by zero).
    A degenerate box (``x2 < x1 - 1``) has no IoU even with itself, which makes the release loop
    forever; here it simply leads its own cluster.

    Args:
        boxes (Tensor[N, 4]): ``x1 y1 x2 y2``.
        scores (Tensor[N]).
        keep_singletons: keep clusters of one box (the release drops them). If every cluster is
            a singleton and this is False, the result is empty (the release crashes there).
        max_detections: keep the highest-scoring clusters only.

    Returns:
        boxes (Tensor[K, 4]) and scores (Tensor[K]), K <= max_detections, in descending score
        order, in the input dtype; the arithmetic runs in float64 as the release's numpy did.
    """
    out_dtype = boxes.dtype if boxes.is_floating_point() else torch.float32
    if boxes.shape[0] == 0:
        return boxes.new_zeros((0, 4), dtype=out_dtype), scores.new_zeros((0,), dtype=out_dtype)
    order = torch.argsort(scores, descending=True, stable=True)
    boxes64 = boxes[order].to(torch.float64)
    scores64 = scores[order].to(torch.float64)
    plus_one = boxes64 + boxes64.new_tensor([0.0, 0.0, 1.0, 1.0])
    # nms suppresses IoU > t; the release merges IoU >= t: the next double below t does that.
    heads = nms(plus_one, scores64, float(np.nextafter(iou_threshold, -np.inf)))
    heads, _ = torch.sort(heads)  # nms returns them by score; sorting indices keeps the stable tie order

    num = boxes64.shape[0]
    cluster = torch.empty(num, dtype=torch.long, device=boxes.device)
    cluster[heads] = torch.arange(heads.shape[0], device=boxes.device)  # a head leads its own cluster
    is_head = torch.zeros(num, dtype=torch.bool, device=boxes.device)
    is_head[heads] = True
    others = torch.nonzero(~is_head).flatten()  # ascending = score order
    block = max(1, _VOTE_BLOCK_ELEMENTS // heads.shape[0])
    for start in range(0, others.shape[0], block):
        idx = others[start : start + block]
        # a box can only join a head ranked before it; later heads need no IoU
        cand = heads[: int(torch.searchsorted(heads, idx[-1]))]
        iou = box_iou(plus_one[cand], plus_one[idx])  # (T', B)
        member = iou >= iou_threshold
        first = member.to(torch.uint8).argmax(dim=0)  # the first head in score order
        ok = member.any(dim=0) & (cand[first] < idx)
        cluster[idx] = first
        if not bool(ok.all()):
            # nms and box_iou disagree in the last bit about a box at exactly the threshold:
            # give it to its best-overlapping earlier head
            bad = ~ok
            earlier = cand[:, None] < idx[bad][None, :]
            cluster[idx[bad]] = (iou[:, bad] * earlier).argmax(dim=0)

    num_heads = heads.shape[0]
    weighted = torch.zeros((num_heads, 4), dtype=torch.float64, device=boxes.device)
    weighted.index_add_(0, cluster, boxes64 * scores64[:, None])
    weight = torch.zeros(num_heads, dtype=torch.float64, device=boxes.device).index_add_(0, cluster, scores64)
    count = torch.bincount(cluster, minlength=num_heads)
    plain_mean = torch.zeros((num_heads, 4), dtype=torch.float64, device=boxes.device)
    plain_mean.index_add_(0, cluster, boxes64)
    plain_mean /= count[:, None]
    # all-zero scores would divide by zero: fall back to the plain mean (the box scores 0 anyway)
    merged = torch.where(weight[:, None] > 0, weighted / weight.clamp_min(1e-300)[:, None], plain_mean)
    merged_scores = scores64[heads]  # the head is its cluster's highest score

    keep = torch.ones(num_heads, dtype=torch.bool, device=boxes.device) if keep_singletons else count > 1
    merged, merged_scores = merged[keep][:max_detections], merged_scores[keep][:max_detections]
    return merged.to(out_dtype), merged_scores.to(out_dtype)


def tta_detect(
    image: Tensor,
    detect_fn: DetectFn,
    max_size: int = 2100,
    keep_singletons: bool = False,
    max_detections: int = 750,
    iou_threshold: float = 0.5,
    max_batch_pixels: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Detect with the release's multi-scale + flip + box-voting protocol.

    Args:
        image (Tensor[3, H, W]): float or uint8, in whatever value range ``detect_fn`` expects
            (normalisation belongs to the model).
        detect_fn: single-pass detection on a list of already resized images, returning
            ``(boxes (k, 4) x1 y1 x2 y2, scores (k,))`` per image in that image's pixels.
        max_size: ``M = max_size**2`` bounds the pixels of any pass (2100: the release's WIDER
            setting; 1400 fits a 12 GB GPU).
        keep_singletons: keep single-box clusters (the release drops them).
        max_detections: boxes kept after voting (750 in the release).
        iou_threshold: box-voting IoU (0.5).
        max_batch_pixels: passes of equal size are batched into one ``detect_fn`` call while
            their pixels sum to at most this (default ``M``, so a batch never holds more pixels
            than the largest single pass). The passes run one batch at a time.

    Returns:
        boxes (Tensor[K, 4]) clipped to ``[0, W-1] x [0, H-1]``, and scores (Tensor[K]), in
        descending score order; zero-score boxes are dropped as in the release.
    """
    if image.dim() != 3:
        raise ValueError(f"expected one (3, H, W) image, got shape {tuple(image.shape)}")
    height, width = int(image.shape[-2]), int(image.shape[-1])
    passes = tta_passes(height, width, max_size)
    budget = max_size * max_size if max_batch_pixels is None else max_batch_pixels

    # Resized images, cached by resize chain: the large-image branch resizes its area-M image again.
    cache: dict[tuple[float, ...], Tensor] = {(): image}

    def pass_image(p: TTAPass) -> Tensor:
        for i in range(1, len(p.resize) + 1):
            chain = p.resize[:i]
            if chain not in cache:
                cache[chain] = resize_like_cv2(cache[chain[:-1]], chain[-1])
        img = cache[p.resize]
        return torch.flip(img, dims=[-1]) if p.flip else img

    # consecutive passes of one size form a batch, within the pixel budget
    groups: list[list[TTAPass]] = []
    for p in passes:
        h, w = resized_size(height, width, p.resize)
        if groups:
            gh, gw = resized_size(height, width, groups[-1][0].resize)
            if (gh, gw) == (h, w) and (len(groups[-1]) + 1) * h * w <= budget:
                groups[-1].append(p)
                continue
        groups.append([p])

    all_boxes: list[Tensor] = []
    all_scores: list[Tensor] = []
    out_dtype: torch.dtype | None = None
    device: torch.device | None = None  # vote where the detector put its outputs
    for g, group in enumerate(groups):
        images = [pass_image(p) for p in group]
        outputs = detect_fn(images)
        if len(outputs) != len(images):
            raise ValueError(f"detect_fn returned {len(outputs)} results for {len(images)} images")
        for p, img, (boxes, scores) in zip(group, images, outputs, strict=True):
            if out_dtype is None and scores.is_floating_point():
                out_dtype = scores.dtype
            device = device or boxes.device
            boxes = boxes.reshape(-1, 4).to(device=device, dtype=torch.float64)
            boxes = map_to_original(boxes, p.scale, p.flip, img.shape[-1])
            keep = _size_mask(boxes, p.size_filter)
            all_boxes.append(boxes[keep])
            all_scores.append(scores.reshape(-1).to(device=device, dtype=torch.float64)[keep])
        del images
        # free resized images no later pass starts from (memory stays at about one pass)
        needed = {p.resize[:i] for later in groups[g + 1 :] for p in later for i in range(1, len(p.resize) + 1)}
        for chain in [c for c in cache if c and c not in needed]:
            del cache[chain]

    boxes, scores = box_voting(
        torch.cat(all_boxes), torch.cat(all_scores), iou_threshold, keep_singletons, max_detections
    )
    boxes = torch.stack(
        (
            boxes[:, 0].clamp(0, width - 1),
            boxes[:, 1].clamp(0, height - 1),
            boxes[:, 2].clamp(0, width - 1),
            boxes[:, 3].clamp(0, height - 1),
        ),
        dim=1,
    )
    keep = scores != 0
    out_dtype = out_dtype or torch.float32
    return boxes[keep].to(out_dtype), scores[keep].to(out_dtype)


def format_release_line(box: Sequence[float] | Tensor | np.ndarray, score: float, round_xy: bool = True) -> str:
    """One WIDER line as the release writes it: ``round(x1) round(y1) round(w+1) round(h+1) round(s, 3)``.

    ``w = x2 - x1`` and ``h = y2 - y1``. The release's code also rounds x and y (docs/design.md, Test-time
    augmentation; ``round_xy=False`` writes them with 3 decimals). Python 3 rounding is used
    (half to even, integers printed without ".0"); the release ran on Python 2, which rounds
    halves away from zero and prints "12.0" — the evaluator reads both the same.
    """
    x1, y1, x2, y2 = (float(v) for v in (box.tolist() if hasattr(box, "tolist") else box))
    xy = f"{round(x1)} {round(y1)}" if round_xy else f"{x1:.3f} {y1:.3f}"
    return f"{xy} {round(x2 - x1 + 1)} {round(y2 - y1 + 1)} {round(float(score), 3)}"
