import math
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from srn.config import PostProcessConfig
from srn.data.image_io import read_image
from srn.inference import DEFAULT_WEIGHTS
from srn.inference.runner import Runner
from srn.model import SRNOutputs
from srn.postprocess import Detections, PostProcessor, batched_detections, static_detections, unpack_static

ASTRONAUT = Path(__file__).resolve().parents[1] / "docs" / "astronaut.png"
NEG = -float("inf")  # sigmoid(-inf) = 0: never a candidate, even where the threshold is 0


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def make_outputs(batch=1, cells=(120, 120, 10, 10, 4, 1)):
    """Empty outputs: every level's anchors are 10x10 boxes 20 px apart (they never overlap)."""
    outputs = SRNOutputs.empty()
    for level, n_cells in enumerate(cells):
        r = 2 * n_cells
        x = torch.arange(r, dtype=torch.float32) * 20 + 10000 * level
        outputs.anchors.append(torch.stack([x, torch.zeros(r), x + 10, torch.full((r,), 10.0)], 1))
        outputs.step1_logits.append(torch.full((batch, r), NEG))
        outputs.step2_logits.append(torch.full((batch, r), NEG))
        outputs.step1_deltas.append(torch.zeros(batch, r, 4))
        outputs.step2_deltas.append(torch.zeros(batch, r, 4))
    return outputs


def box(level, idx):
    x = 20 * idx + 10000 * level
    return [x, 0.0, x + 10, 10.0]


def test_stc_gate_and_thresholds():
    out = make_outputs()
    # level 0 (STC, 120 cells -> threshold 0.05)
    out.step2_logits[0][0, 3] = logit(0.9)
    out.step1_logits[0][0, 3] = logit(0.5)  # passes the gate
    out.step2_logits[0][0, 5] = logit(0.8)
    out.step1_logits[0][0, 5] = logit(0.009)  # negative confidence 0.991 > 0.99: gated out
    out.step2_logits[0][0, 7] = logit(0.04)
    out.step1_logits[0][0, 7] = logit(0.5)  # below 0.05
    # level 2 (STC, 10 cells -> threshold 0): a low score still counts, the gate still applies
    out.step2_logits[2][0, 1] = logit(0.02)
    out.step1_logits[2][0, 1] = logit(0.011)
    out.step2_logits[2][0, 2] = logit(0.03)
    out.step1_logits[2][0, 2] = logit(0.0099)
    # level 1 (STC): step-1 alone never makes a candidate
    out.step1_logits[1][0, 0] = logit(0.99)
    (det,) = PostProcessor((0, 1, 2), (3, 4, 5))(out)
    assert_close(det.scores, torch.tensor([0.9, 0.02]))
    assert_close(det.boxes, torch.tensor([box(0, 3), box(2, 1)]))


def test_without_stc_the_gate_is_off():
    out = make_outputs()
    out.step2_logits[0][0, 5] = logit(0.8)
    out.step1_logits[0][0, 5] = logit(0.009)
    (det,) = PostProcessor((), (3, 4, 5))(out)
    assert_close(det.scores, torch.tensor([0.8]))


def test_str_double_decode():
    out = make_outputs()
    # level 3 (STR): anchor 4 = (80, 0, 90, 10), centre (85, 5), 10x10.
    out.step2_logits[3][0, 4] = logit(0.7)
    out.step1_deltas[3][0, 4] = torch.tensor([0.5, 0.0, math.log(2.0), 0.0])
    # refined anchor: centre (85 + 5, 5), size 20x10 -> (80, 0, 100, 10)
    out.step2_deltas[3][0, 4] = torch.tensor([0.0, 1.0, 0.0, math.log(3.0)])
    # final: centre (90, 5 + 10), size 20x30 -> (80, 0, 100, 30)
    (det,) = PostProcessor((0, 1, 2), (3, 4, 5))(out)
    expected = torch.tensor([[80.0 + 30000, 0.0, 100.0 + 30000, 30.0]])
    assert_close(det.boxes, expected)
    # on a level without STR the first-step deltas are ignored: centre (85, 15), 10x30
    (det,) = PostProcessor((0, 1, 2), ())(out)
    assert_close(det.boxes, torch.tensor([[80.0 + 30000, 0.0, 90.0 + 30000, 30.0]]))


