"""The output policy, through ``srn detect`` and ``srn anonymize``: never through a symbolic link,
never into the inputs, one image's blocked folder fails that image alone, a file that cannot be
written mid-run (a full disk) keeps every whole record written before. Each case: the exit code,
one stderr line naming the path, and nothing written before changed."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from srn.cli import main
from tests.bad_inputs.conftest import PHOTO

REPO = Path(__file__).resolve().parents[2]
CPU = ["--device", "cpu", "--workers", "0", "--threads", "1"]


def run(capsys, *argv) -> tuple[int, str, list[str]]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    return code, captured.out, captured.err.splitlines()


def error_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if ": error: " in line]


@pytest.fixture
def photos(tmp_path) -> Path:
    """Three small crops of the repository's photo in photos/ (one in a sub-folder)."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    photo = PIL.Image.open(PHOTO).convert("RGB")
    for index, name in enumerate(("a.png", "b.png", "sub/c.png")):
        photo.crop((100 + 10 * index, 0, 260 + 10 * index, 160)).save(folder / name)
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- never into the inputs -------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--save-crops", "--save-vis"])
@pytest.mark.parametrize("where", ["photos/crops", "photos", "photos/sub/deeper"])
def test_image_outputs_inside_the_input_folder_are_refused(photos, small_weights, tmp_path, capsys, monkeypatch,
                                                           option, where):
    # A second run over photos/ would read the first run's crops as inputs, and write their crops over them.
    monkeypatch.chdir(tmp_path)
    before = snapshot(photos)
    code, _, lines = run(capsys, "detect", "photos", option, where, "--out", "faces.jsonl", "--weights", small_weights, *CPU)
    assert code == 2
    assert lines == [f"srn detect: error: {where}: is inside the input folder {photos.resolve()}; a later run over it "
                     "would read these outputs as inputs: choose a folder outside it"]
    assert snapshot(photos) == before and not Path("faces.jsonl").exists()


