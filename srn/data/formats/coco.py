"""COCO-format detection JSON: the one parser.

Boxes are ``bbox = [x, y, w, h]``; ``iscrowd`` (and the non-standard ``ignore`` flag some face
exports carry) marks a box as ignored. Image sizes come from ``images[].height/width``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Sequence
from typing import Any

import torch

from srn.data.formats.common import FaceRecord, build_records, read_text, xywh_to_xyxy
from srn.errors import AnnotationError, brief, excerpt

__all__ = ["parse_coco_json"]


def parse_coco_json(
    path: str | os.PathLike[str],
    *,
    categories: Sequence[int | str] | None = None,
    crowd_as_ignore: bool = True,
    keep_empty: bool = True,
) -> list[FaceRecord]:
    """Parse a COCO-format detection JSON file (UTF-8, a byte-order mark allowed).

    Args:
        path: the JSON file.
        categories: keep only these categories, given by id or by name; ``None`` keeps all.
        crowd_as_ignore: mark crowd boxes as ignored; if False they are dropped (not counted as
            degenerate).
        keep_empty: keep images without (kept) boxes, as negatives.

    Returns:
        One record per image, in the order of ``images``.

    Raises:
        AnnotationError: naming the file (and the line of a JSON syntax error).
    """
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise AnnotationError(path, e.lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise AnnotationError(path, None, "invalid JSON: nested too deeply") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise AnnotationError(path, None, "not a COCO detection file: no 'images' list")
    for key in ("annotations", "categories"):
        if not isinstance(data.get(key, []), list):
            raise AnnotationError(path, None, f"not a COCO detection file: '{key}' is not a list")

    category_ids: set[Any] | None = None
    if categories is not None:
        by_name = {c.get("name"): c.get("id") for c in data.get("categories", []) if isinstance(c, dict)}
        category_ids = set()
        for category in categories:
            if isinstance(category, str):
                if category not in by_name:
                    raise AnnotationError(path, None, f"no category named {excerpt(category)}; known: {excerpt(sorted(map(str, by_name)), 200)}")
                category_ids.add(by_name[category])
            else:
                category_ids.add(int(category))

    images: dict[Any, tuple[str, tuple[int, int] | None]] = {}
    for index, image in enumerate(data["images"]):
        try:
            size = (int(image["height"]), int(image["width"])) if "height" in image and "width" in image else None
            images[image["id"]] = (str(image["file_name"]), size)
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise AnnotationError(path, None, f"images[{index}] is malformed ({type(e).__name__}: {brief(str(e))})") from None

    rows_per_image: dict[Any, list[tuple[list[float], bool]]] = {image_id: [] for image_id in images}
    for index, annotation in enumerate(data.get("annotations", [])):
        try:
            image_id = annotation["image_id"]
            bbox = [float(v) for v in annotation["bbox"]]
            category_id = annotation.get("category_id")
            crowd = bool(annotation.get("iscrowd", 0)) or bool(annotation.get("ignore", 0))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise AnnotationError(path, None, f"annotations[{index}] is malformed ({type(e).__name__}: {brief(str(e))})") from None
        if len(bbox) != 4:
            raise AnnotationError(path, None, f"annotations[{index}] has a bbox of {len(bbox)} numbers, expected 4")
        if not isinstance(image_id, Hashable) or image_id not in rows_per_image:
            raise AnnotationError(path, None, f"annotations[{index}] refers to unknown image_id {excerpt(image_id)}")
        if category_ids is not None and (not isinstance(category_id, Hashable) or category_id not in category_ids):
            continue
        if crowd and not crowd_as_ignore:
            continue
        rows_per_image[image_id].append((bbox, crowd))

    image_paths = [file_name for file_name, _ in images.values()]
    image_sizes = [size for _, size in images.values()]
    counts = [len(rows) for rows in rows_per_image.values()]
    flat = [row for rows in rows_per_image.values() for row in rows]
    xywh = torch.tensor([bbox for bbox, _ in flat], dtype=torch.float64).reshape(-1, 4)
    ignore = torch.tensor([crowd for _, crowd in flat], dtype=torch.bool)
    records = build_records(path, image_paths, image_sizes, counts, xywh_to_xyxy(xywh), ignore, None)
    return records if keep_empty else [r for r in records if len(r.boxes)]
