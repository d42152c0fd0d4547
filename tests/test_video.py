"""``srn detect clip.mp4 --out annotated.mp4`` end to end on a synthetic clip."""

import json
import math
import sys

import numpy as np
import pytest
import torch
from torch import nn

cv2 = pytest.importorskip("cv2")

from srn.cli import main  # noqa: E402
from srn.config import DetectorConfig, ModelConfig  # noqa: E402
from srn.model import build_model  # noqa: E402
from srn.weights import save_checkpoint  # noqa: E402

SMALL = DetectorConfig(model=ModelConfig(backbone="resnet18", width=32))
FRAMES, WIDTH, HEIGHT, FPS = 12, 64, 48, 10.0


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(SMALL.model).eval()
    # Unit-gain new layers: SRN's std-0.01 init shrinks activations into float denormals, which
    # make a CPU forward several times slower.
    for conv in (*model.fpn.modules(), *model.first_step.modules(), *model.head.modules(), *model.extra.modules()):
        if isinstance(conv, nn.Conv2d):
            nn.init.normal_(conv.weight, std=1.0 / math.sqrt(conv.weight[0].numel()))
    path = tmp_path_factory.mktemp("w") / "small.pt"
    save_checkpoint(model, SMALL, path)
    return str(path)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    for _ in range(FRAMES):
        writer.write(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8))
    writer.release()
    return path


def count_frames(path) -> tuple[int, tuple[int, int]]:
    capture = cv2.VideoCapture(str(path))
    frames, size = 0, None
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames, size = frames + 1, image.shape[:2]
    capture.release()
    return frames, size


def test_detect_video_writes_annotated_video_and_jsonl(weights, clip, tmp_path, capsys):
    out = tmp_path / "annotated.mp4"
    code = main(["detect", str(clip), "--out", str(out), "--weights", weights, "--device", "cpu",
                 "--batch-size", "5", "--score-thresh", "0"])
    assert code == 0, capsys.readouterr().err
    assert count_frames(out) == (FRAMES, (HEIGHT, WIDTH))
    lines = (tmp_path / "annotated.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["frame"] for r in records] == list(range(FRAMES))  # in order across batches of 5
    assert records[3]["time"] == pytest.approx(3 / FPS, abs=1e-3)
    assert (records[0]["width"], records[0]["height"]) == (WIDTH, HEIGHT)
    assert records[0]["faces"] and len(records[0]["faces"][0]["box"]) == 4
    assert not list(tmp_path.glob(".*partial*")), "temporary files left behind"


def test_jsonl_only_and_bad_inputs(weights, clip, tmp_path, capsys):
    out = tmp_path / "faces.jsonl"
    assert main(["detect", str(clip), "--out", str(out), "--weights", weights, "--device", "cpu", "--batch-size", "8"]) == 0
    assert len(out.read_text().splitlines()) == FRAMES
    assert not list(tmp_path.glob("*.mp4"))

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    capsys.readouterr()
    assert main(["detect", str(broken), "--weights", weights, "--device", "cpu"]) == 2
    assert "broken.mp4" in capsys.readouterr().err


def test_missing_opencv_is_one_line(weights, clip, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes `import cv2` raise ImportError
    assert main(["detect", str(clip), "--weights", weights]) == 2
    err = capsys.readouterr().err.strip()
    assert "install the 'video' extra" in err and len(err.splitlines()) == 1
