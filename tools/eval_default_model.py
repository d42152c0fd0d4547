"""Score a model on the held-out split that tools/pack_faces.py writes.

- WIDER: the 30 held-out val images, scored with the official WIDER FACE protocol against the
  official ground truth in **subset mode** (only these images; not the official number). Boxes are
  mapped back from the packed image to the original WIDER coordinates.
- Other photos: the 452 held-out photos of ``faces/``, VOC AP at IoU 0.5 (face-eval protocol, no
  ignore flags) against their labels in the packed frame. These sets are partially labelled, so
  unlabelled faces count as false positives and the AP is a lower bound.
- Operating points on those photos: precision and recall at IoU 0.5 for score thresholds 0.1 to 0.9,
  from which the CLI's default thresholds are chosen, and the median score of the detections that
  match labelled faces of 40 px or more (what a clear face scores).
- Fit check: recall at IoU 0.5 on a fixed sample of *training* photos (every 25th photo and every
  6th WIDER image of the training lists), at thresholds 0.3 and 0.5, all faces and faces under
  20 px, so that under-fitting is visible next to the held-out numbers.

    python tools/eval_default_model.py --weights srn/assets/srn_mobilenet_v2.pt --data .gpu/data \
        --shared ../shared --json eval_default.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.ops import box_iou

from srn.data.formats import parse_wider_file
from srn.evaluation import facebox, widerface
from srn.evaluation.run import detect_images, eval_detector


THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def match_counts(detections: list[tuple[torch.Tensor, torch.Tensor]], labels: list[torch.Tensor], thresh: float,
                 min_side: float = 0.0, max_side: float = float("inf")) -> tuple[int, int, int]:
    """(true positives, detections, labelled faces) at score ``thresh`` and IoU 0.5, greedy by score.

    Only labelled faces whose shorter side lies in [min_side, max_side) count as faces to find; a
    detection that matches a face outside that range is neither a hit nor a false positive.
    """
    hits = dets = faces = 0
    for (boxes, scores), gt in zip(detections, labels):
        keep = scores >= thresh
        boxes = boxes[keep]
        sides = torch.minimum(gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1])
        counted = (sides >= min_side) & (sides < max_side)
        faces += int(counted.sum())
        taken = torch.zeros(len(gt), dtype=torch.bool)
        outside = 0
        if len(boxes) and len(gt):
            iou = box_iou(boxes.double(), gt.double())  # (D, G), detections best first
            for row in iou:
                row = torch.where(taken, -1.0, row)
                best = int(row.argmax())
                if row[best] >= 0.5:
                    taken[best] = True
                    outside += int(not counted[best])
        hits += int((taken & counted).sum())
        dets += len(boxes) - outside
    return hits, dets, faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None, help="default: the shipped model")
    parser.add_argument("--data", default=".gpu/data")
    parser.add_argument("--shared", default="../shared")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json")
    args = parser.parse_args()
    data, shared = Path(args.data), Path(args.shared) / "data"
    detector = eval_detector(args.weights, args.device, batch_size=4, max_size=2100)
    report: dict = {}

    # WIDER held-out images, back in original coordinates.
    original = {Path(r.image_path).name: r for r in parse_wider_file(shared / "widerface/val_subset/labels_original.txt")}
    held_out = parse_wider_file(data / "val_wider.txt")
    paths = [data / r.image_path for r in held_out]
    results, failures = detect_images(detector, paths)
    predictions = {}
    for path, (boxes, scores) in results.items():
        record = original[path.name]
        height, width = record.image_size
        with Image.open(path) as im:
            packed_width = im.width
        scale = width / packed_width
        event, name = record.image_path.split("/")
        xyxy = boxes.double().numpy() * scale
        xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
        predictions[(event, Path(name).stem)] = np.concatenate([xywh, scores.double().numpy()[:, None]], axis=1)
    gt = widerface.load_wider_gt(shared / "widerface/eval_gt")
    wider = widerface.evaluate(predictions, gt, subset=True)
    print(widerface.format_table(wider))
    report["wider_heldout_subset"] = wider.to_dict(curves=False)

    # Other photos: VOC AP at IoU 0.5.
    faces = parse_wider_file(data / "val_faces.txt")
    annotations = {
        facebox.image_key(r.image_path): facebox.FaceboxImage(r.image_path, (0, 0), r.boxes.double().numpy(), np.zeros(len(r.boxes), bool))
        for r in faces
    }
    by_key = {data / r.image_path: facebox.image_key(r.image_path) for r in faces}
    results, more = detect_images(detector, list(by_key))
    failures += more
    detections = {by_key[p]: (b.numpy(), s.numpy()) for p, (b, s) in results.items()}
    photos = facebox.evaluate_facebox(detections, annotations)
    print(f"held-out photos ({photos.num_images} images, {photos.num_faces} faces): AP@0.5 {photos.ap:.4f}")
    report["photos_heldout_ap50"] = photos.to_dict(curves=False)

    # Operating points on the held-out photos.
    dets = [results[data / r.image_path] for r in faces if data / r.image_path in results]
    labels = [r.boxes.double() for r in faces if data / r.image_path in results]
    curve = []
    for thresh in THRESHOLDS:
        hits, found, total = match_counts(dets, labels, thresh)
        curve.append({"thresh": thresh, "precision": hits / max(found, 1), "recall": hits / max(total, 1)})
        print(f"  thresh {thresh:.1f}: precision {curve[-1]['precision']:.3f} recall {curve[-1]['recall']:.3f}")
    report["photos_heldout_operating_points"] = curve
    clear_scores = []
    for (boxes, scores), gt in zip(dets, labels):
        large = gt[torch.minimum(gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]) >= 40]
        if len(boxes) and len(large):
            iou = box_iou(large, boxes.double())  # (G, D): the best-scoring match of each large face
            matched = iou >= 0.5
            if matched.any():
                best = torch.where(matched, scores.double()[None, :], -1.0).amax(dim=1)
                clear_scores.extend(best[best >= 0].tolist())
    median = float(np.median(clear_scores)) if clear_scores else float("nan")
    print(f"  labelled faces of 40 px or more: {len(clear_scores)} found, median score {median:.3f}")
    report["photos_heldout_large_face_median_score"] = median

    # Fit check on a fixed sample of training photos.
    train = parse_wider_file(data / "train_faces.txt")[::25] + parse_wider_file(data / "train_wider.txt")[::6]
    fit_results, more = detect_images(detector, [data / r.image_path for r in train])
    failures += more
    fit_dets = [fit_results[data / r.image_path] for r in train if data / r.image_path in fit_results]
    fit_labels = [r.boxes.double() for r in train if data / r.image_path in fit_results]
    fit = {}
    for thresh in (0.3, 0.5):
        for name, low, high in (("all", 0.0, float("inf")), ("under_20px", 0.0, 20.0)):
            hits, _, total = match_counts(fit_dets, fit_labels, thresh, low, high)
            fit[f"recall_{name}_at_{thresh}"] = hits / max(total, 1)
            fit[f"faces_{name}"] = total
            print(f"fit check ({len(fit_dets)} training images): recall at {thresh} ({name}) {hits}/{total} = {hits / max(total, 1):.3f}")
    report["fit_check_train_recall"] = fit
    report["failures"] = failures
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
