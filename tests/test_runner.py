from pathlib import Path

import pytest
import torch
from torch import nn
from torch.testing import assert_close
from torchvision.ops import box_iou

from srn import Detector
from srn.cli import main
from srn.data.image_io import read_image
from srn.inference import DEFAULT_WEIGHTS
from srn.model import build_model
from srn.postprocess import PostProcessor
from srn.inference.runner import Runner, fold_batchnorm, inference_copy
from srn.weights import load_model

pytestmark = pytest.mark.usefixtures("one_thread")

CROWD = "data/demo/images/timesler__data_multiface.jpg"
ASTRONAUT = Path(__file__).resolve().parents[1] / "docs" / "astronaut.png"


def batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("backbone, expected", [("resnet18", 20), ("mobilenet_v2", 51)])
def test_batchnorm_folds_into_convolutions(backbone, expected):
    model = build_model(backbone=backbone, width=32, pretrained=None, init="scaled").eval()
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():  # statistics far from the identity, so that folding shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
    images = torch.rand(2, 3, 96, 128, generator=gen)
    with torch.no_grad():
        reference = model(images)
        folded = inference_copy(model)
        outputs = folded(images)
    assert batchnorms(model) == expected  # the original is untouched
    assert batchnorms(folded) == 0
    for key in ("step1_logits", "step1_deltas", "step2_logits", "step2_deltas"):
        for ref, out in zip(getattr(reference, key), getattr(outputs, key)):
            if ref is not None:
                assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert next(folded.parameters()).requires_grad is False
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(model.train())


@pytest.fixture(scope="module")
def shipped():
    model, config = load_model(DEFAULT_WEIGHTS, "cpu")
    return model, config.postprocess


@pytest.fixture(scope="module")
def crowd(shared_dir):
    return read_image(shared_dir / CROWD).float().div(255).unsqueeze(0)


@pytest.mark.parametrize("min_score", [0.0, 0.5])
def test_static_postprocessing_gives_the_reference_detections(shipped, crowd, min_score):
    model, post = shipped
    ((boxes, scores),) = Runner(model, post, min_score)(crowd)
    ((static_boxes, static_scores),) = Runner(model, post, min_score, static_postprocess=True)(crowd)
    assert len(scores) > 0
    assert torch.equal(static_boxes, boxes) and torch.equal(static_scores, scores)


def test_bf16_finds_the_same_faces(shipped, crowd):
    model, post = shipped
    ((boxes, scores),) = Runner(model, post, 0.5)(crowd)
    runner = Runner(model, post, 0.5, precision="bf16")
    ((bf16_boxes, bf16_scores),) = runner(crowd)
    assert next(runner.net.parameters()).dtype == torch.bfloat16 and batchnorms(runner.net) == 0
    assert bf16_boxes.dtype == torch.float32  # decoded in fp32
    # The six faces of the photo: each fp32 detection has a bf16 twin at the benchmarks' IoU 0.5.
    # Where two anchors of one face score within bf16's rounding, the other one can win the NMS
    # (here: one face, IoU 0.74); the others agree to IoU 0.98.
    assert len(scores) == len(bf16_scores) == 6
    iou, match = box_iou(boxes, bf16_boxes).max(1)
    assert (iou > 0.5).all() and (iou > 0.98).sum() >= 5
    assert_close(bf16_scores[match], scores, rtol=0, atol=0.03)


def test_folded_channels_last_fp32_copy_finds_the_same_faces(shipped, crowd):
    model, post = shipped
    ((boxes, scores),) = Runner(model, post, 0.001)(crowd)
    runner = Runner(model, post, 0.001, fold=True)
    ((folded_boxes, folded_scores),) = runner(crowd)
    assert batchnorms(runner.net) == 0 and batchnorms(model) > 0  # a copy: the model keeps its BatchNorms
    assert next(runner.net.parameters()).dtype == torch.float32
    # Only float rounding differs (benchmarks/bench_torch_cpu.py: 1.2x to 1.4x faster on one CPU thread).
    assert len(scores) > 20 and folded_scores.shape == scores.shape
    assert_close(folded_boxes, boxes, rtol=0, atol=0.01)
    assert_close(folded_scores, scores, rtol=0, atol=1e-5)
    # The Detector's PyTorch backend runs the folded copy on the CPU.
    detector = Detector(DEFAULT_WEIGHTS, device="cpu")
    assert batchnorms(detector.backend.runner(detector.score_thresh).net) == 0


