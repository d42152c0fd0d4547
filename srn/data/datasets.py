"""Face detection datasets: annotation parsers, a map-style dataset, collation and source mixing.

Every dataset item is ``(image, target)``:

- ``image`` (Tensor[3, H, W]): ``uint8`` RGB;
- ``target["boxes"]`` (Tensor[N, 4]): ``float32`` ``(x1, y1, x2, y2)`` in pixels, continuous
  coordinates (a WIDER ``x y w h`` becomes ``(x, y, x + w, y + h)``, no +1);
- ``target["ignore"]`` (Tensor[N]): ``bool``; an ignored face is neither a positive nor a negative in
  training (WIDER ``invalid`` faces, COCO crowds, faces too small after augmentation);
- ``target["image_id"]`` (str): the image path as written in the annotation file.

The parsers work without images: they return :class:`FaceRecord` lists, which is all that anchor and
class-imbalance statistics need (``wider_face_train_boxes_with_sizes.txt`` has no images here).

**Degenerate boxes.** A box with ``w <= 0`` or ``h <= 0`` is dropped. When the image size is known
(from the annotation, or once the image is decoded) boxes are clipped to the image, and a box left
with no area, being entirely outside, is dropped too. Drops are counted (``FaceRecord.num_dropped``,
``FaceDetectionDataset.num_dropped_boxes``) and logged as a warning.

**Unreadable images.** :meth:`FaceDetectionDataset.__getitem__` returns ``None`` for an image that
cannot be decoded (or whose size contradicts its annotation), logs a warning naming the file once,
and counts it in ``num_failed_images``; :func:`collate` drops the ``None`` samples. So a bad file
costs one sample, never an epoch, and is never silently replaced by another image. A batch can
therefore come out smaller than the batch size, or empty. The counters live in the process that
loads the sample: with DataLoader workers, each worker keeps its own copy.

**Mixing sources.** Datasets are plain map-style datasets of the same item type, so
``torch.utils.data.ConcatDataset`` mixes them. :class:`RepeatDataset` repeats a source by a
(fractional) factor; :func:`source_sampling_weights` gives per-sample weights for a
``WeightedRandomSampler`` so that each source is drawn with a chosen probability.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from srn.data.image_io import ImageReadError, read_image
from srn.errors import AnnotationError

__all__ = [
    "AnnotationError",
    "FaceDetectionDataset",
    "FaceRecord",
    "RepeatDataset",
    "WIDER_ATTRIBUTES",
    "clip_and_filter_boxes",
    "collate",
    "ellipses_to_boxes",
    "parse_coco_json",
    "parse_fddb_ellipses",
    "parse_wider_file",
    "source_sampling_weights",
]

logger = logging.getLogger(__name__)

Target = dict[str, Any]
Sample = tuple[Tensor, Target]

# The six attribute columns of WIDER FACE's official annotation files, after "x y w h".
WIDER_ATTRIBUTES: tuple[str, ...] = ("blur", "expression", "illumination", "invalid", "occlusion", "pose")
_WIDER_INVALID = WIDER_ATTRIBUTES.index("invalid")


@dataclass(frozen=True, eq=False)  # eq on tensors would be ambiguous
class FaceRecord:
    """The annotation of one image, usable without the image.

    Attributes:
        image_path (str): the path as written in the annotation file (relative to an image root).
        boxes (Tensor[N, 4]): ``float32`` ``(x1, y1, x2, y2)`` pixels, degenerate boxes already dropped.
        ignore (Tensor[N]): ``bool``, faces that are neither positive nor negative.
        image_size (tuple[int, int] | None): ``(height, width)`` when the annotation states it.
        num_dropped (int): boxes of this image dropped as degenerate while parsing.
        attributes (Tensor[N, 6] | None): ``int64`` WIDER attribute columns (see ``WIDER_ATTRIBUTES``),
            for the official annotation format only.
    """

    image_path: str
    boxes: Tensor
    ignore: Tensor
    image_size: tuple[int, int] | None = None
    num_dropped: int = 0
    attributes: Tensor | None = None

    @property
    def image_id(self) -> str:
        return self.image_path


def clip_and_filter_boxes(boxes: Tensor, image_size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """Clip boxes to the image and find the degenerate ones.

    Args:
        boxes (Tensor[N, 4]): ``(x1, y1, x2, y2)``.
        image_size: ``(height, width)``, or ``None`` when unknown (then nothing is clipped).

    Returns:
        boxes (Tensor[N, 4]): clipped to ``[0, width] x [0, height]`` when the size is known.
        keep (Tensor[N]): ``bool``, False for a box with no width or height (after clipping), or with
            a non-finite coordinate.
    """
    if image_size is not None:
        height, width = image_size
        boxes = torch.stack(
            (
                boxes[:, 0].clamp(0, width),
                boxes[:, 1].clamp(0, height),
                boxes[:, 2].clamp(0, width),
                boxes[:, 3].clamp(0, height),
            ),
            dim=1,
        )
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & torch.isfinite(boxes).all(dim=1)
    return boxes, keep


def ellipses_to_boxes(ellipses: Tensor) -> Tensor:
    """Axis-aligned bounding boxes of rotated ellipses, as FDDB annotates faces.

    An FDDB ellipse has its major radius ``a`` along the direction ``angle`` (radians) and its minor
    radius ``b`` across it, so its half-extents are ``sqrt((a cos t)^2 + (b sin t)^2)`` in x and
    ``sqrt((a sin t)^2 + (b cos t)^2)`` in y.

    Args:
        ellipses (Tensor[N, 5]): ``(major_radius, minor_radius, angle, center_x, center_y)``.

    Returns:
        boxes (Tensor[N, 4]): ``(x1, y1, x2, y2)``, same dtype.
    """
    a, b, angle, cx, cy = ellipses.unbind(dim=1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    half_w = torch.sqrt((a * cos) ** 2 + (b * sin) ** 2)
    half_h = torch.sqrt((a * sin) ** 2 + (b * cos) ** 2)
    return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=1)


def parse_wider_file(path: str | os.PathLike[str], *, ignore_invalid: bool = True) -> list[FaceRecord]:
    """Parse a WIDER FACE style annotation file.

    Per image: a line ``<path>`` or ``<path> <width> <height>``, a line with the face count, then one
    line per face, either ``x y w h`` (the list format of ``labels.txt`` files) or
    ``x y w h blur expression illumination invalid occlusion pose`` (the official format of
    ``wider_face_{train,val}_bbx_gt.txt``). Blank lines and ``#`` comment lines are skipped.

    The official files write an image with no faces as a count of 0 followed by one all-zero line;
    that line is consumed and gives no face.

    Args:
        path: the annotation file.
        ignore_invalid: mark faces whose ``invalid`` attribute is 1 as ignored.

    Returns:
        One record per image, in file order.

    Raises:
        AnnotationError: naming the file and line of the first malformed line.
    """
    lines = _significant_lines(path)
    image_paths: list[str] = []
    image_sizes: list[tuple[int, int] | None] = []
    counts: list[int] = []
    rows: list[list[float]] = []
    num_columns = 0
    i = 0
    while i < len(lines):
        line_number, text = lines[i]
        image_path, image_size = _parse_image_line(path, line_number, text)
        i += 1
        if i >= len(lines):
            raise AnnotationError(path, line_number, f"image {image_path!r} has no face count line after it")
        count = _parse_count(path, *lines[i])
        i += 1
        if count == 0 and i < len(lines) and _is_zero_row(lines[i][1]):
            i += 1  # the official files' placeholder row of an image without faces
        for k in range(count):
            if i >= len(lines):
                raise AnnotationError(path, lines[-1][0], f"image {image_path!r} announces {count} faces, the file ends after {k}")
            row_number, row_text = lines[i]
            row = _parse_numbers(row_text)
            if row is None or len(row) not in (4, 4 + len(WIDER_ATTRIBUTES)):
                raise AnnotationError(path, row_number, f"expected 'x y w h' or 'x y w h' + 6 attributes, got {row_text.strip()!r}")
            if num_columns and len(row) != num_columns:
                raise AnnotationError(path, row_number, f"{len(row)} numbers where the file's first face line has {num_columns}")
            num_columns = len(row)
            rows.append(row)
            i += 1
        image_paths.append(image_path)
        image_sizes.append(image_size)
        counts.append(count)

    values = torch.tensor(rows, dtype=torch.float64).reshape(-1, num_columns or 4)
    attributes = values[:, 4:].to(torch.int64) if values.shape[1] > 4 else None
    ignore = torch.zeros(len(values), dtype=torch.bool)
    if ignore_invalid and attributes is not None:
        ignore = attributes[:, _WIDER_INVALID] == 1
    return _build_records(path, image_paths, image_sizes, counts, _xywh_to_xyxy(values[:, :4]), ignore, attributes)


def parse_fddb_ellipses(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *, image_ext: str = ".jpg"
) -> list[FaceRecord]:
    """Parse FDDB ``FDDB-fold-XX-ellipseList.txt`` files into axis-aligned boxes.

    Per image: its name (without extension), the ellipse count, then one line per face,
    ``major_radius minor_radius angle center_x center_y 1``. Each ellipse becomes its bounding box
    (:func:`ellipses_to_boxes`). Image sizes are not in the file, so clipping waits until the image
    is decoded.

    Args:
        paths: one ellipse-list file or several (for example the ten folds).
        image_ext: appended to each name to form ``FaceRecord.image_path``.

    Returns:
        One record per image, in file order.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    records: list[FaceRecord] = []
    for path in paths:
        lines = _significant_lines(path)
        image_paths: list[str] = []
        counts: list[int] = []
        rows: list[list[float]] = []
        i = 0
        while i < len(lines):
            line_number, name = lines[i][0], lines[i][1].strip()
            if _parse_numbers(name) is not None:
                raise AnnotationError(path, line_number, f"expected an image name, got numbers {name!r} (is a face count above wrong?)")
            i += 1
            if i >= len(lines):
                raise AnnotationError(path, line_number, f"image {name!r} has no face count line after it")
            count = _parse_count(path, *lines[i])
            i += 1
            for k in range(count):
                if i >= len(lines):
                    raise AnnotationError(path, lines[-1][0], f"image {name!r} announces {count} faces, the file ends after {k}")
                row_number, row_text = lines[i]
                row = _parse_numbers(row_text)
                if row is None or len(row) not in (5, 6):
                    raise AnnotationError(path, row_number, f"expected 'major minor angle cx cy 1', got {row_text.strip()!r}")
                rows.append(row[:5])
                i += 1
            image_paths.append(name + image_ext)
            counts.append(count)
        boxes = ellipses_to_boxes(torch.tensor(rows, dtype=torch.float64).reshape(-1, 5))
        ignore = torch.zeros(len(boxes), dtype=torch.bool)
        records.extend(_build_records(path, image_paths, [None] * len(image_paths), counts, boxes, ignore, None))
    return records


