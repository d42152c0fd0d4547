"""The results API: Detector.detect / stream and Faces (boxes, numpy, iteration, plot, save, crops,
records), on real photos with the shipped model; and the examples of README.md."""

import gc
import json
import math
import re
import shutil
import weakref
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from torch.testing import assert_close

from srn import Detector, Face, Faces
from srn.errors import OutputPathError
from srn.inference import draw_faces
from srn.inference.draw import BOX_COLOUR
from srn.inference.results import expand_boxes
from srn.postprocess import Detections

ROOT = Path(__file__).resolve().parents[1]
ASTRONAUT = ROOT / "docs" / "astronaut.png"  # NASA, public domain
USAGE = ROOT / "README.md"
PYTHON_API = ROOT / "docs" / "python.md"
MULTIFACE = "data/demo/images/timesler__data_multiface.jpg"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def detector():
    return Detector(device="cpu", score_thresh=0.3)


@pytest.fixture(scope="module")
def astronaut(detector):
    return detector.detect(str(ASTRONAUT))


@pytest.fixture(scope="module")
def multiface(detector, shared_dir):
    path = shared_dir / MULTIFACE
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return detector.detect(path)


def photo(faces: Faces) -> np.ndarray:
    return faces.image.permute(1, 2, 0).numpy()


def test_detect_returns_a_list_for_a_list_and_one_result_for_one(detector, astronaut):
    assert isinstance(astronaut, Faces)
    one = detector.detect([str(ASTRONAUT)])
    assert isinstance(one, list) and len(one) == 1 and isinstance(one[0], Faces)
    pair = detector.detect((str(ASTRONAUT), photo(astronaut)))
    assert isinstance(pair, list) and len(pair) == 2
    for faces in (*one, *pair):
        assert_close(faces.boxes, astronaut.boxes)
        assert_close(faces.scores, astronaut.scores)
    assert pair[0].source == str(ASTRONAUT) and pair[1].source is None


def test_faces_are_built_from_the_post_processors_detections():
    detections = Detections(torch.tensor([[1.5, 2.0, 10.0, 20.25], [0.0, 0.0, 4.0, 4.0]]), torch.tensor([0.75, 0.5]))
    image = torch.zeros(3, 24, 32, dtype=torch.uint8)
    faces = Faces.from_detections(detections, 32, 24, "a.png", image=image)
    assert (faces.width, faces.height, faces.source) == (32, 24, "a.png") and faces.image is image
    assert_close(faces.boxes, detections.boxes, rtol=0, atol=0)
    assert_close(faces.scores, detections.scores, rtol=0, atol=0)
    where = {"image": "a.png", "width": 32, "height": 24}
    assert faces.to_records() == [{**where, "box": [1.5, 2.0, 10.0, 20.25], "score": 0.75},
                                  {**where, "box": [0.0, 0.0, 4.0, 4.0], "score": 0.5}]
    assert json.loads(faces.to_json()) == faces.record() == {**where, "faces": [{"box": [1.5, 2.0, 10.0, 20.25], "score": 0.75},
                                                                              {"box": [0.0, 0.0, 4.0, 4.0], "score": 0.5}]}
    assert "\n" not in faces.to_json() and faces.to_json(indent=2).count("\n") > 5


def test_boxes_and_scores_live_on_the_cpu_as_plain_float32(astronaut):
    assert len(astronaut) >= 1
    assert astronaut.boxes.shape == (len(astronaut), 4) and astronaut.scores.shape == (len(astronaut),)
    for tensor in (astronaut.boxes, astronaut.scores):
        assert tensor.dtype == torch.float32 and tensor.device.type == "cpu"
        assert not tensor.is_inference()  # callers may modify them
    assert (astronaut.width, astronaut.height) == (512, 512)
    assert astronaut.image.shape == (3, 512, 512) and astronaut.image.dtype == torch.uint8
    assert_close(astronaut.image, torch.from_numpy(np.array(PIL.Image.open(ASTRONAUT).convert("RGB"))).permute(2, 0, 1))


