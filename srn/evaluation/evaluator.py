"""One protocol for every benchmark: ``reset / process / evaluate``, as detectron2's ``DatasetEvaluator``.

An evaluator holds a benchmark's ground truth. :meth:`~DatasetEvaluator.process` takes the
detections of some images, :meth:`~DatasetEvaluator.evaluate` scores everything processed since
the last :meth:`~DatasetEvaluator.reset` with the benchmark's own protocol (docs/design.md,
"Evaluation protocols") and returns its result object, whose ``metrics`` are the headline numbers.
``srn eval`` and the trainer's :class:`srn.engine.hooks.EvalHook` both drive evaluators this way,
so neither knows which benchmark it scores.

Besides the protocol, an evaluator knows its benchmark's files: the images it expects
(:meth:`~DatasetEvaluator.image_files`), its prediction format (:meth:`~DatasetEvaluator.load_predictions`
and :meth:`~DatasetEvaluator.write_predictions`), the warnings its bookkeeping gives
(:meth:`~DatasetEvaluator.check`), its table and its plot.

A new benchmark is one subclass here, registered by name with :func:`register_evaluator`; ``srn eval``
offers every registered name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from srn.atomic import atomic_write_text
from srn.errors import ConfigError, PredictionFormatError
from srn.evaluation.common import as_numpy

__all__ = [
    "EVALUATORS",
    "DatasetEvaluator",
    "EvaluatorOptions",
    "FaceboxEvaluator",
    "FddbEvaluator",
    "LabelsEvaluator",
    "WiderEvaluator",
    "build_evaluator",
    "register_evaluator",
]

# (boxes (K, 4) x1 y1 x2 y2, scores (K,)): numpy arrays or tensors, on any device.
Detection = tuple[Any, Any]


@dataclass(frozen=True)
class EvaluatorOptions:
    """What a benchmark's protocol lets a user choose; each evaluator reads the options it has.

    Attributes:
        subset: WIDER FACE: evaluate only the images with predictions (not the official number).
        height_scale: FDDB: stretch rectangles' height toward the ellipse shape first (1.0 is official).
        format: labels: the annotation file's format (a name of :data:`srn.data.formats.FORMATS`),
            or None to tell it from the file (:func:`srn.data.formats.detect_format`).
        images: labels: the image folder the annotations' paths are relative to (None: the
            annotation file's folder, where the format allows it).
        thresholds: labels: the score thresholds at which recall and precision are reported.
    """

    subset: bool = False
    height_scale: float = 1.0
    format: str | None = None
    images: str | None = None
    thresholds: tuple[float, ...] = (0.3, 0.1)


class DatasetEvaluator:
    """The protocol. Subclasses set ``name`` and ``primary_metric`` (the key of the result's
    ``metrics`` that says "better", e.g. for keeping the best checkpoint) and override the methods."""

    name: str = ""
    primary_metric: str = ""
    # The file or folder the benchmark's predictions are written to, in the output folder.
    predictions_name: str = ""

    def reset(self) -> None:
        """Forget everything processed."""
        raise NotImplementedError

    def process(self, image_ids: Sequence[str], detections: Sequence[Detection]) -> None:
        """Add the detections of the images ``image_ids`` (ids as :meth:`image_ids` gives them)."""
        raise NotImplementedError

    def evaluate(self) -> Any:
        """Score what was processed; returns the benchmark's result object (``to_dict``, ``to_json``,
        ``metrics``)."""
        raise NotImplementedError

    def image_ids(self) -> list[str]:
        """The annotated images, in the ground truth's order."""
        raise NotImplementedError

    def image_files(self) -> list[str]:
        """The file of each annotated image, relative to the benchmark's image folder, in the order
        of :meth:`image_ids`."""
        raise NotImplementedError

    def load_predictions(self, sources: Sequence[str | os.PathLike[str]]) -> None:
        """Read predictions in the benchmark's own format, in place of what was processed."""
        raise NotImplementedError

    def write_predictions(self, path: str | os.PathLike[str]) -> Path:
        """Write what was processed in the benchmark's own format (atomically); returns ``path``."""
        raise NotImplementedError

    def check(self, result: Any, source: str, detected: bool) -> list[str]:
        """The warnings the result's bookkeeping gives (images without predictions, predictions for
        images that are not annotated), one line each; raises :class:`PredictionFormatError` when
        nothing of ``source`` matches the ground truth. ``detected``: the predictions come from a
        detection run of this process, which has already named the images it could not read."""
        return []

    def format_table(self, result: Any) -> str:
        """The result as a short text table."""
        raise NotImplementedError

    def plot(self, result: Any, path: str | os.PathLike[str]) -> Path:
        """Draw the benchmark's curve into the image file ``path``."""
        raise NotImplementedError


