"""Every wrong input of ``srn eval labels``, ``srn calibrate`` and ``srn train srn_default`` is one line
on stderr and exit 2, and leaves no output behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from srn.cli import main

from .conftest import PHOTO


def one_error(capsys: pytest.CaptureFixture[str], command: str, *argv: str) -> str:
    code = main([command, *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"srn {command}: error: "), err
    return lines[0]


@pytest.fixture
def labelled(tmp_path: Path) -> Path:
    (tmp_path / "astronaut.png").write_bytes(PHOTO.read_bytes())
    labels = tmp_path / "labels.txt"
    labels.write_text("astronaut.png\n1\n177 62 99 121\n")
    return labels


def test_bad_annotations(bad, capsys, tmp_path):
    for name, path in bad.input_cases().items():
        for command, extra in (("eval", ["labels", "--out", str(tmp_path / f"out_{name}")]), ("calibrate", ["--out", str(tmp_path / "c.pt")])):
            line = one_error(capsys, command, *extra, "--annotations", str(path), "--device", "cpu")
            assert str(path.name) in line, (name, line)
        assert not (tmp_path / f"out_{name}").exists() and not (tmp_path / "c.pt").exists()


def test_a_coco_json_never_dumps_itself(tmp_path, capsys):
    # A large JSON that is not COCO: the message names the file, not its content.
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"photos": [{"name": f"img_{i}.jpg", "faces": [[1, 2, 3, 4]] * 20} for i in range(200)]}))
    line = one_error(capsys, "eval", "labels", "--annotations", str(big), "--images", str(tmp_path), "--out", str(tmp_path / "o"))
    assert "not a COCO detection file" in line and len(line) < 300
    line = one_error(capsys, "train", "srn_default", f"data.train=[{{annotations: {big}, images: {tmp_path}}}]",
                     f"train.output_dir={tmp_path / 'run'}")
    assert "not a COCO detection file" in line and len(line) < 300 and not (tmp_path / "run").exists()
    mat = tmp_path / "labels.mat"
    mat.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(200))
    assert "srn eval afw/pascal" in one_error(capsys, "eval", "labels", "--annotations", str(mat), "--images", str(tmp_path))


def test_bad_weights_and_outputs_of_calibrate(bad, labelled, capsys):
    for name, path in {**bad.input_cases(), "onnx": Path(__file__).resolve().parents[2] / "srn" / "assets" / "srn_mobilenet_v2.int8.onnx"}.items():
        one_error(capsys, "calibrate", "--weights", str(path), "--annotations", str(labelled), "--out", str(labelled.parent / "c.pt"))
    assert not (labelled.parent / "c.pt").exists()
    one_error(capsys, "calibrate", "--annotations", str(labelled), "--out", str(bad.under_a_file))
    one_error(capsys, "calibrate", "--annotations", str(labelled), "--out", str(bad.folder))
    one_error(capsys, "calibrate", "--annotations", str(labelled), "--out", str(labelled))  # the input itself
