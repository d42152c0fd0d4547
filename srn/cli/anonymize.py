"""``srn anonymize``: blur, pixelate or black out the faces in images, folders, videos and live sources."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

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
from srn.errors import OutputCollisionError, OutputPathError, SRNError, printable
from srn.paths import IMAGE_SUFFIXES, VIDEO_SUFFIXES, check_output_dir, expand_inputs, is_video, relative_paths

# srn.media.anonymize's METHODS and MASKS, spelled out: importing it would import torch for `srn --help`.
METHODS = ("blur", "mosaic", "solid")
MASKS = ("box", "ellipse")
# benchmarks/RESULTS.md, "Anonymisation masks": the ellipse leaves 8.8% of a labelled face's box
# visible on average, the box 2.9%; deface's ellipse default is not followed.
DEFAULT_MASK = "box"
SUFFIX = "_anonymized"
MAX_MASK_SCALE = 10.0  # ten times a face's box covers its surroundings; beyond that is a mistake

DESCRIPTION = """\
Hide the faces in images, videos and live sources: each detected face's box, grown --mask-scale
times around its centre, is blurred, pixelated or filled with black, inside the ellipse that the
grown box holds (--mask ellipse) or all of it (--mask box).

Without --out, each file is written beside itself as NAME_anonymized.EXT (NAME_anonymized_1.EXT
and so on when that exists: nothing is ever overwritten), and a folder is mirrored into
FOLDER_anonymized/. With --out DIR, every input is written under DIR with its path below the
inputs' common folder (a/x.jpg and b/x.jpg become DIR/a/x.jpg and DIR/b/x.jpg), never over an
input, and never inside a folder the inputs search. Images keep their format (JPEG at quality 95;
no metadata is copied), their frames (GIF, animated PNG and WebP: the faces of every frame are
hidden), pages (TIFF), alpha channel and 16-bit depth, or a warning says what could not be kept.
Videos become H.264
with their sound, in their container (x.avi and x.webm, which cannot hold H.264, become .mp4);
they need the 'video' extra. A live source (a webcam number such as 0, or an rtsp://, http(s)://
... stream URL) is written as NAME_anonymized.mp4 (or DIR/NAME.mp4) until it ends or Ctrl-C.

What is printed: on a terminal, a line per file ("photo.jpg: 2 faces -> photo_anonymized.jpg");
always, a closing summary ("3 files, 5 faces, 0 failed in 4.2 s").

Examples:
  srn anonymize photo.jpg                                 photo_anonymized.jpg beside it
  srn anonymize photos/                                   photos_anonymized/, the same tree
  srn anonymize photos/ --out anonymized/ --method mosaic --mask-scale 1.5
  srn anonymize 'shoot/**/*.jpg' --out anonymized/ --method solid --score-thresh 0.2
  srn anonymize interview.mp4 --out anonymized/          anonymized/interview.mp4, sound kept
  srn anonymize 0                                         the first webcam -> webcam0_anonymized.mp4
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "anonymize", help="blur, pixelate or black out faces in images, videos and live sources",
        description=DESCRIPTION, formatter_class=HelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="PATH",
                        help="images, videos, folders (searched recursively for both) or globs; or one webcam number or stream URL")
    parser.add_argument("--out", metavar="DIR", help="folder for the anonymised files, created if missing (default: beside each input, see above)")
    parser.add_argument("--method", choices=METHODS, default="blur", help="blur (Gaussian), mosaic (blocks) or solid (black)")
    parser.add_argument("--mask", choices=MASKS, default=DEFAULT_MASK, help="hide the ellipse inside the grown box, or the whole box")
    parser.add_argument("--mask-scale", type=float_in(0.0, MAX_MASK_SCALE, low_open=True), default=1.3,
                        help=f"grow each box this many times around its centre before hiding it, in (0, {MAX_MASK_SCALE:g}]")
    parser.add_argument("--score-thresh", type=float_in(0.0, 1.0), default=0.2,
                        help="hide faces scoring at least this, in [0, 1] (default 0.2: better a blurred elbow than a missed face)")
    parser.add_argument("--nms-iou", type=float_in(0.0, 1.0, low_open=True), default=None, help="NMS IoU, in (0, 1] (default: the model's, 0.4)")
    parser.add_argument("--workers", type=int_at_least(0), default=default_workers(),
                        help=f"processes that decode images; 0 decodes in the main process (default: {default_workers()} here: "
                             "0 on 1 or 2 cores, 1 on 3 to 7, then one per 4 cores up to 4)")
    add_detector_args(parser)
    parser.set_defaults(func=run)


# -- where the outputs go ---------------------------------------------------------------------------


def _h264_name(name: Path) -> Path:
    """``name`` with ``.mp4`` appended when it is a video whose container cannot hold H.264."""
    from srn.media.video import OUTPUT_SUFFIXES

    if is_video(name) and name.suffix.lower() not in OUTPUT_SUFFIXES:
        return name.with_name(f"{name.name}.mp4")
    return name


