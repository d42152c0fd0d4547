"""Score a model on the held-out split that tools/pack_faces.py writes.

- WIDER: the 30 held-out val images, scored with the official WIDER FACE protocol against the
  official ground truth in **subset mode** (only these images; not the official number). Boxes are
  mapped back from the packed image to the original WIDER coordinates.
- Other photos: the 452 held-out photos of ``faces/``, VOC AP at IoU 0.5 (face-eval protocol, no
  ignore flags) against their labels in the packed frame. These sets are partially labelled, so
  unlabelled faces count as false positives and the AP is a lower bound.

    python tools/eval_default_model.py --weights srn/assets/srn_mobilenet_v2.pt --data .gpu/data \
        --shared ../shared --json eval_default.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from srn.data.formats import parse_wider_file
from srn.evaluation import facebox, widerface
from srn.evaluation.run import detect_images, eval_detector


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
    report["failures"] = failures
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
