"""int8 export: QDQ nodes with per-channel weight scales, the fp32 file's metadata kept, the same face
found, and bad inputs as one-line errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torchvision.ops import box_iou

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")

from srn import Detector  # noqa: E402
from srn.errors import ExportError, ImageReadError, OutputPathError, SRNError  # noqa: E402
from srn.export.onnx import export_checkpoint  # noqa: E402
from srn.export.quantize import (  # noqa: E402
    CALIBRATION_KEY,
    QUANTIZATION,
    QUANTIZATION_KEY,
    prepare_calibration_image,
    quantize_onnx,
    select_calibration_images,
)
from tests.scripts import load_script  # noqa: E402

ASTRONAUT = Path(__file__).resolve().parents[1] / "docs" / "astronaut.png"  # NASA, public domain, 512x512

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fp32(tmp_path_factory) -> Path:
    """The shipped model as a raw-layout fp32 ONNX file."""
    path = tmp_path_factory.mktemp("fp32") / "srn.onnx"
    export_checkpoint(None, path)
    return path


@pytest.fixture(scope="module")
def calibration(tmp_path_factory) -> Path:
    """Four photos (the astronaut, mirrored, cropped, shrunk) and one corrupt file."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("calibration")
    with Image.open(ASTRONAUT) as im:
        im = im.convert("RGB")
        im.save(folder / "a.png")
        im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "b.jpg", quality=90)
        im.crop((100, 0, 400, 300)).save(folder / "c.jpg", quality=90)
        im.resize((200, 200)).save(folder / "d.png")
    (folder / "e.jpg").write_bytes(b"not a jpeg")
    return folder


