"""Errors a user can cause: bad configuration, weights, images, annotations, predictions, paths.

Every one derives from :class:`SRNError`, and ``str(error)`` is one line that names the file (and
line, where there is one) and says what is wrong with the *data*. The library never speaks of
command-line flags; the command line (``srn.cli``) maps these errors to one line on stderr and an
exit code.

Each class also derives from the builtin exception a caller would expect (``ValueError`` for bad
values, ``FileNotFoundError`` for a missing path), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

import os
import re
import reprlib
from typing import Any

__all__ = [
    "AnnotationError",
    "ConfigError",
    "DeviceError",
    "ExportError",
    "ImageReadError",
    "ImageValueError",
    "InputPathError",
    "MissingDependencyError",
    "OutputBusyError",
    "OutputCollisionError",
    "OutputPathError",
    "PredictionFormatError",
    "SRNError",
    "TrainingError",
    "WeightsError",
    "brief",
    "excerpt",
    "one_line",
    "printable",
]


def one_line(text: str) -> str:
    """``text`` with all whitespace runs, newlines included, folded into single spaces."""
    return " ".join(str(text).split())


# The longest excerpt of a value that a message shows (see excerpt).
EXCERPT_CHARS = 60

# repr() with a budget: nested containers, long strings and big numbers are cut while the text is
# made, so a value that expands to gigabytes (YAML aliases) costs a few hundred characters.
_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxtuple = _REPR.maxlist = _REPR.maxarray = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = _REPR.maxdeque = 4
_REPR.maxstring = _REPR.maxother = EXCERPT_CHARS
_REPR.maxlong = 40


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """A short, printable, one-line ``repr`` of ``value`` for a message: at most ``limit``
    characters (and an ellipsis), whatever its size; its making costs a bounded amount of work.

    Every message that quotes a value or a line of a user's file quotes it through this; a
    message about a file that is not of the expected kind quotes nothing of it.
    """
    text = printable(_REPR.repr(value))
    return text if len(text) <= limit else text[: max(limit - 3, 1)] + "..."


def brief(text: str, limit: int = 120) -> str:
    """A message of another library (or an exception's text) as one printable line of at most
    ``limit`` characters: what a reason in parentheses shows of it."""
    text = printable(one_line(text))
    return text if len(text) <= limit else text[: max(limit - 3, 1)] + "..."


# What cannot stand in one line of a terminal as itself: control characters (C0, DEL, C1), the
# Unicode line and paragraph separators, and the lone surrogates that stand for the bytes of a
# file name that is not UTF-8 (os.fsdecode's surrogateescape).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _ESCAPES:
        return _ESCAPES[char]
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the byte that was not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: str | os.PathLike[str]) -> str:
    """``text`` (a file name, or a whole message) with every character that would break or hide
    in one line of a terminal escaped as Python writes it: a newline as ``\\n``, a tab as ``\\t``,
    other control characters as ``\\x1b``, a byte of a name that is not UTF-8 as ``\\xe9``.

    An error about ``"a\\nb.jpg"`` thus stays one line, and shows the name a user can recognise.
    Every message of these errors shows its paths through this; ``srn.cli`` prints every line
    through it too.
    """
    return _UNPRINTABLE.sub(_escape, os.fspath(text) if isinstance(text, os.PathLike) else str(text))


class SRNError(Exception):
    """Base class of every error caused by the user's data, paths or settings."""


class ConfigError(SRNError, ValueError):
    """A configuration key or value is wrong; the message names it."""


class WeightsError(SRNError, ValueError):
    """A weights file is unreadable or does not fit the network; the message names file and keys."""


class ExportError(SRNError, ValueError):
    """An ONNX file or export request that cannot be used; the message names the file."""


class DeviceError(SRNError, ValueError):
    """A device that does not exist on this machine, or that a setting cannot run on."""


class TrainingError(SRNError, RuntimeError):
    """Training cannot go on (a non-finite loss, say); the message says why and what was kept."""


class InputPathError(SRNError, ValueError):
    """A path given as input is missing, of the wrong kind or unreadable: ``"<path>: <reason>"``."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fsdecode(os.fspath(path))
        self.reason = one_line(reason)
        super().__init__(f"{printable(self.path)}: {self.reason}")


class OutputPathError(InputPathError):
    """A path given for output that cannot be written, or that would overwrite an input."""


class OutputBusyError(OutputPathError):
    """Another live run is writing this output (:func:`srn.atomic.exclusive_lock`)."""


class ImageReadError(SRNError, ValueError):
    """An image file that cannot be read or decoded.

    ``str(error)`` is one line, ``"<path>: <reason>"``, for example
    ``photo.jpg: not a decodable image (truncated JPEG)``.

    Attributes:
        path (str): the file, as the caller named it.
        reason (str): why it failed.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fsdecode(os.fspath(path))
        self.reason = one_line(reason)  # one line, whatever a library put in it
        super().__init__(f"{printable(self.path)}: {self.reason}")


class ImageValueError(SRNError, ValueError):
    """An in-memory image (numpy array, PIL image, tensor) of an unsupported type, shape, dtype,
    mode, device or value range; ``str(error)`` is one line that describes the input as given."""


class AnnotationError(SRNError, ValueError):
    """A malformed annotation file. ``str(error)`` is one line: ``"<file>:<line>: <reason>"``."""

    def __init__(self, path: str | os.PathLike[str], line_number: int | None, reason: str) -> None:
        self.path = os.fsdecode(os.fspath(path))
        self.line_number = line_number
        self.reason = one_line(reason)
        where = f"{printable(self.path)}:{line_number}" if line_number is not None else printable(self.path)
        super().__init__(f"{where}: {self.reason}")


class PredictionFormatError(SRNError, ValueError):
    """A prediction or detection file that does not follow its format: ``"<file>, line N: ..."``."""

    def __init__(self, path: str | os.PathLike[str], line: int | None, message: str) -> None:
        self.path = os.fsdecode(os.fspath(path))
        self.line = line
        where = f"{printable(self.path)}, line {line}" if line is not None else printable(self.path)
        super().__init__(f"{where}: {one_line(message)}")


class MissingDependencyError(SRNError, ImportError):
    """An optional package that a feature needs is not installed; the message says which extra
    installs it (``video needs PyAV: pip install av (in a checkout: pip install -e '.[video]')``)."""


class OutputCollisionError(SRNError, ValueError):
    """Two inputs would be written to one output file:
    ``"<first> and <second> would both be written to <target> (<why>); run them separately"``.

    Attributes:
        first, second (str): the two inputs, as the caller named them.
        target (str): the output they share.
    """

    def __init__(
        self,
        first: str | os.PathLike[str],
        second: str | os.PathLike[str],
        target: str | os.PathLike[str],
        why: str = "",
    ) -> None:
        self.first, self.second, self.target = (os.fsdecode(os.fspath(p)) for p in (first, second, target))
        because = f" ({one_line(why)})" if why else ""
        first, second, target = (printable(p) for p in (self.first, self.second, self.target))
        super().__init__(f"{first} and {second} would both be written to {target}{because}; run them separately")


class InferenceOutOfMemory(SRNError, MemoryError):
    """The device (or the host) ran out of memory while the detector ran: the images are too large,
    or the batch too big, for this machine."""

    def __init__(self, message: str = "out of memory") -> None:
        super().__init__(message)
