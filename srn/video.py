"""``srn detect clip.mp4 --out annotated.mp4``: faces in every frame of a video.

OpenCV (the ``video`` extra) decodes and encodes. A background thread decodes frames into a bounded
queue while the main thread runs the detector on batches of ``--batch-size`` frames, so decoding
overlaps inference and memory stays bounded whatever the video's length.

Outputs, for each input video:

- ``--out X.mp4`` (or .avi, .mov, .mkv, ...): the video with boxes drawn, plus per-frame JSON lines
  in ``X.jsonl``;
- ``--out X.jsonl``: the JSON lines only;
- ``--out DIR`` with several videos: ``DIR/<name>.mp4`` and ``DIR/<name>.jsonl`` for each;
- no ``--out``: JSON lines on stdout;
- ``--save-vis DIR``: also ``DIR/<name>.mp4`` with boxes drawn.

Each JSON line is ``{"video", "frame", "time", "width", "height", "faces": [{"box", "score"}]}``,
``time`` in seconds from the decoder's timestamps (frame / fps when the container has none).
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from srn.errors import DeviceError, InputPathError, OutputPathError

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
# The codec each container gets from cv2.VideoWriter; mp4v is in every OpenCV build.
_FOURCC = {".avi": "MJPG", ".mkv": "mp4v", ".webm": "VP80"}
_DEFAULT_FOURCC = "mp4v"
_BOX_COLOUR = (0, 255, 0)  # BGR lime, as the image visualisation


def require_cv2() -> Any:
    """OpenCV, or an error saying which extra installs it."""
    try:
        import cv2
    except ImportError:
        raise DeviceError("video input needs OpenCV: install the 'video' extra") from None
    return cv2


@dataclass
class Frame:
    """One decoded frame: ``image`` is BGR uint8 (H, W, 3) as OpenCV gives it."""

    index: int
    time: float
    image: np.ndarray


class FrameReader:
    """Decode a video in a background thread into a bounded queue.

    Iterating yields :class:`Frame` in order. A decoding error is raised in the iterating thread;
    leaving the loop early (or :meth:`close`) stops the thread.

    Args:
        path: the video file.
        max_queued: frames decoded ahead of the consumer at most.
    """

    _END = object()

    def __init__(self, path: str | Path, max_queued: int = 16) -> None:
        cv2 = require_cv2()
        self.path = Path(path)
        if not self.path.is_file():
            raise InputPathError(self.path, "no such video file")
        self._capture = cv2.VideoCapture(str(self.path))
        if not self._capture.isOpened():
            raise InputPathError(self.path, "cannot open the video (unknown format or codec)")
        self.fps = float(self._capture.get(cv2.CAP_PROP_FPS)) or 0.0
        self.width = int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.frame_count = max(0, int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT)))
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, max_queued))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._decode, name=f"decode {self.path.name}", daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _decode(self) -> None:
        import cv2

        try:
            index = 0
            while not self._stop.is_set():
                ok, image = self._capture.read()
                if not ok:
                    break
                millis = self._capture.get(cv2.CAP_PROP_POS_MSEC)
                # Some containers carry no timestamps; then the nominal rate is the best we have.
                time = millis / 1000.0 if millis > 0 or index == 0 else (index / self.fps if self.fps > 0 else 0.0)
                if not self._put(Frame(index, time, image)):
                    return
                index += 1
            self._put(self._END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread
            self._put(exc)
        finally:
            self._capture.release()

    def __iter__(self) -> Iterator[Frame]:
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

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class _AtomicOutput:
    """A file written under a temporary name (same suffix, so OpenCV picks the container) and
    renamed into place by :meth:`commit`; :meth:`discard` removes it."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.tmp = path.with_name(f".{path.stem}.partial{path.suffix}")

    def commit(self) -> None:
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


