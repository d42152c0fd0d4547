"""The paper's class-imbalance analysis (the STC motivation in the paper's introduction), without a network.

For WIDER FACE train, apply a deterministic version of the training geometry to the boxes (no
image is decoded), lay out the anchors of the 1024×1024 training input, run both steps'
matchers through :meth:`SRNCriterion.assign`, and count positives, negatives and ignored
anchors per level and step.

What a network is needed for: the paper's "after STC" ratio (about 1:404) counts the step-2
negatives that survive the step-1 filter ``1 - p1 <= 0.99``, so it depends on a trained
step-1 classifier. Without one, this module reports the ratios that depend only on the
geometry: the paper's "before STC" (RetinaNet) ratio of about 1:15441 corresponds to step 2
over all levels.

The geometry is one square crop of side min(width, height) scaled to 1024, with no zoom-out
and no smaller random crop (docs/design.md, Training recipe), so the face sizes differ from training's and the ratios
here are not expected to equal the paper's.

Run: ``srn imbalance wider_face_train_boxes_with_sizes.txt`` (every WIDER train image with its size and boxes)
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from srn.anchors import AnchorGenerator, feature_sizes_for_image
from srn.criterion import Assignment, SRNCriterion, count_samples
from srn.data.formats.wider import read_wider_boxes
from srn.matcher import POSITIVE
from srn.model.srn import NUM_LEVELS

TRAIN_SIZE = 1024
# Images with more faces than this are matched band by band (see _match_banded).
CROWD_SIZE = 48
# Anchors per band of rows in _match_banded.
BAND_ANCHORS = 4096


def _anchors_for_image(height: int, width: int, device: torch.device | str = "cpu") -> list[Tensor]:
    """The release's anchors (docs/design.md, Anchors) of a ``height`` x ``width`` input, per level."""
    return AnchorGenerator().grid_anchors(feature_sizes_for_image(height, width, NUM_LEVELS), torch.device(device))


def _anchors_near_boxes(
    anchors: Tensor, feature_size: tuple[int, int], stride: int, boxes: Tensor
) -> Tensor:
    """Indices of the anchors of one level that may overlap at least one of ``boxes``.

    A superset: every other anchor has IoU exactly 0 with every face, so it is a negative in
    both steps and nobody's best anchor. The analysis counts those without building their IoU,
    which changes no count and saves most of the work on a CPU.

    Args:
        anchors (Tensor[H*W*A, 4]): the level's anchors, cells row-major, A anchors per cell.
        feature_size: (H, W).
        boxes (Tensor[K, 4]): x1y1x2y2.

    Returns:
        idxs (Tensor[S], int64): sorted anchor indices.
    """
    height, width = feature_size
    num_per_cell = anchors.shape[0] // (height * width)
    cell = anchors[:num_per_cell]  # (A, 4): the anchors of cell (0, 0); cell (i, j) adds (j*s, i*s)
    ax1, ay1 = cell[:, 0].min(), cell[:, 1].min()
    ax2, ay2 = cell[:, 2].max(), cell[:, 3].max()
    # Column j overlaps [x1, x2] only if j*s + ax1 < x2 and j*s + ax2 > x1; floor/ceil widen the
    # range by up to a cell, which is harmless for a superset.
    j_lo = torch.floor((boxes[:, 0] - ax2) / stride).long().clamp(0, width - 1)
    j_hi = torch.ceil((boxes[:, 2] - ax1) / stride).long().clamp(0, width - 1)
    i_lo = torch.floor((boxes[:, 1] - ay2) / stride).long().clamp(0, height - 1)
    i_hi = torch.ceil((boxes[:, 3] - ay1) / stride).long().clamp(0, height - 1)
    # Enumerate each box's rectangle of cells as one flat range, then merge the rectangles.
    rect_w = j_hi - j_lo + 1  # (K,)
    rect_sizes = rect_w * (i_hi - i_lo + 1)  # (K,)
    owner = torch.repeat_interleave(torch.arange(boxes.shape[0], device=boxes.device), rect_sizes)
    starts = torch.cumsum(rect_sizes, 0) - rect_sizes  # (K,)
    local = torch.arange(owner.shape[0], device=boxes.device) - starts[owner]  # (sum sizes,)
    rows = i_lo[owner] + local // rect_w[owner]
    cols = j_lo[owner] + local % rect_w[owner]
    cells = torch.unique(rows * width + cols)  # (C,), sorted
    offsets = torch.arange(num_per_cell, device=boxes.device)
    return (cells[:, None] * num_per_cell + offsets).reshape(-1)  # (C, A) -> (C*A,)


