from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor
from torch.testing import assert_close

from srn.evaluation.tta import (
    TTAPass,
    box_voting,
    format_release_line,
    map_to_original,
    resize_like_cv2,
    resized_size,
    tta_detect,
    tta_passes,
)
from srn.evaluation.widerface import read_prediction_file, write_predictions

# --------------------------------------------------------------------------- pass lists


def test_passes_for_a_1024x768_image():
    # M / (H*W) = 2100^2 / (768*1024) = 4410000 / 786432 = 5.6076;
    # log_2.25(5.6076) = 1.7240 / 0.8109 = 2.126 -> enlarged x1.5 and x2.25; last x sqrt(5.6076) = 2.36804.
    passes = tta_passes(768, 1024)
    final = math.sqrt(4410000 / 786432)
    assert passes == [
        TTAPass((1.0,)),
        TTAPass((1.0,), flip=True),
        TTAPass((0.5,), size_filter="longer_over_30"),
        TTAPass((1.5,), size_filter="shorter_under_100"),
        TTAPass((2.25,), size_filter="shorter_under_100"),
        TTAPass((final,), size_filter="shorter_under_100"),
    ]
    assert final == pytest.approx(2.368038, abs=1e-6)
    # sizes round like cv2: 768 * 2.36804 = 1818.65 -> 1819, 1024 * 2.36804 = 2424.87 -> 2425
    sizes = [resized_size(768, 1024, p.resize) for p in passes]
    assert sizes == [(768, 1024), (768, 1024), (384, 512), (1152, 1536), (1728, 2304), (1819, 2425)]
    # max_size 1400: 1960000 / 786432 = 2.4923, log_2.25 = 1.126 -> one enlarged pass, last x1.5787
    assert [p.scale for p in tta_passes(768, 1024, max_size=1400)][3:] == [1.5, math.sqrt(1960000 / 786432)]


def test_passes_for_a_3000x3000_image():
    # 9e6 >= 4.41e6: resize to area M, ratio sqrt(4.41e6 / 9e6) = 0.7; then 0.75x and 0.5x of that.
    passes = tta_passes(3000, 3000)
    assert [(p.flip, p.size_filter) for p in passes] == [
        (False, "none"),
        (True, "none"),
        (False, "longer_over_30"),
        (False, "longer_over_30"),
    ]
    assert_close(torch.tensor([p.scale for p in passes]), torch.tensor([0.7, 0.7, 0.525, 0.35]), rtol=0, atol=1e-12)
    assert [resized_size(3000, 3000, p.resize) for p in passes] == [(2100, 2100)] * 2 + [(1575, 1575), (1050, 1050)]


# --------------------------------------------------------------------------- geometry


def test_flip_and_scale_mapping():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    # flip in a 100-px-wide image: x1' = 100 - 30 - 1 = 69, x2' = 100 - 10 - 1 = 89
    assert_close(map_to_original(boxes, 1.0, True, 100), torch.tensor([[69.0, 20.0, 89.0, 40.0]]))
    # scale 2: (x - 0.5) / 2
    assert_close(map_to_original(boxes, 2.0, False, 100), torch.tensor([[4.75, 9.75, 14.75, 19.75]]))
    # flip first, in the pass image, then scale: (69 - 0.5)/2 = 34.25, (89 - 0.5)/2 = 44.25
    assert_close(map_to_original(boxes, 2.0, True, 100), torch.tensor([[34.25, 9.75, 44.25, 19.75]]))


def test_resize_like_cv2():
    image = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(2, 4, 6)
    half = resize_like_cv2(image, 0.5)
    # exactly 0.5: every output pixel is the mean of a 2x2 block
    assert_close(half, image.reshape(2, 2, 2, 3, 2).mean(dim=(2, 4)))
    # uint8 stays uint8; the block [[0, 1], [0, 1]] averages 0.5 and rounds up like cv2
    u8 = torch.tensor([[[0, 1], [0, 1]]], dtype=torch.uint8)
    assert resize_like_cv2(u8, 0.5).dtype == torch.uint8 and resize_like_cv2(u8, 0.5).item() == 1
    assert resize_like_cv2(image, 1.3).shape == (2, 5, 8)  # round(5.2), round(7.8)


# --------------------------------------------------------------------------- box voting


