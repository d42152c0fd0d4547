"""``srn calibrate``: refit a checkpoint's score calibration on labelled photos, and write a copy."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from srn.cli.common import HelpFormatter, default_workers, int_at_least

DESCRIPTION = """\
Fit the score calibration (Platt scaling: a score is sigmoid(a * z + b), z the network's logit) of a
checkpoint on labelled photos it was not trained on, and write a copy that carries it. Boxes, their
order and AP do not change; a score then says again how often a box of that score is a face, so that
the thresholds of srn detect (0.3) and srn anonymize (0.1) keep their meaning after fine-tuning.

  srn calibrate --weights runs/mine/model.pt --annotations held_out/labels.txt --out mine_calibrated.pt
  srn calibrate --weights runs/mine/model.pt --images photos/ --annotations held_out.json --out calibrated.pt --json fit.json"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("calibrate", help="refit a checkpoint's score calibration on labelled photos",
                            description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("--weights", default=None, help="an srn checkpoint (.pt) (default: the shipped model)")
    parser.add_argument("--annotations", required=True, help="labelled photos the model was not trained on: a WIDER-style list or a COCO .json")
    parser.add_argument("--images", help="the folder the annotations' image paths are relative to (default: the annotation file's folder)")
    parser.add_argument("--format", choices=("auto", "wider", "coco", "fddb"), default="auto",
                        help="the annotation file's format (default: told from the file: .json is coco)")
    parser.add_argument("--out", required=True, help="the calibrated checkpoint to write")
    parser.add_argument("--json", help="also write the fit (scale, shift, detections, calibration error before and after) here")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--max-size", type=int_at_least(32), default=2100, help="images whose longer side exceeds this are shrunk to it")
    parser.add_argument("--batch-size", type=int_at_least(1), default=8, help="images per forward pass")
    parser.add_argument("--workers", type=int_at_least(0), default=default_workers(), help="processes that decode images")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from srn.atomic import atomic_write_text
    from srn.config import DatasetSpec
    from srn.data.build import read_records
    from srn.evaluation.calibration import calibrate_checkpoint
    from srn.inference.detector import DEFAULT_WEIGHTS
    from srn.paths import check_input_file, check_output_file

    weights = check_input_file(args.weights or DEFAULT_WEIGHTS, what="weights file")
    inputs = [weights, args.annotations]
    check_output_file(args.out, inputs=inputs)
    if args.json:
        check_output_file(args.json, inputs=inputs)
    spec = DatasetSpec(format=args.format, annotations=args.annotations, images=args.images)
    records, root = read_records(spec, key="annotations")
    fit = calibrate_checkpoint(weights, records, root, args.out, device=args.device, max_size=args.max_size,
                               batch_size=args.batch_size, workers=args.workers)
    print(f"{fit['images']} photos, {fit['detections']} detections scored 0.05 or more by the network, {fit['true']} of them labelled faces")
    print(f"score_scale {fit['previous_score_scale']:g} -> {fit['score_scale']:g}, score_shift {fit['previous_score_shift']:g} -> "
          f"{fit['score_shift']:g}; expected calibration error on these photos {fit['ece_before']:.3f} -> {fit['ece_after']:.3f}")
    print(f"wrote {args.out}")
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(fit, indent=1) + "\n")
    return 0
