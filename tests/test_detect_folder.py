"""``srn detect`` over folders: streamed JSON Lines, a SIGKILL and --resume, torchrun shards (on
crops of one size, and on real photos of mixed sizes), mirrored drawings and crops. Every run computes
exactly the same numbers whatever the batching or sharding: each photo runs at its own canonical size."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from srn.cli import main
from srn.inference import Detector
from srn.inference.results import expand_boxes

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "docs" / "astronaut.png"
# One thread, one image per batch: the same arithmetic in every process and every run.
FIXED = ["--threads", "1", "--batch-size", "1", "--device", "cpu"]


def run(capsys, *argv):
    code = main(["detect", *(str(a) for a in argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """40 crops of 160x160 from the photo, each with the whole face, in two sub-folders."""
    photo = PIL.Image.open(PHOTO).convert("RGB")
    root = tmp_path_factory.mktemp("crops")
    for i in range(40):
        x, y = 110 + 3 * (i % 20), 10 + 5 * (i // 20)
        sub = root / ("left" if i < 20 else "right")
        sub.mkdir(exist_ok=True)
        photo.crop((x, y, x + 160, y + 160)).save(sub / f"crop_{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def clean(folder, tmp_path_factory, one_thread):
    """The records of one uninterrupted run in this process, by image."""
    out = tmp_path_factory.mktemp("clean") / "clean.jsonl"
    assert main(["detect", str(folder), "--out", str(out), "--workers", "0", *FIXED]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 40
    records = [json.loads(line) for line in lines]
    assert [Path(r["image"]).name for r in records] == [f"crop_{i:02d}.png" for i in range(40)]  # input order
    return {r["image"]: r for r in records}


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def test_sigkill_then_resume_loses_and_repeats_nothing(folder, clean, tmp_path, capsys, one_thread):
    out = tmp_path / "run.jsonl"
    command = [sys.executable, "-m", "srn", "detect", str(folder), "--out", str(out), "--workers", "1", *FIXED]
    process = subprocess.Popen(command, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not (out.exists() and out.read_bytes().count(b"\n") >= 1):
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "no record within 300 s"
            time.sleep(0.002)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    data = out.read_bytes()
    complete = data[: data.rfind(b"\n") + 1].decode().splitlines()
    assert 1 <= len(complete) < 40  # killed mid-run
    for line in complete:  # every line written is whole, and exactly the clean run's record
        record = json.loads(line)
        assert record == clean[record["image"]]

    code, _, err = run(capsys, folder, "--out", out, "--resume", "--workers", "2", *FIXED)
    assert code == 0, err
    lines = out.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 40  # nothing lost, nothing twice
    assert {r["image"]: r for r in records} == clean
    assert lines[: len(complete)] == complete  # what was there stays as it was


def test_resume_cuts_a_torn_last_line(folder, clean, tmp_path, capsys, one_thread):
    out = tmp_path / "torn.jsonl"
    first = list(clean.values())[:3]
    whole = "".join(json.dumps(r) + "\n" for r in first[:2])
    out.write_text(whole + json.dumps(first[2])[:25])  # killed while writing the third
    code, _, err = run(capsys, folder, "--out", out, "--resume", "--workers", "0", *FIXED)
    assert code == 0, err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[:2] == first[:2]
    assert len(records) == 40 and {r["image"]: r for r in records} == clean


def test_torchrun_two_processes_merge_to_one_process_output(folder, clean, tmp_path):
    out = tmp_path / "merged.jsonl"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "srn", "detect", str(folder), "--out", str(out), "--workers", "0", *FIXED]
    result = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records == list(clean.values())  # the same records, in input order
    assert not list(tmp_path.glob("merged.rank*.jsonl"))  # the parts are gone


def test_torchrun_on_mixed_sizes_equals_one_process_exactly(tmp_path):
    """Real photos of assorted sizes (tests/test_batch_invariance.py's), the default model: one
    process with batches of 8 and two decoding workers, against two gloo processes with batches of 3
    and none. Each photo's record is the same to the last digit."""
    from tests.test_batch_invariance import write_mixed_photos

    photos = write_mixed_photos(tmp_path / "mixed")
    base = ["-m", "srn", "detect", str(tmp_path / "mixed"), "--threads", "1", "--device", "cpu", "--score-thresh", "0.001"]
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    runs = [
        [sys.executable, *base, "--out", str(one), "--batch-size", "8", "--workers", "2"],
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *base, "--out", str(two),
         "--batch-size", "3", "--workers", "0"],
    ]
    for command in runs:
        result = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in one.read_text().splitlines()]
    assert [Path(r["image"]).name for r in records] == sorted(p.name for p in photos)
    assert sum(len(r["faces"]) for r in records) > 50
    assert [json.loads(line) for line in two.read_text().splitlines()] == records