def test_box_voting_merges_by_score_weighted_mean():
    # A [0 0 10 10] 0.75 heads a cluster with B [1 1 11 11] 0.5 (IoU 100/142 = 0.70) and
    # D = A at 0.25. Weights sum to 1.5: x1 = (0*0.75 + 1*0.5 + 0*0.25)/1.5 = 1/3,
    # x2 = (10*0.75 + 11*0.5 + 10*0.25)/1.5 = 15.5/1.5. C [50 50 60 60] is alone.
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10]], dtype=torch.float64)
    scores = torch.tensor([0.75, 0.5, 0.625, 0.25], dtype=torch.float64)
    merged, merged_scores = box_voting(boxes, scores)
    assert_close(merged, torch.tensor([[1 / 3, 1 / 3, 15.5 / 1.5, 15.5 / 1.5]], dtype=torch.float64))
    assert_close(merged_scores, torch.tensor([0.75], dtype=torch.float64))
    # keeping singletons adds C, in score order
    merged, merged_scores = box_voting(boxes, scores, keep_singletons=True)
    assert_close(merged[1], boxes[2])
    assert_close(merged_scores, torch.tensor([0.75, 0.625], dtype=torch.float64))


def test_box_joins_the_first_head_it_overlaps():
    # Heads T1 [0 0 10 10] 0.75 and T2 [6 0 16 10] 0.5 (IoU 55/187 = 0.29: separate). M [3 0 13 10]
    # 0.25 overlaps both at 88/154 = 0.57 and joins T1, the earlier head:
    # x1 = (0*0.75 + 3*0.25)/1 = 0.75, x2 = (10*0.75 + 13*0.25)/1 = 10.75. T2 is a singleton.
    boxes = torch.tensor([[0.0, 0, 10, 10], [6, 0, 16, 10], [3, 0, 13, 10]])
    merged, merged_scores = box_voting(boxes, torch.tensor([0.75, 0.5, 0.25]))
    assert_close(merged, torch.tensor([[0.75, 0.0, 10.75, 10.0]]))
    assert_close(merged_scores, torch.tensor([0.75]))


def test_all_singletons_give_empty_results_instead_of_a_crash():
    boxes = torch.tensor([[0.0, 0, 10, 10], [100, 100, 110, 110]])
    scores = torch.tensor([0.9, 0.8])
    merged, merged_scores = box_voting(boxes, scores)
    assert merged.shape == (0, 4) and merged_scores.shape == (0,)
    merged, merged_scores = box_voting(boxes, scores, keep_singletons=True)
    assert_close(merged, boxes)
    empty = box_voting(torch.zeros((0, 4)), torch.zeros(0))
    assert empty[0].shape == (0, 4)


