"""The bad-input corpus: one file or folder of each class that the error rule names, made fresh in
a temporary folder for every test (nothing is committed but this generator).

Classes (``BadPaths``): missing, a folder where a file is expected, a FIFO, a device, an empty file,
a truncated file, a file of the wrong kind (a photo where text or weights are expected, text where a
photo or a ``.mat`` is expected), and, for outputs, a path under a regular file and an existing
folder where a file is wanted.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "docs" / "astronaut.png"  # public domain (NASA), shipped with the repository


@dataclass(frozen=True)
class BadPaths:
    root: Path
    missing: Path
    folder: Path
    fifo: Path
    device: Path
    empty: Path
    truncated_photo: Path
    photo: Path  # a real photo: the wrong kind where text, weights or a .mat is expected
    text: Path  # plain text: the wrong kind where a photo, weights or a .mat is expected
    under_a_file: Path  # an output path whose parent is a regular file

    def input_cases(self) -> dict[str, Path]:
        """The input classes, by name."""
        return {"missing": self.missing, "folder": self.folder, "fifo": self.fifo, "device": self.device,
                "empty": self.empty, "photo": self.photo, "text": self.text}


@pytest.fixture
def bad(tmp_path: Path) -> BadPaths:
    root = tmp_path / "corpus"
    root.mkdir()
    folder = root / "a_folder.pt"
    folder.mkdir()
    fifo = root / "a_fifo.pt"
    os.mkfifo(fifo)
    empty = root / "empty.pt"
    empty.write_bytes(b"")
    data = PHOTO.read_bytes()
    truncated = root / "truncated.png"
    truncated.write_bytes(data[: len(data) // 3])
    photo = root / "photo.pt"
    photo.write_bytes(data)
    text = root / "notes.txt"
    text.write_text("these are my notes, not a model\n")
    blocker = root / "a_file"
    blocker.write_text("x")
    return BadPaths(root, root / "missing.pt", folder, fifo, Path("/dev/null"), empty, truncated, photo, text,
                    blocker / "out.json")


@pytest.fixture(autouse=True)
def no_hang():
    """A command that blocks (on a FIFO, say) fails the test after 60 s instead of hanging CI."""
    def on_alarm(signum, frame):
        raise TimeoutError("the command hung for 60 s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def run_cli(capsys, *argv) -> tuple[int, list[str]]:
    """``srn ARGV`` in this process: its exit code and its stderr lines, which never hold a traceback."""
    from srn.cli import main

    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err.splitlines()
