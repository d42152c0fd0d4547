"""Training hooks: what happens around the steps, in the manner of detectron2's ``engine/hooks.py``.

The loop in :class:`srn.engine.trainer.Trainer` only runs optimizer steps; the guard against a
non-finite loss, the metrics log, TensorBoard and the checkpoints are hooks around it. A hook may act
at four moments:

- ``before_train()``: once, before the first step (after a resume: ``trainer.iteration`` is then the
  checkpoint's);
- ``after_step()``: after every optimizer step. ``trainer.iteration`` counts the steps done,
  ``trainer.step_losses`` holds the step's loss parts (means over the micro-batches and the
  processes, so every process sees the same numbers) and ``trainer.step_images`` the images it used;
- ``after_epoch()``: when the loop leaves an epoch: at its end, or where the run stops inside it
  (``train.max_iters``, ``train.max_minutes``);
- ``after_train()``: once, also when training failed; ``trainer.completed`` tells which.

Hooks run in the order they are registered. ``Trainer.build_hooks`` puts :class:`NonFiniteGuard`
first, so the hooks after it never log or checkpoint a step whose loss is not finite.

``trainer`` is a weak proxy (:func:`weakref.proxy`): the trainer holds its hooks, and a hook holding
the trainer back would keep both, and the model, alive after the trainer is dropped.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from srn.atomic import atomic_write_text
from srn.errors import TrainingError

__all__ = ["CalibrationHook", "Checkpointer", "EvalHook", "HookBase", "MetricsLogger", "NonFiniteGuard", "TensorBoardWriter"]

logger = logging.getLogger(__name__)


class HookBase:
    """A hook does nothing at any moment unless it overrides it. ``trainer`` is set when the hook is
    registered (:meth:`srn.engine.trainer.Trainer.register_hooks`)."""

    # The srn.engine.trainer.Trainer that runs the hook (not imported: the trainer imports the hooks).
    trainer: Any

    def before_train(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def after_epoch(self) -> None:
        pass

    def after_train(self) -> None:
        pass


class NonFiniteGuard(HookBase):
    """Stops training at the first step whose loss is not finite, as DETR's ``engine.py`` does.

    The step's weights are lost with it; the last checkpoint on disk was written before that step.
    """

    def after_step(self) -> None:
        trainer = self.trainer
        losses = trainer.step_losses
        if all(math.isfinite(value) for value in losses.values()):
            return
        detail = ", ".join(f"{key}={value:.4g}" for key, value in losses.items() if key != "loss")
        last = trainer.output_dir / "last.pt"
        kept = f"the last good checkpoint {last} is intact" if last.is_file() else "no checkpoint was written"
        raise TrainingError(f"non-finite loss at iteration {trainer.iteration} ({detail}); training stopped, {kept}")


class MetricsLogger(HookBase):
    """Every ``period`` steps, and at the last step: the mean loss parts since the previous record, the
    learning rate of the next step and the images per second, as one JSON line appended to ``path``
    and on the progress bar (stderr). The record is left in ``trainer.metrics`` for later hooks.

    A run that starts from scratch starts a new file; a resumed run keeps the records up to its
    checkpoint's iteration and drops the later ones, which it is about to redo, and a last line that
    a kill cut short. So a killed and resumed run logs every iteration once.

    Args:
        path: the JSON-lines file (``metrics.jsonl`` in the run folder).
        period: steps between records.
    """

    def __init__(self, path: Path, period: int) -> None:
        self.path = Path(path)
        self.period = period
        self.progress: Any = None
        self._reset()

    def _reset(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.steps = 0
        self.images = 0
        self.start = time.perf_counter()

    def before_train(self) -> None:
        from tqdm import tqdm

        trainer = self.trainer
        self.keep_records_until(trainer.iteration)
        self.progress = tqdm(total=trainer.total_iters, initial=trainer.iteration, unit="it", file=sys.stderr, dynamic_ncols=True)
        self._reset()

    def keep_records_until(self, iteration: int) -> None:
        """Drop the records after ``iteration`` (all of them for 0), and any line that does not parse."""
        keep_records_until(self.path, iteration)

    def after_step(self) -> None:
        trainer = self.trainer
        self.steps += 1
        self.images += trainer.step_images
        for key, value in trainer.step_losses.items():
            self.sums[key] += value
        if trainer.iteration % self.period == 0 or trainer.iteration == trainer.total_iters:
            elapsed = time.perf_counter() - self.start
            record = {"iteration": trainer.iteration, "epoch": trainer.epoch, "lr": trainer.optimizer.param_groups[0]["lr"],
                      **{key: value / self.steps for key, value in self.sums.items()},
                      "images_per_s": self.images / max(elapsed, 1e-9)}
            # Appended, not rewritten: a kill can cut only the last line, which a resume drops.
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            self.progress.set_postfix({k: f"{record[k]:.3f}" for k in record if k.startswith("loss")} | {"img/s": f"{record['images_per_s']:.1f}"})
            trainer.metrics = record
            self._reset()
        self.progress.update(1)

    def after_train(self) -> None:
        if self.progress is not None:
            self.progress.close()


class TensorBoardWriter(HookBase):
    """Each record of :class:`MetricsLogger` (registered before this hook) as ``train/<key>`` scalars.

    Without the ``tensorboard`` package it warns once and does nothing.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self.writer: Any = None

    def before_train(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.warning("tensorboard is not installed; metrics go to metrics.jsonl only")
            return
        self.writer = SummaryWriter(str(self.log_dir))

    def after_step(self) -> None:
        record = self.trainer.metrics
        if self.writer is None or record is None or record["iteration"] != self.trainer.iteration:
            return
        for key, value in record.items():
            if key not in ("iteration", "epoch"):
                self.writer.add_scalar(f"train/{key}", value, self.trainer.iteration)

    def after_train(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Checkpointer(HookBase):
    """``last.pt`` (everything a resume needs) every ``period`` steps and whenever the loop leaves an
    epoch; ``model.pt`` (weights and config, for ``srn detect``) once training has completed.
    Both are written through a temporary file and a rename (:mod:`srn.atomic`).

    Args:
        period: steps between two ``last.pt``.
    """

    def __init__(self, period: int) -> None:
        self.period = period
        self.saved_at: int | None = None

    def _save(self) -> None:
        self.trainer.save_checkpoint()
        self.saved_at = self.trainer.iteration

    def after_step(self) -> None:
        if self.trainer.iteration % self.period == 0:
            self._save()

    def after_epoch(self) -> None:
        if self.saved_at != self.trainer.iteration:
            self._save()

    def after_train(self) -> None:
        if self.trainer.completed:
            self.trainer.save_model()


class CalibrationHook(HookBase):
    """At the end of a completed run, before ``model.pt`` is written: Platt scaling of the model's
    scores fitted on held-out photos (:func:`srn.evaluation.calibration.fit_on_photos`), stored in
    ``trainer.config.postprocess`` (``score_scale``, ``score_shift``) so that ``model.pt`` carries it,
    logged, and written to ``path`` as JSON. Register it before :class:`Checkpointer`.

    When the photos cannot determine a fit (too few detections, or none false), a warning says so
    and the config's calibration stays.

    Args:
        records: the held-out :class:`srn.data.formats.FaceRecord` s, images under ``image_root``.
        path: the JSON file (``calibration.json`` in the run folder).
        max_size: the detector's.
    """

    def __init__(self, records: Sequence[Any], image_root: Path, path: Path, max_size: int = 1024) -> None:
        self.records = list(records)
        self.image_root = Path(image_root)
        self.path = Path(path)
        self.max_size = max_size
        self.fit: dict[str, Any] | None = None

    def after_train(self) -> None:
        import dataclasses

        from srn.config import DetectorConfig
        from srn.evaluation.calibration import CalibrationError, fit_on_photos
        from srn.inference import Detector

        trainer = self.trainer
        if not trainer.completed:
            return
        post = trainer.config.postprocess
        detector = Detector(model=trainer.model, config=DetectorConfig(trainer.config.model, post), device=trainer.device,
                            score_thresh=0.0, max_size=self.max_size, batch_size=8)
        where = f"train.calibrate_fraction ({len(self.records)} held-out photos)"
        try:
            fit = fit_on_photos(detector, self.records, self.image_root, post.score_scale, post.score_shift, where=where)
        except CalibrationError as exc:
            logger.warning("score calibration skipped: %s; model.pt keeps postprocess.score_scale %g, score_shift %g",
                           exc, post.score_scale, post.score_shift)
            return
        a, b = round(fit["a"], 4), round(fit["b"], 4)
        trainer.config = dataclasses.replace(trainer.config, postprocess=dataclasses.replace(post, score_scale=a, score_shift=b))
        self.fit = fit
        atomic_write_text(self.path, json.dumps({"score_scale": a, "score_shift": b, **fit}, indent=1) + "\n")
        logger.info("score calibration on %d held-out photos (%d detections, %d true): postprocess.score_scale %g, score_shift %g "
                    "(expected calibration error %.3f -> %.3f)", fit["images"], fit["detections"], fit["true"], a, b,
                    fit["ece_before"], fit["ece_after"])


class EvalHook(HookBase):
    """Every ``period`` steps and after the last one: the model detects faces in held-out images,
    ``evaluator`` scores them (:class:`srn.evaluation.evaluator.DatasetEvaluator`), the metrics go
    to the log and as one JSON line to ``path``, and the model becomes ``best.pt`` (weights and
    detector config, written atomically) whenever the evaluator's ``primary_metric`` beats every
    earlier evaluation, in the manner of detectron2's ``EvalHook`` with a best checkpointer.

    A resumed run keeps the records up to its checkpoint's iteration (as :class:`MetricsLogger`) and
    the best value among them, so ``best.pt`` is only replaced by a better model.

    Args:
        period: steps between evaluations.
        evaluator: holds the held-out annotations; its image ids are ``image_ids``.
        paths: the image file of each id, in the same order.
        path: the JSON-lines file (``eval.jsonl`` in the run folder).
        max_size, batch_size: the detector's (:class:`srn.inference.Detector`).
    """

    def __init__(self, period: int, evaluator: Any, paths: Sequence[Path], path: Path, max_size: int = 1024, batch_size: int = 8,
                 image_ids: Sequence[str] | None = None) -> None:
        self.period = period
        self.evaluator = evaluator
        self.paths = list(paths)
        self.image_ids = list(image_ids) if image_ids is not None else evaluator.image_ids()
        if len(self.image_ids) != len(self.paths):
            raise ValueError(f"{len(self.image_ids)} image ids but {len(self.paths)} paths")
        self.path = Path(path)
        self.max_size, self.batch_size = max_size, batch_size
        self.best: float | None = None
        self.evaluated_at: int | None = None

    def before_train(self) -> None:
        keep_records_until(self.path, self.trainer.iteration)
        key = self.evaluator.primary_metric
        if self.path.is_file():
            values = [record[key] for record in map(json.loads, self.path.read_text().splitlines())
                      if isinstance(record.get(key), (int, float))]
            self.best = max(values, default=None)

    def after_step(self) -> None:
        trainer = self.trainer
        if trainer.iteration % self.period == 0 or trainer.iteration == trainer.total_iters:
            self.evaluate()

    def evaluate(self) -> dict[str, float]:
        """Run the evaluation now; returns the metrics."""
        from srn.config import DetectorConfig
        from srn.evaluation.run import detect_images
        from srn.inference import Detector

        trainer = self.trainer
        config = DetectorConfig(trainer.config.model, trainer.config.postprocess)
        # Every detection the release keeps (no final score threshold), as the benchmarks count them.
        detector = Detector(model=trainer.model, config=config, device=trainer.device, score_thresh=0.0,
                            max_size=self.max_size, batch_size=self.batch_size)
        results, failures = detect_images(detector, self.paths)
        for line in failures:
            logger.warning("evaluation: %s", line)
        id_of = dict(zip(self.paths, self.image_ids, strict=True))
        self.evaluator.reset()
        self.evaluator.process([id_of[path] for path in results], list(results.values()))
        metrics = dict(self.evaluator.evaluate().metrics)
        key = self.evaluator.primary_metric
        value = metrics[key]
        improved = math.isfinite(value) and (self.best is None or value > self.best)
        if improved:
            self.best = value
            trainer.save_model("best.pt")
        record = {"iteration": trainer.iteration, "epoch": trainer.epoch, **metrics, "best": improved}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        logger.info("evaluation at iteration %d: %s%s", trainer.iteration,
                    ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()), " (best so far: best.pt)" if improved else "")
        trainer.eval_metrics = record
        self.evaluated_at = trainer.iteration
        return metrics


def keep_records_until(path: Path, iteration: int) -> None:
    """Drop the records of the JSON-lines file ``path`` after ``iteration`` (all of them for 0), and
    any line that does not parse: a resume redoes those iterations, and a kill can cut a last line."""
    if iteration == 0:
        path.unlink(missing_ok=True)
    elif path.is_file():
        kept = [line for line in path.read_text().splitlines() if _logged_iteration(line) <= iteration]
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def _logged_iteration(line: str) -> float:
    """The iteration of a metrics.jsonl line; infinity for a line that does not parse."""
    try:
        record = json.loads(line)
        return float(record.get("iteration", 0)) if isinstance(record, dict) else math.inf
    except (ValueError, TypeError):
        return math.inf
