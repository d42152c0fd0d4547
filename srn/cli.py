"""The ``srn`` command line."""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from srn.atomic import atomic_write_text

HELP = """\
SRN face detection: detect, convert, train, evaluate, export and benchmark.

Examples:
  srn detect photo.jpg                          faces as JSON on stdout
  srn detect photos/ --format csv --out faces.csv
  srn detect 'val/**/*.jpg' --format wider --out preds/ --score-thresh 0.01
  srn detect group.jpg --save-vis vis/ --weights SRN.pth --device cuda
  srn convert SRN.pth srn_r50.pt                the authors' checkpoint into ours
  srn train configs/srn_r50_widerface.yaml train.epochs=2
  srn eval wider --pred-dir preds/ --gt-dir wider_face_split/

Run 'srn COMMAND -h' for a command's options.
"""

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


class UserError(Exception):
    """An error caused by the command's input; printed as one line, without a traceback."""


def expand_inputs(patterns: Sequence[str]) -> list[Path]:
    """Files, folders (searched recursively for images) and globs, in a stable order, each once."""
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.exists() or path.is_symlink():
            found.append(path)
        elif glob.has_magic(pattern):
            matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
            files = [p for p in matches if p.is_file()]
            if not files:
                raise UserError(f"{pattern}: no file matches")
            found.extend(files)
        else:
            raise UserError(f"{pattern}: no such file or folder")
    unique, seen = [], set()
    for path in found:
        if path not in seen:
            seen.add(path)
            unique.append(path)
    return unique


# ---------------------------------------------------------------------------------------------
# srn detect
# ---------------------------------------------------------------------------------------------


def add_detector_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", help="srn checkpoint, the release's SRN.pth, or an .onnx file from srn export (default: the shipped model)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--max-size", type=int, default=2100, help="downscale images whose longer side exceeds this")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: bf16 weights, BatchNorm folded, channels_last")
    parser.add_argument("--cuda-graphs", action="store_true", help="capture and replay CUDA graphs per input shape (CUDA only; for video and same-size images)")
    parser.add_argument("--threads", type=int, help="CPU threads for the network (default: torch's, one per core)")


def build_detector(args: argparse.Namespace, score_thresh: float, nms_iou: float | None = None):
    try:
        return _detector(args, score_thresh, nms_iou)
    except ValueError as exc:  # bad settings: --cuda-graphs on the CPU, --max-size too small
        raise UserError(str(exc).strip().splitlines()[0]) from None


def _detector(args: argparse.Namespace, score_thresh: float, nms_iou: float | None):
    import torch

    from srn.detector import open_detector

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    return open_detector(
        weights=args.weights,
        threads=args.threads,
        device=args.device,
        score_thresh=score_thresh,
        nms_iou=nms_iou,
        max_size=args.max_size,
        batch_size=args.batch_size,
        precision=args.precision,
        cuda_graphs=args.cuda_graphs,
    )


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def cmd_detect(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from srn.data.image_io import ImageReadError, read_image

    if args.format == "wider" and not args.out:
        raise UserError("--format wider needs --out DIR")
    if any(Path(p).suffix.lower() in VIDEO_SUFFIXES for p in args.inputs):
        from srn.video import cmd_detect_video

        return cmd_detect_video(args)
    files = expand_inputs(args.inputs)
    if not files:
        raise UserError("no input images found")
    detector = build_detector(args, args.score_thresh, args.nms_iou)

    records: list[dict] = []
    failures: list[str] = []
    progress = tqdm(total=len(files), unit="img", disable=len(files) < 8 or None, file=sys.stderr)
    for chunk in _chunks(files, args.batch_size):
        images, paths = [], []
        for path in chunk:
            try:
                images.append(read_image(path))
                paths.append(path)
            except ImageReadError as exc:
                failures.append(str(exc))
        try:
            results = detector.detect(images) if images else []
        except torch.OutOfMemoryError:
            raise UserError("out of memory; lower --max-size or --batch-size") from None
        for path, image, faces in zip(paths, images, results):
            record = {"image": str(path), "width": faces.width, "height": faces.height, "faces": faces.to_records()}
            records.append(record)
            if args.format == "wider":
                from srn.evaluation.widerface import write_predictions

                write_predictions(args.out, {f"{path.parent.name}/{path.stem}": (faces.boxes.cpu().numpy(), faces.scores.cpu().numpy())})
            if args.save_vis:
                _save_visualisation(Path(args.save_vis), path, image, faces)
        progress.update(len(chunk))
    progress.close()

    if args.format == "json":
        _emit(json.dumps(records, indent=1) + "\n", args.out)
    elif args.format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["image", "width", "height", "x1", "y1", "x2", "y2", "score"])
        for record in records:
            for face in record["faces"]:
                writer.writerow([record["image"], record["width"], record["height"], *face["box"], face["score"]])
        _emit(buffer.getvalue(), args.out)

    if failures:
        print(f"srn detect: {len(failures)} of {len(files)} files failed:", file=sys.stderr)
        for line in failures:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