def square_crop_boxes(
    width: int, height: int, boxes_xywh: Tensor, rng: random.Random, out_size: int = TRAIN_SIZE
) -> tuple[Tensor, int]:
    """A deterministic stand-in for the training geometry (docs/design.md, Training recipe) on boxes only.

    Crop a square of side min(width, height) at a random position, keep the faces whose centre
    lies inside it, clip them to it and scale the crop to ``out_size``. Faces of zero width or
    height (WIDER marks face-less images with a ``0 0 0 0`` box) are dropped first.

    Args:
        boxes_xywh (Tensor[M, 4]): x y w h in image pixels.

    Returns:
        boxes (Tensor[K, 4], float32): x1y1x2y2 in the out_size × out_size input.
        num_degenerate: faces dropped for zero width or height.
    """
    side = min(width, height)
    x0 = rng.randint(0, width - side)
    y0 = rng.randint(0, height - side)
    nondegenerate = (boxes_xywh[:, 2] > 0) & (boxes_xywh[:, 3] > 0)
    boxes = boxes_xywh[nondegenerate]
    boxes = torch.cat((boxes[:, :2], boxes[:, :2] + boxes[:, 2:]), dim=1)  # xywh -> x1y1x2y2, (K, 4)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # (K, 2)
    origin = torch.tensor([x0, y0], dtype=boxes.dtype)
    inside = ((centres >= origin) & (centres < origin + side)).all(dim=1)
    boxes = boxes[inside] - origin.repeat(2)
    boxes = boxes.clamp(0, side) * (out_size / side)
    return boxes.float(), int((~nondegenerate).sum())


def run_class_imbalance(
    boxes_file: str | Path,
    num_images: int | None = None,
    seed: int = 0,
    input_size: int = TRAIN_SIZE,
    stc_levels: Sequence[int] = (0, 1, 2),
    str_levels: Sequence[int] = (3, 4, 5),
    step1_thresholds: tuple[float, float] = (0.3, 0.7),
    step2_thresholds: tuple[float, float] = (0.4, 0.5),
    allow_low_quality_matches: bool = False,
    batch_size: int = 1,
    sparse: bool = True,
    device: torch.device | str = "cpu",
) -> dict:
    """Count the anchor samples of both steps over WIDER FACE train (or a seeded sample of it).

    Args:
        boxes_file: the WIDER boxes file (see :func:`read_wider_boxes`).
        num_images: analyse this many images drawn at random (``seed``); None = all.
        seed: seeds the image sample and the crop positions.
        input_size: side of the square training input.
        batch_size: images matched at once. With ``sparse``, 1 is fastest: a batch matches the
            union of its images' near anchors against the most faces of any of them.
        sparse: build IoUs only for anchors that can overlap a face of the batch; the others
            (IoU 0 with every face) are counted as negatives directly; and, without the
            low-quality rule, match crowded images band by band (:func:`_match_banded`). Same
            counts, orders of magnitude faster than ``sparse=False``, which matches every anchor
            of every image against every face.

    Returns:
        A dict of plain Python numbers and lists (JSON-serialisable); see :func:`format_report`.
    """
    arguments = dict(
        boxes_file=boxes_file, num_images=num_images, seed=seed, input_size=input_size,
        stc_levels=stc_levels, str_levels=str_levels, step1_thresholds=step1_thresholds,
        step2_thresholds=step2_thresholds, allow_low_quality_matches=allow_low_quality_matches,
        batch_size=batch_size, sparse=sparse, device=device,
    )
    if torch.device(device).type != "cpu":
        return _run_class_imbalance(**arguments)
    # The tensors here are small: extra intra-op threads only add synchronisation, which costs
    # over ten times the work when the cores are shared.
    num_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_class_imbalance(**arguments)
    finally:
        torch.set_num_threads(num_threads)


