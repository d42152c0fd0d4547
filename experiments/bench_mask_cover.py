"""How much of each labelled face the anonymisation masks hide: ``box`` against ``ellipse``.

For every labelled face of the held-out photos (``val_faces.txt`` of the packed data, see the README's
model card), the shipped detector's boxes at ``srn anonymize``'s default threshold (0.3) are matched
one to one to the labels (greedily by IoU, at IoU >= 0.5). For each matched face, the mask that
``srn.media.anonymize.anonymize`` hides for that detection alone at ``--mask-scale`` is taken from
the library itself (``method="solid"`` on a white image: the pixels that turn black), and compared
with the label:

- cover of the labelled box: the share of its pixels that are hidden;
- cover of the labelled face's ellipse: the same for the ellipse inscribed in the labelled box, the
  shape a face has (FDDB annotates faces as ellipses);
- hidden outside the labelled box, as a multiple of its area: what is hidden that is not the face.

    python experiments/bench_mask_cover.py --data .gpu/data512 --labels val_faces.txt

The data folder is made by ``tools/pack_faces.py`` (README, "The shipped default model"); it is not
in the repository.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from srn import Detector  # noqa: E402
from srn.data.formats.wider import parse_wider_file  # noqa: E402
from srn.media.anonymize import MASKS, anonymize  # noqa: E402


def match(labels: torch.Tensor, detections: torch.Tensor, threshold: float = 0.5) -> list[tuple[int, int]]:
    """Greedy one-to-one matching by IoU: (label index, detection index) pairs with IoU >= threshold."""
    from torchvision.ops import box_iou

    if len(labels) == 0 or len(detections) == 0:
        return []
    iou = box_iou(labels, detections)
    pairs = []
    while True:
        best = iou.max()
        if best < threshold:
            return pairs
        label, detection = divmod(int(iou.argmax()), iou.shape[1])
        pairs.append((label, detection))
        iou[label, :] = -1
        iou[:, detection] = -1


def hidden_pixels(height: int, width: int, box: torch.Tensor, mask: str, mask_scale: float) -> np.ndarray:
    """The (H, W) bool mask that ``anonymize`` hides for ``box`` alone."""
    white = torch.full((3, height, width), 255, dtype=torch.uint8)
    out = anonymize(white, box[None], method="solid", mask=mask, mask_scale=mask_scale)
    return (out == 0).all(dim=0).numpy()


def label_masks(height: int, width: int, box: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The labelled box's pixels and the pixels of the ellipse inscribed in it, as (H, W) bool masks
    (a pixel belongs where its centre does)."""
    x1, y1, x2, y2 = box.tolist()
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    inside = (xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, max((x2 - x1) / 2, 1e-6), max((y2 - y1) / 2, 1e-6)
    ellipse = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1
    return inside, ellipse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO / ".gpu" / "data512")
    parser.add_argument("--labels", default="val_faces.txt")
    parser.add_argument("--score-thresh", type=float, default=0.3, help="srn anonymize's default")
    parser.add_argument("--mask-scale", type=float, default=1.3, help="srn anonymize's default")
    parser.add_argument("--min-face", type=float, default=8.0, help="skip labelled faces whose shorter side is below this (pixels)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    detector = Detector(device="cpu", score_thresh=args.score_thresh)
    records = parse_wider_file(args.data / args.labels)
    start = time.perf_counter()
    labelled = matched = 0
    cover: dict[str, dict[str, list[float]]] = {m: {"box": [], "ellipse": [], "outside": []} for m in MASKS}
    for record in records:
        boxes = record.boxes[~record.ignore]
        sides = torch.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        boxes = boxes[sides >= args.min_face]
        if len(boxes) == 0:
            continue
        faces = detector.detect(str(args.data / record.image_path))
        labelled += len(boxes)
        height, width = faces.height, faces.width
        for label, detection in match(boxes, faces.boxes):
            matched += 1
            inside, ellipse = label_masks(height, width, boxes[label])
            for mask in MASKS:
                hidden = hidden_pixels(height, width, faces.boxes[detection], mask, args.mask_scale)
                cover[mask]["box"].append(float((hidden & inside).sum() / max(1, inside.sum())))
                cover[mask]["ellipse"].append(float((hidden & ellipse).sum() / max(1, ellipse.sum())))
                cover[mask]["outside"].append(float((hidden & ~inside).sum() / max(1, inside.sum())))
    seconds = time.perf_counter() - start

    print(f"{len(records)} photos of {args.data / args.labels}: {labelled} labelled faces (shorter side >= {args.min_face:g} px), "
          f"{matched} matched at IoU >= 0.5 by the shipped model at score >= {args.score_thresh:g}; "
          f"mask_scale {args.mask_scale:g}; {seconds:.0f} s")
    print()
    print("| mask | labelled box covered, mean | median | faces with >= 99% of the box | >= 95% | "
          "face ellipse covered, mean | faces with >= 99% of the ellipse | hidden outside the box, mean (x box area) |")
    print("|---|---|---|---|---|---|---|---|")
    for mask in MASKS:
        box, ell, outside = (np.array(cover[mask][k]) for k in ("box", "ellipse", "outside"))
        print(f"| {mask} | {box.mean():.2%} | {statistics.median(box):.2%} | {(box >= 0.99).mean():.1%} | {(box >= 0.95).mean():.1%} | "
              f"{ell.mean():.2%} | {(ell >= 0.99).mean():.1%} | {outside.mean():.2f} |")


if __name__ == "__main__":
    main()
