"""The one place that checks the paths a user names, before any work starts, and that expands
names, folders and globs into the image and video files they stand for (:func:`expand_inputs`).

Inputs may be missing, a folder instead of a file (or the reverse), unreadable, empty, or not a
regular file at all (a FIFO would make ``open`` wait forever, a device would never end). Outputs may
sit in a folder that cannot be written, be an existing folder where a file is wanted (or the
reverse), or be one of the inputs. Each case raises :class:`srn.errors.InputPathError` or
:class:`srn.errors.OutputPathError` with one line: ``"<path>: <what is wrong>"``.

Output folders are probed by creating (and removing) a file in them, because permission bits say
nothing to root and nothing about read-only file systems.

The output policy, which every writer of the package follows:

- **never through a link**: an output file that is a symbolic link is refused
  (:func:`check_output_file`); files are written as a temporary file renamed over the target
  (``srn.atomic``), which replaces a link instead of writing to what it points at, and streams are
  opened with ``O_NOFOLLOW``;
- **never into the inputs**: an output that is an input is refused, and a folder that receives
  images (drawings, crops, anonymised copies) may not lie inside a folder the inputs search
  (:func:`check_output_dir` with ``input_patterns``): the next run over that folder would read the
  outputs as inputs, and write their outputs over them;
- **no leftovers**: the temporary files of a killed writer (``.<name>.<random>.partial<suffix>``)
  are never taken as inputs (:func:`is_temporary`) and are removed by the next run that checks an
  output in their folder; a live writer holds a lock on its own, which is how the two are told apart.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import os
import re
import stat
import tempfile
import time
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

from srn.errors import InputPathError, OutputPathError, printable

PathLike = str | os.PathLike[str]

# What a folder is searched for: the suffixes of the images Pillow decodes and of the videos PyAV does.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"})

# The temporary files of the package's writers: srn.atomic's ``.<name>.<random>.partial<suffix>``
# and this module's own write probe.
_TEMPORARY = re.compile(r"\..+\.partial(\.[^.]*)?|\.srn-write-test\..*", re.DOTALL)
# A write probe younger than this may belong to a check that is still running (another process): it
# is left alone. (srn.atomic's temporary files are told by their lock instead.)
_STALE_AFTER_S = 60.0


def is_temporary(path: PathLike) -> bool:
    """Whether ``path`` names a temporary file of a writer of this package (``srn.atomic``): a
    killed run leaves these behind, and they are never inputs."""
    return _TEMPORARY.fullmatch(os.path.basename(os.fspath(path))) is not None


def remove_temporaries(folder: PathLike, name: str | None = None, recursive: bool = False,
                       min_age_s: float = _STALE_AFTER_S) -> list[Path]:
    """Delete what dead writers left in ``folder`` (below it too, with ``recursive``): the
    temporary files of target ``name`` only, if given, else all of them. A temporary file of
    ``srn.atomic`` is stale when no process holds its lock (its writer holds it until the rename, and
    the kernel drops it when the writer dies), whatever its age; a write probe of this module when
    untouched for ``min_age_s`` seconds. Returns what was removed; a file that cannot be removed is left."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    # srn.atomic's own name for a temporary file of `name`: .<name>.<random, no dot>.partial<suffix>
    own = re.compile(rf"\.{re.escape(name)}\.[^.]+\.partial(\.[^.]*)?", re.DOTALL) if name is not None else None
    now = time.time()
    removed = []
    walk = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]
    for parent, _, names in walk:
        for entry in names:
            if not is_temporary(entry) or (own is not None and not own.fullmatch(entry)):
                continue
            stale = Path(parent) / entry
            try:
                info = stale.lstat()
                if not stat.S_ISREG(info.st_mode):
                    continue
                if entry.startswith(".srn-write-test."):
                    if now - info.st_mtime >= min_age_s:
                        stale.unlink()
                        removed.append(stale)
                elif _remove_unheld(stale):
                    removed.append(stale)
            except OSError:
                continue
    return removed


def _remove_unheld(path: Path) -> bool:
    """Remove ``path`` if no process holds a lock on it (its writer is dead); True if removed."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live writer's
        path.unlink()
        return True
    finally:
        os.close(fd)


def describe_mode(mode: int) -> str:
    """What a file of ``st_mode`` ``mode`` is, in words ("a folder", "a FIFO (named pipe)", ...)."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _stat(path: Path, error: type[InputPathError]) -> os.stat_result | None:
    try:
        return path.stat()
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise error(path, "a part of this path is a file, not a folder") from None
    except OSError as exc:
        raise error(path, os.strerror(exc.errno) if exc.errno else str(exc)) from None