def _run_class_imbalance(
    boxes_file: str | Path,
    num_images: int | None,
    seed: int,
    input_size: int,
    stc_levels: Sequence[int],
    str_levels: Sequence[int],
    step1_thresholds: tuple[float, float],
    step2_thresholds: tuple[float, float],
    allow_low_quality_matches: bool,
    batch_size: int,
    sparse: bool,
    device: torch.device | str,
) -> dict:
    start = time.perf_counter()
    rng = random.Random(seed)
    images = read_wider_boxes(boxes_file)
    if num_images is not None and num_images < len(images):
        picked = sorted(rng.sample(range(len(images)), num_images))
        images = [images[i] for i in picked]

    criterion = SRNCriterion(
        stc_levels=stc_levels,
        str_levels=str_levels,
        step1_thresholds=step1_thresholds,
        step2_thresholds=step2_thresholds,
        allow_low_quality_matches=allow_low_quality_matches,
    )
    anchors_per_level = _anchors_for_image(input_size, input_size, device)

    feature_sizes = feature_sizes_for_image(input_size, input_size, NUM_LEVELS)
    strides = [4 * 2**lv for lv in range(NUM_LEVELS)]
    # Bands are only exact per anchor; a face's best anchor (low-quality rule) needs them all.
    banded = sparse and not allow_low_quality_matches
    counter = _SampleCounter(anchors_per_level)

    num_faces_file = num_degenerate = num_faces_kept = 0
    batch: list[Tensor] = []
    for index, (_, width, height, boxes_xywh) in enumerate(images):
        boxes, degenerate = square_crop_boxes(width, height, boxes_xywh, rng, input_size)
        boxes = boxes.to(device)
        num_faces_file += boxes_xywh.shape[0]
        num_degenerate += degenerate
        num_faces_kept += boxes.shape[0]
        if banded and boxes.shape[0] > CROWD_SIZE:
            _match_banded(criterion, anchors_per_level, feature_sizes, strides, boxes, counter)
        else:
            batch.append(boxes)
        if len(batch) == batch_size or (index == len(images) - 1 and batch):
            anchors = anchors_per_level
            if sparse:
                batch_boxes = torch.cat(batch)  # [(M_i, 4)] -> (sum M_i, 4)
                anchors = [
                    a[_anchors_near_boxes(a, size, stride, batch_boxes)]
                    for a, size, stride in zip(anchors_per_level, feature_sizes, strides)
                ]
            assignment = criterion.assign(anchors, [{"boxes": b} for b in batch])
            counter.add(assignment)
            batch = []
    totals = counter.totals()
    faces_hit_step1, faces_hit_step2 = counter.faces_hit_step1, counter.faces_hit_step2

    counts = {key: value.tolist() for key, value in totals.items()}
    anchors_per_image = [a.shape[0] for a in anchors_per_level]
    stc = [lv for lv in range(NUM_LEVELS) if lv in set(stc_levels)]
    non_stc = [lv for lv in range(NUM_LEVELS) if lv not in set(stc_levels)]

    def ratio(step: str, levels: list[int]) -> dict:
        positive = sum(counts[f"{step}_positive"][lv] for lv in levels)
        negative = sum(counts[f"{step}_negative"][lv] for lv in levels)
        ignored = sum(counts[f"{step}_ignored"][lv] for lv in levels)
        return {
            "levels": levels,
            "positive": positive,
            "negative": negative,
            "ignored": ignored,
            "negatives_per_positive": negative / positive if positive else math.inf,
        }

    return {
        "boxes_file": str(boxes_file),
        "seed": seed,
        "num_images": len(images),
        "input_size": input_size,
        "thresholds": {"step1": list(step1_thresholds), "step2": list(step2_thresholds)},
        "allow_low_quality_matches": allow_low_quality_matches,
        "num_faces_file": num_faces_file,
        "num_faces_degenerate": num_degenerate,
        "num_faces_kept": num_faces_kept,
        "faces_with_positive_step1_stc_levels": faces_hit_step1,
        "faces_with_positive_step2": faces_hit_step2,
        "stc_levels": stc,
        "anchors_per_image_per_level": anchors_per_image,
        "anchors_per_image": sum(anchors_per_image),
        "stc_anchor_share": sum(anchors_per_image[lv] for lv in stc) / sum(anchors_per_image),
        "counts_per_level": counts,
        "ratios": {
            "step1_stc_levels": ratio("step1", stc),
            "step2_all_levels_before_stc": ratio("step2", list(range(NUM_LEVELS))),
            "step2_stc_levels_before_stc": ratio("step2", stc),
            "step2_other_levels": ratio("step2", non_stc),
        },
        "step2_after_stc": None,  # needs a trained step-1 classifier
        "seconds": time.perf_counter() - start,
    }


