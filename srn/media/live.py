"""Live video: a webcam, or a network stream (``rtsp://``, ``rtmp://``, ``http(s)://``, ``udp://``,
``tcp://``, ``srt://``), read through PyAV (FFmpeg) until it ends or the user stops it.

A source is named as a user types it: ``0`` is the first webcam (``/dev/video0`` through Video4Linux
on Linux, AVFoundation's device 0 on macOS), and a URL is opened as FFmpeg opens it. A source that
cannot be opened raises :class:`srn.errors.InputPathError` with one line naming it.

:class:`LiveReader` decodes in a background thread, like :class:`srn.media.video.FrameReader` does
for files, and yields the same :class:`srn.media.video.Frame`; a :class:`srn.media.video.VideoWriter`
can encode what it reads. :class:`LiveSource` hands the frames to the run loop
(:func:`srn.inference.loop.run`) as they come, taking whatever frames are waiting (up to a batch) at
each step, so that a slow detector does not fall further and further behind a camera. The run stops
at the stream's end, when the stream breaks off, or when its ``stop`` event is set;
:func:`srn.inference.loop.stop_on_interrupt` sets that event on Ctrl-C, so that a stopped run
finishes its outputs instead of leaving them torn.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from srn.errors import InputPathError
from srn.inference.loop import stop_on_interrupt
from srn.media.video import DecodingThread
from srn.paths import IMAGE_SUFFIXES

__all__ = [
    "LIVE_SCHEMES",
    "LiveReader",
    "LiveSource",
    "run_live",
    "is_live_source",
    "source_name",
    "stop_on_interrupt",
]

LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt")
OPEN_TIMEOUT_S = 15.0  # connecting, and waiting for the first data
READ_TIMEOUT_S = 30.0  # a stream silent for this long has ended


def is_live_source(text: str | os.PathLike[str]) -> bool:
    """Whether ``text`` names a live source: a webcam number (``0``, ``1`` ...) that is not also the
    name of a file or folder here, or a URL with one of :data:`LIVE_SCHEMES`."""
    if not isinstance(text, str):
        return False
    if text.isascii() and text.isdigit():
        return not os.path.lexists(text)
    return urlsplit(text).scheme.lower() in LIVE_SCHEMES and "://" in text


def source_name(source: str) -> str:
    """A file-name stem for a live source's outputs: ``webcam0``, or the last part of the URL's
    path without its suffix (``clip`` for ``http://host/videos/clip.mp4``), or its host."""
    if source.isdigit():
        return f"webcam{int(source)}"
    parts = urlsplit(source)
    stem = Path(parts.path).stem
    name = stem or parts.hostname or "stream"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "stream"


def _ffmpeg_input(source: str) -> tuple[str, str | None, dict[str, str]]:
    """What FFmpeg opens for ``source``: (url, input format, options)."""
    if not source.isdigit():
        if urlsplit(source).scheme.lower().startswith("rtsp"):
            return source, None, {"rtsp_transport": "tcp"}  # UDP loses packets across most networks
        return source, None, {}
    index = int(source)
    if sys.platform.startswith("linux"):
        device = f"/dev/video{index}"
        if not os.path.exists(device):
            raise InputPathError(source, f"no webcam {device} on this machine")
        return device, "v4l2", {}
    if sys.platform == "darwin":
        return str(index), "avfoundation", {"framerate": "30"}
    raise InputPathError(source, "webcams are read on Linux and macOS; give the camera's stream URL instead")


def _reason(exc: BaseException) -> str:
    """FFmpeg's words for what went wrong, without the errno and the repeated URL."""
    strerror = getattr(exc, "strerror", None)
    return strerror if strerror else " ".join(str(exc).split())


class LiveReader(DecodingThread):
    """Frames of a webcam or network stream, decoded in a background thread.

    Iterating yields :class:`srn.media.video.Frame` (``time`` in seconds from the first frame) as
    they arrive; it ends when the stream does, and raises :class:`srn.errors.InputPathError` when
    the stream breaks off. Iterating with :meth:`batches` takes what is waiting, a batch at most.

    Args:
        source: a webcam number or a stream URL (see the module doc).
        max_queued: frames decoded ahead of the consumer at most.
        timeout: seconds to wait for the stream to open, and for data once it runs.

    Attributes:
        path: ``source``, for messages (as :class:`srn.media.video.FrameReader` has it).
        rate: the nominal frame rate as a Fraction, or None; time_base: the unit of frames' ``pts``.
        audio_stream: always None (the sound of a live source is not kept).
    """

    def __init__(self, source: str, max_queued: int = 16, timeout: tuple[float, float] = (OPEN_TIMEOUT_S, READ_TIMEOUT_S)) -> None:
        from srn.media.video import require_av

        super().__init__(max_queued)
        self.av = require_av()
        self.path = source
        url, fmt, options = _ffmpeg_input(source)
        try:
            self._container = self.av.open(url, format=fmt, options=options, timeout=timeout)
        except (self.av.FFmpegError, OSError, UnicodeDecodeError) as exc:
            raise InputPathError(source, f"cannot open the stream ({_reason(exc)})") from None
        if not self._container.streams.video:
            self._container.close()
            raise InputPathError(source, "has no video stream")
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        self._stream = stream
        self.rate: Fraction | None = stream.average_rate or stream.guessed_rate or None
        self.time_base: Fraction = stream.time_base or Fraction(1, 90000)
        self.audio_stream = None
        self.decode_audio = False
        self._first_pts: int | None = None
        self._count = 0
        self._frames = self._decode_frames()
        self._peeked: Any = None

    def _decode_frames(self) -> Iterator[Any]:
        from srn.media.video import Frame

        for frame in self._container.decode(self._stream):
            if frame.pts is not None and self._first_pts is None:
                self._first_pts = frame.pts
            if frame.pts is not None:
                time = float((frame.pts - self._first_pts) * self.time_base)
            else:
                time = self._count / float(self.rate) if self.rate else 0.0
            yield Frame(self._count, time, frame.to_ndarray(format="rgb24"), frame.pts)
            self._count += 1

    def peek(self) -> Any:
        """The first frame (None if the stream ends before one), decoded now; iterating still starts with it."""
        if self._peeked is None:
            if self._thread is not None:
                raise RuntimeError("LiveReader.peek after iteration started")
            try:
                self._peeked = next(self._frames, None)
            except (self.av.FFmpegError, OSError) as exc:
                raise InputPathError(self.path, f"reading the stream failed ({_reason(exc)})") from None
        return self._peeked

    def _produce(self) -> Iterator[Any]:
        if self._peeked is not None:
            yield self._peeked
        yield from self._frames

    def _take(self, block: bool, stop: threading.Event | None) -> Any:
        """The next item, or None when there is none waiting (``block=False``) or ``stop`` was set."""
        while True:
            if stop is not None and stop.is_set():
                return None
            try:
                item = self._queue.get(timeout=0.1) if block else self._queue.get_nowait()
            except queue.Empty:
                if not block:
                    return None
                continue
            if isinstance(item, BaseException):
                raise InputPathError(self.path, f"the stream broke off ({_reason(item)})")
            return item

    def batches(self, size: int, stop: threading.Event | None = None) -> Iterator[list[Any]]:
        """Lists of frames: the next frame, and those already waiting after it, ``size`` at most.
        Ends with the stream, or as soon as ``stop`` is set."""
        self._start(f"read {self.path}")
        try:
            while True:
                first = self._take(True, stop)
                if first is None or first is self._END:
                    return
                batch = [first]
                while len(batch) < size:
                    item = self._take(False, stop)
                    if item is None:
                        break
                    if item is self._END:
                        yield batch
                        return
                    batch.append(item)
                yield batch
        finally:
            self.close()

    def __iter__(self) -> Iterator[Any]:
        for batch in self.batches(1):
            yield from batch


class LiveSource:
    """A live source's frames as a source of the run loop (:func:`srn.inference.loop.run`), read by
    a :class:`LiveReader`: each batch is the next frame and those already waiting after it, so that
    a slow detector does not fall further and further behind a camera. A stream that breaks off
    ends the batches and leaves its one line in :attr:`error`; what came before is written.
    Each item's ``source`` is the source as the user named it, with the frame's number and time."""

    unit = "frame"
    total = None

    def __init__(self, source: str, max_queued: int = 16) -> None:
        self.reader = LiveReader(source, max_queued=max_queued)
        self.name = source
        self.error: str | None = None

    def batches(self, batch_size: int, stop: threading.Event | None = None) -> Iterator[list[Any]]:
        import torch

        from srn.inference.loop import Item

        try:
            for batch in self.reader.batches(batch_size, stop):
                # (H, W, 3) -> (3, H, W), a view
                yield [Item(f.index, self.name, torch.from_numpy(f.image).permute(2, 0, 1), frame=f.index, time=f.time, payload=f)
                       for f in batch]
        except InputPathError as exc:
            self.error = str(exc)

    def close(self) -> None:
        self.reader.close()


def run_live(source: str, detector_factory: Callable[[], Any], sinks_factory: Callable[[contextlib.ExitStack, LiveSource], list[Any]],
             batch_size: int) -> Any:
    """A live source's run (:func:`srn.inference.loop.run`) until the stream ends, breaks off or
    Ctrl-C, which finishes every output: the source is opened first, then the detector is made by
    ``detector_factory``, then the sinks by ``sinks_factory(stack, frames)``, whose ``stack`` closes
    (and commits) what they write once the sinks are closed. Returns the run's summary."""
    from srn.inference.loop import run

    frames = LiveSource(source, max_queued=4 * batch_size)
    try:
        detector = detector_factory()
        with contextlib.ExitStack() as stack:
            outputs = sinks_factory(stack, frames)
            stop = stack.enter_context(stop_on_interrupt())
            return run(detector, frames, outputs, batch_size, progress=False, stop=stop)
    finally:
        frames.close()


def refuse_photo_url(source: str) -> None:
    """A URL that names a photo is not a stream: one line saying so."""
    if Path(urlsplit(source).path).suffix.lower() in IMAGE_SUFFIXES:
        raise InputPathError(source, "photos are not read from URLs (only video streams are); download it first")
