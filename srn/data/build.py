"""Build training datasets from :class:`srn.config.DataConfig`."""

from __future__ import annotations

import glob
from collections.abc import Callable
from pathlib import Path

from torch.utils.data import ConcatDataset, Dataset

from srn.config import ConfigError, DataConfig, DatasetSpec
from srn.data.datasets import FaceDetectionDataset, RepeatDataset
from srn.data.transforms import build_train_transforms


def train_transforms(config: DataConfig) -> Callable:
    return build_train_transforms(
        size=config.size,
        zoom_out=tuple(config.zoom_out) or None,
        crop_scale=tuple(config.crop_scale) or None,
        min_face_size=config.min_face_size or None,
        photometric=config.photometric,
        flip_prob=config.flip_prob,
        zoom_out_prob=config.zoom_out_prob,
    )


def build_source(spec: DatasetSpec, transforms: Callable | None, base_dir: Path | None = None) -> FaceDetectionDataset:
    """One source; relative paths are taken from ``base_dir`` (the config file's folder) when given."""

    def resolve(path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() or base_dir is None or p.exists() else base_dir / p

    if not spec.annotations:
        raise ConfigError("data.train: a source needs 'annotations'")
    images = resolve(spec.images) if spec.images else None
    if spec.format == "wider":
        return FaceDetectionDataset.from_wider(resolve(spec.annotations), images, ignore_invalid=spec.ignore_invalid, transforms=transforms)
    if spec.format == "fddb":
        files = sorted({f for part in spec.annotations.split(",") for f in glob.glob(str(resolve(part.strip())))})
        if not files:
            raise ConfigError(f"data.train: no FDDB ellipse file matches {spec.annotations!r}")
        if images is None:
            raise ConfigError("data.train: an fddb source needs 'images'")
        return FaceDetectionDataset.from_fddb(files, images, transforms=transforms)
    if spec.format == "coco":
        if images is None:
            raise ConfigError("data.train: a coco source needs 'images'")
        return FaceDetectionDataset.from_coco(resolve(spec.annotations), images, transforms=transforms)
    raise ConfigError(f"data.train: unknown format {spec.format!r}; choose wider, fddb or coco")


def build_train_dataset(config: DataConfig, base_dir: Path | None = None) -> Dataset:
    """All training sources, each repeated by its ``repeat`` factor, concatenated."""
    if not config.train:
        raise ConfigError("data.train is empty: name at least one training source")
    transforms = train_transforms(config)
    parts: list[Dataset] = []
    for spec in config.train:
        source = build_source(spec, transforms, base_dir)
        parts.append(source if spec.repeat == 1.0 else RepeatDataset(source, spec.repeat))
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def count_dropped_boxes(dataset: Dataset) -> int:
    """Degenerate boxes dropped by every source inside ``dataset``."""
    if isinstance(dataset, FaceDetectionDataset):
        return dataset.num_dropped_boxes
    if isinstance(dataset, RepeatDataset):
        return count_dropped_boxes(dataset.dataset)
    if isinstance(dataset, ConcatDataset):
        return sum(count_dropped_boxes(d) for d in dataset.datasets)
    return 0
