"""The training engine: gradients, DDP equivalence, kill-and-resume, non-finite stop, overfitting."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.testing import assert_close

from srn.config import ConfigError, TrainingConfig, apply_overrides, from_dict, load_yaml
from srn.engine.checkpoint import load_training_checkpoint
from srn.engine.distributed import cleanup
from srn.engine.hooks import HookBase, MetricsLogger
from srn.engine.trainer import Trainer, TrainingError

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "srn" / "configs"


def write_synthetic_faces(folder: Path, count: int = 24, size: int = 128, seed: int = 0) -> Path:
    """``count`` images of noise with one to three bright rectangles as faces, and their WIDER-style
    list (image path, count, ``x y w h``), written into ``folder``; returns the list's path."""
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(count):
        image = torch.randint(0, 80, (size, size, 3), dtype=torch.uint8, generator=generator)
        faces = []
        for _ in range(int(torch.randint(1, 4, (1,), generator=generator))):
            w, h = (int(v) for v in torch.randint(16, 48, (2,), generator=generator))
            x, y = int(torch.randint(0, size - w, (1,), generator=generator)), int(torch.randint(0, size - h, (1,), generator=generator))
            image[y : y + h, x : x + w] = torch.tensor([230, 200, 170], dtype=torch.uint8)
            faces.append(f"{x} {y} {w} {h}")
        name = f"face_{index:03d}.png"
        Image.fromarray(image.numpy()).save(folder / name)
        lines += [name, str(len(faces)), *faces]
    labels = folder / "labels.txt"
    labels.write_text("\n".join(lines) + "\n")
    return labels


@pytest.fixture(scope="session")
def synthetic_faces(tmp_path_factory) -> Path:
    """A small synthetic WIDER-style training list, so that the trainer's tests run on any checkout."""
    return write_synthetic_faces(tmp_path_factory.mktemp("synthetic_faces"))


def tiny_config(labels, output_dir, **overrides):
    """A small SRN (ResNet-18, width 32) on the synthetic faces of ``labels`` at 96 px."""
    base = {
        "model": {"backbone": "resnet18", "width": 32},
        "data": {
            "train": [{"format": "wider", "annotations": str(labels)}],
            "size": 96,
            "workers": 0,
            "photometric": False,
        },
        "train": {"output_dir": str(output_dir), "batch_size": 4, "batch_per_device": 2, "epochs": 1,
                  "log_every": 1, "checkpoint_every": 1, "tensorboard": False, "device": "cpu"},
    }
    config = from_dict(TrainingConfig, base)
    return apply_overrides(config, [f"{k}={v}" for k, v in overrides.items()])


def test_presets_load_and_unknown_keys_are_refused():
    names = sorted(p.stem for p in PRESETS.glob("*.yaml"))
    # The paper's network, its ablations and baseline, and the light models; every preset loads.
    assert {"ablation_stc", "ablation_stc_str", "ablation_str", "retinanet_r50_widerface", "srn_mobilenet_v2", "srn_r50_widerface"} <= set(names)
    for name in names:
        load_yaml(TrainingConfig, PRESETS / f"{name}.yaml")
    baseline = load_yaml(TrainingConfig, PRESETS / "retinanet_r50_widerface.yaml")
    assert (baseline.model.stc_levels, baseline.model.str_levels, baseline.model.rfe) == ((), (), False)
    paper = load_yaml(TrainingConfig, PRESETS / "srn_r50_widerface.yaml")
    assert (paper.train.lr, paper.train.lr_steps, paper.train.epochs, paper.train.batch_size) == (0.01, (100, 120), 130, 32)
    assert (paper.loss.step1_thresholds, paper.loss.step2_thresholds, paper.loss.stc_theta) == ((0.3, 0.7), (0.4, 0.5), 0.99)
    with pytest.raises(ConfigError, match="unknown config key 'train.epoch'; did you mean 'train.epochs'"):
        load_yaml(TrainingConfig, PRESETS / "srn_r50_widerface.yaml", ["train.epoch=3"])
    with pytest.raises(ConfigError, match="unknown config key 'train.learning_rate'; valid keys: amp, "):
        load_yaml(TrainingConfig, PRESETS / "srn_r50_widerface.yaml", ["train.learning_rate=0.1"])
    with pytest.raises(ConfigError, match="train.epochs: expected an integer"):
        load_yaml(TrainingConfig, PRESETS / "srn_r50_widerface.yaml", ["train.epochs=many"])


