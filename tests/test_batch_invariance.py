"""A photo's detections do not depend on what runs beside it: batch size, neighbours, input order,
``stream`` chunks and decoding workers, on real photos of mixed sizes, with the shipped model both
as the default int8 ONNX file (onnxruntime) and as the PyTorch checkpoint. The ``torchrun`` case is
in tests/test_detect_folder.py.

The photos: the repository's astronaut at three sizes, plus (when the project's shared folder is
there) demo photos shrunk to assorted sizes and held-out photos of ``.gpu/data512``; every size differs,
so that no two photos would pad alike to a shared batch size."""

from __future__ import annotations

from pathlib import Path

import PIL.Image
import pytest
import torch
from torch.testing import assert_close

from srn import Detector
from srn.data.image_io import read_image
from srn.inference import DEFAULT_WEIGHTS
from srn.inference.loop import BaseSink, run
from srn.inference.sources import ImageFileSource

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
ASTRONAUT = REPO / "docs" / "astronaut.png"
HELD_OUT = REPO / ".gpu" / "data512"
# name -> (width, height) after resizing, or None to keep the file's size
DEMO = {
    "ageitgey__examples_two_people.jpg": (563, 331),
    "timesler__data_multiface.jpg": (600, 315),
    "deepcam-cn__data_images_zidane.jpg": (427, 240),
    "deepinsight__python-package_insightface_data_images_Tom_Hanks_54745.png": None,  # 112x112
    "ageitgey__examples_knn_examples_test_kit_with_rose.jpg": (251, 350),
}

pytestmark = pytest.mark.usefixtures("one_thread")


def write_mixed_photos(folder: Path) -> list[Path]:
    """Real photos of mixed sizes as PNG files (lossless, so every reader decodes the same pixels)."""
    folder.mkdir(parents=True, exist_ok=True)
    with PIL.Image.open(ASTRONAUT) as im:
        photo = im.convert("RGB")
    images = {
        "astronaut.png": photo,
        "astronaut_small.png": photo.resize((300, 217), PIL.Image.Resampling.BILINEAR),
        "astronaut_crop.png": photo.crop((100, 20, 231, 270)),
    }
    if (SHARED / "data" / "demo" / "images").is_dir():
        for name, size in DEMO.items():
            with PIL.Image.open(SHARED / "data" / "demo" / "images" / name) as im:
                im = im.convert("RGB")
                images[f"demo_{Path(name).stem}.png"] = im if size is None else im.resize(size, PIL.Image.Resampling.BILINEAR)
    listing = HELD_OUT / "val_faces.txt"
    if listing.is_file():
        lines = [line for line in listing.read_text().splitlines() if line.endswith(".jpg")]
        for index, line in enumerate(lines[:60:15]):  # four held-out photos, each cropped differently
            with PIL.Image.open(HELD_OUT / line) as im:
                im = im.convert("RGB")
                images[f"held_out_{index}.png"] = im.crop((0, 0, im.width - 7 * (index + 1), im.height - 13 * index))
    paths = []
    for name, image in images.items():
        path = folder / name
        image.save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    paths = write_mixed_photos(tmp_path_factory.mktemp("mixed"))
    sizes = [PIL.Image.open(p).size for p in paths]
    assert len(set(sizes)) == len(sizes)  # no two of one size
    return paths


@pytest.fixture(scope="module", params=["int8 onnx (default)", "pytorch"])
def make_detector(request):
    weights = None if request.param.startswith("int8") else DEFAULT_WEIGHTS

    def make(batch_size: int) -> Detector:
        # A low threshold, so that many boxes (and their NMS) are compared, not just the clear faces.
        return Detector(weights, device="cpu", score_thresh=0.001, batch_size=batch_size, threads=1)

    return make


def assert_same(a, b) -> None:
    assert (a.width, a.height) == (b.width, b.height)
    # Exactly: on the CPU each image runs alone at its own canonical size.
    assert_close(a.boxes, b.boxes, rtol=0, atol=0)
    assert_close(a.scores, b.scores, rtol=0, atol=0)


def test_batch_size_neighbours_and_order_change_nothing(photos, make_detector):
    alone = [make_detector(1).detect(path) for path in photos]
    assert sum(len(f) for f in alone) > 50
    batched = make_detector(8).detect(photos)
    backwards = make_detector(8).detect(photos[::-1])[::-1]
    streamed = list(make_detector(8).stream(iter(photos), batch_size=3))
    for one, *others in zip(alone, batched, backwards, streamed):
        for other in others:
            assert_same(other, one)


def test_decoding_workers_change_nothing(photos):
    detector = Detector(device="cpu", score_thresh=0.001, threads=1)
    runs = {}
    for workers, batch_size in ((0, 1), (2, 8)):
        runs[workers] = collected = []

        class Collect(BaseSink):
            def write(self, faces, item=None):
                collected.append(faces)

        run(detector, ImageFileSource(photos, workers), [Collect()], batch_size)
    for a, b in zip(runs[0], runs[2], strict=True):
        assert a.source == b.source
        assert_same(a, b)


def test_every_box_lies_inside_its_photo_with_a_size(photos, make_detector):
    # Boxes decoded in the padding below and right of a photo are clipped to nothing and dropped.
    for faces in make_detector(8).detect(photos):
        if len(faces):
            boxes = faces.boxes
            assert bool((boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()), faces.source
            assert float(boxes[:, 0::2].min()) >= 0 and float(boxes[:, 0::2].max()) <= faces.width
            assert float(boxes[:, 1::2].min()) >= 0 and float(boxes[:, 1::2].max()) <= faces.height


def test_the_gpu_batch_of_one_canonical_size_equals_single_images(photos):
    """On a GPU images of one canonical size share a forward pass. Forced onto the CPU here: a batch
    of the astronaut at two sizes that pad alike (512x512 and 500x490) against each alone."""
    detector = Detector(DEFAULT_WEIGHTS, device="cpu", score_thresh=0.05)
    detector._forward_batch_size = lambda: 8  # what a GPU device gives
    a = read_image(ASTRONAUT)
    b = a[:, :490, :500].contiguous()
    assert detector.padded_size(512, 512) == detector.padded_size(490, 500) == (512, 512)
    together = detector.detect([a, b])
    for image, found in zip((a, b), together):
        single = detector.detect(image)
        assert len(found) == len(single) > 0
        # A batch of two is different arithmetic from a batch of one: equal to float rounding.
        assert_close(found.boxes, single.boxes, rtol=0, atol=0.05)
        assert_close(found.scores, single.scores, rtol=0, atol=1e-4)
