"""experiments/interpolate_weights.py: WiSE-FT between a model and its fine-tune, the residual of a
new residual block (adapter, context block) scaled by alpha."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.testing import assert_close

from srn.config import DetectorConfig, ModelConfig, PostProcessConfig
from srn.model import SRN
from srn.weights import load_model, save_checkpoint
from tests.scripts import load_script

interpolate = load_script("experiments/interpolate_weights.py")


@pytest.fixture()
def pair(tmp_path):
    torch.manual_seed(0)
    model = ModelConfig(backbone="resnet18", width=16, separable_head=True, init="scaled")
    base = SRN.from_config(model).eval()
    save_checkpoint(base, DetectorConfig(model=model, postprocess=PostProcessConfig(score_scale=2.0, score_shift=0.5)), tmp_path / "base.pt")
    tuned_model = replace(model, adapter_levels=(0,), context_levels=(0,))
    tuned = SRN.from_config(tuned_model).eval()
    tuned.load_state_dict(base.state_dict(), strict=False)
    with torch.no_grad():
        for parameter in (*tuned.adapters.parameters(), *tuned.contexts.parameters(), *tuned.fpn.outputs[0].parameters()):
            parameter.add_(torch.randn_like(parameter) * 0.1)
    save_checkpoint(tuned, DetectorConfig(model=tuned_model), tmp_path / "tuned.pt")
    return base, tuned, tmp_path


def test_alpha_interpolates_the_weights_and_scales_new_residual_blocks(pair):
    base, tuned, tmp_path = pair
    interpolate.main(["--base", str(tmp_path / "base.pt"), "--tuned", str(tmp_path / "tuned.pt"), "--alpha", "0.25",
                      "--base-calibration", "--out", str(tmp_path / "mixed.pt")])
    mixed, config = load_model(tmp_path / "mixed.pt")
    assert config.model.adapter_levels == config.model.context_levels == (0,) and (config.postprocess.score_scale, config.postprocess.score_shift) == (2.0, 0.5)
    a, b, m = base.fpn.outputs[0].weight, tuned.fpn.outputs[0].weight, mixed.fpn.outputs[0].weight
    assert_close(m, a + 0.25 * (b - a))
    for group in ("adapters", "contexts"):
        last, tuned_last = getattr(mixed, group)["0"].last, getattr(tuned, group)["0"].last
        assert_close(last.weight, 0.25 * tuned_last.weight)
        assert_close(last.bias, 0.25 * tuned_last.bias)
        assert torch.equal(getattr(mixed, group)["0"].body[0][0].weight, getattr(tuned, group)["0"].body[0][0].weight)
    # Each block computes x + 0.25 f(x): with the base's level-0 weights it is a quarter of the way.
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        mixed.fpn.outputs[0].load_state_dict(tuned.fpn.outputs[0].state_dict())
        p = tuned.fpn(tuned.backbone(tuned.normalize(images)))[0]
        q = p + 0.25 * tuned.adapters["0"].body(p)
        assert_close(mixed.adapters["0"](p), q, rtol=1e-5, atol=1e-6)
        assert_close(mixed.contexts["0"](q), q + 0.25 * tuned.contexts["0"].body(q), rtol=1e-5, atol=1e-6)


def test_alpha_zero_gives_the_base_and_bad_arguments_are_one_line(pair, capsys):
    base, tuned, tmp_path = pair
    interpolate.main(["--base", str(tmp_path / "base.pt"), "--tuned", str(tmp_path / "tuned.pt"), "--alpha", "0",
                      "--out", str(tmp_path / "zero.pt")])
    zero, _ = load_model(tmp_path / "zero.pt")
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for x, y in zip(base(images).step2_logits, zero(images).step2_logits):
            assert_close(x, y, rtol=0, atol=0)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        interpolate.main(["--base", str(tmp_path / "base.pt"), "--tuned", str(tmp_path / "tuned.pt"), "--alpha", "1.5",
                          "--out", str(tmp_path / "x.pt")])
    assert capsys.readouterr().err.splitlines()[-1].endswith("--alpha must be from 0 to 1, got 1.5")
    other = SRN.from_config(ModelConfig(backbone="resnet18", width=8, init="scaled")).eval()
    save_checkpoint(other, DetectorConfig(model=ModelConfig(backbone="resnet18", width=8, init="scaled")), tmp_path / "other.pt")
    with pytest.raises(SystemExit):
        interpolate.main(["--base", str(tmp_path / "other.pt"), "--tuned", str(tmp_path / "tuned.pt"), "--alpha", "0.5",
                          "--out", str(tmp_path / "x.pt")])
    assert "are not the same architecture (apart from new residual blocks)" in capsys.readouterr().err.splitlines()[-1]
    assert not (tmp_path / "x.pt").exists()
