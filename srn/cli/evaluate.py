"""``srn eval``: one's own labelled photos, and WIDER FACE, FDDB, AFW and PASCAL Face with their own protocols.

The evaluators in :mod:`srn.evaluation` only compute; this module runs the detector, writes the
predictions, the report and the plot, and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from srn.atomic import atomic_write_text
from srn.cli.common import HelpFormatter, UserError, add_detector_args, build_detector, default_workers, float_in, int_at_least
from srn.paths import check_input_dir, check_output_dir, check_output_file


def register(sub: argparse._SubParsersAction) -> None:
    evaluate = sub.add_parser(
        "eval",
        help="evaluate a model on your own labelled photos, or on WIDER FACE, FDDB, AFW or PASCAL Face",
        description="Detect, then evaluate with the benchmark's own protocol; or evaluate existing predictions.\n\n"
        "Your own labelled photos (a WIDER-style list or a COCO JSON; the format is told from the file):\n"
        "AP at IoU 0.5 and 0.5:0.95, recall and precision at scores 0.3 and 0.1, per face size; a PR plot.\n"
        "  srn eval labels --annotations photos/labels.txt                # the shipped model; images beside the list\n"
        "  srn eval labels --images photos/ --annotations coco.json --weights runs/x/model.pt --json summary.json\n"
        "  srn eval labels --annotations labels.txt --detections faces.jsonl   # srn detect's output, no detection\n\n"
        "Benchmarks:\n"
        "  srn eval wider --images WIDER_val/images --gt-dir eval_tools/ground_truth --weights W [--tta]\n"
        "  srn eval wider --pred-dir preds/ --gt-dir eval_tools/ground_truth [--subset]\n"
        "  srn eval fddb --images originalPics --annotations FDDB-folds/FDDB-fold-*-ellipseList.txt --weights W\n"
        "  srn eval afw --images afw/ --annotations new_annotations_AFW.mat --weights W",
        formatter_class=HelpFormatter,
    )
    evaluate.add_argument("benchmark", choices=tuple(_INPUTS))
    evaluate.add_argument("--images", help="the image folder (detection is run); labels: default the annotation file's folder")
    evaluate.add_argument("--pred-dir", help="wider: evaluate this submission folder instead of detecting")
    evaluate.add_argument("--detections", nargs="+", help="labels: srn detect's .jsonl/.json records; fddb: detection files; "
                                                         "afw/pascal: a detections.json; instead of detecting")
    evaluate.add_argument("--gt-dir", help="wider: folder of the official .mat ground truth")
    evaluate.add_argument("--annotations", nargs="+", help="labels: a WIDER-style list or a COCO .json; fddb ellipse lists; "
                                                          "or the afw/pascal .mat file")
    evaluate.add_argument("--format", choices=("auto", "wider", "coco", "fddb"), default="auto",
                          help="labels: the annotation file's format (default: told from the file: .json is coco)")
    evaluate.add_argument("--thresholds", type=float_in(0.0, 1.0), nargs="+", default=[0.3, 0.1], metavar="SCORE",
                          help="labels: score thresholds for recall and precision (default: 0.3 srn detect's, 0.1 srn anonymize's)")
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


def _labels_inputs(args: argparse.Namespace) -> tuple[list, list | None]:
    if not args.annotations or len(args.annotations) != 1:
        raise UserError("labels needs one --annotations file (a WIDER-style list or a COCO .json)")
    return list(args.annotations), list(args.detections) if args.detections else None


def _wider_inputs(args: argparse.Namespace) -> tuple[list, list | None]:
    if not args.gt_dir:
        hint = "; for a WIDER-style list of your own labels: srn eval labels --annotations LIST" if args.annotations else ""
        raise UserError(f"wider needs --gt-dir (the folder of wider_face_val.mat and wider_{{easy,medium,hard}}_val.mat){hint}")
    if not args.pred_dir and not args.images:
        raise UserError("wider needs --images DIR (to detect) or --pred-dir DIR (to evaluate)")
    gt_dir = check_input_dir(args.gt_dir, what="ground-truth folder")
    return [gt_dir], [check_input_dir(args.pred_dir, what="prediction folder")] if args.pred_dir else None


def _fddb_inputs(args: argparse.Namespace) -> tuple[list, list | None]:
    if not args.annotations:
        raise UserError("fddb needs --annotations (FDDB-fold-XX-ellipseList.txt files or the corrected list)")
    if not args.detections and not args.images:
        raise UserError("fddb needs --images DIR (to detect) or --detections FILE (to evaluate)")
    return list(args.annotations), list(args.detections) if args.detections else None


def _facebox_inputs(args: argparse.Namespace) -> tuple[list, list | None]:
    if not args.annotations or len(args.annotations) != 1:
        raise UserError(f"{args.benchmark} needs one --annotations .mat file (the face-eval re-annotations)")
    if Path(args.annotations[0]).suffix.lower() in (".txt", ".json"):
        raise UserError(f"{args.annotations[0]}: {args.benchmark} reads the face-eval .mat re-annotations; "
                        "for your own labels (a WIDER-style list or a COCO .json): srn eval labels --annotations FILE")
    if args.detections and len(args.detections) != 1:
        raise UserError(f"{args.benchmark} takes one --detections file (a detections.json)")
    if not args.detections and not args.images:
        raise UserError(f"{args.benchmark} needs --images DIR (to detect) or --detections FILE (to evaluate)")
    return list(args.annotations), list(args.detections) if args.detections else None


# Each benchmark of srn.evaluation.evaluator.EVALUATORS that the command offers, and the flags that
# give its ground truth and, instead of a detection run, its predictions.
_INPUTS = {"labels": _labels_inputs, "wider": _wider_inputs, "fddb": _fddb_inputs, "afw": _facebox_inputs, "pascal": _facebox_inputs}


def run(args: argparse.Namespace) -> int:
    from srn.evaluation.evaluator import EvaluatorOptions, build_evaluator

    args.out = args.out or f"eval_{args.benchmark}"
    ground_truth, predictions = _INPUTS[args.benchmark](args)
    labels = args.benchmark == "labels"
    if not predictions and not labels:
        if not args.images:
            raise UserError(f"{args.benchmark} needs --images DIR (to detect)")
    root = None if predictions or (labels and not args.images) else check_input_dir(args.images, what="image folder")
    options = EvaluatorOptions(subset=args.subset, height_scale=args.height_scale, format=None if args.format == "auto" else args.format,
                               images=args.images, thresholds=tuple(args.thresholds))
    evaluator = build_evaluator(args.benchmark, ground_truth, options)
    if labels and not predictions:
        root = check_input_dir(evaluator.image_root, what="image folder")
    # A failed run leaves no empty folder behind: the output folders this run creates go again on failure.
    made = [p for p in (Path(args.out), Path(args.out) / evaluator.predictions_name) if not (p.exists() or p.is_symlink())]
    try:
        _evaluate(args, evaluator, ground_truth, predictions, root)
    except BaseException:
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
        raise
    return 0


def _evaluate(args: argparse.Namespace, evaluator, ground_truth: list, predictions: list | None, root: Path | None) -> None:
    if predictions:
        evaluator.load_predictions(predictions)
        _check_outputs(args, inputs=[*ground_truth, *predictions])
        source = ", ".join(map(str, predictions))
    else:
        out = _check_outputs(args, inputs=[*ground_truth, root], written=(evaluator.predictions_name,))
        ids = evaluator.image_ids()
        paths = [root / name for name in evaluator.image_files()]
        results = _eval_detections(args, paths)
        id_of = dict(zip(paths, ids, strict=True))
        evaluator.process([id_of[path] for path in results], list(results.values()))
        written = evaluator.write_predictions(out / evaluator.predictions_name)
        if written.is_dir():
            print(f"predictions: {written}")
        # Score what the file says, as the benchmark's own tool would read it.
        evaluator.load_predictions([written])
        source = str(Path(args.out) / evaluator.predictions_name)
    result = evaluator.evaluate()
    for warning in evaluator.check(result, source, detected=not predictions):
        _warn(warning)
    _report(args, evaluator.format_table(result), result, evaluator.plot)
