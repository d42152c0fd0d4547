"""How many confident detections of a model on the training photos have no label: the faces that the
partially-labelled sources would teach as background (issue: unlabelled faces as ignore regions).

For every ``--every``-th image of each training list, the detections scoring at least ``--score``
whose IoU with every labelled face (ignored ones included) is below ``--max-iou`` are counted.

    python tools/count_unlabelled.py --data .gpu/data512 --score 0.6 --every 10
"""

from __future__ import annotations

import argparse
from pathlib import Path

from torchvision.ops import box_iou

from srn import Detector
from srn.data.formats import parse_wider_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None, help="default: the shipped model")
    parser.add_argument("--data", type=Path, default=Path(".gpu/data512"))
    parser.add_argument("--lists", nargs="+", default=["train_faces.txt", "train_wider.txt"])
    parser.add_argument("--score", type=float, default=0.6)
    parser.add_argument("--max-iou", type=float, default=0.3)
    parser.add_argument("--every", type=int, default=10)
    args = parser.parse_args()
    detector = Detector(args.weights, device="cpu", threads=1, score_thresh=args.score)
    for name in args.lists:
        records = parse_wider_file(args.data / name)[:: args.every]
        found = unlabelled = labels = 0
        for record in records:
            faces = detector.detect(args.data / record.image_path)
            found += len(faces)
            labels += len(record.boxes)
            if len(faces) and len(record.boxes):
                unlabelled += int((box_iou(faces.boxes, record.boxes.float()).amax(dim=1) < args.max_iou).sum())
            else:
                unlabelled += len(faces)
        share = unlabelled / max(found, 1)
        print(f"{name}: {len(records)} images, {labels} labelled faces, {found} detections >= {args.score}, "
              f"{unlabelled} ({share:.1%}) with no label at IoU >= {args.max_iou}")


if __name__ == "__main__":
    main()