def _emit(text: str, out: str | None) -> None:
    if out:
        atomic_write_text(Path(out), text)
    else:
        sys.stdout.write(text)


def _save_visualisation(out_dir: Path, path: Path, image, faces) -> None:
    import PIL.Image
    from torchvision.utils import draw_bounding_boxes

    width = max(2, round(max(image.shape[-2:]) / 400))
    drawn = draw_bounding_boxes(image, faces.boxes.cpu().float(), colors="lime", width=width)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{path.stem}.png"
    tmp = out_dir / f".{path.stem}.png.tmp"
    PIL.Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(tmp, format="PNG")
    os.replace(tmp, target)


# ---------------------------------------------------------------------------------------------
# srn convert
# ---------------------------------------------------------------------------------------------


def cmd_convert(args: argparse.Namespace) -> int:
    from srn.weights import convert_official_file

    config = convert_official_file(args.src, args.dst)
    print(f"wrote {args.dst} ({config.model.backbone}, STC {list(config.model.stc_levels)}, STR {list(config.model.str_levels)})")
    return 0


# ---------------------------------------------------------------------------------------------
# srn train
# ---------------------------------------------------------------------------------------------

PRESETS_DIR = Path(__file__).resolve().parent / "configs"


def resolve_config_path(name: str) -> tuple[Path, bool]:
    """A YAML path, or the name of a packaged preset; returns (path, is_preset)."""
    path = Path(name)
    if path.is_file():
        return path, False
    preset = PRESETS_DIR / f"{name.removesuffix('.yaml')}.yaml"
    if preset.is_file():
        return preset, True
    names = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
    raise UserError(f"{name}: no such config file or preset (presets: {names})")


def cmd_train(args: argparse.Namespace) -> int:
    import logging

    from srn.config import TrainingConfig, load_yaml
    from srn.engine.trainer import Trainer

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path, is_preset = resolve_config_path(args.config)
    config = load_yaml(TrainingConfig, path, args.overrides)
    trainer = Trainer(config, base_dir=None if is_preset else path.parent, resume=args.resume)
    final = trainer.fit()
    if trainer.dist.is_main:
        print(f"wrote {final}")
    return 0


# ---------------------------------------------------------------------------------------------
# srn eval
# ---------------------------------------------------------------------------------------------


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


def cmd_eval(args: argparse.Namespace) -> int:
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


