"""``srn detect --resume`` checks what made the file it extends: a JSON Lines output carries a run
manifest beside it (``OUT.manifest.json``), and a resume with other settings or other inputs is one
line, exit 2, the file untouched. The same folder spelled relative or absolute is one set of inputs,
and its images are not done twice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import PIL.Image
import pytest

from srn.cli import main
from srn.inference.writers import RunManifest, manifest_path
from tests.bad_inputs.conftest import PHOTO

CPU = ["--device", "cpu", "--workers", "0", "--threads", "1", "--batch-size", "1"]


def run(capsys, *argv) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(["detect", *(str(a) for a in argv)])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err.splitlines()


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    photo = PIL.Image.open(PHOTO).convert("RGB")
    for index in range(4):
        photo.crop((100 + 10 * index, 0, 260 + 10 * index, 160)).save(folder / f"{index}.png")
    return folder


@pytest.fixture
def first_run(photos, small_weights, tmp_path, capsys, monkeypatch) -> Path:
    """faces.jsonl from a run over photos/ (spelled relative, from tmp_path), stopped after 2 images."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "faces.jsonl"
    code, lines = run(capsys, "photos", "--out", "faces.jsonl", "--weights", small_weights, *CPU)
    assert code == 0, lines
    kept = out.read_text().splitlines()[:2]  # as if killed after two images
    out.write_text("".join(line + "\n" for line in kept))
    return out


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_a_run_writes_its_manifest_beside_the_file(first_run, small_weights, photos):
    manifest = RunManifest.read(first_run)
    assert manifest is not None and manifest_path(first_run).name == "faces.jsonl.manifest.json"
    assert manifest.settings["score_thresh"] == 0.3 and manifest.settings["max_size"] == 2100
    assert manifest.settings["weights"].startswith("sha256:")
    assert manifest.inputs == (str(photos.resolve()),) and manifest.cwd == str(photos.parent)


@pytest.mark.parametrize("change, difference", [
    (["--score-thresh", "0.2"], "score_thresh 0.3 there, 0.2 here"),
    (["--max-size", "1024"], "max_size 2100 there, 1024 here"),
    (["--nms-iou", "0.5"], "nms_iou unset there, 0.5 here"),
])
def test_other_settings_are_refused_in_one_line(first_run, small_weights, capsys, change, difference):
    before = first_run.read_bytes()
    code, lines = run(capsys, "photos", "--out", first_run, "--resume", "--weights", small_weights, *CPU, *change)
    assert code == 2
    assert lines == [f"srn detect: error: {first_run}: was made with other settings ({difference}); resume with the same "
                     "settings, or write a new file"]
    assert first_run.read_bytes() == before


def test_other_weights_are_refused_whatever_their_name(first_run, small_weights, tmp_path, capsys):
    import torch

    state = torch.load(small_weights, weights_only=True)
    next(iter(state["model"].values())).add_(1.0)  # another model in a file of the same kind
    other = tmp_path / "other.pt"
    torch.save(state, other)
    before = first_run.read_bytes()
    code, lines = run(capsys, "photos", "--out", first_run, "--resume", "--weights", other, *CPU)
    assert code == 2 and len(lines) == 1 and "weights sha256:" in lines[0] and str(first_run) in lines[0], lines
    assert first_run.read_bytes() == before
    renamed = tmp_path / "renamed.pt"
    shutil.copy(small_weights, renamed)  # the same model under another name resumes
    code, lines = run(capsys, "photos", "--out", first_run, "--resume", "--weights", renamed, *CPU)
    assert code == 0, lines


def test_other_inputs_are_refused(first_run, small_weights, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(PHOTO, other / "x.png")
    before = first_run.read_bytes()
    code, lines = run(capsys, other, "--out", first_run, "--resume", "--weights", small_weights, *CPU)
    assert code == 2
    assert lines == [f"srn detect: error: {first_run}: was made from other inputs ({tmp_path / 'photos'} there; {other} "
                     "here); resume with the same inputs, or write a new file"]
    assert first_run.read_bytes() == before


def test_the_same_folder_spelled_absolute_repeats_nothing(first_run, photos, small_weights, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir("/")  # another working folder, and the folder by its absolute path
    code, lines = run(capsys, photos, "--out", first_run, "--resume", "--weights", small_weights, *CPU)
    assert code == 0, lines
    assert "srn detect: 2 images already in" in lines[0]
    names = [Path(r["image"]).name for r in records(first_run)]
    assert sorted(names) == ["0.png", "1.png", "2.png", "3.png"]  # each once


def test_a_broken_manifest_is_one_line(first_run, small_weights, capsys):
    manifest_path(first_run).write_text("{not json")
    before = first_run.read_bytes()
    code, lines = run(capsys, "photos", "--out", first_run, "--resume", "--weights", small_weights, *CPU)
    assert code == 2
    assert lines == [f"srn detect: error: {manifest_path(first_run)}: not a readable run manifest (JSONDecodeError)"]
    assert first_run.read_bytes() == before


def test_a_file_without_a_manifest_resumes_with_a_warning(first_run, small_weights, capsys):
    # Files written before manifests existed: their records are taken as made with this run's settings.
    manifest_path(first_run).unlink()
    code, lines = run(capsys, "photos", "--out", first_run, "--resume", "--weights", small_weights, *CPU)
    assert code == 0, lines
    assert f"srn detect: warning: {first_run} has no run manifest; its records are taken as made with this run's settings" in lines
    assert len(records(first_run)) == 4 and manifest_path(first_run).is_file()


def test_a_new_run_replaces_the_manifest(first_run, small_weights, capsys):
    code, lines = run(capsys, "photos", "--out", first_run, "--score-thresh", "0.2", "--weights", small_weights, *CPU)
    assert code == 0, lines
    assert RunManifest.read(first_run).settings["score_thresh"] == 0.2
