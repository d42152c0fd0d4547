"""The trainer built from replaceable steps, its hooks through weak references, distillation as a
criterion, the evaluation hook, and the registries of backbones and annotation formats."""

import gc
import json
import weakref

import pytest
import torch

from srn.config import ConfigError, DatasetSpec, LossConfig, ModelConfig
from srn.criterion import DistillationCriterion, SRNCriterion, TeacherDistillation
from srn.engine.hooks import EvalHook
from srn.engine.trainer import Trainer
from srn.model import SRN
from srn.weights import load_model
from tests.test_train import synthetic_faces, tiny_config  # noqa: F401 - synthetic_faces is a fixture


def test_a_subclass_replaces_one_step(synthetic_faces, tmp_path):
    class AdamTrainer(Trainer):
        def build_optimizer(self):
            return torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-4)

    trainer = AdamTrainer(tiny_config(synthetic_faces, tmp_path / "run", **{"train.max_iters": 1}))
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    assert trainer.scheduler.optimizer is trainer.optimizer
    trainer.fit()
    assert (tmp_path / "run" / "model.pt").is_file()


def test_hooks_hold_the_trainer_weakly(synthetic_faces, tmp_path):
    trainer = Trainer(tiny_config(synthetic_faces, tmp_path / "run"))
    hook = trainer.hooks[0]
    assert hook.trainer.iteration == 0  # the proxy reads the trainer
    alive = weakref.ref(trainer)
    del trainer
    gc.collect()
    assert alive() is None  # no cycle through the hooks keeps it
    with pytest.raises(ReferenceError):
        hook.trainer.iteration


def _tiny_model_config():
    return ModelConfig(backbone="resnet18", width=16, init="scaled")


def test_teacher_distillation_gives_the_old_steps_loss_dict():
    torch.manual_seed(0)
    student, teacher = SRN.from_config(_tiny_model_config()).train(), SRN.from_config(_tiny_model_config()).eval()
    criterion = SRNCriterion.from_config(LossConfig(), _tiny_model_config())
    distillation = DistillationCriterion(cls_weight=0.5, reg_weight=0.5)
    images = torch.randint(0, 255, (2, 3, 96, 96), dtype=torch.uint8)
    targets = [{"boxes": torch.tensor([[20.0, 20.0, 60.0, 70.0]]), "ignore": torch.zeros(1, dtype=torch.bool)}] * 2
    outputs = student(images)
    # The step before: the ground-truth losses, then the teacher's forward and the distillation losses.
    expected = criterion(outputs, targets)
    with torch.no_grad():
        expected.update(distillation(outputs, teacher(images)))
    wrapped = TeacherDistillation(criterion, teacher, distillation)
    got = wrapped(outputs, targets, images)
    assert list(got) == list(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    assert not any(p.requires_grad for p in teacher.parameters())
    wrapped.train()
    assert not teacher.training
    with pytest.raises(ValueError, match="needs the images"):
        wrapped(outputs, targets)


def test_evaluation_hook_logs_ap_keeps_best_and_resumes(synthetic_faces, tmp_path):
    run = tmp_path / "run"
    overrides = {"train.max_iters": 2, "train.eval_annotations": str(synthetic_faces), "train.eval_every": 1,
                 "train.eval_max_size": 128, "train.checkpoint_every": 1}
    trainer = Trainer(tiny_config(synthetic_faces, run, **overrides))
    assert [type(h).__name__ for h in trainer.hooks][-1] == "EvalHook"
    trainer.fit()
    records = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2] and all(0.0 <= r["ap"] <= 1.0 for r in records)
    assert records[0]["best"]
    model, config = load_model(run / "best.pt")
    assert config.model.width == 32
    best = max(r["ap"] for r in records)
    # A resume keeps the records up to its checkpoint and their best value.
    resumed = Trainer(tiny_config(synthetic_faces, run, **{**overrides, "train.max_iters": 3}), resume=str(run / "last.pt"))
    hook = resumed.hooks[-1]
    hook.before_train()
    assert hook.best == best


