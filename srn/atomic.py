"""Atomic file writes, and one writer per output.

**Done means written.** A file is written as a temporary file in the target's folder, made durable,
checked whole, and only then renamed over the target: a crash, a kill or a full disk never leaves a
torn file where a reader looks, and a write that did not reach the disk whole is an ``OSError``
(:class:`TornWrite` when the bytes are short), never a success. Every writer in the package goes
through :func:`atomic_output` (a path for libraries that open it themselves: PIL, PyAV) or
:func:`atomic_file` (a file object whose every byte is counted), so there is one way to do it:

- the temporary file sits beside the target (a rename never crosses file systems) and keeps the
  target's suffix, so libraries that pick a format from the name (PIL, OpenCV, PyAV) still can;
- it is named ``.<name>.<random>.partial<suffix>`` and its writer holds an exclusive ``flock`` on it
  until the rename, so that a temporary file nobody holds is known to be a dead writer's, whatever
  its age: the next run into the folder removes it (:func:`srn.paths.remove_temporaries`);
- before the rename the file is ``fsync``-ed and its size compared with what was written (a C
  encoder that writes to the descriptor itself may ignore a short write on a full disk: PIL's JPEG
  encoder does, so images are written through :func:`atomic_file`, which loops over short writes
  and raises on the first failed one); after it the folder is ``fsync``-ed;
- the finished file gets the permissions of a plain ``open()`` (0666 less the umask), not the 0600
  of :func:`tempfile.mkstemp`.

**One writer per output.** :func:`exclusive_lock` holds an exclusive ``flock`` on ``.<name>.lock``
beside an output (a file of records, its manifest and its parts; a folder of outputs) for the whole
run: a second run on the same output is refused in one line naming the process that holds it. The
kernel releases the lock when its process dies, so a killed run never blocks the next.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from srn.errors import OutputBusyError
from srn.paths import remove_temporaries

__all__ = [
    "PARTIAL_MARK",
    "CheckedFile",
    "TornWrite",
    "atomic_file",
    "atomic_output",
    "atomic_save",
    "atomic_save_figure",
    "atomic_write_bytes",
    "atomic_write_text",
    "exclusive_lock",
    "lock_path",
    "remove_stale_partials",
]

PARTIAL_MARK = ".partial"


class TornWrite(OSError):
    """Fewer bytes reached the file than were written to it (a full disk that a writer ignored)."""

    def __init__(self, written: int, size: int) -> None:
        super().__init__(errno.EIO, f"only {size} of {written} bytes reached the disk (is it full?)")


# The descriptors that hold this process's locks (on temporary files and outputs). A forked child
# (a DataLoader worker) closes its copies at once: a flock belongs to the open file, so a child that
# outlived a killed parent would otherwise hold the parent's locks for it.
_HELD_FDS: set[int] = set()


def _close_held_in_child() -> None:
    for fd in list(_HELD_FDS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_in_child)


def _release(fd: int) -> None:
    _HELD_FDS.discard(fd)
    with contextlib.suppress(OSError):
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot open a folder for fsync
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _make_durable(tmp: Path, expected_size: int | None) -> None:
    """fsync the file now at ``tmp`` (whoever opened it) and check its size; raises ``OSError``."""
    fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        os.fsync(fd)  # a delayed write error (NFS, quotas) surfaces here, before the rename
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if expected_size is not None and size != expected_size:
        raise TornWrite(expected_size, size)


@contextlib.contextmanager
def _partial(path: Path) -> Iterator[tuple[Path, int]]:
    """A locked temporary file beside ``path``: yields its path and descriptor; removed unless renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f"{PARTIAL_MARK}{path.suffix}", dir=path.parent)
    tmp = Path(tmp_name)
    _HELD_FDS.add(fd)
    try:
        with contextlib.suppress(OSError):  # a file system without locks: the file just looks stale sooner
            fcntl.flock(fd, fcntl.LOCK_EX)  # held until the rename: a live writer's file is never stale
        yield tmp, fd
    finally:
        tmp.unlink(missing_ok=True)
        _release(fd)


