"""Detections written to files, one record per image, in the formats of ``srn detect``.

A *record* is one image's detections as plain data,
``{"image", "width", "height", "faces": [{"box": [x1, y1, x2, y2], "score"}]}``, which the result
renders itself (:meth:`srn.inference.Faces.record`). Each format has its writer, a sink of the run
loop (:mod:`srn.inference.sinks` registers them), and every writer has one small interface, used as
a context manager::

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
byte (``surrogateescape``), in every format. A file is never written through a symbolic link
(streams are opened with ``O_NOFOLLOW``; the JSON array replaces the file), and a file that cannot
be written (a full disk, say) is an :class:`srn.errors.OutputPathError` that names it; what was
flushed before stays.

**Run manifests.** A JSON Lines file that a later run may resume carries a manifest beside it,
``OUT.manifest.json`` (:class:`RunManifest`, written atomically before the first record): the
settings that shape its records (score threshold, NMS, maximum size, precision, the weights' content)
and the inputs it was made from, resolved, with the folder its relative image names are relative
to. ``--resume`` compares them with its own (:meth:`RunManifest.check`), so that a file made with
other settings or from other inputs is refused instead of extended, and it recognises the images
already done by their resolved paths (:meth:`RunManifest.done_images`): ``photos/a.jpg`` and
``/home/me/photos/a.jpg`` are one image.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from srn.atomic import atomic_write_text
from srn.errors import OutputPathError, PredictionFormatError
from srn.inference.loop import BaseSink, Item
from srn.inference.results import Faces, write_image

__all__ = [
    "CSV_HEADER",
    "CsvWriter",
    "JsonArrayWriter",
    "JsonLinesWriter",
    "RecordWriter",
    "RunManifest",
    "WRITERS",
    "detection_record",
    "done_images",
    "manifest_path",
    "read_jsonl",
    "render",
    "weights_identity",
]

CSV_HEADER = ["image", "width", "height", "x1", "y1", "x2", "y2", "score"]

Record = dict[str, Any]


def detection_record(faces: Faces) -> Record:
    """The record of one image's detections: :meth:`srn.inference.Faces.record`."""
    return faces.record()


class RecordWriter(BaseSink):
    """One record per image, to ``path`` (None: stdout): a sink of :func:`srn.inference.loop.run`.

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

    def write(self, faces: Faces, item: Item | None = None) -> None:
        """Add one image's detections (its record, :meth:`srn.inference.Faces.record`)."""
        self.write_record(faces.record())

    def write_record(self, record: Record) -> None:
        """Add one image's record (see the module doc)."""
        raise NotImplementedError


class _StreamedWriter(RecordWriter):
    """Text appended per batch to a file or stdout: :meth:`write` collects a batch's text,
    :meth:`flush` writes it in one piece, straight to the file descriptor (no buffer that could
    flush half a batch later), and ``fsync``-s a file, so that a batch counts once it is on the disk. When a write fails (a full disk), the file is cut back to its last
    whole batch before the error is raised."""

    header: ClassVar[str] = ""

    def __init__(self, path: Path | None = None, append: bool = False) -> None:
        super().__init__(path, append)
        self._fd: int | None = None
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
            # O_NOFOLLOW: a link put at the path after it was checked is not written through.
            flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if self.append else os.O_TRUNC) | getattr(os, "O_NOFOLLOW", 0)
            try:
                self._fd = os.open(self.path, flags, 0o666)
            except OSError as exc:
                raise OutputPathError(self.path, f"cannot be written ({_reason(exc)})") from None
        if self.header and not continued:
            self._emit(self.header)
        return self

    def _emit(self, text: str) -> None:
        data = text.encode("utf-8", "surrogateescape")
        if self._fd is not None:
            regular = stat.S_ISREG(os.fstat(self._fd).st_mode)
            start = os.lseek(self._fd, 0, os.SEEK_END) if regular else 0
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view):]
                if regular:
                    os.fsync(self._fd)  # a batch counts as written once it is on the disk
            except OSError as exc:  # a full disk: cut the torn batch, keep the whole ones
                if regular:
                    with contextlib.suppress(OSError):
                        os.ftruncate(self._fd, start)
                raise OutputPathError(self.path or "stdout", f"cannot be written ({_reason(exc)}); "
                                      "the records written before it are complete") from None
            return
        buffer = getattr(sys.stdout, "buffer", None)
        if buffer is None:
            sys.stdout.write(text)
        else:
            sys.stdout.flush()
            buffer.write(data)
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
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def _reason(exc: OSError) -> str:
    reason = exc.strerror or str(exc) or type(exc).__name__
    return reason[0].lower() + reason[1:]


