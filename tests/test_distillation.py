"""Distillation into a depthwise-separable head: the factorisation, the loss, and the trainer options."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from srn.config import ConfigError, DetectorConfig, ModelConfig
from srn.criterion import DistillationCriterion
from srn.engine.checkpoint import init_from
from srn.engine.trainer import Trainer, TrainingError
from srn.losses import soft_focal_loss
from srn.model import SRN
from srn.model.layers import factor_separable, separable_from_dense
from srn.model.outputs import SRNOutputs
from srn.weights import load_model, save_checkpoint
from tests.test_train import synthetic_faces, tiny_config  # noqa: F401 - synthetic_faces is a fixture


def test_factor_separable_is_exact_for_a_rank_one_kernel():
    """A kernel that is a depthwise-then-pointwise product comes back as that product: the two
    layers compute the dense convolution."""
    torch.manual_seed(0)
    depthwise, pointwise = torch.randn(6, 1, 3, 3), torch.randn(5, 6, 1, 1)
    dense = pointwise * depthwise.permute(1, 0, 2, 3)  # (5, 6, 1, 1) * (1, 6, 3, 3) -> (5, 6, 3, 3)
    d, p = factor_separable(dense)
    x = torch.randn(2, 6, 11, 13)
    separable = F.conv2d(F.conv2d(x, d, padding=1, groups=6), p)
    assert_close(separable, F.conv2d(x, dense, padding=1), atol=1e-4, rtol=1e-4)


def test_factor_separable_is_the_best_rank_one_slice():
    """Per input channel the product is the first singular pair (Eckart-Young): its error equals the
    norm of the remaining singular values."""
    torch.manual_seed(1)
    dense = torch.randn(4, 3, 3, 3)
    d, p = factor_separable(dense)
    for i in range(3):
        product = p[:, i, 0, 0, None] * d[i, 0].reshape(1, 9)  # (4, 9)
        s = torch.linalg.svdvals(dense[:, i].reshape(4, 9))
        assert_close((dense[:, i].reshape(4, 9) - product).norm(), s[1:].norm(), atol=1e-5, rtol=1e-5)


def tiny_config_model(separable: bool) -> ModelConfig:
    return ModelConfig(backbone="resnet18", width=16, separable_head=separable)


def _tiny(separable: bool) -> SRN:
    return SRN.from_config(tiny_config_model(separable))


def test_separable_model_from_a_rank_one_dense_head_computes_the_same_outputs(tmp_path):
    """When every dense head kernel is a separable product, init_from turns the dense model into a
    separable one with the same outputs, and leaves no separable tensor at its initialisation."""
    torch.manual_seed(2)
    dense = _tiny(False).eval()
    state = dense.state_dict()
    for name, tensor in state.items():
        if name.startswith("head.") and tensor.dim() == 4 and tensor.shape[-2:] != (1, 1):
            c_out, c_in, k, l = tensor.shape
            if c_in == c_out and name.split(".")[-2] == "2":  # the RFE's k x l: depthwise in the separable model
                tensor.copy_(torch.diag_embed(torch.randn(c_in, k, l).permute(1, 2, 0)).permute(2, 3, 0, 1))
            else:
                tensor.copy_(torch.randn(c_out, c_in, 1, 1) * torch.randn(1, c_in, k, l))
    dense.load_state_dict(state)
    save_checkpoint(dense, DetectorConfig(tiny_config_model(False)), tmp_path / "dense.pt")
    separable = _tiny(True).eval()
    derived = separable_from_dense(state, separable.state_dict())
    unmatched = {k for k, v in separable.state_dict().items() if k not in state or state[k].shape != v.shape}
    assert unmatched == set(derived)
    init_from(separable, tmp_path / "dense.pt")
    x = torch.rand(1, 3, 96, 128) * 255
    with torch.no_grad():
        a, b = dense(x), separable(x)
    for level in range(6):
        assert_close(b.step2_logits[level], a.step2_logits[level], atol=2e-4, rtol=1e-4)
        assert_close(b.step2_deltas[level], a.step2_deltas[level], atol=2e-4, rtol=1e-4)


def test_soft_focal_loss_values():
    logits = torch.tensor([0.0, 2.0, -1.0, 3.0])
    targets = torch.tensor([0.5, 0.2, 0.0, 1.0])
    p = logits.sigmoid()
    bce = -(targets * p.log() + (1 - targets) * (1 - p).log())
    entropy = torch.tensor([math.log(2), -(0.2 * math.log(0.2) + 0.8 * math.log(0.8)), 0.0, 0.0])
    expected = (bce - entropy) * (p - targets).abs() ** 2
    assert_close(soft_focal_loss(logits, targets), expected)
    assert float(soft_focal_loss(logits, targets)[0]) == 0.0  # prediction equals target
    assert_close(soft_focal_loss(logits, targets, gamma=0.0), bce - entropy)


def _outputs(model, x):
    with torch.no_grad():
        return model(x)


def test_distillation_is_zero_against_itself_and_pulls_a_student_towards_the_teacher():
    torch.manual_seed(3)
    teacher, student = _tiny(False).eval(), _tiny(True).eval()
    with torch.no_grad():  # a teacher with opinions: scores and boxes that vary over the image
        teacher.head.cls_pred.weight.normal_(std=0.5)
        teacher.head.box_pred.weight.normal_(std=0.5)
        teacher.head.cls_pred.bias.zero_()
    x = torch.rand(2, 3, 96, 128) * 255
    criterion = DistillationCriterion()
    same = criterion(_outputs(teacher, x), _outputs(teacher, x))
    assert float(same["loss_distill_cls"]) == 0.0 and float(same["loss_distill_reg"]) == 0.0
    target = _outputs(teacher, x)
    optimizer = torch.optim.SGD(student.parameters(), lr=1e-3)
    history = []
    for _ in range(8):
        losses = criterion(student(x), target)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        history.append((float(losses["loss_distill_cls"].detach()), float(losses["loss_distill_reg"].detach())))
    # Gradient steps on the loss make both parts fall at every step.
    for (cls_before, reg_before), (cls_after, reg_after) in zip(history, history[1:]):
        assert cls_after < cls_before and reg_after < reg_before, history


def test_regression_follows_only_what_the_teacher_scores():
    """Deltas count where the teacher's final score is at least reg_min_score, weighted by it."""
    anchors = [torch.zeros(3, 4)]
    teacher_logits = torch.tensor([[4.0, -4.0, 0.0]])  # scores 0.982, 0.018, 0.5
    zeros = torch.zeros(1, 3, 4)
    student_deltas = torch.tensor([[[1.0, 0, 0, 0], [5.0, 0, 0, 0], [2.0, 0, 0, 0]]])
    teacher = (None,), (None,), [teacher_logits], [zeros], anchors
    student = (None,), (None,), [teacher_logits.clone()], [student_deltas], anchors
    losses = DistillationCriterion(reg_min_score=0.3, smooth_l1_beta=0.0)(SRNOutputs(*map(list, student)), SRNOutputs(*map(list, teacher)))
    scores = teacher_logits.sigmoid()[0]
    # Two anchors at >= 0.5: the normaliser. |1| * 0.982 + |2| * 0.5 (the 0.018 one is left out).
    assert_close(losses["loss_distill_reg"], (scores[0] * 1.0 + scores[2] * 2.0) / 2)
    assert float(losses["loss_distill_cls"]) == 0.0


