"""The runs behind ``srn detect``: where each output goes, and the run loop over images, videos and
live sources with the sinks that write them.

Images are decoded in ``DataLoader`` workers while the network runs
(:class:`srn.inference.sources.ImageFileSource`), and each batch's results are written as soon as it
completes (:func:`srn.inference.loop.run`): JSON Lines and CSV are appended and flushed per batch,
WIDER files, drawings and crops per image, so that a failure or a kill late in a run loses at most
the batch in flight. Only a JSON array is written at the end, atomically.

Under ``torchrun`` the inputs are shared out by rank; each process writes its own part
``OUT.rank<r>.jsonl`` and process 0 merges the parts in input order into ``OUT``
(:mod:`srn.inference.sharding`). A JSON Lines output carries a run manifest, from which ``resume``
goes on where a stopped run ended (:class:`srn.inference.writers.RunManifest`).

The options a command line may combine are checked by the command line; everything here is about
paths and data, and raises :class:`srn.errors.SRNError` subclasses.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from srn.atomic import exclusive_lock
from srn.errors import InputPathError, OutputBusyError, OutputPathError, printable
from srn.evaluation.wider_writer import WiderWriter
from srn.inference.loop import Observer, RunSummary, failure_line, run
from srn.inference.sharding import Shard, leftover_parts, merge_parts
from srn.inference.sinks import CropsSink, DrawnImageSink, sink_class
from srn.inference.sources import ImageFileSource
from srn.inference.writers import RunManifest, read_jsonl, resolved_image
from srn.media.live import LiveSource, run_live
from srn.media.video import OUTPUT_SUFFIXES, RecordLines, VideoSink, VideoTargets, detect_video, item_errors
from srn.paths import check_output_dir, check_output_file, relative_paths

__all__ = [
    "DRAWN_SUFFIXES",
    "RECORD_SUFFIXES",
    "Plan",
    "crops_name",
    "detect_images",
    "detect_live",
    "detect_videos",
    "claim_outputs",
    "finish_parts",
    "is_devnull",
    "plan_outputs",
    "plan_video_outputs",
    "resume_state",
]

RECORD_SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
# An output with one of these suffixes is the photo with its faces drawn.
DRAWN_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
# Drawn copies keep an input's name where they can write its format, and append .png where they cannot.
VIS_SUFFIXES = frozenset({*DRAWN_SUFFIXES, ".gif"})


def is_devnull(out: str | None) -> bool:
    """Whether ``out`` names the null device (results are computed and dropped)."""
    return out is not None and out != "-" and os.path.realpath(out) == os.path.realpath(os.devnull)


@dataclass
class Plan:
    """Every output path, checked before the first image is read."""

    fmt: str  # json, jsonl, csv, wider or image
    files: list[Path]
    out: Path | None = None  # a file of records, the drawn photo, or the wider folder; None: stdout
    discard: bool = False  # out is the null device
    vis_dir: Path | None = None
    crops_dir: Path | None = None
    relative: list[Path] = field(default_factory=list)  # each input below the inputs' common folder
    position: dict[str, int] = field(default_factory=dict)  # each input (as named in records) -> its index
    wider: WiderWriter | None = None  # the wider sink, made here to refuse two images on one file
    scores: bool = True  # drawn photos show each box's score

    def vis_path(self, index: int) -> Path:
        """``DIR/<input path>``: the input's own name and format, or ``.png`` appended where that
        format cannot be written."""
        assert self.vis_dir is not None
        relative = self.relative[index]
        if relative.suffix.lower() in VIS_SUFFIXES:
            return self.vis_dir / relative
        return self.vis_dir / f"{relative}.png"

    def crops_folder(self, index: int) -> Path:
        """``DIR/<input folder>/<name>_<ext>/``: a/x.jpg -> DIR/a/x_jpg/ (a folder not named like a
        photo, and a/x.png's faces apart from a/x.jpg's)."""
        assert self.crops_dir is not None
        return self.crops_dir / crops_name(self.relative[index])


def crops_name(path: Path) -> Path:
    """The folder of a photo's crops below ``--save-crops``: ``a/x.jpg`` -> ``a/x_jpg``."""
    return path.with_name(f"{path.stem}_{path.suffix[1:]}" if path.suffix else f"{path.name}_faces")


