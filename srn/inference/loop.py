"""One run loop: a source of images in, sinks out.

Every command that runs the detector over many inputs (``srn detect``, ``srn anonymize``, ``srn
eval``; photos, folders, videos, live streams) calls :func:`run`, as ultralytics' predictor runs one
``stream_inference`` for every source:

- a :class:`Source` yields batches of :class:`Item` (an image, or the one line saying why it could
  not be read, with where it came from): image files decoded in ``DataLoader`` workers
  (:class:`srn.inference.sources.ImageFileSource`), the frames of a video or of a live stream
  (:mod:`srn.media.video`, :mod:`srn.media.live`);
- the detector turns each batch's images into :class:`srn.inference.Faces`, which know their source
  from the moment they are made and render their own record (:meth:`srn.inference.Faces.record`);
- each :class:`Sink` (:mod:`srn.inference.sinks`: JSON Lines, CSV, JSON, WIDER folders, drawn images,
  crops; anonymised images and encoded videos in :mod:`srn.media`) writes every item.

The loop, and only the loop, owns what every run needs: batching, the progress bar, a flush of
every sink after each batch (a failure or a kill late in a run loses at most the batch in flight),
an item that cannot be read or written (reported, and the run goes on), a decoding worker that dies
(the run stops, what is written stays), Ctrl-C on a live source (the outputs are finished), and
running out of memory (:class:`InferenceOutOfMemory`, one domain error).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torch import Tensor

from srn.errors import InferenceOutOfMemory, OutputPathError, SRNError
from srn.inference.results import Faces

__all__ = [
    "BaseSink",
    "InferenceOutOfMemory",
    "Item",
    "ItemFailed",
    "Observer",
    "RunSummary",
    "Sink",
    "Source",
    "detected",
    "failure_line",
    "run",
    "stop_on_interrupt",
    "worker_died",
]


@dataclass
class Item:
    """One input of a run, read or not.

    Attributes:
        index: its position in its source (input order).
        source: its name in records and messages: the path as given, or the video or stream.
        image (Tensor[3, H, W] | None): uint8 RGB, or None when it could not be read.
        error: ``"<source>: <reason>"`` when it could not be read, else None.
        frame, time: a video frame's number and time in seconds (None for a photo).
        payload: the source's own object for the item (a decoded video frame, whose timestamp an
            encoder needs), or None.
    """

    index: int
    source: str
    image: Tensor | None = None
    error: str | None = None
    frame: int | None = None
    time: float | None = None
    payload: Any = None


class Source(Protocol):
    """Where a run's images come from.

    Attributes:
        unit: what the progress bar counts ("img", "frame").
        total: how many items there will be, for the progress bar (None: unknown or endless).
    """

    unit: str
    total: int | None

    def batches(self, batch_size: int, stop: threading.Event | None = None) -> Iterator[list[Item]]:
        """Lists of at most ``batch_size`` items, in order; a source that can wait for its next
        item (a live stream) ends as soon as ``stop`` is set."""
        ...

    def close(self) -> None:
        """Release what the source holds (decoding threads, files)."""
        ...


class Sink(Protocol):
    """Where a run's results go: opened before the first item, given every item that was read
    and detected, flushed after each batch, closed at the end (or aborted on an error).

    :meth:`write` returns the file it wrote for the item, if any (said on the item's line), and
    raises :class:`ItemFailed` when the item's own output cannot be written: that item fails, the
    run goes on. A :class:`srn.errors.OutputPathError` (a full disk under the records' file, a
    video that cannot be encoded) ends the run: the sinks are aborted, what was flushed stays.
    """

    def open(self) -> Any: ...

    def write(self, faces: Faces, item: Item | None = None) -> Path | None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class BaseSink:
    """A :class:`Sink` that does nothing: subclasses override what they need. Also a context manager
    (``open`` on entry; ``close``, or ``abort`` on an exception, on exit)."""

    def open(self) -> BaseSink:
        return self

    def write(self, faces: Faces, item: Item | None = None) -> Path | None:
        return None

    def flush(self) -> None:
        """A batch is complete: make what was written so far durable, where the output streams."""

    def close(self) -> None:
        """Finish the output."""

    def abort(self) -> None:
        """Stop after a failure: what was flushed stays, nothing more is written."""
        self.close()

    def __enter__(self) -> Any:
        return self.open()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: Any) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


class Observer(Protocol):
    """What a command is told as the run goes (``srn.cli.common.Report``); ``progress`` is set to
    the run's progress bar, above which the per-item lines are printed."""

    progress: Any

    def item(self, name: str, faces: int, written: str | os.PathLike[str] | None = None) -> None: ...

    def failed(self, line: str) -> None: ...


class ItemFailed(SRNError):
    """One item's output could not be written; its message names the file and says why. The run
    goes on with the next item."""


@dataclass
class RunSummary:
    """How a run went.

    Attributes:
        items: items read, detected and written.
        faces: faces found in them.
        failures: one line per item that could not be read or written.
        stopped: the error that ended the run early (a decoding worker that died, an output that
            could not be flushed), after which what was written stays; None when it ran to its end.
        error: a live stream that broke off (what came before is written), as one line.
        interrupted: ``stop`` (Ctrl-C) ended the run.
    """

    items: int = 0
    faces: int = 0
    failures: list[str] = field(default_factory=list)
    stopped: BaseException | None = None
    error: str | None = None
    interrupted: bool = False


def _detect(detector: Any, items: Sequence[Item]) -> list[Faces]:
    """The detector on a batch: each result knows its source (and frame) from the start."""
    frames = [(item.frame, item.time) if item.frame is not None else None for item in items]
    return detector.detect([item.image for item in items], sources=[item.source for item in items],
                           frames=frames if any(f is not None for f in frames) else None)


def detected(source: Source, batch_size: int, infer: Callable[[Sequence[Item]], list[Faces]],
             stop: threading.Event | None = None) -> Iterator[list[tuple[Item, Faces | None]]]:
    """Each batch of ``source`` with the results of its items (None for an item that could not be
    read), one call of ``infer`` per batch: the core of :func:`run`, and of
    :meth:`srn.inference.Detector.stream`, which yields the results as they come."""
    for batch in source.batches(batch_size, stop):
        readable = [item for item in batch if item.image is not None]
        found = iter(infer(readable) if readable else [])
        yield [(item, next(found) if item.image is not None else None) for item in batch]


def run(
    detector: Any,
    source: Source,
    sinks: Sequence[Sink],
    batch_size: int = 8,
    *,
    observer: Observer | None = None,
    progress: bool | None = None,
    desc: str | None = None,
    stop: threading.Event | None = None,
    infer: Callable[[Sequence[Item]], list[Faces]] | None = None,
) -> RunSummary:
    """Run ``detector`` (a :class:`srn.inference.Detector`) over ``source`` into ``sinks``.

    Args:
        batch_size: items per batch (the detector's own ``batch_size`` still bounds a forward pass).
        observer: told of each item done or failed.
        progress: a progress bar on stderr (when it is a terminal): True, False, or None for when
            the source has 8 items or more (or an unknown number).
        desc: the progress bar's label.
        stop: an event that ends the run after the batch in flight (Ctrl-C on a live source,
            :func:`stop_on_interrupt`).
        infer: ``infer(items) -> [Faces]`` instead of the detector (test-time augmentation).

    Returns:
        A :class:`RunSummary`. Every sink is closed when the run ends normally, or stopped early by a
        dead decoding worker or by ``stop``; on any other error the sinks are aborted and it is raised.

    Raises:
        InferenceOutOfMemory: the detector ran out of memory (the sinks are aborted).
    """
    import torch
    from tqdm import tqdm

    infer = infer or (lambda items: _detect(detector, items))
    summary = RunSummary()
    total = source.total
    if progress is None:
        disable: bool | None = None if total is None or total >= 8 else True
    else:
        disable = None if progress else True  # None: tqdm shows it on a terminal only
    bar = tqdm(total=total, unit=source.unit, disable=disable, file=sys.stderr, desc=desc)
    if observer is not None:
        observer.progress = bar
    opened: list[Sink] = []
    try:
        with bar:
            for sink in sinks:
                sink.open()
                opened.append(sink)
            try:
                for batch in detected(source, batch_size, infer, stop):
                    for item, faces in batch:
                        if faces is None:
                            _failed(summary, observer, str(item.error))
                            continue
                        _write(summary, observer, sinks, faces, item)
                    for sink in sinks:
                        sink.flush()
                    bar.update(len(batch))
            except (RuntimeError, OSError, EOFError) as exc:
                if worker_died(exc) is None:
                    raise
                summary.stopped = exc
            except OutputPathError as exc:  # an output itself (a full disk): keep what is flushed
                if not summary.items:
                    raise
                _abort(opened)
                summary.stopped = exc
        summary.error = getattr(source, "error", None)
        summary.interrupted = stop is not None and stop.is_set()
        while opened:
            sink = opened.pop(0)
            try:
                sink.close()
            except OutputPathError as exc:
                if not summary.items or summary.stopped is not None:
                    raise
                summary.stopped = exc
        return summary
    except torch.OutOfMemoryError:
        _abort(opened)
        raise InferenceOutOfMemory() from None
    except BaseException:
        _abort(opened)
        raise
    finally:
        if observer is not None:
            observer.progress = None
        source.close()


def _write(summary: RunSummary, observer: Observer | None, sinks: Sequence[Sink], faces: Faces, item: Item) -> None:
    """One item to every sink, in order: the item's own files first, so that when one cannot be
    written the item fails alone, before its record (and ``--resume`` then redoes it)."""
    written = None
    for sink in sinks:
        try:
            path = sink.write(faces, item)
        except ItemFailed as exc:
            _failed(summary, observer, str(exc))
            return
        if path is not None:
            written = path
    summary.items += 1
    summary.faces += len(faces)
    if observer is not None:
        observer.item(item.source, len(faces), written)


def failure_line(path: str | os.PathLike[str], exc: BaseException) -> str:
    """One line for an item that failed: errors of the package name their file already."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, SRNError):
        return text
    if isinstance(exc, OSError) and exc.strerror:
        return f"{os.fspath(path)}: {exc.strerror}"
    return f"{os.fspath(path)}: {text}"


def _failed(summary: RunSummary, observer: Observer | None, line: str) -> None:
    summary.failures.append(line)
    if observer is not None:
        observer.failed(line)


def _abort(sinks: list[Sink]) -> None:
    for sink in reversed(sinks):
        with contextlib.suppress(Exception):
            sink.abort()
    sinks.clear()


def worker_died(exc: BaseException) -> str | None:
    """What is known of a decoding worker that died (the OOM killer's SIGKILL, say), or None for
    any other error. ``DataLoader`` says so with a ``RuntimeError``, or the main process first
    finds the link to the dead worker broken (a ``ConnectionResetError`` or ``EOFError`` raised
    inside the loader), and the ``RuntimeError`` of its SIGCHLD handler comes a moment later,
    wherever the main process then is."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = " ".join(str(error).split())
        if isinstance(error, RuntimeError) and "DataLoader worker" in text:
            return text.split(" If ")[0].rstrip(". ")
        if isinstance(error, ConnectionError | EOFError) and _raised_in_a_data_loader(error):
            return f"its connection broke: {type(error).__name__}"
        error = error.__cause__ or error.__context__
    return None


def _raised_in_a_data_loader(error: BaseException) -> bool:
    trace = error.__traceback__
    while trace is not None:
        if "torch/utils/data/" in trace.tb_frame.f_code.co_filename.replace("\\", "/"):
            return True
        trace = trace.tb_next
    return False


@contextlib.contextmanager
def stop_on_interrupt() -> Iterator[threading.Event]:
    """An event that Ctrl-C (SIGINT) sets instead of raising ``KeyboardInterrupt``, for the block;
    a second Ctrl-C raises it as usual. Outside the main thread, where signals cannot be caught,
    the event is never set."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