def output_names(patterns: Sequence[str], files: Sequence[Path]) -> list[Path]:
    """Each input's path below the inputs' common folder (named folders count as themselves, files
    by theirs), with ``.mp4`` appended to videos whose container cannot hold H.264."""
    return [_h264_name(name) if is_video(path) else name for path, name in zip(files, relative_paths(patterns, files))]


def free_name(path: Path, taken: set[str], folder: bool = False) -> Path:
    """``path``, or ``stem_1.ext``, ``stem_2.ext`` ... (``name_1`` ... for a ``folder``): the first
    that neither exists nor is in ``taken`` (the names already given to other inputs of this run)."""
    stem, suffix = (path.name, "") if folder else (path.stem, path.suffix)
    candidate, number = path, 0
    while os.path.lexists(candidate) or os.path.abspath(candidate) in taken:
        number += 1
        candidate = path.with_name(f"{stem}_{number}{suffix}")
    taken.add(os.path.abspath(candidate))
    return candidate


def beside_names(patterns: Sequence[str], suffixes: frozenset[str]) -> tuple[list[Path], list[Path]]:
    """The inputs and their outputs when there is no ``--out``: a file ``x.jpg`` becomes
    ``x_anonymized.jpg`` beside it, a named folder ``photos`` is mirrored into
    ``photos_anonymized/`` beside it; names that exist get a number, never overwritten."""
    files: list[Path] = []
    targets: list[Path] = []
    seen: set[str] = set()
    taken: set[str] = set()
    for pattern in patterns:
        found = [f for f in expand_inputs([pattern], suffixes) if os.path.realpath(f) not in seen]
        seen.update(os.path.realpath(f) for f in found)
        folder = Path(pattern)
        if folder.is_dir() and any(f != folder for f in found):
            base = folder if folder.name not in ("", ".", "..") else folder.resolve()
            mirror = free_name(base.with_name(f"{base.name}{SUFFIX}"), taken, folder=True)
            names = relative_paths([pattern], found)
            targets += [mirror / (_h264_name(name) if is_video(f) else name) for f, name in zip(found, names)]
        else:
            for path in found:
                name = path.with_name(f"{path.stem}{SUFFIX}{path.suffix}")
                if is_video(path) and _h264_name(path) != path:
                    name = path.with_name(f"{path.stem}{SUFFIX}.mp4")
                targets.append(free_name(name, taken))
        files += found
    return files, targets


def plan_outputs(out: str | None, patterns: Sequence[str], files: Sequence[Path] | None = None) -> tuple[list[Path], list[Path]]:
    """The inputs and every output path, checked before the first file is read: each folder can
    be written, no two inputs share an output, and no output is an input."""
    suffixes = IMAGE_SUFFIXES | VIDEO_SUFFIXES  # folders: images and videos
    if out is None:
        files, targets = beside_names(patterns, suffixes)
        for folder in sorted({str(t.parent) for t in targets}):
            check_output_dir(folder, inputs=[])
    else:
        files = list(files) if files is not None else expand_inputs(patterns, suffixes)
        folder = check_output_dir(out, inputs=files, input_patterns=patterns)
        targets = [folder / name for name in output_names(patterns, files)]
    first: dict[str, Path] = {}
    for source, target in zip(files, targets):
        key = os.path.realpath(target)
        if key in first:
            raise OutputCollisionError(first[key], source, target)
        first[key] = source
    sources = {os.path.realpath(f) for f in files}
    for target in targets:
        if os.path.realpath(target) in sources:
            raise OutputPathError(target, "is also an input; refusing to overwrite it")
    return list(files), targets