@pytest.fixture(scope="module")
def int8(fp32, calibration, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("int8") / "srn.int8.onnx"
    report = quantize_onnx(fp32, out, select_calibration_images(calibration), input_size=256)
    return out, report


def test_report_counts_used_and_skipped_photos(int8):
    out, report = int8
    assert report.path == out and out.is_file()
    assert report.calibration_images == 4
    assert [Path(p).name for p, _ in report.skipped] == ["e.jpg"]
    assert report.int8_bytes < report.fp32_bytes / 2


def test_qdq_nodes_and_per_channel_weight_scales(int8):
    model = onnx.load(str(int8[0]))
    ops = [node.op_type for node in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    initializers = {t.name: t for t in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    assert convs
    for conv in convs:
        dq = producers[conv.input[1]]  # the weight comes dequantised from int8
        assert dq.op_type == "DequantizeLinear", conv.name
        weight, scale = initializers[dq.input[0]], initializers[dq.input[1]]
        assert weight.data_type == onnx.TensorProto.INT8
        axis = {a.name: a.i for a in dq.attribute}.get("axis", 1)
        assert axis == 0
        # One scale per output channel: (C_out,) for a (C_out, C_in/groups, kH, kW) weight.
        assert list(scale.dims) == [weight.dims[0]], conv.name


def test_reduce_range_stores_7_bit_weights(fp32, calibration, tmp_path):
    out = tmp_path / "rr.int8.onnx"
    quantize_onnx(fp32, out, select_calibration_images(calibration, 2), input_size=128, reduce_range=True)
    model = onnx.load(str(out))
    weights = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert len(weights) == 95
    assert min(int(w.min()) for w in weights) == -64 and max(int(w.max()) for w in weights) == 64
    calibration_record = json.loads({p.key: p.value for p in model.metadata_props}[CALIBRATION_KEY])
    assert calibration_record["weight_type"] == "qint8 per channel, 7 bits"


def test_keeps_the_fp32_metadata_and_says_it_is_int8(fp32, int8):
    before = {p.key: p.value for p in onnx.load(str(fp32)).metadata_props}
    after = {p.key: p.value for p in onnx.load(str(int8[0])).metadata_props}
    assert {k: after[k] for k in before} == before
    assert after[QUANTIZATION_KEY] == QUANTIZATION
    calibration = json.loads(after[CALIBRATION_KEY])
    assert calibration["images"] == 4 and calibration["skipped"] == 1 and calibration["input_size"] == 256


def test_int8_finds_the_astronauts_face_where_fp32_does(fp32, int8):
    reference = Detector(fp32, device="cpu", threads=1).detect(ASTRONAUT)
    faces = Detector(int8[0], device="cpu", threads=1).detect(ASTRONAUT)
    assert len(reference) >= 1 and len(faces) >= 1
    assert float(box_iou(faces.boxes[:1], reference.boxes[:1])) > 0.8
    assert abs(float(faces.scores[0]) - float(reference.scores[0])) < 0.2


def test_calibration_input_is_padded_with_the_mean(tmp_path):
    from PIL import Image

    Image.new("RGB", (100, 50), (255, 0, 0)).save(tmp_path / "wide.png")
    batch = prepare_calibration_image(tmp_path / "wide.png", 64, (0.5, 0.25, 0.125))
    assert batch.shape == (1, 3, 64, 64) and batch.dtype.name == "float32"
    torch.testing.assert_close(torch.from_numpy(batch[0, :, :32]), torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand(3, 32, 64))
    torch.testing.assert_close(torch.from_numpy(batch[0, :, 32:]), torch.tensor([0.5, 0.25, 0.125]).view(3, 1, 1).expand(3, 32, 64))


def test_calibration_sample_is_sorted_and_evenly_spaced(tmp_path):
    for name in ["b/07.jpg", "a/00.png", "a/01.png", "a/02.png", "a/03.png", "b/04.jpg", "b/05.jpg", "b/06.jpg",
                 "b/08.JPEG", "b/09.bmp", ".hidden/x.jpg", "a/notes.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    picked = select_calibration_images(tmp_path, 4)
    assert [p.stem for p in picked] == ["00", "02", "05", "07"]  # i * 10 // 4 for i < 4
    assert len(select_calibration_images(tmp_path, 50)) == 10


def one_line_naming(error: pytest.ExceptionInfo, path: Path) -> None:
    message = str(error.value)
    assert "\n" not in message and str(path) in message, message


def test_empty_calibration_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("no photos here")
    with pytest.raises(ExportError) as error:
        select_calibration_images(tmp_path)
    one_line_naming(error, tmp_path)


def test_no_readable_calibration_image(fp32, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff truncated")
    with pytest.raises(ImageReadError) as error:
        quantize_onnx(fp32, tmp_path / "out.onnx", [bad], input_size=64)
    one_line_naming(error, bad)
    assert not (tmp_path / "out.onnx").exists()


def test_text_file_named_onnx(calibration, tmp_path):
    fake = tmp_path / "fake.onnx"
    fake.write_text("this is not a model\n")
    with pytest.raises(SRNError) as error:
        quantize_onnx(fake, tmp_path / "out.onnx", [calibration / "a.png"], input_size=64)
    one_line_naming(error, fake)


def test_onnx_without_srn_metadata(fp32, calibration, tmp_path):
    from onnx import TensorProto, helper

    plain = tmp_path / "plain.onnx"
    graph = helper.make_graph(
        [helper.make_node("Relu", ["images"], ["y"])],
        "plain",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(plain))
    with pytest.raises(SRNError) as error:
        quantize_onnx(plain, tmp_path / "out.onnx", [calibration / "a.png"], input_size=64)
    one_line_naming(error, plain)


def test_refuses_to_overwrite_the_fp32_file(fp32, calibration):
    with pytest.raises(OutputPathError) as error:
        quantize_onnx(fp32, fp32, [calibration / "a.png"])
    one_line_naming(error, fp32)


def test_missing_file_and_int8_input(int8, calibration, tmp_path):
    with pytest.raises(ExportError) as error:
        quantize_onnx(tmp_path / "missing.onnx", tmp_path / "out.onnx", [calibration / "a.png"])
    one_line_naming(error, tmp_path / "missing.onnx")
    with pytest.raises(ExportError) as error:
        quantize_onnx(int8[0], tmp_path / "out.onnx", [calibration / "a.png"])
    one_line_naming(error, int8[0])


def test_post_processed_graph_is_refused(small_weights, calibration, tmp_path):
    graph = tmp_path / "pp.onnx"
    export_checkpoint(small_weights, graph, postprocess=True, sample_size=(64, 64))
    with pytest.raises(ExportError) as error:
        quantize_onnx(graph, tmp_path / "out.onnx", [calibration / "a.png"], input_size=64)
    one_line_naming(error, graph)
    assert "post-processing" in str(error.value)


def _tool():
    return load_script("tools/export_default_int8.py")


def test_keep_from_takes_the_shipped_tensors_of_the_levels_a_fine_tune_left_alone(small_weights, calibration, tmp_path, capsys):
    """--keep-from: a fine-tune of pyramid level 0 keeps the shipped int8 copy's outputs exactly on
    levels 1-5, even where the shipped copy was quantised differently (here: one range of level 3
    altered), and gets the new export's on level 0; another graph is a one-line error."""
    import numpy as np
    import onnxruntime as ort
    from onnx import numpy_helper

    from dataclasses import replace

    from srn.config import DetectorConfig, ModelConfig
    from srn.engine.checkpoint import init_from
    from srn.model import SRN, build_model
    from srn.weights import load_model, save_checkpoint

    tool = _tool()
    common = ["--calibration", str(calibration), "--size", "256"]
    old_pt = Path(small_weights)
    assert tool.main(["--weights", str(old_pt), *common, "--out", str(tmp_path / "old.int8.onnx")]) == 0
    shipped = onnx.load(str(tmp_path / "old.int8.onnx"))  # "quantised on another installation"
    altered = [t for t in shipped.graph.initializer if t.name == "/model/head/cls_pred_3/Conv_output_0_scale"]
    assert len(altered) == 1
    altered[0].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(altered[0]) * 1.25, altered[0].name))
    onnx.save(shipped, str(tmp_path / "shipped.int8.onnx"))

    model, config = load_model(old_pt)
    with torch.no_grad():
        model.fpn.outputs[0].weight.mul_(1.5)  # the fine-tune: level 0 only
    save_checkpoint(model, config, tmp_path / "new.pt")
    assert tool.main(["--weights", str(tmp_path / "new.pt"), *common, "--out", str(tmp_path / "plain.int8.onnx")]) == 0
    assert tool.main(["--weights", str(tmp_path / "new.pt"), *common, "--out", str(tmp_path / "kept.int8.onnx"),
                      "--keep-from", str(old_pt), str(tmp_path / "shipped.int8.onnx")]) == 0

    image = np.random.default_rng(0).uniform(0, 255, (1, 3, 256, 256)).astype(np.float32)
    run = {name: dict(zip([o.name for o in ort.InferenceSession(str(tmp_path / f"{name}.int8.onnx")).get_outputs()],
                          ort.InferenceSession(str(tmp_path / f"{name}.int8.onnx")).run(None, {"images": image})))
           for name in ("shipped", "plain", "kept")}
    for name, kept in run["kept"].items():
        level = int(name.rsplit("_", 1)[1])
        expected = run["plain" if level == 0 else "shipped"][name]
        np.testing.assert_array_equal(kept, expected, err_msg=name)
    assert not np.array_equal(run["plain"]["step2_logits_0"], run["shipped"]["step2_logits_0"])
    assert not np.array_equal(run["plain"]["step2_logits_3"], run["shipped"]["step2_logits_3"])

    # A fine-tune that added a residual adapter and a (dilated) context block at level 0: compared with the
    # old weights in its own architecture; levels 1-5 are still the shipped copy's, level 0 the new export's
    # (both steps: the head quantises the two branches of a level as one tensor).
    adapted_config = replace(config, model=replace(config.model, adapter_levels=(0,), context_levels=(0,)))
    adapted = SRN.from_config(adapted_config.model)
    init_from(adapted, old_pt)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for parameter in (*adapted.adapters.parameters(), *adapted.contexts.parameters()):
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    save_checkpoint(adapted.eval(), adapted_config, tmp_path / "adapted.pt")
    assert tool.main(["--weights", str(tmp_path / "adapted.pt"), *common, "--out", str(tmp_path / "adapted_plain.int8.onnx")]) == 0
    assert tool.main(["--weights", str(tmp_path / "adapted.pt"), *common, "--out", str(tmp_path / "adapted_kept.int8.onnx"),
                      "--keep-from", str(old_pt), str(tmp_path / "shipped.int8.onnx")]) == 0
    for name in ("adapted_plain", "adapted_kept"):
        session = ort.InferenceSession(str(tmp_path / f"{name}.int8.onnx"))
        run[name] = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": image})))
    for name, kept in run["adapted_kept"].items():
        level = int(name.rsplit("_", 1)[1])
        expected = run["adapted_plain" if level == 0 else "shipped"][name]
        np.testing.assert_array_equal(kept, expected, err_msg=name)
    assert not np.array_equal(run["adapted_kept"]["step2_logits_0"], run["shipped"]["step2_logits_0"])

    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    other_config = DetectorConfig(model=ModelConfig(backbone="resnet18", width=16, init="scaled"))
    save_checkpoint(build_model(other_config.model).eval(), other_config, other)
    assert tool.main(["--weights", str(other), *common, "--out", str(tmp_path / "o.int8.onnx")]) == 0
    capsys.readouterr()
    assert tool.main(["--weights", str(tmp_path / "new.pt"), *common, "--out", str(tmp_path / "bad.int8.onnx"),
                      "--keep-from", str(old_pt), str(tmp_path / "o.int8.onnx")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [f"export_default_int8: error: {tmp_path / 'o.int8.onnx'}: its graph is not the one this export makes; "
                     "the unchanged tensors cannot be kept from it"]
    assert not (tmp_path / "bad.int8.onnx").exists()
    (tmp_path / "text.onnx").write_text("not a model")
    for old in (tmp_path / "missing.int8.onnx", tmp_path / "text.onnx"):
        assert tool.main(["--weights", str(tmp_path / "new.pt"), *common, "--out", str(tmp_path / "bad.int8.onnx"),
                          "--keep-from", str(old_pt), str(old)]) == 2
        error = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert error == [f"export_default_int8: error: {old}: " + ("no such file" if old.name.startswith("missing") else "not an ONNX file (DecodeError)")]
        assert not (tmp_path / "bad.int8.onnx").exists()
