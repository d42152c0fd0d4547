"""SRNCriterion on fake model outputs with tiny, hand-placed anchor sets (no model needed); and, at
the end, built from a config and run on the paper's network, every parameter of which must get a
gradient."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close
from torchvision.ops import box_iou

from srn.config import TrainingConfig, load_yaml
from srn.criterion import SRNCriterion, _batched_box_iou, count_samples
from srn.losses import focal_loss
from srn.model import SRN, SRNOutputs

PRESETS = Path(__file__).resolve().parents[1] / "srn" / "configs"

# Two levels: level 0 is an STC level, level 1 an STR level.
LEVELS = {"stc_levels": (0,), "str_levels": (1,)}
# Focal loss of a negative at logit 0: 0.75 * 0.5^2 * ln 2.
NEG_AT_ZERO = 0.75 * 0.25 * math.log(2)


def make_outputs(
    anchors_per_level: list[list[list[float]]], num_images: int, **values: list[torch.Tensor]
) -> SRNOutputs:
    """Model-like outputs: zeros unless given, all requiring grad."""
    anchors = [torch.tensor(a, dtype=torch.float32).reshape(-1, 4) for a in anchors_per_level]
    per_key = {}
    for key, trailing in (("step1_logits", ()), ("step2_logits", ()), ("step1_deltas", (4,)), ("step2_deltas", (4,))):
        given = values.get(key)
        per_key[key] = [
            (given[lv].clone().float() if given is not None else torch.zeros(num_images, a.shape[0], *trailing))
            .requires_grad_()
            for lv, a in enumerate(anchors)
        ]
    return SRNOutputs(anchors=anchors, **per_key)


def target(boxes: list[list[float]], ignore: list[bool] | None = None) -> dict[str, torch.Tensor]:
    t = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)}
    if ignore is not None:
        t["ignore"] = torch.tensor(ignore)
    return t


def test_stc_filters_exactly_the_confident_negatives() -> None:
    # Level 0 (STC): anchor 0 matches the face; anchors 1..5 are negatives.
    # Level 1 (not STC): one negative anchor.
    # theta = 0.99 <=> 1 - sigmoid(x) > 0.99 <=> x < -ln 99 = -4.59512.
    boundary = -math.log(99)
    level0 = [[0, 0, 10, 10], [100, 100, 110, 110], [120, 100, 130, 110], [140, 100, 150, 110],
              [160, 100, 170, 110], [180, 100, 190, 110]]
    level1 = [[300, 300, 340, 340]]
    step1_logits = [
        torch.tensor([[-10.0, boundary - 1e-3, boundary + 1e-3, 0.0, -10.0, 3.0]]),
        torch.tensor([[-10.0]]),  # not an STC level: never filtered
    ]
    step2_logits = [torch.linspace(-2, 2, 6)[None], torch.tensor([[0.5]])]
    outputs = make_outputs([level0, level1], 1, step1_logits=step1_logits, step2_logits=step2_logits)
    targets = [target([[0, 0, 10, 10]])]

    criterion = SRNCriterion(**LEVELS)
    assignment = criterion.assign(outputs.anchors, targets, outputs.step1_logits)
    assert assignment.stc_filtered.tolist() == [[True, True, False, False, True, False, False]]
    # The positive (anchor 0) stays positive: only negatives are filtered by default.
    assert assignment.step2_labels.tolist() == [[1, 0, 0, 0, 0, 0, 0]]
    assert assignment.step2_labels_stc.tolist() == [[1, -1, 0, 0, -1, 0, 0]]

    losses = criterion(outputs, targets)
    logits2 = torch.cat([step2_logits[0][0], step2_logits[1][0]])  # (7,)
    kept = [0, 2, 3, 5, 6]
    expected = focal_loss(logits2[kept], torch.tensor([1, 0, 0, 0, 0])).sum()  # one positive
    assert_close(losses["loss_step2_cls"], expected)

    # Step 1 classifies STC levels only, and nothing is filtered there.
    logits1 = step1_logits[0][0]
    assert_close(losses["loss_step1_cls"], focal_loss(logits1, torch.tensor([1, 0, 0, 0, 0, 0])).sum())

    with_positives = SRNCriterion(**LEVELS, stc_filter_positives=True)
    assignment = with_positives.assign(outputs.anchors, targets, outputs.step1_logits)
    assert assignment.step2_labels_stc.tolist() == [[-1, -1, 0, 0, -1, 0, 0]]


def test_str_matches_and_regresses_against_refined_anchors() -> None:
    # Level 1 (STR) anchor a = (0, 0, 10, 10): w = h = 10, centre (5, 5).
    # Step-1 deltas (0.1, 0.2, ln 2, 0) refine it to centre (0.1*10+5, 0.2*10+5) = (6, 7),
    # size (20, 10): (-4, 2, 16, 12).
    # Face (-4, 2, 18, 14): w = 22, h = 12, centre (7, 8).
    #   IoU with a:       inter (0, 2, 10, 10) = 80;  union 100 + 264 - 80 = 284 -> 0.282
    #                     (< 0.3: step-1 negative; < 0.4: also negative for a non-refined step 2)
    #   IoU with refined: inter = 20 * 10 = 200; union = 264 -> 0.758 (step-2 positive)
    # Step-2 target deltas against the refined anchor:
    #   dx = (7 - 6) / 20 = 0.05, dy = (8 - 7) / 10 = 0.1, dw = ln(22/20), dh = ln(12/10)
    # Smooth-L1 with beta = 1/9 against zero predictions:
    #   0.05 -> 4.5 * 0.0025 = 0.01125;  0.1 -> 4.5 * 0.01 = 0.045
    #   ln 1.1 = 0.0953102 -> 4.5 * 0.00908403 = 0.0408781;  ln 1.2 = 0.1823216 -> 0.1823216 - 1/18 = 0.1267660
    #   sum = 0.01125 + 0.045 + 0.0408781 + 0.1267660 = 0.2238941, one positive -> loss_step2_reg
    level0 = [[200, 200, 210, 210]]
    level1 = [[0, 0, 10, 10]]
    step1_deltas = [torch.tensor([[[0.3, 0.3, 0.3, 0.3]]]),  # level 0 is not STR: no refinement
                    torch.tensor([[[0.1, 0.2, math.log(2), 0.0]]])]
    outputs = make_outputs([level0, level1], 1, step1_deltas=step1_deltas)
    targets = [target([[-4, 2, 18, 14]])]
    criterion = SRNCriterion(**LEVELS)

    assignment = criterion.assign(outputs.anchors, targets, outputs.step1_logits, outputs.step1_deltas)
    assert_close(assignment.step2_anchors[0], torch.tensor([[200.0, 200, 210, 210], [-4, 2, 16, 12]]))
    assert assignment.step1_labels.tolist() == [[0, 0]]
    assert assignment.step2_labels.tolist() == [[0, 1]]
    # Without step-1 deltas, step 2 would match the original anchor: a negative.
    assert criterion.assign(outputs.anchors, targets).step2_labels.tolist() == [[0, 0]]

    losses = criterion(outputs, targets)
    assert_close(losses["loss_step2_reg"], torch.tensor(0.2238941), rtol=0, atol=1e-6)
    assert_close(losses["loss_step1_reg"], torch.tensor(0.0))

    # Predicting the hand-computed deltas exactly gives zero loss.
    exact = torch.tensor([[[0.0, 0, 0, 0]], [[0.05, 0.1, math.log(1.1), math.log(1.2)]]])
    outputs = make_outputs(
        [level0, level1], 1, step1_deltas=step1_deltas, step2_deltas=[exact[0][None], exact[1][None]]
    )
    losses = criterion(outputs, targets)
    assert_close(losses["loss_step2_reg"], torch.tensor(0.0), rtol=0, atol=1e-6)

    # The refined anchors are detached: step 2 sends no gradient into step-1 deltas.
    losses["loss_step2_reg"].backward()
    assert all(d.grad is None for d in outputs.step1_deltas)


def test_step1_regresses_str_levels_against_original_anchors() -> None:
    # Level 1 (STR) anchor (0, 0, 10, 10) and face (0, 0, 10, 12): IoU 100/120 = 0.833, step-1
    # positive. Targets: dx = 0, dy = (6 - 5) / 10 = 0.1, dw = 0, dh = ln 1.2 = 0.1823216.
    # Smooth-L1 against zeros: 0.045 + (0.1823216 - 1/18) = 0.1717660.
    # Level 0 (STC) anchor (100, 100, 110, 110) matches a face exactly: a step-1 positive that
    # classifies but does not regress. Two step-1 positives: loss_step1_reg = 0.1717660 / 2.
    level0 = [[100, 100, 110, 110]]
    level1 = [[0, 0, 10, 10]]
    outputs = make_outputs([level0, level1], 1)
    targets = [target([[0, 0, 10, 12], [100, 100, 110, 110]])]
    losses = SRNCriterion(**LEVELS)(outputs, targets)
    assert_close(losses["loss_step1_reg"], torch.tensor(0.1717660 / 2), rtol=0, atol=1e-6)
    # Step-1 classification sees only the level-0 positive: 0.25 * 0.25 * ln 2 / 2.
    assert_close(losses["loss_step1_cls"], torch.tensor(0.0625 * math.log(2) / 2))


def test_faceless_image() -> None:
    level0 = [[0, 0, 10, 10], [10, 0, 20, 10], [0, 10, 10, 20]]
    level1 = [[0, 0, 40, 40]]
    outputs = make_outputs([level0, level1], 1)
    losses = SRNCriterion(**LEVELS)(outputs, [target([])])
    assert_close(losses["loss_step1_reg"], torch.tensor(0.0))
    assert_close(losses["loss_step2_reg"], torch.tensor(0.0))
    # All anchors negative at logit 0; the normaliser is clamped to 1.
    assert_close(losses["loss_step1_cls"], torch.tensor(3 * NEG_AT_ZERO))
    assert_close(losses["loss_step2_cls"], torch.tensor(4 * NEG_AT_ZERO))
    sum(losses.values()).backward()
    for key in ("step1_logits", "step2_logits", "step1_deltas", "step2_deltas"):
        assert all(torch.isfinite(t.grad).all() for t in getattr(outputs, key))


def test_faceless_image_in_a_batch_with_faces() -> None:
    level0 = [[0, 0, 10, 10], [10, 0, 20, 10]]
    level1 = [[0, 0, 40, 40]]
    outputs = make_outputs([level0, level1], 2)
    targets = [target([]), target([[0, 0, 10, 10], [0, 0, 40, 40]])]
    criterion = SRNCriterion(**LEVELS)
    assignment = criterion.assign(outputs.anchors, targets)
    assert assignment.step1_labels.tolist() == [[0, 0, 0], [1, 0, 1]]
    assert assignment.step2_labels.tolist() == [[0, 0, 0], [1, 0, 1]]
    losses = criterion(outputs, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    # Zero deltas against exact matches: no regression loss.
    assert_close(losses["loss_step2_reg"], torch.tensor(0.0))


def test_ignored_faces_give_ignored_anchors() -> None:
    # Anchor 0 matches the real face, anchor 1 the ignored one (both IoU 1); anchor 2 is empty.
    level0 = [[0, 0, 10, 10], [50, 50, 60, 60], [100, 100, 110, 110]]
    level1 = [[300, 300, 340, 340]]
    outputs = make_outputs([level0, level1], 1)
    targets = [target([[0, 0, 10, 10], [50, 50, 60, 60]], ignore=[False, True])]
    criterion = SRNCriterion(**LEVELS)
    assignment = criterion.assign(outputs.anchors, targets)
    assert assignment.step1_labels.tolist() == [[1, -1, 0, 0]]
    assert assignment.step2_labels.tolist() == [[1, -1, 0, 0]]
    losses = criterion(outputs, targets)
    # Step 2: one positive (0.25 * 0.25 * ln 2) and two negatives; the ignored anchor adds nothing.
    assert_close(losses["loss_step2_cls"], torch.tensor(0.0625 * math.log(2) + 2 * NEG_AT_ZERO))


def test_batched_assignment_equals_per_image_and_chunking() -> None:
    generator = torch.Generator().manual_seed(0)

    def random_boxes(n: int) -> torch.Tensor:
        xy = torch.rand(n, 2, generator=generator) * 80
        wh = torch.rand(n, 2, generator=generator) * 30 + 4
        return torch.cat([xy, xy + wh], dim=1)

    anchors = [random_boxes(40).tolist(), random_boxes(12).tolist()]
    targets = [{"boxes": random_boxes(m)} for m in (5, 0, 9)]
    outputs = make_outputs(anchors, 3, step1_deltas=[0.2 * torch.randn(3, 40, 4, generator=generator),
                                                     0.2 * torch.randn(3, 12, 4, generator=generator)])
    for low_quality in (False, True):
        criterion = SRNCriterion(**LEVELS, allow_low_quality_matches=low_quality)
        batched = criterion.assign(outputs.anchors, targets, step1_deltas_per_level=outputs.step1_deltas)
        criterion.max_iou_elements = 1  # one image per chunk
        chunked = criterion.assign(outputs.anchors, targets, step1_deltas_per_level=outputs.step1_deltas)
        for i, t in enumerate(targets):
            single = criterion.assign(
                outputs.anchors, [t], step1_deltas_per_level=[d[i:i + 1] for d in outputs.step1_deltas]
            )
            for name in ("step1_labels", "step2_labels"):
                assert_close(getattr(batched, name)[i], getattr(single, name)[0])
                assert_close(getattr(chunked, name)[i], getattr(single, name)[0])
            for step in ("step1", "step2"):
                positive = getattr(single, f"{step}_labels")[0] == 1
                assert_close(
                    getattr(batched, f"{step}_matched_idxs")[i][positive],
                    getattr(single, f"{step}_matched_idxs")[0][positive],
                )


def test_batched_box_iou_matches_torchvision() -> None:
    generator = torch.Generator().manual_seed(1)
    xy1 = torch.rand(2, 5, 2, generator=generator) * 50
    boxes1 = torch.cat([xy1, xy1 + 1 + torch.rand(2, 5, 2, generator=generator) * 30], dim=2)
    xy2 = torch.rand(2, 7, 2, generator=generator) * 50
    boxes2 = torch.cat([xy2, xy2 + 1 + torch.rand(2, 7, 2, generator=generator) * 30], dim=2)
    iou = _batched_box_iou(boxes1, boxes2)
    for i in range(2):
        assert_close(iou[i], box_iou(boxes1[i], boxes2[i]))


def test_count_samples() -> None:
    level0 = [[0, 0, 10, 10], [50, 50, 60, 60], [100, 100, 110, 110], [0, 0, 10, 13]]
    level1 = [[300, 300, 340, 340], [0, 0, 11, 11]]
    step1_logits = [torch.tensor([[0.0, 0.0, -9.0, 0.0]]), torch.tensor([[-9.0, -9.0]])]
    outputs = make_outputs([level0, level1], 1, step1_logits=step1_logits)
    targets = [target([[0, 0, 10, 10], [50, 50, 60, 60]], ignore=[False, True])]
    assignment = SRNCriterion(**LEVELS).assign(outputs.anchors, targets, outputs.step1_logits)
    # IoUs with face 0: anchor (0,0,10,13) 100/130 = 0.769; (0,0,11,11) 100/121 = 0.826.
    # Level 0: [pos, ignored (ignored face), neg (filtered by STC), pos]; level 1: [neg, pos].
    counts = count_samples(assignment)
    expected = {
        "anchors": [4, 2],
        "stc_filtered": [1, 0],
        "step1_positive": [2, 1], "step1_negative": [1, 1], "step1_ignored": [1, 0],
        "step2_positive": [2, 1], "step2_negative": [1, 1], "step2_ignored": [1, 0],
        "step2_stc_positive": [2, 1], "step2_stc_negative": [0, 1], "step2_stc_ignored": [2, 0],
    }
    assert {k: v.tolist() for k, v in counts.items()} == expected


def test_none_step1_outputs_on_unused_levels() -> None:
    level0 = [[0, 0, 10, 10]]
    level1 = [[0, 0, 40, 40]]
    outputs = make_outputs([level0, level1], 1)
    reference = SRNCriterion(**LEVELS)(outputs, [target([[0, 0, 10, 10]])])
    outputs.step1_logits[1] = None
    outputs.step1_deltas[0] = None
    losses = SRNCriterion(**LEVELS)(outputs, [target([[0, 0, 10, 10]])])
    for key, value in reference.items():
        assert_close(losses[key], value)
    outputs.step1_logits[0] = None
    with pytest.raises(ValueError, match="needs it"):
        SRNCriterion(**LEVELS)(outputs, [target([[0, 0, 10, 10]])])


def test_from_config_passes_every_loss_setting() -> None:
    config = load_yaml(TrainingConfig, PRESETS / "ablation_stc.yaml", [
        "loss.stc_theta=0.95", "loss.step1_thresholds=[0.2,0.6]", "loss.step2_thresholds=[0.35,0.45]",
        "loss.allow_low_quality_matches=true", "loss.focal_alpha=0.5", "loss.focal_gamma=1.5",
        "loss.smooth_l1_beta=0.2", "loss.step1_cls_weight=2", "loss.step1_reg_weight=3",
        "loss.step2_cls_weight=4", "loss.step2_reg_weight=5", "loss.stc_filter_positives=true",
    ])
    criterion = SRNCriterion.from_config(config.loss, config.model)
    expected = SRNCriterion(
        stc_levels=config.model.stc_levels, str_levels=config.model.str_levels, stc_theta=0.95,
        step1_thresholds=(0.2, 0.6), step2_thresholds=(0.35, 0.45), allow_low_quality_matches=True,
        focal_alpha=0.5, focal_gamma=1.5, smooth_l1_beta=0.2, step1_cls_weight=2.0, step1_reg_weight=3.0,
        step2_cls_weight=4.0, step2_reg_weight=5.0, stc_filter_positives=True,
    )
    settings = ["stc_levels", "str_levels", "stc_theta", "step1_matcher", "step2_matcher", "focal_alpha", "focal_gamma",
                "smooth_l1_beta", "step1_cls_weight", "step1_reg_weight", "step2_cls_weight", "step2_reg_weight",
                "stc_filter_positives", "max_iou_elements"]
    assert [repr(getattr(criterion, k)) for k in settings] == [repr(getattr(expected, k)) for k in settings]
    assert (criterion.stc_levels, criterion.str_levels) == ((0, 1, 2), ())  # STC alone
    assert repr(criterion.step1_matcher) == "Matcher(low_threshold=0.2, high_threshold=0.6, allow_low_quality_matches=True)"


def test_every_parameter_of_srn_r50_gets_a_finite_gradient() -> None:
    # The paper's network (the srn_r50_widerface preset), randomly initialised: no download.
    # An unused parameter, such as a step-1 head built for six levels but used on three, gets no
    # gradient; DDP fails on it too (timm's test_model_backward).
    config = load_yaml(TrainingConfig, PRESETS / "srn_r50_widerface.yaml", ["model.pretrained=null"])
    assert (config.model.backbone, config.model.stc_levels, config.model.str_levels) == ("resnet50", (0, 1, 2), (3, 4, 5))
    torch.manual_seed(0)
    model = SRN.from_config(config.model).train()
    criterion = SRNCriterion.from_config(config.loss, config.model)
    threads = torch.get_num_threads()
    # A 128 px image is too little work to share: on a busy machine more threads are 10x slower.
    torch.set_num_threads(1)
    try:
        outputs = model(torch.randint(0, 256, (1, 3, 128, 128), dtype=torch.uint8))
        # 128 px: levels of 32x32 ... 1x1 cells. One face exactly on an anchor of every level, so that
        # both steps have positives on every level (a face of IoU 1 passes both steps' thresholds).
        faces = torch.stack([anchors[len(anchors) // 2] for anchors in outputs.anchors])
        losses = criterion(outputs, [{"boxes": faces, "ignore": torch.zeros(len(faces), dtype=torch.bool)}])
        sum(losses.values()).backward()
    finally:
        torch.set_num_threads(threads)
    assert all(bool(value > 0) for value in losses.values()), losses
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    assert len(named) > 200
    missing = [name for name, p in named if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert missing == []
    assert [name for name, p in named if not bool(torch.isfinite(p.grad).all())] == []
