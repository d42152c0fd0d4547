"""Every bad value, path and image that ``srn detect`` and ``Detector.detect`` can be handed: one line
on stderr naming what is wrong, exit 2 for usage errors (before any image is read), exit 1 when some
files of a batch fail and the rest complete. The bad inputs are made in tmp_path."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

import srn
from srn.cli import main
from srn.errors import SRNError
from srn.inference import Detector

REPO = Path(__file__).resolve().parents[2]
CPU = ["--device", "cpu", "--workers", "0", "--threads", "1"]


@pytest.fixture(scope="session")
def weights(small_weights):
    return small_weights


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.jpg"
    PIL.Image.open(REPO / "docs" / "astronaut.png").convert("RGB").resize((64, 64)).save(path)
    return path


def run(capsys, *argv):
    code = main(["detect", *(str(a) for a in argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def usage_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as info:
        main(["detect", *(str(a) for a in argv)])
    assert info.value.code == 2
    return capsys.readouterr().err


# -- option values: argparse range checks ---------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--batch-size", "-1", "must be at least 1, got -1"),
        ("--batch-size", "0", "must be at least 1, got 0"),
        ("--workers", "-1", "must be at least 0, got -1"),
        ("--max-size", "0", "must be at least 32, got 0"),
        ("--threads", "0", "must be at least 1, got 0"),
        ("--score-thresh", "-1", "must be in [0, 1], got -1"),
        ("--score-thresh", "2", "must be in [0, 1], got 2"),
        ("--score-thresh", "nan", "must be in [0, 1], got nan"),
        ("--nms-iou", "5", "must be in (0, 1], got 5"),
        ("--nms-iou", "0", "must be in (0, 1], got 0"),
        ("--crop-margin", "-1", "must be a finite number >= 0, got -1"),
        ("--batch-size", "two", "expected an integer, got 'two'"),
    ],
)
def test_option_out_of_range_is_one_usage_line(capsys, photo, option, value, message):
    err = usage_error(capsys, photo, option, value)
    named = "-t/--score-thresh" if option == "--score-thresh" else option  # argparse names every spelling
    assert err == f"srn detect: error: argument {named}: {message}\n"


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("gpu", "unknown device 'gpu' (use cpu, cuda, cuda:N or a GPU number)"),
        ("tpu", "unknown device 'tpu' (use cpu, cuda, cuda:N or a GPU number)"),
        ("cuda", "device 'cuda': no CUDA GPU is available on this machine"),
    ],
)
def test_unknown_or_absent_device(capsys, weights, photo, device, message):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    code, out, err = run(capsys, photo, "--weights", weights, "--device", device, "--workers", "0")
    assert (code, out, err) == (2, "", f"srn detect: error: {message}\n")


def test_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"srn {srn.__version__}\n"


# -- output paths: checked before the model is even loaded (the weights file does not exist) ------


@pytest.fixture
def tree(tmp_path, photo):
    (tmp_path / "file").write_text("a regular file")
    (tmp_path / "somedir").mkdir()
    return tmp_path


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--out", "file/x.json"], "file/x.json: a part of this path is a file, not a folder"),
        (["--format", "csv", "--out", "file/x.csv"], "file/x.csv: a part of this path is a file, not a folder"),
        (["--format", "wider", "--out", "file/p"], "file/p: a part of this path is a file, not a folder"),
        (["--save-vis", "file/v"], "file/v: a part of this path is a file, not a folder"),
        (["--save-crops", "file/c"], "file/c: a part of this path is a file, not a folder"),
        (["--save-vis", "file"], "file: is a file, not a folder"),
        (["--out", "somedir"], "somedir: is a folder; give a file name"),
        (["--format", "csv", "--out", "somedir"], "somedir: is a folder; give a file name"),
        (["--format", "jsonl", "--out", "somedir"], "somedir: is a folder; give a file name"),
        (["--out", "photo.jpg"], "photo.jpg: is also an input; refusing to overwrite it"),
        (["--format", "csv", "--out", "photo.jpg"], "photo.jpg: is also an input; refusing to overwrite it"),
        (["--resume"], "--resume needs --out FILE.jsonl (JSON Lines is the format a run can be resumed from)"),
        (["--out", "o.csv", "--resume"], "--resume needs --out FILE.jsonl (JSON Lines is the format a run can be resumed from)"),
        (["--save-vis", "v", "--save-crops", "v"], "--save-vis and --save-crops need two different folders"),
        (["--format", "wider"], "--format wider needs --out DIR"),
    ],
)
def test_unwritable_outputs_fail_before_any_detection(capsys, tree, monkeypatch, options, message):
    monkeypatch.chdir(tree)
    code, out, err = run(capsys, "photo.jpg", *options, "--weights", "missing.pt", *CPU)
    assert (code, out, err) == (2, "", f"srn detect: error: {message}\n")
    assert not (tree / "v").exists()


def test_torchrun_needs_an_output_file(capsys, photo, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = run(capsys, photo, "--weights", "missing.pt", *CPU)
    assert (code, err) == (2, "srn detect: error: under torchrun, give --out FILE: each process writes its own part, and process 0 merges them\n")


def test_wider_refuses_two_images_on_one_file(capsys, tmp_path, photo, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("a/x/1.jpg", "b/x/1.jpg"):
        Path(name).parent.mkdir(parents=True)
        Path(name).write_bytes(photo.read_bytes())
    code, _, err = run(capsys, "a/x/1.jpg", "b/x/1.jpg", "--format", "wider", "--out", "p", "--weights", "missing.pt", *CPU)
    assert code == 2
    assert err == ("srn detect: error: a/x/1.jpg and b/x/1.jpg would both be written to p/x/1.txt (the WIDER format "
                   "names files by event folder and image name); run them separately\n")
    assert not Path("p").exists()


# -- inputs: bad files fail one by one, the rest complete -----------------------------------------


def test_fifo_and_device_fail_alone(tmp_path, weights, photo):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    out = tmp_path / "o.jsonl"
    command = [sys.executable, "-m", "srn", "detect", str(photo), str(fifo), "/dev/zero",
               "--out", str(out), "--weights", weights, *CPU]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[-3:] == [
        "srn detect: 2 of 3 files failed:",
        f"  {fifo}: is a FIFO (named pipe), not an image file",
        "  /dev/zero: is a device, not an image file",
    ]
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["image"] == str(photo) and (record["width"], record["height"]) == (64, 64)


def test_a_folder_without_images_is_a_bad_input_and_nothing_runs(tmp_path, weights, photo, capsys):
    # README: exit 2 when nothing ran. A folder with nothing to read is a bad path, as a missing one is.
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no photos here")
    out = tmp_path / "o.jsonl"
    code, _, err = run(capsys, photo, empty, "--out", out, "--weights", weights, *CPU)
    assert code == 2
    assert err.splitlines() == [f"srn detect: error: {empty}: holds no file of type .bmp, .gif, .jpeg, .jpg, .png, "
                                ".tif, .tiff, .webp (searched at every depth)"]
    assert not out.exists()


@pytest.fixture
def latin1_name(tmp_path, photo):
    """A copy of the photo under a name that is not UTF-8: b'caf\\xe9.jpg'."""
    path = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9.jpg"))
    try:
        path.write_bytes(photo.read_bytes())
    except (OSError, UnicodeError):
        pytest.skip("this file system does not take a file name that is not UTF-8")
    return path


def test_non_utf8_name_round_trips_in_csv_jsonl_and_wider(capsys, weights, latin1_name, tmp_path):
    raw = os.fsencode(latin1_name)
    code, _, err = run(capsys, latin1_name, "--out", tmp_path / "o.csv", "--weights", weights, *CPU)
    assert code == 0, err
    rows = (tmp_path / "o.csv").read_bytes().splitlines()
    assert rows[0] == b"image,width,height,x1,y1,x2,y2,score"
    assert rows[1].startswith(raw + b",64,64,")

    code, _, err = run(capsys, latin1_name, "--out", tmp_path / "o.jsonl", "--weights", weights, *CPU)
    assert code == 0, err
    (record,) = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert os.fsencode(record["image"]) == raw

    code, _, err = run(capsys, latin1_name, "--format", "wider", "--out", tmp_path / "preds", "--weights", weights, *CPU)
    assert code == 0, err
    event = os.fsencode(tmp_path.name)
    written = os.listdir(os.fsencode(tmp_path / "preds") + b"/" + event)
    assert written == [b"caf\xe9.txt"]
    assert (tmp_path / "preds" / tmp_path.name / os.fsdecode(b"caf\xe9.txt")).read_bytes().split(b"\n")[0] == b"caf\xe9"


# -- in-memory images: one SRNError line that describes the input as the caller gave it ------------


@pytest.fixture(scope="module")
def detector(weights):
    return Detector(weights, device="cpu")


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((0, 0, 3), np.uint8), "to_rgb_tensor: the numpy array is empty, shape (0, 0, 3)"),
        (np.zeros((0, 5), np.uint8), "to_rgb_tensor: the numpy array is empty, shape (0, 5)"),
        (PIL.Image.fromarray(np.full((4, 4), 3.5, np.float32), mode="F"),
         "to_rgb_tensor: a PIL image of mode F must lie in [0, 1], got values in [3.5, 3.5]"),
        (torch.empty(3, 8, 8, device="meta"), "to_rgb_tensor: a tensor on the meta device has no data (shape (3, 8, 8))"),
        (torch.zeros(3, 0, 4), "to_rgb_tensor: the tensor is empty, shape (3, 0, 4)"),
    ],
    ids=["empty-hwc", "empty-hw", "pil-F", "meta", "empty-tensor"],
)
def test_bad_in_memory_image_is_one_srn_error(detector, image, message):
    with pytest.raises(SRNError) as info:
        detector.detect(image)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)