# -- the run ----------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from srn.media.live import is_live_source

    live = [p for p in args.inputs if is_live_source(p)]
    if live:
        return run_live(args, live[0])

    import torch
    from tqdm import tqdm

    from srn.inference import write_image
    from srn.inference.stream import detect_files
    from srn.media.anonymize import anonymize
    from srn.media.image_file import anonymize_image_file, what_rgb_loses

    report = Report("file")
    files, targets = plan_outputs(args.out, args.inputs)
    if not files:
        raise UserError("no input images or videos found")
    videos = [i for i, path in enumerate(files) if is_video(path)]
    images = [i for i, path in enumerate(files) if not is_video(path)]
    if videos:
        from srn.media.video import require_av

        require_av()
    detector = build_detector(args, args.score_thresh, args.nms_iou)

    def hide(image, faces):
        return anonymize(image, faces.boxes, method=args.method, mask=args.mask, mask_scale=args.mask_scale)

    def detect_boxes(frames):
        return [faces.boxes for faces in detector.detect(frames)]

    try:
        if images:
            with tqdm(total=len(images), unit="img", disable=len(images) < 8 or None, file=sys.stderr) as progress:
                report.progress = progress
                try:
                    for batch in detect_files(detector, [files[i] for i in images], args.batch_size, args.workers):
                        for item in batch:
                            if item.faces is None:
                                report.failed(str(item.error))
                                continue
                            source, target = files[images[item.index]], targets[images[item.index]]
                            try:
                                lost = what_rgb_loses(source)
                                if lost:  # frames, pages, alpha or 16 bits: rewritten from the file itself
                                    notes = anonymize_image_file(source, target, detect_boxes, method=args.method, mask=args.mask,
                                                                 mask_scale=args.mask_scale, first_boxes=item.faces.boxes)
                                    for note in notes:
                                        print(printable(f"srn anonymize: warning: {source}: {note}"), file=sys.stderr)
                                else:
                                    write_image(target, hide(item.faces.image, item.faces))
                            except (OSError, SRNError, ValueError) as exc:
                                report.failed(_reason(target, exc))
                                continue
                            report.item(str(source), len(item.faces), target)
                        progress.update(len(batch))
                except (RuntimeError, OSError, EOFError) as exc:  # a decoding worker killed: what is written stays
                    stopped = worker_death(exc)
                    if stopped is None:
                        raise
                    print(printable(f"srn anonymize: error: {stopped}; the {report.items} files done are written"),
                          file=sys.stderr)
                    report.close("anonymize")
                    return 1
            report.progress = None
        for index in videos:
            _anonymize_video(detector, files[index], targets[index], args.batch_size, hide, report)
    except torch.OutOfMemoryError:
        raise UserError("out of memory; lower --max-size or --batch-size") from None
    return report.close("anonymize", tail=f" -> {args.out}" if args.out else "")


def _reason(path: Path, exc: BaseException) -> str:
    """One line for a failed file: errors of the package name their file already."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, SRNError):
        return text
    if isinstance(exc, OSError) and exc.strerror:
        return f"{path}: {exc.strerror}"
    return f"{path}: {text}"


def _anonymize_video(detector, path: Path, target: Path, batch_size: int, hide, report: Report) -> None:
    """Write ``path`` anonymised to ``target``, and say so (or why not) in ``report``."""
    from srn.atomic import atomic_output
    from srn.media.video import process_video

    faces = 0

    def count(frame, found) -> None:
        nonlocal faces
        faces += len(found)

    try:
        with atomic_output(target) as tmp:
            frames = process_video(detector, path, batch_size, tmp, render=hide, on_frame=count, output_name=target)
    except (OSError, SRNError) as exc:
        report.failed(_reason(path, exc))
        return
    report.item(str(path), faces, target)
    if not report.per_item:
        print(f"{path}: {plural(frames, 'frame')}, {plural(faces, 'face')} -> {target}", file=sys.stderr)


def run_live(args: argparse.Namespace, source: str) -> int:
    """``srn anonymize`` on a webcam or a network stream: the anonymised video, until the stream
    ends or Ctrl-C, which finishes the file."""
    import contextlib

    import torch

    from srn.atomic import atomic_output
    from srn.media.anonymize import anonymize
    from srn.media.live import LiveReader, process_live, refuse_photo_url, source_name, stop_on_interrupt
    from srn.media.video import VideoWriter, require_av

    if len(args.inputs) > 1:
        raise UserError(f"{source}: a live source is read alone; give it without other inputs")
    refuse_photo_url(source)
    require_av()
    name = source_name(source)
    if args.out is None:
        target = free_name(Path(f"{name}{SUFFIX}.mp4"), set())
    else:
        target = check_output_dir(args.out) / f"{name}.mp4"
    from srn.paths import check_output_file

    check_output_file(target)
    reader = LiveReader(source, max_queued=4 * args.batch_size)
    report = Report("frame", per_item=False)

    def hide(image, faces):
        return anonymize(image, faces.boxes, method=args.method, mask=args.mask, mask_scale=args.mask_scale)

    try:
        detector = build_detector(args, args.score_thresh, args.nms_iou)
        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(atomic_output(target))
            writer = VideoWriter(tmp, reader, target)
            stop = stack.enter_context(stop_on_interrupt())
            try:
                outcome = process_live(detector, reader, args.batch_size, None, writer, hide, stop)
            except BaseException:
                writer.abort()
                raise
            writer.close()
    except torch.OutOfMemoryError:
        raise UserError("out of memory; lower --max-size or --batch-size") from None
    finally:
        reader.close()
    report.items, report.faces = outcome.frames, outcome.faces
    how = "stopped by Ctrl-C" if outcome.stopped else ("the stream broke off" if outcome.error else "the stream ended")
    print(f"{source}: {report.summary()}, {how} -> {target}", file=sys.stderr)
    if outcome.error:
        print(f"srn anonymize: {outcome.error}; the frames before it are written", file=sys.stderr)
        return 1
    return 0