def test_evaluation_hook_replaces_best_only_when_better(tmp_path):
    class Fixed:
        primary_metric = "ap"

        def __init__(self):
            self.values = iter([0.3, 0.2, 0.5])

        def image_ids(self):
            return []

        def reset(self):
            pass

        def process(self, ids, detections):
            pass

        def evaluate(self):
            return type("R", (), {"metrics": {"ap": next(self.values)}})()

    saved = []

    class FakeTrainer:
        iteration, epoch, total_iters, device = 0, 0, 3, torch.device("cpu")
        config = tiny_config("unused.txt", tmp_path)
        model = SRN.from_config(_tiny_model_config())

        def save_model(self, name):
            saved.append((self.iteration, name))

    hook, trainer = EvalHook(1, Fixed(), [], tmp_path / "eval.jsonl"), FakeTrainer()
    hook.trainer = trainer
    for iteration in (1, 2, 3):
        trainer.iteration = iteration
        hook.after_step()
    assert saved == [(1, "best.pt"), (3, "best.pt")]
    assert [json.loads(line)["best"] for line in (tmp_path / "eval.jsonl").read_text().splitlines()] == [True, False, True]


def test_backbones_are_one_registry():
    from srn.model.backbone import BACKBONES, build_backbone, check_backbone, register_backbone

    assert list(BACKBONES) == ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "mobilenet_v2"]
    for name, spec in BACKBONES.items():
        if name in ("resnet18", "mobilenet_v2"):
            assert tuple(build_backbone(name).out_channels) == spec.out_channels
    with pytest.raises(ConfigError, match="model.backbone: unknown backbone 'vgg16'; choose one of resnet18, "):
        check_backbone("vgg16")
    # A new backbone is one registration: the config takes its name and the network builds on it.
    register_backbone("resnet18_copy", BACKBONES["resnet18"].out_channels)(BACKBONES["resnet18"].build)
    try:
        model = SRN.from_config(ModelConfig(backbone="resnet18_copy", width=16))
        assert model(torch.zeros(1, 3, 64, 64)).anchors
    finally:
        del BACKBONES["resnet18_copy"]


def test_annotation_formats_are_one_registry(synthetic_faces, tmp_path):
    from srn.data.build import read_records
    from srn.data.formats import FORMATS

    assert list(FORMATS) == ["wider", "fddb", "coco"]
    records, root = read_records(DatasetSpec(annotations=str(synthetic_faces)))
    assert root == synthetic_faces.parent and len(records) == 24
    with pytest.raises(ConfigError, match=r"data.train.format: must be one of wider, fddb, coco, got 'voc'"):
        read_records(DatasetSpec(format="voc", annotations=str(synthetic_faces)))
    with pytest.raises(ConfigError, match=r"data.train: an fddb source needs 'images'"):
        read_records(DatasetSpec(format="fddb", annotations=str(synthetic_faces)))
    with pytest.raises(ConfigError, match=r"data.train: a coco source needs 'images'"):
        read_records(DatasetSpec(format="coco", annotations=str(synthetic_faces)))
    with pytest.raises(ConfigError, match=r"data.train: no FDDB ellipse file matches 'none\*.txt'"):
        read_records(DatasetSpec(format="fddb", annotations="none*.txt", images=str(tmp_path)))


def test_a_checkpoint_resumes_into_a_fresh_trainer(synthetic_faces, tmp_path):
    run = tmp_path / "run"
    Trainer(tiny_config(synthetic_faces, run, **{"train.max_iters": 1})).fit()
    resumed = Trainer(tiny_config(synthetic_faces, run, **{"train.max_iters": 2}), resume="auto")
    assert resumed.iteration == 1


def test_a_bad_held_out_list_stops_the_run_before_its_folder_is_made(synthetic_faces, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="train.eval_format: must be one of wider, fddb, coco, got 'voc'"):
        Trainer(tiny_config(synthetic_faces, run, **{"train.eval_annotations": str(synthetic_faces), "train.eval_format": "voc"}))
    assert not run.exists()
