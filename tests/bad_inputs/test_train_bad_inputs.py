"""Bad training settings, training data, checkpoints and weights files, through ``srn.cli.main``:
each gives one line on stderr and exit code 2 (or a warning, where the run can go on)."""

import os
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from srn.cli import main
from srn.config import DetectorConfig, ModelConfig, TrainingConfig, load_yaml, to_dict
from srn.model import build_model
from srn.weights import save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
PHOTO = ROOT / "docs" / "astronaut.png"
# Four real photos with faces (../shared/data/faces).
FACES = ["kaggle_face_mask_853/maksssksksss0.jpg", "kaggle_face_mask_853/maksssksksss9.jpg",
         "kaggle_face_mask_853/maksssksksss15.jpg", "kaggle_face_mask_853/maksssksksss18.jpg"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write_labels(path, entries):
    """A WIDER list-format file: ``entries`` are (image path, boxes as x1 y1 x2 y2)."""
    lines = []
    for image, boxes in entries:
        lines += [str(image), str(len(boxes))] + [f"{x1} {y1} {x2 - x1} {y2 - y1}" for x1, y1, x2, y2 in boxes]
    path.write_text("\n".join(lines) + "\n")
    return path


def real_faces(shared_dir):
    from srn.data.datasets import parse_wider_file

    faces = shared_dir / "data" / "faces"
    records = {r.image_path: r for r in parse_wider_file(faces / "labels.txt")}
    return [(faces / name, records[name].boxes.tolist()) for name in FACES]


def bad_images(folder):
    """A missing image, an empty one and a text file named .jpg, listed first."""
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("not a picture\n")
    return [(name, [(10, 10, 30, 30)]) for name in ("missing.jpg", "empty.jpg", "notes.jpg")]


def write_config(tmp_path, labels, **train):
    """ResNet-18, width 32, 96 px, one step of 2 images on the CPU."""
    config = {
        "model": {"backbone": "resnet18", "width": 32},
        "data": {"train": [{"format": "wider", "annotations": str(labels)}], "size": 96, "workers": 0, "photometric": False},
        "train": {"output_dir": str(tmp_path / "run"), "batch_size": 2, "batch_per_device": 2, "epochs": 1, "max_iters": 1,
                  "log_every": 1, "checkpoint_every": 1, "tensorboard": False, "device": "cpu", **train},
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize("override, message", [
    ("train.batch_per_device=0", "train.batch_per_device: must be at least 1, got 0"),
    ("train.batch_size=0", "train.batch_size: must be at least 1, got 0"),
    ("train.batch_size=-4", "train.batch_size: must be at least 1, got -4"),
    ("train.epochs=0", "train.epochs: must be at least 1, got 0"),
    ("train.lr=0", "train.lr: must be a positive number, got 0.0"),
    ("train.lr=-0.01", "train.lr: must be a positive number, got -0.01"),
    ("train.max_iters=-1", "train.max_iters: must be at least 1, got -1"),
    ("train.max_iters=0", "train.max_iters: must be at least 1, got 0"),
    ("data.size=16", "data.size: must be from 32 to 8192 pixels, got 16"),
    ("train.max_minutes=0", "train.max_minutes: must be a positive number, got 0.0"),
    ("train.max_minutes=-5", "train.max_minutes: must be a positive number, got -5.0"),
    ("train.log_every=0", "train.log_every: must be at least 1, got 0"),
    ("train.checkpoint_every=0", "train.checkpoint_every: must be at least 1, got 0"),
    ("data.flip_prob=1.5", "data.flip_prob: must be between 0 and 1, got 1.5"),
    ("loss.step1_thresholds=[0.7,0.3]",
     "loss.step1_thresholds: must be [negative below, positive from] with 0 <= negative <= positive <= 1, got [0.7, 0.3]"),
])
def test_out_of_range_settings_stop_before_any_work(capsys, tmp_path, override, message):
    code, out, err = run(capsys, "train", "srn_r50_widerface", override, f"train.output_dir={tmp_path / 'run'}")
    assert (code, out, err) == (2, "", f"srn train: error: {message}\n")
    assert not (tmp_path / "run").exists()


def test_out_of_range_setting_in_the_file_names_the_file(capsys, tmp_path):
    config = write_config(tmp_path, tmp_path / "labels.txt", lr=0)
    code, out, err = run(capsys, "train", config)
    assert (code, out, err) == (2, "", f"srn train: error: {config}: train.lr: must be a positive number, got 0.0\n")


# -- training images -----------------------------------------------------------------------------


def test_no_usable_training_image_stops_the_run(capsys, tmp_path):
    labels = write_labels(tmp_path / "labels.txt", bad_images(tmp_path))
    code, out, err = run(capsys, "train", write_config(tmp_path, labels))
    assert (code, out) == (2, "")
    assert err == (f"srn train: error: no usable training image in {labels} "
                   f"(3 listed; {tmp_path / 'missing.jpg'}: no such training image)\n")
    assert not (tmp_path / "run" / "model.pt").exists()


def test_some_unusable_images_warn_with_a_count_and_training_goes_on(capsys, caplog, shared_dir, tmp_path):
    labels = write_labels(tmp_path / "labels.txt", bad_images(tmp_path) + real_faces(shared_dir))
    code, out, _ = run(capsys, "train", write_config(tmp_path, labels))
    assert (code, out) == (0, f"wrote {tmp_path / 'run' / 'model.pt'}\n")
    assert (f"{labels}: 3 of 7 images are unusable and are skipped ({tmp_path / 'missing.jpg'}: no such training image)"
            in caplog.messages)


# -- checkpoints to resume from ------------------------------------------------------------------


@pytest.fixture
def run_with_checkpoint(shared_dir, tmp_path):
    """A config and the ``last.pt`` of a run of it (at iteration 0)."""
    from srn.engine.trainer import Trainer

    config = write_config(tmp_path, write_labels(tmp_path / "labels.txt", real_faces(shared_dir)))
    Trainer(load_yaml(TrainingConfig, config)).save_checkpoint()
    return config, tmp_path / "run" / "last.pt"


def test_resume_without_a_checkpoint_says_so_and_starts_from_scratch(capsys, caplog, shared_dir, tmp_path):
    config = write_config(tmp_path, write_labels(tmp_path / "labels.txt", real_faces(shared_dir)))
    # What a kill during a checkpoint write leaves behind.
    stale = tmp_path / "run" / ".last.pt.k2j4x1.partial.pt"
    stale.parent.mkdir()
    stale.write_bytes(b"PK\x03\x04 half a checkpoint")
    code, out, _ = run(capsys, "train", config, "--resume")
    assert (code, out) == (0, f"wrote {tmp_path / 'run' / 'model.pt'}\n")
    assert f"no checkpoint at {tmp_path / 'run' / 'last.pt'}; starting from scratch" in caplog.messages
    assert not stale.exists()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.yaml", "last.pt", "metrics.jsonl", "model.pt"]


def test_resume_from_an_empty_checkpoint(capsys, run_with_checkpoint):
    config, last = run_with_checkpoint
    last.write_bytes(b"")
    code, out, err = run(capsys, "train", config, "--resume")
    assert (code, out, err) == (2, "", f"srn train: error: {last}: is empty (0 bytes), not a training checkpoint\n")


def test_resume_from_a_truncated_checkpoint(capsys, run_with_checkpoint):
    config, last = run_with_checkpoint
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    code, out, err = run(capsys, "train", config, "--resume")
    assert (code, out, err) == (2, "", f"srn train: error: {last}: not a PyTorch training checkpoint (truncated or damaged zip archive)\n")


def test_resume_with_another_model_config_names_the_keys(capsys, run_with_checkpoint):
    config, last = run_with_checkpoint
    code, out, err = run(capsys, "train", config, "model.width=48", "model.rfe=false", "--resume")
    assert (code, out) == (2, "")
    assert err == (f"srn train: error: {last}: the checkpoint was trained with another model "
                   "(model.width: checkpoint 32, config 48; model.rfe: checkpoint True, config False)\n")


def test_resume_from_a_named_checkpoint_that_is_missing_or_not_one(capsys, run_with_checkpoint, tmp_path):
    config, _ = run_with_checkpoint
    code, _, err = run(capsys, "train", config, "--resume", tmp_path / "nope.pt")
    assert (code, err) == (2, f"srn train: error: {tmp_path / 'nope.pt'}: no such training checkpoint\n")
    # An inference checkpoint holds no optimizer state.
    save_checkpoint(build_model(ModelConfig(backbone="resnet18", width=32)), DetectorConfig(), tmp_path / "model.pt")
    code, _, err = run(capsys, "train", config, "--resume", tmp_path / "model.pt")
    assert (code, err) == (2, f"srn train: error: {tmp_path / 'model.pt'}: not an srn training checkpoint (no 'format': 'srn-train' entry)\n")


# -- weights files -------------------------------------------------------------------------------


class _Thing:
    pass


def _bad_weights(tmp_path):
    """(file, the reason the commands give after "<file>: ")."""
    small = tmp_path / "small.pt"
    save_checkpoint(build_model(ModelConfig(backbone="mobilenet_v2", width=16)), DetectorConfig(), small)
    cases = []

    def case(name, reason, data=None):
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        cases.append((path, reason))

    case("notes.txt", "not a PyTorch weights file (it is a text file)", b"trained for 3 days, lr 0.01\n")
    case("empty.pt", "is empty (0 bytes), not a weights file", b"")
    case("truncated.pt", "not a PyTorch weights file (truncated or damaged zip archive)", small.read_bytes()[:5000])
    Image.open(PHOTO).convert("RGB").save(tmp_path / "photo.jpg")
    case("photo.jpg", "not a PyTorch weights file (it is a JPEG image)")
    case("photo.png", "not a PyTorch weights file (it is a PNG image)", PHOTO.read_bytes())
    torch.save({"format": "srn", "config": to_dict(DetectorConfig()), "model": "resnet50 weights"}, tmp_path / "string.pt")
    case("string.pt", "its 'model' entry is a str, not a state dict of tensors")
    torch.save({"format": "srn", "config": {"model": {"backbone": "resnet999"}}, "model": {}}, tmp_path / "r999.pt")
    case("r999.pt", "bad config in checkpoint: model.backbone: unknown backbone 'resnet999'; "
                    "choose one of resnet18, resnet34, resnet50, resnet101, resnet152, mobilenet_v2")
    torch.save({"model": _Thing()}, tmp_path / "object.pt")
    case("object.pt", f"not a PyTorch weights file (it holds a Python object ({__name__}._Thing), which is never unpickled)")
    case("absent.pt", "no such weights file")
    (tmp_path / "folder.pt").mkdir()
    case("folder.pt", "is a folder, not a weights file")
    os.mkfifo(tmp_path / "fifo.pt")
    case("fifo.pt", "is a FIFO (named pipe), not a weights file")
    return cases


def test_bad_weights_for_detect_give_one_line(capsys, tmp_path):
    for path, reason in _bad_weights(tmp_path):
        code, out, err = run(capsys, "detect", PHOTO, "--weights", path, "--device", "cpu")
        assert (code, out, err) == (2, "", f"srn detect: error: {path}: {reason}\n"), path
        assert "weights_only" not in err


def test_bad_weights_for_convert_give_one_line(capsys, tmp_path):
    out_file = tmp_path / "converted.pt"
    for path, reason in _bad_weights(tmp_path):
        code, out, err = run(capsys, "convert", path, out_file)
        if path.name in ("string.pt", "r999.pt"):  # loadable files, but not the release's SRN.pth
            reason = "not the release's SRN.pth (no cls_subnet_pred / c2_lateral keys)"
        assert (code, out, err) == (2, "", f"srn convert: error: {path}: {reason}\n"), path
        assert not out_file.exists()
