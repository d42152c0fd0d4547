"""``srn anonymize``: blur, pixelate or black out the faces in images, folders and videos."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from srn.cli.common import UserError, add_detector_args, build_detector, float_in, int_at_least
from srn.errors import OutputCollisionError, OutputPathError, SRNError
from srn.paths import IMAGE_SUFFIXES, VIDEO_SUFFIXES, check_output_dir, expand_inputs, is_video, relative_paths

# srn.media.anonymize's METHODS and MASKS, spelled out: importing it would import torch for `srn --help`.
METHODS = ("blur", "mosaic", "solid")
MASKS = ("box", "ellipse")

DESCRIPTION = """\
Hide the faces in images and videos: each detected face's box, grown --mask-scale times around its
centre, is blurred, pixelated or filled with black.

Every input is written under --out DIR with its path below the inputs' common folder (a/x.jpg and
b/x.jpg become DIR/a/x.jpg and DIR/b/x.jpg), never over an input. Images keep their format (JPEG at
quality 95; no metadata is copied). Videos become H.264 with their sound, in their container
(x.avi and x.webm, which cannot hold H.264, become x.avi.mp4 and x.webm.mp4); they need the
'video' extra.

Examples:
  srn anonymize photo.jpg --out anonymized/
  srn anonymize photos/ --out anonymized/ --method mosaic --mask ellipse --mask-scale 1.5
  srn anonymize 'shoot/**/*.jpg' --out anonymized/ --method solid --score-thresh 0.2
  srn anonymize interview.mp4 --out anonymized/          anonymized/interview.mp4, sound kept
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "anonymize", help="blur, pixelate or black out faces in images and videos",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="PATH", help="images, videos, folders (searched recursively for both) or globs")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the anonymised files (created if missing)")
    parser.add_argument("--method", choices=METHODS, default="blur", help="blur (Gaussian), mosaic (blocks) or solid (black) (default blur)")
    parser.add_argument("--mask", choices=MASKS, default="box", help="hide the whole grown box or the ellipse inside it (default box)")
    parser.add_argument("--mask-scale", type=float_in(0.0, low_open=True), default=1.3,
                        help="grow each box this many times around its centre before hiding it (default 1.3)")
    parser.add_argument("--score-thresh", type=float_in(0.0, 1.0), default=0.3,
                        help="hide faces scoring at least this, in [0, 1] (default 0.3: better a blurred elbow than a missed face)")
    parser.add_argument("--nms-iou", type=float_in(0.0, 1.0, low_open=True), default=None, help="NMS IoU, in (0, 1] (default: the model's, 0.4)")
    parser.add_argument("--workers", type=int_at_least(0), default=None,
                        help="processes that decode images (default: min(4, cores); 0: decode in the main process)")
    add_detector_args(parser)
    parser.set_defaults(func=run)


def output_names(patterns: Sequence[str], files: Sequence[Path]) -> list[Path]:
    """Each input's path below the inputs' common folder (named folders count as themselves, files
    by theirs), with ``.mp4`` appended to videos whose container cannot hold H.264."""
    from srn.media.video import OUTPUT_SUFFIXES

    names = []
    for path, name in zip(files, relative_paths(patterns, files)):
        if is_video(path) and path.suffix.lower() not in OUTPUT_SUFFIXES:
            name = name.with_name(f"{name.name}.mp4")
        names.append(name)
    return names


def plan_outputs(out: str, patterns: Sequence[str], files: Sequence[Path]) -> list[Path]:
    """Every output path, checked before the first file is read: the folder can be written, no
    two inputs share an output, and no output is an input."""
    folder = check_output_dir(out, inputs=files)
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
    return targets


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from srn.media.anonymize import anonymize
    from srn.inference import write_image
    from srn.inference.stream import default_workers, detect_files

    files = expand_inputs(args.inputs, IMAGE_SUFFIXES | VIDEO_SUFFIXES)  # folders: images and videos
    if not files:
        raise UserError("no input images or videos found")
    targets = plan_outputs(args.out, args.inputs, files)
    videos = [i for i, path in enumerate(files) if is_video(path)]
    images = [i for i, path in enumerate(files) if not is_video(path)]
    if videos:
        from srn.media.video import require_av

        require_av()
    detector = build_detector(args, args.score_thresh, args.nms_iou)

    def hide(image, faces):
        return anonymize(image, faces.boxes, method=args.method, mask=args.mask, mask_scale=args.mask_scale)

    failures: list[str] = []
    try:
        if images:
            with tqdm(total=len(images), unit="img", disable=len(images) < 8 or None, file=sys.stderr) as progress:
                workers = default_workers() if args.workers is None else args.workers
                for batch in detect_files(detector, [files[i] for i in images], args.batch_size, workers):
                    for item in batch:
                        if item.faces is None:
                            failures.append(str(item.error))
                            continue
                        target = targets[images[item.index]]
                        try:
                            write_image(target, hide(item.faces.image, item.faces))
                        except (OSError, SRNError, ValueError) as exc:
                            failures.append(_reason(target, exc))
                    progress.update(len(batch))
        for index in videos:
            failure = _anonymize_video(detector, files[index], targets[index], args.batch_size, hide)
            if failure:
                failures.append(failure)
    except torch.OutOfMemoryError:
        raise UserError("out of memory; lower --max-size or --batch-size") from None

    done = len(files) - len(failures)
    print(f"srn anonymize: {done} of {len(files)} files -> {args.out}", file=sys.stderr)
    if failures:
        print(f"srn anonymize: {len(failures)} of {len(files)} files failed:", file=sys.stderr)
        for line in failures:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


def _reason(path: Path, exc: BaseException) -> str:
    """One line for a failed file: errors of the package name their file already."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, SRNError):
        return text
    if isinstance(exc, OSError) and exc.strerror:
        return f"{path}: {exc.strerror}"
    return f"{path}: {text}"


def _anonymize_video(detector, path: Path, target: Path, batch_size: int, hide) -> str | None:
    """Write ``path`` anonymised to ``target``; the failure's line, or None."""
    from srn.atomic import atomic_output
    from srn.media.video import process_video

    try:
        with atomic_output(target) as tmp:
            frames = process_video(detector, path, batch_size, tmp, render=hide, output_name=target)
    except (OSError, SRNError) as exc:
        return _reason(path, exc)
    print(f"{path}: {frames} frames -> {target}", file=sys.stderr)
    return None
