"""ONNX export: numbers from onnxruntime against PyTorch at sizes and batches unlike the sample's."""

import ast
import inspect
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.testing import assert_close

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from srn import Detector  # noqa: E402
from srn.cli import main  # noqa: E402
from srn.config import DetectorConfig, ModelConfig, PostProcessConfig  # noqa: E402
from srn.errors import ExportError  # noqa: E402
from srn.export.onnx import export_onnx  # noqa: E402
from srn.inference.backends import OnnxBackend  # noqa: E402
import srn.export.onnx  # noqa: E402
import srn.inference.detector  # noqa: E402
from srn.data.image_io import read_image  # noqa: E402
from srn.inference import DEFAULT_WEIGHTS  # noqa: E402
from srn.inference.onnx_format import OnnxMetadata, read_metadata  # noqa: E402
from srn.inference.runner import Runner  # noqa: E402
from srn.model import build_model  # noqa: E402
from srn.model.srn import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from srn.postprocess import PostProcessor  # noqa: E402
from srn.weights import load_model, save_checkpoint  # noqa: E402

ASTRONAUT = Path(__file__).resolve().parents[1] / "docs" / "astronaut.png"

SMALL = DetectorConfig(model=ModelConfig(backbone="resnet18", width=32))
SAMPLE = (2, 64, 64)  # (N, H, W) of the tracing sample
# Neither the batch nor the size of the sample, and odd sizes so that every level rounds up.
RUN_SHAPES = ((1, 77, 101), (3, 48, 72))


pytestmark = pytest.mark.usefixtures("one_thread")


def spread_init(model: nn.Module) -> nn.Module:
    """Give the new layers unit-gain weights and logits around -2.

    SRN's own init (std 0.01, prior 0.01) puts every score within 1e-5 of 0.01, right on the STC
    gate; then float rounding, not the export, decides which candidates exist.
    """
    for module in (model.extra, model.first_step, model.fpn, model.head):
        for conv in module.modules():
            if isinstance(conv, nn.Conv2d):
                fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
                nn.init.normal_(conv.weight, std=1.0 / math.sqrt(fan_in))
                nn.init.normal_(conv.bias, std=0.1)
    nn.init.constant_(model.head.cls_pred.bias, -2.0)
    return model


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    torch.manual_seed(0)
    model = spread_init(build_model(SMALL.model)).eval()
    folder = tmp_path_factory.mktemp("export")
    save_checkpoint(model, SMALL, folder / "small.pt")
    return model, folder


@pytest.fixture(scope="module")
def raw_onnx(small):
    model, folder = small
    path = folder / "raw.onnx"
    metadata = export_onnx(model, path, sample_size=SAMPLE[1:], sample_batch=SAMPLE[0], backbone="resnet18")
    return path, metadata


@pytest.fixture(scope="module")
def postprocess_onnx(small):
    # Through the command line, which loads the checkpoint as Detector does.
    _, folder = small
    path = folder / "nms.onnx"
    code = main(["export", "onnx", "--weights", str(folder / "small.pt"), "--out", str(path), "--postprocess",
                 "--input-size", str(SAMPLE[1]), str(SAMPLE[2]), "--opset", "17"])
    assert code == 0
    return path


def session_options():
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1  # see one_thread
    return options


def images(shape, seed):
    return torch.rand(*shape[:1], 3, *shape[1:], generator=torch.Generator().manual_seed(seed))


def assert_outputs_match(model, session, metadata, shape, seed, atol=1e-5):
    """Every raw ONNX output against the PyTorch model's, at batch and size ``shape``."""
    x = images(shape, seed)
    arrays = dict(zip(metadata.output_names, session.run(None, {"images": x.numpy()})))
    with torch.no_grad():
        reference = model(x)
    for level, anchors in enumerate(reference.anchors):
        for step in ("step1", "step2"):
            for kind, tail in (("logits", ()), ("deltas", (4,))):
                expected = getattr(reference, f"{step}_{kind}")[level]
                name = f"{step}_{kind}_{level}"
                if expected is None:
                    assert name not in arrays
                    continue
                got = torch.from_numpy(arrays[name])
                # (N, H_l, W_l, A[, 4]): the grid is in the shape, so anchors need no guessing.
                assert got.shape[0] == shape[0] and got.shape[1] * got.shape[2] * 2 == anchors.shape[0]
                assert_close(got.reshape(shape[0], -1, *tail), expected, rtol=1e-4, atol=atol)


