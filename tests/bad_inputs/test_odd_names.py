"""File names with a comma, a quote, a tab or a newline: CSV quotes them, the WIDER layout refuses a
name it cannot write, and every error line shows the name escaped, so that one error stays one line."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from srn.errors import ImageReadError, InputPathError, printable
from tests.bad_inputs.conftest import PHOTO
from tests.bad_inputs.conftest import run_cli as run

CPU = ["--device", "cpu", "--workers", "0", "--threads", "1"]


def test_printable_escapes_what_would_break_a_line():
    assert printable("a\nb\rc\td\x1b[31m\x7f\u2028e\udce9.jpg") == "a\\nb\\rc\\td\\x1b[31m\\x7f\\u2028e\\xe9.jpg"
    assert printable("café, \"quoted\" name.jpg") == "café, \"quoted\" name.jpg"  # printable text stays as it is
    assert str(ImageReadError("two\nlines.jpg", "bad")) == "two\\nlines.jpg: bad"
    assert str(InputPathError("x\ty", "missing")) == "x\\ty: missing"


def test_an_unreadable_image_with_a_newline_in_its_name_is_one_escaped_line(tmp_path, small_weights, capsys):
    good = tmp_path / "good.png"
    shutil.copy(PHOTO, good)
    odd = tmp_path / "two\nlines.jpg"
    odd.write_text("not a photo")
    out = tmp_path / "faces.jsonl"
    code, lines = run(capsys, "detect", good, odd, "--out", out, "--weights", small_weights, *CPU)
    assert code == 1
    named = [line for line in lines if "lines.jpg" in line]
    assert named == [f"  {tmp_path}/two\\nlines.jpg: not a decodable image (unrecognised format, looks like text)"]
    assert [json.loads(line)["image"] for line in out.read_text().splitlines()] == [str(good)]


def test_a_bad_path_with_control_characters_is_one_escaped_error_line(tmp_path, capsys):
    missing = tmp_path / "no\nsuch\x1bX.jpg"
    code, lines = run(capsys, "detect", missing, *CPU)
    assert code == 2
    assert lines == [f"srn detect: error: {tmp_path}/no\\nsuch\\x1bX.jpg: no such file or folder"]


def test_csv_and_jsonl_keep_odd_names_whole(tmp_path, small_weights, capsys):
    names = ["a,b.png", 'say "cheese".png', "two\nlines.png"]
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in names:
        shutil.copy(PHOTO, folder / name)
    out = tmp_path / "faces.csv"
    code, lines = run(capsys, "detect", folder, "--out", out, "--max-size", "128", "--weights", small_weights, *CPU)
    assert code == 0, lines
    with open(out, newline="") as handle:
        rows = list(csv.reader(handle))
    assert sorted({row[0] for row in rows[1:]}) == sorted(str(folder / name) for name in names)


def test_the_wider_layout_refuses_a_name_it_cannot_write(tmp_path, small_weights, capsys):
    event = tmp_path / "0--Parade"
    event.mkdir()
    odd = event / "two\nlines.jpg"
    shutil.copy(PHOTO, odd)
    code, lines = run(capsys, "detect", odd, "--format", "wider", "--out", tmp_path / "preds", "--weights", small_weights, *CPU)
    assert code == 2
    assert lines == [f"srn detect: error: {event}/two\\nlines.jpg: the WIDER format writes an image's name on a line of its "
                     "own, and this name holds a line break; rename it, or write the detections as JSON Lines or CSV"]
    assert not (tmp_path / "preds").exists()
