"""``srn detect``: faces in images, folders, globs and videos."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from srn.atomic import atomic_write_text
from srn.cli.common import VIDEO_SUFFIXES, UserError, add_detector_args, build_detector, expand_inputs


def register(sub: argparse._SubParsersAction) -> None:
    detect = sub.add_parser("detect", help="detect faces in images", description="Detect faces in images.")
    detect.add_argument("inputs", nargs="+", metavar="PATH", help="image files, folders or globs")
    detect.add_argument("--format", choices=("json", "csv", "wider"), default="json")
    detect.add_argument("--out", help="output file (json/csv; default stdout) or folder (wider)")
    detect.add_argument("--save-vis", metavar="DIR", help="also write each image with its boxes drawn")
    detect.add_argument("--score-thresh", type=float, default=0.5)
    detect.add_argument("--nms-iou", type=float, default=None, help="NMS IoU (default: the model's, 0.4)")
    add_detector_args(detect)
    detect.set_defaults(func=run)


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from srn.data.image_io import ImageReadError, read_image

    if args.format == "wider" and not args.out:
        raise UserError("--format wider needs --out DIR")
    if any(Path(p).suffix.lower() in VIDEO_SUFFIXES for p in args.inputs):
        return run_video(args)
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


def run_video(args: argparse.Namespace) -> int:
    """``srn detect`` when the inputs are videos."""
    import torch

    from srn.video import detect_video, plan_outputs, require_cv2

    require_cv2()
    paths = [Path(p) for p in args.inputs]
    images = [p for p in paths if p.suffix.lower() not in VIDEO_SUFFIXES]
    if images:
        raise UserError(f"{images[0]}: videos and images cannot be mixed in one call")
    if args.format != "json":
        raise UserError(f"--format {args.format} is for images; videos write JSON lines")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    for path in paths:
        if not path.is_file():
            raise UserError(f"{path}: no such video file")
    plans = plan_outputs(paths, args.out, args.save_vis)
    detector = build_detector(args, args.score_thresh, args.nms_iou)
    for path, targets in zip(paths, plans):
        try:
            frames = detect_video(detector, path, targets, args.batch_size)
        except torch.OutOfMemoryError:
            raise UserError("out of memory; lower --max-size or --batch-size") from None
        written = [str(p) for p in targets.videos] + ([str(targets.jsonl)] if targets.jsonl else [])
        if written:
            print(f"{path}: {frames} frames -> {', '.join(written)}", file=sys.stderr)
    return 0
