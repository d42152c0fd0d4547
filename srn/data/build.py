"""Build training datasets from :class:`srn.config.DataConfig`, and check them before training."""

from __future__ import annotations

import glob
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from torch.utils.data import ConcatDataset, Dataset

from srn.config import ConfigError, DataConfig, DatasetSpec
from srn.data.datasets import FaceDetectionDataset
from srn.data.formats import FaceRecord, check_format, detect_format
from srn.data.image_io import ImageReadError, read_image
from srn.data.samplers import RepeatDataset, SeededSamples
from srn.data.transforms import build_train_transforms
from srn.errors import InputPathError, TrainingError
from srn.paths import check_input_file


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


def read_records(spec: DatasetSpec, base_dir: Path | None = None, key: str = "data.train") -> tuple[list[FaceRecord], Path]:
    """The records of one source, parsed by its format (:data:`srn.data.formats.FORMATS`; ``auto``:
    :func:`srn.data.formats.detect_format` of its first file), and the
    folder their image paths are relative to. Relative paths are taken from ``base_dir`` (the config
    file's folder) when given.

    Raises:
        ConfigError: one line naming ``key``: an unknown format, no annotations, no matching file, no
            image folder where the format needs one.
    """

    def resolve(path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() or base_dir is None or p.exists() else base_dir / p

    if not spec.annotations:
        raise ConfigError(f"{key}: a source needs 'annotations'")
    name = spec.format
    if name == "auto":  # from the file's suffix or content (srn.data.formats.detect_format)
        name = detect_format(resolve(spec.annotations.split(",")[0].strip()))
    fmt = check_format(name, f"{key}.format")
    images = resolve(spec.images) if spec.images else None
    if fmt.many_files:
        files = sorted({f for part in spec.annotations.split(",") for f in glob.glob(str(resolve(part.strip())))})
        if not files:
            raise ConfigError(f"{key}: no {fmt.file_kind} matches {spec.annotations!r}")
    else:
        files = [str(resolve(spec.annotations))]
    if images is None:
        if fmt.needs_images:
            article = "an" if name[0] in "aefhilmnorsx" else "a"  # as the letter's name is spoken: "an fddb"
            raise ConfigError(f"{key}: {article} {name} source needs 'images'")
        images = Path(files[0]).parent
    return fmt.parse(files, spec.ignore_invalid), images


def held_out_split(records: Sequence[FaceRecord], fraction: float) -> tuple[list[FaceRecord], list[FaceRecord]]:
    """``(kept, held out)``: ``round(fraction * n)`` records (at least 1 when ``fraction > 0``) spread
    evenly over the list are held out; the same list and fraction always hold out the same records.

    Raises:
        ConfigError: nothing would be left on one side (fewer than 2 records).
    """
    records = list(records)
    if fraction <= 0:
        return records, []
    count = max(1, round(fraction * len(records)))
    if count >= len(records):
        raise ConfigError(f"train.calibrate_fraction: {fraction:g} of {len(records)} images leaves none to train on")
    held = {int((k + 0.5) * len(records) / count) for k in range(count)}
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def build_source(spec: DatasetSpec, transforms: Callable | None, base_dir: Path | None = None, hold_out: float = 0.0) -> FaceDetectionDataset:
    """One source, less its held-out share ``hold_out`` (:func:`held_out_split`); relative paths are
    taken from ``base_dir`` (the config file's folder) when given."""
    records, images = read_records(spec, base_dir)
    return FaceDetectionDataset(held_out_split(records, hold_out)[0], images, transforms)


def build_train_dataset(config: DataConfig, base_dir: Path | None = None, hold_out: float = 0.0) -> Dataset:
    """All training sources, each repeated by its ``repeat`` factor, concatenated; ``hold_out``: the
    share of the first source's images left out (for score calibration, :func:`held_out_split`)."""
    if not config.train:
        raise ConfigError("data.train is empty: name at least one training source")
    transforms = train_transforms(config)
    parts: list[Dataset] = []
    for index, spec in enumerate(config.train):
        source = build_source(spec, transforms, base_dir, hold_out if index == 0 else 0.0)
        parts.append(source if spec.repeat == 1.0 else RepeatDataset(source, spec.repeat))
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def sources(dataset: Dataset) -> Iterator[FaceDetectionDataset]:
    """The annotation sources inside ``dataset`` (through repeats, concatenations and
    :class:`SeededSamples`), in the order of ``data.train``."""
    if isinstance(dataset, FaceDetectionDataset):
        yield dataset
    elif isinstance(dataset, RepeatDataset | SeededSamples):
        yield from sources(dataset.dataset)
    elif isinstance(dataset, ConcatDataset):
        for part in dataset.datasets:
            yield from sources(part)


def count_dropped_boxes(dataset: Dataset) -> int:
    """Degenerate boxes dropped by every source inside ``dataset``."""
    return sum(source.num_dropped_boxes for source in sources(dataset))


def check_training_images(dataset: Dataset, names: Sequence[str]) -> list[str]:
    """Fail early when no training image can be used; return a warning for each source with some
    images that cannot.

    Every listed file is checked to exist and be readable (cheap); files are then decoded in order up
    to the first one that decodes. So a wrong image folder or a set of broken files stops the run at
    once, instead of a run that trains on nothing and writes an untrained model.

    Args:
        dataset: the training dataset (sources inside repeats and concatenations are found).
        names: one name per source, in order (its annotation file as the config gives it).

    Raises:
        TrainingError: ``"no usable training image in <names> (...)"``.
    """
    messages, first_problem, total, usable = [], "", 0, False
    for name, source in zip(names, sources(dataset)):
        problems, readable = [], []
        for record in source.records:
            path = source.image_root / record.image_path
            try:
                readable.append(check_input_file(path, what="training image"))
            except InputPathError as exc:
                problems.append(str(exc))
        decodes = False
        for path in readable:
            try:
                read_image(path)
                decodes = True
                break
            except ImageReadError as exc:
                problems.append(str(exc))
        total += len(source.records)
        usable |= decodes
        first_problem = first_problem or (problems[0] if problems else "")
        if decodes and problems:
            messages.append(f"{name}: {len(problems)} of {len(source.records)} images are unusable and are skipped ({problems[0]})")
        elif not decodes and source.records:
            messages.append(f"{name}: none of its {len(source.records)} images is usable ({problems[0]}); the other sources train")
    if not usable:
        where = ", ".join(names)
        raise TrainingError(f"no usable training image in {where} ({total} listed; {first_problem})" if total
                            else f"no usable training image in {where} (it lists none)")
    return messages
