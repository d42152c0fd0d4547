"""``srn detect``: faces in images, folders, globs and videos.

Images are decoded in ``DataLoader`` workers while the network runs (:mod:`srn.inference.stream`),
and each batch's results are written as soon as it completes: JSON Lines and CSV are appended and
flushed per batch, WIDER files, drawings and crops per image, so that a failure or a kill late in a
run loses at most the batch in flight. Only a JSON array is written at the end, atomically.

Under ``torchrun`` the inputs are shared out by rank; each process writes its own part
``OUT.rank<r>.jsonl`` and process 0 merges the parts in input order into ``OUT``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from srn.atomic import atomic_write_text
from srn.cli.common import VIDEO_SUFFIXES, UserError, add_detector_args, build_detector, expand_inputs, float_in, int_at_least, relative_paths
from srn.errors import OutputPathError, PredictionFormatError
from srn.paths import check_output_dir, check_output_file

FORMATS = ("json", "jsonl", "csv", "wider")
CSV_HEADER = ["image", "width", "height", "x1", "y1", "x2", "y2", "score"]
_WIDER_SUFFIXES = (".jpg", ".jpeg", ".png")  # what srn.evaluation.widerface.write_predictions drops

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


@dataclass(frozen=True)
class Shard:
    """This process's share of the inputs under ``torchrun`` (rank 0 of 1 otherwise)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Shard:
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def part(self, out: Path, rank: int | None = None) -> Path:
        """The file that process ``rank`` writes its records to."""
        return out.with_name(f"{out.stem}.rank{self.rank if rank is None else rank}.jsonl")


@dataclass
class Plan:
    """Every output path, checked before the first image is read."""

    fmt: str
    files: list[Path]
    out: Path | None = None
    vis_dir: Path | None = None
    crops_dir: Path | None = None
    relative: list[Path] = field(default_factory=list)  # each input below the inputs' common folder
    wider_keys: list[str] = field(default_factory=list)  # "<event>/<image name>" of each input

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


def _wider_target(key: str) -> str:
    event, _, name = key.rpartition("/")
    stem = os.path.splitext(name)[0] if name.lower().endswith(_WIDER_SUFFIXES) else name
    return f"{event}/{stem}.txt"


def plan_outputs(args: argparse.Namespace, fmt: str, files: list[Path], shard: Shard) -> Plan:
    """Check every output before any detection: one line for the first that cannot be written."""
    plan = Plan(fmt, files)
    if args.resume and not (fmt == "jsonl" and args.out):
        raise UserError("--resume needs --out FILE.jsonl (JSON Lines is the format a run can be resumed from)")
    if fmt == "wider":
        if not args.out:
            raise UserError("--format wider needs --out DIR")
        first: dict[str, Path] = {}
        for path in files:
            event = Path(os.path.abspath(path)).parent.name
            if not event:
                raise UserError(f"{path}: the WIDER format names files by their event folder, and this image is in none")
            key = f"{event}/{path.name}"
            target = _wider_target(key)
            if target in first:
                raise UserError(f"{first[target]} and {path} would both be written to {Path(args.out) / target} (the WIDER format "
                                "names files by event folder and image name); run them separately")
            first[target] = path
            plan.wider_keys.append(key)
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


# -- JSON Lines read back (resume, merge) ----------------------------------------------------------


def read_jsonl(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """The records of a JSON Lines file that a run may have been killed while writing.

    A last line without its newline is torn: it is dropped (and cut from the file with ``repair``).
    Any other line that is not a record is an error naming the file and line.
    """
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data) and repair:
        with open(path, "r+b") as handle:
            handle.truncate(end)
    records = []
    for number, line in enumerate(data[:end].split(b"\n")[:-1], start=1):
        try:
            record = json.loads(line.decode("utf-8", "surrogateescape"))
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("image"), str):
            raise PredictionFormatError(path, number, "not an srn detect record (a JSON object with an \"image\")")
        records.append(record)
    return records


# -- writers ----------------------------------------------------------------------------------------


