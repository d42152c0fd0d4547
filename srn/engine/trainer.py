"""The training loop: DDP, bf16 autocast, gradient accumulation, atomic checkpoints, exact resume.

The loop itself only runs optimizer steps; logging, TensorBoard, checkpoints, evaluation and the
non-finite guard are hooks (:mod:`srn.engine.hooks`). What it trains is built by steps a subclass may
replace, as detectron2's ``DefaultTrainer``: ``build_model``, ``build_criterion`` (the loss, with the
teacher inside it when distilling), ``build_dataset``, ``build_data_loader``, ``build_optimizer``,
``build_lr_scheduler`` and ``build_hooks``. The data, its checks and the order it is drawn in come from
:mod:`srn.data.build` and :mod:`srn.data.samplers`; the loss from :meth:`SRNCriterion.from_config`;
checkpoints, resume and ``train.init_from`` from :mod:`srn.engine.checkpoint`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import weakref
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from srn.atomic import atomic_write_text, remove_stale_partials
from srn.config import DatasetSpec, DetectorConfig, TrainingConfig, to_dict
from srn.criterion import DistillationCriterion, SRNCriterion, TeacherDistillation
from srn.data.build import build_train_dataset, check_training_images, count_dropped_boxes
from srn.data.datasets import collate
from srn.data.formats import check_format
from srn.data.samplers import ResumableSampler, SeededSamples
from srn.data.target import Target
from srn.engine.checkpoint import init_from, resolve_weights, restore_training_state, save_training_checkpoint
from srn.engine.distributed import DistInfo, all_reduce_mean, cleanup, global_normalizer, init_distributed
from srn.engine.hooks import CalibrationHook, Checkpointer, EvalHook, HookBase, MetricsLogger, NonFiniteGuard, TensorBoardWriter
from srn.errors import TrainingError
from srn.model import SRN
from srn.weights import load_model, save_checkpoint

logger = logging.getLogger(__name__)


def lr_factor(iteration: int, steps_per_epoch: int, lr_steps: tuple[int, ...], gamma: float, warmup_iters: int, warmup_factor: float) -> float:
    """Step schedule by epoch (the paper's 1e-2 / 1e-3 / 1e-4) times an optional linear warmup."""
    epoch = iteration / steps_per_epoch
    factor = gamma ** sum(epoch >= step for step in lr_steps)
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


class Trainer:
    """Trains SRN as docs/design.md, Training recipe, describes. Run one per process (``torchrun``
    starts several).

    :meth:`fit` runs the optimizer steps; the hooks of :meth:`build_hooks`, and any added with
    :meth:`register_hooks`, log, checkpoint, evaluate and guard around them (:mod:`srn.engine.hooks`).
    Each step computes ``criterion(outputs, targets, images)`` and sums the loss dict.

    Args:
        config: the resolved training config.
        base_dir: folder that relative data paths are taken from (the config file's).
        resume: a training checkpoint to continue from, ``"auto"`` for ``output_dir/last.pt`` (when
            there is none, a warning says so and training starts from scratch), or None.

    Raises:
        SRNError: one line: no usable training image, an unreadable or damaged checkpoint, one of
            another model config, and so on.
    """

    def __init__(self, config: TrainingConfig, base_dir: Path | None = None, resume: str | None = None) -> None:
        self.config = config
        self.base_dir = base_dir
        tc = config.train
        self.dist: DistInfo = init_distributed(tc.device)
        self.device = self.dist.device
        if self.device.type == "cpu":
            # Denormal floats (common in freshly initialised heads) are many times slower on CPUs.
            torch.set_flush_denormal(True)
        torch.manual_seed(tc.seed + self.dist.rank)
        if tc.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        self.output_dir = Path(tc.output_dir)
        self.use_amp = tc.amp and (self.device.type == "cuda" or (self.device.type == "cpu" and tc.cpu_bf16))

        self.model = self.build_model()
        self.criterion = self.build_criterion()
        self.ddp_model: nn.Module = self.model
        if self.dist.distributed:
            self.ddp_model = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

        self.dataset = self.build_dataset()
        per_step = tc.batch_per_device * self.dist.world_size
        self.accumulation = max(1, round(tc.batch_size / per_step))
        if self.accumulation * per_step != tc.batch_size and self.dist.is_main:
            logger.warning("effective batch is %d, not %d (%d per device x %d devices x %d accumulation)",
                           self.accumulation * per_step, tc.batch_size, tc.batch_per_device, self.dist.world_size, self.accumulation)
        self.sampler = ResumableSampler(self.dataset, self.dist.world_size, self.dist.rank, tc.seed)
        micro_batches = len(self.sampler) // tc.batch_per_device
        self.steps_per_epoch = micro_batches // self.accumulation
        if self.steps_per_epoch == 0:
            raise TrainingError(
                f"too few training images ({len(self.dataset)}) for one step of {self.accumulation * per_step}; "
                "lower train.batch_size or train.batch_per_device"
            )

        # The held-out list is read now, so that a bad one stops the run before its folder is made.
        self.eval_hook = self.build_eval_hook() if tc.eval_annotations and self.dist.is_main else None
        self.optimizer = self.build_optimizer()
        self.scheduler = self.build_lr_scheduler(self.optimizer)
        # bf16 needs no loss scaling; the scaler is kept (disabled) so checkpoints have one shape.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=False)
        self.iteration = 0
        self.epoch = 0
        self.total_iters = tc.epochs * self.steps_per_epoch
        if tc.max_iters is not None:
            self.total_iters = min(self.total_iters, tc.max_iters)
        # What the hooks read (srn.engine.hooks).
        self.step_losses: dict[str, float] = {}
        self.step_images = 0
        self.metrics: dict[str, Any] | None = None
        self.eval_metrics: dict[str, Any] | None = None
        self.completed = False

        # The run folder is made only now that the model and the data are built: a run that cannot
        # start (no network for the ImageNet weights, no training image) leaves no empty folder.
        if self.dist.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            # Temporary files of writes that a kill interrupted (the finished files are intact).
            stale = remove_stale_partials(self.output_dir)
            if stale:
                logger.info("removed %d temporary file(s) of interrupted writes from %s", len(stale), self.output_dir)

        resume_path = self.output_dir / "last.pt" if resume == "auto" else (Path(resume) if resume else None)
        if resume == "auto" and not (resume_path.exists() or resume_path.is_symlink()):
            if self.dist.is_main:
                logger.warning("no checkpoint at %s; starting from scratch", resume_path)
            resume_path = None
        if resume_path is not None:
            self._resume(resume_path)
        if self.dist.is_main:
            atomic_write_text(self.output_dir / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))
        self.hooks: list[HookBase] = []
        self.register_hooks(self.build_hooks())

    # -- the steps a subclass may replace (detectron2's DefaultTrainer) --------------------------
    def build_model(self) -> nn.Module:
        """The network on the training device: ``model.*`` of the config, ``train.init_from``'s
        weights, channels_last, and the parameters of ``train.freeze`` frozen."""
        tc = self.config.train
        model = SRN.from_config(self.config.model)
        if tc.init_from:
            init_from(model, tc.init_from, strict=tc.init_strict, model_config=self.config.model)
        model.to(self.device)
        if tc.channels_last:
            model.to(memory_format=torch.channels_last)
        if tc.freeze:
            frozen = [p for name, p in model.named_parameters() if name.startswith(tuple(tc.freeze))]
            if not frozen:
                raise TrainingError(f"train.freeze: no parameter name starts with {', '.join(tc.freeze)}")
            for parameter in frozen:
                parameter.requires_grad_(False)
            if not any(p.requires_grad for p in model.parameters()):
                raise TrainingError(f"train.freeze: {', '.join(tc.freeze)} match every parameter; nothing would be trained")
        return model

    def build_criterion(self) -> nn.Module:
        """``criterion(outputs, targets, images) -> loss dict``: :class:`SRNCriterion`, wrapped in
        :class:`TeacherDistillation` when ``train.teacher`` names a checkpoint. Both normalise by
        the positives of the whole global batch."""
        tc = self.config.train
        criterion = SRNCriterion.from_config(self.config.loss, self.config.model)
        criterion.normalizer_fn = global_normalizer
        if not tc.teacher:
            return criterion
        teacher, teacher_config = load_model(resolve_weights(tc.teacher), self.device)
        shared = ("anchor_scales", "anchor_ratio", "stc_levels", "str_levels")
        differ = [key for key in shared if getattr(teacher_config.model, key) != getattr(self.config.model, key)]
        if differ:
            raise TrainingError(f"{tc.teacher}: the teacher's {', '.join(differ)} differ from the model's; "
                                "distillation needs the same anchors and steps")
        if tc.channels_last:
            teacher.to(memory_format=torch.channels_last)
        distillation = DistillationCriterion(cls_weight=tc.distill_weight, reg_weight=tc.distill_weight)
        distillation.normalizer_fn = global_normalizer
        return TeacherDistillation(criterion, teacher, distillation, autocast=self.use_amp, defer_iou=tc.distill_defer_iou)

    def build_dataset(self) -> SeededSamples:
        """The training images of ``data.train`` (:mod:`srn.data.build`), checked before training:
        no usable image is an error, a source with unusable images a warning."""
        dataset = SeededSamples(build_train_dataset(self.config.data, self.base_dir, hold_out=self.config.train.calibrate_fraction),
                                self.config.train.seed)
        for warning in check_training_images(dataset, [spec.annotations for spec in self.config.data.train]):
            if self.dist.is_main:
                logger.warning("%s", warning)
        return dataset

    def build_data_loader(self, epoch: int, start_micro_batch: int) -> DataLoader:
        """The loader of epoch ``epoch`` from its micro-batch ``start_micro_batch`` on (a resume starts
        inside an epoch); the sampler's order depends only on the seed and the epoch."""
        self.sampler.start_at(epoch, start_micro_batch * self.config.train.batch_per_device)
        self.dataset.set_epoch(epoch)
        workers = self.config.data.workers
        return DataLoader(
            self.dataset,
            batch_size=self.config.train.batch_per_device,
            sampler=self.sampler,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            persistent_workers=False,
            prefetch_factor=4 if workers > 0 else None,
        )

    def build_optimizer(self) -> torch.optim.Optimizer:
        """SGD with momentum and weight decay over the parameters that train."""
        tc = self.config.train
        params = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)

    def build_lr_scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """The paper's step schedule by epoch, with the optional linear warmup (:func:`lr_factor`)."""
        tc = self.config.train
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda it: lr_factor(it, self.steps_per_epoch, tuple(tc.lr_steps), tc.lr_gamma, tc.warmup_iters, tc.warmup_factor),
        )

    def build_hooks(self) -> list[HookBase]:
        """The guard on every process; the metrics log, TensorBoard, checkpoints and evaluation on the main one."""
        tc = self.config.train
        hooks: list[HookBase] = [NonFiniteGuard()]
        if self.dist.is_main:
            hooks.append(MetricsLogger(self.output_dir / "metrics.jsonl", tc.log_every))
            if tc.tensorboard:
                hooks.append(TensorBoardWriter(self.output_dir / "tb"))
            if tc.calibrate_fraction > 0:
                hooks.append(self.build_calibration_hook())
            hooks.append(Checkpointer(tc.checkpoint_every))
            if self.eval_hook is not None:
                hooks.append(self.eval_hook)
        return hooks

    def build_calibration_hook(self) -> CalibrationHook:
        """At the end of training: score calibration on the ``train.calibrate_fraction`` of the first
        source's images that training left out (:func:`srn.data.build.held_out_split`)."""
        from srn.data.build import held_out_split, read_records

        records, image_root = read_records(self.config.data.train[0], self.base_dir)
        held = held_out_split(records, self.config.train.calibrate_fraction)[1]
        return CalibrationHook(held, image_root, self.output_dir / "calibration.json", max_size=self.config.train.eval_max_size)

    def build_eval_hook(self) -> EvalHook:
        """Every ``train.eval_every`` steps: the detector on the held-out list ``train.eval_annotations``
        (any ``data`` format, images under ``train.eval_images``), its AP at IoU 0.5 logged to
        ``eval.jsonl``, and the best model kept as ``best.pt``."""
        from srn.data.build import read_records
        from srn.evaluation.evaluator import FaceboxEvaluator

        tc = self.config.train
        if tc.eval_format != "auto":
            check_format(tc.eval_format, "train.eval_format")
        spec = DatasetSpec(format=tc.eval_format, annotations=tc.eval_annotations, images=tc.eval_images)
        records, image_root = read_records(spec, self.base_dir, key="train.eval_annotations")
        evaluator = FaceboxEvaluator.from_records(records, name="train.eval_annotations")
        paths = [image_root / record.image_path for record in records]
        return EvalHook(tc.eval_every, evaluator, paths, self.output_dir / "eval.jsonl", max_size=tc.eval_max_size,
                        image_ids=[record.image_path for record in records])

    def register_hooks(self, hooks: Sequence[HookBase]) -> None:
        """Append ``hooks``; they run after those already registered."""
        for hook in hooks:
            # A proxy, not the trainer: the trainer holds its hooks, and a hook holding the trainer
            # back would keep both (and the model) alive in a reference cycle.
            hook.trainer = weakref.proxy(self)
            self.hooks.append(hook)

    def _call_hooks(self, moment: str) -> None:
        for hook in self.hooks:
            getattr(hook, moment)()

    # ------------------------------------------------------------------------------------------
    def _resume(self, path: Path) -> None:
        self.iteration = restore_training_state(
            path, self.config.model, self.model, optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler
        )
        if self.dist.is_main:
            logger.info("resumed from %s at iteration %d", path, self.iteration)

    def save_checkpoint(self, name: str = "last.pt") -> None:
        """Write the training checkpoint ``output_dir/name`` (everything a resume needs), on the main
        process only; :class:`srn.engine.hooks.Checkpointer` calls it."""
        if not self.dist.is_main:
            return
        save_training_checkpoint(
            self.output_dir / name,
            model={k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(),
            epoch=self.iteration // self.steps_per_epoch,
            iteration=self.iteration,
            config=to_dict(self.config),
        )

    def save_model(self, name: str = "model.pt") -> Path:
        """Write ``output_dir/name``: the weights and the detector config (no training state)."""
        final = self.output_dir / name
        if self.dist.is_main:
            save_checkpoint(self.model, DetectorConfig(self.config.model, self.config.postprocess), final)
        return final

    def _batch(self, images: list[torch.Tensor], targets: list[Target]) -> tuple[torch.Tensor, list[Target]]:
        batch = torch.stack(images).to(self.device, non_blocking=True)  # (N, 3, S, S) uint8
        if self.config.train.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        targets = [{"boxes": t["boxes"].to(self.device), "ignore": t["ignore"].to(self.device)} for t in targets]
        return batch, targets

    def train_step(self, micro_batches: list[tuple[list[torch.Tensor], list[Target]]]) -> dict[str, float]:
        """One optimizer step over ``accumulation`` micro-batches; returns the mean loss parts."""
        self.ddp_model.train()
        if self.config.train.freeze_bn:
            for module in self.model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        parts: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.device))
        for index, (images, targets) in enumerate(micro_batches):
            last = index == len(micro_batches) - 1
            sync = self.ddp_model.no_sync() if (self.dist.distributed and not last) else contextlib.nullcontext()
            with sync:
                if images:
                    batch, targets = self._batch(images, targets)
                    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
                        outputs = self.ddp_model(batch)
                    losses = self.criterion(outputs, targets, batch)
                    loss = sum(losses.values())
                else:
                    # Every image of this micro-batch failed to load: a zero loss still takes part in
                    # DDP's gradient exchange so that the processes stay in step.
                    losses = {}
                    loss = sum(p.sum() * 0 for p in self.model.parameters() if p.requires_grad)
                (loss / len(micro_batches)).backward()
            for key, value in losses.items():
                parts[key] += value.detach() / len(micro_batches)
        if self.config.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.iteration += 1
        result = {k: float(all_reduce_mean(v)) for k, v in parts.items()}
        result["loss"] = sum(result.values())
        return result

    def fit(self) -> Path:
        """Train to the end of the schedule (or ``max_iters``, ``max_minutes``); returns the final model file."""
        tc = self.config.train
        if self.dist.is_main:
            logger.info("%d images, %d steps per epoch, %d steps in all (batch %d = %d x %d devices x %d)",
                        len(self.dataset), self.steps_per_epoch, self.total_iters,
                        tc.batch_per_device * self.dist.world_size * self.accumulation,
                        tc.batch_per_device, self.dist.world_size, self.accumulation)
        deadline = time.monotonic() + 60 * tc.max_minutes if tc.max_minutes else math.inf
        first_iteration, images_loaded = self.iteration, 0
        self._call_hooks("before_train")
        try:
            while self.iteration < self.total_iters:
                self.epoch, step = divmod(self.iteration, self.steps_per_epoch)
                batches = iter(self.build_data_loader(self.epoch, step * self.accumulation))
                while step < self.steps_per_epoch and self.iteration < self.total_iters:
                    micro = [next(batches) for _ in range(self.accumulation)]
                    loaded = sum(len(images) for images, _ in micro)
                    images_loaded += loaded
                    self.step_images = loaded * self.dist.world_size
                    self.step_losses = self.train_step(micro)
                    step += 1
                    self._call_hooks("after_step")
                    if self._out_of_time(deadline):
                        logger.info("train.max_minutes reached at iteration %d", self.iteration)
                        self.total_iters = self.iteration
                self._call_hooks("after_epoch")
            self._check_images_loaded(images_loaded, self.iteration - first_iteration)
            self.completed = True
        finally:
            self._call_hooks("after_train")
        if self.dist.is_main:
            dropped = count_dropped_boxes(self.dataset.dataset)
            if dropped:
                logger.info("%d degenerate boxes were dropped from the training data", dropped)
        cleanup()
        return self.output_dir / "model.pt"

    def _check_images_loaded(self, images: int, steps: int) -> None:
        # Every image may still fail to load when one decoded before training (sizes that contradict
        # the annotation, say): never write a model trained on nothing.
        if steps and not float(all_reduce_mean(torch.tensor(float(images), device=self.device))):
            names = ", ".join(spec.annotations for spec in self.config.data.train)
            raise TrainingError(f"no usable training image in {names}: every image of {steps} steps failed to load")

    def _out_of_time(self, deadline: float) -> bool:
        # Every process must stop at the same iteration, so rank 0's clock decides for all.
        late = torch.tensor(float(time.monotonic() > deadline), device=self.device)
        if self.dist.distributed:
            torch.distributed.broadcast(late, src=0)
        return bool(late)

