"""Augmentation keeps boxes, ignore flags and pixels consistent.

The sample is a black image with solid rectangles of distinct colours painted exactly at the boxes.
Every box carries ``labels`` = its index, so after any transform its colour (hence where its pixels
went) and its expected ``ignore`` flag (odd indices are ignored) are known.
"""

from __future__ import annotations

import math
import pickle
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor
from torch.testing import assert_close
from torchvision import tv_tensors
from torchvision.transforms import v2

from srn.data.transforms import (
    IMAGENET_MEAN_UINT8,
    MarkSmallFacesIgnored,
    RandomSquareCrop,
    ToPlainTensors,
    ToTVTensors,
    build_eval_transforms,
    build_train_transforms,
    crop_boxes_by_centre,
    per_box_tensors,
)

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255)]
HEIGHT, WIDTH = 120, 160
BOXES = [
    (10, 10, 40, 50),
    (60, 20, 100, 60),
    (120, 15, 150, 45),
    (20, 70, 70, 110),
    (90, 75, 110, 100),
    (130, 70, 156, 116),
]


def painted_sample() -> tuple[Tensor, dict[str, Any]]:
    image = torch.zeros(3, HEIGHT, WIDTH, dtype=torch.uint8)
    for (x1, y1, x2, y2), colour in zip(BOXES, COLOURS):
        image[:, y1:y2, x1:x2] = torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1)
    target = {
        "boxes": torch.tensor(BOXES, dtype=torch.float32),
        "ignore": torch.tensor([k % 2 == 1 for k in range(len(BOXES))]),
        "labels": torch.arange(len(BOXES)),
        "image_id": "painted",
    }
    return image, target


def wrapped(*steps: Any) -> v2.Compose:
    return v2.Compose([ToTVTensors(), *steps, ToPlainTensors()])


def step_of(pipeline: v2.Compose, kind: type) -> Any:
    """The configured instance of ``kind`` inside a built pipeline."""
    return next(t for t in pipeline.transforms if isinstance(t, kind))


def assert_boxes_match_pixels(image: Tensor, target: dict[str, Any], edge_tol: float, interior_tol: int) -> None:
    """Each box's painted region (pixels within 60 of its colour) has the box's edges, within
    ``edge_tol`` px, and its interior (2 px in from the edges) is the colour within ``interior_tol``."""
    assert image.dtype == torch.uint8
    for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
        x1, y1, x2, y2 = box
        if min(x2 - x1, y2 - y1) < 3:  # too small for a reliable pixel test after resizing
            continue
        colour = torch.tensor(COLOURS[label]).view(3, 1, 1)
        close = (image.int() - colour).abs().amax(dim=0) <= 60
        ys, xs = torch.nonzero(close, as_tuple=True)
        found = [float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1]
        assert_close(torch.tensor(found), torch.tensor(box), atol=edge_tol, rtol=0, msg=f"box {label}")
        inner = image[:, math.ceil(y1) + 2 : math.floor(y2) - 2, math.ceil(x1) + 2 : math.floor(x2) - 2]
        if inner.numel():
            assert int((inner.int() - colour).abs().max()) <= interior_tol, f"box {label}"


def assert_flags_travel(target: dict[str, Any]) -> None:
    n = len(target["boxes"])
    assert target["labels"].shape == (n,) and target["ignore"].shape == (n,)
    assert target["ignore"].dtype == torch.bool
    assert target["ignore"].tolist() == [label % 2 == 1 for label in target["labels"].tolist()]


# --- single steps ---------------------------------------------------------------------------------


def test_flip_maps_x_exactly() -> None:
    image, target = painted_sample()
    out_image, out = wrapped(v2.RandomHorizontalFlip(p=1.0))(image, target)
    x1, y1, x2, y2 = target["boxes"].unbind(1)
    assert_close(out["boxes"], torch.stack((WIDTH - x2, y1, WIDTH - x1, y2), dim=1), rtol=0, atol=0)
    assert torch.equal(out_image, image.flip(-1))
    assert_boxes_match_pixels(out_image, out, edge_tol=0, interior_tol=0)
    assert_flags_travel(out)
    assert out["image_id"] == "painted"


def test_zoom_out_fills_with_mean_and_shifts_boxes() -> None:
    zoom = step_of(build_train_transforms(zoom_out=(1.5, 3.0)), v2.RandomZoomOut)
    zoom.p = 1.0
    image, target = painted_sample()
    for seed in range(3):
        torch.manual_seed(seed)
        out_image, out = wrapped(zoom)(image, target)
        height, width = out_image.shape[-2:]
        assert 1.5 * HEIGHT - 1 <= height <= 3 * HEIGHT and 1.5 * WIDTH - 1 <= width <= 3 * WIDTH
        shift = out["boxes"] - target["boxes"]
        dx, dy = int(shift[0, 0]), int(shift[0, 1])
        assert_close(shift, torch.tensor([[dx, dy, dx, dy]] * len(BOXES), dtype=torch.float32), rtol=0, atol=0)
        assert torch.equal(out_image[:, dy : dy + HEIGHT, dx : dx + WIDTH], image)
        mean = torch.tensor(IMAGENET_MEAN_UINT8, dtype=torch.uint8).view(3, 1, 1)
        canvas = out_image.clone()
        canvas[:, dy : dy + HEIGHT, dx : dx + WIDTH] = mean
        assert bool((canvas == mean).all())  # everything around the original image is the mean colour
        assert_boxes_match_pixels(out_image, out, edge_tol=0, interior_tol=0)
        assert_flags_travel(out)