EvaluatorFactory = Callable[[Sequence[str | os.PathLike[str]], EvaluatorOptions], DatasetEvaluator]
EVALUATORS: dict[str, EvaluatorFactory] = {}


def register_evaluator(*names: str) -> Callable[[type[DatasetEvaluator]], type[DatasetEvaluator]]:
    """Class decorator: ``names`` build the class with its ``from_files(ground_truth, options, name)``."""

    def register(cls: type[DatasetEvaluator]) -> type[DatasetEvaluator]:
        for name in names:
            EVALUATORS[name] = lambda ground_truth, options, _name=name: cls.from_files(ground_truth, options, _name)  # type: ignore[attr-defined]
        return cls

    return register


def build_evaluator(
    name: str, ground_truth: Sequence[str | os.PathLike[str]], options: EvaluatorOptions | None = None
) -> DatasetEvaluator:
    """The evaluator of benchmark ``name`` on its ground-truth files.

    Raises:
        ConfigError: ``name`` is not a registered benchmark.
    """
    if name not in EVALUATORS:
        raise ConfigError(f"unknown benchmark {name!r}; choose one of {', '.join(EVALUATORS)}")
    return EVALUATORS[name](ground_truth, options or EvaluatorOptions())


def _count(n: int, noun: str, plural: str | None = None) -> str:
    """``"1 image is"`` / ``"3 images are"``: a count, its noun and the verb that agrees."""
    return f"{n} {noun} is" if n == 1 else f"{n} {plural or noun + 's'} are"


def _xywh_rows(boxes: Any, scores: Any) -> np.ndarray:
    """``float64[K, 5]`` ``x y w h score`` rows of (boxes x1 y1 x2 y2, scores)."""
    b = as_numpy(boxes).reshape(-1, 4)
    s = as_numpy(scores).reshape(-1)
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2], s[:, None]], axis=1)


# --------------------------------------------------------------------------- WIDER FACE


@register_evaluator("wider")
class WiderEvaluator(DatasetEvaluator):
    """WIDER FACE with the official MATLAB semantics (:mod:`srn.evaluation.widerface`).

    Image ids are ``"<event>/<image>"``; the ground truth is the folder of the official ``.mat``
    files. :meth:`load_predictions` reads a submission folder.
    """

    name = "wider"
    primary_metric = "ap_hard"
    predictions_name = "predictions"

    def __init__(self, gt: Any, subset: bool = False, iou_threshold: float = 0.5) -> None:
        self.gt = gt
        self.subset = subset
        self.iou_threshold = iou_threshold
        self.reset()

    @classmethod
    def from_files(cls, ground_truth: Sequence[str | os.PathLike[str]], options: EvaluatorOptions, name: str = "wider") -> WiderEvaluator:
        from srn.evaluation.widerface import load_wider_gt

        (gt_dir,) = ground_truth
        return cls(load_wider_gt(gt_dir), subset=options.subset)

    def reset(self) -> None:
        self._rows: dict[str, np.ndarray] = {}  # what evaluate() scores: x y w h score
        self._detections: dict[str, Detection] = {}  # what write_predictions() writes
        self.source: Path | None = None

    def process(self, image_ids: Sequence[str], detections: Sequence[Detection]) -> None:
        for image_id, (boxes, scores) in zip(image_ids, detections, strict=True):
            self._detections[image_id] = (boxes, scores)
            self._rows[image_id] = _xywh_rows(boxes, scores)

    def evaluate(self) -> Any:
        from srn.evaluation.widerface import evaluate

        return evaluate(self._rows, self.gt, subset=self.subset, iou_threshold=self.iou_threshold)

    def image_ids(self) -> list[str]:
        return [f"{event}/{name}" for event, name in self.gt.image_keys]

    def image_files(self) -> list[str]:
        return [f"{event}/{name}.jpg" for event, name in self.gt.image_keys]

    def load_predictions(self, sources: Sequence[str | os.PathLike[str]]) -> None:
        from srn.evaluation.widerface import read_predictions

        (pred_dir,) = sources
        self.reset()
        self._rows = {f"{event}/{name}": rows for (event, name), rows in read_predictions(pred_dir).items()}
        self.source = Path(pred_dir)

    def write_predictions(self, path: str | os.PathLike[str]) -> Path:
        from srn.evaluation.widerface import write_prediction_folder

        # The folder holds this run's files only, none left from another.
        return write_prediction_folder(path, self._detections)

    def check(self, result: Any, source: str, detected: bool) -> list[str]:
        pred_dir = Path(source)
        matched = result.num_images if self.subset else result.num_images - result.num_missing
        extra = ""
        if result.extra:
            event, name = result.extra[0]
            extra = (f"{_count(result.num_extra, 'prediction file')} for images that are not in the ground truth, "
                     f"e.g. {pred_dir / event / name}.txt")
        if matched == 0:
            problem = "no prediction file matches an image of the ground truth"
            detail = f" ({extra})" if extra else " (it holds no <event>/<image>.txt file)"
            if self.subset:
                raise PredictionFormatError(pred_dir, None, problem + detail)
            return [f"{pred_dir}: {problem}{detail}; every image counts as having no detections"]
        warnings = []
        if extra:
            warnings.append(f"{extra} (not evaluated)")
        if result.num_missing:
            warnings.append(f"{result.num_missing} of {result.num_images} images have no prediction file "
                            "(counted as no detections, as the official code counts them)")
        return warnings

    def format_table(self, result: Any) -> str:
        from srn.evaluation.widerface import format_table

        return format_table(result)

    def plot(self, result: Any, path: str | os.PathLike[str]) -> Path:
        from srn.evaluation.plots import plot_wider_pr

        return plot_wider_pr(result, path)


