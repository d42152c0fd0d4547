"""``srn eval``: WIDER FACE, FDDB, AFW and PASCAL Face, each with its own protocol.

The evaluators in :mod:`srn.evaluation` only compute; this module runs the detector, writes the
predictions, the report and the plot, and prints the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from srn.atomic import atomic_write_text
from srn.cli.common import UserError, add_detector_args


def register(sub: argparse._SubParsersAction) -> None:
    evaluate = sub.add_parser(
        "eval",
        help="evaluate on WIDER FACE, FDDB, AFW or PASCAL Face with their own protocols",
        description="Detect, then evaluate with the benchmark's own protocol; or evaluate existing predictions.\n\n"
        "  srn eval wider --images WIDER_val/images --gt-dir eval_tools/ground_truth --weights W [--tta]\n"
        "  srn eval wider --pred-dir preds/ --gt-dir eval_tools/ground_truth [--subset]\n"
        "  srn eval fddb --images originalPics --annotations FDDB-folds/FDDB-fold-*-ellipseList.txt --weights W\n"
        "  srn eval afw --images afw/ --annotations new_annotations_AFW.mat --weights W",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluate.add_argument("benchmark", choices=("wider", "fddb", "afw", "pascal"))
    evaluate.add_argument("--images", help="the benchmark's image folder (detection is run)")
    evaluate.add_argument("--pred-dir", help="wider: evaluate this submission folder instead of detecting")
    evaluate.add_argument("--detections", nargs="+", help="fddb: detection files; afw/pascal: a detections.json, instead of detecting")
    evaluate.add_argument("--gt-dir", help="wider: folder of the official .mat ground truth")
    evaluate.add_argument("--annotations", nargs="+", help="fddb ellipse lists, or the afw/pascal .mat file")
    evaluate.add_argument("--subset", action="store_true", help="wider: only images with predictions (NOT the official number)")
    evaluate.add_argument("--tta", action="store_true", help="the release's multi-scale + flip + box-voting test")
    evaluate.add_argument("--tta-max-size", type=int, default=2100, help="TTA max_size (1400 fits a 12 GB GPU)")
    evaluate.add_argument("--keep-singletons", action="store_true", help="TTA: keep single-box clusters (the release drops them)")
    evaluate.add_argument("--height-scale", type=float, default=1.0, help="fddb: stretch rectangles' height toward the ellipse (e.g. 1.2)")
    evaluate.add_argument("--out", help="folder for predictions, report.json and the plot (default eval_BENCHMARK)")
    evaluate.add_argument("--json", help="also write the summary (no curves) to this file")
    add_detector_args(evaluate)
    evaluate.set_defaults(func=run)


def _eval_detections(args: argparse.Namespace, paths: list[Path]):
    from srn.evaluation.run import detect_images, eval_detector

    missing = [p for p in paths if not p.is_file()]
    present = [p for p in paths if p.is_file()]
    if not present:
        raise UserError(f"{args.images}: none of the {len(paths)} annotated images is there")
    detector = eval_detector(args.weights, args.device, args.batch_size, args.max_size)
    results, failures = detect_images(detector, present, tta=args.tta, tta_max_size=args.tta_max_size,
                                      keep_singletons=args.keep_singletons)
    for line in failures:
        print(f"srn eval: {line}", file=sys.stderr)
    if missing:
        print(f"srn eval: {len(missing)} annotated images are not in {args.images} (counted as no detections), "
              f"e.g. {missing[0]}", file=sys.stderr)
    return results


def _report(args: argparse.Namespace, table: str, result, plot) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.json", result.to_json(curves=True) + "\n")
    plot(result, out / f"{args.benchmark}.png")
    print(table)
    print(f"report: {out / 'report.json'}, plot: {out / (args.benchmark + '.png')}")
    if args.json:
        atomic_write_text(Path(args.json), result.to_json(curves=False) + "\n")


def run(args: argparse.Namespace) -> int:
    args.out = args.out or f"eval_{args.benchmark}"
    if args.benchmark == "wider":
        return _eval_wider(args)
    if args.benchmark == "fddb":
        return _eval_fddb(args)
    return _eval_facebox(args)


def _eval_wider(args: argparse.Namespace) -> int:
    from srn.evaluation import widerface

    if not args.gt_dir:
        raise UserError("wider needs --gt-dir (the folder of wider_face_val.mat and wider_{easy,medium,hard}_val.mat)")
    gt = widerface.load_wider_gt(args.gt_dir)
    if args.pred_dir:
        pred_dir = Path(args.pred_dir)
        if not pred_dir.is_dir():
            raise UserError(f"{pred_dir}: no such folder")
    else:
        if not args.images:
            raise UserError("wider needs --images DIR (to detect) or --pred-dir DIR (to evaluate)")
        root = Path(args.images)
        paths = [root / event / f"{name}.jpg" for event, name in gt.image_keys]
        results = _eval_detections(args, paths)
        pred_dir = Path(args.out) / "predictions"
        records = {f"{path.parent.name}/{path.stem}": (b.numpy(), s.numpy()) for path, (b, s) in results.items()}
        widerface.write_predictions(pred_dir, records)
        print(f"predictions: {pred_dir}")
    predictions = widerface.read_predictions(pred_dir)
    result = widerface.evaluate(predictions, gt, subset=args.subset)
    if result.num_missing:
        print(f"srn eval: {result.num_missing} of {result.num_images} images have no prediction file "
              "(counted as no detections, as the official code counts them)", file=sys.stderr)
    _report(args, widerface.format_table(result), result, widerface.plot_pr)
    return 0


def _eval_fddb(args: argparse.Namespace) -> int:
    from srn.evaluation import fddb

    if not args.annotations:
        raise UserError("fddb needs --annotations (FDDB-fold-XX-ellipseList.txt files or the corrected list)")
    annotations = fddb.read_fddb_ellipses(args.annotations)
    if args.detections:
        detections = fddb.read_fddb_detections(args.detections)
    else:
        if not args.images:
            raise UserError("fddb needs --images DIR (to detect) or --detections FILE (to evaluate)")
        root = Path(args.images)
        paths = {name: root / f"{name}.jpg" for name in annotations}
        results = _eval_detections(args, list(paths.values()))
        by_path = {path: name for name, path in paths.items()}
        records = {by_path[p]: (b.numpy(), s.numpy()) for p, (b, s) in results.items()}
        det_file = Path(args.out) / "detections.txt"
        fddb.write_fddb_detections(det_file, records)
        detections = fddb.read_fddb_detections(det_file)
    result = fddb.evaluate_fddb(detections, annotations, height_scale=args.height_scale)
    table = (f"FDDB ({result.num_images} images, {result.num_faces} faces): TPR at 1000 FP "
             f"{result.tpr_at(1000):.4f} discrete, {result.tpr_at(1000, continuous=True):.4f} continuous")
    _report(args, table, result, fddb.plot_roc)
    return 0


def _eval_facebox(args: argparse.Namespace) -> int:
    import json as json_module

    import numpy as np

    from srn.evaluation import facebox

    if not args.annotations or len(args.annotations) != 1:
        raise UserError(f"{args.benchmark} needs one --annotations .mat file (the face-eval re-annotations)")
    annotations = facebox.load_facebox_annotations(args.annotations[0])
    if args.detections:
        raw = json_module.loads(Path(args.detections[0]).read_text())
        detections = {facebox.image_key(k): (np.asarray(v["boxes"]).reshape(-1, 4), np.asarray(v["scores"])) for k, v in raw.items()}
    else:
        if not args.images:
            raise UserError(f"{args.benchmark} needs --images DIR (to detect) or --detections FILE (to evaluate)")
        root = Path(args.images)
        paths = {key: root / image.name for key, image in annotations.items()}
        results = _eval_detections(args, list(paths.values()))
        by_path = {path: key for key, path in paths.items()}
        detections = {by_path[p]: (b.numpy(), s.numpy()) for p, (b, s) in results.items()}
        dump = {k: {"boxes": b.tolist(), "scores": s.tolist()} for k, (b, s) in detections.items()}
        atomic_write_text(Path(args.out) / "detections.json", json_module.dumps(dump) + "\n")
    result = facebox.evaluate_facebox(detections, annotations)
    table = f"{args.benchmark.upper()} ({result.num_images} images, {result.num_faces} faces): AP {result.ap:.4f}"

    _report(args, table, result, facebox.plot_pr)
    return 0
