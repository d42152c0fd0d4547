"""Sinks of a run (:func:`srn.inference.loop.run`), chosen from one registry by name or suffix.

A sink is the one place that writes a run's files: it is opened before the first item, given each
item's :class:`srn.inference.Faces` (which knows its source and renders its record), flushed after
each batch, and closed at the end (:class:`srn.inference.loop.Sink`). Registered here:

========================  =====================================================================
``jsonl`` (.jsonl,        :class:`srn.inference.writers.JsonLinesWriter`: one record per line,
.ndjson)                  flushed per batch
``csv`` (.csv)            :class:`srn.inference.writers.CsvWriter`: one row per face
``json`` (.json)          :class:`srn.inference.writers.JsonArrayWriter`: one array, at the end
``image``                 :class:`DrawnImageSink`: the photo with its faces drawn
``crops``                 :class:`CropsSink`: each face cut out
``wider``                 :class:`srn.evaluation.wider_writer.WiderWriter`: the WIDER FACE layout
``anonymized``            :class:`srn.media.anonymize.AnonymizedImageSink`: faces hidden
``video``                 :class:`srn.media.video.VideoSink`: an encoded video, boxes drawn or
                          faces hidden
========================  =====================================================================

Sinks of a higher floor register themselves with :func:`register_sink` when their module is
imported, so that this floor imports nothing above it. A new output format is one sink class and
one registry line.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from srn.errors import ConfigError, OutputPathError
from srn.inference.loop import BaseSink, Item, ItemFailed
from srn.inference.results import Faces
from srn.inference.writers import CsvWriter, JsonArrayWriter, JsonLinesWriter

__all__ = ["SINKS", "SUFFIXES", "CropsSink", "DrawnImageSink", "register_sink", "sink_class"]

SINKS: dict[str, type] = {}
SUFFIXES: dict[str, str] = {}  # a file suffix -> the name of the sink that writes it

SinkT = TypeVar("SinkT", bound=type)


def register_sink(name: str, *suffixes: str) -> Callable[[SinkT], SinkT]:
    """A class decorator: register a sink class under ``name`` (and the file ``suffixes`` it writes)."""

    def register(cls: SinkT) -> SinkT:
        SINKS[name] = cls
        for suffix in suffixes:
            SUFFIXES[suffix.lower()] = name
        return cls

    return register


def sink_class(name: str) -> type:
    """The sink registered under ``name``, or under the file suffix ``name`` (".jsonl")."""
    key = SUFFIXES.get(name.lower(), name)
    if key not in SINKS:
        raise ConfigError(f"no output format {name!r} (use one of {', '.join(sorted(SINKS))})")
    return SINKS[key]


register_sink("jsonl", ".jsonl", ".ndjson")(JsonLinesWriter)
register_sink("csv", ".csv")(CsvWriter)
register_sink("json", ".json")(JsonArrayWriter)


@register_sink("image")
class DrawnImageSink(BaseSink):
    """Each image with its faces drawn (:meth:`srn.inference.Faces.save`), to ``target(item)``, or
    to ``target`` itself when it is a path (a run of one photo); without their scores when
    ``scores`` is False (crowds, where the labels cover the neighbouring faces)."""

    def __init__(self, target: Path | Callable[[Item], Path], scores: bool = True) -> None:
        self.target, self.scores = target, scores

    def write(self, faces: Faces, item: Item | None = None) -> Path:
        path = self.target if isinstance(self.target, Path) else self.target(item)  # type: ignore[arg-type]
        try:
            return faces.save(path, scores=self.scores)
        except OutputPathError as exc:  # this image's file (a file where its folder should be): it alone fails
            raise ItemFailed(str(exc)) from None


@register_sink("crops")
class CropsSink(BaseSink):
    """Each face cut out with ``margin`` (:meth:`srn.inference.Faces.save_crops`), into the
    folder ``folder(item)``."""

    def __init__(self, folder: Callable[[Item], Path], margin: float = 0.2) -> None:
        self.folder, self.margin = folder, margin

    def write(self, faces: Faces, item: Item | None = None) -> None:
        try:
            faces.save_crops(self.folder(item), self.margin)  # type: ignore[arg-type]
        except OutputPathError as exc:
            raise ItemFailed(str(exc)) from None
        return None
