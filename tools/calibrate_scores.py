"""Fit the score calibration of a checkpoint on the held-out photos that tools/pack_faces.py writes,
and write a copy of the checkpoint that carries it (:mod:`srn.evaluation.calibration`).

A detection's score becomes ``sigmoid(a * z + b)``, ``z`` the network's final logit (Platt scaling;
``postprocess.score_scale`` = a, ``postprocess.score_shift`` = b), with a and b the maximum-likelihood
fit of "this detection is a labelled face" (greedy matching at IoU 0.5, best score first) over every
detection that the network itself scores 0.05 or more on the 452 held-out photos. The map is monotone, so boxes, their order
and every AP stay as they are; only what a score *says* changes.

These photos are partially labelled: a detection of an unlabelled face counts as a miss, so the
fitted scores understate the chance that a box is a face (a lower bound, as the photo AP is).

The report: the two-fold check (fit on the even photos, reliability on the odd ones, and the other
way round: mean score against the share of true faces, per score bin, and the expected calibration
error), then the fit on all photos that the written checkpoint carries, and the median calibrated
score of labelled faces of 40 px or more.

    python tools/calibrate_scores.py --weights runs/x/model.pt --data .gpu/data512 --out calibrated.pt
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

from srn.data.formats import parse_wider_file
from srn.evaluation.calibration import fit_platt, reliability, true_positives
from srn.evaluation.run import detect_images, eval_detector
from srn.weights import load_model, save_checkpoint

MIN_SCORE = 0.05


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="a PyTorch checkpoint (.pt)")
    parser.add_argument("--data", default=".gpu/data512")
    parser.add_argument("--out", required=True, help="the calibrated checkpoint to write")
    parser.add_argument("--json")
    args = parser.parse_args()
    data = Path(args.data)
    model, config = load_model(args.weights)
    post = config.postprocess
    detector = eval_detector(args.weights, "cpu", batch_size=1, max_size=2100)
    faces = parse_wider_file(data / "val_faces.txt")
    results, failures = detect_images(detector, [data / r.image_path for r in faces])
    logits, hits, image_ids, large = [], [], [], []
    for index, record in enumerate(faces):
        if data / record.image_path not in results:
            continue
        boxes, scores = results[data / record.image_path]
        # Back to the network's own logit, whatever calibration the checkpoint already has.
        raw = (torch.logit(scores.double()) - post.score_shift) / post.score_scale
        keep = torch.sigmoid(raw) >= MIN_SCORE
        boxes, scores, raw = boxes[keep], scores[keep].double(), raw[keep]
        found = true_positives(boxes, scores, record.boxes)
        logits.append(raw.numpy())
        hits.append(found)
        image_ids.append(np.full(len(scores), index))
        # The detection that takes each labelled face of 40 px or more (for the clear-face score).
        sides = torch.minimum(record.boxes[:, 2] - record.boxes[:, 0], record.boxes[:, 3] - record.boxes[:, 1])
        flags = np.zeros(len(scores), dtype=bool)
        if len(boxes) and bool((sides >= 40).any()):
            iou = box_iou(boxes.double(), record.boxes[sides >= 40].double())
            flags = found & (iou.amax(dim=1) >= 0.5).numpy()
        large.append(flags)
    z, y, ids, clear = (np.concatenate(v) for v in (logits, hits, image_ids, large))
    report: dict = {"weights": args.weights, "detections": int(len(z)), "true": int(y.sum()), "failures": failures}

    folds = []
    for fit_part in (0, 1):
        train, test = ids % 2 == fit_part, ids % 2 != fit_part
        a, b = fit_platt(z[train], y[train])
        before, ece_before = reliability(sigmoid(z[test]), y[test])
        after, ece_after = reliability(sigmoid(a * z[test] + b), y[test])
        folds.append({"fit_on": "even" if fit_part == 0 else "odd", "a": a, "b": b, "ece_before": ece_before,
                      "ece_after": ece_after, "reliability_before": before, "reliability_after": after})
        print(f"fit on the {folds[-1]['fit_on']} photos: a {a:.3f} b {b:.3f}; on the others ECE {ece_before:.3f} -> {ece_after:.3f}")
        for row_before, row_after in zip(before, after):
            print(f"   raw bin {row_before['bin'][0]:.2f}-{row_before['bin'][1]:.2f}: {row_before['detections']:5d} detections, "
                  f"mean score {row_before['mean_score']:.3f}, true {row_before['true_share']:.3f}")
        for row in after:
            print(f"   calibrated bin {row['bin'][0]:.2f}-{row['bin'][1]:.2f}: {row['detections']:5d} detections, "
                  f"mean score {row['mean_score']:.3f}, true {row['true_share']:.3f}")
    report["two_fold"] = folds

    a, b = fit_platt(z, y)
    clear_raw, clear_calibrated = float(np.median(sigmoid(z[clear]))), float(np.median(sigmoid(a * z[clear] + b)))
    print(f"all photos: a {a:.4f} b {b:.4f}; labelled faces of 40 px or more ({int(clear.sum())}): "
          f"median score {clear_raw:.3f} -> {clear_calibrated:.3f}")
    report.update({"a": a, "b": b, "large_faces": int(clear.sum()), "large_face_median_raw": clear_raw,
                   "large_face_median_calibrated": clear_calibrated})
    calibrated = dataclasses.replace(config, postprocess=dataclasses.replace(post, score_scale=round(a, 4), score_shift=round(b, 4)))
    save_checkpoint(model, calibrated, args.out)
    print(f"wrote {args.out} (postprocess.score_scale {calibrated.postprocess.score_scale}, score_shift {calibrated.postprocess.score_shift})")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