class _SampleCounter:
    """Sums :func:`count_samples` over sub-problems that may cover only part of an image's
    anchors and faces, and counts the faces that get a positive anchor.

    Anchors of a sub-problem's images that it leaves out overlap no face (or belong to another
    sub-problem of the same image), so :meth:`totals` counts every anchor not seen in any
    sub-problem as a negative of both steps.
    """

    def __init__(self, anchors_per_level: list[Tensor]) -> None:
        self.num_anchors_per_level = torch.tensor([a.shape[0] for a in anchors_per_level])
        self.num_images = 0
        self.sums: dict[str, Tensor] = {}
        self.faces_hit_step1 = 0
        self.faces_hit_step2 = 0

    def add(self, assignment: Assignment) -> None:
        """Add the counts of an assignment of whole images (all their faces)."""
        self._add_counts(assignment)
        self.num_images += assignment.gt_valid.shape[0]
        hit1, hit2 = _faces_with_positive(assignment)
        self.faces_hit_step1 += int(hit1.sum())
        self.faces_hit_step2 += int(hit2.sum())

    def add_part(self, assignment: Assignment, face_idxs: Tensor, hits: tuple[Tensor, Tensor]) -> None:
        """Add a one-image sub-problem; OR its face hits into ``hits`` (two Tensor[M], bool)."""
        self._add_counts(assignment)
        hit1, hit2 = _faces_with_positive(assignment)
        hits[0][face_idxs] |= hit1[0, : face_idxs.shape[0]]
        hits[1][face_idxs] |= hit2[0, : face_idxs.shape[0]]

    def finish_image(self, hits: tuple[Tensor, Tensor]) -> None:
        """Close an image added in parts."""
        self.num_images += 1
        self.faces_hit_step1 += int(hits[0].sum())
        self.faces_hit_step2 += int(hits[1].sum())

    def _add_counts(self, assignment: Assignment) -> None:
        for key, value in count_samples(assignment).items():
            value = value.cpu()
            self.sums[key] = self.sums[key] + value if key in self.sums else value

    def totals(self) -> dict[str, Tensor]:
        """Per-level (L,) counts over every image added."""
        totals = dict(self.sums)
        all_anchors = self.num_anchors_per_level * self.num_images
        left_out = all_anchors - totals.get("anchors", torch.zeros_like(all_anchors))
        totals["anchors"] = all_anchors
        for key in ("step1_negative", "step2_negative"):
            totals[key] = totals.get(key, torch.zeros_like(all_anchors)) + left_out
        for key in ("step1_positive", "step1_ignored", "step2_positive", "step2_ignored"):
            totals.setdefault(key, torch.zeros_like(all_anchors))
        return totals


