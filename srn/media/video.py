"""Videos frame by frame: faces found in every frame (:func:`detect_video`), and videos rewritten
with each frame changed (:func:`process_video`: boxes drawn, or faces hidden by :mod:`srn.media.anonymize`).

PyAV (the ``video`` extra; its wheels bundle FFmpeg with libx264) decodes and encodes. A background
thread demuxes and decodes into a bounded queue while the main thread runs the detector on batches
of frames and encodes, so decoding overlaps inference and memory stays bounded whatever the
video's length.

Every video written is H.264 (libx264, ``yuv420p``, CRF 18), which browsers play, in the container
its suffix names (.mp4, .m4v, .mov or .mkv; MP4 and MOV get ``+faststart``, so playback starts
before the whole file is downloaded). Frames keep their timestamps, so variable frame rates and the
audio stay in sync. The first audio stream is copied packet for packet, or re-encoded to AAC where
the container does not accept its codec (Opus in .mov, 8-bit or mu-law PCM from an AVI in .mp4, say;
channels in no named order get the default layout of their count). Frames whose display matrix says
"rotate" (phone videos) are turned upright before detection, and written upright. An odd width or
height is padded by one edge row or column, because ``yuv420p`` needs even sizes.

:func:`detect_video` writes one video's results where its :class:`VideoTargets` say: the video with
boxes drawn to each of ``videos`` (any number), and one JSON line per frame to ``jsonl`` (a file, or
a text stream such as stdout when there is none). Each JSON line is
``{"video", "frame", "time", "width", "height", "faces": [{"box", "score"}]}``, ``time`` in seconds
from the stream's start by the decoder's timestamps (frame / fps where a frame has none).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import queue
import shutil
import stat
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from srn.atomic import atomic_output
from srn.errors import InputPathError, MissingDependencyError, OutputPathError
from srn.inference.loop import BaseSink
from srn.inference.sinks import register_sink
from srn.paths import check_input_file

__all__ = [
    "OUTPUT_SUFFIXES",
    "DecodingThread",
    "Frame",
    "FrameReader",
    "RecordLines",
    "VideoSink",
    "VideoSource",
    "VideoTargets",
    "VideoWriter",
    "detect_video",
    "draw_render",
    "item_errors",
    "process_video",
    "require_av",
]

# Containers that hold H.264; .webm holds only VP8/VP9/AV1, and browsers do not play .avi.
OUTPUT_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv")
CRF = 18  # visually lossless for x264
PRESET = "fast"
_FASTSTART_SUFFIXES = {".mp4", ".m4v", ".mov"}

Render = Callable[[np.ndarray, Any], np.ndarray]


def require_av() -> Any:
    """PyAV, or a :class:`srn.errors.MissingDependencyError` saying how to install it."""
    try:
        import av
    except ImportError:
        raise MissingDependencyError("video needs PyAV: pip install av (in a checkout: pip install -e '.[video]')") from None
    return av


def put_until_stopped(items: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put ``item`` on a bounded queue, waiting while it is full, unless ``stop`` is set first
    (a decoding thread must not block forever on a consumer that has gone). True if it was put."""
    while not stop.is_set():
        try:
            items.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