def plan_outputs(fmt: str, files: list[Path], out: str | None, patterns: Sequence[str], shard: Shard,
                 save_vis: str | None = None, save_crops: str | None = None, scores: bool = True) -> Plan:
    """Check every output before any detection: one line for the first that cannot be written.
    (The command line has refused the combinations of options that cannot work.) ``scores``:
    whether drawn photos show each box's score."""
    out = None if out in (None, "-") else out
    plan = Plan(fmt, files, discard=is_devnull(out), scores=scores)
    if fmt == "wider":
        assert out is not None
        plan.wider = WiderWriter(Path(out), files)  # refuses two images on one file
        plan.out = check_output_dir(out, inputs=files)
    elif out and not plan.discard:
        plan.out = check_output_file(out, inputs=files)
        if shard.distributed:
            check_output_file(shard.part(plan.out), inputs=files)
    plan.relative = relative_paths(patterns, files)
    plan.position = {str(path): index for index, path in enumerate(files)}
    # Folders of images may not lie in a folder the inputs search: the next run would read them.
    if save_vis:
        plan.vis_dir = check_output_dir(save_vis, inputs=files, input_patterns=patterns)
    if save_crops:
        plan.crops_dir = check_output_dir(save_crops, inputs=files, input_patterns=patterns)
    if plan.vis_dir is not None:
        sources = {os.path.abspath(f) for f in files}
        for index in range(len(files)):
            target = plan.vis_path(index)
            if os.path.abspath(target) in sources:
                raise OutputPathError(target, "is also an input; refusing to overwrite it")
    return plan


def sinks(plan: Plan, shard: Shard, crop_margin: float = 0.2, append: bool = False) -> list[Any]:
    """Where this process writes: an image's own files first (the drawn photo, drawn copies,
    crops), so that when one cannot be written the image fails alone and without a record (a resumed
    run redoes it); then the records: the output in its format, its part under torchrun, stdout
    (JSON as JSON Lines: compact, one line per image), or nowhere."""
    found: list[Any] = []
    if plan.fmt == "image":
        assert plan.out is not None
        found.append(DrawnImageSink(plan.out, plan.scores))  # the drawn photo is the output; no records
    if plan.vis_dir is not None:
        found.append(DrawnImageSink(lambda item: plan.vis_path(plan.position[item.source]), plan.scores))
    if plan.crops_dir is not None:
        found.append(CropsSink(lambda item: plan.crops_folder(plan.position[item.source]), crop_margin))
    if plan.wider is not None:
        found.append(plan.wider)
    elif plan.fmt == "image":
        pass
    elif shard.distributed:
        assert plan.out is not None
        found.append(sink_class("jsonl")(shard.part(plan.out), append=append))
    elif plan.discard:
        found.append(sink_class("csv" if plan.fmt == "csv" else "jsonl")(Path(os.devnull)))
    elif plan.out is None:
        found.append(sink_class("csv" if plan.fmt == "csv" else "jsonl")(None))
    else:
        found.append(sink_class(plan.fmt)(plan.out, append=append))
    return found


@contextlib.contextmanager
def claim_outputs(plan: Plan, shard: Shard) -> Iterator[None]:
    """Hold the run's output (with its manifest), and under torchrun this process's part, for the
    block (:func:`srn.atomic.exclusive_lock`): a second run on them is one line, before anything is
    written. stdout and the null device are no one's."""
    with contextlib.ExitStack() as stack:
        if plan.out is not None and not plan.discard:
            if shard.rank == 0:
                stack.enter_context(exclusive_lock(plan.out))
            if shard.distributed and plan.wider is None:
                stack.enter_context(exclusive_lock(shard.part(plan.out)))
        yield