def _release_voting(boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The release's loop, one cluster per iteration, as docs/design.md (Test-time augmentation) describes it."""
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    out = []
    while len(boxes):
        area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
        w = np.maximum(0, np.minimum(boxes[0, 2], boxes[:, 2]) - np.maximum(boxes[0, 0], boxes[:, 0]) + 1)
        h = np.maximum(0, np.minimum(boxes[0, 3], boxes[:, 3]) - np.maximum(boxes[0, 1], boxes[:, 1]) + 1)
        inter = w * h
        take = inter / (area[0] + area - inter) >= 0.5
        cb, cs = boxes[take], scores[take]
        boxes, scores = boxes[~take], scores[~take]
        if take.sum() > 1:
            out.append(np.r_[(cb * cs[:, None]).sum(0) / cs.sum(), cs.max()])
    return np.array(out).reshape(-1, 5)[:750]


def test_vectorised_voting_equals_the_release_loop():
    rng = np.random.default_rng(0)
    for trial in range(8):
        n = int(rng.integers(20, 300))
        corner = rng.uniform(0, 300, (n, 2))
        boxes = np.concatenate([corner, corner + rng.uniform(5, 80, (n, 2))], axis=1)
        boxes = np.concatenate([boxes, boxes + rng.normal(0, 3, boxes.shape), np.round(boxes + rng.normal(0, 2, boxes.shape))])
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
        scores = rng.uniform(0.01, 1, len(boxes))
        if trial % 2:
            scores = np.round(scores, 1) + 0.05  # many ties, none zero
        want = _release_voting(boxes, scores)
        got_boxes, got_scores = box_voting(torch.from_numpy(boxes), torch.from_numpy(scores))
        assert_close(got_boxes, torch.from_numpy(want[:, :4]), rtol=1e-12, atol=1e-9)
        assert_close(got_scores, torch.from_numpy(want[:, 4]))


# --------------------------------------------------------------------------- tta_detect


class SquareFinder:
    """A stand-in detector: the bounding box of the pixels brighter than half, score 0.9.

    Records the sizes it was called with, one list per call.
    """

    def __init__(self) -> None:
        self.calls: list[list[tuple[int, int]]] = []

    def __call__(self, images: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        self.calls.append([tuple(im.shape[-2:]) for im in images])
        out = []
        for im in images:
            bright = im[0].float() > (0.5 if im.is_floating_point() else 127.5)
            ys, xs = torch.nonzero(bright, as_tuple=True)
            if ys.numel() == 0:
                out.append((torch.zeros((0, 4)), torch.zeros(0)))
                continue
            box = torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float()[None]
            out.append((box, torch.tensor([0.9])))
        return out


def _square_image(dtype: torch.dtype = torch.float32) -> Tensor:
    image = torch.zeros((3, 64, 48), dtype=dtype)
    image[:, 20:40, 10:30] = 1 if dtype.is_floating_point else 255
    return image


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_tta_on_a_small_image(dtype: torch.dtype):
    # 64 x 48 with max_size 100: M / (H*W) = 10000 / 3072 = 3.255, log_2.25 = 1.46 -> one
    # enlarged pass (x1.5), last at sqrt(3.255) = 1.8042 -> 115.5 x 86.6 -> 115 x 87.
    finder = SquareFinder()
    boxes, scores = tta_detect(_square_image(dtype), finder, max_size=100)
    # the original and its flip share one call (2 * 3072 <= 10000 pixels)
    assert finder.calls == [[(64, 48), (64, 48)], [(32, 24)], [(96, 72)], [(115, 87)]]
    # the 0.5x box is 21 px on its longer side (not > 30): dropped. The other four agree on the
    # square [10, 20, 29, 39] up to resampling blur.
    assert boxes.shape == (1, 4) and boxes.dtype == torch.float32
    assert_close(boxes[0], torch.tensor([10.0, 20.0, 29.0, 39.0]), atol=0.5, rtol=0)
    assert_close(scores, torch.tensor([0.9]))


def test_tta_on_a_large_image_resizes_twice_and_respects_the_batch_budget():
    # 30 x 40 with max_size 20: 1200 >= 400 -> ratio sqrt(400/40/30) = 0.57735: 17.3 x 23.1 -> 17 x 23,
    # then 0.75x -> 12.75 x 17.25 -> 13 x 17, and 0.5x -> 8.5 x 11.5 -> 8 x 12 (half to even).
    finder = SquareFinder()
    tta_detect(torch.zeros((3, 30, 40)), finder, max_size=20)
    # two 17 x 23 passes (782 px) exceed the default budget of M = 400 px: separate calls
    assert finder.calls == [[(17, 23)], [(17, 23)], [(13, 17)], [(8, 12)]]
    finder = SquareFinder()
    tta_detect(torch.zeros((3, 30, 40)), finder, max_size=20, max_batch_pixels=1000)
    assert finder.calls[0] == [(17, 23), (17, 23)]


def test_tta_clips_to_the_image_and_handles_singletons():
    # Only the full-size passes see a box, [-5 -5 20 20]; its flip maps to
    # [48-20-1, -5, 48+5-1, 20] = [27, -5, 52, 20]. Two far-apart singletons.
    def detect(images: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        out = []
        for i, im in enumerate(images):
            if im.shape[-2:] == (64, 48):
                out.append((torch.tensor([[-5.0, -5.0, 20.0, 20.0]]), torch.tensor([0.9 - 0.1 * i])))
            else:
                out.append((torch.zeros((0, 4)), torch.zeros(0)))
        return out

    boxes, scores = tta_detect(torch.zeros((3, 64, 48)), detect, max_size=100)
    assert boxes.shape == (0, 4) and scores.shape == (0,)
    boxes, scores = tta_detect(torch.zeros((3, 64, 48)), detect, max_size=100, keep_singletons=True)
    assert_close(boxes, torch.tensor([[0.0, 0.0, 20.0, 20.0], [27.0, 0.0, 47.0, 20.0]]))
    assert_close(scores, torch.tensor([0.9, 0.8]))


# --------------------------------------------------------------------------- output lines


def test_format_release_line(tmp_path: Path):
    # w + 1 = 50.2 - 10.4 + 1 = 40.8 -> 41, h + 1 = 80.5 - 20.6 + 1 = 60.9 -> 61
    assert format_release_line([10.4, 20.6, 50.2, 80.5], 0.9876) == "10 21 41 61 0.988"
    # Python 3 rounds halves to even: 0.5 -> 0, 1.5 -> 2
    assert format_release_line(torch.tensor([0.5, 1.5, 10.5, 11.5]), 1.0) == "0 2 11 11 1.0"
    assert format_release_line([0.5, 1.5, 10.5, 11.5], 0.25, round_xy=False) == "0.500 1.500 11 11 0.25"
    write_predictions(
        tmp_path, {"0--Parade/x": (np.array([[10.4, 20.6, 50.2, 80.5]]), np.array([0.9876]))}, format_release_line
    )
    assert read_prediction_file(tmp_path / "0--Parade" / "x.txt").tolist() == [[10, 21, 41, 61, 0.988]]