def cmd_imbalance(args: argparse.Namespace) -> int:
    from srn.analysis import format_report, run_class_imbalance

    if not Path(args.boxes_file).is_file():
        raise UserError(f"{args.boxes_file}: no such file")
    stats = run_class_imbalance(args.boxes_file, num_images=args.num_images, seed=args.seed,
                                allow_low_quality_matches=args.low_quality)
    print(format_report(stats))
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(stats, indent=1, default=float) + "\n")
    return 0


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="srn", description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    detect = sub.add_parser("detect", help="detect faces in images", description="Detect faces in images.")
    detect.add_argument("inputs", nargs="+", metavar="PATH", help="image files, folders or globs")
    detect.add_argument("--format", choices=("json", "csv", "wider"), default="json")
    detect.add_argument("--out", help="output file (json/csv; default stdout) or folder (wider)")
    detect.add_argument("--save-vis", metavar="DIR", help="also write each image with its boxes drawn")
    detect.add_argument("--score-thresh", type=float, default=0.5)
    detect.add_argument("--nms-iou", type=float, default=None, help="NMS IoU (default: the model's, 0.4)")
    add_detector_args(detect)
    detect.set_defaults(func=cmd_detect)

    convert = sub.add_parser("convert", help="convert the authors' SRN.pth into an srn checkpoint")
    convert.add_argument("src", help="the release's SRN.pth")
    convert.add_argument("dst", help="output checkpoint")
    convert.set_defaults(func=cmd_convert)

    train = sub.add_parser(
        "train",
        help="train SRN (one GPU, CPU, or many with torchrun)",
        description="Train SRN. CONFIG is a YAML file or a preset; key=value pairs override it.\n\n"
        "Presets: srn_r50_widerface (the paper's), retinanet_r50_widerface, ablation_stc, ablation_str,\n"
        "ablation_stc_str, srn_mobilenet_v2.\n\n"
        "  srn train srn_r50_widerface train.output_dir=runs/a\n"
        "  torchrun --nproc_per_node=8 -m srn train srn_r50_widerface train.batch_per_device=4\n"
        "  srn train my.yaml --resume",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("config", help="YAML file or preset name")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.lr=0.02")
    train.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                       help="continue from CKPT (default: OUTPUT_DIR/last.pt)")
    train.set_defaults(func=cmd_train)

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
    evaluate.set_defaults(func=cmd_eval)

    imbalance = sub.add_parser(
        "imbalance",
        help="the paper's class-imbalance analysis on a WIDER boxes file (no network)",
        description="Anchors per level, the STC levels' share and each step's positive:negative ratio,\n"
        "under the training geometry and matching (SPEC §6).\n\n"
        "  srn imbalance ../shared/data/widerface/wider_face_train_boxes_with_sizes.txt --num-images 500",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    imbalance.add_argument("boxes_file", help="lines '<event>/<name>.jpg W H', a count, then 'x y w h' lines")
    imbalance.add_argument("--num-images", type=int, default=None, help="random sample (default: all)")
    imbalance.add_argument("--seed", type=int, default=0)
    imbalance.add_argument("--low-quality", action="store_true", help="also make each face's best anchor positive")
    imbalance.add_argument("--json", help="also write the statistics as JSON")
    imbalance.set_defaults(func=cmd_imbalance)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


def _register_feature_commands(sub: argparse._SubParsersAction) -> None:
    """``srn export`` and ``srn bench`` live with their modules, which add their own parsers."""
    from srn import bench, export

    export.register(sub)
    bench.register(sub)


# Subcommands that live with their feature modules.
_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_register_feature_commands]


def _user_errors() -> tuple[type[Exception], ...]:
    """Exceptions that describe bad input, printed as one line instead of a traceback."""
    from srn.config import ConfigError
    from srn.data.image_io import ImageReadError
    from srn.data.datasets import AnnotationError
    from srn.engine.trainer import TrainingError
    from srn.evaluation.widerface import PredictionFormatError
    from srn.weights import WeightsError

    return (ConfigError, ImageReadError, WeightsError, AnnotationError, TrainingError, PredictionFormatError,
            FileNotFoundError, NotADirectoryError, IsADirectoryError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (UserError, *_user_errors()) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"srn {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"srn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
