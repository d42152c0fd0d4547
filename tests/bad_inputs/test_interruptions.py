"""A reader of stdout that goes away, and a decoding worker killed as the OOM killer kills: no
traceback, one line, and every record written before intact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import PIL.Image
import pytest

from srn.cli import EXIT_BROKEN_PIPE, main
from tests.bad_inputs.conftest import PHOTO

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    photo = PIL.Image.open(PHOTO).convert("RGB")
    for index in range(8):
        photo.crop((100 + 5 * index, 0, 228 + 5 * index, 128)).save(folder / f"{index}.png")
    return folder


def test_a_closed_pipe_ends_quietly(photos, small_weights):
    # srn detect DIR | head -1: the reader leaves after one line.
    command = [sys.executable, "-m", "srn", "detect", str(photos), "--batch-size", "1", "--weights", small_weights,
               "--device", "cpu", "--workers", "0", "--threads", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    first = process.stdout.readline()
    process.stdout.close()  # the reader is gone: the next write gets EPIPE
    err = process.stderr.read().decode()
    process.wait(timeout=300)
    assert json.loads(first)["image"].endswith("0.png")
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err
    assert process.returncode == EXIT_BROKEN_PIPE == 141


def _die_on(name: str):
    """A read_image that kills its own process on ``name``, as the OOM killer would (SIGKILL)."""
    from srn.data import image_folder

    real = image_folder.read_image

    def read_image(path, *args, **kwargs):
        if Path(path).name == name:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, *args, **kwargs)

    return read_image


@pytest.mark.parametrize("command", ["detect", "anonymize"])
def test_a_killed_decoding_worker_ends_the_run_in_one_line_and_keeps_what_is_done(photos, small_weights, tmp_path,
                                                                                   capsys, monkeypatch, command):
    from srn.data import image_folder

    monkeypatch.setattr(image_folder, "read_image", _die_on("5.png"))  # the worker inherits it (fork)
    out = tmp_path / ("faces.jsonl" if command == "detect" else "anonymized")
    capsys.readouterr()
    code = main([command, str(photos), "--out", str(out), "--workers", "1", "--batch-size", "1",
                 "--weights", small_weights, "--device", "cpu", "--threads", "1"])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert code == 1, err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "an image-decoding process died" in errors[0] and "--workers" in errors[0], err
    if command == "detect":
        done = [json.loads(line)["image"] for line in out.read_text().splitlines()]  # whole lines only
        assert [Path(image).name for image in done] == [f"{i}.png" for i in range(len(done))] and 1 <= len(done) <= 5
    else:
        written = sorted(p.name for p in out.iterdir())
        assert written and "5.png" not in written and all(name.endswith(".png") for name in written)