def test_top_k_per_level_nms_and_max_detections():
    out = make_outputs(batch=2)
    scores = [0.9, 0.8, 0.7, 0.6]
    for i, p in enumerate(scores):
        out.step2_logits[1][0, i] = logit(p)
        out.step1_logits[1][0, i] = logit(0.5)
    # image 1: two boxes on top of each other (IoU 1) at level 4, and one elsewhere
    out.step2_logits[4][1, 0] = logit(0.6)
    out.step2_logits[4][1, 2] = logit(0.5)
    out.step2_deltas[4][1, 2] = torch.tensor([-4.0, 0.0, 0.0, 0.0])  # 40 px left: anchor 2 onto anchor 0
    out.step1_deltas[4][1] = 0.0
    out.step2_logits[4][1, 5] = logit(0.4)
    config = PostProcessConfig(pre_nms_top_k=3, max_detections=2)
    det0, det1 = PostProcessor((0, 1, 2), (3, 4, 5), config=config)(out)
    # image 0: top-3 of level 1 are 0.9, 0.8, 0.7; max_detections keeps 2
    assert_close(det0.scores, torch.tensor([0.9, 0.8]))
    assert_close(det0.boxes, torch.tensor([box(1, 0), box(1, 1)]))
    # image 1: NMS removes the 0.5 duplicate
    assert_close(det1.scores, torch.tensor([0.6, 0.4]))
    assert_close(det1.boxes, torch.tensor([box(4, 0), box(4, 5)]))
    # a looser max keeps 0.7 for image 0, and a min_score drops low scores after NMS
    det0, det1 = PostProcessor((0, 1, 2), (3, 4, 5), config=PostProcessConfig(pre_nms_top_k=3))(out, min_score=0.45)
    assert_close(det0.scores, torch.tensor([0.9, 0.8, 0.7]))
    assert_close(det1.scores, torch.tensor([0.6]))


def test_nms_iou_threshold_is_04():
    out = make_outputs()
    # two 10x10 boxes shifted by 3 px: IoU = 70/130 = 0.538 > 0.4 -> suppressed
    out.step2_logits[5][0, 0] = logit(0.9)
    out.step2_logits[5][0, 1] = logit(0.8)
    out.step2_deltas[5][0, 1] = torch.tensor([-1.7, 0.0, 0.0, 0.0])  # anchor 1 (x=20) -> x=3
    # a third, shifted by 6 px from the first: IoU = 40/160 = 0.25 < 0.4 -> kept
    out.step2_logits[5][0, 0] = logit(0.9)
    (det,) = PostProcessor((), ())(out)
    assert_close(det.scores, torch.tensor([0.9]))
    out.step2_deltas[5][0, 1] = torch.tensor([-1.4, 0.0, 0.0, 0.0])  # x = 6
    (det,) = PostProcessor((), ())(out)
    assert_close(det.scores, torch.tensor([0.9, 0.8]))


def test_empty_image_gives_empty_tensors():
    out = make_outputs(batch=2)
    det0, det1 = PostProcessor((0, 1, 2), (3, 4, 5))(out)
    assert det0.boxes.shape == (0, 4) and det1.scores.shape == (0,)


