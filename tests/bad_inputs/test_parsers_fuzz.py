"""Property tests of the annotation parsers (``srn.data.formats``): random bytes and truncations of
real files, a byte-order mark, and count lines that only ``int()`` would take.

Every call must either succeed or raise :class:`srn.errors.SRNError` (one line naming the file);
any other exception is a bug. The truncations cut real files at random offsets, the byte strings
are random, and some cases flip random bytes of a real file, all from a fixed seed.
"""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from srn.data.formats import (
    parse_coco_json,
    parse_fddb_ellipses,
    parse_wider_file,
    read_fddb_ellipses,
    read_wider_boxes,
)
from srn.errors import AnnotationError, PredictionFormatError, SRNError
from srn.evaluation.facebox import read_facebox_detections
from srn.evaluation.fddb import read_fddb_detections
from srn.evaluation.widerface import read_prediction_file

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
CASES = 40


def coco_sample() -> bytes:
    return json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
                   {"id": 2, "file_name": "b.jpg", "width": 32, "height": 32}],
        "annotations": [{"id": 1, "image_id": 1, "bbox": [4, 5, 20, 22], "category_id": 1, "iscrowd": 0},
                        {"id": 2, "image_id": 2, "bbox": [1, 1, 8, 9], "category_id": 1, "iscrowd": 1}],
        "categories": [{"id": 1, "name": "face"}],
    }, indent=1).encode()


FDDB_DETECTIONS = b"2002/08/11/big/img_591\n2\n184.0 38.5 75.2 101.3 0.99\n10 20 30 40 0.5\n2002/07/19/big/img_423\n0\n"
WIDER_PREDICTION = b"0_Parade_marchingband_1_465\n3\n10.5 20 30 40 0.99\n1 2 3 4 0.5\n100 200 12.25 13 0.01\n"
FACEBOX_DETECTIONS = json.dumps({"1004109301": {"boxes": [[1, 2, 30, 40], [5, 6, 7, 8]], "scores": [0.9, 0.1]},
                                 "2": {"boxes": [], "scores": []}}).encode()


def real_head(path: Path, limit: int = 20000) -> bytes:
    if not path.is_file():
        pytest.skip(f"{path} is absent (the project's shared data folder)")
    with open(path, "rb") as f:
        return f.read(limit)


PARSERS: dict[str, tuple[Callable[[Path], object], Callable[[], bytes], str]] = {
    "wider official": (parse_wider_file, lambda: real_head(SHARED / "widerface/wider_face_split/wider_face_val_bbx_gt.txt"), ".txt"),
    "wider list": (parse_wider_file, lambda: real_head(SHARED / "faces/labels.txt"), ".txt"),
    "wider boxes with sizes": (read_wider_boxes, lambda: real_head(SHARED / "widerface/wider_face_train_boxes_with_sizes.txt"), ".txt"),
    "fddb ellipses": (parse_fddb_ellipses, lambda: real_head(SHARED / "fddb/FDDB-folds/FDDB-fold-01-ellipseList.txt"), ".txt"),
    "fddb ellipses, evaluation": (read_fddb_ellipses, lambda: real_head(SHARED / "fddb/FDDB-folds/FDDB-fold-01-ellipseList.txt"), ".txt"),
    "fddb detections": (read_fddb_detections, lambda: FDDB_DETECTIONS, ".txt"),
    "coco json": (parse_coco_json, coco_sample, ".json"),
    "wider predictions": (read_prediction_file, lambda: WIDER_PREDICTION, ".txt"),
    "facebox detections": (read_facebox_detections, lambda: FACEBOX_DETECTIONS, ".json"),
}


def variants(data: bytes, rng: random.Random) -> list[bytes]:
    out = [b"", data[: rng.randrange(1, max(2, len(data)))]]
    for _ in range(CASES):
        choice = rng.random()
        if choice < 0.4:  # a truncation
            out.append(data[: rng.randrange(0, len(data) + 1)])
        elif choice < 0.7:  # random bytes, sometimes text-like
            alphabet = b"0123456789 .-\n/abcxyz" if rng.random() < 0.5 else bytes(range(256))
            out.append(bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 400))))
        else:  # a few flipped bytes in the real file
            mutable = bytearray(data)
            for _ in range(rng.randrange(1, 6)):
                mutable[rng.randrange(len(mutable))] = rng.randrange(256)
            out.append(bytes(mutable))
    return out


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_parser_succeeds_or_raises_srn_error(name, tmp_path):
    parse, sample, suffix = PARSERS[name]
    rng = random.Random(f"fuzz-{name}")
    for index, data in enumerate(variants(sample(), rng)):
        path = tmp_path / f"case{index}{suffix}"
        path.write_bytes(data)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # dropped-box warnings are expected on mangled files
                parse(path)
        except SRNError as exc:
            message = str(exc)
            assert "\n" not in message and str(path) in message, (index, message)
        except Exception as exc:  # noqa: BLE001 - exactly what this test forbids
            pytest.fail(f"{name}, case {index} ({data[:60]!r}...): {type(exc).__name__}: {exc}")


def _comparable(result: object) -> object:
    """Parser results as plain values, so that two parses can be compared with ``==``."""
    if isinstance(result, np.ndarray):
        return result.tolist()
    if isinstance(result, dict):
        return {k: tuple(np.asarray(p).tolist() for p in v) if isinstance(v, tuple) else np.asarray(v).tolist()
                for k, v in result.items()}
    out = []
    for item in result:  # type: ignore[attr-defined]
        if isinstance(item, tuple):
            out.append(tuple(v.tolist() if isinstance(v, torch.Tensor) else v for v in item))
        else:
            out.append((item.image_path, item.image_size, item.num_dropped, item.boxes.tolist(), item.ignore.tolist()))
    return out


