"""The runs behind ``srn anonymize``: where each anonymised file goes, and the run loop over
images, videos and live sources into sinks that hide the faces (:mod:`srn.media.anonymized`,
:class:`srn.media.video.VideoSink`).

Without an output, each file is written beside itself as ``NAME_anonymized.EXT`` (a number
appended when that exists: nothing is ever overwritten), and a folder is mirrored into
``FOLDER_anonymized/``. An output named like an image or a video (``blurred.jpg``, ``clip.mp4``) is
that file, for one input; any other output is a folder, and every input is written under it with
its path below the inputs' common folder, never over an input.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from srn.atomic import atomic_output, exclusive_lock
from srn.errors import OutputCollisionError, OutputPathError
from srn.inference.loop import Observer, RunSummary, failure_line, run
from srn.inference.sources import ImageFileSource
from srn.media.anonymized import AnonymizedImageSink, Hide
from srn.media.live import LiveSource, run_live
from srn.media.video import OUTPUT_SUFFIXES, RecordLines, VideoSink, item_errors, process_video
from srn.paths import IMAGE_SUFFIXES, VIDEO_SUFFIXES, check_output_dir, check_output_file, expand_inputs, is_video, relative_paths

__all__ = ["SUFFIX", "anonymize_images", "anonymize_live", "anonymize_video", "beside_names", "free_name",
           "live_target", "names_a_file", "output_names", "plan_outputs"]

SUFFIX = "_anonymized"


def _h264_name(name: Path) -> Path:
    """``name`` with ``.mp4`` appended when it is a video whose container cannot hold H.264."""
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


def names_a_file(out: str) -> bool:
    """Whether the output ``out`` names one file: its suffix is an image's or a video's, and it is
    neither a folder nor written with a trailing slash (``blurred.jpg``, ``clip.mp4``; not
    ``anonymized/`` or ``out``)."""
    return (not out.endswith(("/", os.sep)) and Path(out).suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES
            and not Path(out).is_dir())


def _file_target(out: str, files: Sequence[Path]) -> Path:
    """The one input's output file ``out``, refused in one line when it cannot hold that input."""
    target = Path(out)
    if len(files) != 1:
        raise OutputPathError(target, f"names one file, and {len(files)} inputs were found; "
                                      "give a folder for several (for example --out anonymized/)")
    source, suffix = files[0], target.suffix.lower()
    if is_video(source) != (suffix in VIDEO_SUFFIXES):
        kind, other = ("a video", "an image") if is_video(source) else ("an image", "a video")
        raise OutputPathError(target, f"names {other}, and {source} is {kind}; give it {kind}'s suffix")
    if is_video(source) and suffix not in OUTPUT_SUFFIXES:
        raise OutputPathError(target, f"{suffix} cannot hold H.264; name it {', '.join(OUTPUT_SUFFIXES)}")
    return check_output_file(target, inputs=files)


def plan_outputs(out: str | None, patterns: Sequence[str], files: Sequence[Path] | None = None) -> tuple[list[Path], list[Path]]:
    """The inputs and every output path, checked before the first file is read: each folder can
    be written, no two inputs share an output, and no output is an input. ``out`` is that file for
    one input when it :func:`names_a_file`, else a folder."""
    suffixes = IMAGE_SUFFIXES | VIDEO_SUFFIXES  # folders: images and videos
    if out is None:
        files, targets = beside_names(patterns, suffixes)
        for folder in sorted({str(t.parent) for t in targets}):
            check_output_dir(folder, inputs=[])
    elif names_a_file(out):
        files = list(files) if files is not None else expand_inputs(patterns, suffixes)
        targets = [_file_target(out, files)] if files else []
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


@contextlib.contextmanager
def claim_output(out: str | None) -> Iterator[None]:
    """Hold ``out`` for this run (:func:`srn.atomic.exclusive_lock`): a second run into the same
    output is one line, before anything is written. Files written beside their inputs are each
    written whole by one writer (:mod:`srn.atomic`) and need no lock."""
    with exclusive_lock(out) if out is not None else contextlib.nullcontext():
        yield


def live_target(name: str, out: str | None) -> Path:
    """The anonymised video of a live source named ``name``: ``NAME_anonymized.mp4`` here (numbered
    when that exists), ``OUT`` when it names a video file (``cam.mp4``), or ``OUT/NAME.mp4``; checked."""
    if out is None:
        target = free_name(Path(f"{name}{SUFFIX}.mp4"), set())
    elif names_a_file(out):
        target = Path(out)
        if target.suffix.lower() not in OUTPUT_SUFFIXES:
            raise OutputPathError(target, f"a live source is written as a video; name it {', '.join(OUTPUT_SUFFIXES)}")
    else:
        target = check_output_dir(out) / f"{name}.mp4"
    check_output_file(target)
    return target


def anonymize_images(detector: Any, files: Sequence[Path], targets: Sequence[Path], hide: Hide, batch_size: int,
                     workers: int, observer: Observer | None = None,
                     warn: Callable[[str], None] = lambda line: None) -> RunSummary:
    """The run over image files, each written with its faces hidden to its target."""
    target = {str(path): out for path, out in zip(files, targets)}
    sink = AnonymizedImageSink(lambda item: target[item.source], detector, hide, warn=warn)
    return run(detector, ImageFileSource(files, workers), [sink], batch_size, observer=observer)


def anonymize_video(detector: Any, path: Path, target: Path, hide: Hide, batch_size: int) -> tuple[int, int]:
    """Write the video ``path`` with its faces hidden to ``target``, atomically (sound kept; see
    :mod:`srn.media.video`); returns the frames and the faces found in them.

    Raises:
        ItemFailed: the video could not be read or written, in one line naming it.
    """
    from srn.inference.loop import ItemFailed

    with open(os.devnull, "w") as nowhere:
        faces = RecordLines(nowhere)  # counts the faces
        try:
            with atomic_output(target) as tmp:
                frames = process_video(detector, path, batch_size, tmp, render=hide, output_name=target, sinks=[faces])
        except item_errors() as exc:  # a video that cannot be read or written fails alone
            raise ItemFailed(failure_line(path, exc)) from None
    return frames, faces.faces


def anonymize_live(detector_factory: Callable[[], Any], source: str, target: Path, hide: Hide, batch_size: int) -> RunSummary:
    """A live source's anonymised video, until the stream ends, breaks off or Ctrl-C, which
    finishes the file. The detector is made by ``detector_factory`` once the source is open."""
    def outputs(stack: contextlib.ExitStack, frames: LiveSource) -> list[Any]:
        return [VideoSink(stack.enter_context(atomic_output(target)), frames.reader, hide, target)]

    with exclusive_lock(target):
        return run_live(source, detector_factory, outputs, batch_size)
