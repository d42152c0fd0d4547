from pathlib import Path

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

ASTRONAUT = Path(__file__).resolve().parents[1] / "docs" / "astronaut.png"  # NASA, public domain

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
    # 100x72 is under max_size, so Faces holds the same detections, clipped to the image, less
    # those that lay wholly in the padding (128x128) and so have no width or height once clipped.
    clipped = torch.stack([boxes[:, 0].clamp(0, 100), boxes[:, 1].clamp(0, 72), boxes[:, 2].clamp(0, 100),
                           boxes[:, 3].clamp(0, 72)], dim=1)
    kept = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    assert 0 < int(kept.sum()) < len(kept)  # this random network does put boxes in the padding
    assert_close(faces.boxes, clipped[kept], rtol=0, atol=0)
    assert_close(faces.scores, scores[kept], rtol=0, atol=0)
    assert bool((faces.boxes[:, 2:] > faces.boxes[:, :2]).all())


def test_each_image_is_padded_to_a_multiple_of_the_backbone_stride(detector, image):
    assert detector.size_divisor == 32  # the backbone's output stride
    assert detector.padded_size(72, 100) == (96, 128)
    assert detector.padded_size(128, 129) == (128, 160)
    # Alone or beside a larger image, the 100x72 image runs as the same 96x128 input.
    alone = detector.detect(image)
    beside = detector.detect([image, torch.zeros(3, 300, 400, dtype=torch.uint8)])[0]
    assert_close(beside.boxes, alone.boxes, rtol=0, atol=0)
    assert_close(beside.scores, alone.scores, rtol=0, atol=0)


def test_min_size_upscales_small_images_and_maps_boxes_back(checkpoint, image):
    upscaled = Detector(checkpoint, device="cpu", score_thresh=0.0, min_size=200).detect(image)
    plain = Detector(checkpoint, device="cpu", score_thresh=0.0).detect(resize(image, [144, 200], antialias=True))
    assert (upscaled.width, upscaled.height) == (100, 72)
    assert_close(upscaled.boxes, plain.boxes / 2)
    assert_close(upscaled.scores, plain.scores)
    # An image already that large is left alone, and max_size still shrinks larger ones.
    big = resize(image, [144, 200], antialias=True)
    assert_close(Detector(checkpoint, device="cpu", score_thresh=0.0, min_size=150).detect(big).boxes, plain.boxes)
    both = Detector(checkpoint, device="cpu", score_thresh=0.0, min_size=200, max_size=200)
    assert (both.fitted_scale(72, 100), both.fitted_scale(1000, 100), both.fitted_scale(150, 200)) == (2.0, 0.2, 1.0)


@pytest.mark.parametrize("settings, message", [
    ({"min_size": 16}, r"minimum image size must be in \[32, 2100\]"),
    ({"min_size": 3000}, r"minimum image size must be in \[32, 2100\]"),
    ({"min_size": 800, "max_size": 640}, r"minimum image size must be in \[32, 640\]"),
])
def test_bad_min_size_is_one_line(checkpoint, settings, message):
    from srn.errors import ConfigError

    with pytest.raises(ConfigError, match=message) as caught:
        Detector(checkpoint, device="cpu", **settings)
    assert "\n" not in str(caught.value)


def test_raw_outputs_are_reachable(detector, image):
    raw = detector.raw_outputs(image)
    assert isinstance(raw, SRNOutputs) and raw._fields == ("step1_logits", "step1_deltas", "step2_logits", "step2_deltas", "anchors")
    # 100x72 runs padded to 128x96 (W x H): 24x32 cells of stride 4, two anchors each.
    assert raw.step1_logits[0].shape == raw.step2_logits[0].shape == (1, 24 * 32 * 2)
    assert raw.step2_deltas[5].shape[-1] == 4


def test_bad_inputs_fail_clearly(detector, tmp_path):
    with pytest.raises(ValueError):
        detector.detect(np.zeros((4, 5, 7), dtype=np.uint8))
    with pytest.raises(InputPathError, match="nope.pt: no such weights file"):
        Detector(tmp_path / "nope.pt", device="cpu")


def test_min_size_on_the_command_line(checkpoint, tmp_path, capsys):
    import json

    from srn.cli import main

    photo = tmp_path / "small.png"
    PIL.Image.open(ASTRONAUT).convert("RGB").resize((128, 128)).save(photo)
    common = ["--weights", str(checkpoint), "--device", "cpu", "--threads", "1"]
    assert main(["detect", str(photo), "--min-size", "256", "--score-thresh", "0", "--format", "jsonl", *common]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    record = json.loads(line)
    expected = Detector(checkpoint, device="cpu", score_thresh=0.0, min_size=256).detect(photo).record()["faces"]
    assert (record["width"], record["height"]) == (128, 128) and record["faces"] == expected
    for command in (["detect", str(photo)], ["anonymize", str(photo), "--out", str(tmp_path / "anon")]):
        for value, message in (("20", "must be in [32, 2100]"), ("3000", "must be in [32, 2100]"), ("-1", "must be at least 0"),
                               ("nan", "expected an integer"), ("1e9", "expected an integer")):
            try:  # out of range: the Detector refuses it; not a number: argparse exits
                code = main([*command, "--min-size", value, *common])
            except SystemExit as exc:
                code = exc.code
            err = capsys.readouterr().err
            assert code == 2
            assert err.count("\n") == 1 and message in err, err
