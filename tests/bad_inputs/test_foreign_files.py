"""Files that carry the right names but are not what they claim: a foreign ONNX graph with srn
metadata, ``model.pretrained`` that is text, a tensor or a pickle of Python objects; and settings that
would silently give wrong results (a calibration that overflows float32, a freeze that leaves nothing
to train). Each is one line and exit 2, never a traceback, never a run that finds no face."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml

from srn.anchors import feature_sizes_for_image
from srn.config import MAX_SCORE_CALIBRATION, PostProcessConfig
from srn.errors import ConfigError, ExportError
from srn.inference.onnx_format import raw_output_names, read_metadata
from tests.bad_inputs.conftest import PHOTO
from tests.bad_inputs.foreign_onnx import foreign_onnx, srn_metadata
from tests.bad_inputs.conftest import run_cli as run

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def outputs(anchors: int = 2, sizes=None) -> dict[str, list[int]]:
    shapes = {}
    for level, (h, w) in enumerate(sizes or feature_sizes_for_image(64, 64)):
        for step in ("step1", "step2"):
            shapes[f"{step}_logits_{level}"] = [1, h, w, anchors]
            shapes[f"{step}_deltas_{level}"] = [1, h, w, anchors, 4]
    return {name: shapes[name] for name in raw_output_names(6, range(6))}


def bent(**changes) -> str:
    """The fitting metadata's JSON with ``changes`` written over it (no check on the way)."""
    return json.dumps({**json.loads(srn_metadata().to_json()), **changes})


TWO_LEVELS = srn_metadata(strides=(4, 8), stc_levels=(0, 1), str_levels=(), first_step_levels=(0, 1),
                          output_names=raw_output_names(2, range(2)))

# name -> (what the foreign file is made with, the reason the one line gives)
FOREIGN = {
    "wrong input": ({"input_name": "x"}, "its graph does not fit its srn metadata: inputs ['x'], the metadata says one, 'images'"),
    "wrong outputs": ({"outputs": {k: v for k, v in outputs().items() if k.startswith("step2")}},
                      "its graph does not fit its srn metadata: 12 outputs, the metadata names 24 (6 levels, raw layout)"),
    "two strides, six levels": ({"metadata_json": bent(strides=[4, 8])}, "srn metadata that does not fit an SRN (stc_levels: "
                                "must be distinct levels from 0 to 1 (one per stride), got [0, 1, 2])"),
    "two levels stated, six in the graph": ({"metadata_json": TWO_LEVELS.to_json()},
                                            "its graph does not fit its srn metadata: 24 outputs, the metadata names 8 "
                                            "(2 levels, raw layout)"),
    "anchors the graph does not have": ({"metadata_json": bent(anchor_scales=[1.0, 2.0, 3.0], num_anchors=3)},
                                        "its graph does not fit its srn metadata: output step1_logits_0 has shape "
                                        "[1, 16, 16, 2], its layout (3 anchors per cell) gives ?x?x?x3"),
    "anchors and their count disagree": ({"metadata_json": bent(num_anchors=3)},
                                         "srn metadata that does not fit an SRN (num_anchors: must be one per anchor "
                                         "scale (2), got 3)"),
    "strides of another network": ({"metadata_json": bent(strides=[8, 16, 32, 64, 128, 256])},
                                   "srn metadata that does not fit an SRN (strides: must be SRN's level strides "
                                   "[4, 8, 16, 32, 64, 128] (or a prefix of them), got [8, 16, 32, 64, ...])"),
    "zero pixel std": ({"metadata_json": bent(pixel_std=[0, 0, 0])}, "srn metadata that does not fit an SRN (pixel_std: "
                       "must be three numbers from 1e-06 to 1 (R, G, B of images in [0, 1]), got [0.0, 0.0, 0.0])"),
    "overflowing calibration": ({"metadata_json": bent(postprocess={"score_scale": 1e300})},
                                "srn metadata that does not fit an SRN (postprocess.score_scale: must be a positive "
                                "number up to 1000, got 1e+300)"),
    "metadata nested too deeply": ({"metadata_json": "[" * 100_000}, "unreadable srn metadata (nested too deeply)"),
}


@pytest.mark.parametrize("name", sorted(FOREIGN))
def test_a_foreign_onnx_file_is_one_line(tmp_path, capsys, name):
    make, reason = FOREIGN[name]
    model = foreign_onnx(tmp_path / "foreign.onnx", **make)
    code, lines = run(capsys, "detect", PHOTO, "--weights", model, "--device", "cpu", "--out", tmp_path / "f.jsonl")
    assert (code, lines) == (2, [f"srn detect: error: {model}: {reason}"])
    with pytest.raises(ExportError):
        read_metadata(model)