class _TextSink:
    """Text appended to a file or stdout and flushed on demand; file names that are not UTF-8 are
    written back byte for byte (surrogateescape)."""

    def __init__(self, path: Path | None, append: bool = False) -> None:
        self.handle: TextIO | None = None
        if path is not None:
            self.handle = open(path, "a" if append else "w", encoding="utf-8", errors="surrogateescape", newline="")  # noqa: SIM115

    def write(self, text: str) -> None:
        if self.handle is not None:
            self.handle.write(text)
            return
        buffer = getattr(sys.stdout, "buffer", None)
        if buffer is None:
            sys.stdout.write(text)
        else:
            sys.stdout.flush()
            buffer.write(text.encode("utf-8", "surrogateescape"))

    def flush(self) -> None:
        (self.handle or sys.stdout).flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def csv_rows(record: dict[str, Any]) -> list[list[Any]]:
    """A record's CSV rows: one per face, or one with empty box and score fields for no face."""
    head = [record["image"], record["width"], record["height"]]
    if not record["faces"]:
        return [head + [""] * 5]
    return [head + [*face["box"], face["score"]] for face in record["faces"]]


def csv_text(rows: Iterable[list[Any]], header: bool = False) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(CSV_HEADER)
    writer.writerows(rows)
    return buffer.getvalue()


def render(fmt: str, records: list[dict[str, Any]]) -> str:
    """The whole output file of ``records`` in ``fmt`` (json, jsonl or csv)."""
    if fmt == "json":
        return json.dumps(records, indent=1) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(record) + "\n" for record in records)
    return csv_text((row for record in records for row in csv_rows(record)), header=True)


class RecordWriter:
    """Writes each image's record as it comes, in ``fmt``, to ``target`` (None: stdout).

    jsonl and csv are appended and flushed per batch; json is kept and written atomically by
    :meth:`close`.
    """

    def __init__(self, fmt: str, target: Path | None, append: bool = False) -> None:
        self.fmt, self.target = fmt, target
        self.records: list[dict[str, Any]] = []
        self.sink = None if fmt == "json" else _TextSink(target, append=append)
        if self.sink is not None and fmt == "csv":
            self.sink.write(csv_text([], header=True))
            self.sink.flush()

    def write_batch(self, records: list[dict[str, Any]]) -> None:
        if self.sink is None:
            self.records.extend(records)
            return
        if self.fmt == "jsonl":
            self.sink.write("".join(json.dumps(record) + "\n" for record in records))
        else:
            self.sink.write(csv_text(row for record in records for row in csv_rows(record)))
        self.sink.flush()

    def close(self) -> None:
        if self.sink is not None:
            self.sink.close()
        elif self.target is not None:
            atomic_write_text(self.target, render("json", self.records))
        else:
            sys.stdout.write(render("json", self.records))


# -- drawings and crops -------------------------------------------------------------------------------


def save_crops(folder: Path, faces: Any, margin: float) -> None:
    """Each face as ``folder/face_000.jpg``, ``face_001.jpg`` ... by descending score
    (:meth:`srn.inference.Faces.crops`)."""
    from srn.inference.results import write_image

    for number, crop in enumerate(faces.crops(margin)):
        write_image(folder / f"face_{number:03d}.jpg", crop)


# -- the run ----------------------------------------------------------------------------------------------