def draw_faces(image: np.ndarray, boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Draw boxes and scores on a BGR frame in place.

    Args:
        image: BGR uint8 (H, W, 3).
        boxes: (D, 4) x1, y1, x2, y2 in pixels; scores: (D,).
    """
    import cv2

    thickness = max(2, round(max(image.shape[:2]) / 400))
    for (x1, y1, x2, y2), score in zip(boxes.round().astype(int).tolist(), scores.tolist()):
        cv2.rectangle(image, (x1, y1), (x2, y2), _BOX_COLOUR, thickness)
        cv2.putText(image, f"{score:.2f}", (x1, max(y1 - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, _BOX_COLOUR, 1, cv2.LINE_AA)
    return image


def _open_writer(path: Path, fps: float, width: int, height: int) -> Any:
    import cv2

    fourcc = cv2.VideoWriter_fourcc(*_FOURCC.get(path.suffix.lower(), _DEFAULT_FOURCC))
    writer = cv2.VideoWriter(str(path), fourcc, fps if fps > 0 else 25.0, (width, height))
    if not writer.isOpened():
        raise OutputPathError(path, "OpenCV cannot write this video format")
    return writer


@dataclass
class VideoTargets:
    """Where one video's results go: annotated videos (any number) and JSON lines (file or stdout)."""

    videos: list[Path]
    jsonl: Path | None


def plan_outputs(videos: list[Path], out: str | None, save_vis: str | None) -> list[VideoTargets]:
    """Output paths of each input video from ``--out`` and ``--save-vis`` (see the module doc)."""
    plans = []
    out_path = Path(out) if out else None
    as_folder = out_path is not None and (out_path.is_dir() or len(videos) > 1 or not out_path.suffix)
    if out_path is not None and not as_folder and out_path.suffix.lower() not in VIDEO_SUFFIXES | {".jsonl"}:
        raise OutputPathError(out_path, f"a video's output must end in .jsonl or a video suffix ({', '.join(sorted(VIDEO_SUFFIXES))})")
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
    for targets, video in zip(plans, videos):
        for target in targets.videos + ([targets.jsonl] if targets.jsonl else []):
            if target.resolve() == video.resolve():
                raise OutputPathError(target, "an output would overwrite its input")
    return plans


def detect_video(detector: Any, path: Path, targets: VideoTargets, batch_size: int, stdout: TextIO = sys.stdout) -> int:
    """Run ``detector`` (a :class:`srn.detector.Detector`) on every frame of ``path``.

    Returns:
        The number of frames processed.
    """
    import torch
    from tqdm import tqdm

    reader = FrameReader(path, max_queued=2 * batch_size)
    outputs = [_AtomicOutput(p) for p in targets.videos]
    jsonl_output = _AtomicOutput(targets.jsonl) if targets.jsonl else None
    writers: list[Any] = []
    count = 0
    try:
        writers = [_open_writer(o.tmp, reader.fps, reader.width, reader.height) for o in outputs]
        jsonl = open(jsonl_output.tmp, "w") if jsonl_output else stdout  # noqa: SIM115 - closed below
        progress = tqdm(total=reader.frame_count or None, unit="frame", file=sys.stderr, disable=None, desc=path.name)
        try:
            for batch in _batches(reader, batch_size):
                rgb = [torch.from_numpy(np.ascontiguousarray(f.image[:, :, ::-1])).permute(2, 0, 1) for f in batch]
                faces_per_frame = detector.detect(rgb)
                for frame, faces in zip(batch, faces_per_frame):
                    record = {"video": str(path), "frame": frame.index, "time": round(frame.time, 4),
                              "width": faces.width, "height": faces.height, "faces": faces.to_records()}
                    jsonl.write(json.dumps(record) + "\n")
                    if writers:
                        drawn = draw_faces(frame.image, faces.boxes.cpu().numpy(), faces.scores.cpu().numpy())
                        for writer in writers:
                            writer.write(drawn)
                count += len(batch)
                progress.update(len(batch))
        finally:
            progress.close()
            if jsonl is not stdout:
                jsonl.close()
        for writer in writers:
            writer.release()
        writers = []
        for output in outputs + ([jsonl_output] if jsonl_output else []):
            output.commit()
    finally:
        reader.close()
        for writer in writers:
            writer.release()
        for output in outputs + ([jsonl_output] if jsonl_output else []):
            output.discard()
    return count


def _batches(frames: FrameReader, size: int) -> Iterator[list[Frame]]:
    batch: list[Frame] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
