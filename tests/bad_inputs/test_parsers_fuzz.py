"""Property test of the training-data parsers: random bytes and truncations of real files.

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

import pytest

from srn.analysis.imbalance import read_wider_boxes
from srn.data.datasets import parse_coco_json, parse_fddb_ellipses, parse_wider_file
from srn.errors import SRNError

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
    "coco json": (parse_coco_json, coco_sample, ".json"),
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