def _process_group(shard: Shard, device: str | None) -> str | None:
    """Join ``torchrun``'s process group; returns the device this process runs on."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    if device is None or device == "cuda":
        device = f"cuda:{shard.local_rank}" if torch.cuda.is_available() else "cpu"
    from srn.inference import resolve_device

    resolved = resolve_device(device)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    # A long timeout: process 0 waits at the barrier until the slowest process has done its share.
    dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo", timeout=timedelta(hours=12))
    return str(resolved)


def _barrier() -> None:
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def _merge_parts(plan: Plan, parts: list[Path], keep: list[dict[str, Any]]) -> None:
    """Write ``keep`` and then the parts' records in input order to ``plan.out``; remove the parts."""
    assert plan.out is not None
    position = {str(path): index for index, path in enumerate(plan.files)}
    seen = {record["image"] for record in keep}
    merged = []
    for part in parts:
        merged.extend(record for record in read_jsonl(part) if record["image"] not in seen)
    merged.sort(key=lambda record: position.get(record["image"], len(position)))
    atomic_write_text(plan.out, render(plan.fmt, keep + merged))
    for part in parts:
        part.unlink(missing_ok=True)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from srn.inference.stream import detect_files

    fmt = _resolve_format(args)
    if any(Path(p).suffix.lower() in VIDEO_SUFFIXES for p in args.inputs):
        return run_video(args, fmt)
    files = expand_inputs(args.inputs)
    if not files:
        raise UserError("no input images found")
    shard = Shard.from_env()
    plan = plan_outputs(args, fmt, files, shard)

    # What is already done (--resume) and where this process writes.
    done: set[str] = set()
    stale_parts: list[Path] = []
    if args.resume:
        assert plan.out is not None
        stale_parts = sorted(plan.out.parent.glob(f"{plan.out.stem}.rank*.jsonl"))
        own = shard.part(plan.out) if shard.distributed else plan.out
        for source in [plan.out, *stale_parts]:
            done.update(record["image"] for record in read_jsonl(source, repair=source == own))
    mine = [index for index in range(shard.rank, len(files), shard.world_size) if str(files[index]) not in done]
    if args.resume and shard.rank == 0:
        print(f"srn detect: {len(done)} images already in {plan.out}", file=sys.stderr)

    device = _process_group(shard, args.device) if shard.distributed else args.device
    args.device = device
    detector = build_detector(args, args.score_thresh, args.nms_iou)
    writer = None
    if fmt != "wider":  # WIDER files are written per image below
        target = shard.part(plan.out) if shard.distributed and plan.out is not None else plan.out
        writer = RecordWriter("jsonl" if shard.distributed else fmt, target, append=args.resume)

    failures: list[str] = []
    progress = tqdm(total=len(mine), unit="img", disable=len(mine) < 8 or shard.rank != 0 or None, file=sys.stderr)
    try:
        for batch in detect_files(detector, [files[i] for i in mine], args.batch_size, args.workers):
            records = []
            for item in batch:
                index = mine[item.index]
                if item.faces is None:
                    failures.append(str(item.error))
                    continue
                faces = item.faces
                records.append({"image": str(files[index]), "width": faces.width, "height": faces.height, "faces": faces.to_records()})
                if fmt == "wider":
                    from srn.evaluation.widerface import write_predictions

                    assert plan.out is not None
                    write_predictions(plan.out, {plan.wider_keys[index]: (faces.boxes.cpu().numpy(), faces.scores.cpu().numpy())})
                if plan.vis_dir is not None:
                    faces.save(plan.vis_path(index))
                if plan.crops_dir is not None:
                    save_crops(plan.crops_folder(index), faces, args.crop_margin)
            if writer is not None:
                writer.write_batch(records)
            progress.update(len(batch))
    except torch.OutOfMemoryError:
        raise UserError("out of memory; lower --max-size or --batch-size") from None
    finally:
        progress.close()
        if writer is not None and writer.sink is not None:
            writer.sink.close()  # what was streamed stays; a JSON array is written only below, whole
    if writer is not None and writer.sink is None:
        writer.close()

    failed = len(failures)
    if failures:
        where = f" (process {shard.rank})" if shard.distributed else ""
        print(f"srn detect: {failed} of {len(mine)} files failed{where}:", file=sys.stderr)
        for line in failures:
            print(f"  {line}", file=sys.stderr)
    if shard.distributed:
        import torch.distributed as dist

        _barrier()
        if shard.rank == 0 and writer is not None and plan.out is not None:
            parts = sorted(set(stale_parts) | {shard.part(plan.out, r) for r in range(shard.world_size)})
            keep = read_jsonl(plan.out) if args.resume and fmt == "jsonl" else []
            _merge_parts(plan, [p for p in parts if p.exists()], keep)
        count = torch.tensor([failed], device=f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(count)  # every process exits 1 if any file failed anywhere
        failed = int(count.item())
        dist.destroy_process_group()
    elif stale_parts:  # a killed torchrun run left parts; --resume counted them as done
        _merge_parts(plan, stale_parts, read_jsonl(plan.out))
    return 1 if failed else 0


def run_video(args: argparse.Namespace, fmt: str) -> int:
    """``srn detect`` when the inputs are videos."""
    import torch

    from srn.media.video import detect_video, plan_outputs as plan_video_outputs, require_av

    require_av()
    paths = [Path(p) for p in args.inputs]
    images = [p for p in paths if p.suffix.lower() not in VIDEO_SUFFIXES]
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