def parse_coco_json(
    path: str | os.PathLike[str],
    *,
    categories: Sequence[int | str] | None = None,
    crowd_as_ignore: bool = True,
    keep_empty: bool = True,
) -> list[FaceRecord]:
    """Parse a COCO-format detection JSON file.

    Boxes are ``bbox = [x, y, w, h]``; ``iscrowd`` (and the non-standard ``ignore`` flag some face
    exports carry) marks a box as ignored. Image sizes come from ``images[].height/width``.

    Args:
        path: the JSON file.
        categories: keep only these categories, given by id or by name; ``None`` keeps all.
        crowd_as_ignore: mark crowd boxes as ignored; if False they are dropped (not counted as
            degenerate).
        keep_empty: keep images without (kept) boxes, as negatives.

    Returns:
        One record per image, in the order of ``images``.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise AnnotationError(path, e.lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
    except UnicodeDecodeError:
        raise AnnotationError(path, None, "not a JSON text file (it is not UTF-8)") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise AnnotationError(path, None, "not a COCO detection file: no 'images' list")

    category_ids: set[int] | None = None
    if categories is not None:
        by_name = {c.get("name"): c.get("id") for c in data.get("categories", [])}
        category_ids = set()
        for category in categories:
            if isinstance(category, str):
                if category not in by_name:
                    raise AnnotationError(path, None, f"no category named {category!r}; known: {sorted(map(str, by_name))}")
                category_ids.add(by_name[category])
            else:
                category_ids.add(int(category))

    images: dict[Any, tuple[str, tuple[int, int] | None]] = {}
    for index, image in enumerate(data["images"]):
        try:
            size = (int(image["height"]), int(image["width"])) if "height" in image and "width" in image else None
            images[image["id"]] = (str(image["file_name"]), size)
        except (KeyError, TypeError, ValueError) as e:
            raise AnnotationError(path, None, f"images[{index}] is malformed ({type(e).__name__}: {e})") from None

    rows_per_image: dict[Any, list[tuple[list[float], bool]]] = {image_id: [] for image_id in images}
    for index, annotation in enumerate(data.get("annotations", [])):
        try:
            image_id = annotation["image_id"]
            bbox = [float(v) for v in annotation["bbox"]]
            category_id = annotation.get("category_id")
            crowd = bool(annotation.get("iscrowd", 0)) or bool(annotation.get("ignore", 0))
        except (KeyError, TypeError, ValueError) as e:
            raise AnnotationError(path, None, f"annotations[{index}] is malformed ({type(e).__name__}: {e})") from None
        if len(bbox) != 4:
            raise AnnotationError(path, None, f"annotations[{index}] has a bbox of {len(bbox)} numbers, expected 4")
        if image_id not in rows_per_image:
            raise AnnotationError(path, None, f"annotations[{index}] refers to unknown image_id {image_id!r}")
        if category_ids is not None and category_id not in category_ids:
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
    records = _build_records(path, image_paths, image_sizes, counts, _xywh_to_xyxy(xywh), ignore, None)
    return records if keep_empty else [r for r in records if len(r.boxes)]


class FaceDetectionDataset(Dataset):
    """Images and face boxes from a list of :class:`FaceRecord`.

    Items are ``(image uint8 (3, H, W), target)`` (see the module docstring), after ``transforms``,
    or ``None`` when the image cannot be used; batch them with :func:`collate`.

    Args:
        records: the annotations, for example from :func:`parse_wider_file`.
        image_root: ``FaceRecord.image_path`` is relative to this folder.
        transforms: ``(image, target) -> (image, target)``, e.g. from
            ``srn.data.transforms.build_train_transforms``.

    Attributes:
        num_dropped_boxes (int): degenerate boxes dropped, while parsing and (for images whose size
            the annotation does not give) when their images were loaded.
        num_failed_images (int): loads that failed in this process.
    """

    def __init__(
        self,
        records: Sequence[FaceRecord],
        image_root: str | os.PathLike[str],
        transforms: Callable[[Tensor, Target], tuple[Tensor, Target]] | None = None,
    ) -> None:
        self.records = list(records)
        self.image_root = Path(image_root)
        self.transforms = transforms
        self.num_dropped_boxes = sum(r.num_dropped for r in self.records)
        self.num_failed_images = 0
        self._reported_failures: set[int] = set()
        self._checked_on_load: set[int] = set()

    @classmethod
    def from_wider(
        cls,
        annotation_file: str | os.PathLike[str],
        image_root: str | os.PathLike[str] | None = None,
        *,
        ignore_invalid: bool = True,
        transforms: Callable[[Tensor, Target], tuple[Tensor, Target]] | None = None,
    ) -> FaceDetectionDataset:
        """A WIDER-style annotation file (official or list format); ``image_root`` defaults to the
        annotation file's folder (right for ``labels.txt`` lists; the official files need
        ``WIDER_<split>/images``)."""
        root = Path(annotation_file).parent if image_root is None else image_root
        return cls(parse_wider_file(annotation_file, ignore_invalid=ignore_invalid), root, transforms)

    @classmethod
    def from_fddb(
        cls,
        ellipse_files: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        image_root: str | os.PathLike[str],
        *,
        image_ext: str = ".jpg",
        transforms: Callable[[Tensor, Target], tuple[Tensor, Target]] | None = None,
    ) -> FaceDetectionDataset:
        """FDDB ellipse lists; ``image_root`` holds ``2002/08/11/big/img_591.jpg`` and so on."""
        return cls(parse_fddb_ellipses(ellipse_files, image_ext=image_ext), image_root, transforms)

    @classmethod
    def from_coco(
        cls,
        json_file: str | os.PathLike[str],
        image_root: str | os.PathLike[str],
        *,
        categories: Sequence[int | str] | None = None,
        crowd_as_ignore: bool = True,
        keep_empty: bool = True,
        transforms: Callable[[Tensor, Target], tuple[Tensor, Target]] | None = None,
    ) -> FaceDetectionDataset:
        """A COCO-format JSON file."""
        records = parse_coco_json(json_file, categories=categories, crowd_as_ignore=crowd_as_ignore, keep_empty=keep_empty)
        return cls(records, image_root, transforms)

    def __len__(self) -> int:
        return len(self.records)

    def load_target(self, index: int) -> Target:
        """The target of item ``index`` as parsed, without loading the image or clipping to it."""
        record = self.records[index]
        return {"boxes": record.boxes.clone(), "ignore": record.ignore.clone(), "image_id": record.image_id}

    def __getitem__(self, index: int) -> Sample | None:
        record = self.records[index]
        path = self.image_root / record.image_path
        try:
            image = read_image(path)
        except ImageReadError as e:
            return self._fail(index, str(e))
        height, width = image.shape[-2:]
        if record.image_size is not None and record.image_size != (height, width):
            return self._fail(
                index,
                f"{path}: the annotation says {record.image_size[1]}x{record.image_size[0]} (WxH), "
                f"the image is {width}x{height}; its boxes would be in the wrong frame",
            )

        boxes, keep = clip_and_filter_boxes(record.boxes, (height, width))
        dropped = int((~keep).sum())
        if dropped and index not in self._checked_on_load:
            self.num_dropped_boxes += dropped
            logger.warning("%s: dropped %d box(es) lying outside the %dx%d image", path, dropped, width, height)
        self._checked_on_load.add(index)
        target: Target = {"boxes": boxes[keep], "ignore": record.ignore[keep], "image_id": record.image_id}
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def _fail(self, index: int, message: str) -> None:
        self.num_failed_images += 1
        if index not in self._reported_failures:
            self._reported_failures.add(index)
            logger.warning("skipping an unusable image: %s", message)
        return None


def collate(batch: Sequence[Sample | None]) -> tuple[list[Tensor], list[Target]]:
    """Collate detection samples into lists, dropping failed (``None``) samples.

    Images keep their own sizes (lists, not a stacked tensor), so this also serves evaluation.

    Returns:
        images (list[Tensor[3, H, W]]) and targets (list[dict]), possibly empty.
    """
    images: list[Tensor] = []
    targets: list[Target] = []
    for sample in batch:
        if sample is None:
            continue
        image, target = sample
        images.append(image)
        targets.append(target)
    return images, targets


class RepeatDataset(Dataset):
    """A dataset repeated ``factor`` times, where ``factor`` may be fractional.

    ``factor = 2.5`` gives every item twice plus a fixed random half of the items once more (drawn
    once from ``seed``, so epochs and workers agree); ``factor = 0.3`` gives a fixed 30% subset. Use it
    inside a ``ConcatDataset`` to over- or under-sample a source.
    """

    def __init__(self, dataset: Dataset, factor: float, seed: int = 0) -> None:
        if not factor > 0 or not math.isfinite(factor):
            raise ValueError(f"RepeatDataset: factor must be a positive finite number, got {factor}")
        self.dataset = dataset
        self.factor = factor
        n = len(dataset)  # type: ignore[arg-type]
        whole, fraction = int(factor), factor - int(factor)
        extra = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: round(fraction * n)]
        self.indices = torch.cat((torch.arange(n).repeat(whole), extra.sort().values))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[int(self.indices[index])]


def source_sampling_weights(datasets: Sequence[Sized], weights: Sequence[float]) -> Tensor:
    """Per-sample weights that draw source ``k`` with probability ``weights[k] / sum(weights)``.

    Pass them, with ``ConcatDataset(datasets)``, to
    ``torch.utils.data.WeightedRandomSampler(w, num_samples=...)``. Within a source, samples are
    equally likely.

    Returns:
        weights (Tensor[sum of len(datasets)]): ``float64``, summing to 1.
    """
    if len(datasets) != len(weights):
        raise ValueError(f"source_sampling_weights: {len(datasets)} datasets but {len(weights)} weights")
    if any(not (w >= 0 and math.isfinite(w)) for w in weights) or sum(weights) <= 0:
        raise ValueError(f"source_sampling_weights: weights must be finite, >= 0 and not all 0, got {list(weights)}")
    total = float(sum(weights))
    parts = []
    for dataset, weight in zip(datasets, weights):
        n = len(dataset)
        if n == 0 and weight > 0:
            raise ValueError("source_sampling_weights: an empty dataset cannot have a positive weight")
        parts.append(torch.full((n,), weight / total / max(n, 1), dtype=torch.float64))
    return torch.cat(parts)


def _significant_lines(path: str | os.PathLike[str]) -> list[tuple[int, str]]:
    """(1-based line number, text) of the lines that are not blank and not ``#`` comments."""
    lines = []
    with open(path, encoding="utf-8") as f:
        try:
            for n, line in enumerate(f, start=1):
                if line.strip() and not line.lstrip().startswith("#"):
                    lines.append((n, line))
        except UnicodeDecodeError:
            raise AnnotationError(path, None, "not a text file (it is not UTF-8)") from None
    return lines


