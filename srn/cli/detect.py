"""``srn detect``: faces in images, folders, globs and videos.

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

from srn.cli.common import UserError, add_detector_args, build_detector, float_in, int_at_least
from srn.errors import InputPathError, OutputPathError
from srn.paths import check_output_dir, check_output_file, expand_inputs, is_video, relative_paths

if TYPE_CHECKING:
    from srn.evaluation.wider_writer import WiderWriter
    from srn.inference.sharding import Shard
    from srn.inference.writers import RecordWriter
    from srn.media.video import VideoTargets

FORMATS = ("json", "jsonl", "csv", "wider")

DESCRIPTION = """\
Detect faces in images, folders (searched recursively) and globs, or in videos.

Output formats (--format; by default taken from --out's suffix: .jsonl, .csv, else json):
  jsonl  one JSON record per line, {"image", "width", "height", "faces": [{"box", "score"}]},
         written and flushed as each batch completes; the lossless streaming format, and the one
         --resume reads back
  json   the same records as one JSON array, written when the run ends
  csv    image,width,height,x1,y1,x2,y2,score: one row per face; an image without faces gets one
         row with empty box and score fields, so that "no faces" differs from "not processed"
  wider  the WIDER FACE submission layout, OUT/<event folder>/<image name>.txt

--save-vis and --save-crops mirror the inputs' tree below the folder that holds them all, so that
no two inputs share an output: a/x.jpg -> DIR/a/x.jpg.png (drawn), DIR/a/x.jpg/face_000.jpg (crops).

Examples:
  srn detect photo.jpg                                 JSON on stdout
  srn detect photos/ --out faces.jsonl --workers 4     streamed, one line per image
  srn detect photos/ --out faces.jsonl --resume        go on where a stopped run ended
  srn detect photos/ --save-vis vis/ --save-crops crops/ --crop-margin 0.3
  srn detect 'val/**/*.jpg' --format wider --out preds/ --score-thresh 0.01
  torchrun --nproc_per_node=4 -m srn detect photos/ --out faces.jsonl
"""


def register(sub: argparse._SubParsersAction) -> None:
    from srn.inference.stream import default_workers

    detect = sub.add_parser(
        "detect", help="detect faces in images", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    detect.add_argument("inputs", nargs="+", metavar="PATH", help="image files, folders or globs (or videos)")
    detect.add_argument("--format", choices=FORMATS, default=None, help="output format (see above)")
    detect.add_argument("--out", help="output file (json/jsonl/csv; default stdout) or folder (wider)")
    detect.add_argument("--resume", action="store_true", help="jsonl: skip the images already in --out (a torn last line is dropped)")
    detect.add_argument("--save-vis", metavar="DIR", help="also write each image with its boxes drawn, as DIR/<input path>.png")
    detect.add_argument("--save-crops", metavar="DIR", help="also write each face, as DIR/<input path>/face_000.jpg ...")
    detect.add_argument("--crop-margin", type=float_in(0.0), default=0.2, help="crops: margin around the box, as a fraction of its width and height (default 0.2)")
    detect.add_argument("--workers", type=int_at_least(0), default=default_workers(), help="processes that decode images (default: min(4, cores); 0: decode in the main process)")
    detect.add_argument("--score-thresh", type=float_in(0.0, 1.0), default=0.5, help="keep faces scoring at least this, in [0, 1] (default 0.5)")
    detect.add_argument("--nms-iou", type=float_in(0.0, 1.0, low_open=True), default=None, help="NMS IoU, in (0, 1] (default: the model's, 0.4)")
    add_detector_args(detect)
    detect.set_defaults(func=run)


# -- where the outputs go ---------------------------------------------------------------------------


@dataclass
class Plan:
    """Every output path, checked before the first image is read."""

    fmt: str
    files: list[Path]
    out: Path | None = None
    vis_dir: Path | None = None
    crops_dir: Path | None = None
    relative: list[Path] = field(default_factory=list)  # each input below the inputs' common folder
    wider: WiderWriter | None = None  # --format wider's writer, made here to refuse two images on one file

    def vis_path(self, index: int) -> Path:
        assert self.vis_dir is not None
        return self.vis_dir / f"{self.relative[index]}.png"

    def crops_folder(self, index: int) -> Path:
        assert self.crops_dir is not None
        return self.crops_dir / self.relative[index]


def _resolve_format(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    suffix = Path(args.out).suffix.lower() if args.out else ""
    return {".jsonl": "jsonl", ".csv": "csv"}.get(suffix, "json")


def plan_outputs(args: argparse.Namespace, fmt: str, files: list[Path], shard: Shard) -> Plan:
    """Check every output before any detection: one line for the first that cannot be written."""
    plan = Plan(fmt, files)
    if args.resume and not (fmt == "jsonl" and args.out):
        raise UserError("--resume needs --out FILE.jsonl (JSON Lines is the format a run can be resumed from)")
    if fmt == "wider":
        if not args.out:
            raise UserError("--format wider needs --out DIR")
        from srn.evaluation.wider_writer import WiderWriter

        plan.wider = WiderWriter(Path(args.out), files)  # refuses two images on one file
        plan.out = check_output_dir(args.out, inputs=files)
    elif args.out:
        plan.out = check_output_file(args.out, inputs=files)
        if shard.distributed:
            check_output_file(shard.part(plan.out), inputs=files)
    elif shard.distributed:
        raise UserError("under torchrun, give --out FILE: each process writes its own part, and process 0 merges them")

    plan.relative = relative_paths(args.inputs, files)
    if args.save_vis and args.save_crops and Path(args.save_vis).resolve() == Path(args.save_crops).resolve():
        raise UserError("--save-vis and --save-crops need two different folders")
    if args.save_vis:
        plan.vis_dir = check_output_dir(args.save_vis, inputs=files)
    if args.save_crops:
        plan.crops_dir = check_output_dir(args.save_crops, inputs=files)
    if plan.vis_dir is not None:
        sources = {os.path.abspath(f) for f in files}
        for index in range(len(files)):
            target = plan.vis_path(index)
            if os.path.abspath(target) in sources:
                raise OutputPathError(target, "is also an input; refusing to overwrite it")
    return plan


def _writer(plan: Plan, shard: Shard, append: bool) -> RecordWriter:
    """Where this process writes its records: ``--out`` in its format, or its part under torchrun."""
    from srn.inference.writers import WRITERS, JsonLinesWriter

    if plan.wider is not None:
        return plan.wider
    if shard.distributed:
        assert plan.out is not None
        return JsonLinesWriter(shard.part(plan.out), append=append)
    return WRITERS[plan.fmt](plan.out, append=append)


# -- the run ----------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from srn.inference import sharding
    from srn.inference.stream import detect_files
    from srn.inference.writers import done_images, read_jsonl, write_crops

    fmt = _resolve_format(args)
    if any(is_video(p) for p in args.inputs):
        return run_video(args, fmt)
    files = expand_inputs(args.inputs)
    if not files:
        raise UserError("no input images found")
    shard = sharding.Shard.from_env()
    plan = plan_outputs(args, fmt, files, shard)

    # What is already done (--resume) and where this process writes.
    done: set[str] = set()
    stale_parts: list[Path] = []
    if args.resume:
        assert plan.out is not None
        stale_parts = sharding.leftover_parts(plan.out)
        done = done_images([plan.out, *stale_parts], repair=shard.part(plan.out) if shard.distributed else plan.out)
    mine = [index for index in shard.indices(len(files)) if str(files[index]) not in done]
    if args.resume and shard.rank == 0:
        print(f"srn detect: {len(done)} images already in {plan.out}", file=sys.stderr)

    device = sharding.join_process_group(shard, args.device) if shard.distributed else args.device
    args.device = device
    detector = build_detector(args, args.score_thresh, args.nms_iou)

    failures: list[str] = []
    progress = tqdm(total=len(mine), unit="img", disable=len(mine) < 8 or shard.rank != 0 or None, file=sys.stderr)
    try:
        with _writer(plan, shard, append=args.resume) as writer, progress:
            for batch in detect_files(detector, [files[i] for i in mine], args.batch_size, args.workers):
                for item in batch:
                    if item.faces is None:
                        failures.append(str(item.error))
                        continue
                    index = mine[item.index]
                    writer.write(item.faces)
                    if plan.vis_dir is not None:
                        item.faces.save(plan.vis_path(index))
                    if plan.crops_dir is not None:
                        write_crops(plan.crops_folder(index), item.faces, args.crop_margin)
                writer.flush()
                progress.update(len(batch))
    except torch.OutOfMemoryError:
        raise UserError("out of memory; lower --max-size or --batch-size") from None

    failed = len(failures)
    if failures:
        where = f" (process {shard.rank})" if shard.distributed else ""
        print(f"srn detect: {failed} of {len(mine)} files failed{where}:", file=sys.stderr)
        for line in failures:
            print(f"  {line}", file=sys.stderr)
    if shard.distributed:
        sharding.barrier()
        if shard.rank == 0 and plan.wider is None and plan.out is not None:
            parts = sorted(set(stale_parts) | set(shard.parts(plan.out)))
            keep = read_jsonl(plan.out) if args.resume and fmt == "jsonl" else []
            sharding.merge_parts(plan.out, fmt, files, [p for p in parts if p.exists()], keep)
        failed = sharding.all_processes_sum(failed)  # every process exits 1 if any file failed anywhere
        sharding.leave_process_group()
    elif stale_parts:  # a killed torchrun run left parts; --resume counted them as done
        assert plan.out is not None
        sharding.merge_parts(plan.out, fmt, files, stale_parts, read_jsonl(plan.out))
    return 1 if failed else 0


# -- videos -----------------------------------------------------------------------------------------------


def plan_video_outputs(videos: list[Path], out: str | None, save_vis: str | None) -> list[VideoTargets]:
    """Where each input video's results go, checked (:func:`srn.paths.check_output_file`) before
    any frame is decoded:

    - ``--out X.mp4`` (or .m4v, .mov, .mkv): the video with boxes drawn, plus per-frame JSON lines
      in ``X.jsonl``;
    - ``--out X.jsonl``: the JSON lines only;
    - ``--out DIR`` with several videos: ``DIR/<name>.mp4`` and ``DIR/<name>.jsonl`` for each;
    - no ``--out``: JSON lines on stdout;
    - ``--save-vis DIR``: also ``DIR/<name>.mp4`` with boxes drawn.
    """
    from srn.media.video import OUTPUT_SUFFIXES, VideoTargets

    plans = []
    out_path = Path(out) if out else None
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


def run_video(args: argparse.Namespace, fmt: str) -> int:
    """``srn detect`` when the inputs are videos."""
    import torch

    from srn.media.video import detect_video, require_av

    require_av()
    paths = [Path(p) for p in args.inputs]
    images = [p for p in paths if not is_video(p)]
    if images:
        raise UserError(f"{images[0]}: videos and images cannot be mixed in one call")
    if fmt not in ("json", "jsonl"):
        raise UserError(f"--format {fmt} is for images; videos write JSON lines")
    if args.resume or args.save_crops:
        raise UserError(f"{'--resume' if args.resume else '--save-crops'} is for images, not videos")
    for path in paths:
        if not path.is_file():
            raise UserError(f"{path}: no such video file")
    plans = plan_video_outputs(paths, args.out, args.save_vis)
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
