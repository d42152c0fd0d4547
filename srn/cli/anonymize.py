"""``srn anonymize``: blur, pixelate or black out the faces in images, folders, videos and live sources."""

from __future__ import annotations

import argparse
import sys

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
from srn.errors import printable
from srn.paths import is_video

# srn.media.anonymize's METHODS and MASKS, spelled out: importing it would import torch for `srn --help`.
METHODS = ("blur", "mosaic", "solid")
MASKS = ("box", "ellipse")
# benchmarks/RESULTS.md, "Anonymisation masks": the ellipse leaves 8.8% of a labelled face's box
# visible on average, the box 2.9%; deface's ellipse default is not followed.
DEFAULT_MASK = "box"
MAX_MASK_SCALE = 10.0  # ten times a face's box covers its surroundings; beyond that is a mistake
# Privacy first (benchmarks/RESULTS.md, "Privacy recall on the pixels written"): a lower threshold than
# srn detect's 0.3 (0.886 -> 0.909 of the visible faces hidden), and a second pass with the file upscaled
# to 1536 px whose faces under 128 px join the first pass's (0.909 -> 0.946). Upscaling instead of the
# native pass lost large faces (held-out AP of faces >= 64 px 0.942 -> 0.516 on portraits); the second
# pass keeps the first pass's faces of 32 px or more.
DEFAULT_SCORE_THRESH = 0.1
DEFAULT_ZOOM_PASS = 1536  # files; a live source runs one pass by default (it must keep up with the camera)
DEFAULT_ZOOM_MAX_FACE = 128.0