def clustered_candidates(seed, n=4, k=600, clusters=25):
    """Candidates in overlapping clusters, a third of the slots empty: NMS has real work to do."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(n, clusters, 2, generator=g) * 400
    which = torch.randint(0, clusters, (n, k), generator=g)
    centre = centres.gather(1, which.unsqueeze(-1).expand(-1, -1, 2)) + torch.randn(n, k, 2, generator=g) * 6
    size = 20 + torch.rand(n, k, 2, generator=g) * 20
    scores = torch.rand(n, k, generator=g)
    scores[torch.rand(n, k, generator=g) < 0.3] = -1.0
    return torch.cat([centre - size / 2, centre + size / 2], -1), scores


def assert_same_detections(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores)


def test_static_detections_are_torchvision_nms():
    for seed, min_score, max_detections in [(0, 0.0, 750), (1, 0.3, 750), (2, 0.0, 40)]:
        boxes, scores = clustered_candidates(seed)
        static = static_detections(boxes, scores, 0.4, max_detections, min_score, max_candidates=1024, sweeps=16)
        assert static.exact.all()
        expected = batched_detections(boxes, scores, 0.4, max_detections, min_score)
        assert static.counts.tolist() == [len(e.scores) for e in expected]
        assert_same_detections(unpack_static(static, 0.4, max_detections, min_score), expected)
        # fixed shapes: empty slots score -1 and hold zero boxes
        d = static.scores.shape[1]
        assert d == min(max_detections, 600)
        empty = torch.arange(d) >= static.counts.unsqueeze(1)
        assert (static.scores[empty] == -1).all() and (static.boxes[empty] == 0).all()


def test_static_detections_prove_their_answer_or_are_redone():
    # A chain of ten 10x10 boxes 4 px apart, by descending score: each overlaps the next by
    # IoU 6/14 > 0.4 and the one after by 2/18, so greedy NMS keeps every second box. Proving that
    # takes a sweep per link of the chain.
    x = torch.arange(10, dtype=torch.float32) * 4
    boxes = torch.stack([x, torch.zeros(10), x + 10, torch.full((10,), 10.0)], 1).unsqueeze(0)
    scores = torch.linspace(0.9, 0.45, 10).unsqueeze(0)
    expected = Detections(boxes[0, ::2], scores[0, ::2])
    proven = static_detections(boxes, scores, 0.4, 750, sweeps=11)
    assert proven.exact.tolist() == [True]
    assert_same_detections(unpack_static(proven, 0.4, 750), [expected])
    short = static_detections(boxes, scores, 0.4, 750, sweeps=3)
    assert short.exact.tolist() == [False]
    assert_same_detections(unpack_static(short, 0.4, 750), [expected])
    # more candidates than max_candidates: not proven either, and still the right answer
    crowded = static_detections(boxes, scores, 0.4, 750, max_candidates=4, sweeps=11)
    assert crowded.exact.tolist() == [False]
    assert_same_detections(unpack_static(crowded, 0.4, 750), [expected])
    # ... unless the best candidates already hold max_detections survivors (boxes 0 and 2 of 0-3)
    top_two = static_detections(boxes, scores, 0.4, 2, max_candidates=4, sweeps=11)
    assert top_two.exact.tolist() == [True] and top_two.counts.tolist() == [2]
    assert_same_detections(unpack_static(top_two, 0.4, 2), [Detections(boxes[0, [0, 2]], scores[0, [0, 2]])])
    assert_same_detections(batched_detections(boxes, scores, 0.4, 2), [Detections(boxes[0, [0, 2]], scores[0, [0, 2]])])
    # min_score drops the chain's tail before NMS: 7 boxes score 0.6 or more, 4 are kept, and 7
    # candidates are enough to prove it
    tail = static_detections(boxes, scores, 0.4, 750, min_score=0.57, max_candidates=7, sweeps=8)
    assert tail.exact.tolist() == [True] and tail.counts.tolist() == [4]
    assert_close(tail.scores[0, :4], scores[0, 0:7:2])


def test_nms_on_the_best_candidates_first_gives_the_same_detections():
    # Crowded images: thousands of overlapping candidates. NMS over the best 64, then 256, ... must
    # keep exactly what one NMS over all of them keeps, image by image.
    boxes, scores = clustered_candidates(5, n=3, k=3000, clusters=400)
    scores[2, 40:] = -1.0  # an image with few candidates, done in the first pass
    # 100 kept: the early stop; 750: more than survive, so every candidate has to be seen.
    for max_detections, min_score, counts in [(100, 0.0, [100, 100, 25]), (750, 0.0, [553, 559, 25]), (100, 0.5, [100, 100, 12])]:
        everything = batched_detections(boxes, scores, 0.4, max_detections, min_score, first_pass=3000)
        stepwise = batched_detections(boxes, scores, 0.4, max_detections, min_score, first_pass=64)
        assert [len(d.scores) for d in everything] == counts
        assert_same_detections(stepwise, everything)


def test_static_detections_of_crowded_images_stop_at_max_detections():
    boxes, scores = clustered_candidates(3, n=4, k=3000, clusters=400)  # about 2,100 candidates each
    static = static_detections(boxes, scores, 0.4, 40, max_candidates=256, sweeps=16)
    assert static.exact.all() and static.counts.tolist() == [40] * 4
    expected = batched_detections(boxes, scores, 0.4, 40)
    assert_same_detections(unpack_static(static, 0.4, 40), expected)


@pytest.fixture(scope="module")
def astronaut(one_thread):
    """The shipped model's raw outputs on docs/astronaut.png (512x512, no resizing)."""
    from srn.weights import load_model

    model, config = load_model(DEFAULT_WEIGHTS, "cpu")
    image = read_image(ASTRONAUT).float().div(255).unsqueeze(0)
    with torch.no_grad():
        outputs = model(image)
    return model, config.postprocess, image, outputs


