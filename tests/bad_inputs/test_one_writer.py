"""One writer per output (issue 28, item 5): a second run on an output that a live run holds is one
line, exit 2, the file untouched; a killed run's lock does not block the next. The run manifest holds
every setting that changes a record (``--min-size`` too) and the inputs resolved; a resume from
another folder with relative inputs, and a file without a manifest that holds records of images
that are not inputs, are refused instead of mixed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import PIL.Image
import pytest

from srn.atomic import exclusive_lock, lock_path
from srn.errors import OutputBusyError
from srn.inference.writers import RunManifest, manifest_path
from tests.bad_inputs.conftest import PHOTO
from tests.bad_inputs.conftest import run_cli as run

REPO = Path(__file__).resolve().parents[2]
CPU = ["--device", "cpu", "--workers", "0", "--threads", "1", "--batch-size", "1"]


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    photo = PIL.Image.open(PHOTO).convert("RGB")
    for index in range(3):
        photo.crop((100 + 10 * index, 0, 260 + 10 * index, 160)).save(folder / f"{index}.png")
    return folder


def holder(path: Path) -> subprocess.Popen:
    """Another process that holds ``path`` (as a live run does) until it is killed."""
    code = ("import sys, time\nfrom srn.atomic import exclusive_lock\n"
            "with exclusive_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)\n")
    process = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    assert process.stdout.readline().strip() == "held"
    return process


# -- a lock on --out ----------------------------------------------------------------------------------


def test_exclusive_lock_refuses_a_second_holder_and_frees_on_exit(tmp_path):
    out = tmp_path / "faces.jsonl"
    with exclusive_lock(out):
        with pytest.raises(OutputBusyError, match=rf"is being written by another run \(process {os.getpid()}\)"):
            with exclusive_lock(out):
                pass
    assert not lock_path(out).exists()  # released and removed
    with exclusive_lock(out):
        pass


@pytest.mark.parametrize("resume", [False, True])
def test_a_second_run_on_a_held_output_is_one_line_and_touches_nothing(photos, small_weights, tmp_path, capsys, resume):
    out = tmp_path / "faces.jsonl"
    code, lines = run(capsys, "detect", photos, "--out", out, "--weights", small_weights, *CPU)
    assert code == 0, lines
    before, manifest = out.read_bytes(), manifest_path(out).read_bytes()
    process = holder(out)
    try:
        code, lines = run(capsys, "detect", photos, "--out", out, *(["--resume"] if resume else []),
                          "--weights", small_weights, *CPU)
    finally:
        process.kill()  # SIGKILL: the kernel drops its lock
        process.wait()
    assert code == 2
    assert lines == [f"srn detect: error: {out}: is being written by another run (process {process.pid}); "
                     "wait for it to end, or write another output"]
    assert out.read_bytes() == before and manifest_path(out).read_bytes() == manifest
    # The holder was killed: its lock is gone with it, and the next run goes on.
    code, lines = run(capsys, "detect", photos, "--out", out, "--resume", "--weights", small_weights, *CPU)
    assert code == 0, lines
    assert len(out.read_text().splitlines()) == 3


def test_two_resumes_at_once_write_each_image_once(photos, small_weights, tmp_path):
    out = tmp_path / "faces.jsonl"
    command = [sys.executable, "-m", "srn", "detect", str(photos), "--out", str(out), "--resume",
               "--weights", small_weights, *CPU]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    runs = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in runs]
    assert all("Traceback" not in err for _, err in results), results
    codes = sorted(code for code, _ in results)
    # Either one ran while the other was refused, or they ran one after the other (the second found all done).
    assert codes in ([0, 0], [0, 2]), results
    if codes == [0, 2]:
        refused = next(err for code, err in results if code == 2)
        assert "is being written by another run" in refused and len(refused.splitlines()) == 1
    names = [json.loads(line)["image"] for line in out.read_text().splitlines()]
    assert sorted(names) == sorted(set(names)) and len(names) == 3


def test_anonymize_holds_its_output_folder(photos, small_weights, tmp_path, capsys):
    out = tmp_path / "anonymized"
    with exclusive_lock(out):
        code, lines = run(capsys, "anonymize", photos, "--out", out, "--weights", small_weights, *CPU)
    assert code == 2 and len(lines) == 1 and "is being written by another run" in lines[0]
    assert not out.exists() or not any(out.rglob("*.png"))
    code, lines = run(capsys, "anonymize", photos, "--out", out, "--weights", small_weights, *CPU)
    assert code == 0, lines


# -- what the manifest holds ---------------------------------------------------------------------------


def test_min_size_is_in_the_manifest_and_a_resume_with_another_is_refused(photos, small_weights, tmp_path, capsys):
    out = tmp_path / "faces.jsonl"
    code, lines = run(capsys, "detect", photos, "--out", out, "--min-size", "64", "--weights", small_weights, *CPU)
    assert code == 0, lines
    assert RunManifest.read(out).settings["min_size"] == 64
    before = out.read_bytes()
    code, lines = run(capsys, "detect", photos, "--out", out, "--resume", "--weights", small_weights, *CPU)
    assert code == 2 and len(lines) == 1 and "min_size 64 there, unset here" in lines[0], lines
    assert out.read_bytes() == before


def test_a_resume_from_another_folder_with_relative_inputs_is_refused(photos, small_weights, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "faces.jsonl"
    code, lines = run(capsys, "detect", "photos", "--out", out, "--weights", small_weights, *CPU)
    assert code == 0, lines
    kept = out.read_text().splitlines()[:1]  # as if killed after one image
    out.write_text(kept[0] + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, lines = run(capsys, "detect", "../photos", "--out", out, "--resume", "--weights", small_weights, *CPU)
    assert code == 2 and lines == [f"srn detect: error: {out}: was made in the folder {tmp_path}, and its records name "
                                   "images relative to it; resume from that folder, or give the inputs as absolute paths"]
    assert out.read_text() == kept[0] + "\n"
    # Absolute inputs name their images whatever the folder: the resume goes on, and nothing is done twice.
    code, lines = run(capsys, "detect", photos, "--out", out, "--resume", "--weights", small_weights, *CPU)
    assert code == 0, lines
    names = {os.path.realpath(os.path.join(tmp_path, json.loads(line)["image"])) for line in out.read_text().splitlines()}
    assert names == {os.path.realpath(p) for p in photos.glob("*.png")} and len(out.read_text().splitlines()) == 3


def test_a_file_without_a_manifest_holding_foreign_records_is_refused(photos, small_weights, tmp_path, capsys):
    out = tmp_path / "faces.jsonl"
    foreign = [{"image": f"/elsewhere/{i}.jpg", "width": 1, "height": 1, "faces": []} for i in range(3)]
    text = "".join(json.dumps(record) + "\n" for record in foreign)
    out.write_text(text)
    code, lines = run(capsys, "detect", photos, "--out", out, "--resume", "--weights", small_weights, *CPU)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"srn detect: error: {out}: has no run manifest, and 3 of its 3 records are of images "
                               "that are not inputs of this run (/elsewhere/0.jpg, ...)")
    assert out.read_text() == text and not manifest_path(out).exists()


def test_the_manifest_names_the_inputs_resolved(photos, small_weights, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "faces.jsonl"
    code, lines = run(capsys, "detect", "photos/../photos", "--out", out, "--weights", small_weights, *CPU)
    assert code == 0, lines
    assert RunManifest.read(out).inputs == (os.path.realpath(photos),)


def test_a_killed_run_leaves_a_lock_file_that_blocks_nothing(tmp_path):
    out = tmp_path / "faces.jsonl"
    process = holder(out)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert lock_path(out).exists()  # a killed holder cannot remove it
    deadline = time.monotonic() + 5
    with exclusive_lock(out):
        assert time.monotonic() < deadline


def test_a_forked_child_that_outlives_a_killed_run_holds_nothing(tmp_path):
    # A DataLoader worker is a forked child: it must not keep its killed parent's locks alive.
    out = tmp_path / "faces.jsonl"
    code = ("import os, sys, time\nfrom srn.atomic import atomic_output, exclusive_lock\n"
            "with exclusive_lock(sys.argv[1]), atomic_output(sys.argv[1] + '.x') as tmp:\n"
            "    tmp.write_bytes(b'half')\n"
            "    ready, tell = os.pipe()\n"
            "    child = os.fork()\n"
            "    if child == 0:\n        os.write(tell, b'.')\n        time.sleep(60)\n        os._exit(0)\n"
            "    os.read(ready, 1)  # the child runs: its at-fork hooks have run\n"
            "    print(child, tmp, flush=True)\n    time.sleep(600)\n")
    process = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    child, partial = process.stdout.readline().split()
    process.kill()
    process.wait()
    try:
        os.kill(int(child), 0)  # the child lives on
        with exclusive_lock(out):
            pass
        from srn.paths import remove_temporaries

        assert remove_temporaries(tmp_path) == [Path(partial)]
    finally:
        os.kill(int(child), signal.SIGKILL)