def test_the_foreign_graph_with_fitting_metadata_runs(tmp_path, capsys):
    model = foreign_onnx(tmp_path / "fits.onnx")
    code, _ = run(capsys, "detect", PHOTO, "--weights", model, "--device", "cpu", "--out", tmp_path / "f.jsonl")
    assert code == 0  # the generator's baseline: each case above bends one thing of it


def test_outputs_whose_sizes_are_not_the_networks_steps_are_one_line(tmp_path, capsys):
    model = foreign_onnx(tmp_path / "flat.onnx", outputs=outputs(sizes=[(16, 16)] * 6))
    code, lines = run(capsys, "detect", PHOTO, "--weights", model, "--device", "cpu", "--out", tmp_path / "f.jsonl")
    assert code == 2 and len(lines) == 1
    assert "output step2_logits_1 is 16x16 after a level of 16x16: not the network's stride-2 step" in lines[0]


# -- model.pretrained -------------------------------------------------------------------------------


class _Shell:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _pretrained(tmp_path, kind):
    path = tmp_path / f"imagenet_{kind}.pth"
    if kind == "text":
        path.write_text("these are my notes, not weights\n")
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "pickle":
        torch.save({"conv1.weight": _Shell()}, path)
    return path


@pytest.mark.parametrize("kind, reason", [
    ("text", "not a state dict of ImageNet weights (not a file that torch.save wrote)"),
    ("tensor", "not a state dict of ImageNet weights (it holds a Tensor, not names mapped to tensors)"),
    ("pickle", "not a state dict of ImageNet weights (it holds a Python object (posix.system), which is never unpickled)"),
])
def test_a_pretrained_file_that_is_not_imagenet_weights_is_one_line(tmp_path, capsys, kind, reason):
    path = _pretrained(tmp_path, kind)
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"backbone": "resnet18", "width": 32, "pretrained": str(path)},
        "data": {"train": [{"format": "wider", "annotations": str(tmp_path / "labels.txt")}], "size": 96, "workers": 0},
        "train": {"output_dir": str(tmp_path / "run"), "batch_size": 2, "batch_per_device": 2, "max_iters": 1,
                  "device": "cpu", "tensorboard": False}}))
    code, lines = run(capsys, "train", config)
    assert (code, lines) == (2, [f"srn train: error: {path}: {reason}"])
    assert "weights_only" not in "\n".join(lines)


# -- scores that stay finite ------------------------------------------------------------------------


@pytest.mark.parametrize("key, value", [("score_scale", 1e300), ("score_scale", 1e39), ("score_shift", -1e300),
                                        ("score_scale", 0.0)])
def test_a_calibration_that_would_overflow_float32_is_refused(key, value):
    with pytest.raises(ConfigError, match=f"postprocess.{key}: must be"):
        PostProcessConfig(**{key: value})
    PostProcessConfig(score_scale=MAX_SCORE_CALIBRATION, score_shift=-MAX_SCORE_CALIBRATION)  # the bounds themselves


def test_a_checkpoint_with_an_overflowing_calibration_is_one_line(tmp_path, capsys, small_weights):
    data = torch.load(small_weights, weights_only=True)
    data["config"]["postprocess"]["score_scale"] = 1e300
    bad = tmp_path / "calibrated.pt"
    torch.save(data, bad)
    for command in ("detect", "anonymize"):
        code, lines = run(capsys, command, PHOTO, "--weights", bad, "--device", "cpu", "--out", tmp_path / f"o_{command}.png")
        assert code == 2 and len(lines) == 1, lines
        assert "postprocess.score_scale: must be a positive number up to 1000, got 1e+300" in lines[0]


def test_a_training_config_with_an_overflowing_calibration_is_one_line(capsys, tmp_path):
    code, lines = run(capsys, "train", "srn_r50_widerface", f"train.output_dir={tmp_path / 'run'}", "postprocess.score_scale=1e300")
    assert (code, lines) == (2, ["srn train: error: postprocess.score_scale: must be a positive number up to 1000, got 1e+300"])


# -- train.freeze -----------------------------------------------------------------------------------


def test_a_freeze_that_matches_every_parameter_is_one_line(tmp_path, capsys, shared_dir):
    from tests.bad_inputs.test_train_bad_inputs import real_faces, write_config, write_labels

    config = write_config(tmp_path, write_labels(tmp_path / "labels.txt", real_faces(shared_dir)))
    code, lines = run(capsys, "train", config, "train.freeze=[backbone,fpn,first_step,head,extra]")
    assert code == 2 and len(lines) == 1 and "train.freeze" in lines[0]
