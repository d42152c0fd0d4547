"""The model shipped in srn/assets, used whenever no weights are given: on the CPU its int8 copy
through onnxruntime, elsewhere (or without onnxruntime) the PyTorch checkpoint."""

import builtins
import logging
import sys
from pathlib import Path

import pytest
import torch
from torchvision.ops import box_iou

from srn import Detector
from srn.cli import main
from srn.inference import DEFAULT_WEIGHTS
from srn.inference.backends import OnnxBackend, TorchBackend
from srn.inference.detector import DEFAULT_CPU_WEIGHTS

ASTRONAUT = Path(__file__).resolve().parents[1] / "docs" / "astronaut.png"  # NASA, public domain
# The astronaut's face, read off the image by eye: forehead to chin, ear to ear.
ASTRONAUT_FACE = torch.tensor([[180.0, 70.0, 265.0, 172.0]])

pytestmark = pytest.mark.usefixtures("one_thread")


def test_shipped_weights_are_small_and_load_without_arguments():
    assert DEFAULT_WEIGHTS.is_file() and DEFAULT_CPU_WEIGHTS.is_file()
    assert DEFAULT_WEIGHTS.stat().st_size <= 20 * 2**20
    assert DEFAULT_CPU_WEIGHTS.stat().st_size <= DEFAULT_WEIGHTS.stat().st_size / 2  # int8 weights
    detector = Detector(device="cpu")
    assert isinstance(detector.backend, OnnxBackend) and detector.backend.path == DEFAULT_CPU_WEIGHTS
    assert detector.model is None and detector.config.model.backbone == "mobilenet_v2"


def test_the_cpu_default_is_the_int8_copy_of_the_checkpoint():
    pytest.importorskip("onnx")
    from srn.export.quantize import read_quantization

    record = read_quantization(DEFAULT_CPU_WEIGHTS)
    # tools/export_default_int8.py: 50 training photos at 512 px, uint8 activations.
    assert record["quantization"] == "int8-qdq-per-channel"
    assert (record["images"], record["skipped"], record["input_size"], record["activation_type"]) == (50, 0, 512, "quint8")


def test_explicit_weights_keep_their_runtime():
    detector = Detector(DEFAULT_WEIGHTS, device="cpu")
    assert isinstance(detector.backend, TorchBackend) and detector.model is not None
    assert isinstance(Detector(DEFAULT_CPU_WEIGHTS, device="cpu", threads=1).backend, OnnxBackend)
    # PyTorch-only settings choose the checkpoint by themselves.
    assert isinstance(Detector(device="cpu", precision="bf16").backend, TorchBackend)


def test_int8_and_checkpoint_find_the_same_face():
    int8 = Detector(device="cpu", threads=1).detect(ASTRONAUT)
    pt = Detector(DEFAULT_WEIGHTS, device="cpu").detect(ASTRONAUT)
    assert len(int8) == len(pt) == 1
    assert float(box_iou(int8.boxes, pt.boxes)) > 0.8
    assert abs(float(int8.scores[0]) - float(pt.scores[0])) < 0.05


def test_finds_the_astronauts_face():
    faces = Detector(device="cpu", score_thresh=0.3).detect(ASTRONAUT)
    assert len(faces) >= 1
    assert float(box_iou(faces.boxes[:1], ASTRONAUT_FACE)) >= 0.6


def test_two_people_photo(shared_dir):
    faces = Detector(device="cpu").detect(shared_dir / "data/demo/images/ageitgey__examples_two_people.jpg")
    assert len(faces) == 2


def test_without_onnxruntime_the_checkpoint_runs_with_a_one_line_notice(monkeypatch, caplog, capsys):
    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    with caplog.at_level(logging.WARNING, logger="srn.inference.detector"):
        detector = Detector(device="cpu")
    assert isinstance(detector.backend, TorchBackend)
    (record,) = caplog.records
    assert "\n" not in record.getMessage() and "onnxruntime is not installed" in record.getMessage()
    assert len(detector.detect(ASTRONAUT)) == 1
    # The command line runs too: the notice, then the faces, and no traceback.
    assert main(["detect", str(ASTRONAUT), "--device", "cpu", "--threads", "1"]) == 0
    assert '"faces": [{"box"' in capsys.readouterr().out