def test_one_post_processor_on_the_shipped_model(astronaut):
    model, config, image, outputs = astronaut
    post = PostProcessor.from_model(model, config)
    assert post == PostProcessor((0, 1, 2), (3, 4, 5), 2, config)
    (found,) = post(outputs, min_score=0.001)
    # The shipped model's detections, pinned (the first is the README's face). They were first
    # pinned when select_candidates + batched_detections became one PostProcessor, and re-pinned
    # when the shipped weights changed (2026-12-05: retrained; then the calibrated separable head;
    # 2026-12-07: level 0 fine-tuned, one weak box fewer, the first three unchanged; then level 0's
    # adapter, three weak boxes fewer; then level 1's adapter, one fewer; the first three unchanged).
    assert found.scores.numel() == 26
    assert_close(found.scores[:3], torch.tensor([0.98725790, 0.02568499, 0.02277239]), rtol=0, atol=1e-5)
    assert_close(found.boxes[:3], torch.tensor([[176.38179, 62.08857, 275.36118, 182.02824],
                                                [375.81647, 240.51889, 411.60620, 286.07870],
                                                [355.07281, 382.19709, 490.98005, 531.24066]]), rtol=0, atol=1e-3)
    # The fixed-shape path proves its answer here and gives the same detections, bit for bit.
    static = post.static(outputs, 0.001)
    assert static.exact.tolist() == [True] and static.counts.tolist() == [26]
    assert_same_detections(post.unpack(static, 0.001), [found])
    # The runner builds the same post-processor once and runs it on both of its paths.
    for runner in (Runner(model, config, 0.001), Runner(model, config, 0.001, static_postprocess=True)):
        assert runner.postprocessor == post
        assert_same_detections(runner(image), [found])


def test_score_calibration_maps_scores_and_keeps_the_boxes():
    """Platt scaling: sigmoid(a * z + b) of each detection's logit z. Candidates are still gated on
    the network's own probability, so the same boxes come out in the same order."""
    out = make_outputs()
    out.step2_logits[0][0, 3] = logit(0.9)
    out.step1_logits[0][0, 3] = logit(0.5)
    out.step2_logits[0][0, 8] = logit(0.06)  # a candidate (> 0.05) whose calibrated score is below 0.05
    out.step1_logits[0][0, 8] = logit(0.5)
    out.step2_logits[3][0, 1] = logit(0.6)
    (plain,) = PostProcessor((0, 1, 2), (3, 4, 5))(out)
    config = PostProcessConfig(score_scale=2.0, score_shift=0.5)
    (calibrated,) = PostProcessor((0, 1, 2), (3, 4, 5), config=config)(out)
    assert_close(calibrated.boxes, plain.boxes)
    expected = [1 / (1 + math.exp(-(2 * logit(p) + 0.5))) for p in (0.9, 0.6, 0.06)]
    assert_close(plain.scores, torch.tensor([0.9, 0.6, 0.06]))
    assert_close(calibrated.scores, torch.tensor(expected))
    assert expected[2] < 0.05 and expected[0] > 0.99
    # min_score compares the calibrated scores.
    (above,) = PostProcessor((0, 1, 2), (3, 4, 5), config=config)(out, min_score=0.5)
    assert_close(above.scores, torch.tensor(expected[:2]))  # 0.9 -> 0.993, 0.6 -> 0.787


@pytest.mark.parametrize("key, value", [("score_scale", 0.0), ("score_scale", -1.0), ("score_scale", math.inf),
                                        ("score_shift", math.nan), ("score_shift", -math.inf)])
def test_score_calibration_must_be_finite_and_increasing(key, value):
    from srn.config import ConfigError

    with pytest.raises(ConfigError, match=f"postprocess.{key}: must be"):
        PostProcessConfig(**{key: value})
