"""Why a model misses small faces: each labelled face of the held-out protocol (``tools/heldout.py``)
sorted by what the model gives it, so that the next lever is chosen on the cause.

For each face under ``--max-face`` px (shorter side of the label), the model's boxes at the protocol's
score threshold (0.001) put it in one class:

- ``found``: a box at IoU >= 0.5 scores at least 0.3 (``srn detect``'s threshold);
- ``weak``: the best such box scores 0.1-0.3 (found by ``srn anonymize`` only);
- ``low score``: a well-placed box exists (IoU >= 0.5) but scores under 0.1: a classification miss;
- ``misplaced``: no box at IoU 0.5, one at 0.3-0.5: a localisation miss (its offset is reported:
  the centre's shift and the log size ratio of the best box, in face sides, medians);
- ``nothing``: no box at IoU 0.3.

    python experiments/small_face_misses.py --weights srn/assets/srn_mobilenet_v2.int8.onnx --max-face 16
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torchvision.ops import box_iou

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from heldout import HeldOut, detect_all  # noqa: E402

from srn.errors import SRNError  # noqa: E402

CLASSES = ("found", "weak", "low score", "misplaced", "nothing")


def classify(labels: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """The class of each label, and the best-IoU box's offset ``(dx, dy, log size ratio)`` in face sides."""
    if len(boxes) == 0:
        return ["nothing"] * len(labels), torch.zeros(len(labels), 3, dtype=torch.float64)
    iou = box_iou(labels, boxes)
    best_score = torch.where(iou >= 0.5, scores.unsqueeze(0), torch.full_like(iou, -1.0)).amax(dim=1)
    best_iou, nearest = iou.max(dim=1)
    classes = []
    for s, i in zip(best_score.tolist(), best_iou.tolist()):
        if s >= 0.3:
            classes.append("found")
        elif s >= 0.1:
            classes.append("weak")
        elif s >= 0:
            classes.append("low score")
        elif i >= 0.3:
            classes.append("misplaced")
        else:
            classes.append("nothing")
    box = boxes[nearest]
    side = (labels[:, 2:] - labels[:, :2]).amin(dim=1)
    centre = (box[:, :2] + box[:, 2:]) / 2 - (labels[:, :2] + labels[:, 2:]) / 2
    ratio = ((box[:, 2:] - box[:, :2]).prod(dim=1) / (labels[:, 2:] - labels[:, :2]).prod(dim=1)).clamp_min(1e-9)
    return classes, torch.stack([centre[:, 0] / side, centre[:, 1] / side, ratio.log() / 2], dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", nargs="+", required=True)
    parser.add_argument("--data", type=Path, default=Path(".gpu/data512"))
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--max-face", type=float, default=16.0, help="faces whose label's shorter side is under this")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not args.max_face > 0:
        parser.error(f"--max-face must be a positive face size in pixels, not {args.max_face:g}")
    held_out = HeldOut(args.data, args.shared)
    results = {}
    for weights in args.weights:
        try:
            per_source = held_out.split(detect_all(weights, held_out.paths, args.threads))
        except SRNError as exc:
            parser.error(str(exc))
        results[weights] = {}
        for source in held_out.order:
            classes, offsets = [], []
            for record, (boxes, scores) in zip(held_out.records[source], per_source[source]):
                labels = record.boxes.double().reshape(-1, 4)
                small = (labels[:, 2:] - labels[:, :2]).amin(dim=1) < args.max_face
                if small.any():
                    c, o = classify(labels[small], torch.as_tensor(boxes).double().reshape(-1, 4), torch.as_tensor(scores).double())
                    classes += c
                    offsets.append(o)
            if not classes:
                continue
            offsets = torch.cat(offsets)
            misplaced = offsets[[c == "misplaced" for c in classes]]
            row = {c: classes.count(c) for c in CLASSES} | {"faces": len(classes)}
            if len(misplaced):
                row["misplaced_offset_median"] = misplaced.median(dim=0).values.tolist()
            results[weights][source] = row
            offset = " ".join(f"{v:+.2f}" for v in row.get("misplaced_offset_median", []))
            print(f"{Path(weights).name} {source} (< {args.max_face:g} px, {len(classes)} faces): "
                  + ", ".join(f"{c} {row[c]}" for c in CLASSES) + (f"; misplaced dx dy log-size {offset}" if offset else ""))
    if args.json:
        args.json.write_text(json.dumps({"max_face": args.max_face, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
