"""The training loop: DDP, bf16 autocast, gradient accumulation, atomic checkpoints, exact resume.

The loop itself only runs optimizer steps; logging, TensorBoard, checkpoints and the non-finite
guard are hooks (:mod:`srn.engine.hooks`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler

from srn.atomic import atomic_write_text, remove_stale_partials
from srn.config import DetectorConfig, ModelConfig, TrainingConfig, to_dict
from srn.criterion import SRNCriterion
from srn.data.build import build_train_dataset, count_dropped_boxes
from srn.data.datasets import FaceDetectionDataset, RepeatDataset, collate
from srn.data.image_io import ImageReadError, read_image
from srn.engine.checkpoint import load_training_checkpoint, save_training_checkpoint, set_rng_state
from srn.engine.distributed import DistInfo, all_reduce_mean, cleanup, global_normalizer, init_distributed
from srn.engine.hooks import Checkpointer, HookBase, MetricsLogger, NonFiniteGuard, TensorBoardWriter
from srn.errors import InputPathError, SRNError, TrainingError, one_line
from srn.model import SRN
from srn.paths import check_input_file
from srn.weights import check_state_dict, read_weights, save_checkpoint

logger = logging.getLogger(__name__)


class SeededSamples(Dataset):
    """Makes the random augmentation of item ``i`` in epoch ``e`` a function of (seed, e, i) alone.

    So a resumed run, or one with another number of workers, sees exactly the same samples.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch * 998_244_353 + index) % (2**63))
            return self.dataset[index]


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` that can start part-way into an epoch (for mid-epoch resume)."""

    start = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.start :])

    def __len__(self) -> int:
        return super().__len__() - self.start


def lr_factor(iteration: int, steps_per_epoch: int, lr_steps: tuple[int, ...], gamma: float, warmup_iters: int, warmup_factor: float) -> float:
    """Step schedule by epoch (the paper's 1e-2 / 1e-3 / 1e-4) times an optional linear warmup."""
    epoch = iteration / steps_per_epoch
    factor = gamma ** sum(epoch >= step for step in lr_steps)
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


def init_from(model: nn.Module, path: str | Path) -> None:
    """Start from an srn checkpoint's weights: every tensor whose name and shape match the model's
    is loaded, the rest keep their initialisation. The same network loads whole (fine-tuning); a
    new head on the same backbone loads the backbone (e.g. a light model from the shipped one)."""
    _, state = read_weights(path)
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise TrainingError(f"{path}: train.init_from has no tensor that matches the model in name and shape")
    model.load_state_dict(matched, strict=False)
    logger.info("train.init_from %s: loaded %d of the model's %d tensors (%d of the file's did not match)",
                path, len(matched), len(own), len(state) - len(matched))


def _sources(dataset: Dataset) -> Iterator[FaceDetectionDataset]:
    """The annotation sources inside ``dataset``, in the order of ``data.train``."""
    if isinstance(dataset, FaceDetectionDataset):
        yield dataset
    elif isinstance(dataset, RepeatDataset | SeededSamples):
        yield from _sources(dataset.dataset)
    elif isinstance(dataset, ConcatDataset):
        for part in dataset.datasets:
            yield from _sources(part)


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
    for name, source in zip(names, _sources(dataset)):
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


_ABSENT = object()


def _shown(value: Any) -> str:
    return "(absent)" if value is _ABSENT else str(value)


class Trainer:
    """Trains SRN as docs/design.md, Training recipe, describes. Run one per process (``torchrun``
    starts several).

    :meth:`fit` runs the optimizer steps; the hooks of :meth:`build_hooks`, and any added with
    :meth:`register_hooks`, log, checkpoint and guard around them (:mod:`srn.engine.hooks`).

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
        if self.dist.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            # Temporary files of writes that a kill interrupted (the finished files are intact).
            stale = remove_stale_partials(self.output_dir)
            if stale:
                logger.info("removed %d temporary file(s) of interrupted writes from %s", len(stale), self.output_dir)

        self.model = SRN.from_config(config.model)
        if tc.init_from:
            init_from(self.model, tc.init_from)
        self.model.to(self.device)
        if tc.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.criterion = SRNCriterion(
            stc_levels=config.model.stc_levels,
            str_levels=config.model.str_levels,
            stc_theta=config.loss.stc_theta,
            step1_thresholds=tuple(config.loss.step1_thresholds),
            step2_thresholds=tuple(config.loss.step2_thresholds),
            allow_low_quality_matches=config.loss.allow_low_quality_matches,
            focal_alpha=config.loss.focal_alpha,
            focal_gamma=config.loss.focal_gamma,
            smooth_l1_beta=config.loss.smooth_l1_beta,
            step1_cls_weight=config.loss.step1_cls_weight,
            step1_reg_weight=config.loss.step1_reg_weight,
            step2_cls_weight=config.loss.step2_cls_weight,
            step2_reg_weight=config.loss.step2_reg_weight,
            stc_filter_positives=config.loss.stc_filter_positives,
        )
        # Normalise by the positives of the whole global batch.
        self.criterion.normalizer_fn = global_normalizer
        self.ddp_model: nn.Module = self.model
        if self.dist.distributed:
            self.ddp_model = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

        self.dataset = SeededSamples(build_train_dataset(config.data, base_dir), tc.seed)
        for warning in check_training_images(self.dataset, [spec.annotations for spec in config.data.train]):
            if self.dist.is_main:
                logger.warning("%s", warning)
        per_step = tc.batch_per_device * self.dist.world_size
        self.accumulation = max(1, round(tc.batch_size / per_step))
        if self.accumulation * per_step != tc.batch_size and self.dist.is_main:
            logger.warning("effective batch is %d, not %d (%d per device x %d devices x %d accumulation)",
                           self.accumulation * per_step, tc.batch_size, tc.batch_per_device, self.dist.world_size, self.accumulation)
        self.sampler = ResumableSampler(self.dataset, num_replicas=self.dist.world_size, rank=self.dist.rank, shuffle=True, seed=tc.seed, drop_last=True)
        micro_batches = len(self.sampler) // tc.batch_per_device
        self.steps_per_epoch = micro_batches // self.accumulation
        if self.steps_per_epoch == 0:
            raise TrainingError(
                f"too few training images ({len(self.dataset)}) for one step of {self.accumulation * per_step}; "
                "lower train.batch_size or train.batch_per_device"
            )

        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda it: lr_factor(it, self.steps_per_epoch, tuple(tc.lr_steps), tc.lr_gamma, tc.warmup_iters, tc.warmup_factor),
        )
        self.use_amp = tc.amp and self.device.type == "cuda"
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
        self.completed = False

        resume_path = self.output_dir / "last.pt" if resume == "auto" else (Path(resume) if resume else None)
        if resume == "auto" and not (resume_path.exists() or resume_path.is_symlink()):
            if self.dist.is_main:
                logger.warning("no checkpoint at %s; starting from scratch", resume_path)
            resume_path = None
        if resume_path is not None:
            self._resume(resume_path)
        elif self.dist.is_main:
            (self.output_dir / "metrics.jsonl").unlink(missing_ok=True)
        if self.dist.is_main:
            atomic_write_text(self.output_dir / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))
        self.hooks: list[HookBase] = []
        self.register_hooks(self.build_hooks())

    def build_hooks(self) -> list[HookBase]:
        """The guard on every process; the metrics log, TensorBoard and checkpoints on the main one."""
        tc = self.config.train
        hooks: list[HookBase] = [NonFiniteGuard()]
        if self.dist.is_main:
            hooks.append(MetricsLogger(self.output_dir / "metrics.jsonl", tc.log_every))
            if tc.tensorboard:
                hooks.append(TensorBoardWriter(self.output_dir / "tb"))
            hooks.append(Checkpointer(tc.checkpoint_every))
        return hooks

    def register_hooks(self, hooks: Sequence[HookBase]) -> None:
        """Append ``hooks``; they run after those already registered."""
        for hook in hooks:
            hook.trainer = self
            self.hooks.append(hook)

    def _call_hooks(self, moment: str) -> None:
        for hook in self.hooks:
            getattr(hook, moment)()

    # ------------------------------------------------------------------------------------------
    def _resume(self, path: Path) -> None:
        state = load_training_checkpoint(path)
        self._check_same_model(path, state["config"])
        try:
            check_state_dict(self.model, state["model"], str(path))
            self.model.load_state_dict(state["model"], strict=True)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"])
        except SRNError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
            raise TrainingError(f"{path}: the training state cannot be restored ({one_line(exc)[:200]})") from None
        self.iteration = int(state["iteration"])
        if self.dist.is_main:
            # Drop log lines written after the checkpoint: they are about to be redone. A line that a
            # kill cut short is dropped too.
            log = self.output_dir / "metrics.jsonl"
            if log.is_file():
                kept = [line for line in log.read_text().splitlines() if _logged_iteration(line) <= self.iteration]
                atomic_write_text(log, "".join(f"{line}\n" for line in kept))
            logger.info("resumed from %s at iteration %d", path, self.iteration)

    def _check_same_model(self, path: Path, saved_config: Mapping[str, Any]) -> None:
        """A resumed run continues the same network: every model key but ``pretrained`` (only the
        initialisation, which the checkpoint replaces) must be what the checkpoint was trained with."""
        saved = saved_config.get("model")
        if not isinstance(saved, Mapping):
            raise TrainingError(f"{path}: damaged training checkpoint (its config has no model section)")
        # Keys added to ModelConfig after the checkpoint was written count with their defaults.
        saved = {**to_dict(ModelConfig()), **saved}
        current = to_dict(self.config.model)
        keys = [*current, *(key for key in saved if key not in current)]
        diffs = [
            f"model.{key}: checkpoint {_shown(saved.get(key, _ABSENT))}, config {_shown(current.get(key, _ABSENT))}"
            for key in keys
            if key != "pretrained" and saved.get(key, _ABSENT) != current.get(key, _ABSENT)
        ]
        if diffs:
            raise TrainingError(f"{path}: the checkpoint was trained with another model ({'; '.join(diffs)})")

    def _save(self, name: str = "last.pt") -> None:
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

    def save_model(self) -> Path:
        """Write ``model.pt``: the weights and the detector config (no training state)."""
        final = self.output_dir / "model.pt"
        if self.dist.is_main:
            save_checkpoint(self.model, DetectorConfig(self.config.model, self.config.postprocess), final)
        return final

    def _batch(self, images: list[torch.Tensor], targets: list[dict]) -> tuple[torch.Tensor, list[dict]]:
        batch = torch.stack(images).to(self.device, non_blocking=True)  # (N, 3, S, S) uint8
        if self.config.train.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        targets = [{"boxes": t["boxes"].to(self.device), "ignore": t["ignore"].to(self.device)} for t in targets]
        return batch, targets

    def _loader(self, epoch: int, start_micro_batch: int) -> DataLoader:
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)
        self.sampler.start = start_micro_batch * self.config.train.batch_per_device
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

    def train_step(self, micro_batches: list[tuple[list[torch.Tensor], list[dict]]]) -> dict[str, float]:
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
                    losses = self.criterion(outputs, targets)
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
                batches = iter(self._loader(self.epoch, step * self.accumulation))
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


def _logged_iteration(line: str) -> float:
    """The iteration of a metrics.jsonl line; infinity for a line that does not parse."""
    try:
        record = json.loads(line)
    except ValueError:
        return math.inf
    return float(record.get("iteration", 0)) if isinstance(record, dict) else math.inf