def _parse_numbers(text: str) -> list[float] | None:
    try:
        return list(map(float, text.split()))
    except ValueError:
        return None


def _is_zero_row(text: str) -> bool:
    numbers = _parse_numbers(text)
    return bool(numbers) and len(numbers) >= 4 and all(v == 0 for v in numbers)


def _parse_count(path: str | os.PathLike[str], line_number: int, text: str) -> int:
    token = text.strip()
    if not token.isdigit():
        raise AnnotationError(path, line_number, f"expected a face count (an integer >= 0), got {token!r}")
    return int(token)


def _parse_image_line(path: str | os.PathLike[str], line_number: int, text: str) -> tuple[str, tuple[int, int] | None]:
    text = text.strip()
    if _parse_numbers(text) is not None:
        # A face or count line where an image path belongs: the previous count is wrong.
        raise AnnotationError(path, line_number, f"expected an image path, got numbers {text!r} (is a face count above wrong?)")
    parts = text.rsplit(maxsplit=2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return parts[0], (int(parts[2]), int(parts[1]))  # the file says "<w> <h>"; we keep (h, w)
    return text, None


def _xywh_to_xyxy(xywh: Tensor) -> Tensor:
    # (N, 4) x y w h -> (N, 4) x1 y1 x2 y2
    return torch.cat((xywh[:, :2], xywh[:, :2] + xywh[:, 2:4]), dim=1)


def _build_records(
    path: str | os.PathLike[str],
    image_paths: Sequence[str],
    image_sizes: Sequence[tuple[int, int] | None],
    counts: Sequence[int],
    boxes: Tensor,
    ignore: Tensor,
    attributes: Tensor | None,
) -> list[FaceRecord]:
    """Clip and filter the boxes of a whole file at once, then split them into per-image records.

    Args:
        boxes (Tensor[R, 4]): all rows of the file, image after image (``counts`` rows each).
        ignore (Tensor[R]): ``bool``.
        attributes (Tensor[R, 6] | None): WIDER attribute columns.
    """
    counts_t = torch.tensor(counts, dtype=torch.int64)
    # Per-row clip bounds; an image of unknown size is not clipped, only checked for positive w, h.
    low = torch.tensor([0.0 if s is not None else -math.inf for s in image_sizes], dtype=torch.float64)
    width = torch.tensor([s[1] if s is not None else math.inf for s in image_sizes], dtype=torch.float64)
    height = torch.tensor([s[0] if s is not None else math.inf for s in image_sizes], dtype=torch.float64)
    low, width, height = (t.repeat_interleave(counts_t) for t in (low, width, height))
    boxes = torch.stack(
        (
            torch.maximum(boxes[:, 0], low).minimum(width),
            torch.maximum(boxes[:, 1], low).minimum(height),
            torch.maximum(boxes[:, 2], low).minimum(width),
            torch.maximum(boxes[:, 3], low).minimum(height),
        ),
        dim=1,
    )
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & torch.isfinite(boxes).all(dim=1)

    image_index = torch.arange(len(counts)).repeat_interleave(counts_t)
    kept_counts = torch.zeros(len(counts), dtype=torch.int64).index_add_(0, image_index, keep.to(torch.int64))
    dropped_counts = (counts_t - kept_counts).tolist()
    sizes = kept_counts.tolist()
    # clone(): each record owns its rows, so pickling or saving one does not drag the whole file along
    boxes_per_image = [b.clone() for b in boxes[keep].to(torch.float32).split(sizes)]
    ignore_per_image = [g.clone() for g in ignore[keep].split(sizes)]
    attributes_per_image = [a.clone() for a in attributes[keep].split(sizes)] if attributes is not None else None

    records = [
        FaceRecord(
            image_path=image_paths[n],
            boxes=boxes_per_image[n],
            ignore=ignore_per_image[n],
            image_size=image_sizes[n],
            num_dropped=dropped_counts[n],
            attributes=None if attributes_per_image is None else attributes_per_image[n],
        )
        for n in range(len(image_paths))
    ]
    _warn_dropped(path, records)
    return records


def _warn_dropped(path: str | os.PathLike[str], records: Sequence[FaceRecord]) -> None:
    dropped = sum(r.num_dropped for r in records)
    if dropped:
        images = sum(1 for r in records if r.num_dropped)
        logger.warning(
            "%s: dropped %d degenerate box(es) in %d image(s) (width or height <= 0, or outside the image)",
            os.fspath(path),
            dropped,
            images,
        )