# --------------------------------------------------------------------------- FDDB


@register_evaluator("fddb")
class FddbEvaluator(DatasetEvaluator):
    """FDDB's discrete and continuous ROC (:mod:`srn.evaluation.fddb`).

    Image ids are FDDB's names (``2002/08/11/big/img_591``); the ground truth is one or more ellipse
    lists. :meth:`load_predictions` reads FDDB detection files.
    """

    name = "fddb"
    primary_metric = "tpr_at_1000"
    predictions_name = "detections.txt"

    def __init__(self, annotations: Mapping[str, np.ndarray], height_scale: float = 1.0) -> None:
        self.annotations = annotations
        self.height_scale = height_scale
        self.reset()

    @classmethod
    def from_files(cls, ground_truth: Sequence[str | os.PathLike[str]], options: EvaluatorOptions, name: str = "fddb") -> FddbEvaluator:
        from srn.evaluation.fddb import read_fddb_ellipses

        return cls(read_fddb_ellipses(list(ground_truth)), height_scale=options.height_scale)

    def reset(self) -> None:
        self._rows: dict[str, np.ndarray] = {}
        self._detections: dict[str, Detection] = {}

    def process(self, image_ids: Sequence[str], detections: Sequence[Detection]) -> None:
        for image_id, (boxes, scores) in zip(image_ids, detections, strict=True):
            self._detections[image_id] = (boxes, scores)
            self._rows[image_id] = _xywh_rows(boxes, scores)

    def evaluate(self) -> Any:
        from srn.evaluation.fddb import evaluate_fddb

        return evaluate_fddb(self._rows, self.annotations, height_scale=self.height_scale)

    def image_ids(self) -> list[str]:
        return list(self.annotations)

    def image_files(self) -> list[str]:
        return [f"{name}.jpg" for name in self.annotations]

    def load_predictions(self, sources: Sequence[str | os.PathLike[str]]) -> None:
        from srn.evaluation.fddb import read_fddb_detections

        self.reset()
        self._rows = read_fddb_detections(list(sources))

    def write_predictions(self, path: str | os.PathLike[str]) -> Path:
        from srn.evaluation.fddb import write_fddb_detections

        return write_fddb_detections(path, self._detections)

    def check(self, result: Any, source: str, detected: bool) -> list[str]:
        if result.num_missing == result.num_images:
            if not self._rows:
                raise PredictionFormatError(source, None, "holds no detection entry")
            raise PredictionFormatError(
                source, None, f"no detection entry is for an annotated image (e.g. {result.extra[0]} is not in the "
                "annotations: detections of another fold?)"
            )
        warnings = []
        if result.extra:
            warnings.append(f"{source}: {_count(result.num_extra, 'detection entry', 'detection entries')} for images "
                            f"that are not annotated (ignored), e.g. {result.extra[0]}")
        if result.num_missing and not detected:
            warnings.append(f"{result.num_missing} of {result.num_images} annotated images have no detection entry "
                            "(counted as no detections)")
        return warnings

    def format_table(self, result: Any) -> str:
        from srn.evaluation.fddb import format_table

        return format_table(result)

    def plot(self, result: Any, path: str | os.PathLike[str]) -> Path:
        from srn.evaluation.plots import plot_fddb_roc

        return plot_fddb_roc(result, path)


