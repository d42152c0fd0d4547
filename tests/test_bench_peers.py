"""The pure parts of benchmarks/bench_peers.py and benchmarks/peer_worker.py (no peer venv needed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.scripts import load_script

bench = load_script("benchmarks/bench_peers.py")
worker = load_script("benchmarks/peer_worker.py")


def test_box_format_round_trip():
    xyxy = np.array([[10.0, 20.0, 30.0, 60.0], [0.5, 1.5, 2.0, 4.0]])
    xywh = bench.xyxy_to_xywh(xyxy)
    np.testing.assert_array_equal(xywh, [[10.0, 20.0, 20.0, 40.0], [0.5, 1.5, 1.5, 2.5]])
    np.testing.assert_array_equal(worker.xywh_to_xyxy(xywh), xyxy)
    assert bench.xyxy_to_xywh(np.zeros((0, 4))).shape == (0, 4)
    # yuface hands out int16 x y w h
    np.testing.assert_array_equal(worker.xywh_to_xyxy(np.array([[3, 4, 5, 6]], np.int16)), [[3.0, 4.0, 8.0, 10.0]])


def test_wider_prediction_maps_back_to_original_pixels():
    # a 1024-wide packed image of a 2048-wide original: everything doubles
    out = bench.heldout.wider_prediction(np.array([[10.0, 20.0, 30.0, 60.0]]), np.array([0.75]), scale=2048 / 1024)
    np.testing.assert_array_equal(out, [[20.0, 40.0, 40.0, 80.0, 0.75]])
    assert bench.heldout.wider_prediction(np.zeros((0, 4)), np.zeros(0), 2.0).shape == (0, 5)


def _report(crowd_ap: float, tiny_ap: float, hard: float) -> dict:
    def bins(all_ap, tiny):
        return {"all": {"faces": 10, "ap": all_ap, "recall": {"0.3": 0.5, "0.2": 0.6}},
                "<16": {"faces": 4, "ap": tiny, "recall": {"0.3": 0.25, "0.2": 0.5}},
                "16-32": {"faces": 0, "ap": math.nan, "recall": {"0.3": math.nan, "0.2": math.nan}}, "images": 3}
    return {"crowd": bins(crowd_ap, tiny_ap), "portraits": bins(0.8, 0.1),
            "wider": {**bins(0.5, 0.2), "official": {"easy": 0.7, "medium": 0.6, "hard": hard}}}


def test_shipping_rule():
    reference = _report(0.60, 0.30, 0.50)
    assert bench.heldout.verdict(_report(0.62, 0.30, 0.495), reference) == (True, [])
    # a small-face regression in the crowd split blocks it although the crowd AP gains
    assert bench.heldout.verdict(_report(0.65, 0.28, 0.50), reference) == (False, ["crowd <16 ap: 0.3000 -> 0.2800"])
    # no gain on crowds
    ships, reasons = bench.heldout.verdict(_report(0.60, 0.30, 0.50), reference)
    assert not ships and reasons == ["crowd all ap does not gain: 0.6000 -> 0.6000"]
    # the official WIDER Hard counts too
    assert bench.heldout.verdict(_report(0.62, 0.30, 0.48), reference) == (False, ["wider hard: 0.5000 -> 0.4800"])


def test_latency_summary():
    summary = bench.latency_summary([0.001, 0.002, 0.003, 0.010])
    assert summary == {"median_ms": 2.5, "mean_ms": 4.0, "p10_ms": pytest.approx(1.3), "p90_ms": pytest.approx(7.9), "images": 4}
    assert math.isnan(bench.latency_summary([])["median_ms"])


def _row(**overrides):
    row = {
        "name": "Peer",
        "runtime": "onnxruntime",
        "input_policy": "native",
        "wider_ap": {"easy": 0.9, "medium": 0.85, "hard": 0.51234},
        "photo_ap": 0.7,
        "latency": {"median_ms": 12.345, "mean_ms": 13.0, "p90_ms": 15.0, "images": 3},
        "latency_thresh": 0.5,
    }
    row.update(overrides)
    return row


def test_format_table():
    table = bench.format_table([_row(), _row(name="SRN x", runtime="pytorch", latency_thresh=0.02)])
    assert table == (
        "| detector | runtime | input size policy | WIDER Easy | WIDER Medium | WIDER Hard | photo AP@0.5 | crowd AP@0.5 | crowd <16 / 16-32 AP | median ms/img | latency score thr |\n"
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        "| Peer | onnxruntime | native | 0.9000 | 0.8500 | 0.5123 | 0.7000 | - | - | 12.3 | 0.5 |\n"
        "| SRN x | pytorch | native | 0.9000 | 0.8500 | 0.5123 | 0.7000 | - | - | 12.3 | 0.02 |\n"
    )


def test_write_json(tmp_path):
    report = {"a": np.float32(0.5), "b": np.arange(3), "c": Path("x/y"), "d": [np.int64(2)]}
    path = bench.write_json(tmp_path / "sub" / "r.json", report)
    assert path.read_text() == '{\n "a": 0.5,\n "b": [\n  0,\n  1,\n  2\n ],\n "c": "x/y",\n "d": [\n  2\n ]\n}\n'
    assert json.loads(path.read_text()) == {"a": 0.5, "b": [0, 1, 2], "c": "x/y", "d": [2]}
    assert not list((tmp_path / "sub").glob(".*tmp"))


def test_pareto_front():
    # (latency, AP): the second is slower and worse than the first; the third is slower but better
    assert bench.pareto_front([(10.0, 0.5), (20.0, 0.4), (30.0, 0.8), (5.0, 0.1)]) == [3, 0, 2]


def test_nms():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10]], dtype=np.float64)
    scores = np.array([0.9, 0.95, 0.5, 0.9])
    # box 1 (IoU 9/11 with box 0 and 3) wins; box 0 and its duplicate go, box 2 stays
    np.testing.assert_array_equal(worker.nms(boxes, scores, 0.4), [1, 2])
    # at an IoU threshold above 9/11 only the exact duplicate (IoU 1) of box 0 goes
    np.testing.assert_array_equal(worker.nms(boxes, scores, 0.85), [1, 0, 2])
    assert worker.nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
    # a limit stops once that many are kept: the same first indices
    np.testing.assert_array_equal(worker.nms(boxes, scores, 0.85, limit=2), [1, 0])


def test_centerface_decode():
    assert worker.centerface_input_size(366, 512) == (384, 512)
    heatmap = np.zeros((1, 1, 2, 3), np.float32)
    heatmap[0, 0, 1, 2] = 0.8
    heatmap[0, 0, 0, 0] = 0.01  # under the threshold
    scale = np.zeros((1, 2, 2, 3), np.float32)
    scale[0, :, 1, 2] = math.log(2.0)  # 8 x 8 pixels
    offset = np.zeros((1, 2, 2, 3), np.float32)
    offset[0, 1, 1, 2] = 0.25  # a quarter cell to the right
    boxes, scores = worker.centerface_decode(heatmap, scale, offset, (8, 12), 0.02)
    # centre x = (2 + 0.25 + 0.5) * 4 = 11, y = (1 + 0.5) * 4 = 6; clipped to the 12 x 8 input
    np.testing.assert_allclose(boxes, [[7.0, 2.0, 12.0, 8.0]])
    np.testing.assert_allclose(scores, [0.8])


def test_retinaface_anchors_and_decode():
    anchors = worker.retinaface_anchors(16, 24)
    # ceil(16/8) * ceil(24/8) = 6 cells at stride 8, 1 * 2 at 16, 1 * 1 at 32; two sizes each
    assert anchors.shape == ((6 + 2 + 1) * 2, 4)
    np.testing.assert_array_equal(anchors[:4], [[4, 4, 16, 16], [4, 4, 32, 32], [12, 4, 16, 16], [12, 4, 32, 32]])
    np.testing.assert_array_equal(anchors[12], [8, 8, 64, 64])
    np.testing.assert_array_equal(anchors[-1], [16, 16, 512, 512])
    deltas = np.zeros((2, 4), np.float32)
    deltas[1] = [1.0, 0.0, 0.0, 0.0]  # shift the centre by 0.1 anchor widths: 4 + 3.2
    np.testing.assert_allclose(worker.retinaface_decode(deltas, anchors[:2]), [[-4, -4, 12, 12], [-8.8, -12, 23.2, 20]])


def test_pack_unpack():
    results = [(np.array([[1, 2, 3, 4]]), np.array([0.5])), (np.zeros((0, 4)), np.zeros(0)), (np.ones((2, 4)), np.array([0.2, 0.1]))]
    arrays = worker.pack(results)
    assert arrays["counts"].tolist() == [1, 0, 2]
    back = worker.unpack(arrays)
    assert len(back) == 3
    for (b, s), (b2, s2) in zip(results, back):
        np.testing.assert_array_equal(b, b2)
        np.testing.assert_array_equal(s, s2)


def test_letterbox_geometry():
    # ultralytics: centred, aspect kept
    assert worker.letterbox_geometry(480, 640, 640, centre=True) == (1.0, 480, 640, 80, 0)
    assert worker.letterbox_geometry(1000, 500, 640, centre=True) == (0.64, 640, 320, 0, 160)
    # insightface's SCRFD: top-left, sizes truncated
    assert worker.letterbox_geometry(480, 640, 640, centre=False) == (1.0, 480, 640, 0, 0)
    assert worker.letterbox_geometry(1000, 500, 640, centre=False) == (0.64, 640, 320, 0, 0)


def test_scrfd_anchors_and_decoding():
    centres = worker.scrfd_anchor_centres(32, 16)
    np.testing.assert_array_equal(centres, [[0, 0], [0, 0], [16, 0], [16, 0], [0, 16], [0, 16], [16, 16], [16, 16]])
    boxes, scores = worker.scrfd_decode(
        np.array([[0.4], [0.6]]), np.array([[1.0, 1.0, 1.0, 2.0], [1.0, 0.5, 2.0, 1.0]]), np.array([[16.0, 16.0], [32.0, 16.0]]), stride=8, score_thresh=0.5
    )
    np.testing.assert_array_equal(boxes, [[24.0, 12.0, 48.0, 24.0]])
    np.testing.assert_array_equal(scores, [0.6])