def test_bad_settings_fail_clearly(shipped, shared_dir, capsys):
    model, post = shipped
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        Runner(model, post, cuda_graphs=True)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        Detector(device="cpu", cuda_graphs=True)
    with pytest.raises(ValueError, match="precision must be one of"):
        Detector(device="cpu", precision="fp16")
    photo = str(shared_dir / CROWD)
    assert main(["detect", photo, "--device", "cpu", "--cuda-graphs"]) == 2
    assert capsys.readouterr().err == "srn detect: error: CUDA graphs need a CUDA device, got cpu\n"


def test_detector_follows_a_new_score_thresh(shared_dir):
    detector = Detector(device="cpu", score_thresh=0.5, precision="bf16")
    found = detector.detect(shared_dir / CROWD)
    assert len(found) == 6
    detector.score_thresh = float(found.scores.median())
    above = int((found.scores >= detector.score_thresh).sum())
    assert 0 < above < 6 and len(detector.detect(shared_dir / CROWD)) == above


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graphs_replay_the_reference_detections(precision):
    # The repository's own photo, so that this runs on a GPU machine without ../shared.
    model, config = load_model(DEFAULT_WEIGHTS, "cuda")
    graphed = Runner(model, config.postprocess, 0.3, precision=precision, cuda_graphs=True)
    photo = read_image(ASTRONAUT).float().div(255)
    crop = photo[:, 20:340, 60:460]
    for image in (photo, crop, photo):  # replays of one shape, a second capture, a replay again
        batch = image.unsqueeze(0).cuda()
        with torch.inference_mode():  # the reference: the same network run eagerly, torchvision's NMS
            outputs = graphed.network(batch)
            (expected,) = PostProcessor.from_model(model, config.postprocess)(outputs, 0.3)
        ((boxes, scores),) = graphed(batch)
        assert len(scores) > 0 and scores.shape == expected.scores.shape
        assert_close(boxes, expected.boxes, rtol=0, atol=1e-3)
        assert_close(scores, expected.scores, rtol=0, atol=1e-5)
        graphed(torch.zeros_like(batch))  # another replay of the same graphs
        assert_close(boxes, expected.boxes, rtol=0, atol=1e-3)  # the results were copies
    assert len(graphed._graphs) == 2


def test_compiled_network_is_not_recompiled():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    model = build_model(backbone="resnet18", width=32, pretrained=None, init="scaled").eval()
    images = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    runner = Runner(model, min_score=0.0)
    counter = CompileCounter()  # counts graphs handed to the compiler, without compiling them
    runner.net = torch.compile(model, backend=counter)
    runner(images)  # the first call, with the anchor cache still empty
    graphs = counter.frame_count
    for _ in range(2):
        ((compiled_boxes, compiled_scores),) = runner(images)
    ((boxes, scores),) = Runner(model, min_score=0.0)(images)
    # The anchors stay outside the graph: a graph that looked into their cache was recompiled
    # on the second call, once the cache had filled.
    assert graphs == 1 and counter.frame_count == 1
    assert len(scores) > 0
    assert_close(compiled_boxes, boxes) and assert_close(compiled_scores, scores)
    torch._dynamo.reset()


def test_graphed_stages_have_no_data_dependent_step():
    # Meta tensors have shapes but no values: an op whose output shape depends on the data (nonzero,
    # boolean indexing, .item(), .tolist(): a host synchronisation on CUDA) cannot run on them. What
    # the CUDA graphs capture must run, and the reference post-processing must not.
    with torch.device("meta"):
        model = build_model(backbone="resnet18", width=32, pretrained=None).eval()
    runner = Runner(model, min_score=0.3, static_postprocess=True)
    with torch.inference_mode():
        outputs = runner.network(torch.empty(2, 3, 96, 128, device="meta"))
        static = runner.static_postprocess(outputs)
        with pytest.raises((NotImplementedError, RuntimeError), match=r"nonzero|item\(\)"):
            PostProcessor.from_model(model)(outputs)
    # K = 2 * (24*32 + 12*16 + 6*8 + 3*4 + 2*2 + 1*1) candidate slots, D = min(750, 1024, K)
    assert static.candidate_scores.shape == (2, 2050) and static.candidate_boxes.shape == (2, 2050, 4)
    assert static.boxes.shape == (2, 750, 4) and static.scores.shape == (2, 750)
    assert static.counts.shape == (2,) and static.exact.dtype == torch.bool