def check_input_file(path: PathLike, what: str = "file", allow_empty: bool = False) -> Path:
    """``path`` as a readable, regular, non-empty file; ``what`` names it in messages ("weights file")."""
    path = Path(path)
    info = _stat(path, InputPathError)
    if info is None:
        reason = "a broken symbolic link" if path.is_symlink() else f"no such {what}"
        raise InputPathError(path, reason)
    if stat.S_ISDIR(info.st_mode):
        raise InputPathError(path, f"is a folder, not a {what}")
    if not stat.S_ISREG(info.st_mode):
        raise InputPathError(path, f"is {describe_mode(info.st_mode)}, not a {what}")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise InputPathError(path, f"cannot be read ({os.strerror(exc.errno) if exc.errno else exc})") from None
    if info.st_size == 0 and not allow_empty:
        raise InputPathError(path, f"is empty (0 bytes), not a {what}")
    return path


def check_input_dir(path: PathLike, what: str = "folder") -> Path:
    """``path`` as a folder that can be listed."""
    path = Path(path)
    info = _stat(path, InputPathError)
    if info is None:
        raise InputPathError(path, f"no such {what}")
    if not stat.S_ISDIR(info.st_mode):
        raise InputPathError(path, f"is {'a file' if stat.S_ISREG(info.st_mode) else describe_mode(info.st_mode)}, not a {what}")
    try:
        next(os.scandir(path), None)
    except OSError as exc:
        raise InputPathError(path, f"cannot be listed ({os.strerror(exc.errno) if exc.errno else exc})") from None
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _probe_writable(folder: Path, target: Path) -> None:
    try:
        fd, probe = tempfile.mkstemp(prefix=".srn-write-test.", dir=folder)
    except OSError as exc:
        reason = "read-only file system" if exc.errno == errno.EROFS else (os.strerror(exc.errno) if exc.errno else str(exc))
        raise OutputPathError(target, f"cannot write in {folder} ({reason})") from None
    os.close(fd)
    os.unlink(probe)


def _existing_ancestor(path: Path) -> Path:
    for parent in [path, *path.parents]:
        if parent.exists() or parent.is_symlink():
            return parent
    return Path(".")


