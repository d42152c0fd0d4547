"""Face detection datasets: a map-style dataset over parsed annotations, and collation.

Every dataset item is ``(image, target)``: ``image`` (Tensor[3, H, W]) ``uint8`` RGB and ``target`` a
:class:`~srn.data.target.Target` with ``boxes``, ``ignore`` and ``image_id``.

The annotations come from the parsers of :mod:`srn.data.formats`, which work without images: they
return :class:`FaceRecord` lists, which is all that anchor and class-imbalance statistics need.
Sources are mixed and repeated with :mod:`srn.data.samplers`. The parsers and the repeat helpers are
re-exported here, where earlier code imports them from.

**Degenerate boxes.** The parsers drop boxes with no width or height, and those outside an image whose
size the annotation gives. Boxes of other images are clipped once the image is decoded, and a box
left with no area is dropped too. Drops are counted (``FaceRecord.num_dropped``,
``FaceDetectionDataset.num_dropped_boxes``) and logged as a warning.

**Unreadable images.** :meth:`FaceDetectionDataset.__getitem__` returns ``None`` for an image that
cannot be decoded (or whose size contradicts its annotation), logs a warning naming the file once,
and counts it in ``num_failed_images``; :func:`collate` drops the ``None`` samples. So a bad file
costs one sample, never an epoch, and is never silently replaced by another image. A batch can
therefore come out smaller than the batch size, or empty. The counters live in the process that
loads the sample: with DataLoader workers, each worker keeps its own copy.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from torch import Tensor
from torch.utils.data import Dataset

from srn.data.formats import (
    WIDER_ATTRIBUTES,
    FaceRecord,
    ellipses_to_boxes,
    parse_coco_json,
    parse_fddb_ellipses,
    parse_wider_file,
)
from srn.data.formats.common import clip_and_filter_boxes
from srn.data.image_io import ImageReadError, read_image
from srn.data.samplers import RepeatDataset, source_sampling_weights
from srn.data.target import Sample, Target
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