def test_raw_outputs_match_pytorch(small, raw_onnx):
    model, _ = small
    path, metadata = raw_onnx
    session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    assert tuple(o.name for o in session.get_outputs()) == metadata.output_names
    for seed, shape in enumerate(RUN_SHAPES):
        assert_outputs_match(model, session, metadata, shape, seed)


def test_metadata_round_trips(raw_onnx, postprocess_onnx):
    path, written = raw_onnx
    metadata = read_metadata(path)
    assert metadata == written
    assert OnnxMetadata.from_json(metadata.to_json()) == metadata
    assert metadata.strides == (4, 8, 16, 32, 64, 128)
    assert metadata.anchor_scales == (2.0, 2.828427) and metadata.anchor_ratio == 1.25
    assert metadata.stc_levels == (0, 1, 2) and metadata.str_levels == (3, 4, 5)
    assert metadata.pixel_mean == IMAGENET_MEAN and metadata.pixel_std == IMAGENET_STD
    assert metadata.postprocess == PostProcessConfig() and not metadata.postprocess_in_graph
    in_graph = read_metadata(postprocess_onnx)
    assert in_graph.postprocess_in_graph and in_graph.output_names == ("boxes", "scores", "num_detections")
    assert in_graph.backbone == "resnet18" and in_graph.opset == 17