def resume_state(plan: Plan, shard: Shard, settings: dict[str, Any], patterns: Sequence[str], resume: bool,
                 warn: Callable[[str], None]) -> tuple[set[str], list[Path]]:
    """The run manifest of a JSON Lines output (:class:`srn.inference.writers.RunManifest`):
    written beside it by a new run; when resuming, checked against this run's ``settings``, inputs
    and folder (a mismatch is an :class:`srn.errors.OutputPathError`). A file without a manifest is
    resumed only when every record in it is of an input of this run. Returns the images that the
    file, and the parts a killed torchrun run left, already hold (resolved paths), and those parts."""
    if plan.fmt != "jsonl" or plan.out is None:
        return set(), []
    wanted = RunManifest.for_run(settings, patterns)
    existing = RunManifest.read(plan.out) if resume else None
    if existing is not None:
        existing.check(wanted, plan.out, relative_inputs=any(not os.path.isabs(p) for p in patterns))
    else:
        if resume and plan.out.is_file() and plan.out.stat().st_size > 0:
            _only_inputs(plan, read_jsonl(plan.out))
            if shard.rank == 0:
                warn(f"{plan.out} has no run manifest; its records are taken as made with this run's settings")
        if shard.rank == 0:
            wanted.write(plan.out)
    if not resume:
        return set(), []
    stale_parts = leftover_parts(plan.out)
    repair = shard.part(plan.out) if shard.distributed else plan.out
    return (existing or wanted).done_images([plan.out, *stale_parts], repair=repair), stale_parts


def _only_inputs(plan: Plan, records: Sequence[dict[str, Any]]) -> None:
    """Refuse a file without a manifest that holds a record of an image that is not an input."""
    inputs = {resolved_image(path) for path in plan.files}
    foreign = [record["image"] for record in records if resolved_image(record["image"]) not in inputs]
    if foreign:
        assert plan.out is not None
        raise OutputPathError(plan.out, f"has no run manifest, and {len(foreign)} of its {len(records)} records are "
                                        f"of images that are not inputs of this run ({printable(foreign[0])}, ...); "
                                        "resume only a file this run made, or write a new file")


def detect_images(detector: Any, plan: Plan, shard: Shard, indices: Sequence[int], batch_size: int, workers: int,
                  crop_margin: float = 0.2, append: bool = False, observer: Observer | None = None) -> RunSummary:
    """The run over the images ``plan.files[i]`` for ``i`` in ``indices`` (this process's share,
    less those already done), into :func:`sinks`."""
    source = ImageFileSource([plan.files[i] for i in indices], workers)
    return run(detector, source, sinks(plan, shard, crop_margin, append), batch_size, observer=observer,
               progress=False if shard.rank != 0 else None)


def finish_parts(plan: Plan, shard: Shard, stale_parts: Sequence[Path], resume: bool) -> None:
    """After every process is done (under torchrun, process 0 only): merge the parts into the
    output in input order, after what a resumed output already held; alone, merge the parts a killed
    torchrun run left."""
    if plan.out is None or plan.wider is not None:
        return
    if shard.distributed:
        if shard.rank == 0:
            parts = sorted(set(stale_parts) | set(shard.parts(plan.out)))
            keep = read_jsonl(plan.out) if resume and plan.fmt == "jsonl" else []
            merge_parts(plan.out, plan.fmt, plan.files, [p for p in parts if p.exists()], keep)
    elif stale_parts:  # a killed torchrun run left parts; resuming counted them as done
        merge_parts(plan.out, plan.fmt, plan.files, stale_parts, read_jsonl(plan.out))


# -- videos and live sources ----------------------------------------------------------------------