# --------------------------------------------------------------------------- AFW and PASCAL Face


@register_evaluator("afw", "pascal")
class FaceboxEvaluator(DatasetEvaluator):
    """VOC AP at IoU 0.5 with ignore flags (:mod:`srn.evaluation.facebox`): AFW and PASCAL Face, or
    any ``{key: FaceboxImage}`` (e.g. a held-out training list, :meth:`from_records`).

    Image ids are the annotations' keys; :meth:`load_predictions` reads a ``detections.json``.
    """

    primary_metric = "ap"
    predictions_name = "detections.json"

    def __init__(self, annotations: Mapping[str, Any], name: str = "afw", annotation_file: str = "") -> None:
        self.annotations = annotations
        self.name = name
        self.annotation_file = annotation_file
        self.reset()

    @classmethod
    def from_files(cls, ground_truth: Sequence[str | os.PathLike[str]], options: EvaluatorOptions, name: str = "afw") -> FaceboxEvaluator:
        from srn.evaluation.facebox import load_facebox_annotations

        (path,) = ground_truth
        return cls(load_facebox_annotations(path), name=name, annotation_file=str(path))

    @classmethod
    def from_records(cls, records: Sequence[Any], name: str = "held-out") -> FaceboxEvaluator:
        """Annotations from :class:`srn.data.formats.FaceRecord` s (boxes ``x1 y1 x2 y2``, ``ignore``
        flags); image ids are the records' ``image_path``.

        Raises:
            ConfigError: two records have the same image key (base name without suffix).
        """
        from srn.evaluation.facebox import FaceboxImage, image_key

        annotations: dict[str, Any] = {}
        for record in records:
            key = image_key(str(record.image_path))
            if key in annotations:
                raise ConfigError(f"{name}: two images are named {key!r}; image names must be unique for evaluation")
            size = tuple(record.image_size) if record.image_size else ()
            annotations[key] = FaceboxImage(str(record.image_path), size, as_numpy(record.boxes).reshape(-1, 4),
                                            np.asarray(record.ignore, dtype=bool).reshape(-1))
        return cls(annotations, name=name)

    def reset(self) -> None:
        self._detections: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def process(self, image_ids: Sequence[str], detections: Sequence[Detection]) -> None:
        from srn.evaluation.facebox import image_key

        for image_id, (boxes, scores) in zip(image_ids, detections, strict=True):
            self._detections[image_key(image_id)] = (as_numpy(boxes).reshape(-1, 4), as_numpy(scores).reshape(-1))

    def evaluate(self) -> Any:
        from srn.evaluation.facebox import evaluate_facebox

        return evaluate_facebox(self._detections, self.annotations)

    def image_ids(self) -> list[str]:
        return list(self.annotations)

    def image_files(self) -> list[str]:
        return [image.name for image in self.annotations.values()]

    def load_predictions(self, sources: Sequence[str | os.PathLike[str]]) -> None:
        from srn.evaluation.facebox import read_facebox_detections

        (path,) = sources
        self._detections = read_facebox_detections(path)

    def write_predictions(self, path: str | os.PathLike[str]) -> Path:
        dump = {k: {"boxes": b.tolist(), "scores": s.tolist()} for k, (b, s) in self._detections.items()}
        return atomic_write_text(path, json.dumps(dump) + "\n")

    def check(self, result: Any, source: str, detected: bool) -> list[str]:
        if result.num_missing == result.num_images:
            if not self._detections:
                raise PredictionFormatError(source, None, "holds no image")
            raise PredictionFormatError(source, None, f"no image of it is in {self.annotation_file} (e.g. {result.extra[0]!r})")
        warnings = []
        if result.extra:
            warnings.append(f"{source}: {result.num_extra} of {len(self._detections)} images are not in {self.annotation_file} "
                            f"(their detections count as false positives), e.g. {result.extra[0]!r}")
        if result.num_missing and not detected:
            warnings.append(f"{result.num_missing} of {result.num_images} annotated images have no entry in {source} "
                            "(counted as no detections)")
        return warnings

    def format_table(self, result: Any) -> str:
        from srn.evaluation.facebox import format_table

        return format_table(result, self.name.upper())

    def plot(self, result: Any, path: str | os.PathLike[str]) -> Path:
        from srn.evaluation.plots import plot_facebox_pr

        return plot_facebox_pr(result, path)