def test_deferred_anchors_leave_both_distillation_losses():
    """An anchor in ``defer`` adds nothing: neither its score nor its deltas are pulled."""
    anchors = [torch.zeros(3, 4)]
    teacher_logits = torch.tensor([[4.0, 4.0, 0.0]])  # scores 0.982, 0.982, 0.5
    student_logits = torch.tensor([[-4.0, 4.0, 0.0]])  # the first anchor disagrees
    zeros = torch.zeros(1, 3, 4)
    student_deltas = torch.tensor([[[1.0, 0, 0, 0], [3.0, 0, 0, 0], [2.0, 0, 0, 0]]])
    teacher = (None,), (None,), [teacher_logits], [zeros], anchors
    student = (None,), (None,), [student_logits], [student_deltas], anchors
    criterion = DistillationCriterion(reg_min_score=0.3, smooth_l1_beta=0.0)
    whole = criterion(SRNOutputs(*map(list, student)), SRNOutputs(*map(list, teacher)))
    deferred = criterion(SRNOutputs(*map(list, student)), SRNOutputs(*map(list, teacher)),
                         defer=torch.tensor([[True, False, False]]))
    scores = teacher_logits.sigmoid()[0]
    # Three teacher scores >= 0.5 (the normaliser) either way; the first anchor's |1| leaves the sum.
    assert_close(whole["loss_distill_reg"], (scores[0] * 1.0 + scores[1] * 3.0 + scores[2] * 2.0) / 3)
    assert_close(deferred["loss_distill_reg"], (scores[1] * 3.0 + scores[2] * 2.0) / 3)
    assert float(whole["loss_distill_cls"]) > 0.1
    # The other two anchors agree exactly, so the cls loss was the first anchor's alone.
    assert float(deferred["loss_distill_cls"]) == 0.0


