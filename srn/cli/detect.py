"""``srn detect``: faces in images, folders, globs and videos, and in live sources (a webcam, a
network stream).

Images are decoded in ``DataLoader`` workers while the network runs (:mod:`srn.inference.stream`),
and each batch's results are written as soon as it completes (:mod:`srn.inference.writers`): JSON
Lines and CSV are appended and flushed per batch, WIDER files, drawings and crops per image, so that
a failure or a kill late in a run loses at most the batch in flight. Only a JSON array is written at
the end, atomically.

Under ``torchrun`` the inputs are shared out by rank; each process writes its own part
``OUT.rank<r>.jsonl`` and process 0 merges the parts in input order into ``OUT``
(:mod:`srn.inference.sharding`).

This module turns the options into paths and writers, and prints; the work is the library's.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from srn.cli.common import (
    HelpFormatter,
    Report,
    UserError,
    add_detector_args,
    build_detector,
    default_workers,
    float_in,
    int_at_least,
    plural,
    worker_death,
)
from srn.errors import InputPathError, OutputPathError, printable
from srn.paths import check_output_dir, check_output_file, expand_inputs, is_video, relative_paths

if TYPE_CHECKING:
    from srn.evaluation.wider_writer import WiderWriter
    from srn.inference.sharding import Shard
    from srn.inference.writers import RecordWriter
    from srn.media.video import VideoTargets

FORMATS = ("json", "jsonl", "csv", "wider")
RECORD_SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
# --out with one of these suffixes writes the photo with its faces drawn.
DRAWN_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
# --save-vis keeps an input's name where it can write its format, and appends .png where it cannot.
VIS_SUFFIXES = frozenset({*DRAWN_SUFFIXES, ".gif"})

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
quality 95), DIR/a/x.jpg/face_000.jpg (crops).

A video or a live source gives one JSON line per frame; --out X.mp4 writes the video with boxes
drawn (and X.jsonl). A live source runs until it ends or Ctrl-C, which finishes every output.

Examples:
  srn detect photo.jpg                                 one JSON line on stdout
  srn detect photo.jpg --out drawn.jpg                 the photo with its faces drawn
  srn detect photos/ --out faces.jsonl                 streamed, one line per image
  srn detect photos/ --out faces.jsonl --resume        go on where a stopped run ended
  srn detect photos/ --save-vis vis/ --save-crops crops/ --crop-margin 0.3
  srn detect 'val/**/*.jpg' --format wider --out preds/ --score-thresh 0.01
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
    detect.add_argument("--out", help="where results go, by suffix (see above; default: stdout)")
    detect.add_argument("--resume", action="store_true", help="jsonl: skip the images already in --out (a torn last line is dropped)")
    detect.add_argument("--save-vis", metavar="DIR", help="also write each image with its boxes drawn, as DIR/<input path>")
    detect.add_argument("--save-crops", metavar="DIR", help="also write each face, as DIR/<input path>/face_000.jpg ...")
    detect.add_argument("--crop-margin", type=float_in(0.0), default=0.2, help="crops: margin around the box, as a fraction of its width and height")
    detect.add_argument("--workers", type=int_at_least(0), default=default_workers(),
                        help=f"processes that decode images; 0 decodes in the main process (default: {default_workers()} here: "
                             "0 on 1 or 2 cores, 1 on 3 to 7, then one per 4 cores up to 4)")
    detect.add_argument("--score-thresh", type=float_in(0.0, 1.0), default=0.3, help="keep faces scoring at least this, in [0, 1]")
    detect.add_argument("--nms-iou", type=float_in(0.0, 1.0, low_open=True), default=None, help="NMS IoU, in (0, 1] (default: the model's, 0.4)")
    add_detector_args(detect)
    detect.set_defaults(func=run)


# -- where the outputs go ---------------------------------------------------------------------------


def is_devnull(out: str | None) -> bool:
    """Whether ``out`` names the null device (results are computed and dropped)."""
    return out is not None and out != "-" and os.path.realpath(out) == os.path.realpath(os.devnull)


def output_kind(fmt: str | None, out: str | None) -> str:
    """What ``--out`` asks for: a record format (json, jsonl, csv, wider) or ``image`` (the photo
    drawn). ``--format`` decides where given; otherwise the suffix does, and one that names no
    output is refused in one line."""
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


@dataclass
class Plan:
    """Every output path, checked before the first image is read."""

    fmt: str  # json, jsonl, csv, wider or image
    files: list[Path]
    out: Path | None = None  # a file of records, the drawn photo, or the wider folder; None: stdout
    discard: bool = False  # --out /dev/null
    vis_dir: Path | None = None
    crops_dir: Path | None = None
    relative: list[Path] = field(default_factory=list)  # each input below the inputs' common folder
    wider: WiderWriter | None = None  # --format wider's writer, made here to refuse two images on one file

    def vis_path(self, index: int) -> Path:
        """``DIR/<input path>``: the input's own name and format, or ``.png`` appended where that
        format cannot be written."""
        assert self.vis_dir is not None
        relative = self.relative[index]
        if relative.suffix.lower() in VIS_SUFFIXES:
            return self.vis_dir / relative
        return self.vis_dir / f"{relative}.png"

    def crops_folder(self, index: int) -> Path:
        assert self.crops_dir is not None
        return self.crops_dir / self.relative[index]


def plan_outputs(args: argparse.Namespace, fmt: str, files: list[Path], shard: Shard) -> Plan:
    """Check every output before any detection: one line for the first that cannot be written."""
    out = None if args.out in (None, "-") else args.out
    plan = Plan(fmt, files, discard=is_devnull(out))
    if args.resume and not (fmt == "jsonl" and out and not plan.discard):
        raise UserError("--resume needs --out FILE.jsonl (JSON Lines is the format a run can be resumed from)")
    if fmt == "wider":
        if not out:
            raise UserError("--format wider needs --out DIR")
        from srn.evaluation.wider_writer import WiderWriter

        plan.wider = WiderWriter(Path(out), files)  # refuses two images on one file
        plan.out = check_output_dir(out, inputs=files)
    elif plan.discard:
        if shard.distributed:
            raise UserError("under torchrun, give --out FILE: each process writes its own part, and process 0 merges them")
    elif out:
        plan.out = check_output_file(out, inputs=files)
        if fmt == "image" and len(files) > 1:
            raise OutputPathError(plan.out, f"an image holds the faces of one photo, and {len(files)} were given; "
                                            "use --save-vis DIR for several")
        if shard.distributed:
            if fmt == "image":
                raise UserError("under torchrun, give --out FILE.jsonl: each process writes its own part, and process 0 merges them")
            check_output_file(shard.part(plan.out), inputs=files)
    elif shard.distributed:
        raise UserError("under torchrun, give --out FILE: each process writes its own part, and process 0 merges them")

    plan.relative = relative_paths(args.inputs, files)
    if args.save_vis and args.save_crops and Path(args.save_vis).resolve() == Path(args.save_crops).resolve():
        raise UserError("--save-vis and --save-crops need two different folders")
    # Folders of images may not lie in a folder the inputs search: the next run would read them.
    if args.save_vis:
        plan.vis_dir = check_output_dir(args.save_vis, inputs=files, input_patterns=args.inputs)
    if args.save_crops:
        plan.crops_dir = check_output_dir(args.save_crops, inputs=files, input_patterns=args.inputs)
    if plan.vis_dir is not None:
        sources = {os.path.abspath(f) for f in files}
        for index in range(len(files)):
            target = plan.vis_path(index)
            if os.path.abspath(target) in sources:
                raise OutputPathError(target, "is also an input; refusing to overwrite it")
    return plan


def _writer(plan: Plan, shard: Shard, append: bool) -> RecordWriter:
    """Where this process writes its records: ``--out`` in its format, its part under torchrun,
    stdout (JSON as JSON Lines: compact, one line per image), or nowhere."""
    from srn.inference.writers import WRITERS, JsonLinesWriter, RecordWriter

    if plan.wider is not None:
        return plan.wider
    if plan.fmt == "image":

        class NoRecords(RecordWriter):
            """The drawn photo is the output; the records go nowhere."""

            def write_record(self, record: dict) -> None:
                pass

        return NoRecords()
    if shard.distributed:
        assert plan.out is not None
        return JsonLinesWriter(shard.part(plan.out), append=append)
    if plan.discard:
        return WRITERS["csv" if plan.fmt == "csv" else "jsonl"](Path(os.devnull))
    if plan.out is None:
        return WRITERS["csv" if plan.fmt == "csv" else "jsonl"](None)
    return WRITERS[plan.fmt](plan.out, append=append)


# -- the run ----------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from srn.media.live import is_live_source

    report = Report("image")
    live = [p for p in args.inputs if is_live_source(p)]
    if live:
        return run_live(args, live[0], args.format or "jsonl")
    if any(is_video(p) for p in args.inputs):
        return run_video(args, args.format or "jsonl")
    fmt = output_kind(args.format, args.out)

    import torch
    from tqdm import tqdm

    from srn.inference import sharding
    from srn.inference.stream import detect_files
    from srn.inference.writers import read_jsonl, resolved_image, write_crops

    files = expand_inputs(args.inputs)
    if not files:
        raise UserError("no input images found")
    shard = sharding.Shard.from_env()
    plan = plan_outputs(args, fmt, files, shard)

    device = sharding.join_process_group(shard, args.device) if shard.distributed else args.device
    args.device = device
    detector = build_detector(args, args.score_thresh, args.nms_iou)

    # What is already done (--resume), by resolved path, and where this process writes.
    done, stale_parts = _manifest_and_done(args, plan, shard, detector)
    mine = [index for index in shard.indices(len(files)) if not done or resolved_image(files[index]) not in done]
    if args.resume and shard.rank == 0:
        print(f"srn detect: {len(done)} images already in {plan.out}", file=sys.stderr)

    progress = tqdm(total=len(mine), unit="img", disable=len(mine) < 8 or shard.rank != 0 or None, file=sys.stderr)
    report.progress = progress
    stopped = None  # why the run ended before its last image, if it did
    try:
        with _writer(plan, shard, append=args.resume) as writer, progress:
            try:
                for batch in detect_files(detector, [files[i] for i in mine], args.batch_size, args.workers):
                    for item in batch:
                        if item.faces is None:
                            report.failed(str(item.error))
                            continue
                        index = mine[item.index]
                        # An image's own files first: when one cannot be written (a file where its
                        # folder should be), it fails alone, and without a record --resume redoes it.
                        written = None
                        try:
                            if plan.fmt == "image":
                                assert plan.out is not None
                                written = item.faces.save(plan.out)
                            if plan.vis_dir is not None:
                                written = item.faces.save(plan.vis_path(index))
                            if plan.crops_dir is not None:
                                write_crops(plan.crops_folder(index), item.faces, args.crop_margin)
                        except OutputPathError as exc:
                            report.failed(str(exc))
                            continue
                        writer.write(item.faces)
                        report.item(str(files[index]), len(item.faces), written)
                    writer.flush()
                    progress.update(len(batch))
            except (RuntimeError, OSError, EOFError) as exc:  # a decoding worker killed (or the broken link to it)
                stopped = worker_death(exc)
                if stopped is None:
                    raise
    except torch.OutOfMemoryError:
        raise UserError("out of memory; lower --max-size or --batch-size") from None
    except OutputPathError as exc:  # the records' file itself (a full disk): keep what is written
        if not report.items:
            raise
        stopped = str(exc)
    if stopped is not None:
        kept = f"; the {report.items} images done are in {plan.out}" if plan.out is not None else ""
        print(printable(f"srn detect: error: {stopped}{kept}"), file=sys.stderr)
        report.close("detect")
        return 1

    where = f" (process {shard.rank})" if shard.distributed else ""
    tail = f" -> {plan.out}" if plan.out is not None and not shard.distributed else ""
    code = report.close("detect", where=where, tail=tail)
    failed = len(report.failures)
    if shard.distributed:
        sharding.barrier()
        if shard.rank == 0 and plan.wider is None and plan.out is not None:
            parts = sorted(set(stale_parts) | set(shard.parts(plan.out)))
            keep = read_jsonl(plan.out) if args.resume and fmt == "jsonl" else []
            sharding.merge_parts(plan.out, fmt, files, [p for p in parts if p.exists()], keep)
        failed = sharding.all_processes_sum(failed)  # every process exits 1 if any file failed anywhere
        sharding.leave_process_group()
        return 1 if failed else 0
    if stale_parts:  # a killed torchrun run left parts; --resume counted them as done
        assert plan.out is not None
        sharding.merge_parts(plan.out, fmt, files, stale_parts, read_jsonl(plan.out))
    return code


def _manifest_and_done(args: argparse.Namespace, plan: Plan, shard: Shard, detector) -> tuple[set[str], list[Path]]:
    """The run manifest of a JSON Lines ``--out`` (:class:`srn.inference.writers.RunManifest`):
    written beside it by a new run; with ``--resume``, checked against this run's settings and
    inputs (a mismatch is one line, exit 2). Returns the images that the file, and the parts a
    killed torchrun run left, already hold (resolved paths), and those parts."""
    from srn.inference import sharding
    from srn.inference.writers import RunManifest, weights_identity

    if plan.fmt != "jsonl" or plan.out is None:
        return set(), []
    settings = {"score_thresh": args.score_thresh, "nms_iou": args.nms_iou, "max_size": args.max_size,
                "precision": args.precision, "weights": weights_identity(args.weights)}
    if args.weights is None:
        settings["device"] = detector.device.type  # the shipped model differs by device (int8 on the CPU)
    wanted = RunManifest.for_run(settings, args.inputs)
    existing = RunManifest.read(plan.out) if args.resume else None
    if existing is not None:
        existing.check(wanted, plan.out)
    elif shard.rank == 0:
        if args.resume and plan.out.is_file() and plan.out.stat().st_size > 0:
            print(printable(f"srn detect: warning: {plan.out} has no run manifest; its records are taken as made with "
                            "this run's settings"), file=sys.stderr)
        wanted.write(plan.out)
    if not args.resume:
        return set(), []
    stale_parts = sharding.leftover_parts(plan.out)
    repair = shard.part(plan.out) if shard.distributed else plan.out
    return (existing or wanted).done_images([plan.out, *stale_parts], repair=repair), stale_parts


# -- videos -----------------------------------------------------------------------------------------------


def plan_video_outputs(videos: list[Path], out: str | None, save_vis: str | None) -> list[VideoTargets]:
    """Where each input video's results go, checked (:func:`srn.paths.check_output_file`) before
    any frame is decoded:

    - ``--out X.mp4`` (or .m4v, .mov, .mkv): the video with boxes drawn, plus per-frame JSON lines
      in ``X.jsonl``;
    - ``--out X.jsonl``: the JSON lines only;
    - ``--out DIR`` with several videos: ``DIR/<name>.mp4`` and ``DIR/<name>.jsonl`` for each;
    - no ``--out``, ``--out -`` or ``--out /dev/null``: JSON lines on stdout (or dropped);
    - ``--save-vis DIR``: also ``DIR/<name>.mp4`` with boxes drawn.
    """
    from srn.media.video import OUTPUT_SUFFIXES, VideoTargets

    plans = []
    out_path = Path(out) if out and out != "-" and not is_devnull(out) else None
    as_folder = out_path is not None and (out_path.is_dir() or len(videos) > 1 or not out_path.suffix)
    allowed = ", ".join((*OUTPUT_SUFFIXES, ".jsonl"))
    if out_path is not None and not as_folder and out_path.suffix.lower() not in (*OUTPUT_SUFFIXES, ".jsonl"):
        raise OutputPathError(out_path, f"a video's results are written as {allowed}")
    names = [v.stem for v in videos]
    if len(set(names)) != len(names):
        raise InputPathError(videos[0], "two input videos share a name; run them separately")
    for video in videos:
        targets = VideoTargets([], None)
        if out_path is None:
            pass
        elif as_folder:
            targets.videos.append(out_path / f"{video.stem}.mp4")
            targets.jsonl = out_path / f"{video.stem}.jsonl"
        elif out_path.suffix.lower() == ".jsonl":
            targets.jsonl = out_path
        else:
            targets.videos.append(out_path)
            targets.jsonl = out_path.with_suffix(".jsonl")
        if save_vis:
            targets.videos.append(Path(save_vis) / f"{video.stem}.mp4")
        plans.append(targets)
    for targets in plans:
        for target in targets.videos + ([targets.jsonl] if targets.jsonl else []):
            check_output_file(target, inputs=videos)
    return plans


def _check_stream_options(args: argparse.Namespace, fmt: str, what: str) -> None:
    """The options that a video or a live source cannot honour, as one line."""
    if fmt not in ("json", "jsonl"):
        raise UserError(f"--format {fmt} is for images; {what} write JSON lines")
    if args.resume or args.save_crops:
        raise UserError(f"{'--resume' if args.resume else '--save-crops'} is for images, not {what}")


def run_video(args: argparse.Namespace, fmt: str) -> int:
    """``srn detect`` when the inputs are videos."""
    import contextlib

    import torch

    from srn.media.video import detect_video, require_av

    require_av()
    paths = [Path(p) for p in args.inputs]
    images = [p for p in paths if not is_video(p)]
    if images:
        raise UserError(f"{images[0]}: videos and images cannot be mixed in one call")
    _check_stream_options(args, fmt, "videos")
    for path in paths:
        if not path.is_file():
            raise UserError(f"{path}: no such video file")
    plans = plan_video_outputs(paths, args.out, args.save_vis)
    detector = build_detector(args, args.score_thresh, args.nms_iou)
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(open(os.devnull, "w")) if is_devnull(args.out) else None  # noqa: SIM115
        for path, targets in zip(paths, plans):
            try:
                frames, faces = detect_video(detector, path, targets, args.batch_size, stream=sink)
            except torch.OutOfMemoryError:
                raise UserError("out of memory; lower --max-size or --batch-size") from None
            written = [str(p) for p in targets.videos] + ([str(targets.jsonl)] if targets.jsonl else [])
            print(f"{path}: {plural(frames, 'frame')}, {plural(faces, 'face')}" + (f" -> {', '.join(written)}" if written else ""),
                  file=sys.stderr)
    return 0


# -- live sources -----------------------------------------------------------------------------------------


def run_live(args: argparse.Namespace, source: str, fmt: str) -> int:
    """``srn detect`` on a webcam or a network stream: JSON lines per frame (stdout, or ``--out
    X.jsonl``), the video with boxes drawn (``--out X.mp4``, ``--save-vis DIR``), until the stream
    ends or Ctrl-C; every output is finished either way."""
    import contextlib
    import json
    import shutil

    import torch

    from srn.atomic import atomic_output
    from srn.media.live import LiveReader, process_live, refuse_photo_url, source_name, stop_on_interrupt
    from srn.media.video import VideoWriter, draw_render, require_av

    if len(args.inputs) > 1:
        raise UserError(f"{source}: a live source is read alone; give it without other inputs")
    refuse_photo_url(source)
    require_av()
    _check_stream_options(args, fmt, "live sources")
    (targets,) = plan_video_outputs([Path(source_name(source))], args.out, args.save_vis)
    reader = LiveReader(source, max_queued=4 * args.batch_size)
    report = Report("frame", per_item=False)
    try:
        detector = build_detector(args, args.score_thresh, args.nms_iou)
        with contextlib.ExitStack() as stack:
            if targets.jsonl is not None:
                lines = stack.enter_context(open(targets.jsonl, "w", encoding="utf-8"))  # streamed: kept as far as it got
            else:
                lines = stack.enter_context(open(os.devnull, "w")) if is_devnull(args.out) else sys.stdout
            video_tmp = stack.enter_context(atomic_output(targets.videos[0])) if targets.videos else None
            writer = VideoWriter(video_tmp, reader, targets.videos[0]) if video_tmp is not None else None
            stop = stack.enter_context(stop_on_interrupt())

            def record(frame, faces) -> None:
                lines.write(json.dumps({"video": source, "frame": frame.index, "time": round(frame.time, 4),
                                        "width": faces.width, "height": faces.height, "faces": faces.to_records()}) + "\n")

            try:
                outcome = process_live(detector, reader, args.batch_size, record, writer, draw_render, stop, on_batch=lines.flush)
            except BaseException:
                if writer is not None:
                    writer.abort()
                raise
            if writer is not None:
                writer.close()
        for extra in targets.videos[1:]:
            with atomic_output(extra) as tmp:
                shutil.copyfile(targets.videos[0], tmp)
    except torch.OutOfMemoryError:
        raise UserError("out of memory; lower --max-size or --batch-size") from None
    finally:
        reader.close()
    report.items, report.faces = outcome.frames, outcome.faces
    written = [str(p) for p in targets.videos] + ([str(targets.jsonl)] if targets.jsonl else [])
    how = "stopped by Ctrl-C" if outcome.stopped else ("the stream broke off" if outcome.error else "the stream ended")
    print(f"{source}: {report.summary()}, {how}" + (f" -> {', '.join(written)}" if written else ""), file=sys.stderr)
    if outcome.error:
        print(f"srn detect: {outcome.error}; the frames before it are written", file=sys.stderr)
        return 1
    return 0
