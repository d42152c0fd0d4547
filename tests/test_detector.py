import numpy as np
import PIL.Image
import pytest
import torch
from torch.testing import assert_close
from torchvision.transforms.v2.functional import resize

from srn import Detector, Faces
from srn.config import DetectorConfig, ModelConfig
from srn.model import SRNOutputs, build_model
from srn.errors import InputPathError
from srn.postprocess import Detections
from srn.weights import save_checkpoint

# "scaled" init keeps a random narrow network's scores distinct (N(0, 0.01) makes them all tie).
SMALL = DetectorConfig(model=ModelConfig(backbone="resnet18", width=32, init="scaled"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(SMALL.model).eval()
    path = tmp_path_factory.mktemp("w") / "small.pt"
    save_checkpoint(model, SMALL, path)
    return path


@pytest.fixture(scope="module")
def detector(checkpoint):
    # score_thresh 0: a random network's scores are low, and the tests need detections to compare.
    return Detector(checkpoint, device="cpu", score_thresh=0.0)


@pytest.fixture(scope="module")
def image():
    gen = torch.Generator().manual_seed(7)
    return torch.randint(0, 256, (3, 72, 100), dtype=torch.uint8, generator=gen)


def same(a: Faces, b: Faces):
    assert len(a) > 0
    assert_close(a.boxes, b.boxes)
    assert_close(a.scores, b.scores)
    assert (a.width, a.height) == (b.width, b.height)


def test_every_input_type_gives_the_same_faces(detector, image, tmp_path):
    array = image.permute(1, 2, 0).numpy()  # (H, W, 3) RGB
    path = tmp_path / "img.png"
    PIL.Image.fromarray(array).save(path)
    reference = detector.detect(image)
    assert isinstance(reference, Faces) and (reference.width, reference.height) == (100, 72)
    same(detector.detect(array), reference)
    same(detector.detect(PIL.Image.fromarray(array)), reference)
    same(detector.detect(image.float() / 255), reference)
    from_path = detector.detect(path)
    same(from_path, reference)
    assert from_path.source == str(path)
    as_list = detector.detect([str(path), array, image])
    assert isinstance(as_list, list) and len(as_list) == 3
    for faces in as_list:
        same(faces, reference)


def test_mixed_sizes_batch_and_keep_order(detector, image):
    small = image[:, :40, :56].contiguous()
    faces = detector.detect([image, small, image])
    assert [(f.width, f.height) for f in faces] == [(100, 72), (56, 40), (100, 72)]
    same(faces[0], detector.detect(image))
    same(faces[2], faces[0])
    assert len(faces[1]) > 0


def test_max_size_maps_boxes_back_to_original_pixels(checkpoint, image):
    big = resize(image, [144, 200], antialias=True)
    guarded = Detector(checkpoint, device="cpu", score_thresh=0.0, max_size=100).detect(big)
    plain = Detector(checkpoint, device="cpu", score_thresh=0.0).detect(resize(big, [72, 100], antialias=True))
    assert (guarded.width, guarded.height) == (200, 144)
    assert_close(guarded.boxes, plain.boxes * 2)
    assert_close(guarded.scores, plain.scores)


def test_score_thresh_filters(checkpoint, image):
    everything = Detector(checkpoint, device="cpu", score_thresh=0.0).detect(image)
    cut = float(everything.scores[len(everything) // 2])
    some = Detector(checkpoint, device="cpu", score_thresh=cut).detect(image)
    assert len(some) < len(everything) and bool((some.scores >= cut).all())


def test_detections_are_one_type_from_the_backend_up_to_faces(detector, image):
    (found,) = detector.detect_tensors([image.float() / 255])
    assert isinstance(found, Detections) and found.scores.numel() > 0
    boxes, scores = found  # it unpacks as the pair that test-time augmentation takes
    assert boxes.shape == (scores.numel(), 4)
    faces = detector.detect(image)
    # 100x72 is under max_size, so Faces holds the same detections, clipped to the image.
    clipped = torch.stack([boxes[:, 0].clamp(0, 100), boxes[:, 1].clamp(0, 72), boxes[:, 2].clamp(0, 100),
                           boxes[:, 3].clamp(0, 72)], dim=1)
    assert_close(faces.boxes, clipped, rtol=0, atol=0)
    assert_close(faces.scores, scores, rtol=0, atol=0)


def test_raw_outputs_are_reachable(detector, image):
    raw = detector.raw_outputs(image)
    assert isinstance(raw, SRNOutputs) and raw._fields == ("step1_logits", "step1_deltas", "step2_logits", "step2_deltas", "anchors")
    assert raw.step1_logits[0].shape == raw.step2_logits[0].shape == (1, 18 * 25 * 2)
    assert raw.step2_deltas[5].shape[-1] == 4


def test_bad_inputs_fail_clearly(detector, tmp_path):
    with pytest.raises(ValueError):
        detector.detect(np.zeros((4, 5, 7), dtype=np.uint8))
    with pytest.raises(InputPathError, match="nope.pt: no such weights file"):
        Detector(tmp_path / "nope.pt", device="cpu")