class DecodingThread:
    """What a file's and a live stream's readers share: a background thread that decodes into a
    bounded queue (at most ``max_queued`` items ahead of the consumer), hands its end (or its error)
    to the consuming thread, and stops when :meth:`close` is called. A subclass opens
    ``self._container`` (PyAV's) and yields what it decodes from :meth:`_produce`."""

    _END = object()

    def __init__(self, max_queued: int) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, max_queued))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _produce(self) -> Iterator[Any]:
        raise NotImplementedError

    def _put(self, item: object) -> bool:
        return put_until_stopped(self._queue, item, self._stop)

    def _decode(self) -> None:
        try:
            for item in self._produce():
                if self._stop.is_set() or not self._put(item):
                    return
            self._put(self._END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread
            self._put(exc)

    def _start(self, name: str) -> None:
        if self._thread is not None:
            raise RuntimeError(f"a {type(self).__name__} is iterated once")
        self._thread = threading.Thread(target=self._decode, name=name, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            if self._thread.is_alive():
                return  # stuck in FFmpeg: leave the container to the daemon thread
        with contextlib.suppress(self.av.FFmpegError, OSError):  # type: ignore[attr-defined]
            self._container.close()  # type: ignore[attr-defined]


@dataclass
class Frame:
    """One decoded frame.

    Attributes:
        index: 0, 1, ... in presentation order.
        time: seconds from the stream's start.
        image: RGB uint8 (H, W, 3), upright.
        pts: the decoder's timestamp in the stream's time base (None where the container has none).
    """

    index: int
    time: float
    image: np.ndarray
    pts: int | None = None


class FrameReader(DecodingThread):
    """Decode a video in a background thread into a bounded queue.

    Iterating yields :class:`Frame` in order and, with ``audio=True``, the first audio stream's
    packets (``av.Packet``; ``av.AudioFrame`` once :attr:`decode_audio` is set) interleaved as the
    file stores them. The thread starts at the first iteration: everything that needs the input's
    streams from this thread (:meth:`peek`, :class:`VideoWriter` copying the audio stream's
    parameters) happens before, because FFmpeg's demuxer updates them as it reads. A decoding
    error is raised in the iterating thread; leaving the loop early (or :meth:`close`) stops the
    thread.

    Args:
        path: the video file.
        max_queued: items decoded ahead of the consumer at most.
        audio: also deliver the audio (to copy it into an output).

    Attributes:
        fps: the nominal frame rate (0 when unknown); rate: the same as a Fraction or None.
        time_base: the video stream's time base, the unit of :attr:`Frame.pts`.
        frame_count: frames the container announces (0 when unknown).
        audio_stream: the input's audio stream when ``audio`` and there is one, else None.
        decode_audio: deliver decoded audio frames instead of packets (to re-encode them).
    """

    def __init__(self, path: str | Path, max_queued: int = 16, audio: bool = False) -> None:
        super().__init__(max_queued)
        self.av = require_av()
        self.path = check_input_file(path, what="video file")
        try:
            self._container = self.av.open(str(self.path))
        except (self.av.FFmpegError, UnicodeDecodeError) as exc:
            raise InputPathError(self.path, f"cannot open the video ({exc})") from None
        if not self._container.streams.video:
            self._container.close()
            raise InputPathError(self.path, "has no video stream")
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"  # frame- and slice-threaded decoding
        self._stream = stream
        self.rate: Fraction | None = stream.average_rate or stream.guessed_rate or None
        self.fps = float(self.rate) if self.rate else 0.0
        self.time_base: Fraction = stream.time_base or Fraction(1, 90000)
        self.start_pts = stream.start_time or 0
        self.frame_count = max(0, int(stream.frames or 0))
        self.audio_stream = self._container.streams.audio[0] if audio and self._container.streams.audio else None
        self.decode_audio = False
        self._items = self._demux()
        self._peeked: list[Any] = []

    def _frame(self, frame: Any, index: int) -> Frame:
        image = frame.to_ndarray(format="rgb24")
        turns = round(frame.rotation / 90) % 4  # counter-clockwise quarter turns for display
        if turns:
            image = np.ascontiguousarray(np.rot90(image, k=turns))
        if frame.pts is not None:
            time = float((frame.pts - self.start_pts) * self.time_base)
        else:  # some containers carry no timestamps; then the nominal rate is the best there is
            time = index / self.fps if self.fps > 0 else 0.0
        return Frame(index, time, image, frame.pts)

    def _demux(self) -> Iterator[Any]:
        """Frames and raw audio packets (the demuxer's final flush packets included), in file order."""
        index = 0
        streams = [self._stream] + ([self.audio_stream] if self.audio_stream is not None else [])
        for packet in self._container.demux(*streams):
            if packet.stream is self.audio_stream:
                yield packet
                continue
            for frame in packet.decode():
                yield self._frame(frame, index)
                index += 1

    def peek(self) -> Frame | None:
        """The first frame (None for a video without any), decoded now, in this thread; iterating
        still starts with it."""
        for item in self._peeked:
            if isinstance(item, Frame):
                return item
        if self._thread is not None:
            raise RuntimeError("FrameReader.peek after iteration started")
        try:
            for item in self._items:
                self._peeked.append(item)
                if isinstance(item, Frame):
                    return item
        except self.av.FFmpegError as exc:
            raise InputPathError(self.path, f"decoding failed ({exc})") from None
        return None

    def _produce(self) -> Iterator[Any]:
        peeked, self._peeked = self._peeked, []
        for item in itertools.chain(peeked, self._items):
            if self._stop.is_set():
                return
            if isinstance(item, Frame):
                yield item
            elif self.decode_audio:
                yield from item.decode()  # a flush packet flushes the decoder
            elif item.dts is not None:  # dts None: the demuxer's flush
                yield item

    def __iter__(self) -> Iterator[Any]:
        self._start(f"decode {self.path.name}")
        try:
            while True:
                item = self._queue.get()
                if item is self._END:
                    return
                if isinstance(item, BaseException):
                    raise InputPathError(self.path, f"decoding failed ({item})")
                yield item
        finally:
            self.close()


class VideoWriter:
    """Encode RGB frames as H.264 into ``path`` (see the module doc), with the audio of ``reader``.

    Create it before iterating ``reader``: it peeks at the first frame for the video's size and
    copies the audio stream's parameters (or sets ``reader.decode_audio`` to re-encode it).
    A frame of another size than the first (a stream that changes resolution) is scaled to it.

    Args:
        path: the file to write (a temporary one, usually; its suffix picks the container).
        reader: the source, for its first frame, frame rate, time base and audio stream.
        name: the path to name in error messages (default ``path``).
    """

    def __init__(self, path: str | Path, reader: FrameReader, name: str | Path | None = None) -> None:
        self.av = require_av()
        self.path, self.name, self.reader = Path(path), Path(name or path), reader
        first = reader.peek()
        if first is None:
            raise InputPathError(reader.path, "has no frame to decode")
        self.height, self.width = first.image.shape[:2]
        options = {"movflags": "+faststart"} if self.path.suffix.lower() in _FASTSTART_SUFFIXES else None
        try:
            self._container = self.av.open(str(self.path), "w", options=options)
        except (self.av.FFmpegError, ValueError) as exc:
            raise OutputPathError(self.name, f"cannot write a video here ({exc})") from None
        video = self._container.add_stream("libx264", rate=reader.rate or Fraction(25))
        # yuv420p stores colour at half resolution, so both sizes must be even: pad by one.
        video.width, video.height, video.pix_fmt = self.width + self.width % 2, self.height + self.height % 2, "yuv420p"
        video.codec_context.time_base = reader.time_base
        video.options = {"crf": str(CRF), "preset": PRESET}
        self._video = video
        self._audio: Any = None
        self._resampler: Any = None
        source = reader.audio_stream
        if source is not None and self._container_accepts(source):
            self._audio = self._container.add_stream_from_template(source)
        elif source is not None:
            self._audio = self._container.add_stream("aac", rate=source.codec_context.sample_rate, layout=_named_layout(source))
            encoder = self._audio.codec_context
            self._resampler = self.av.AudioResampler(
                format=encoder.format, layout=encoder.layout, rate=encoder.sample_rate, frame_size=encoder.frame_size or None
            )
            reader.decode_audio = True
        self._last_pts: int | None = None
        self.frames = 0

    def _container_accepts(self, source: Any) -> bool:
        """Whether this container can hold ``source``'s codec as it is (tried on a file in memory).

        PCM is never copied into MP4: the muxer takes its header, then refuses channels in no named
        order when it finishes the file ("cannot finish the video"), and players do not read PCM
        in MP4 anyway; it is re-encoded to AAC. MOV and MKV hold PCM."""
        if self.path.suffix.lower() in (".mp4", ".m4v") and source.codec_context.name.startswith("pcm_"):
            return False
        probe = self.av.open(io.BytesIO(), "w", format=self._container.format.name)
        try:
            probe.add_stream_from_template(source)
            probe.start_encoding()
            probe.close()
            return True
        except (self.av.FFmpegError, ValueError):
            return False
        finally:
            with contextlib.suppress(self.av.FFmpegError, ValueError):
                probe.close()

    def _mux(self, packets: Any) -> None:
        try:
            for packet in packets:
                self._container.mux(packet)
        except self.av.FFmpegError as exc:
            raise OutputPathError(self.name, f"cannot write the video ({exc})") from None

    def write(self, frame: Frame, image: np.ndarray) -> None:
        """Encode ``image`` (RGB uint8 (H, W, 3)) at ``frame``'s time."""
        height, width = image.shape[:2]
        if (height, width) == (self.height, self.width) and (height % 2 or width % 2):
            image = np.pad(image, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        picture = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        if (picture.height, picture.width) != (self._video.height, self._video.width):
            picture = picture.reformat(width=self._video.width, height=self._video.height)
        pts = frame.pts if frame.pts is not None else round(frame.time / self.reader.time_base)
        if self._last_pts is not None and pts <= self._last_pts:  # x264 refuses repeated timestamps
            pts = self._last_pts + 1
        picture.pts, picture.time_base, self._last_pts = pts, self.reader.time_base, pts
        self._mux(self._video.encode(picture))
        self.frames += 1

    def write_audio(self, item: Any) -> None:
        """Copy a packet of the reader's audio stream, or re-encode a decoded audio frame."""
        if self._audio is None:
            return
        if self._resampler is None:
            item.stream = self._audio
            self._mux([item])
            return
        item.pts = None  # the resampler counts samples from the first frame
        for chunk in self._resampler.resample(item):
            self._mux(self._audio.encode(chunk))

    def close(self) -> None:
        """Flush the encoders and finish the file."""
        try:
            self._mux(self._video.encode(None))
            if self._resampler is not None:
                for chunk in self._resampler.resample(None):
                    self._mux(self._audio.encode(chunk))
                self._mux(self._audio.encode(None))
        except BaseException:
            self.abort()
            raise
        try:
            self._container.close()
        except self.av.FFmpegError as exc:
            raise OutputPathError(self.name, f"cannot finish the video ({exc})") from None
        self._check_written()

    def _check_written(self) -> None:
        """Read the finished file back: it must hold every frame encoded (a full disk under FFmpeg
        can leave a file that ends early without an error)."""
        try:
            with self.av.open(str(self.path)) as written:
                stream = written.streams.video[0]
                count = stream.frames or sum(1 for packet in written.demux(stream) if packet.size)
        except (self.av.FFmpegError, OSError, IndexError, ValueError) as exc:
            raise OutputPathError(self.name, f"cannot finish the video: it does not read back ({exc})") from None
        if count != self.frames:
            raise OutputPathError(self.name, f"cannot finish the video: {count} of its {self.frames} frames reached the disk")

    def abort(self) -> None:
        """Stop without finishing the file (the caller removes it)."""
        with contextlib.suppress(self.av.FFmpegError, ValueError):
            self._container.close()


# FFmpeg's default channel layout of each channel count (av_channel_layout_default).
_DEFAULT_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}


def _named_layout(stream: Any) -> Any:
    """The audio layout to encode ``stream`` in: its own, or, where the source does not name the
    channels' order ("2 channels", as AVI files store PCM), the default layout of that many
    channels, which the AAC encoder needs (it refuses an unnamed one)."""
    layout = stream.codec_context.layout
    if layout.name.endswith("channels"):
        return _DEFAULT_LAYOUTS.get(layout.nb_channels, layout)
    return layout


class VideoSource:
    """The frames of a video file as a source of the run loop (:func:`srn.inference.loop.run`),
    decoded by a :class:`FrameReader`; each item's ``source`` is ``name`` (default: the path as
    given), with the frame's number and time. Audio that the reader delivers goes to
    :attr:`on_audio` (a :class:`VideoSink` copies it into its video).

    Args:
        path: the video file.
        max_queued: frames decoded ahead of the detector at most.
        audio: also read the audio (to copy it into an output).
    """

    unit = "frame"

    def __init__(self, path: str | Path, max_queued: int = 16, audio: bool = False, name: str | None = None) -> None:
        self.reader = FrameReader(path, max_queued=max_queued, audio=audio)
        self.name = str(path) if name is None else name
        self.total: int | None = self.reader.frame_count or None
        self.on_audio: Callable[[Any], None] = lambda packet: None

    def batches(self, batch_size: int, stop: threading.Event | None = None) -> Iterator[list[Any]]:
        import torch

        from srn.inference.loop import Item

        batch: list[Any] = []
        for thing in self.reader:
            if not isinstance(thing, Frame):
                self.on_audio(thing)
                continue
            # (H, W, 3) -> (3, H, W), a view
            batch.append(Item(thing.index, self.name, torch.from_numpy(thing.image).permute(2, 0, 1),
                              frame=thing.index, time=thing.time, payload=thing))
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def close(self) -> None:
        self.reader.close()


@register_sink("video", *OUTPUT_SUFFIXES)
class VideoSink(BaseSink):
    """An encoded video (:class:`VideoWriter`) of what the run reads, each frame as ``render(image,
    faces)`` makes it (default: unchanged); made before the run, on the source's reader, and
    finished by :meth:`close` (:meth:`abort` leaves it unfinished, for the caller to remove).

    Args:
        path: the file to write (a temporary one, usually).
        source: a :class:`VideoSource` (its audio is copied too) or a live source's reader.
        render: ``render(image, faces) -> image`` on RGB uint8 (H, W, 3).
        name: the path to name in error messages.
    """

    def __init__(self, path: str | Path, source: Any, render: Render | None = None, name: str | Path | None = None) -> None:
        reader = getattr(source, "reader", source)
        self.writer = VideoWriter(path, reader, name)
        self.render = render
        if isinstance(source, VideoSource):
            source.on_audio = self.writer.write_audio
        self._done = False

    def write(self, faces: Any, item: Any = None) -> None:
        frame = item.payload
        self.writer.write(frame, self.render(frame.image, faces) if self.render is not None else frame.image)

    def close(self) -> None:
        if not self._done:
            self._done = True
            self.writer.close()

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self.writer.abort()


class _OnFrame(BaseSink):
    """A sink that calls ``on_frame(frame, faces)`` for each frame."""

    def __init__(self, on_frame: Callable[[Frame, Any], None]) -> None:
        self.on_frame = on_frame

    def write(self, faces: Any, item: Any = None) -> None:
        self.on_frame(item.payload, faces)


def process_video(
    detector: Any,
    path: str | Path,
    batch_size: int,
    output: str | Path | None = None,
    render: Render | None = None,
    on_frame: Callable[[Frame, Any], None] | None = None,
    output_name: str | Path | None = None,
    sinks: Sequence[Any] = (),
) -> int:
    """Run ``detector`` (a :class:`srn.inference.Detector`) on every frame of ``path``, through the
    run loop (:func:`srn.inference.loop.run`).

    Args:
        batch_size: frames per call of ``detector.detect``.
        output: where to encode the video (see the module doc), or None for none.
        render: ``render(image, faces) -> image``: what to write for each frame (RGB uint8
            (H, W, 3) in and out; default: the frame unchanged), e.g. boxes drawn or faces hidden.
        on_frame: called with each :class:`Frame` and its :class:`srn.inference.Faces`, in order.
        output_name: the path to name in errors about ``output`` (when that is a temporary file).
        sinks: more sinks to write each frame to (before the video).

    Returns:
        The number of frames processed.
    """
    from srn.inference.loop import run

    source = VideoSource(path, max_queued=4 * batch_size, audio=output is not None)
    try:
        outputs = list(sinks) + ([_OnFrame(on_frame)] if on_frame is not None else [])
        if output is not None:
            outputs.append(VideoSink(output, source, render, output_name))
    except BaseException:
        source.close()
        raise
    summary = run(detector, source, outputs, batch_size, progress=True, desc=source.reader.path.name)
    if summary.stopped is not None:
        raise summary.stopped
    if summary.items == 0:
        raise InputPathError(source.reader.path, "has no frame to decode")
    return summary.items


def item_errors() -> tuple[type[BaseException], ...]:
    """What one video's run may raise that fails that video alone: the package's errors, the
    system's, and FFmpeg's where PyAV has not wrapped them."""
    from srn.errors import SRNError

    errors: tuple[type[BaseException], ...] = (OSError, SRNError, ValueError, EOFError)
    with contextlib.suppress(ImportError):
        import av

        errors += (av.FFmpegError,)
    return errors


def draw_render(image: np.ndarray, faces: Any, scores: bool = True) -> np.ndarray:
    """A :data:`Render` that draws boxes and, with ``scores``, their scores (:func:`srn.inference.draw.draw_faces`)."""
    from srn.inference.draw import draw_faces

    return draw_faces(image, faces.boxes, faces.scores if scores else None)


class RecordLines(BaseSink):
    """Each frame's record (:meth:`srn.inference.Faces.record`) as a JSON line on a text stream,
    flushed per batch; counts the faces."""

    def __init__(self, stream: TextIO, flush: bool = False) -> None:
        self.stream, self.flush_each_batch, self.faces = stream, flush, 0

    def write(self, faces: Any, item: Any = None) -> None:
        self.faces += len(faces)
        self.stream.write(json.dumps(faces.record()) + "\n")

    def flush(self) -> None:
        if self.flush_each_batch:
            self.stream.flush()

    def close(self) -> None:
        """Flush the stream and, where it is a file, make it durable (a full disk is an error here,
        not a short file that looks finished)."""
        self.stream.flush()
        with contextlib.suppress(AttributeError, io.UnsupportedOperation, ValueError):
            fd = self.stream.fileno()
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.fsync(fd)


@dataclass
class VideoTargets:
    """Where one video's results go.

    Attributes:
        videos: files to write the video with boxes drawn to (any number, none included).
        jsonl: the file of the per-frame JSON lines, or None to write them to a text stream.
        scores: whether the drawn videos show each box's score.
    """

    videos: list[Path]
    jsonl: Path | None
    scores: bool = True

    def render(self, image: np.ndarray, faces: Any) -> np.ndarray:
        """The :data:`Render` of the drawn videos."""
        return draw_render(image, faces, self.scores)


def detect_video(detector: Any, path: Path, targets: VideoTargets, batch_size: int,
                 stream: TextIO | None = None) -> tuple[int, int]:
    """Faces in every frame of ``path``: JSON lines and annotated videos as ``targets`` says.

    Every output file is written atomically: all of them appear complete, or none does.

    Args:
        stream: where the JSON lines go when ``targets.jsonl`` is None (default: stdout).

    Returns:
        The number of frames processed and the number of faces found in them.
    """
    stdout = stream if stream is not None else sys.stdout
    with contextlib.ExitStack() as stack:
        video_tmp = stack.enter_context(atomic_output(targets.videos[0])) if targets.videos else None
        jsonl_tmp = stack.enter_context(atomic_output(targets.jsonl)) if targets.jsonl else None
        jsonl = stack.enter_context(open(jsonl_tmp, "w")) if jsonl_tmp else stdout  # noqa: SIM115 - the stack closes it
        lines = RecordLines(jsonl)
        count = process_video(detector, path, batch_size, video_tmp, targets.render, None,
                              targets.videos[0] if targets.videos else None, sinks=[lines])
        found = lines.faces
        if jsonl is not stdout:
            jsonl.close()
        for extra in targets.videos[1:]:
            with atomic_output(extra, size=os.path.getsize(video_tmp)) as tmp:
                shutil.copyfile(video_tmp, tmp)
    return count, found