def assert_same_detections(got, expected, atol=1e-3):
    """The same boxes with the same scores. Two runtimes may order detections whose scores agree to
    float rounding differently (this random network has pairs 4e-7 apart), so each expected box is
    paired with its nearest got box, and the pairing must be one to one."""
    assert len(got) == len(expected)
    distance = (got.boxes[None, :, :] - expected.boxes[:, None, :]).abs().amax(dim=2)  # (E, G)
    nearest = distance.argmin(dim=1)
    assert sorted(nearest.tolist()) == list(range(len(got)))
    assert_close(got.boxes[nearest], expected.boxes, rtol=1e-4, atol=atol)
    assert_close(got.scores[nearest], expected.scores, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layout", ["raw", "postprocess"])
def test_onnx_detector_equals_detector(small, raw_onnx, postprocess_onnx, layout):
    _, folder = small
    path = raw_onnx[0] if layout == "raw" else postprocess_onnx
    reference = Detector(folder / "small.pt", device="cpu", score_thresh=0.2)
    onnx_detector = Detector(path, device="cpu", score_thresh=0.2, threads=1)
    assert isinstance(onnx_detector.backend, OnnxBackend) and onnx_detector.model is None
    gen = torch.Generator().manual_seed(3)
    # Two sizes in one call: the batch is padded, as Detector pads it.
    photos = [torch.randint(0, 256, (3, 60, 90), dtype=torch.uint8, generator=gen),
              torch.randint(0, 256, (3, 50, 41), dtype=torch.uint8, generator=gen)]
    for expected, got in zip(reference.detect(photos), onnx_detector.detect(photos)):
        assert len(expected) > 0
        assert (got.width, got.height) == (expected.width, expected.height)
        assert_same_detections(got, expected)


@pytest.mark.parametrize("postprocess", [False, True])
def test_score_calibration_travels_into_onnx_files(small, tmp_path, postprocess):
    """A checkpoint's Platt scaling is in the exported file's metadata (raw layout) or graph
    (post-processed), so both runtimes give the calibrated scores."""
    model, _ = small
    calibrated = replace(SMALL, postprocess=replace(SMALL.postprocess, score_scale=2.5, score_shift=0.3))
    save_checkpoint(model, calibrated, tmp_path / "calibrated.pt")
    path = tmp_path / "calibrated.onnx"
    args = ["--postprocess"] if postprocess else []
    assert main(["export", "onnx", "--weights", str(tmp_path / "calibrated.pt"), "--out", str(path), *args,
                 "--input-size", str(SAMPLE[1]), str(SAMPLE[2])]) == 0
    photo = torch.randint(0, 256, (3, 60, 90), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    reference = Detector(tmp_path / "calibrated.pt", device="cpu", score_thresh=0.0).detect(photo)
    uncalibrated = Detector(small[1] / "small.pt", device="cpu", score_thresh=0.0).detect(photo)
    got = Detector(path, device="cpu", score_thresh=0.0, threads=1).detect(photo)
    assert len(reference) > 0
    expected = torch.sigmoid(2.5 * torch.logit(uncalibrated.scores.double()) + 0.3).float()
    assert_close(reference.scores, expected, rtol=1e-4, atol=1e-5)
    assert_close(reference.boxes, uncalibrated.boxes)
    assert_close(got.scores, reference.scores, rtol=1e-4, atol=1e-5)


def test_bad_files_name_themselves(tmp_path):
    missing = tmp_path / "missing.onnx"
    with pytest.raises(ExportError, match="missing.onnx"):
        Detector(missing)
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(b"not a protobuf")
    with pytest.raises(ExportError, match="foreign.onnx"):
        read_metadata(foreign)


@pytest.mark.slow
def test_srn_r50_raw_outputs_match_pytorch(tmp_path):
    # The paper's network: about 10 s on one CPU core.
    torch.manual_seed(0)
    model = spread_init(build_model()).eval()
    metadata = export_onnx(model, tmp_path / "r50.onnx", sample_size=(64, 64), backbone="resnet50")
    session = ort.InferenceSession(str(tmp_path / "r50.onnx"), session_options(), providers=["CPUExecutionProvider"])
    # Outputs reach ~50 here; after fifty float32 layers the runtimes differ by up to ~6e-5 (about
    # 1e-6 of that range) on elements near zero, where rtol alone cannot absorb it.
    assert_outputs_match(model, session, metadata, (1, 80, 72), 0, atol=1e-4)


def test_cli_and_eval_run_onnx_files(small, raw_onnx, tmp_path, capsys):
    import csv
    import io

    import PIL.Image

    _, folder = small
    photo = tmp_path / "photo.png"
    pixels = torch.randint(0, 256, (60, 90, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    PIL.Image.fromarray(pixels.numpy()).save(photo)
    rows = {}
    for weights in (folder / "small.pt", raw_onnx[0]):
        argv = ["detect", str(photo), "--weights", str(weights), "--device", "cpu", "--score-thresh", "0.2", "--format", "csv", "--threads", "1"]
        assert main(argv) == 0
        rows[weights.suffix] = [[float(v) for v in row[3:]] for row in list(csv.reader(io.StringIO(capsys.readouterr().out)))[1:]]
    assert len(rows[".pt"]) > 0
    assert_close(torch.tensor(rows[".onnx"]), torch.tensor(rows[".pt"]), rtol=0, atol=0.011)
    assert isinstance(Detector(raw_onnx[0], "cpu", threads=1).backend, OnnxBackend)  # what srn eval uses
    assert main(["detect", str(photo), "--weights", str(raw_onnx[0]), "--precision", "bf16"]) == 2
    assert capsys.readouterr().err.endswith("an ONNX model runs as exported, in fp32 and without CUDA graphs\n")


def test_postprocessed_graph_equals_pytorch_on_the_shipped_model(tmp_path):
    model, config = load_model(DEFAULT_WEIGHTS, "cpu")
    path = tmp_path / "shipped_pp.onnx"
    # Traced on a small sample of another size: the graph must follow the photo's 512x512.
    export_onnx(model, path, sample_size=(64, 96), postprocess=True, postprocess_config=config.postprocess)
    image = read_image(ASTRONAUT).float().div(255).unsqueeze(0)
    session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    boxes, scores, counts = (torch.from_numpy(a) for a in session.run(None, {"images": image.numpy()}))
    with torch.no_grad():
        (expected,) = PostProcessor.from_model(model, config.postprocess)(model(image))
    # Every detection, min_score 0; the count is the shipped model's (66 since the level-1 adapter of 2026-12-07).
    assert counts.tolist() == [66] and expected.scores.numel() == 66
    assert_close(scores[0, :66], expected.scores, rtol=0, atol=1e-4)
    # Boxes reach 600 px, where a float32 step is 6e-5: 1e-3 px allows the few steps that two
    # runtimes' different summation orders give.
    assert_close(boxes[0, :66], expected.boxes, rtol=0, atol=1e-3)
    assert (scores[0, 70:] == -1).all() and (boxes[0, 70:] == 0).all()


def test_export_traces_the_runners_candidate_selection(small, tmp_path, monkeypatch):
    model, _ = small
    config = PostProcessConfig(nms_iou=0.5)
    traced = []
    candidates = PostProcessor.candidates

    def spy(self, outputs):
        traced.append((self, torch.jit.is_tracing()))
        return candidates(self, outputs)

    monkeypatch.setattr(PostProcessor, "candidates", spy)
    export_onnx(model, tmp_path / "spy.onnx", sample_size=SAMPLE[1:], sample_batch=SAMPLE[0], postprocess=True,
                postprocess_config=config)
    # The graph's STC gate, thresholds, top-k and STR decode are the runner's PostProcessor, traced.
    assert traced and all(tracing for _, tracing in traced)
    assert {post for post, _ in traced} == {Runner(model, config).postprocessor}
    # ... and the export module's code holds no second copy of them: only the NMS op is its own.
    tree = ast.parse(inspect.getsource(srn.export.onnx))
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    names |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    names |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert not names & {"sigmoid", "decode", "stc_theta", "candidate_thresh", "min_cells_for_thresh", "pre_nms_top_k"}


@pytest.fixture(scope="module")
def calibration_photos(tmp_path_factory):
    """Two real photos (the astronaut and a crop of it) and one file that is not an image."""
    import PIL.Image

    folder = tmp_path_factory.mktemp("calibration")
    with PIL.Image.open(ASTRONAUT) as im:
        im.convert("RGB").save(folder / "a.png")
        im.convert("RGB").crop((50, 0, 350, 200)).save(folder / "b.jpg", quality=90)
    (folder / "c.jpg").write_text("not a photo")
    return folder


def test_cli_int8_export_from_a_checkpoint_and_from_an_fp32_file(small, raw_onnx, calibration_photos, tmp_path, capsys):
    from srn.export.quantize import read_quantization

    _, folder = small
    for weights in (folder / "small.pt", raw_onnx[0]):
        out = tmp_path / f"{weights.stem}.int8.onnx"
        code = main(["export", "onnx", "--weights", str(weights), "--out", str(out), "--int8", "--calibration",
                     str(calibration_photos), "--calibration-count", "3"])
        stdout = capsys.readouterr().out
        assert code == 0
        assert "calibrated on 2 photos, 1 unreadable skipped" in stdout
        record = read_quantization(out)
        assert (record["images"], record["skipped"], record["activation_type"]) == (2, 1, "quint8")
        # The metadata that Detector reads is kept: it runs the file as any export.
        detector = Detector(out, "cpu", threads=1, score_thresh=0.0)
        assert detector.backend.metadata.strides == (4, 8, 16, 32, 64, 128) and len(detector.detect(ASTRONAUT)) > 0


def test_read_quantization_refuses_fp32_and_corrupt_files(raw_onnx, tmp_path):
    from srn.export.quantize import read_quantization

    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage")
    for path, message in ((raw_onnx[0], "not an int8 model"), (corrupt, "not a readable ONNX file"),
                          (tmp_path / "missing.onnx", "ONNX file not found")):
        with pytest.raises(ExportError, match=message) as caught:
            read_quantization(path)
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_cli_int8_bad_inputs_are_one_line(small, calibration_photos, tmp_path, capsys):
    _, folder = small
    weights = str(folder / "small.pt")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no photos here")
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "x.jpg").write_bytes(b"\xff\xd8\xff truncated")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_text("not a protobuf")
    int8 = Path(srn.inference.detector.DEFAULT_CPU_WEIGHTS)
    cases = [
        (["--weights", weights, "--calibration", str(empty)], "empty: no image files"),
        (["--weights", weights, "--calibration", str(unreadable)], "it is the only calibration image"),
        (["--weights", weights, "--calibration", str(tmp_path / "nowhere")], "no such calibration folder"),
        (["--weights", weights], "--int8 needs --calibration DIR"),
        (["--weights", weights, "--calibration", str(calibration_photos), "--postprocess"], "cannot be combined with --postprocess"),
        (["--weights", str(corrupt), "--calibration", str(calibration_photos)], "corrupt.onnx: onnxruntime cannot load it"),
        (["--weights", str(int8), "--calibration", str(calibration_photos)], "already quantised"),
    ]
    for extra, message in cases:
        out = tmp_path / "out.onnx"
        assert main(["export", "onnx", "--out", str(out), "--int8", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("srn export: error: ") and err.count("\n") == 1 and message in err, err
        assert not out.exists()
    assert main(["export", "onnx", "--out", str(tmp_path / "x.onnx"), "--weights", str(int8)]) == 2
    assert "already an ONNX file" in capsys.readouterr().err


def test_the_command_lines_defaults_are_the_librarys():
    import srn.cli.export
    from srn.export import quantize

    assert srn.cli.export.DEFAULT_OPSET == srn.export.onnx.DEFAULT_OPSET
    assert srn.cli.export.DEFAULT_CALIBRATION_COUNT == quantize.DEFAULT_CALIBRATION_COUNT
