"""Fine-tuning the shipped model: the srn_default preset loads every tensor of it, train.init_from is
strict, score calibration is refitted at the end of training or by ``srn calibrate``."""

import json
from pathlib import Path

import pytest
import torch

from srn.config import TrainingConfig, load_yaml
from srn.engine.checkpoint import init_from, resolve_weights
from srn.engine.trainer import Trainer, TrainingError
from srn.inference.detector import DEFAULT_WEIGHTS
from srn.model import SRN
from srn.weights import read_weights

from .test_train import write_synthetic_faces

PRESET = Path(__file__).resolve().parents[1] / "srn" / "configs" / "srn_default.yaml"


def test_srn_default_is_the_shipped_models_recipe():
    config = load_yaml(TrainingConfig, PRESET)
    shipped, _ = read_weights(DEFAULT_WEIGHTS)
    assert config.model == shipped.model  # pretrained None in both
    assert (config.postprocess.score_scale, config.postprocess.score_shift) == (shipped.postprocess.score_scale, shipped.postprocess.score_shift)
    assert config.train.init_from == "shipped" and resolve_weights("shipped") == DEFAULT_WEIGHTS
    assert config.train.calibrate_fraction == 0.1 and config.data.train == ()
    # data.train=FILE is one source whose format is told from the file.
    one = load_yaml(TrainingConfig, PRESET, ["data.train=photos/labels.txt"])
    assert [(s.annotations, s.format) for s in one.data.train] == [("photos/labels.txt", "auto")]


def test_init_from_is_strict_and_names_the_difference(tmp_path):
    from dataclasses import replace

    shipped, _ = read_weights(DEFAULT_WEIGHTS)
    dense64 = replace(shipped.model, width=64, separable_head=False, adapter_levels=())
    model = SRN.from_config(dense64)
    with pytest.raises(TrainingError) as caught:
        init_from(model, "shipped", model_config=dense64)
    message = str(caught.value)
    assert "\n" not in message
    # The case: the srn_mobilenet_v2 preset (width 64, dense head) from the shipped model.
    assert ("train.init_from: 96 of the model's 406 tensors have no match in the file: extra.c7.weight (model 64x160x3x3, "
            "file 48x160x3x3), extra.c7.bias (model 64, file 48), first_step.convs.0.weight (model 64x24x1x1, file 48x24x1x1) "
            "and 93 more") in message
    assert "model.width (file 48, config 64), model.separable_head (file True, config False)" in message
    assert "train.init_strict=false" in message
    init_from(model, "shipped", strict=False)  # loads what matches: the backbone
    # A dense checkpoint into a separable model: factored, so every tensor has a source.
    dense48 = replace(shipped.model, separable_head=False)
    from srn.config import DetectorConfig
    from srn.weights import save_checkpoint

    save_checkpoint(SRN.from_config(dense48), DetectorConfig(dense48), tmp_path / "dense.pt")
    init_from(SRN.from_config(shipped.model), tmp_path / "dense.pt", model_config=shipped.model)


def test_fine_tune_srn_default_loads_every_tensor_and_calibrates(tmp_path, caplog):
    labels = write_synthetic_faces(tmp_path / "photos", count=12, size=96)
    config = load_yaml(TrainingConfig, PRESET, [
        f"data.train={labels}", f"train.output_dir={tmp_path / 'run'}", "data.size=96", "data.workers=0", "train.batch_size=2",
        "train.batch_per_device=2", "train.max_iters=2", "train.device=cpu", "train.amp=false", "train.tensorboard=false",
        "train.calibrate_fraction=0.25", "train.eval_max_size=96",
    ])
    trainer = Trainer(config)
    _, shipped = read_weights(DEFAULT_WEIGHTS)
    own = trainer.model.state_dict()
    assert set(own) == set(shipped) and all(torch.equal(own[k].cpu(), shipped[k]) for k in own)
    # 12 photos, a quarter held out: 9 train (4 steps of 2 per epoch), 3 calibrate.
    assert len(trainer.dataset) == 9 and len(trainer.hooks[[type(h).__name__ for h in trainer.hooks].index("CalibrationHook")].records) == 3
    with caplog.at_level("INFO"):
        final = trainer.fit()
    assert final.is_file()
    config_out, _ = read_weights(final)
    calibrated = [r.getMessage() for r in caplog.records if "score calibration" in r.getMessage()]
    assert len(calibrated) == 1, calibrated
    if "skipped" in calibrated[0]:  # the shipped model on noise squares: maybe no true detection at all
        assert config_out.postprocess.score_scale == 2.3499
    else:
        fit = json.loads((tmp_path / "run" / "calibration.json").read_text())
        assert (config_out.postprocess.score_scale, config_out.postprocess.score_shift) == (fit["score_scale"], fit["score_shift"])