def test_a_glob_searches_the_folder_before_its_wildcard(photos, small_weights, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, lines = run(capsys, "detect", "photos/**/*.png", "--save-crops", "photos/sub/crops", "--weights", small_weights, *CPU)
    assert code == 2 and len(lines) == 1 and "is inside the input folder" in lines[0], lines


def test_anonymize_refuses_an_output_folder_inside_its_inputs(photos, small_weights, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = snapshot(photos)
    code, _, lines = run(capsys, "anonymize", "photos", "--out", "photos/anonymized", "--weights", small_weights, *CPU)
    assert code == 2
    assert lines == [f"srn anonymize: error: photos/anonymized: is inside the input folder {photos.resolve()}; a later "
                     "run over it would read these outputs as inputs: choose a folder outside it"]
    assert snapshot(photos) == before


def test_outputs_beside_the_inputs_are_fine_and_a_second_run_reads_the_same_inputs(photos, small_weights, tmp_path, capsys):
    out = tmp_path / "faces.jsonl"
    for _ in range(2):
        code, _, lines = run(capsys, "detect", photos, "--save-crops", tmp_path / "crops", "--save-vis", tmp_path / "vis",
                             "--score-thresh", "0", "--out", out, "--weights", small_weights, *CPU)
        assert code == 0, lines
        assert len(out.read_text().splitlines()) == 3


def test_leftovers_of_a_killed_run_are_not_inputs_and_are_cleaned(photos, small_weights, tmp_path, capsys):
    torn = photos / ".a.png.x1y2z3w4.partial.png"  # what srn.atomic leaves when a writer is killed
    torn.write_bytes(b"\x89PNG half")
    vis = tmp_path / "vis"
    stale = vis / "sub" / ".c.png.k9j8h7g6.partial.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"torn")
    os.utime(stale, (1, 1))
    out = tmp_path / "faces.jsonl"
    code, _, lines = run(capsys, "detect", photos, "--save-vis", vis, "--out", out, "--weights", small_weights, *CPU)
    assert code == 0, lines  # the torn file is not an input that fails
    assert [Path(json.loads(line)["image"]).name for line in out.read_text().splitlines()] == ["a.png", "b.png", "c.png"]
    assert not stale.exists()


# -- one image's folder blocked: that image fails alone -------------------------------------------------


def test_a_blocked_crop_folder_fails_its_image_alone(photos, small_weights, tmp_path, capsys):
    crops = tmp_path / "crops"
    crops.mkdir()
    (crops / "b_png").write_text("a file where b.png's crop folder goes")
    out = tmp_path / "faces.jsonl"
    code, _, lines = run(capsys, "detect", photos, "--save-crops", crops, "--score-thresh", "0", "--out", out,
                         "--weights", small_weights, *CPU)
    assert code == 1, lines
    named = [line for line in lines if str(crops / "b_png") in line]
    assert named == [f"  {crops / 'b_png' / 'face_000.jpg'}: cannot be written: {crops / 'b_png'} is a file, not a folder"]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [Path(r["image"]).name for r in records] == ["a.png", "c.png"]  # b.png has no record: --resume redoes it
    assert (crops / "b_png").read_text() == "a file where b.png's crop folder goes"
    assert (crops / "a_png" / "face_000.jpg").is_file() and (crops / "sub" / "c_png" / "face_000.jpg").is_file()


def test_a_folder_in_the_way_of_a_drawing_fails_that_image_alone(photos, small_weights, tmp_path, capsys):
    vis = tmp_path / "vis"
    (vis / "a.png").mkdir(parents=True)
    out = tmp_path / "faces.json"
    code, _, lines = run(capsys, "detect", photos, "--save-vis", vis, "--out", out, "--weights", small_weights, *CPU)
    assert code == 1, lines
    assert len([line for line in lines if str(vis / "a.png") in line]) == 1, lines
    assert [Path(r["image"]).name for r in json.loads(out.read_text())] == ["b.png", "c.png"]


def test_faces_save_to_an_unwritable_place_is_an_srn_error(tmp_path, small_weights):
    from srn.errors import OutputPathError, SRNError
    from srn.inference import Detector

    faces = Detector(small_weights, device="cpu").detect(np.zeros((64, 64, 3), np.uint8))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for target in (blocker / "vis.png", tmp_path / "vis.unknown-format"):
        with pytest.raises(OutputPathError) as info:
            faces.save(target)
        assert isinstance(info.value, SRNError) and str(target) in str(info.value)
    assert blocker.read_text() == "x"


# -- never through a symbolic link --------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_an_output_that_is_a_symbolic_link_is_refused_and_its_target_kept(photos, small_weights, tmp_path, capsys, suffix):
    precious = tmp_path / "precious.txt"
    precious.write_text("years of notes")
    link = tmp_path / f"faces{suffix}"
    link.symlink_to(precious)
    code, _, lines = run(capsys, "detect", photos, "--out", link, "--weights", small_weights, *CPU)
    assert code == 2
    assert lines == [f"srn detect: error: {link}: is a symbolic link; outputs are never written through one "
                     "(name the file it points to, or remove the link)"]
    assert precious.read_text() == "years of notes" and link.is_symlink()


def test_a_link_put_in_place_after_the_check_is_not_followed(tmp_path):
    from srn.errors import OutputPathError
    from srn.inference.writers import JsonLinesWriter

    precious = tmp_path / "precious.txt"
    precious.write_text("keep")
    link = tmp_path / "faces.jsonl"
    link.symlink_to(precious)
    with pytest.raises(OutputPathError, match="cannot be written"):
        JsonLinesWriter(link).open()
    assert precious.read_text() == "keep"


# -- a file that cannot be written mid-run ---------------------------------------------------------------


def test_a_full_disk_mid_run_keeps_every_whole_record(photos, small_weights, tmp_path):
    many = tmp_path / "many"
    many.mkdir()
    for index in range(12):
        (many / f"{index:02d}.png").write_bytes((photos / "a.png").read_bytes())
    out = tmp_path / "faces.jsonl"
    limit = 1500  # bytes: a few records fit, then every write fails as on a full disk (EFBIG here)

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    command = [sys.executable, "-m", "srn", "detect", str(many), "--out", str(out), "--batch-size", "1",
               "--weights", small_weights, *CPU]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, preexec_fn=small_disk,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr
    errors = error_lines(result.stderr.splitlines())
    assert len(errors) == 1 and str(out) in errors[0] and "cannot be written" in errors[0], result.stderr
    data = out.read_bytes()
    assert data.endswith(b"\n") and 0 < len(data) <= limit  # whole records only
    records = [json.loads(line) for line in data.decode().splitlines()]
    assert [Path(r["image"]).name for r in records] == [f"{i:02d}.png" for i in range(len(records))]