def test_numpy_iteration_indexing_and_records(astronaut):
    boxes, scores = astronaut.numpy()
    assert boxes.dtype == scores.dtype == np.float32
    np.testing.assert_array_equal(boxes, astronaut.boxes.numpy())
    np.testing.assert_array_equal(scores, astronaut.scores.numpy())
    boxes[:] = 0  # a copy: the result is untouched
    assert astronaut.boxes.abs().sum() > 0
    assert np.column_stack(astronaut.numpy()).shape == (len(astronaut), 5)

    faces = list(astronaut)
    assert all(isinstance(face, Face) for face in faces) and [face.index for face in faces] == list(range(len(astronaut)))
    assert [face.score for face in faces] == astronaut.scores.tolist()
    assert_close(torch.stack([face.box for face in faces]), astronaut.boxes)
    assert astronaut[-1].index == len(astronaut) - 1
    with pytest.raises(IndexError, match=f"face {len(astronaut)} of {len(astronaut)}"):
        astronaut[len(astronaut)]
    top = astronaut[:1]
    assert isinstance(top, Faces) and len(top) == 1 and top.image is astronaut.image

    records = astronaut.to_records()
    where = {"image": astronaut.source, "width": 512, "height": 512}
    assert records == [{**where, "box": [round(v, 2) for v in b], "score": round(s, 4)}
                       for b, s in zip(astronaut.boxes.double().tolist(), astronaut.scores.double().tolist())]
    # The records' exact format: boxes to 2 decimals, scores to 4.
    made = Faces(torch.tensor([[1.234, 2.345, 10.0, 20.555]]), torch.tensor([0.98765]), 32, 32)
    assert made.to_records() == [{"image": None, "width": 32, "height": 32, "box": [1.23, 2.35, 10.0, 20.56], "score": 0.9876}]
    frame = Faces(made.boxes, made.scores, 32, 32, "clip.mp4", frame=3, time=0.123456)
    assert frame.to_records() == [{"video": "clip.mp4", "frame": 3, "time": 0.1235, "width": 32, "height": 32,
                                   "box": [1.23, 2.35, 10.0, 20.56], "score": 0.9876}]
    assert repr(made[:0]) == "Faces(0 faces, 32x32)" and repr(frame) == "Faces(1 face, 32x32, source='clip.mp4')"
    assert repr(made) == "Faces(1 face, 32x32)" and repr(made[0]) == "Face(box=[1.2, 2.3, 10.0, 20.6], score=0.9876)"


def far_from_boxes(boxes: torch.Tensor, height: int, width: int, reach: int) -> np.ndarray:
    """Bool (H, W): pixels more than ``reach`` pixels away from every box."""
    far = np.ones((height, width), dtype=bool)
    for x1, y1, x2, y2 in boxes.tolist():
        far[max(0, math.floor(y1) - reach) : math.ceil(y2) + reach, max(0, math.floor(x1) - reach) : math.ceil(x2) + reach] = False
    return far


@pytest.mark.parametrize("which", ["astronaut", "multiface"])
def test_plot_draws_only_near_the_boxes(which, request):
    faces = request.getfixturevalue(which)
    original = photo(faces)
    drawn = faces.plot()
    assert drawn.shape == (faces.height, faces.width, 3) and drawn.dtype == np.uint8
    # The label (about 40 x 20 pixels here) sits above a box's top-left corner; 48 pixels away from
    # every box nothing is drawn.
    far = far_from_boxes(faces.boxes, faces.height, faces.width, reach=48)
    assert far.sum() > 0.3 * far.size
    np.testing.assert_array_equal(drawn[far], original[far])
    for x1, y1, x2, y2 in faces.boxes.tolist():
        middle = round((x1 + x2) / 2)
        assert tuple(drawn[round(y2) - 1, middle]) == BOX_COLOUR  # the bottom edge
    best = faces.boxes[0].round().long().tolist()
    centre = ((best[1] + best[3]) // 2, (best[0] + best[2]) // 2)
    np.testing.assert_array_equal(drawn[centre], original[centre])  # inside a box: untouched
    np.testing.assert_array_equal(photo(faces), original)  # the kept image is not modified
    # One drawing function for everything: tensors in, tensors out, same pixels.
    as_tensor = draw_faces(faces.image, faces.boxes, faces.scores)
    np.testing.assert_array_equal(as_tensor.permute(1, 2, 0).numpy(), drawn)


def test_save_writes_the_plot_atomically_in_the_suffixes_format(astronaut, tmp_path):
    assert astronaut.save(tmp_path / "faces.png") == tmp_path / "faces.png"
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(tmp_path / "faces.png")), astronaut.plot())
    astronaut.save(tmp_path / "sub" / "faces.jpg", scores=False)
    with PIL.Image.open(tmp_path / "sub" / "faces.jpg") as image:
        assert (image.format, image.size) == ("JPEG", (512, 512))
    with pytest.raises(OutputPathError) as error:
        astronaut.save(tmp_path / "faces.xyz")
    assert str(error.value) == f"{tmp_path / 'faces.xyz'}: cannot write images of type '.xyz'; use .jpg, .png, .webp, ..."
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces.png", "sub"]  # no temporary file left


@pytest.mark.parametrize("which", ["astronaut", "multiface"])
@pytest.mark.parametrize("margin", [0.0, 0.2, 1.0])
def test_crops_grow_each_box_by_the_margin_and_clip_to_the_image(which, margin, request):
    faces = request.getfixturevalue(which)
    original = photo(faces)
    crops = faces.crops(margin=margin)
    assert len(crops) == len(faces)
    for (x1, y1, x2, y2), crop in zip(faces.boxes.double().tolist(), crops):
        w, h = x2 - x1, y2 - y1
        left, top = max(0, math.floor(x1 - margin * w)), max(0, math.floor(y1 - margin * h))
        right, bottom = min(faces.width, math.ceil(x2 + margin * w)), min(faces.height, math.ceil(y2 + margin * h))
        assert crop.shape == (bottom - top, right - left, 3) and crop.dtype == np.uint8
        np.testing.assert_array_equal(crop, original[top:bottom, left:right])
    np.testing.assert_array_equal(faces[0].crop(margin), crops[0])