def test_srn_calibrate_writes_a_model_whose_scores_follow_the_fit(tmp_path, capsys):
    """On the astronaut photo (in the repository), labelled with its one face: the copy's boxes are
    the shipped model's, and each score is sigmoid(a' z + b') of the network's logit z."""
    from srn.cli import main
    from srn.inference import Detector

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "labels.txt").write_text("astronaut.png\n1\n177 62 99 121\n")
    (tmp_path / "astronaut.png").write_bytes((root / "docs" / "astronaut.png").read_bytes())
    assert main(["calibrate", "--annotations", str(tmp_path / "labels.txt"), "--out", str(tmp_path / "cal.pt"),
                 "--json", str(tmp_path / "fit.json"), "--device", "cpu", "--workers", "0"]) == 0
    assert "wrote" in capsys.readouterr().out
    fit = json.loads((tmp_path / "fit.json").read_text())
    assert fit["images"] == 1 and fit["true"] == 1 and fit["detections"] > 1
    shipped_config, _ = read_weights(DEFAULT_WEIGHTS)
    config, _ = read_weights(tmp_path / "cal.pt")
    assert (config.postprocess.score_scale, config.postprocess.score_shift) == (fit["score_scale"], fit["score_shift"])
    assert config.model == shipped_config.model
    before = Detector(weights=DEFAULT_WEIGHTS, device="cpu", score_thresh=0.0).detect(root / "docs" / "astronaut.png")
    after = Detector(weights=tmp_path / "cal.pt", device="cpu", score_thresh=0.0).detect(root / "docs" / "astronaut.png")
    torch.testing.assert_close(after.boxes, before.boxes)
    post = shipped_config.postprocess
    z = (torch.logit(before.scores.double()) - post.score_shift) / post.score_scale
    expected = torch.sigmoid(fit["score_scale"] * z + fit["score_shift"])
    torch.testing.assert_close(after.scores.double(), expected, atol=1e-5, rtol=1e-4)
    assert after.scores[0] > before.scores[0]  # the one labelled face, scored higher after the fit


def test_srn_calibrate_without_true_detections_is_one_line(tmp_path, capsys):
    from srn.cli import main

    labels = write_synthetic_faces(tmp_path / "p", count=2, size=64)
    code = main(["calibrate", "--annotations", str(labels), "--out", str(tmp_path / "cal.pt"), "--device", "cpu", "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "srn calibrate: error:" in err and "label more photos" in err
    assert not (tmp_path / "cal.pt").exists()


@pytest.mark.parametrize("key, levels, block, level", [
    ("adapter_levels", (0, 1, 2), "adapters.2", 2),  # one more adapter
    ("context_levels", (0,), "contexts.0", 0),  # a context block after level 0's adapter
])
def test_a_new_residual_block_starts_as_the_shipped_model_and_trains_its_level_only(key, levels, block, level):
    """The shipped model has adapters at levels 0 and 1; a new residual block (one more adapter, or a
    context block) starts at the identity (strict init_from accepts it), and training it moves its
    level's second step only."""
    from dataclasses import replace

    shipped, _ = read_weights(DEFAULT_WEIGHTS)
    assert shipped.model.adapter_levels == (0, 1) and shipped.model.context_levels == ()
    plain = SRN.from_config(shipped.model).eval()
    init_from(plain, "shipped")
    config = replace(shipped.model, **{key: levels})
    adapted = SRN.from_config(config)
    init_from(adapted, "shipped", model_config=config)  # strict: the new block is not a mismatch
    adapted.eval()
    assert sorted(k for k in adapted.state_dict() if k not in plain.state_dict()) == [
        f"{block}.body.0.0.bias", f"{block}.body.0.0.weight", f"{block}.body.0.1.bias", f"{block}.body.0.1.weight",
        f"{block}.body.2.0.bias", f"{block}.body.2.0.weight", f"{block}.body.2.1.bias", f"{block}.body.2.1.weight"]
    images = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before, after = plain(images), adapted(images)
    for a, b in zip(before.step2_logits + before.step2_deltas, after.step2_logits + after.step2_deltas):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # One SGD step on the new block alone (in eval mode: BatchNorm statistics stay): its level's second
    # step moves, every other output stays.
    new_block = adapted.residual_blocks()[block + "."]
    optimizer = torch.optim.SGD(new_block.parameters(), lr=1.0)
    out = adapted(images)
    (out.step2_logits[level].sigmoid().sum() + out.step2_deltas[level].sum()).backward()
    assert new_block.last.weight.grad.abs().sum() > 0
    optimizer.step()
    with torch.no_grad():
        moved = adapted(images)
    assert not torch.equal(moved.step2_logits[level], before.step2_logits[level])
    torch.testing.assert_close(moved.step1_logits[level], before.step1_logits[level], rtol=0, atol=0)
    for other in set(range(6)) - {level}:
        torch.testing.assert_close(moved.step2_logits[other], before.step2_logits[other], rtol=0, atol=0)