def plan_video_outputs(videos: list[Path], out: str | None, save_vis: str | None, scores: bool = True) -> list[VideoTargets]:
    """Where each input video's results go, checked (:func:`srn.paths.check_output_file`) before
    any frame is decoded:

    - ``out`` ``X.mp4`` (or .m4v, .mov, .mkv): the video with boxes drawn, plus per-frame JSON lines
      in ``X.jsonl``;
    - ``X.jsonl``: the JSON lines only;
    - a folder ``DIR`` with several videos: ``DIR/<name>.mp4`` and ``DIR/<name>.jsonl`` for each;
    - None, ``-`` or the null device: JSON lines on stdout (or dropped);
    - ``save_vis`` ``DIR``: also ``DIR/<name>.mp4`` with boxes drawn;

    with each box's score unless ``scores`` is False.
    """
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
        targets = VideoTargets([], None, scores)
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


def written(targets: VideoTargets) -> list[str]:
    """The files a video's or a live source's run writes, for the line that says so."""
    return [str(p) for p in targets.videos] + ([str(targets.jsonl)] if targets.jsonl else [])


def detect_videos(detector: Any, paths: Sequence[Path], plans: Sequence[VideoTargets], batch_size: int,
                  discard: bool = False, done: Callable[[Path, int, int], None] = lambda path, frames, faces: None,
                  failed: Callable[[str], None] = lambda line: None) -> int:
    """Each video's run (:func:`srn.media.video.detect_video`), its output files held for it
    (:func:`srn.atomic.exclusive_lock`); ``done(path, frames, faces)`` after each. A video that
    cannot be read or written is one line to ``failed`` (its files are not written) and the next
    one goes on; returns how many failed. With ``discard`` the JSON lines of videos without a file
    for them are dropped."""
    failures = 0
    with contextlib.ExitStack() as stack:
        stream = stack.enter_context(open(os.devnull, "w")) if discard else None  # noqa: SIM115
        for path, targets in zip(paths, plans):
            try:
                with contextlib.ExitStack() as held:
                    for target in _outputs(targets):
                        held.enter_context(exclusive_lock(target))
                    frames, faces = detect_video(detector, path, targets, batch_size, stream=stream)
            except OutputBusyError:
                raise
            except item_errors() as exc:
                failures += 1
                failed(failure_line(path, exc))
                continue
            done(path, frames, faces)
    return failures


def _outputs(targets: VideoTargets) -> list[Path]:
    return [*targets.videos, *([targets.jsonl] if targets.jsonl else [])]


def detect_live(detector_factory: Callable[[], Any], source: str, targets: VideoTargets, batch_size: int,
                discard: bool = False, stdout: TextIO | None = None) -> RunSummary:
    """A live source's run until the stream ends, breaks off or Ctrl-C: JSON lines per frame (to
    ``targets.jsonl``, or ``stdout``, or nowhere with ``discard``), flushed per batch, and the video
    with boxes drawn (``targets.videos``); every output is finished either way. The detector is
    made by ``detector_factory`` once the source is open."""
    from srn.atomic import atomic_output

    def outputs(stack: contextlib.ExitStack, frames: LiveSource) -> list[Any]:
        if targets.jsonl is not None:
            lines = stack.enter_context(open(targets.jsonl, "w", encoding="utf-8"))  # streamed: kept as far as it got
        else:
            lines = stack.enter_context(open(os.devnull, "w")) if discard else (stdout or sys.stdout)
        found: list[Any] = [RecordLines(lines, flush=True)]
        if targets.videos:
            video_tmp = stack.enter_context(atomic_output(targets.videos[0]))
            found.append(VideoSink(video_tmp, frames.reader, targets.render, targets.videos[0]))
        return found

    with contextlib.ExitStack() as held:
        for target in _outputs(targets):
            held.enter_context(exclusive_lock(target))
        summary = run_live(source, detector_factory, outputs, batch_size)
    for extra in targets.videos[1:]:
        with atomic_output(extra, size=os.path.getsize(targets.videos[0])) as tmp:
            shutil.copyfile(targets.videos[0], tmp)
    return summary