def test_save_crops_writes_each_face_as_crops_gives_it(astronaut, tmp_path):
    written = astronaut.save_crops(tmp_path / "crops", margin=0.1)
    assert written == [tmp_path / "crops" / f"face_{i:03d}.jpg" for i in range(len(astronaut))]
    for path, crop in zip(written, astronaut.crops(0.1)):
        with PIL.Image.open(path) as image:
            assert image.format == "JPEG" and image.size == (crop.shape[1], crop.shape[0])


def test_expand_boxes_by_hand():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0], [-5.0, 90.0, 4.2, 120.0], [100.0, 0.0, 100.0, 0.0]])
    # box 1: w 20, h 40, margin 0.25 -> 5 and 10 pixels: 5, 10, 35, 70
    # box 2: w 9.2, h 30 -> -7.3, 82.5, 6.5, 127.5 -> floor/ceil, clipped to 100 x 100: 0, 82, 7, 100
    # box 3: empty, at the corner -> one pixel: 99, 0, 100, 1
    assert expand_boxes(boxes, 0.25, 100, 100).tolist() == [[5, 10, 35, 70], [0, 82, 7, 100], [99, 0, 100, 1]]


def test_a_result_without_its_image_still_counts_but_cannot_draw(astronaut):
    bare = Faces(astronaut.boxes, astronaut.scores, astronaut.width, astronaut.height)
    assert len(bare) == len(astronaut) and bare.record()["faces"] == astronaut.record()["faces"]
    with pytest.raises(ValueError, match="these Faces hold no image"):
        bare.plot()
    with pytest.raises(ValueError, match=r"the image must be uint8 of shape \(3, 512, 512\)"):
        Faces(astronaut.boxes, astronaut.scores, 512, 512, image=torch.zeros(3, 10, 10, dtype=torch.uint8))


def test_stream_yields_in_order_and_holds_one_batch(detector, astronaut):
    image = astronaut.image
    sizes = [(512, 512), (300, 400), (512, 512), (256, 256), (512, 512)]
    refs, pulled = [], []

    def frames():
        for index, (h, w) in enumerate(sizes):
            frame = image[:, :h, :w].clone()
            refs.append(weakref.ref(frame))
            pulled.append(index)
            yield frame
            del frame

    stream = detector.stream(frames(), batch_size=2)
    first = next(stream)
    assert pulled == [0, 1]  # one batch read, not the whole sequence
    expected = detector.detect([image[:, :h, :w].clone() for h, w in sizes])
    results = [first, *stream]
    assert [(f.height, f.width) for f in results] == sizes
    for got, want in zip(results, expected):
        assert_close(got.boxes, want.boxes)
        assert_close(got.scores, want.scores)

    del first, results
    for index, faces in enumerate(detector.stream(frames(), batch_size=2)):
        del faces
        gc.collect()
        alive = [i for i, ref in enumerate(refs[len(sizes) :]) if ref() is not None]
        assert alive == [i for i in range(len(sizes)) if i // 2 == index // 2]  # only the current batch
    # One input that is not a sequence counts as one.
    assert [len(f) for f in detector.stream(str(ASTRONAUT))] == [len(astronaut)]


def test_readme_examples_run(tmp_path, monkeypatch, capsys):
    """Every ``python`` block of README.md, then of docs/python.md (the README's example in full), in
    order, in one namespace."""
    (tmp_path / "docs").mkdir()
    shutil.copy(ASTRONAUT, tmp_path / "docs" / "astronaut.png")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for page, at_least in ((USAGE, 1), (PYTHON_API, 6)):
        blocks = re.findall(r"^```python\n(.*?)^```$", page.read_text(), flags=re.DOTALL | re.MULTILINE)
        assert len(blocks) >= at_least, page
        for number, code in enumerate(blocks, 1):
            exec(compile(code, f"{page.relative_to(ROOT)}, python block {number}", "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    assert out.count("Faces(1 face, 512x512, source='docs/astronaut.png')\n") == 2  # the README's and the API page's
    # On the CPU the default is the shipped int8 model (the PyTorch checkpoint gives [176.38, 62.09, 275.36, 182.03], 0.9873).
    box = "[176.76, 61.89, 275.91, 182.58]"
    assert ('{"image": "docs/astronaut.png", "width": 512, "height": 512, "faces": [{"box": ' + box + ', "score": 0.988}]}') in out
    assert f"[{{'image': 'docs/astronaut.png', 'width': 512, 'height': 512, 'box': {box}, 'score': 0.988}}]" in out
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["astronaut_anonymized.jpg", "astronaut_faces.jpg", "crops/astronaut_png/face_000.jpg", "docs/astronaut.png",
                       "drawn.jpg", "drawn/astronaut.png", "face_0.png"]