DESCRIPTION = """\
Hide the faces in images, videos and live sources: each detected face's box, grown --mask-scale
times around its centre, is blurred, pixelated or filled with black, inside the ellipse that the
grown box holds (--mask ellipse) or all of it (--mask box).

Without --out, each file is written beside itself as NAME_anonymized.EXT (NAME_anonymized_1.EXT
and so on when that exists: nothing is ever overwritten), and a folder is mirrored into
FOLDER_anonymized/. With --out FILE, named like an image or a video (-o blurred.jpg, -o clip.mp4),
the one input is written to FILE, in FILE's format. With --out DIR (any other name, or one ending
in /), every input is written under DIR with its path below the inputs' common folder (a/x.jpg and
b/x.jpg become DIR/a/x.jpg and DIR/b/x.jpg), never over an input, and never inside a folder the
inputs search. Images keep their format (JPEG at quality 95; no metadata is copied), their frames
(GIF, animated PNG and WebP: the faces of every frame are hidden), pages (TIFF), alpha channel and
16-bit depth, or a warning says what could not be kept. Videos become H.264 with their sound, in
their container (x.avi and x.webm, which cannot hold H.264, become .mp4); they need PyAV (pip
install av). A live source (a webcam number such as 0, or an rtsp://, http(s):// ... stream URL)
is written as NAME_anonymized.mp4 (or FILE.mp4, or DIR/NAME.mp4) until it ends or Ctrl-C.

Privacy first: srn anonymize keeps faces from a score of 0.1 (srn detect: 0.3), and runs each file
twice: as it is, and upscaled so that its longer side is 1536 px, adding the faces under 128 px that
the second pass finds (--zoom-pass, --zoom-max-face; files of 1536 px or more run once). On the
project's held-out crowd, WIDER and demo crowd photos this hides 0.946 of the faces of 24 px or more
(one pass: 0.909; deface: 0.963), and blurs more things that are not faces. It costs time: about 10x
one pass on photos of 512 px, whose second pass has 9x the pixels (2.25x at 1024 px); --zoom-pass 0
runs one pass (long videos, for example). A live source runs one pass unless --zoom-pass is given: it
must keep up with the camera.

What is printed: on a terminal, a line per file ("photo.jpg: 2 faces -> photo_anonymized.jpg");
always, a closing summary ("3 files, 5 faces, 0 failed in 4.2 s").

Examples:
  srn anonymize photo.jpg                                 photo_anonymized.jpg beside it
  srn anonymize photo.jpg -o blurred.jpg                  blurred.jpg
  srn anonymize photos/                                   photos_anonymized/, the same tree
  srn anonymize photos/ --out anonymized/ --method mosaic --mask-scale 1.5
  srn anonymize 'shoot/**/*.jpg' --out anonymized/ --method solid --score-thresh 0.2 --zoom-pass 0
  srn anonymize interview.mp4 -o blurred.mp4              blurred.mp4, sound kept
  srn anonymize interview.mp4 --out anonymized/          anonymized/interview.mp4
  srn anonymize 0                                         the first webcam -> webcam0_anonymized.mp4
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "anonymize", help="blur, pixelate or black out faces in images, videos and live sources",
        description=DESCRIPTION, formatter_class=HelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="PATH",
                        help="images, videos, folders (searched recursively for both) or globs; or one webcam number or stream URL")
    parser.add_argument("-o", "--out", metavar="FILE|DIR",
                        help="the anonymised file, for one input named like an image or video (blurred.jpg, clip.mp4); "
                             "otherwise a folder for them, created if missing (default: beside each input, see above)")
    parser.add_argument("--method", choices=METHODS, default="blur", help="blur (Gaussian), mosaic (blocks) or solid (black)")
    parser.add_argument("--mask", choices=MASKS, default=DEFAULT_MASK, help="hide the ellipse inside the grown box, or the whole box")
    parser.add_argument("--mask-scale", type=float_in(0.0, MAX_MASK_SCALE, low_open=True), default=1.3,
                        help=f"grow each box this many times around its centre before hiding it, in (0, {MAX_MASK_SCALE:g}]")
    parser.add_argument("-t", "--score-thresh", type=float_in(0.0, 1.0), default=DEFAULT_SCORE_THRESH,
                        help=f"hide faces scoring at least this, in [0, 1] (default {DEFAULT_SCORE_THRESH:g}: better a blurred elbow than a missed face)")
    parser.add_argument("--nms-iou", type=float_in(0.0, 1.0, low_open=True), default=None, help="NMS IoU, in (0, 1] (default: the model's, 0.4)")
    parser.add_argument("--workers", type=int_at_least(0), default=default_workers(),
                        help=f"processes that decode images; 0 decodes in the main process (default: {default_workers()} here: "
                             "0 on 1 or 2 cores, 1 on 3 to 7, then one per 4 cores up to 4)")
    add_detector_args(parser, zoom_pass=None, zoom_max_face=DEFAULT_ZOOM_MAX_FACE,
                      zoom_default=f"{DEFAULT_ZOOM_PASS} for files, none for a live source")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from srn.media.live import is_live_source

    live = [p for p in args.inputs if is_live_source(p)]
    if args.zoom_pass is None:
        args.zoom_pass = 0 if live else DEFAULT_ZOOM_PASS
    if live:
        return run_live(args, live[0])
    from srn.pipeline.anonymize import claim_output

    with claim_output(args.out):  # one writer per output
        return _run_files(args)


def _run_files(args: argparse.Namespace) -> int:
    """``srn anonymize`` on image and video files."""
    from srn.inference.loop import ItemFailed
    from srn.media.anonymized import Hide
    from srn.pipeline import anonymize as pipeline

    report = Report("file")
    files, targets = pipeline.plan_outputs(args.out, args.inputs)
    if not files:
        raise UserError("no input images or videos found")
    videos = [i for i, path in enumerate(files) if is_video(path)]
    images = [i for i, path in enumerate(files) if not is_video(path)]
    if videos:
        from srn.media.video import require_av

        require_av()
    detector = build_detector(args, args.score_thresh, args.nms_iou)
    hide = Hide(args.method, args.mask, args.mask_scale)

    if images:
        summary = pipeline.anonymize_images(detector, [files[i] for i in images], [targets[i] for i in images], hide,
                                            args.batch_size, args.workers, observer=report,
                                            warn=lambda line: print(printable(f"srn anonymize: warning: {line}"), file=sys.stderr))
        if summary.stopped is not None:  # a decoding worker killed: what is written stays
            print(printable(f"srn anonymize: error: {worker_death(summary.stopped) or summary.stopped}; "
                            f"the {report.items} files done are written"), file=sys.stderr)
            report.close("anonymize")
            return 1
    for index in videos:
        path, target = files[index], targets[index]
        try:
            frames, faces = pipeline.anonymize_video(detector, path, target, hide, args.batch_size)
        except ItemFailed as exc:
            report.failed(str(exc))
            continue
        report.item(str(path), faces, target)
        if not report.per_item:
            print(f"{path}: {plural(frames, 'frame')}, {plural(faces, 'face')} -> {target}", file=sys.stderr)
    return report.close("anonymize", tail=f" -> {args.out}" if args.out else "")


def run_live(args: argparse.Namespace, source: str) -> int:
    """``srn anonymize`` on a webcam or a network stream: the anonymised video, until the stream
    ends or Ctrl-C, which finishes the file."""
    from srn.media.anonymized import Hide
    from srn.media.live import refuse_photo_url, source_name
    from srn.media.video import require_av
    from srn.pipeline import anonymize as pipeline

    if len(args.inputs) > 1:
        raise UserError(f"{source}: a live source is read alone; give it without other inputs")
    refuse_photo_url(source)
    require_av()
    target = pipeline.live_target(source_name(source), args.out)
    report = Report("frame", per_item=False)
    outcome = pipeline.anonymize_live(lambda: build_detector(args, args.score_thresh, args.nms_iou), source, target,
                                      Hide(args.method, args.mask, args.mask_scale), args.batch_size)
    report.items, report.faces = outcome.items, outcome.faces
    how = live_ending(outcome)
    print(f"{source}: {report.summary()}, {how} -> {target}", file=sys.stderr)
    if outcome.error:
        print(f"srn anonymize: {outcome.error}; the frames before it are written", file=sys.stderr)
        return 1
    return 0