def test_teacher_distillation_defers_to_the_labels_near_a_face():
    """defer_iou: the anchors at IoU >= 0.5 with a box (a face or an ignore region) are left out."""
    from srn.criterion import TeacherDistillation, _near_labels
    anchors = [torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 20], [50, 50, 60, 60]]), torch.tensor([[100.0, 100, 140, 140]])]
    targets = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [100, 100, 140, 120]]), "ignore": torch.tensor([False, True])},
               {"boxes": torch.zeros(0, 4)}]
    near = _near_labels(anchors, targets, 0.5)
    # IoUs: 1.0, 0.5, 0, 0.5 (the ignore region) in the first image; nothing in the second.
    assert near.tolist() == [[True, True, False, True], [False, False, False, False]]
    assert _near_labels(anchors, targets, 0.6).tolist()[0] == [True, False, False, False]

    class Recording(DistillationCriterion):
        def forward(self, student, teacher, defer=None):
            self.defer = defer
            return super().forward(student, teacher, defer)

    torch.manual_seed(0)
    teacher, student = _tiny(False).eval(), _tiny(False).eval()
    x = torch.rand(2, 3, 96, 96) * 255
    outputs = student(x)
    boxes = [{"boxes": torch.tensor([[20.0, 20.0, 60.0, 70.0]]), "ignore": torch.zeros(1, dtype=torch.bool)},
             {"boxes": torch.zeros(0, 4), "ignore": torch.zeros(0, dtype=torch.bool)}]
    recording = Recording()
    TeacherDistillation(lambda o, t: {}, teacher, recording, defer_iou=0.3)(outputs, boxes, x)
    assert torch.equal(recording.defer, _near_labels(outputs.anchors, boxes, 0.3))
    assert int(recording.defer[0].sum()) > 0 and int(recording.defer[1].sum()) == 0
    TeacherDistillation(lambda o, t: {}, teacher, recording)(outputs, boxes, x)
    assert recording.defer is None


def test_trainer_distils_and_keeps_frozen_parameters(synthetic_faces, tmp_path):
    teacher = _tiny(False)
    save_checkpoint(teacher, DetectorConfig(tiny_config_model(False)), tmp_path / "teacher.pt")
    config = tiny_config(synthetic_faces, tmp_path / "run", **{
        "model.width": 16, "model.separable_head": "true", "train.teacher": str(tmp_path / "teacher.pt"),
        "train.init_from": str(tmp_path / "teacher.pt"), "train.freeze": "[backbone, fpn]",
    })
    trainer = Trainer(config)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    image = torch.randint(0, 255, (3, 96, 96), dtype=torch.uint8)
    face = {"boxes": torch.tensor([[20.0, 20.0, 60.0, 70.0]]), "ignore": torch.zeros(1, dtype=torch.bool)}
    parts = trainer.train_step([([image, image], [face, face])])
    assert {"loss_distill_cls", "loss_distill_reg"} <= set(parts) and parts["loss_distill_cls"] > 0
    after = trainer.model.state_dict()
    for name, value in after.items():
        if name.startswith(("backbone.", "fpn.")):
            assert torch.equal(value, before[name]), name
    assert not torch.equal(after["head.cls_tower.0.1.weight"], before["head.cls_tower.0.1.weight"])
    # The teacher does not learn.
    assert all(not p.requires_grad for p in trainer.criterion.teacher.parameters())
    torch.testing.assert_close(trainer.criterion.teacher.state_dict()["head.cls_pred.weight"], load_model(tmp_path / "teacher.pt")[0].state_dict()["head.cls_pred.weight"])


