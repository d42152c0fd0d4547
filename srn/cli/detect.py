"""``srn detect``: faces in images, folders, globs and videos, and in live sources (a webcam, a
network stream).

This module parses the options, refuses the combinations that cannot work, and prints; the runs,
their outputs, resuming and the torchrun merge are :mod:`srn.pipeline.detect`'s.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from srn.cli.common import (
    HelpFormatter,
    Report,
    UserError,
    add_detector_args,
    build_detector,
    default_workers,
    float_in,
    int_at_least,
    live_ending,
    plural,
    worker_death,
)
from srn.errors import OutputPathError, printable
from srn.paths import expand_inputs, is_video

FORMATS = ("json", "jsonl", "csv", "wider")
TORCHRUN_OUT = "under torchrun, give --out FILE: each process writes its own part, and process 0 merges them"

DESCRIPTION = """\
Detect faces in images, folders (searched recursively) and globs, in videos, or in a live source:
a webcam number (0) or a stream URL (rtsp://, rtmp://, http(s)://, udp://, tcp://, srt://).

What is printed: the results go to stdout as JSON, one compact record per line (one line for one
image, JSON Lines for several), unless --out names a file. On stderr, on a terminal, a line per image
("photo.jpg: 27 faces") and, always, a closing summary ("3 images, 41 faces, 0 failed in 2.1 s").

--out takes its meaning from its suffix (--format overrides it for the record formats):
  .jsonl  one JSON record per line, {"image", "width", "height", "faces": [{"box", "score"}]},
          written and flushed as each batch completes; the lossless streaming format, and the one
          --resume reads back
  .json   the same records as one JSON array, written when the run ends
  .csv    image,width,height,x1,y1,x2,y2,score: one row per face; an image without faces gets one
          row with empty box and score fields, so that "no faces" differs from "not processed"
  .jpg .png .webp ...  the photo with its faces drawn (one input image only)
  -       stdout;  /dev/null: nothing is kept (to time a run)
  any other suffix is refused. --format wider --out DIR writes the WIDER FACE submission layout,
  DIR/<event folder>/<image name>.txt.

--save-vis and --save-crops mirror the inputs' tree below the folder that holds them all, so that
no two inputs share an output: a/x.jpg -> DIR/a/x.jpg (drawn, in the input's format; JPEG at
quality 95), DIR/a/x_jpg/face_000.jpg (crops; a/x.png's go to DIR/a/x_png/). --hide-scores draws
the boxes without their score labels, which cover the neighbouring faces in crowds.

A video or a live source gives one JSON line per frame; --out X.mp4 writes the video with boxes
drawn (and X.jsonl). A live source runs until it ends or Ctrl-C, which finishes every output.

Examples:
  srn detect photo.jpg                                 one JSON line on stdout
  srn detect photo.jpg --out drawn.jpg                 the photo with its faces drawn
  srn detect photos/ --out faces.jsonl                 streamed, one line per image
  srn detect photos/ --out faces.jsonl --resume        go on where a stopped run ended
  srn detect photos/ --save-vis vis/ --save-crops crops/ --crop-margin 0.3
  srn detect group.jpg -o drawn.jpg --hide-scores      boxes only, for crowds
  srn detect 'val/**/*.jpg' --format wider --out preds/ --score-thresh 0
  srn detect 0 --out webcam.mp4                        the first webcam, until Ctrl-C
  srn detect rtsp://camera.local/stream --out faces.jsonl
  torchrun --nproc_per_node=4 -m srn detect photos/ --out faces.jsonl
"""


def register(sub: argparse._SubParsersAction) -> None:
    detect = sub.add_parser("detect", help="detect faces in images, videos and live sources", description=DESCRIPTION,
                            formatter_class=HelpFormatter)
    detect.add_argument("inputs", nargs="+", metavar="PATH",
                        help="image files, folders or globs; videos; or one webcam number or stream URL")
    detect.add_argument("--format", choices=FORMATS, default=None, help="record format (default: from --out's suffix, see above)")
    detect.add_argument("-o", "--out", help="where results go, by suffix (see above; default: stdout)")
    detect.add_argument("--resume", action="store_true", help="jsonl: skip the images already in --out (a torn last line is dropped)")
    detect.add_argument("--save-vis", metavar="DIR", help="also write each image with its boxes drawn, as DIR/<input path>")
    detect.add_argument("--save-crops", metavar="DIR", help="also write each face: a/x.jpg's as DIR/a/x_jpg/face_000.jpg ...")
    detect.add_argument("--hide-scores", action="store_true", help="drawn photos and videos (--out X.jpg, --out X.mp4, --save-vis): boxes without score labels")
    detect.add_argument("--crop-margin", type=float_in(0.0), default=0.2, help="crops: margin around the box, as a fraction of its width and height")
    detect.add_argument("--workers", type=int_at_least(0), default=default_workers(),
                        help=f"processes that decode images; 0 decodes in the main process (default: {default_workers()} here: "
                             "0 on 1 or 2 cores, 1 on 3 to 7, then one per 4 cores up to 4)")
    detect.add_argument("-t", "--score-thresh", type=float_in(0.0, 1.0), default=0.3, help="keep faces scoring at least this, in [0, 1]")
    detect.add_argument("--nms-iou", type=float_in(0.0, 1.0, low_open=True), default=None, help="NMS IoU, in (0, 1] (default: the model's, 0.4)")
    add_detector_args(detect)
    detect.set_defaults(func=run)


def output_kind(fmt: str | None, out: str | None) -> str:
    """What ``--out`` asks for: a record format (json, jsonl, csv, wider) or ``image`` (the photo
    drawn). ``--format`` decides where given; otherwise the suffix does, and one that names no
    output is refused in one line."""
    from srn.pipeline.detect import DRAWN_SUFFIXES, RECORD_SUFFIXES, is_devnull

    if fmt:
        return fmt
    if out is None or out == "-" or is_devnull(out):
        return "jsonl"  # stdout: compact, one line per image
    path = Path(out)
    suffix = path.suffix.lower()
    if suffix in RECORD_SUFFIXES:
        return RECORD_SUFFIXES[suffix]
    if suffix in DRAWN_SUFFIXES:
        return "image"
    if path.is_dir():
        return "json"  # srn.paths says what is wrong with a folder
    kinds = ".json, .jsonl, .csv or an image (.jpg, .png, .webp)"
    if not suffix:
        raise OutputPathError(path, f"has no suffix to tell what to write; name it {kinds}, or give --format")
    raise OutputPathError(path, f"{suffix!r} is not an output type; name it {kinds}, or give --format")


def _check_image_options(args: argparse.Namespace, fmt: str, count: int, distributed: bool) -> None:
    """The combinations of options that cannot work on ``count`` images, as one line each."""
    from srn.pipeline.detect import is_devnull

    out = None if args.out in (None, "-") else args.out

    if args.resume and not (fmt == "jsonl" and out and not is_devnull(out)):
        raise UserError("--resume needs --out FILE.jsonl (JSON Lines is the format a run can be resumed from)")
    if fmt == "wider" and not out:
        raise UserError("--format wider needs --out DIR")
    if distributed and fmt != "wider" and (not out or is_devnull(out)):
        raise UserError(TORCHRUN_OUT)
    if fmt == "image" and count > 1:
        raise OutputPathError(Path(out), f"an image holds the faces of one photo, and {count} were given; "
                                         "use --save-vis DIR for several")
    if distributed and fmt == "image":
        raise UserError("under torchrun, give --out FILE.jsonl: each process writes its own part, and process 0 merges them")
    if args.save_vis and args.save_crops and Path(args.save_vis).resolve() == Path(args.save_crops).resolve():
        raise UserError("--save-vis and --save-crops need two different folders")


def run(args: argparse.Namespace) -> int:
    from srn.media.live import is_live_source

    report = Report("image")
    live = [p for p in args.inputs if is_live_source(p)]
    if live:
        return run_live(args, live[0], args.format or "jsonl")
    if any(is_video(p) for p in args.inputs):
        return run_video(args, args.format or "jsonl")

    from srn.inference import sharding
    from srn.inference.writers import resolved_image, weights_identity
    from srn.pipeline import detect as pipeline

    fmt = output_kind(args.format, args.out)
    files = expand_inputs(args.inputs)
    if not files:
        raise UserError("no input images found")
    shard = sharding.Shard.from_env()
    _check_image_options(args, fmt, len(files), shard.distributed)
    plan = pipeline.plan_outputs(fmt, files, args.out, args.inputs, shard, args.save_vis, args.save_crops,
                                 scores=not args.hide_scores)
    with pipeline.claim_outputs(plan, shard):  # one writer per output, from its manifest to the merge
        return _run_images(args, fmt, files, shard, plan)


def _run_images(args: argparse.Namespace, fmt: str, files: list[Path], shard: Any, plan: Any) -> int:
    from srn.inference import sharding
    from srn.inference.writers import resolved_image, weights_identity
    from srn.pipeline import detect as pipeline

    report = Report("image")
    if shard.distributed:
        args.device = sharding.join_process_group(shard, args.device)
    detector = build_detector(args, args.score_thresh, args.nms_iou)

    # What is already done (--resume), by resolved path, and where this process writes.
    settings = {"score_thresh": args.score_thresh, "nms_iou": args.nms_iou, "max_size": args.max_size,
                "min_size": args.min_size or None,
                "zoom_pass": [args.zoom_pass, args.zoom_max_face] if args.zoom_pass else None, "precision": args.precision, "weights": weights_identity(args.weights)}
    if args.weights is None:
        settings["device"] = detector.device.type  # the shipped model differs by device (int8 on the CPU)
    done, stale_parts = pipeline.resume_state(plan, shard, settings, args.inputs, args.resume,
                                              warn=lambda line: print(printable(f"srn detect: warning: {line}"), file=sys.stderr))
    mine = [index for index in shard.indices(len(files)) if not done or resolved_image(files[index]) not in done]
    if args.resume and shard.rank == 0:
        already = sum(1 for path in files if resolved_image(path) in done)  # of this run's inputs only
        print(f"srn detect: {already} images already in {plan.out}", file=sys.stderr)

    summary = pipeline.detect_images(detector, plan, shard, mine, args.batch_size, args.workers, args.crop_margin,
                                     append=args.resume, observer=report)
    if summary.stopped is not None:
        kept = f"; the {report.items} images done are in {plan.out}" if plan.out is not None else ""
        print(printable(f"srn detect: error: {worker_death(summary.stopped) or summary.stopped}{kept}"), file=sys.stderr)
        report.close("detect")
        return 1

    where = f" (process {shard.rank})" if shard.distributed else ""
    tail = f" -> {plan.out}" if plan.out is not None and not shard.distributed else ""
    code = report.close("detect", where=where, tail=tail)
    if shard.distributed:
        sharding.barrier()
        pipeline.finish_parts(plan, shard, stale_parts, args.resume)
        failed = sharding.all_processes_sum(len(report.failures))  # every process exits 1 if any file failed anywhere
        sharding.leave_process_group()
        return 1 if failed else 0
    pipeline.finish_parts(plan, shard, stale_parts, args.resume)
    return code


def _check_stream_options(args: argparse.Namespace, fmt: str, what: str) -> None:
    """The options that a video or a live source cannot honour, as one line."""
    if fmt not in ("json", "jsonl"):
        raise UserError(f"--format {fmt} is for images; {what} write JSON lines")
    if args.resume or args.save_crops:
        raise UserError(f"{'--resume' if args.resume else '--save-crops'} is for images, not {what}")


def run_video(args: argparse.Namespace, fmt: str) -> int:
    """``srn detect`` when the inputs are videos."""
    from srn.media.video import require_av
    from srn.pipeline import detect as pipeline

    require_av()
    paths = [Path(p) for p in args.inputs]
    images = [p for p in paths if not is_video(p)]
    if images:
        raise UserError(f"{images[0]}: videos and images cannot be mixed in one call")
    _check_stream_options(args, fmt, "videos")
    for path in paths:
        if not path.is_file():
            raise UserError(f"{path}: no such video file")
    plans = pipeline.plan_video_outputs(paths, args.out, args.save_vis, scores=not args.hide_scores)
    detector = build_detector(args, args.score_thresh, args.nms_iou)
    outputs = {path: pipeline.written(targets) for path, targets in zip(paths, plans)}

    def done(path: Path, frames: int, faces: int) -> None:
        files = outputs[path]
        print(f"{path}: {plural(frames, 'frame')}, {plural(faces, 'face')}" + (f" -> {', '.join(files)}" if files else ""),
              file=sys.stderr)

    # A video that cannot be read or written is one line, and the next video goes on (exit 1).
    failed = pipeline.detect_videos(detector, paths, plans, args.batch_size, discard=pipeline.is_devnull(args.out), done=done,
                                    failed=lambda line: print(printable(f"srn detect: error: {line}"), file=sys.stderr))
    if failed and len(paths) > 1:
        print(f"srn detect: {failed} of {len(paths)} videos failed", file=sys.stderr)
    return 1 if failed else 0


def run_live(args: argparse.Namespace, source: str, fmt: str) -> int:
    """``srn detect`` on a webcam or a network stream, until it ends or Ctrl-C."""
    from srn.media.live import refuse_photo_url, source_name
    from srn.media.video import require_av
    from srn.pipeline import detect as pipeline

    if len(args.inputs) > 1:
        raise UserError(f"{source}: a live source is read alone; give it without other inputs")
    refuse_photo_url(source)
    require_av()
    _check_stream_options(args, fmt, "live sources")
    (targets,) = pipeline.plan_video_outputs([Path(source_name(source))], args.out, args.save_vis, scores=not args.hide_scores)
    report = Report("frame", per_item=False)
    outcome = pipeline.detect_live(lambda: build_detector(args, args.score_thresh, args.nms_iou), source, targets,
                                   args.batch_size, discard=pipeline.is_devnull(args.out))
    report.items, report.faces = outcome.items, outcome.faces
    files = pipeline.written(targets)
    how = live_ending(outcome)
    print(f"{source}: {report.summary()}, {how}" + (f" -> {', '.join(files)}" if files else ""), file=sys.stderr)
    if outcome.error:
        print(f"srn detect: {outcome.error}; the frames before it are written", file=sys.stderr)
        return 1
    return 0
