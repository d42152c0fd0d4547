"""Atomic file writes: a temporary file in the target's folder, then a rename.

A crash or a kill never leaves a torn file: readers see the old file or the whole new one. Every
writer in the package goes through :func:`atomic_output`, so there is one way to do it:

- the temporary file sits beside the target (a rename never crosses file systems) and keeps the
  target's suffix, so libraries that pick a format from the name (PIL, OpenCV, PyAV) still can;
- it is named ``.<name>.<random>.partial<suffix>``, so :func:`remove_stale_partials` can clear what a
  killed run left behind;
- the finished file gets the permissions of a plain ``open()`` (0666 less the umask), not the 0600
  of :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PARTIAL_MARK = ".partial"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on a clean exit it replaces ``path``, on an error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f"{PARTIAL_MARK}{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_partials(folder: str | os.PathLike[str], name: str | None = None) -> list[Path]:
    """Delete the temporary files that killed writers left in ``folder`` (for target ``name`` only,
    if given); returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = f".{name}.*{PARTIAL_MARK}*" if name else f".*{PARTIAL_MARK}*"
    removed = []
    for stale in folder.glob(pattern):
        if stale.is_file():
            stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
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
