"""Detections written to files, one record per image, in the formats of ``srn detect``.

A *record* is one image's detections as plain data,
``{"image", "width", "height", "faces": [{"box": [x1, y1, x2, y2], "score"}]}`` (boxes rounded to
2 decimals and scores to 4 by :meth:`srn.inference.Faces.to_records`). Each format has its writer,
and every writer has one small interface, used as a context manager::

    with JsonLinesWriter(path) as writer:   # open()
        for faces in results:
            writer.write(faces)             # one image
        writer.flush()                      # a batch is done
                                            # close(), or abort() on an exception

- :class:`JsonLinesWriter` (``jsonl``): one JSON object per line, appended and flushed per batch,
  so that a run killed late loses at most the batch in flight; the lossless streaming format, and
  the one a stopped run is resumed from (:func:`read_jsonl`, :func:`done_images`).
- :class:`CsvWriter` (``csv``): ``image,width,height,x1,y1,x2,y2,score``, one row per face, streamed
  the same way; an image without faces gets one row with empty box and score fields, so that "no
  faces" differs from "not processed".
- :class:`JsonArrayWriter` (``json``): the records as one JSON array, written atomically when the
  writer closes; an aborted run writes nothing.

The WIDER FACE submission layout, one text file per image, is written by
:class:`srn.evaluation.wider_writer.WiderWriter`, which knows that benchmark's file format.

A writer without a path writes to stdout. File names that are not UTF-8 are written back byte for
byte (``surrogateescape``), in every format.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, TextIO

from srn.atomic import atomic_write_text
from srn.errors import PredictionFormatError
from srn.inference.results import Faces, write_image

__all__ = [
    "CSV_HEADER",
    "CsvWriter",
    "JsonArrayWriter",
    "JsonLinesWriter",
    "RecordWriter",
    "WRITERS",
    "detection_record",
    "done_images",
    "read_jsonl",
    "render",
    "write_crops",
]

CSV_HEADER = ["image", "width", "height", "x1", "y1", "x2", "y2", "score"]

Record = dict[str, Any]


def detection_record(faces: Faces) -> Record:
    """The record of one image's detections; ``faces.source`` names the image."""
    return {"image": faces.source, "width": faces.width, "height": faces.height, "faces": faces.to_records()}


class RecordWriter:
    """One record per image, to ``path`` (None: stdout).

    Args:
        path: the output file, checked by the caller (:func:`srn.paths.check_output_file`).
        append: add to what ``path`` holds instead of replacing it (to resume a stopped run).
    """

    def __init__(self, path: Path | None = None, append: bool = False) -> None:
        self.path, self.append = path, append

    @classmethod
    def render(cls, records: Iterable[Record]) -> str:
        """The whole text of a file of ``records`` in this format."""
        raise NotImplementedError

    def open(self) -> RecordWriter:
        """Start the output; returns the writer."""
        return self

    def write(self, faces: Faces) -> None:
        """Add one image's detections."""
        self.write_record(detection_record(faces))

    def write_record(self, record: Record) -> None:
        """Add one image's record (see the module doc)."""
        raise NotImplementedError

    def flush(self) -> None:
        """A batch is complete: make what was written so far durable, where the format streams."""

    def close(self) -> None:
        """Finish the output."""

    def abort(self) -> None:
        """Stop after a failure: what was flushed stays, nothing more is written."""
        self.close()

    def __enter__(self) -> RecordWriter:
        return self.open()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


