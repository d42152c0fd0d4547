"""The model shipped in srn/assets, used whenever no weights are given."""

from pathlib import Path

import torch
from torchvision.ops import box_iou

from srn import Detector
from srn.inference import DEFAULT_WEIGHTS

ASTRONAUT = Path(__file__).resolve().parents[1] / "docs" / "astronaut.png"  # NASA, public domain
# The astronaut's face, read off the image by eye: forehead to chin, ear to ear.
ASTRONAUT_FACE = torch.tensor([[180.0, 70.0, 265.0, 172.0]])


def test_shipped_weights_are_small_and_load_without_arguments():
    assert DEFAULT_WEIGHTS.is_file()
    assert DEFAULT_WEIGHTS.stat().st_size <= 20 * 2**20
    detector = Detector(device="cpu")
    assert detector.config.model.backbone == "mobilenet_v2"


def test_finds_the_astronauts_face():
    faces = Detector(device="cpu", score_thresh=0.3).detect(ASTRONAUT)
    assert len(faces) >= 1
    assert float(box_iou(faces.boxes[:1], ASTRONAUT_FACE)) >= 0.6


def test_two_people_photo(shared_dir):
    faces = Detector(device="cpu").detect(shared_dir / "data/demo/images/ageitgey__examples_two_people.jpg")
    assert len(faces) == 2