def test_every_parameter_gets_a_gradient(synthetic_faces, tmp_path):
    for levels in ({}, {"model.stc_levels": "[]", "model.str_levels": "[]", "model.rfe": "false"}):
        trainer = Trainer(tiny_config(synthetic_faces, tmp_path / "g", **levels))
        batch = torch.randint(0, 255, (2, 3, 256, 256), dtype=torch.uint8)
        outputs = trainer.model(batch)
        # One face exactly on an anchor of every level, so both steps have positives everywhere.
        faces = torch.stack([anchors[len(anchors) // 2] for anchors in outputs.anchors])
        targets = [{"boxes": faces, "ignore": torch.zeros(6, dtype=torch.bool)}] * 2
        sum(trainer.criterion(outputs, targets).values()).backward()
        missing = [n for n, p in trainer.model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
        assert missing == [], missing


def test_face_less_image_trains(synthetic_faces, tmp_path):
    trainer = Trainer(tiny_config(synthetic_faces, tmp_path / "f"))
    image = torch.randint(0, 255, (3, 96, 96), dtype=torch.uint8)
    empty = {"boxes": torch.zeros(0, 4), "ignore": torch.zeros(0, dtype=torch.bool)}
    parts = trainer.train_step([([image, image], [empty, empty])])
    assert parts["loss_step1_reg"] == 0.0 and parts["loss_step2_reg"] == 0.0
    assert parts["loss_step2_cls"] > 0 and trainer.iteration == 1


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world_size, port, config, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    trainer = Trainer(config)
    for _ in range(2):
        trainer.train_step([next(iter(trainer.build_data_loader(0, trainer.iteration)))])
    if rank == 0:
        torch.save({k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, out)
    cleanup()


@pytest.mark.slow
def test_two_ddp_processes_match_one_process(synthetic_faces, tmp_path):
    # Global batch 4: two processes x 2 images, against one process x 4 images.
    ddp = tiny_config(synthetic_faces, tmp_path / "ddp", **{"train.batch_per_device": 2, "train.batch_size": 4})
    mp.spawn(_ddp_worker, args=(2, _free_port(), ddp, tmp_path / "ddp.pt"), nprocs=2, join=True)
    single = Trainer(tiny_config(synthetic_faces, tmp_path / "one", **{"train.batch_per_device": 4, "train.batch_size": 4}))
    initial = {k: v.detach().clone() for k, v in single.model.state_dict().items()}
    for _ in range(2):
        single.train_step([next(iter(single.build_data_loader(0, single.iteration)))])
    got = torch.load(tmp_path / "ddp.pt", weights_only=True)
    moved = 0
    for name, value in single.model.state_dict().items():
        if not value.is_floating_point():
            continue
        # Compare the updates: both runs start from the same weights. Float summation order
        # differs between 1 and 2 processes: the tiny backbone updates (~1e-7) agree to ~0.5%; a wrong
        # normaliser or batch split would be off by O(1).
        update, ddp_update = value - initial[name], got[name] - initial[name]
        scale = update.norm()
        if scale > 0:
            moved += 1
            assert float((ddp_update - update).norm()) <= 1e-2 * float(scale) + 1e-6 * float(value.norm()), name
        else:
            assert_close(got[name], value, msg=name)
    assert moved > 100  # the steps did move the weights


def _train_command(config_path, *extra):
    return [sys.executable, "-m", "srn", "train", str(config_path), *extra]


def _write_config(config, path):
    import yaml

    from srn.config import to_dict

    path.write_text(yaml.safe_dump(to_dict(config)))
    return path


def _losses(run_dir):
    """{iteration: loss} of a run's metrics.jsonl, whose records must be in order, each iteration once."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    iterations = [r["iteration"] for r in records]
    assert iterations == sorted(set(iterations)), iterations
    return {r["iteration"]: r["loss"] for r in records}


# Trains like `srn train CONFIG`, and SIGKILLs itself right after iteration K (argv[2]) is logged:
# registered last, the hook runs after the metrics log and the checkpointer of that step.
TRAIN_THEN_KILL = """
import os, signal, sys
from srn.config import TrainingConfig, load_yaml
from srn.engine.hooks import HookBase, MetricsLogger
from srn.engine.trainer import Trainer

class KillAfter(HookBase):
    def after_step(self):
        if self.trainer.iteration == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)

trainer = Trainer(load_yaml(TrainingConfig, sys.argv[1]))
trainer.register_hooks([KillAfter()])
trainer.fit()
"""


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_losses(synthetic_faces, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    # A checkpoint every 2 steps and a kill after step 5: the run loses step 5, whose loss is
    # already logged; the resume must drop that line and redo the step from the checkpoint of step 4.
    overrides = {"train.max_iters": 8, "train.epochs": 2, "train.deterministic": "true", "train.checkpoint_every": 2}
    straight = _write_config(tiny_config(synthetic_faces, tmp_path / "straight", **overrides), tmp_path / "straight.yaml")
    subprocess.run(_train_command(straight), check=True, env=env, capture_output=True, timeout=600)
    expected = _losses(tmp_path / "straight")
    assert sorted(expected) == list(range(1, 9))

    run_dir = tmp_path / "killed"
    killed = _write_config(tiny_config(synthetic_faces, run_dir, **overrides), tmp_path / "killed.yaml")
    proc = subprocess.run([sys.executable, "-c", TRAIN_THEN_KILL, str(killed), "5"], env=env, capture_output=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert sorted(_losses(run_dir)) == [1, 2, 3, 4, 5]
    assert load_training_checkpoint(run_dir / "last.pt")["iteration"] == 4
    assert not (run_dir / "model.pt").exists()

    result = subprocess.run(_train_command(killed, "--resume"), env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stderr and "at iteration 4" in result.stderr
    got = _losses(run_dir)
    assert sorted(got) == list(range(1, 9))  # step 5 logged once, by the resumed run
    for iteration in range(1, 9):
        assert got[iteration] == pytest.approx(expected[iteration], rel=1e-6, abs=1e-9), iteration


def test_a_resumed_metrics_log_keeps_the_records_up_to_the_checkpoint(tmp_path):
    log = tmp_path / "metrics.jsonl"
    # Five records and the start of a sixth that a kill cut short.
    log.write_text("".join(json.dumps({"iteration": i, "loss": 1.0 / i}) + "\n" for i in range(1, 6)) + '{"iteration": 6, "lo')
    logger = MetricsLogger(log, period=1)
    logger.keep_records_until(3)
    assert [json.loads(line)["iteration"] for line in log.read_text().splitlines()] == [1, 2, 3]
    logger.keep_records_until(0)  # a run from scratch starts a new log
    assert not log.exists()


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(synthetic_faces, tmp_path):
    trainer = Trainer(tiny_config(synthetic_faces, tmp_path / "nan", **{"train.max_iters": 3}))
    trainer.train_step([next(iter(trainer.build_data_loader(0, 0)))])
    trainer.save_checkpoint()
    before = (tmp_path / "nan" / "last.pt").read_bytes()
    original = trainer.criterion.forward

    def poisoned(outputs, targets, images=None):
        losses = original(outputs, targets, images)
        losses["loss_step2_cls"] = losses["loss_step2_cls"] * float("nan")
        return losses

    trainer.criterion.forward = poisoned
    with pytest.raises(TrainingError, match=r"non-finite loss at iteration 2 \(.*loss_step2_cls=nan.*\); training stopped, the last good checkpoint .*last.pt is intact"):
        trainer.fit()
    assert (tmp_path / "nan" / "last.pt").read_bytes() == before


class _Recorder(HookBase):
    def __init__(self):
        self.calls = []

    def before_train(self):
        self.calls.append(("before_train", self.trainer.iteration))

    def after_step(self):
        self.calls.append(("after_step", self.trainer.iteration, sorted(self.trainer.step_losses), self.trainer.step_images))

    def after_epoch(self):
        self.calls.append(("after_epoch", self.trainer.iteration))

    def after_train(self):
        self.calls.append(("after_train", self.trainer.iteration, self.trainer.completed))


def test_checkpoint_holds_everything_and_is_a_weights_file(synthetic_faces, tmp_path):
    from srn.weights import load_model

    trainer = Trainer(tiny_config(synthetic_faces, tmp_path / "c", **{"train.max_iters": 2}))
    assert [type(h).__name__ for h in trainer.hooks] == ["NonFiniteGuard", "MetricsLogger", "Checkpointer"]
    recorder = _Recorder()
    trainer.register_hooks([recorder])
    final = trainer.fit()
    losses = ["loss", "loss_step1_cls", "loss_step1_reg", "loss_step2_cls", "loss_step2_reg"]
    # The run stops inside the first epoch (6 steps of 4 images), which ends the epoch too.
    assert recorder.calls == [("before_train", 0), ("after_step", 1, losses, 4), ("after_step", 2, losses, 4),
                              ("after_epoch", 2), ("after_train", 2, True)]
    state = load_training_checkpoint(tmp_path / "c" / "last.pt")
    assert {"model", "optimizer", "scheduler", "scaler", "epoch", "iteration", "rng", "config"} <= set(state)
    assert state["iteration"] == 2 and state["config"]["model"]["backbone"] == "resnet18"
    assert (tmp_path / "c" / "config.yaml").is_file()
    model, config = load_model(final)
    assert config.model.width == 32
    load_model(tmp_path / "c" / "last.pt")


OVERFIT_IMAGES = ["kaggle_face_mask_853/maksssksksss0.jpg", "kaggle_face_mask_853/maksssksksss9.jpg",
                  "kaggle_face_mask_853/maksssksksss15.jpg", "kaggle_face_mask_853/maksssksksss18.jpg"]


@pytest.mark.slow
def test_overfits_a_few_real_images(shared_dir, tmp_path):
    from torchvision.ops import box_iou

    from srn.data.datasets import parse_wider_file
    from srn.inference import Detector

    faces = shared_dir / "data" / "faces"
    records = {r.image_path: r for r in parse_wider_file(faces / "labels.txt")}
    lines = []
    for name in OVERFIT_IMAGES:
        boxes = records[name].boxes.tolist()
        lines += [str(faces / name), str(len(boxes))] + [f"{x1} {y1} {x2 - x1} {y2 - y1}" for x1, y1, x2, y2 in boxes]
    (tmp_path / "few.txt").write_text("\n".join(lines) + "\n")
    config = from_dict(TrainingConfig, {
        "model": {"backbone": "mobilenet_v2", "width": 32, "init": "scaled",
                  "pretrained": str(shared_dir / "weights" / "mobilenet_v2-b0353104.pth")},
        "data": {"train": [{"annotations": str(tmp_path / "few.txt"), "images": "/"}], "size": 192, "zoom_out": [],
                 "crop_scale": [], "flip_prob": 0.0, "photometric": False, "workers": 0},
        "loss": {"allow_low_quality_matches": True},
        "train": {"output_dir": str(tmp_path / "run"), "batch_size": 4, "batch_per_device": 4, "epochs": 60,
                  "lr": 0.002, "lr_steps": [50], "log_every": 1, "tensorboard": False, "device": "cpu",
                  "checkpoint_every": 1000},
    })
    trainer = Trainer(config)
    trainer.fit()
    losses = _losses(tmp_path / "run")
    first, last = losses[1], sum(losses[i] for i in range(56, 61)) / 5
    assert last < 0.25 * first, (first, last)

    detector = Detector(model=trainer.model, config=None, device="cpu", score_thresh=0.3)
    found = total = 0
    for index in range(len(trainer.dataset)):
        image, target = trainer.dataset.dataset[index]
        detections = detector.detect(image)
        total += len(target["boxes"])
        if len(detections):
            found += int((box_iou(target["boxes"], detections.boxes).max(dim=1).values >= 0.5).sum())
    assert total == 9 and found / total >= 0.8, (found, total)