def _outcome(parse: Callable[[Path], object], path: Path) -> tuple[str, object]:
    """("ok", the result as plain values) or ("error", the message with the file named <file>)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return "ok", _comparable(parse(path))
    except SRNError as exc:
        return "error", str(exc).replace(str(path), "<file>")


# One small complete file per parser; each starts with the image name a mark would stick to.
COMPLETE = {
    "wider official": b"0--Parade/a.jpg\n2\n10 20 30 40 0 0 0 0 0 0\n5 6 7 8 2 1 0 1 0 0\n1--H/b.jpg\n0\n0 0 0 0 0 0 0 0 0 0\n",
    "wider list": b"images/a.jpg\n1\n1.5 2.25 3.5 4\n",
    "wider boxes with sizes": b"0--Parade/a.jpg 64 48\n2\n10 20 30 40\n0 0 0 0\n",
    "fddb ellipses": b"2002/08/11/big/img_591\n1\n10 5 0 50 60 1\n",
    "fddb ellipses, evaluation": b"2002/08/11/big/img_591\n1\n10 5 0 50 60 1\n",
    "fddb detections": FDDB_DETECTIONS,
    "coco json": coco_sample(),
    "wider predictions": WIDER_PREDICTION,
    "facebox detections": FACEBOX_DETECTIONS,
}


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_a_byte_order_mark_changes_nothing(name, tmp_path):
    # Windows editors start UTF-8 files with EF BB BF; it must not become part of the first name.
    parse, sample, suffix = PARSERS[name]
    data = COMPLETE[name]
    plain, marked = tmp_path / f"plain{suffix}", tmp_path / f"marked{suffix}"
    plain.write_bytes(data)
    marked.write_bytes(b"\xef\xbb\xbf" + data)
    result = _comparable(parse(plain))
    assert result and _comparable(parse(marked)) == result
    # ...and the head of a real file (cut inside a block) fails the same way with or without one.
    head = sample()
    plain.write_bytes(head)
    marked.write_bytes(b"\xef\xbb\xbf" + head)
    assert _outcome(parse, marked) == _outcome(parse, plain)


# Count lines that int() turns into a number but that no annotation file means as one.
NOT_COUNTS = ["1_0", "+1", "-0", "1.0", "1e1", "0x1", "\u0661", "\u00b2", "1 0", "1,0", "99999999999999999999"]
TEXT_FORMATS = {
    # parser, the file with {count} on line 2, the message after "<file>:2: "
    "wider": (parse_wider_file, "a.jpg\n{count}\n1 2 3 4\n", "expected a face count (an integer >= 0), got {count!r}"),
    "wider boxes": (read_wider_boxes, "a/b.jpg 64 48\n{count}\n1 2 3 4\n", "expected a face count (an integer >= 0), got {count!r}"),
    "fddb": (read_fddb_ellipses, "img_1\n{count}\n10 5 0 50 60 1\n", "expected the ellipse count of 'img_1', got {count!r}"),
    "fddb records": (parse_fddb_ellipses, "img_1\n{count}\n10 5 0 50 60 1\n", "expected the ellipse count of 'img_1', got {count!r}"),
}


@pytest.mark.parametrize("name", sorted(TEXT_FORMATS))
@pytest.mark.parametrize("count", NOT_COUNTS)
def test_count_lines_are_plain_ascii_digits(name, count, tmp_path):
    parse, text, reason = TEXT_FORMATS[name]
    path = tmp_path / "labels.txt"
    path.write_text(text.format(count=count), encoding="utf-8")
    with pytest.raises(AnnotationError) as info:
        parse(path)
    assert str(info.value) == f"{path}:2: {reason.format(count=count)}"


def test_a_plain_count_still_parses(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("a/b.jpg 64 48\n01\n1 2 3 4\n")
    ((name, width, height, boxes),) = read_wider_boxes(path)
    assert (name, width, height, boxes.tolist()) == ("a/b.jpg", 64, 48, [[1.0, 2.0, 3.0, 4.0]])


# The prediction readers: the same strict counts, with PredictionFormatError ("<file>, line 2: ...").
PREDICTION_FORMATS = {
    "wider predictions": (read_prediction_file, "img_1\n{count}\n1 2 3 4 0.5\n",
                          "expected the box count (a whole number >= 0), got {count!r}"),
    "fddb detections": (read_fddb_detections, "img_1\n{count}\n1 2 3 4 0.5\n",
                        "expected the detection count of 'img_1', got {count!r}"),
}


@pytest.mark.parametrize("name", sorted(PREDICTION_FORMATS))
@pytest.mark.parametrize("count", NOT_COUNTS)
def test_prediction_counts_are_plain_ascii_digits(name, count, tmp_path):
    parse, text, reason = PREDICTION_FORMATS[name]
    path = tmp_path / "preds.txt"
    path.write_text(text.format(count=count), encoding="utf-8")
    with pytest.raises(PredictionFormatError) as info:
        parse(path)
    assert str(info.value) == f"{path}, line 2: {reason.format(count=count)}"


@pytest.mark.parametrize("token", ["1_0", "\u0661", "0x1", "nan", "inf"])
def test_prediction_numbers_are_plain_finite_decimals(token, tmp_path):
    path = tmp_path / "preds.txt"
    path.write_text(f"img_1\n1\n1 2 {token} 4 0.5\n", encoding="utf-8")
    with pytest.raises(PredictionFormatError) as info:
        read_prediction_file(path)
    assert str(info.value).startswith(f"{path}, line 3: ")
