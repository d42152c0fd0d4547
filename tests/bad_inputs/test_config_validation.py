"""Configuration checked in one pass before any work: each bad value, layout or ``_base_`` chain is
one ``ConfigError`` line naming the key (or the file), exit 2, and no output folder is made."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from srn.config import DetectorConfig, ModelConfig, PostProcessConfig, TrainingConfig, load_yaml
from srn.errors import ConfigError
from tests.bad_inputs.conftest import run_cli as run


def write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


# -- the _base_ chain ---------------------------------------------------------------------------------


def test_a_base_that_names_itself_is_a_cycle(tmp_path, capsys):
    config = write(tmp_path / "a.yaml", {"_base_": "a.yaml", "train": {"lr": 0.1}})
    code, lines = run(capsys, "train", config)
    assert code == 2
    assert lines == [f"srn train: error: {config}: _base_ 'a.yaml' leads back to {config}: the files form a cycle "
                     f"({config} -> {config})"]


def test_a_longer_cycle_names_every_file(tmp_path):
    a = write(tmp_path / "a.yaml", {"_base_": "b.yaml"})
    b = write(tmp_path / "b.yaml", {"_base_": "./sub/../a.yaml"})
    with pytest.raises(ConfigError) as info:
        load_yaml(TrainingConfig, a)
    assert str(info.value) == (f"{b}: _base_ './sub/../a.yaml' leads back to {a}: the files form a cycle "
                               f"({a} -> {b} -> {tmp_path / 'sub/../a.yaml'})")


@pytest.mark.parametrize("base, shown", [
    (["a.yaml", "b.yaml"], "a list ['a.yaml', 'b.yaml']"),
    ({"file": "a.yaml"}, "a mapping {'file': 'a.yaml'}"),
    (3, "3"),
    ("", "''"),
    (None, "None"),
])
def test_a_base_must_be_one_file_name(tmp_path, capsys, base, shown):
    config = write(tmp_path / "c.yaml", {"_base_": base})
    code, lines = run(capsys, "train", config)
    assert code == 2
    assert lines == [f"srn train: error: {config}: _base_ must name one YAML file (a path relative to this file), got {shown}"]


def test_a_good_chain_still_merges(tmp_path):
    write(tmp_path / "base.yaml", {"train": {"lr": 0.5, "epochs": 3}})
    top = write(tmp_path / "top.yaml", {"_base_": "base.yaml", "train": {"epochs": 4}})
    config = load_yaml(TrainingConfig, top)
    assert (config.train.lr, config.train.epochs) == (0.5, 4)


# -- values: type, range, cross-field -----------------------------------------------------------------


@pytest.mark.parametrize("override, message", [
    ("model.width=0", "model.width: must be a whole number of channels from 4 to 4096, got 0"),
    ("model.width=2", "model.width: must be a whole number of channels from 4 to 4096, got 2"),
    ("model.stc_levels=[0,6]", "model.stc_levels: must be distinct level indices from 0 to 5 (strides 4 to 128), got [0, 6]"),
    ("model.str_levels=[-1]", "model.str_levels: must be distinct level indices from 0 to 5 (strides 4 to 128), got [-1]"),
    ("model.str_levels=[3,3]", "model.str_levels: must be distinct level indices from 0 to 5 (strides 4 to 128), got [3, 3]"),
    ("model.backbone=vgg16", "model.backbone: unknown backbone 'vgg16'; choose one of "
                             "resnet18, resnet34, resnet50, resnet101, resnet152, mobilenet_v2"),
    ("model.anchor_scales=[]", "model.anchor_scales: must be a non-empty list of positive numbers, got []"),
    ("model.prior_prob=1", "model.prior_prob: must be between 0 and 1 (both excluded), got 1.0"),
    ("model.init=xavier", "model.init: must be normal or scaled, got 'xavier'"),
    ("data.size=100000", "data.size: must be from 32 to 8192 pixels, got 100000"),
    ("postprocess.nms_iou=0", "postprocess.nms_iou: must be in (0, 1], got 0.0"),
    ("postprocess.max_detections=0", "postprocess.max_detections: must be at least 1, got 0"),
    ("train.lr=nan", "train.lr: expected a finite number, got 'nan'"),
    ("train.lr=.inf", "train.lr: expected a finite number, got inf"),
    ("train.lr=true", "train.lr: expected a number, got True"),
    ("train.output_dir={a: 1}", "train.output_dir: expected a name or a path, got a mapping {'a': 1}"),
    ("train.output_dir=[runs]", "train.output_dir: expected a name or a path, got a list ['runs']"),
    ("train.output_dir=''", "train.output_dir: must be the path of a folder, got ''"),
    ("model.pretrained={path: x}", "model.pretrained: expected a name or a path, got a mapping {'path': 'x'}"),
    ("train.epochs={n: 2}", "train.epochs: expected an integer, got a mapping {'n': 2}"),
    ("model=resnet18", "model: expected a mapping of its keys, got 'resnet18'"),
])
def test_bad_values_are_one_line_before_any_work(capsys, tmp_path, override, message):
    out = tmp_path / "run"
    code, lines = run(capsys, "train", "srn_r50_widerface", f"train.output_dir={out}", override)
    assert (code, lines) == (2, [f"srn train: error: {message}"])
    assert not out.exists()


def test_a_mapping_where_a_path_is_expected_in_the_file_names_the_file(tmp_path, capsys):
    config = write(tmp_path / "t.yaml", {"data": {"train": [{"annotations": {"file": "labels.txt"}}]}})
    code, lines = run(capsys, "train", config)
    assert (code, lines) == (2, [f"srn train: error: {config}: data.train.annotations: expected a name or a path, "
                                 "got a mapping {'file': 'labels.txt'}"])


def test_an_output_dir_that_is_a_file_is_refused(tmp_path, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    code, lines = run(capsys, "train", "srn_r50_widerface", f"train.output_dir={blocker}")
    assert (code, lines) == (2, [f"srn train: error: train.output_dir: {blocker} is a file, not a folder"])
    code, lines = run(capsys, "train", "srn_r50_widerface", f"train.output_dir={blocker / 'run'}")
    assert (code, lines) == (2, [f"srn train: error: train.output_dir: {blocker / 'run'} cannot be made: "
                                 f"{blocker} is a file, not a folder"])
    assert blocker.read_text() == "mine"


def test_the_checks_agree_with_the_model():
    from srn.model.srn import NUM_LEVELS

    ModelConfig(stc_levels=tuple(range(NUM_LEVELS)))
    with pytest.raises(ConfigError):
        ModelConfig(stc_levels=(NUM_LEVELS,))


def test_every_shipped_config_and_checkpoint_config_is_valid():
    root = Path(__file__).resolve().parents[2]
    for path in sorted((root / "srn" / "configs").glob("*.yaml")):
        load_yaml(TrainingConfig, path)
    DetectorConfig()
    PostProcessConfig()