def test_crop_boxes_by_centre() -> None:
    # The patch is x in [10, 60], y in [20, 70].
    boxes = torch.tensor(
        [
            [0, 25, 30, 45],  # centre (15, 35) inside; clipped at x = 10
            [50, 60, 80, 90],  # centre (65, 75) outside
            [5, 30, 15, 40],  # centre (10, 35) on the left edge: not strictly inside
            [40, 50, 70, 100],  # centre (55, 75) below
            [20, 30, 40, 50],  # entirely inside
            [50, 60, 66, 74],  # centre (58, 67) inside; clipped at the right and bottom
        ],
        dtype=torch.float32,
    )
    cropped, keep = crop_boxes_by_centre(boxes, left=10, top=20, side=50)
    assert keep.tolist() == [True, False, False, False, True, True]
    expected = torch.tensor([[0, 5, 20, 25], [10, 10, 30, 30], [40, 40, 50, 50]], dtype=torch.float32)
    assert_close(cropped[keep], expected, rtol=0, atol=0)


def test_square_crop_removes_boxes_and_flags_in_step() -> None:
    crop = RandomSquareCrop((0.3, 1.0), max_attempts=1)
    sanitize = v2.SanitizeBoundingBoxes(labels_getter=per_box_tensors)
    image, target = painted_sample()
    sides = set()
    for seed in range(20):
        sample = ToTVTensors()(image, target)
        torch.manual_seed(seed)
        params = crop.make_params([sample[0], sample[1]["boxes"]])
        left, top, side = params["left"], params["top"], params["side"]
        sides.add(side)
        torch.manual_seed(seed)
        out_image, out = wrapped(crop, sanitize)(image, target)

        assert torch.equal(out_image, image[:, top : top + side, left : left + side])
        expected_boxes, keep = crop_boxes_by_centre(target["boxes"], left, top, side)
        assert out["labels"].tolist() == torch.nonzero(keep).flatten().tolist()
        assert_close(out["boxes"], expected_boxes[keep], rtol=0, atol=0)
        assert_flags_travel(out)
        assert_boxes_match_pixels(out_image, out, edge_tol=0, interior_tol=0)
    assert HEIGHT in sides  # the full-side patch
    assert all(math.floor(0.3 * HEIGHT) <= s <= HEIGHT for s in sides) and len(sides) > 2


def test_square_crop_retries_until_a_face_is_kept() -> None:
    image = torch.zeros(3, 100, 300, dtype=torch.uint8)
    target = {"boxes": torch.tensor([[245.0, 45, 255, 55]]), "ignore": torch.tensor([False])}
    sanitize = v2.SanitizeBoundingBoxes(labels_getter=per_box_tensors)

    def kept(max_attempts: int, seed: int) -> int:
        torch.manual_seed(seed)
        return len(wrapped(RandomSquareCrop(max_attempts=max_attempts), sanitize)(image, target)[1]["boxes"])

    assert [kept(30, seed) for seed in range(20)] == [1] * 20
    assert 0 in [kept(1, seed) for seed in range(20)]


def test_resize_scales_boxes() -> None:
    resize = step_of(build_train_transforms(size=96), v2.Resize)
    image, target = painted_sample()
    out_image, out = wrapped(resize)(image, target)
    assert out_image.shape == (3, 96, 96)
    scale = torch.tensor([96 / WIDTH, 96 / HEIGHT, 96 / WIDTH, 96 / HEIGHT])
    assert_close(out["boxes"], target["boxes"] * scale, rtol=0, atol=1e-5)
    assert_boxes_match_pixels(out_image, out, edge_tol=1.0, interior_tol=1)
    assert_flags_travel(out)


def test_photometric_changes_colours_only() -> None:
    photometric = step_of(build_train_transforms(), v2.RandomPhotometricDistort)
    image, target = painted_sample()
    changed = False
    for seed in range(3):
        torch.manual_seed(seed)
        out_image, out = wrapped(photometric)(image, target)
        assert out_image.shape == image.shape and out_image.dtype == torch.uint8
        assert_close(out["boxes"], target["boxes"], rtol=0, atol=0)
        assert torch.equal(out["ignore"], target["ignore"]) and torch.equal(out["labels"], target["labels"])
        changed |= not torch.equal(out_image, image)
    assert changed