class JsonLinesWriter(_StreamedWriter):
    """JSON Lines: one record per line, streamed (see the module doc)."""

    @classmethod
    def text(cls, records: Iterable[Record]) -> str:
        return "".join(json.dumps(record) + "\n" for record in records)


class CsvWriter(_StreamedWriter):
    """CSV, one row per face, streamed (see the module doc); a name that holds a comma, a quote or
    any control character (a carriage return, a newline) is quoted, so that Python's :mod:`csv`
    (opened with ``newline=""``) reads it back as it was."""

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
        return "".join(",".join(_csv_field(value) for value in row) + "\n"
                       for record in records for row in cls.rows(record))


# A field is quoted when it holds the separator, a quote, or any character that some reader takes for
# the end of a line or that is no text (C0 and C1 controls, carriage return included, and the Unicode
# line and paragraph separators): Python's csv quotes only "\n" of them, and a "\r" tore the row.
_CSV_QUOTED = re.compile(r'[,"\x00-\x1f\x7f-\x9f\u2028\u2029]')


def _csv_field(value: Any) -> str:
    text = str(value)
    return '"' + text.replace('"', '""') + '"' if _CSV_QUOTED.search(text) else text


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
            try:
                atomic_write_text(self.path, self.render(self.records))
            except OSError as exc:
                raise OutputPathError(self.path, f"cannot be written ({_reason(exc)})") from None
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


def done_images(sources: Iterable[Path], repair: Path | None = None, root: str | os.PathLike[str] | None = None) -> set[str]:
    """The images that the JSON Lines files ``sources`` already hold records of; the file
    ``repair`` (the one a resumed run appends to) loses a torn last line (:func:`read_jsonl`).

    With ``root``, each image is given resolved (:func:`resolved_image`), a relative name taken
    from ``root``: the folder of the run that wrote it (:attr:`RunManifest.cwd`)."""
    done: set[str] = set()
    for source in sources:
        names = (record["image"] for record in read_jsonl(source, repair=source == repair))
        done.update(names if root is None else (resolved_image(name, root) for name in names))
    return done