class _StreamedWriter(RecordWriter):
    """Text appended per batch to a file or stdout: :meth:`write` collects a batch's text,
    :meth:`flush` writes and flushes it in one piece."""

    header: ClassVar[str] = ""

    def __init__(self, path: Path | None = None, append: bool = False) -> None:
        super().__init__(path, append)
        self._handle: TextIO | None = None
        self._pending: list[str] = []

    @classmethod
    def text(cls, records: Iterable[Record]) -> str:
        """The lines of ``records``, without the header."""
        raise NotImplementedError

    @classmethod
    def render(cls, records: Iterable[Record]) -> str:
        return cls.header + cls.text(records)

    def open(self) -> RecordWriter:
        continued = False
        if self.path is not None:
            continued = self.append and self.path.is_file() and self.path.stat().st_size > 0
            mode = "a" if self.append else "w"
            self._handle = open(self.path, mode, encoding="utf-8", errors="surrogateescape", newline="")  # noqa: SIM115
        if self.header and not continued:
            self._emit(self.header)
        return self

    def _emit(self, text: str) -> None:
        if self._handle is not None:
            self._handle.write(text)
            self._handle.flush()
            return
        buffer = getattr(sys.stdout, "buffer", None)
        if buffer is None:
            sys.stdout.write(text)
        else:
            sys.stdout.flush()
            buffer.write(text.encode("utf-8", "surrogateescape"))
        sys.stdout.flush()

    def write_record(self, record: Record) -> None:
        self._pending.append(self.text([record]))

    def flush(self) -> None:
        text, self._pending = "".join(self._pending), []
        self._emit(text)

    def close(self) -> None:
        if self._pending:
            self.flush()
        self._release()

    def abort(self) -> None:
        self._pending = []  # the batch in flight
        self._release()

    def _release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class JsonLinesWriter(_StreamedWriter):
    """JSON Lines: one record per line, streamed (see the module doc)."""

    @classmethod
    def text(cls, records: Iterable[Record]) -> str:
        return "".join(json.dumps(record) + "\n" for record in records)


class CsvWriter(_StreamedWriter):
    """CSV, one row per face, streamed (see the module doc); Python's :mod:`csv` quotes names that
    hold commas, quotes or newlines, and reads them back as they were."""

    header: ClassVar[str] = ",".join(CSV_HEADER) + "\n"

    @staticmethod
    def rows(record: Record) -> list[list[Any]]:
        """A record's rows: one per face, or one with empty box and score fields for no face."""
        head = [record["image"], record["width"], record["height"]]
        if not record["faces"]:
            return [head + [""] * 5]
        return [head + [*face["box"], face["score"]] for face in record["faces"]]

    @classmethod
    def text(cls, records: Iterable[Record]) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerows(row for record in records for row in cls.rows(record))
        return buffer.getvalue()


class JsonArrayWriter(RecordWriter):
    """One JSON array of every record, written atomically by :meth:`close` (see the module doc)."""

    def __init__(self, path: Path | None = None, append: bool = False) -> None:
        super().__init__(path, append)
        self.records: list[Record] = []

    @classmethod
    def render(cls, records: Iterable[Record]) -> str:
        return json.dumps(list(records), indent=1) + "\n"

    def write_record(self, record: Record) -> None:
        self.records.append(record)

    def close(self) -> None:
        if self.path is not None:
            atomic_write_text(self.path, self.render(self.records))
        else:
            sys.stdout.write(self.render(self.records))

    def abort(self) -> None:
        self.records = []


WRITERS: dict[str, type[RecordWriter]] = {"json": JsonArrayWriter, "jsonl": JsonLinesWriter, "csv": CsvWriter}


def render(fmt: str, records: Iterable[Record]) -> str:
    """The whole text of a file of ``records`` in ``fmt`` (json, jsonl or csv)."""
    return WRITERS[fmt].render(records)


# -- JSON Lines read back: resuming a stopped run, merging the parts of a distributed one ----------


def read_jsonl(path: Path, repair: bool = False) -> list[Record]:
    """The records of a JSON Lines file that a run may have been killed while writing (none when
    the file does not exist).

    A last line without its newline is torn: it is dropped (and cut from the file with ``repair``,
    so that appending goes on after the last whole record). Any other line that is not a record is
    a :class:`srn.errors.PredictionFormatError` naming the file and line.
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


def done_images(sources: Iterable[Path], repair: Path | None = None) -> set[str]:
    """The images that the JSON Lines files ``sources`` already hold records of; the file
    ``repair`` (the one a resumed run appends to) loses a torn last line (:func:`read_jsonl`)."""
    done: set[str] = set()
    for source in sources:
        done.update(record["image"] for record in read_jsonl(source, repair=source == repair))
    return done


# -- faces cut out ------------------------------------------------------------------------------------


def write_crops(folder: Path, faces: Faces, margin: float) -> list[Path]:
    """Each face as ``folder/face_000.jpg``, ``face_001.jpg`` ... by descending score
    (:meth:`srn.inference.Faces.crops` with ``margin``); returns the files written."""
    return [write_image(folder / f"face_{number:03d}.jpg", crop) for number, crop in enumerate(faces.crops(margin))]