def _match_banded(
    criterion: SRNCriterion,
    anchors_per_level: list[Tensor],
    feature_sizes: list[tuple[int, int]],
    strides: list[int],
    boxes: Tensor,
    counter: _SampleCounter,
) -> None:
    """Match a crowded image level by level and band of rows by band, each band against only
    the faces that can overlap its anchors.

    Without the low-quality rule an anchor's label depends only on the faces it overlaps, so
    the counts are those of matching the whole image at once, at a fraction of the cost: the
    whole-image IoU matrix grows as (faces × anchors near faces), about faces², and a crowd
    of 1,000 faces would need over 10^8 IoUs.

    Args:
        boxes (Tensor[M, 4]): the image's faces, x1y1x2y2.
    """
    num_faces = boxes.shape[0]
    hits = (
        torch.zeros(num_faces, dtype=torch.bool, device=boxes.device),
        torch.zeros(num_faces, dtype=torch.bool, device=boxes.device),
    )
    for level, (anchors, (height, width), stride) in enumerate(
        zip(anchors_per_level, feature_sizes, strides)
    ):
        near_idxs = _anchors_near_boxes(anchors, (height, width), stride, boxes)
        anchors_per_row = anchors.shape[0] // height
        near_rows = near_idxs // anchors_per_row
        rows_per_band = max(1, BAND_ANCHORS // anchors_per_row)
        for row in range(0, height, rows_per_band):
            in_band = (near_rows >= row) & (near_rows < row + rows_per_band)
            band = anchors[near_idxs[in_band]]  # (R_b, 4)
            if band.shape[0] == 0:
                continue
            lo = band[:, :2].min(dim=0).values  # (2,) smallest x1, y1
            hi = band[:, 2:].max(dim=0).values  # (2,) largest x2, y2
            overlaps = ((boxes[:, :2] < hi) & (boxes[:, 2:] > lo)).all(dim=1)  # (M,)
            face_idxs = overlaps.nonzero().squeeze(1)
            if face_idxs.shape[0] == 0:
                continue
            band_per_level = [a.new_zeros((0, 4)) for a in anchors_per_level]
            band_per_level[level] = band
            assignment = criterion.assign(band_per_level, [{"boxes": boxes[face_idxs]}])
            counter.add_part(assignment, face_idxs, hits)
    counter.finish_image(hits)


def _faces_with_positive(assignment: Assignment) -> tuple[Tensor, Tensor]:
    """Which faces have at least one positive anchor: in step 1 on STC levels, in step 2 on any.

    Returns:
        hit_step1, hit_step2 (Tensor[N, M], bool), False on padding.
    """
    hits = []
    for labels, matched_idxs, anchor_mask in (
        (assignment.step1_labels, assignment.step1_matched_idxs, assignment.stc_mask),
        (assignment.step2_labels, assignment.step2_matched_idxs, None),
    ):
        positive = labels == POSITIVE  # (N, R)
        if anchor_mask is not None:
            positive = positive & anchor_mask[None]
        counts = torch.zeros(assignment.gt_valid.shape, dtype=torch.int64, device=positive.device)
        counts.scatter_add_(1, matched_idxs, positive.long())  # (N, R) -> (N, M)
        hits.append((counts > 0) & assignment.gt_valid)
    return hits[0], hits[1]


def format_report(stats: dict) -> str:
    """Render :func:`run_class_imbalance`'s result as a plain-text report."""
    counts = stats["counts_per_level"]
    lines = [
        f"Class imbalance on {stats['num_images']} images of {stats['boxes_file']} "
        f"(seed {stats['seed']}, {stats['input_size']}x{stats['input_size']} square crops, "
        f"low-quality matches {'on' if stats['allow_low_quality_matches'] else 'off'}, "
        f"{stats['seconds']:.1f} s)",
        f"faces: {stats['num_faces_file']} in file, {stats['num_faces_degenerate']} of zero size dropped, "
        f"{stats['num_faces_kept']} inside the crops; with >= 1 positive anchor: "
        f"{stats['faces_with_positive_step1_stc_levels']} in step 1 (STC levels), "
        f"{stats['faces_with_positive_step2']} in step 2 (all levels)",
        "",
        f"anchors per image: {stats['anchors_per_image']}; on STC levels {stats['stc_levels']}: "
        f"{100 * stats['stc_anchor_share']:.2f}%",
        f"{'level':>5} {'stride':>6} {'anchors/img':>11} | {'step1 pos':>9} {'step1 neg':>12} {'step1 ign':>10}"
        f" | {'step2 pos':>9} {'step2 neg':>12} {'step2 ign':>10}",
    ]
    for lv, per_image in enumerate(stats["anchors_per_image_per_level"]):
        lines.append(
            f"{lv:>5} {4 * 2**lv:>6} {per_image:>11} | {counts['step1_positive'][lv]:>9} "
            f"{counts['step1_negative'][lv]:>12} {counts['step1_ignored'][lv]:>10} | "
            f"{counts['step2_positive'][lv]:>9} {counts['step2_negative'][lv]:>12} "
            f"{counts['step2_ignored'][lv]:>10}"
        )
    lines.append("")
    labels = {
        "step1_stc_levels": "step 1, STC levels, IoU {0}/{1}",
        "step2_all_levels_before_stc": "step 2, all levels, IoU {0}/{1} (RetinaNet; paper ~1:15441)",
        "step2_stc_levels_before_stc": "step 2, STC levels only, IoU {0}/{1}",
        "step2_other_levels": "step 2, other levels, IoU {0}/{1}",
    }
    for key, text in labels.items():
        r = stats["ratios"][key]
        low, high = stats["thresholds"]["step1" if key.startswith("step1") else "step2"]
        lines.append(
            f"{text.format(low, high):<62} positive:negative = 1:{r['negatives_per_positive']:.0f} "
            f"({r['positive']} : {r['negative']}, {r['ignored']} ignored)"
        )
    lines.append(
        "step 2 after STC (paper ~1:404): not computed, it needs a trained step-1 classifier "
        "(negatives with 1 - p1 > 0.99 are dropped)"
    )
    return "\n".join(lines)