def resolved_image(name: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> str:
    """The absolute, symlink-free path of image ``name`` (relative names taken from ``root``,
    default the current folder): what tells two spellings of one image apart from two images."""
    return os.path.realpath(os.path.join(os.fspath(root) if root is not None else os.getcwd(), os.fspath(name)))


# -- what produced a file: the run manifest ----------------------------------------------------------

MANIFEST_SUFFIX = ".manifest.json"
_MANIFEST_KIND = "srn detect run manifest"


def manifest_path(out: str | os.PathLike[str]) -> Path:
    """Where the manifest of the output file ``out`` is: ``OUT.manifest.json`` beside it."""
    out = Path(out)
    return out.with_name(out.name + MANIFEST_SUFFIX)


def weights_identity(weights: str | os.PathLike[str] | None, chunk: int = 1 << 20) -> str:
    """Who the weights are, whatever their file is called: ``sha256:<hex>`` of the file's bytes,
    or ``shipped`` for the package's own model (None)."""
    if weights is None:
        return "shipped"
    digest = hashlib.sha256()
    try:
        with open(weights, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    except OSError:  # the detector reports the file; here it is only named
        return os.path.realpath(weights)
    return f"sha256:{digest.hexdigest()}"


@dataclass(frozen=True)
class RunManifest:
    """What produced a JSON Lines file of records: the settings that shape them, and the inputs.

    Attributes:
        settings: name -> value of every setting that changes a record (plain JSON values).
        inputs: the names, folders and globs the run was given, resolved (:func:`resolved_image`).
        cwd: the folder the records' relative image names are relative to.
    """

    settings: Mapping[str, Any]
    inputs: tuple[str, ...]
    cwd: str

    @classmethod
    def for_run(cls, settings: Mapping[str, Any], patterns: Sequence[str | os.PathLike[str]]) -> RunManifest:
        """The manifest of a run in the current folder over ``patterns``."""
        return cls(dict(settings), tuple(resolved_image(p) for p in patterns), os.getcwd())

    def to_json(self) -> str:
        data = {"kind": _MANIFEST_KIND, "settings": dict(self.settings), "inputs": list(self.inputs), "cwd": self.cwd}
        return json.dumps(data, indent=1) + "\n"

    def write(self, out: str | os.PathLike[str]) -> Path:
        """Write this manifest beside the output file ``out``, atomically."""
        target = manifest_path(out)
        try:
            return atomic_write_text(target, self.to_json())
        except OSError as exc:
            raise OutputPathError(target, f"cannot be written ({_reason(exc)})") from None

    @classmethod
    def read(cls, out: str | os.PathLike[str]) -> RunManifest | None:
        """The manifest of the output file ``out``, or None when it has none.

        Raises:
            PredictionFormatError: the manifest is there but is not one.
        """
        path = manifest_path(out)
        if not path.exists() and not path.is_symlink():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PredictionFormatError(path, None, f"not a readable run manifest ({type(exc).__name__})") from None
        ok = (isinstance(data, dict) and data.get("kind") == _MANIFEST_KIND and isinstance(data.get("settings"), dict)
              and isinstance(data.get("inputs"), list) and all(isinstance(i, str) for i in data["inputs"])
              and isinstance(data.get("cwd"), str))
        if not ok:
            raise PredictionFormatError(path, None, "not an srn detect run manifest")
        return cls(data["settings"], tuple(data["inputs"]), data["cwd"])

    def check(self, wanted: RunManifest, out: str | os.PathLike[str], relative_inputs: bool = False) -> None:
        """Refuse to extend ``out`` (made as this manifest says) with a run that ``wanted`` describes.
        With ``relative_inputs`` (the run names some inputs relative to its folder, so its records
        will too) the run must be in the folder that made the file: the records of one file name
        their images relative to one folder, :attr:`cwd`.

        Raises:
            OutputPathError: one line that names every setting that differs (its value in the file,
                then in this run), or the inputs, or the folder.
        """
        keys = sorted(set(self.settings) | set(wanted.settings))
        changed = [f"{key} {_shown(self.settings.get(key))} there, {_shown(wanted.settings.get(key))} here"
                   for key in keys if self.settings.get(key) != wanted.settings.get(key)]
        if changed:
            raise OutputPathError(out, f"was made with other settings ({'; '.join(changed)}); resume with the same "
                                       "settings, or write a new file")
        if sorted(self.inputs) != sorted(wanted.inputs):
            raise OutputPathError(out, f"was made from other inputs ({', '.join(self.inputs)} there; "
                                       f"{', '.join(wanted.inputs)} here); resume with the same inputs, or write a new file")
        if relative_inputs and os.path.realpath(self.cwd) != os.path.realpath(wanted.cwd):
            raise OutputPathError(out, f"was made in the folder {self.cwd}, and its records name images relative to it; "
                                       "resume from that folder, or give the inputs as absolute paths")

    def done_images(self, sources: Iterable[Path], repair: Path | None = None) -> set[str]:
        """The images already in ``sources``, resolved from this manifest's folder
        (:func:`done_images`)."""
        return done_images(sources, repair, root=self.cwd)


def _shown(value: Any) -> str:
    if isinstance(value, str) and value.startswith("sha256:"):
        return value[:19]  # sha256: and 12 hex digits tell two files apart
    return "unset" if value is None else json.dumps(value)


# -- faces cut out ------------------------------------------------------------------------------------