def _commit(tmp: Path, path: Path, expected_size: int | None = None) -> None:
    _make_durable(tmp, expected_size)
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
    _fsync_folder(path.parent)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], size: int | None = None) -> Iterator[Path]:
    """Yield a temporary path to write; on a clean exit it is made durable, checked to be ``size``
    bytes long where that is known (a copy), and replaces ``path``; on an error it is removed.

    Use it for writers that open the path themselves (PyAV, ``shutil.copyfile``); they must raise
    on a failed write, or their caller check the result (:class:`srn.media.video.VideoWriter` reads
    its file back). Encoders that may ignore a short write (PIL's) write through :func:`atomic_file`."""
    path = Path(path)
    with _partial(path) as (tmp, _):
        yield tmp
        _commit(tmp, path, size)


class CheckedFile(io.RawIOBase):
    """A binary file that writes every byte or raises: short writes are retried, the first failed
    one raises ``OSError``, and :attr:`size` is how long the file must be. It has no ``fileno``, so
    that encoders (PIL's) write through :meth:`write` instead of to the descriptor behind its back;
    ``seek``, ``tell`` and ``read`` work (TIFF writers go back to patch offsets)."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self.size = 0  # the end of the furthest byte written

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        raise io.UnsupportedOperation("fileno")

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            written = os.write(self._fd, view)
            if written <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            view = view[written:]
        self.size = max(self.size, os.lseek(self._fd, 0, os.SEEK_CUR))
        return total

    def readinto(self, buffer: Any) -> int:
        data = os.read(self._fd, len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return os.lseek(self._fd, offset, whence)

    def tell(self) -> int:
        return os.lseek(self._fd, 0, os.SEEK_CUR)

    def truncate(self, size: int | None = None) -> int:
        size = self.tell() if size is None else size
        os.ftruncate(self._fd, size)
        self.size = size
        return size

    def close(self) -> None:  # the descriptor belongs to atomic_file
        super().close()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[CheckedFile]:
    """Yield a :class:`CheckedFile` to write; on a clean exit the file is made durable, checked to
    hold every byte written, and renamed over ``path``; on an error it is removed."""
    path = Path(path)
    with _partial(path) as (tmp, fd):
        handle = CheckedFile(fd)
        yield handle
        _commit(tmp, path, handle.size)


def remove_stale_partials(folder: str | os.PathLike[str], name: str | None = None) -> list[Path]:
    """Delete the temporary files that dead writers left in ``folder`` (for target ``name`` only,
    if given); returns what was removed (:func:`srn.paths.remove_temporaries`)."""
    return remove_temporaries(folder, name=name)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_file(path) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    # surrogateescape: a file name that is not UTF-8 (say caf\xe9.jpg) is written back byte for byte.
    return atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` through a temporary file and a rename."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def atomic_save_figure(fig: Any, path: str | os.PathLike[str]) -> Path:
    """A matplotlib figure through a temporary file and a rename, in the format of ``path``'s suffix."""
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".").lower() or "png")
    return atomic_write_bytes(path, buffer.getvalue())


# -- one writer per output --------------------------------------------------------------------------


def lock_path(path: str | os.PathLike[str]) -> Path:
    """The lock file of the output ``path`` (a file or a folder): ``.<name>.lock`` beside it."""
    path = Path(os.path.abspath(path))
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold the output ``path`` for this process for the block (see the module doc).

    Raises:
        OutputBusyError: another live process holds it, in one line naming that process.
    """
    lock = lock_path(path)
    fd: int | None = None
    while True:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except OSError:
            # Nothing to lock with (a folder we may write in but not beside it, or a path that
            # cannot be an output at all, which the output checks then say in one line).
            fd = None
            break
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if not isinstance(exc, BlockingIOError):  # a file system without locks: nothing to lock with
                os.close(fd)
                fd = None
                break
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            who = f"process {holder}" if holder.isdigit() else "another process"
            raise OutputBusyError(path, f"is being written by another run ({who}); wait for it to end, "
                                        "or write another output") from None
        try:  # the previous holder may have removed the file between our open and our lock
            same = os.path.samestat(os.fstat(fd), os.stat(lock, follow_symlinks=False))
        except OSError:
            same = False
        if same:
            break
        os.close(fd)
    if fd is None:
        yield lock
        return
    _HELD_FDS.add(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield lock
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()  # while still held: whoever waits on this file sees it gone and retries
        _release(fd)
