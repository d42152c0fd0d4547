"""The error rule, class by class, for every command and every path it takes.

Each bad input path gets exit code 2 and one line on stderr that names the path; a bad image among
a batch's inputs fails alone (exit 1 when the rest completed, 2 when nothing could run). Bad output
paths are refused before any work starts. Never a traceback, never a hang (conftest's alarm).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from srn.cli import main
from tests.bad_inputs.conftest import PHOTO, BadPaths

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
FAST_BENCH = ["--device", "cpu", "--sizes", "64x64", "--batch", "0", "--no-peer", "--iters", "1", "--warmup", "0",
              "--backbone", "resnet18", "--width", "16", "--threads", "1"]


def run(argv: list[str], capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err.splitlines()


def assert_one_line(code: int, lines: list[str], path: Path, command: str) -> None:
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"srn {command}: error: "), lines
    assert str(path) in lines[0], lines


# -- inputs: files that must be of one kind ----------------------------------------------------

FILE_SLOTS = {
    "detect --weights": lambda x, tmp: ["detect", PHOTO, "--weights", x, "--device", "cpu"],
    "convert SRC": lambda x, tmp: ["convert", x, tmp / "out.pt"],
    "export --weights": lambda x, tmp: ["export", "onnx", "--weights", x, "--out", tmp / "out.onnx"],
    "bench --weights": lambda x, tmp: ["bench", "--weights", x, *FAST_BENCH],
    "train CONFIG": lambda x, tmp: ["train", x],
    "imbalance BOXES_FILE": lambda x, tmp: ["imbalance", x],
}
# The classes that are wrong for every one of these slots ("text" is valid YAML, so train gets its own).
FILE_CLASSES = ["missing", "folder", "fifo", "device", "empty", "photo"]


@pytest.mark.parametrize("kind", FILE_CLASSES)
@pytest.mark.parametrize("slot", sorted(FILE_SLOTS))
def test_bad_input_file(slot, kind, bad: BadPaths, tmp_path, capsys):
    path = bad.input_cases()[kind]
    code, lines = run(FILE_SLOTS[slot](path, tmp_path), capsys)
    assert_one_line(code, lines, path, slot.split()[0])


@pytest.mark.parametrize("slot", ["detect --weights", "convert SRC", "export --weights", "bench --weights"])
def test_text_is_not_weights(slot, bad: BadPaths, tmp_path, capsys):
    code, lines = run(FILE_SLOTS[slot](bad.text, tmp_path), capsys)
    assert_one_line(code, lines, bad.text, slot.split()[0])
    assert "weights_only" not in lines[0]  # torch's hint names the unsafe option


def test_text_is_not_a_config(bad: BadPaths, capsys):
    code, lines = run(["train", bad.text], capsys)
    assert_one_line(code, lines, bad.text, "train")


def test_bench_image_must_be_a_photo(bad: BadPaths, capsys):
    for path in (bad.missing, bad.folder, bad.fifo, bad.empty, bad.text, bad.truncated_photo):
        code, lines = run(["bench", "--image", path, *FAST_BENCH], capsys)
        assert_one_line(code, lines, path, "bench")


# -- inputs: images among good ones --------------------------------------------------------------

# A folder is searched for images; one that holds none is a bad path (exit 2, below), not a bad image.
@pytest.mark.parametrize("kind", ["fifo", "device", "empty", "text"])
def test_bad_image_fails_alone(kind, bad: BadPaths, tmp_path, capsys):
    path = bad.input_cases()[kind]
    good = tmp_path / "good.png"
    shutil.copy(PHOTO, good)
    out = tmp_path / "faces.json"
    code, lines = run(["detect", good, path, "--out", out, "--device", "cpu"], capsys)
    assert code == 1, lines
    assert any(str(path) in line for line in lines), lines
    records = json.loads(out.read_text())
    assert [r["image"] for r in records] == [str(good)]


def test_a_folder_without_images_is_a_bad_path(bad: BadPaths, tmp_path, capsys):
    good = tmp_path / "good.png"
    shutil.copy(PHOTO, good)
    for command, out in (("detect", tmp_path / "out.json"), ("anonymize", tmp_path / "out")):
        code, lines = run([command, good, bad.folder, "--out", out, "--device", "cpu"], capsys)
        assert_one_line(code, lines, bad.folder, command)
        assert not out.exists()


def test_truncated_image_fails_alone(bad: BadPaths, tmp_path, capsys):
    good = tmp_path / "good.png"
    shutil.copy(PHOTO, good)
    code, lines = run(["detect", good, bad.truncated_photo, "--device", "cpu"], capsys)
    assert code == 1 and any(str(bad.truncated_photo) in line for line in lines), lines


# -- inputs: folders ---------------------------------------------------------------------------

@pytest.fixture
def gt_dir(tmp_path) -> Path:
    source = SHARED / "widerface" / "eval_gt"
    if not source.is_dir():
        pytest.skip(f"{source} is absent (the project's shared data folder)")
    return source


@pytest.mark.parametrize("kind", ["missing", "text", "fifo", "device"])
def test_bad_folders(kind, bad: BadPaths, gt_dir, tmp_path, capsys):
    path = bad.input_cases()[kind]
    preds = tmp_path / "preds"
    preds.mkdir()
    for argv in (["eval", "wider", "--pred-dir", path, "--gt-dir", gt_dir, "--out", tmp_path / "o1"],
                 ["eval", "wider", "--pred-dir", preds, "--gt-dir", path, "--out", tmp_path / "o2"]):
        code, lines = run(argv, capsys)
        assert_one_line(code, lines, path, "eval")


# -- outputs -------------------------------------------------------------------------------------

def test_bad_outputs_are_refused_before_any_work(bad: BadPaths, tmp_path, capsys):
    photo = tmp_path / "photo.png"
    shutil.copy(PHOTO, photo)
    existing_dir = tmp_path / "existing"
    existing_dir.mkdir()
    cases = [
        (["detect", photo, "--out", existing_dir], existing_dir),
        (["detect", photo, "--out", bad.under_a_file], bad.under_a_file),
        (["detect", photo, "--out", photo], photo),
        (["detect", photo, "--format", "wider", "--out", bad.text], bad.text),
        (["detect", photo, "--save-vis", bad.text], bad.text),
        (["export", "onnx", "--out", existing_dir], existing_dir),
        (["export", "onnx", "--out", bad.under_a_file], bad.under_a_file),
        (["bench", *FAST_BENCH, "--json", existing_dir], existing_dir),
        (["anonymize", photo, "--out", bad.text], bad.text),
    ]
    boxes = SHARED / "widerface" / "wider_face_train_boxes_with_sizes.txt"
    if boxes.is_file():
        cases.append((["imbalance", boxes, "--json", existing_dir], existing_dir))
    for argv, path in cases:
        code, lines = run([*argv, "--device", "cpu"] if argv[0] in ("detect", "anonymize") else argv, capsys)
        assert_one_line(code, lines, path, argv[0])
    assert sorted(p.name for p in existing_dir.iterdir()) == []
    assert photo.read_bytes() == PHOTO.read_bytes()  # an input is never overwritten
