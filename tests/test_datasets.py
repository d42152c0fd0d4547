"""Annotation parsers, the dataset's failure handling, collation and mixing, on hand-written files and
on the real annotation files in ../shared/data."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from torch.testing import assert_close
from torch.utils.data import ConcatDataset, DataLoader

from srn.data.datasets import FaceDetectionDataset, clip_and_filter_boxes, collate
from srn.data.formats import (
    FaceRecord,
    ellipses_to_boxes,
    parse_coco_json,
    parse_fddb_ellipses,
    parse_wider_file,
    read_fddb_ellipses,
    read_wider_boxes,
)
from srn.data.samplers import RepeatDataset, source_sampling_weights
from srn.errors import AnnotationError

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATA = SHARED / "data"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _boxes(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def _needs_shared() -> None:
    if not DATA.is_dir():
        pytest.skip(f"the shared data folder {DATA} is absent")


# --- WIDER official format ------------------------------------------------------------------------

WIDER_OFFICIAL = """\
0--Parade/a.jpg
2
10 20 30 40 0 0 0 0 0 0
5 6 7 8 2 1 0 1 0 0
0--Parade/empty.jpg
0
0 0 0 0 0 0 0 0 0 0
1--Handshaking/b.jpg
1
1 2 3 4 1 0 1 0 1 1
"""


def test_wider_official_format(tmp_path: Path) -> None:
    records = parse_wider_file(_write(tmp_path / "gt.txt", WIDER_OFFICIAL))
    assert [r.image_path for r in records] == ["0--Parade/a.jpg", "0--Parade/empty.jpg", "1--Handshaking/b.jpg"]
    # x y w h -> x1 y1 x2 y2 = (x, y, x + w, y + h)
    assert_close(records[0].boxes, _boxes([10, 20, 40, 60], [5, 6, 12, 14]), rtol=0, atol=0)
    assert records[0].ignore.tolist() == [False, True]  # the second face has invalid = 1
    assert records[0].attributes.tolist() == [[0, 0, 0, 0, 0, 0], [2, 1, 0, 1, 0, 0]]
    # The zero-face quirk: count 0 and one all-zero line, consumed, giving no face and no drop.
    assert records[1].boxes.shape == (0, 4)
    assert records[1].ignore.shape == (0,)
    assert records[1].num_dropped == 0
    assert_close(records[2].boxes, _boxes([1, 2, 4, 6]), rtol=0, atol=0)
    assert records[2].ignore.tolist() == [False]
    assert records[2].image_size is None
    assert records[2].image_id == "1--Handshaking/b.jpg"
    assert records[0].boxes.dtype == torch.float32 and records[0].ignore.dtype == torch.bool


def test_wider_official_invalid_not_ignored_on_request(tmp_path: Path) -> None:
    records = parse_wider_file(_write(tmp_path / "gt.txt", WIDER_OFFICIAL), ignore_invalid=False)
    assert records[0].ignore.tolist() == [False, False]


def test_wider_zero_face_image_last_in_file(tmp_path: Path) -> None:
    records = parse_wider_file(_write(tmp_path / "gt.txt", "a.jpg\n0\n0 0 0 0 0 0 0 0 0 0\n"))
    assert len(records) == 1 and records[0].boxes.shape == (0, 4)
    records = parse_wider_file(_write(tmp_path / "list.txt", "a.jpg\n0\nb.jpg\n1\n1 1 2 2\n"))
    assert [len(r.boxes) for r in records] == [0, 1]


# --- WIDER list format ----------------------------------------------------------------------------


def test_wider_list_with_sizes_clips_and_drops(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    text = """\
# <path> <width> <height>, count, x y w h
images/one photo.jpg 100 50
5
-10 5 30 20
90 40 20 20
120 10 5 5
10 10 0 5
10 10 5 -1
images/two.jpg 64 48
1
1.5 2.25 3.5 4
"""
    with caplog.at_level(logging.WARNING, logger="srn.data"):
        records = parse_wider_file(_write(tmp_path / "labels.txt", text))
    first, second = records
    assert first.image_path == "images/one photo.jpg"  # a path with a space survives
    assert first.image_size == (50, 100)  # (height, width)
    # (-10, 5, 20, 25) clipped at x = 0; (90, 40, 110, 60) clipped to (100, 50); (120, ...) lies
    # right of the image; w = 0 and h = -1 are degenerate.
    assert_close(first.boxes, _boxes([0, 5, 20, 25], [90, 40, 100, 50]), rtol=0, atol=0)
    assert first.num_dropped == 3
    assert first.attributes is None
    assert_close(second.boxes, _boxes([1.5, 2.25, 5.0, 6.25]), rtol=0, atol=0)
    assert second.num_dropped == 0
    assert f"{tmp_path / 'labels.txt'}: dropped 3 degenerate box(es) in 1 image(s)" in caplog.text


def test_wider_list_without_sizes_keeps_negative_coordinates(tmp_path: Path) -> None:
    records = parse_wider_file(_write(tmp_path / "labels.txt", "a.jpg\n2\n-3 -4 10 10\n1 1 0 3\n"))
    assert_close(records[0].boxes, _boxes([-3, -4, 7, 6]), rtol=0, atol=0)
    assert records[0].num_dropped == 1


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("a.jpg\nabc\n", 2, "expected a face count (an integer >= 0), got 'abc'"),
        ("a.jpg\n-1\n", 2, "expected a face count (an integer >= 0), got '-1'"),
        ("a.jpg\n2\n1 2 3 4\nb.jpg\n1\n1 2 3 4\n", 4, "expected 'x y w h' or 'x y w h' + 6 attributes, got 'b.jpg'"),
        ("a.jpg\n1\n1 2 3 4\n5 6 7 8\n", 4, "expected an image path, got numbers '5 6 7 8' (is a face count above wrong?)"),
        ("a.jpg\n1\n1 2 3 4 5\n", 3, "expected 'x y w h' or 'x y w h' + 6 attributes, got '1 2 3 4 5'"),
        ("a.jpg\n1\n1 2 x 4\n", 3, "expected 'x y w h' or 'x y w h' + 6 attributes, got '1 2 x 4'"),
        ("a.jpg\n3\n1 2 3 4\n\n1 2 3 4\n", 5, "image 'a.jpg' announces 3 faces, the file ends after 2"),
        ("a.jpg\n1\n1 2 3 4\nb.jpg\n", 4, "image 'b.jpg' has no face count line after it"),
        ("a.jpg\n1\n1 2 3 4\nb.jpg\n1\n1 2 3 4 0 0 0 0 0 0\n", 6, "10 numbers where the file's first face line has 4"),
    ],
)
def test_wider_parse_errors_name_file_and_line(tmp_path: Path, text: str, line: int, reason: str) -> None:
    path = _write(tmp_path / "bad.txt", text)
    with pytest.raises(AnnotationError) as info:
        parse_wider_file(path)
    assert str(info.value) == f"{path}:{line}: {reason}"
    assert isinstance(info.value, ValueError)


def test_wider_boxes_with_sizes_keeps_the_rows_as_written(tmp_path: Path) -> None:
    # The analysis reads the same layout through the same parser, without the clean-up.
    path = _write(tmp_path / "boxes.txt", "a/one.jpg 100 50\n2\n-10 5 30 20\n10 10 0 5\nb/two.jpg 64 48\n0\n")
    (name, width, height, boxes), second = read_wider_boxes(path)
    assert (name, width, height) == ("a/one.jpg", 100, 50)
    assert_close(boxes, torch.tensor([[-10.0, 5, 30, 20], [10, 10, 0, 5]], dtype=torch.float64), rtol=0, atol=0)
    assert (second[:3], second[3].shape) == (("b/two.jpg", 64, 48), (0, 4))
    (record, _) = parse_wider_file(path)
    assert_close(record.boxes, _boxes([0, 5, 20, 25]), rtol=0, atol=0)  # clipped; the w = 0 box dropped

    no_size = _write(tmp_path / "list.txt", "a/one.jpg\n1\n1 2 3 4\n")
    with pytest.raises(AnnotationError) as info:
        read_wider_boxes(no_size)
    assert str(info.value) == f"{no_size}:1: expected '<event>/<name>.jpg <width> <height>', got 'a/one.jpg'"
    empty = _write(tmp_path / "empty.txt", "\n# nothing\n")
    with pytest.raises(AnnotationError) as info:
        read_wider_boxes(empty)
    assert str(info.value) == f"{empty}: no image in the file"


# --- FDDB -----------------------------------------------------------------------------------------


def test_ellipses_to_boxes() -> None:
    ellipses = torch.tensor(
        [
            [10.0, 5.0, 0.0, 50.0, 60.0],  # major radius along x
            [10.0, 5.0, math.pi / 2, 50.0, 60.0],  # major radius along y
            [10.0, 5.0, math.pi / 4, 0.0, 0.0],  # half extents sqrt((100 + 25) / 2) both ways
        ],
        dtype=torch.float64,
    )
    r = math.sqrt(62.5)
    expected = torch.tensor([[40, 55, 60, 65], [45, 50, 55, 70], [-r, -r, r, r]], dtype=torch.float64)
    assert_close(ellipses_to_boxes(ellipses), expected, rtol=0, atol=1e-12)


def test_fddb_parser(tmp_path: Path) -> None:
    fold1 = _write(tmp_path / "fold-01.txt", "2002/08/11/big/img_591\n1\n10 5 0 50 60  1\n2002/07/19/big/img_423\n0\n")
    fold2 = _write(tmp_path / "fold-02.txt", "2003/01/01/big/img_1\n2\n10 5 1.5707963267948966 50 60 1\n4 4 0.3 10 10 1\n")
    records = parse_fddb_ellipses([fold1, fold2])
    assert [r.image_path for r in records] == ["2002/08/11/big/img_591.jpg", "2002/07/19/big/img_423.jpg", "2003/01/01/big/img_1.jpg"]
    assert_close(records[0].boxes, _boxes([40, 55, 60, 65]), rtol=0, atol=0)
    assert records[1].boxes.shape == (0, 4)
    assert_close(records[2].boxes, _boxes([45, 50, 55, 70], [6, 6, 14, 14]))  # a circle ignores its angle
    assert records[2].ignore.tolist() == [False, False]
    assert parse_fddb_ellipses(fold1, image_ext="")[0].image_path == "2002/08/11/big/img_591"


def test_fddb_parse_error(tmp_path: Path) -> None:
    # Training and evaluation read FDDB through one parser, so they refuse a file with one message.
    path = _write(tmp_path / "fold.txt", "img_1\n1\n10 5 0 50\n")
    for parse in (parse_fddb_ellipses, read_fddb_ellipses):
        with pytest.raises(AnnotationError) as info:
            parse(path)
        assert str(info.value) == f"{path}:3: expected 5 or 6 numbers per ellipse line, got 4"


# --- COCO -----------------------------------------------------------------------------------------

COCO = {
    "images": [
        {"id": 7, "file_name": "x.jpg", "width": 100, "height": 80},
        {"id": 8, "file_name": "y.jpg", "width": 50, "height": 50},
        {"id": 9, "file_name": "z.jpg", "width": 50, "height": 50},
    ],
    "categories": [{"id": 1, "name": "face"}, {"id": 2, "name": "person"}],
    "annotations": [
        {"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 20, 30, 40], "iscrowd": 0},
        {"id": 2, "image_id": 7, "category_id": 1, "bbox": [90, 70, 20, 20], "iscrowd": 1},
        {"id": 3, "image_id": 7, "category_id": 2, "bbox": [0, 0, 10, 10], "iscrowd": 0},
        {"id": 4, "image_id": 8, "category_id": 1, "bbox": [5, 5, 0, 10], "iscrowd": 0},
        {"id": 5, "image_id": 8, "category_id": 1, "bbox": [60, 5, 10, 10]},
    ],
}


def test_coco_parser(tmp_path: Path) -> None:
    path = _write(tmp_path / "faces.json", json.dumps(COCO))
    x, y, z = parse_coco_json(path, categories=["face"])
    assert (x.image_path, x.image_size) == ("x.jpg", (80, 100))
    # the crowd box (90, 70, 110, 90) is clipped to the 100x80 image and ignored
    assert_close(x.boxes, _boxes([10, 20, 40, 60], [90, 70, 100, 80]), rtol=0, atol=0)
    assert x.ignore.tolist() == [False, True]
    assert (y.boxes.shape, y.num_dropped) == ((0, 4), 2)  # w = 0, and entirely right of the image
    assert z.boxes.shape == (0, 4)

    everything = parse_coco_json(path)
    assert len(everything[0].boxes) == 3
    by_id = parse_coco_json(path, categories=[2])
    assert_close(by_id[0].boxes, _boxes([0, 0, 10, 10]), rtol=0, atol=0)
    no_crowd = parse_coco_json(path, categories=["face"], crowd_as_ignore=False, keep_empty=False)
    assert [r.image_path for r in no_crowd] == ["x.jpg"]
    assert no_crowd[0].ignore.tolist() == [False]


def test_coco_errors(tmp_path: Path) -> None:
    path = _write(tmp_path / "broken.json", '{"images": [\n  {"id": 1,\n}')
    with pytest.raises(AnnotationError) as info:
        parse_coco_json(path)
    assert str(info.value).startswith(f"{path}:3: invalid JSON: ")
    path = _write(tmp_path / "faces.json", json.dumps(COCO))
    with pytest.raises(AnnotationError) as info:
        parse_coco_json(path, categories=["cat"])
    assert str(info.value) == f"{path}: no category named 'cat'; known: ['face', 'person']"


# --- the dataset ----------------------------------------------------------------------------------


def _solid_png(path: Path, width: int, height: int, value: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(np.full((height, width, 3), value, dtype=np.uint8)).save(path)


def test_dataset_items_and_failed_images(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _solid_png(tmp_path / "img" / "good.png", 40, 30)
    (tmp_path / "img" / "bad.png").write_text("not an image")
    _solid_png(tmp_path / "img" / "small.png", 20, 20)
    text = (
        "good.png\n3\n1 2 10 10\n35 25 10 10\n50 5 5 5\n"  # the 2nd is clipped, the 3rd lies outside
        "bad.png\n1\n1 1 5 5\n"
        "missing.png\n1\n1 1 5 5\n"
        "small.png 40 30\n1\n1 1 5 5\n"  # the annotation's size contradicts the image
    )
    dataset = FaceDetectionDataset.from_wider(_write(tmp_path / "labels.txt", text), tmp_path / "img")
    assert len(dataset) == 4
    assert dataset.num_dropped_boxes == 0  # sizes unknown at parse time: nothing to drop yet

    with caplog.at_level(logging.WARNING, logger="srn.data"):
        image, target = dataset[0]
        assert (dataset[1], dataset[2], dataset[3]) == (None, None, None)
    assert image.shape == (3, 30, 40) and image.dtype == torch.uint8
    assert_close(target["boxes"], _boxes([1, 2, 11, 12], [35, 25, 40, 30]), rtol=0, atol=0)
    assert target["ignore"].tolist() == [False, False]
    assert target["image_id"] == "good.png"
    assert dataset.num_dropped_boxes == 1
    assert dataset.num_failed_images == 3
    assert f"{tmp_path / 'img' / 'bad.png'}: not a decodable image (unrecognised format, looks like text)" in caplog.text
    assert f"{tmp_path / 'img' / 'missing.png'}: no such file" in caplog.text
    assert "the annotation says 40x30 (WxH), the image is 20x20" in caplog.text

    # A second epoch counts again but neither re-logs nor re-counts dropped boxes.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="srn.data"):
        assert dataset[1] is None
        dataset[0]
    assert caplog.text == ""
    assert (dataset.num_failed_images, dataset.num_dropped_boxes) == (4, 1)

    loader = DataLoader(dataset, batch_size=4, collate_fn=collate)
    images, targets = next(iter(loader))
    assert len(images) == len(targets) == 1
    assert targets[0]["image_id"] == "good.png"


def test_collate_drops_none() -> None:
    image = torch.zeros(3, 2, 2, dtype=torch.uint8)
    target = {"boxes": _boxes(), "ignore": torch.zeros(0, dtype=torch.bool), "image_id": "a"}
    images, targets = collate([None, (image, target), None])
    assert images == [image] and targets == [target]
    assert collate([None, None]) == ([], [])


def test_dataset_applies_transforms(tmp_path: Path) -> None:
    _solid_png(tmp_path / "a.png", 8, 6)

    def halve(image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        return image[:, ::2, ::2], {**target, "boxes": target["boxes"] / 2}

    dataset = FaceDetectionDataset.from_wider(_write(tmp_path / "l.txt", "a.png\n1\n2 2 4 2\n"), transforms=halve)
    image, target = dataset[0]
    assert image.shape == (3, 3, 4)
    assert_close(target["boxes"], _boxes([1, 1, 3, 2]), rtol=0, atol=0)
    # load_target: the parsed annotation, without the image or the transforms
    assert_close(dataset.load_target(0)["boxes"], _boxes([2, 2, 6, 4]), rtol=0, atol=0)


def test_clip_and_filter_boxes() -> None:
    boxes = torch.tensor([[-5.0, 2, 5, 8], [1, 1, 1, 9], [9, 9, 20, 20], [12, 0, 15, 5], [float("nan"), 0, 1, 1]])
    clipped, keep = clip_and_filter_boxes(boxes, (10, 10))
    assert keep.tolist() == [True, False, True, False, False]
    assert_close(clipped[keep], torch.tensor([[0.0, 2, 5, 8], [9, 9, 10, 10]]), rtol=0, atol=0)
    unclipped, keep = clip_and_filter_boxes(boxes)
    assert keep.tolist() == [True, False, True, True, False]
    assert_close(unclipped[0], boxes[0], rtol=0, atol=0)


# --- mixing sources -------------------------------------------------------------------------------


class _Range(torch.utils.data.Dataset):
    def __init__(self, n: int, offset: int = 0) -> None:
        self.n, self.offset = n, offset

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        if not 0 <= index < self.n:
            raise IndexError(index)
        return self.offset + index


def test_repeat_dataset() -> None:
    assert [RepeatDataset(_Range(3), 2)[i] for i in range(6)] == [0, 1, 2, 0, 1, 2]
    repeated = RepeatDataset(_Range(10), 1.5, seed=0)
    items = [repeated[i] for i in range(len(repeated))]
    assert len(items) == 15
    assert items[:10] == list(range(10))
    assert len(set(items[10:])) == 5  # a fixed half, each once more
    assert items == [RepeatDataset(_Range(10), 1.5, seed=0)[i] for i in range(15)]  # same every time
    assert len(RepeatDataset(_Range(10), 0.3)) == 3
    with pytest.raises(ValueError):
        RepeatDataset(_Range(3), 0)


def test_source_sampling_weights() -> None:
    weights = source_sampling_weights([_Range(2), _Range(4)], [3.0, 1.0])
    # source 0 gets 3/4 of the draws, split over 2 items; source 1 gets 1/4 over 4 items
    assert weights.tolist() == [0.375, 0.375, 0.0625, 0.0625, 0.0625, 0.0625]
    mixed = ConcatDataset([_Range(2), RepeatDataset(_Range(4, offset=100), 2)])
    assert [mixed[i] for i in range(len(mixed))] == [0, 1, 100, 101, 102, 103, 100, 101, 102, 103]
    with pytest.raises(ValueError):
        source_sampling_weights([_Range(2)], [1.0, 2.0])


# --- the real annotation files --------------------------------------------------------------------


def test_real_wider_val_official() -> None:
    _needs_shared()
    records = parse_wider_file(DATA / "widerface" / "wider_face_split" / "wider_face_val_bbx_gt.txt")
    assert len(records) == 3226
    kept = sum(len(r.boxes) for r in records)
    dropped = sum(r.num_dropped for r in records)
    # 39,708 faces in the file. 11 have w or h <= 0: four images with no face are written there as a
    # count of 1 plus an all-zero line (not the 0-count quirk), and 7 faces have a zero (or, once,
    # negative) width or height.
    assert (kept, dropped, kept + dropped) == (39697, 11, 39708)
    assert sum(int(r.ignore.sum()) for r in records) == 585  # invalid == 1 among the kept faces
    assert records[0].image_path == "0--Parade/0_Parade_marchingband_1_465.jpg"
    assert_close(records[0].boxes[0], torch.tensor([345.0, 211, 349, 215]), rtol=0, atol=0)


def test_real_wider_train_boxes_with_sizes() -> None:
    _needs_shared()
    records = parse_wider_file(DATA / "widerface" / "wider_face_train_boxes_with_sizes.txt")
    assert len(records) == 12880
    kept = sum(len(r.boxes) for r in records)
    dropped = sum(r.num_dropped for r in records)
    assert (kept, dropped) == (159393, 31)  # 159,424 faces, 31 with w or h <= 0
    assert records[0].image_path == "0--Parade/0_Parade_marchingband_1_100.jpg"
    assert records[0].image_size == (682, 1024)
    assert_close(records[0].boxes[0], torch.tensor([433.0, 189, 467, 231]), rtol=0, atol=0)


def test_real_faces_labels() -> None:
    _needs_shared()
    records = parse_wider_file(DATA / "faces" / "labels.txt")
    assert (len(records), sum(len(r.boxes) for r in records), sum(r.num_dropped for r in records)) == (5387, 11876, 0)
    assert_close(records[0].boxes[0], torch.tensor([79.0, 105, 109, 142]), rtol=0, atol=0)


def test_real_fddb_folds() -> None:
    _needs_shared()
    folds = sorted((DATA / "fddb" / "FDDB-folds").glob("FDDB-fold-*-ellipseList.txt"))
    assert len(folds) == 10
    records = parse_fddb_ellipses(folds)
    assert (len(records), sum(len(r.boxes) for r in records)) == (2845, 5171)
    assert records[0].image_path == "2002/08/11/big/img_591.jpg"


def test_real_val_subset_images_load() -> None:
    _needs_shared()
    dataset = FaceDetectionDataset.from_wider(DATA / "widerface" / "val_subset" / "labels_416.txt")
    assert len(dataset) == 150
    image, target = dataset[0]
    assert image.shape == (3, 416, 416)
    assert target["image_id"] == "images/0_Parade_Parade_0_102.jpg"
    assert target["boxes"].shape == (39, 4)
    assert bool((target["boxes"] >= 0).all()) and bool((target["boxes"] <= 416).all())
    assert dataset.num_failed_images == 0


def test_face_record_is_plain_data() -> None:
    record = FaceRecord("a.jpg", _boxes([0, 0, 1, 1]), torch.tensor([False]))
    assert (record.image_size, record.num_dropped, record.attributes) == (None, 0, None)