def test_out_suffix_picks_the_format_and_csv_says_no_faces(folder, clean, tmp_path, capsys, one_thread):
    blank = tmp_path / "blank"
    blank.mkdir()
    PIL.Image.new("RGB", (160, 160), (128, 128, 128)).save(blank / "grey.png")
    first = Path(next(image for image, record in clean.items() if len(record["faces"]) == 1))
    out = tmp_path / "faces.csv"
    code, _, err = run(capsys, first, blank / "grey.png", "--out", out, "--workers", "0", *FIXED)
    assert code == 0, err
    lines = out.read_text().splitlines()
    (face,) = clean[str(first)]["faces"]
    assert lines == [
        "image,width,height,x1,y1,x2,y2,score",
        f"{first},160,160,{','.join(str(v) for v in face['box'])},{face['score']}",
        f"{blank / 'grey.png'},160,160,,,,,",  # processed, no face: a row with empty fields
    ]
    out = tmp_path / "faces.jsonl"
    code, _, err = run(capsys, first, "--out", out, "--workers", "0", *FIXED)
    assert code == 0, err
    assert [json.loads(line) for line in out.read_text().splitlines()] == [clean[str(first)]]


def test_boxes_lie_inside_the_image_on_a_real_photo(tmp_path, capsys, one_thread):
    photo = PIL.Image.open(PHOTO).convert("RGB")
    path = tmp_path / "cut.png"
    photo.crop((200, 30, 330, 190)).save(path)  # the face runs past the left border
    code, out, err = run(capsys, path, "--score-thresh", "0", "--workers", "0", *FIXED)
    assert code == 0, err
    record = json.loads(out)  # one image: one JSON record on one line
    boxes = np.array([face["box"] for face in record["faces"]])
    assert len(boxes) > 20
    width, height = record["width"], record["height"]
    assert (width, height) == (130, 160)
    assert boxes[:, 0::2].min() >= 0 and boxes[:, 0::2].max() <= width
    assert boxes[:, 1::2].min() >= 0 and boxes[:, 1::2].max() <= height
    assert boxes[:, 0].min() == 0 and boxes[:, 3].max() == height  # boxes were clipped at the borders


def test_vis_and_crops_mirror_the_inputs_without_collisions(tmp_path, capsys, one_thread, monkeypatch):
    photo = PIL.Image.open(PHOTO).convert("RGB").crop((100, 0, 356, 256))
    for name in ("a/x.jpg", "a/x.png", "b/x.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        photo.save(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "a/x.jpg", "a/x.png", "b/x.png", "--save-vis", "vis", "--save-crops", "crops",
                         "--crop-margin", "0.25", "--workers", "0", *FIXED)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]  # several images: JSON Lines
    found = sorted(str(p.relative_to(tmp_path)) for d in ("vis", "crops") for p in (tmp_path / d).rglob("*") if p.is_file())
    assert found == [
        "crops/a/x_jpg/face_000.jpg", "crops/a/x_png/face_000.jpg", "crops/b/x_png/face_000.jpg",  # folders not named like photos
        "vis/a/x.jpg", "vis/a/x.png", "vis/b/x.png",  # each input's name and format
    ]
    detector = Detector(device="cpu", batch_size=1)
    for record in records:
        assert len(record["faces"]) == 1
        faces = detector.detect(record["image"])
        ((x1, y1, x2, y2),) = expand_boxes(faces.boxes, 0.25, 256, 256).tolist()
        crop = PIL.Image.open(Path("crops") / record["image"].replace(".", "_") / "face_000.jpg")
        assert crop.size == (x2 - x1, y2 - y1)
        with PIL.Image.open(Path("vis") / record["image"]) as drawn:
            assert drawn.size == (256, 256) and drawn.format == ("JPEG" if record["image"].endswith(".jpg") else "PNG")