def test_min_face_size_marks_ignore_after_resize() -> None:
    # 200 -> 100: every length halves. Shorter sides after resizing: 6 (kept), 5.5 and 5 (ignored);
    # the last face was already ignored and stays so.
    transform = build_train_transforms(size=100, zoom_out=None, crop_scale=None, min_face_size=6, photometric=False, flip_prob=0)
    boxes = torch.tensor([[0, 0, 12, 30], [50, 50, 61, 90], [100, 100, 160, 110], [120, 20, 190, 90]], dtype=torch.float32)
    target = {"boxes": boxes, "ignore": torch.tensor([False, False, False, True]), "image_id": "x"}
    out_image, out = transform(torch.zeros(3, 200, 200, dtype=torch.uint8), target)
    assert out_image.shape == (3, 100, 100)
    assert_close(out["boxes"], boxes / 2, rtol=0, atol=0)
    assert out["ignore"].tolist() == [False, True, True, True]
    assert target["ignore"].tolist() == [False, False, False, True]  # the input is not modified

    no_marking = build_train_transforms(size=100, zoom_out=None, crop_scale=None, min_face_size=None, photometric=False, flip_prob=0)
    assert no_marking(torch.zeros(3, 200, 200, dtype=torch.uint8), target)[1]["ignore"].tolist() == [False, False, False, True]
    assert MarkSmallFacesIgnored(10)(None, {"boxes": boxes, "ignore": torch.zeros(4, dtype=torch.bool)})[1]["ignore"].tolist() == [
        False, False, False, False,
    ]


# --- the whole pipeline ---------------------------------------------------------------------------


def assert_ignore_is_flag_or_small(target: dict[str, Any], min_face_size: float) -> None:
    boxes = target["boxes"]
    sides = torch.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    expected = [label % 2 == 1 or side < min_face_size for label, side in zip(target["labels"].tolist(), sides.tolist())]
    assert target["ignore"].tolist() == expected


def test_train_pipeline_keeps_boxes_on_their_pixels() -> None:
    transform = build_train_transforms(size=128, photometric=False, min_face_size=6)
    image, target = painted_sample()
    numbers_of_boxes = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out_image, out = transform(image, target)
        assert out_image.shape == (3, 128, 128) and out_image.dtype == torch.uint8
        assert type(out_image) is Tensor and type(out["boxes"]) is Tensor
        assert out["boxes"].dtype == torch.float32
        assert bool((out["boxes"] >= 0).all()) and bool((out["boxes"] <= 128).all())
        assert_boxes_match_pixels(out_image, out, edge_tol=1.5, interior_tol=1)
        assert_ignore_is_flag_or_small(out, min_face_size=6)
        assert out["image_id"] == "painted"
        numbers_of_boxes.add(len(out["boxes"]))
    assert len(numbers_of_boxes) > 1  # crops did remove boxes in some draws


def test_train_pipeline_with_photometric_and_pickling() -> None:
    transform = pickle.loads(pickle.dumps(build_train_transforms(size=64)))  # DataLoader workers may pickle it
    image, target = painted_sample()
    torch.manual_seed(0)
    out_image, out = transform(image, target)
    assert out_image.shape == (3, 64, 64) and out_image.dtype == torch.uint8
    assert_ignore_is_flag_or_small(out, min_face_size=6)
    torch.manual_seed(0)
    again_image, again = build_train_transforms(size=64)(image, target)
    assert torch.equal(again_image, out_image) and torch.equal(again["boxes"], out["boxes"])


def test_train_pipeline_without_faces() -> None:
    target = {"boxes": torch.zeros(0, 4), "ignore": torch.zeros(0, dtype=torch.bool), "image_id": "empty"}
    torch.manual_seed(0)
    out_image, out = build_train_transforms(size=32)(torch.zeros(3, 20, 30, dtype=torch.uint8), target)
    assert out_image.shape == (3, 32, 32)
    assert out["boxes"].shape == (0, 4) and out["ignore"].shape == (0,)


def test_eval_transforms() -> None:
    image, target = painted_sample()
    out_image, out = build_eval_transforms()(image, target)
    assert torch.equal(out_image, image)
    assert_close(out["boxes"], target["boxes"], rtol=0, atol=0)
    out_image, out = build_eval_transforms(size=80)(image, target)
    assert out_image.shape == (3, 80, 80)
    assert_close(out["boxes"], target["boxes"] * torch.tensor([0.5, 80 / 120, 0.5, 80 / 120]), rtol=0, atol=1e-5)


def test_to_tv_tensors_inputs() -> None:
    array = np.zeros((6, 8, 3), dtype=np.uint8)
    image, target = ToTVTensors()(array, {"boxes": [[1, 2, 3, 4]]})
    assert isinstance(image, tv_tensors.Image) and image.shape == (3, 6, 8)
    assert isinstance(target["boxes"], tv_tensors.BoundingBoxes) and target["boxes"].canvas_size == (6, 8)
    assert target["ignore"].tolist() == [False]
    with pytest.raises(ValueError, match=r"target\['boxes'\] must have shape \(N, 4\), got \(1, 3\)"):
        ToTVTensors()(array, {"boxes": [[1, 2, 3]]})
    with pytest.raises(ValueError, match=r"target\['ignore'\] must have shape \(1,\), got \(2,\)"):
        ToTVTensors()(array, {"boxes": [[1, 2, 3, 4]], "ignore": [True, False]})
    with pytest.raises(ValueError, match="scale_range"):
        RandomSquareCrop((0.0, 1.0))