def test_teacher_with_other_anchors_and_unknown_freeze_prefix_are_one_line_errors(synthetic_faces, tmp_path):
    save_checkpoint(SRN.from_config(replace(tiny_config_model(False), anchor_ratio=1.0)),
                    DetectorConfig(replace(tiny_config_model(False), anchor_ratio=1.0)), tmp_path / "other.pt")
    config = tiny_config(synthetic_faces, tmp_path / "run", **{"model.width": 16, "train.teacher": str(tmp_path / "other.pt")})
    with pytest.raises(TrainingError, match=r"other.pt: the teacher's anchor_ratio differ from the model's"):
        Trainer(config)
    with pytest.raises(TrainingError, match="train.freeze: no parameter name starts with head.nothing"):
        Trainer(tiny_config(synthetic_faces, tmp_path / "run2", **{"train.freeze": "[head.nothing]"}))
    with pytest.raises(ConfigError, match="train.distill_weight"):
        tiny_config(synthetic_faces, tmp_path / "run3", **{"train.distill_weight": "-1"})
    for bad in ("0", "1.5", "-0.3"):
        with pytest.raises(ConfigError, match=r"train.distill_defer_iou.*null or in \(0, 1\]"):
            tiny_config(synthetic_faces, tmp_path / "run4", **{"train.distill_defer_iou": bad})
    config = tiny_config(synthetic_faces, tmp_path / "run5", **{"model.width": 16, "train.teacher": str(tmp_path / "other.pt"),
                                                             "model.anchor_ratio": "1.0", "train.distill_defer_iou": "0.3"})
    assert Trainer(config).criterion.defer_iou == 0.3


LEVEL_LAYERS = ("fpn.laterals", "fpn.outputs", "first_step.convs")


@pytest.mark.parametrize("recipe_name, levels, trained", [
    ("default_model_crowd_small.yaml", (0, 1), {f"{p}.{l}" for p in LEVEL_LAYERS for l in (0, 1)}),
    ("default_model_crowd_small_mix.yaml", (0, 1), {f"{p}.{l}" for p in LEVEL_LAYERS for l in (0, 1)}),
    ("default_model_crowd_level0_mix.yaml", (0,), {f"{p}.0" for p in LEVEL_LAYERS}),
    ("default_model_crowd_level0_mix_wider.yaml", (0,), {f"{p}.0" for p in LEVEL_LAYERS}),
    ("default_model_crowd_level0_adapter.yaml", (0,), {f"{p}.0" for p in LEVEL_LAYERS} | {"adapters.0"}),
    # The stride-8 lateral also feeds level 0 (top-down), so the level-1 recipe leaves it frozen.
    ("default_model_crowd_level1_adapter.yaml", (1,), {"fpn.outputs.1", "first_step.convs.1", "adapters.1"}),
    ("default_model_upper_adapters.yaml", (2, 3, 4, 5),
     {f"{p}.{l}" for p in ("fpn.outputs", "first_step.convs", "adapters") for l in (2, 3, 4, 5)}),
    ("default_model_upper_adapters_portraits.yaml", (2, 3, 4, 5),
     {f"{p}.{l}" for p in ("fpn.outputs", "first_step.convs", "adapters") for l in (2, 3, 4, 5)}),
    ("default_model_crowd_level0_context.yaml", (0,), {"contexts.0"}),
])
def test_the_level_local_recipes_train_their_levels_and_leave_the_others_exact(recipe_name, levels, trained):
    """The level-local recipes freeze every parameter but those of some pyramid levels: after
    training steps, the other levels give exactly the same outputs (the FPN is top-down only), the
    trained ones do not."""
    from pathlib import Path

    from srn.config import TrainingConfig, load_yaml

    recipe = load_yaml(TrainingConfig, Path(__file__).resolve().parents[1] / "recipes" / recipe_name)
    freeze = recipe.train.freeze
    torch.manual_seed(4)
    model = SRN.from_config(replace(tiny_config_model(True), adapter_levels=recipe.model.adapter_levels,
                                    context_levels=recipe.model.context_levels)).eval()
    # eval: the BatchNorm statistics do not move. A new residual block starts at zero: give it weights.
    for block in model.residual_blocks().values():
        torch.nn.init.normal_(block.last.weight, std=0.1)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not name.startswith(freeze))
    trainable = {".".join(name.split(".")[:2]) if name.startswith(("adapters.", "contexts.")) else name.rsplit(".", 1)[0]
                 for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == trained
    x = torch.rand(2, 3, 128, 128) * 255
    with torch.no_grad():
        before = model(x)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        out = model(x)
        loss = sum(t.float().square().mean() for t in (*out.step2_logits, *out.step2_deltas)) + sum(
            t.float().square().mean() for t in out.step1_logits if t is not None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = model(x)
    for level in range(6):
        same = torch.equal(after.step2_logits[level], before.step2_logits[level]) and torch.equal(
            after.step2_deltas[level], before.step2_deltas[level])
        assert same == (level not in levels), level
