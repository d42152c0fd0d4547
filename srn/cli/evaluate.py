"""``srn eval``: WIDER FACE, FDDB, AFW and PASCAL Face, each with its own protocol.

The evaluators in :mod:`srn.evaluation` only compute; this module runs the detector, writes the
predictions, the report and the plot, and prints the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from srn.atomic import atomic_write_text
from srn.cli.common import HelpFormatter, UserError, add_detector_args, build_detector, default_workers, float_in, int_at_least
from srn.errors import PredictionFormatError
from srn.paths import check_input_dir, check_output_dir, check_output_file


def register(sub: argparse._SubParsersAction) -> None:
    evaluate = sub.add_parser(
        "eval",
        help="evaluate on WIDER FACE, FDDB, AFW or PASCAL Face with their own protocols",
        description="Detect, then evaluate with the benchmark's own protocol; or evaluate existing predictions.\n\n"
        "  srn eval wider --images WIDER_val/images --gt-dir eval_tools/ground_truth --weights W [--tta]\n"
        "  srn eval wider --pred-dir preds/ --gt-dir eval_tools/ground_truth [--subset]\n"
        "  srn eval fddb --images originalPics --annotations FDDB-folds/FDDB-fold-*-ellipseList.txt --weights W\n"
        "  srn eval afw --images afw/ --annotations new_annotations_AFW.mat --weights W",
        formatter_class=HelpFormatter,
    )
    evaluate.add_argument("benchmark", choices=("wider", "fddb", "afw", "pascal"))
    evaluate.add_argument("--images", help="the benchmark's image folder (detection is run)")
    evaluate.add_argument("--pred-dir", help="wider: evaluate this submission folder instead of detecting")
    evaluate.add_argument("--detections", nargs="+", help="fddb: detection files; afw/pascal: a detections.json, instead of detecting")
    evaluate.add_argument("--gt-dir", help="wider: folder of the official .mat ground truth")
    evaluate.add_argument("--annotations", nargs="+", help="fddb ellipse lists, or the afw/pascal .mat file")
    evaluate.add_argument("--subset", action="store_true", help="wider: only images with predictions (NOT the official number)")
    evaluate.add_argument("--tta", action="store_true", help="the release's multi-scale + flip + box-voting test")
    evaluate.add_argument("--tta-max-size", type=int_at_least(32), default=2100, help="TTA max_size, at least 32 (1400 fits a 12 GB GPU)")
    evaluate.add_argument("--keep-singletons", action="store_true", help="TTA: keep single-box clusters (the release drops them)")
    evaluate.add_argument("--height-scale", type=float_in(0.0, 10.0, low_open=True), default=1.0,
                          help="fddb: stretch rectangles' height toward the ellipse, in (0, 10] (e.g. 1.2)")
    evaluate.add_argument("--out", help="folder for predictions, report.json and the plot (default eval_BENCHMARK)")
    evaluate.add_argument("--json", help="also write the summary (no curves) to this file")
    evaluate.add_argument("--workers", type=int_at_least(0), default=default_workers(),
                          help=f"processes that decode images; 0 decodes in the main process (default: {default_workers()} here: "
                               "0 on 1 or 2 cores, 1 on 3 to 7, then one per 4 cores up to 4)")
    add_detector_args(evaluate)
    evaluate.set_defaults(func=run)


def _eval_detections(args: argparse.Namespace, paths: list[Path]):
    from srn.evaluation.run import detect_images

    missing = [p for p in paths if not p.is_file()]
    present = [p for p in paths if p.is_file()]
    if not present:
        raise UserError(f"{args.images}: none of the {len(paths)} annotated images is there")
    # Every detection the release keeps (no final score threshold): the benchmarks' protocol.
    detector = build_detector(args, score_thresh=0.0)
    results, failures = detect_images(detector, present, tta=args.tta, tta_max_size=args.tta_max_size,
                                      keep_singletons=args.keep_singletons, workers=args.workers)
    for line in failures:
        print(f"srn eval: {line}", file=sys.stderr)
    if missing:
        _warn(f"{_count(len(missing), 'annotated image')} not in {args.images} (counted as no detections), "
              f"e.g. {missing[0]}")
    return results


def _count(n: int, noun: str, plural: str | None = None) -> str:
    """``"1 image is"`` / ``"3 images are"``: a count, its noun and the verb that agrees."""
    return f"{n} {noun} is" if n == 1 else f"{n} {plural or noun + 's'} are"


def _warn(message: str) -> None:
    print(f"srn eval: warning: {message}", file=sys.stderr)


def _check_outputs(args: argparse.Namespace, inputs: list[Path | str], written: tuple[str, ...] = ()) -> Path:
    """Check (and create) the output folder, the files the run will write in it, and ``--json``,
    before any detection runs. ``written``: the names of the files or folders written under ``--out``
    besides the report and the plot."""
    out = check_output_dir(args.out, inputs=inputs)
    for name in ("report.json", f"{args.benchmark}.png", *written):
        target = out / name
        if target.suffix:
            check_output_file(target, inputs=inputs)
        else:
            check_output_dir(target, inputs=inputs)
    if args.json:
        check_output_file(args.json, inputs=inputs)
    return out


def _report(args: argparse.Namespace, table: str, result, plot) -> None:
    out = Path(args.out)
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
    from srn.evaluation.plots import plot_wider_pr

    if not args.gt_dir:
        raise UserError("wider needs --gt-dir (the folder of wider_face_val.mat and wider_{easy,medium,hard}_val.mat)")
    if not args.pred_dir and not args.images:
        raise UserError("wider needs --images DIR (to detect) or --pred-dir DIR (to evaluate)")
    gt_dir = check_input_dir(args.gt_dir, what="ground-truth folder")
    if args.pred_dir:
        pred_dir = check_input_dir(args.pred_dir, what="prediction folder")
    else:
        root = check_input_dir(args.images, what="image folder")
    gt = widerface.load_wider_gt(gt_dir)
    if args.pred_dir:
        predictions = widerface.read_predictions(pred_dir)
        _check_outputs(args, inputs=[gt_dir, pred_dir])
    else:
        out = _check_outputs(args, inputs=[gt_dir, root], written=("predictions",))
        paths = [root / event / f"{name}.jpg" for event, name in gt.image_keys]
        results = _eval_detections(args, paths)
        pred_dir = out / "predictions"
        records = {f"{path.parent.name}/{path.stem}": (b.numpy(), s.numpy()) for path, (b, s) in results.items()}
        widerface.write_prediction_folder(pred_dir, records)  # this run's files only, none left from another
        print(f"predictions: {pred_dir}")
        predictions = widerface.read_predictions(pred_dir)
    result = widerface.evaluate(predictions, gt, subset=args.subset)

    matched = result.num_images if args.subset else result.num_images - result.num_missing
    extra = ""
    if result.extra:
        event, name = result.extra[0]
        extra = (f"{_count(result.num_extra, 'prediction file')} for images that are not in the ground truth, "
                 f"e.g. {pred_dir / event / name}.txt")
    if matched == 0:
        problem = "no prediction file matches an image of the ground truth"
        detail = f" ({extra})" if extra else " (it holds no <event>/<image>.txt file)"
        if args.subset:
            raise PredictionFormatError(pred_dir, None, problem + detail)
        _warn(f"{pred_dir}: {problem}{detail}; every image counts as having no detections")
    else:
        if extra:
            _warn(f"{extra} (not evaluated)")
        if result.num_missing:
            _warn(f"{result.num_missing} of {result.num_images} images have no prediction file "
                  "(counted as no detections, as the official code counts them)")
    _report(args, widerface.format_table(result), result, plot_wider_pr)
    return 0


def _eval_fddb(args: argparse.Namespace) -> int:
    from srn.evaluation import fddb
    from srn.evaluation.plots import plot_fddb_roc

    if not args.annotations:
        raise UserError("fddb needs --annotations (FDDB-fold-XX-ellipseList.txt files or the corrected list)")
    if not args.detections and not args.images:
        raise UserError("fddb needs --images DIR (to detect) or --detections FILE (to evaluate)")
    root = None if args.detections else check_input_dir(args.images, what="image folder")
    annotations = fddb.read_fddb_ellipses(args.annotations)
    if args.detections:
        detections = fddb.read_fddb_detections(args.detections)
        _check_outputs(args, inputs=[*args.annotations, *args.detections])
    else:
        out = _check_outputs(args, inputs=[*args.annotations, root], written=("detections.txt",))
        paths = {name: root / f"{name}.jpg" for name in annotations}
        results = _eval_detections(args, list(paths.values()))
        by_path = {path: name for name, path in paths.items()}
        records = {by_path[p]: (b.numpy(), s.numpy()) for p, (b, s) in results.items()}
        det_file = out / "detections.txt"
        fddb.write_fddb_detections(det_file, records)
        detections = fddb.read_fddb_detections(det_file)
    result = fddb.evaluate_fddb(detections, annotations, height_scale=args.height_scale)

    source = ", ".join(args.detections) if args.detections else str(Path(args.out) / "detections.txt")
    if result.num_missing == result.num_images:
        if not detections:
            raise PredictionFormatError(source, None, "holds no detection entry")
        raise PredictionFormatError(
            source, None, f"no detection entry is for an annotated image (e.g. {result.extra[0]} is not in the "
            "annotations: detections of another fold?)"
        )
    if result.extra:
        _warn(f"{source}: {_count(result.num_extra, 'detection entry', 'detection entries')} for images that are "
              f"not annotated (ignored), e.g. {result.extra[0]}")
    if result.num_missing and args.detections:  # a detection run has already named the missing images
        _warn(f"{result.num_missing} of {result.num_images} annotated images have no detection entry "
              "(counted as no detections)")
    _report(args, fddb.format_table(result), result, plot_fddb_roc)
    return 0


def _eval_facebox(args: argparse.Namespace) -> int:
    import json

    from srn.evaluation import facebox
    from srn.evaluation.plots import plot_facebox_pr

    if not args.annotations or len(args.annotations) != 1:
        raise UserError(f"{args.benchmark} needs one --annotations .mat file (the face-eval re-annotations)")
    if args.detections and len(args.detections) != 1:
        raise UserError(f"{args.benchmark} takes one --detections file (a detections.json)")
    if not args.detections and not args.images:
        raise UserError(f"{args.benchmark} needs --images DIR (to detect) or --detections FILE (to evaluate)")
    root = None if args.detections else check_input_dir(args.images, what="image folder")
    annotations = facebox.load_facebox_annotations(args.annotations[0])
    if args.detections:
        detections = facebox.read_facebox_detections(args.detections[0])
        _check_outputs(args, inputs=[args.annotations[0], args.detections[0]])
    else:
        out = _check_outputs(args, inputs=[args.annotations[0], root], written=("detections.json",))
        paths = {key: root / image.name for key, image in annotations.items()}
        results = _eval_detections(args, list(paths.values()))
        by_path = {path: key for key, path in paths.items()}
        detections = {by_path[p]: (b.numpy(), s.numpy()) for p, (b, s) in results.items()}
        dump = {k: {"boxes": b.tolist(), "scores": s.tolist()} for k, (b, s) in detections.items()}
        atomic_write_text(out / "detections.json", json.dumps(dump) + "\n")
    result = facebox.evaluate_facebox(detections, annotations)

    source = args.detections[0] if args.detections else str(Path(args.out) / "detections.json")
    if result.num_missing == result.num_images:
        if not detections:
            raise PredictionFormatError(source, None, "holds no image")
        raise PredictionFormatError(
            source, None, f"no image of it is in {args.annotations[0]} (e.g. {result.extra[0]!r})"
        )
    if result.extra:
        _warn(f"{source}: {result.num_extra} of {len(detections)} images are not in {args.annotations[0]} "
              f"(their detections count as false positives), e.g. {result.extra[0]!r}")
    if result.num_missing and args.detections:  # a detection run has already named the missing images
        _warn(f"{result.num_missing} of {result.num_images} annotated images have no entry in {source} "
              "(counted as no detections)")
    _report(args, facebox.format_table(result, args.benchmark.upper()), result, plot_facebox_pr)
    return 0