# --------------------------------------------------------------------------- one's own labels


@register_evaluator("labels")
class LabelsEvaluator(DatasetEvaluator):
    """Any labelled photos (:mod:`srn.evaluation.labels`): AP at IoU 0.5 and 0.5:0.95, recall and
    precision at the commands' score thresholds, overall and per face size.

    The ground truth is one annotation file in a format of :data:`srn.data.formats.FORMATS` (WIDER
    list, COCO JSON, FDDB), told from the file unless ``options.format`` names it. Image ids are the
    records' image paths; :meth:`load_predictions` reads ``srn detect``'s JSON Lines records.
    """

    name = "labels"
    primary_metric = "ap50"
    predictions_name = "detections.jsonl"

    def __init__(self, records: Sequence[Any], image_root: Path | None = None, thresholds: Sequence[float] = (0.3, 0.1),
                 annotation_file: str = "") -> None:
        seen: set[str] = set()
        for record in records:
            if record.image_path in seen:
                raise ConfigError(f"{annotation_file or 'labels'}: the image {record.image_path!r} is listed twice")
            seen.add(record.image_path)
        self.records = list(records)
        self.image_root = image_root
        self.thresholds = tuple(thresholds)
        self.annotation_file = annotation_file
        self.reset()

    @classmethod
    def from_files(cls, ground_truth: Sequence[str | os.PathLike[str]], options: EvaluatorOptions, name: str = "labels") -> LabelsEvaluator:
        from srn.config import DatasetSpec
        from srn.data.build import read_records

        (path,) = ground_truth
        spec = DatasetSpec(format=options.format or "auto", annotations=str(path), images=options.images)
        records, root = read_records(spec, key="annotations")
        return cls(records, image_root=root, thresholds=options.thresholds, annotation_file=str(path))

    def reset(self) -> None:
        self._detections: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def process(self, image_ids: Sequence[str], detections: Sequence[Detection]) -> None:
        for image_id, (boxes, scores) in zip(image_ids, detections, strict=True):
            self._detections[image_id] = (as_numpy(boxes).reshape(-1, 4), as_numpy(scores).reshape(-1))

    def evaluate(self) -> Any:
        from srn.evaluation.labels import evaluate_labels

        return evaluate_labels(self._detections, self.records, thresholds=self.thresholds)

    def image_ids(self) -> list[str]:
        return [record.image_path for record in self.records]

    def image_files(self) -> list[str]:
        return self.image_ids()

    def load_predictions(self, sources: Sequence[str | os.PathLike[str]]) -> None:
        from srn.evaluation.labels import match_image, read_detection_records

        self.reset()
        ids = self.image_ids()
        for source in sources:
            for image, detection in read_detection_records(source).items():
                self._detections[match_image(image, ids) or image] = detection

    def write_predictions(self, path: str | os.PathLike[str]) -> Path:
        from srn.evaluation.labels import write_detection_records

        return write_detection_records(path, self._detections)

    def check(self, result: Any, source: str, detected: bool) -> list[str]:
        if result.num_missing == result.num_images and result.num_images:
            if not self._detections:
                raise PredictionFormatError(source, None, "holds no image")
            raise PredictionFormatError(source, None, f"no image of it is in {self.annotation_file} (e.g. {result.extra[0]!r})")
        warnings = []
        if result.extra:
            warnings.append(f"{source}: {_count(result.num_extra, 'image')} not in {self.annotation_file} (not evaluated), "
                            f"e.g. {result.extra[0]!r}")
        if result.num_missing and not detected:
            warnings.append(f"{result.num_missing} of {result.num_images} annotated images have no entry in {source} "
                            "(counted as no detections)")
        return warnings

    def format_table(self, result: Any) -> str:
        from srn.evaluation.labels import format_table

        return format_table(result)

    def plot(self, result: Any, path: str | os.PathLike[str]) -> Path:
        from srn.evaluation.plots import plot_labels_pr

        return plot_labels_pr(result, path)