def _prepare_folder(folder: Path, target: Path) -> None:
    """Create ``folder`` (and its parents) and probe that files can be written in it."""
    ancestor = _existing_ancestor(folder)
    if not ancestor.is_dir():
        raise OutputPathError(target, f"{ancestor} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(target, f"cannot create the folder {folder} ({os.strerror(exc.errno) if exc.errno else exc})") from None
    _probe_writable(folder, target)


def _not_an_input(path: Path, inputs: Iterable[PathLike]) -> None:
    resolved = path.resolve()
    for source in inputs:
        source = Path(source)
        if resolved == source.resolve() or _same_file(path, source):
            raise OutputPathError(path, "is also an input; refusing to overwrite it")


def check_output_file(path: PathLike, inputs: Iterable[PathLike] = ()) -> Path:
    """``path`` as a file that can be written: not a symbolic link, not a folder, not an input, in a
    writable folder (created if missing). What dead writers left in that folder is removed
    (:func:`remove_temporaries`)."""
    path = Path(path)
    if path.is_symlink():
        raise OutputPathError(path, "is a symbolic link; outputs are never written through one (name the file it points to, or remove the link)")
    info = _stat(path, OutputPathError)
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise OutputPathError(path, "is a folder; give a file name")
    if info is not None and not stat.S_ISREG(info.st_mode):
        raise OutputPathError(path, f"is {describe_mode(info.st_mode)}, not a regular file")
    _not_an_input(path, inputs)
    folder = path.parent if str(path.parent) else Path(".")
    _prepare_folder(folder, path)
    remove_temporaries(folder)  # a dead writer's, of this output, its manifest or anything else here
    return path


def check_output_dir(path: PathLike, inputs: Iterable[PathLike] = (), input_patterns: Sequence[PathLike] = ()) -> Path:
    """``path`` as a folder that files can be written in (created if missing); no input is this folder.

    Args:
        inputs: the input files and folders; none may be this folder.
        input_patterns: the names, folders and globs the inputs were expanded from
            (:func:`expand_inputs`), given for a folder that receives images: it may not lie in a
            folder they search (:func:`input_roots`), where a later run would take its images for
            inputs.

    The temporary files that killed writers left in the folder are removed: at any depth for a
    folder that receives images (``input_patterns`` given), whose tree mirrors the inputs'.
    """
    path = Path(path)
    info = _stat(path, OutputPathError)
    if info is not None and not stat.S_ISDIR(info.st_mode):
        raise OutputPathError(path, f"is {'a file' if stat.S_ISREG(info.st_mode) else describe_mode(info.st_mode)}, not a folder")
    for source in inputs:
        if _same_file(path, Path(source)):
            raise OutputPathError(path, "is also an input; refusing to write into it")
    resolved = Path(os.path.realpath(path))
    for root in input_roots(input_patterns):
        if resolved == root or root in resolved.parents:
            raise OutputPathError(path, f"is inside the input folder {printable(root)}; a later run over it would read "
                                        "these outputs as inputs: choose a folder outside it")
    _prepare_folder(path, path)
    remove_temporaries(path, recursive=bool(input_patterns))
    return path


# -- inputs: names, folders and globs -> files ---------------------------------------------------------


def is_video(path: PathLike) -> bool:
    """Whether ``path`` names a video, by its suffix (:data:`VIDEO_SUFFIXES`)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def expand_inputs(patterns: Sequence[PathLike], suffixes: Collection[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Files, folders (searched recursively for files with one of ``suffixes``) and globs, in a
    stable order, each once.

    What is not a folder is kept, whatever it is (a FIFO, a device, a broken link), so that reading
    it fails with one line for that file instead of it vanishing silently. Folders and globs never
    yield the temporary files of a killed writer (:func:`is_temporary`).

    Args:
        patterns: file names, folder names and globs (``**`` crosses folders).
        suffixes: lower-case suffixes, with their dot, of the files a folder is searched for
            (default :data:`IMAGE_SUFFIXES`; add :data:`VIDEO_SUFFIXES` for videos too).

    Raises:
        InputPathError: ``"<pattern>: no such file or folder"``, ``"<pattern>: no file matches"``
            for a glob, or ``"<folder>: holds no file of type .bmp, ..."`` for a folder with nothing
            to read (a run over it would do nothing: that is a bad input, not a success).
    """
    found: list[Path] = []
    for pattern in map(os.fspath, patterns):
        path = Path(pattern)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in suffixes and not is_temporary(p) and not p.is_dir())
            if not files:
                raise InputPathError(path, f"holds no file of type {', '.join(sorted(suffixes))} (searched at every depth)")
            found.extend(files)
        elif path.exists() or path.is_symlink():
            found.append(path)
        elif glob.has_magic(pattern):
            matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
            files = [p for p in matches if not p.is_dir() and not is_temporary(p)]
            if not files:
                raise InputPathError(pattern, "no file matches")
            found.extend(files)
        else:
            raise InputPathError(pattern, "no such file or folder")
    unique, seen = [], set()
    for path in found:
        key = os.path.abspath(path)  # photos/a.jpg and ./photos/../photos/a.jpg are one file
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def input_roots(patterns: Sequence[PathLike]) -> list[Path]:
    """The folders that ``patterns`` search, resolved: each named folder, and for a glob the folder
    before its first wildcard (``shoot/2024/*/*.jpg`` searches ``shoot/2024``). A named file
    searches nothing."""
    roots = []
    for pattern in map(os.fspath, patterns):
        if os.path.isdir(pattern):
            roots.append(Path(os.path.realpath(pattern)))
        elif glob.has_magic(pattern) and not os.path.lexists(pattern):
            fixed = []
            for part in Path(pattern).parts:
                if glob.has_magic(part):
                    break
                fixed.append(part)
            roots.append(Path(os.path.realpath(os.path.join(*fixed) if fixed else ".")))
    return roots


def relative_paths(patterns: Sequence[PathLike], files: Sequence[PathLike]) -> list[Path]:
    """Each file's path below the deepest folder that holds every input (named folders count as
    themselves, files by their folder): the names that outputs mirroring the inputs' tree take, so
    that ``a/x.jpg`` and ``b/x.jpg`` never share one."""
    folders = [os.path.abspath(p) for p in patterns if os.path.isdir(p)]
    folders += [os.path.dirname(os.path.abspath(f)) for f in files]
    root = os.path.commonpath(folders)
    return [Path(os.path.relpath(os.path.abspath(f), root)) for f in files]


__all__ = [
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "check_input_dir",
    "check_input_file",
    "check_output_dir",
    "check_output_file",
    "describe_mode",
    "expand_inputs",
    "input_roots",
    "is_temporary",
    "is_video",
    "relative_paths",
    "remove_temporaries",
]
