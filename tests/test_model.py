import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from srn.anchors import feature_sizes_for_image
from srn.model import SRN, build_model

VARIANTS = {
    "srn_r50": dict(),
    "srn_r18": dict(backbone="resnet18"),
    "srn_r34_no_rfe": dict(backbone="resnet34", rfe=False),
    "retinanet_r50": dict(stc_levels=(), str_levels=(), rfe=False),
    "stc_only": dict(backbone="resnet18", str_levels=()),
    "str_only": dict(backbone="resnet18", stc_levels=()),
    "refinedet_all": dict(backbone="resnet18", stc_levels=range(6), str_levels=range(6)),
    "mobilenet_v2_w64": dict(backbone="mobilenet_v2", width=64),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_output_shapes(name):
    model = build_model(**VARIANTS[name]).eval()
    for size in [(97, 131), (64, 64)]:
        with torch.no_grad():
            outputs = model(torch.rand(2, 3, *size))
        check_shapes(model, outputs, size)


def check_shapes(model, outputs, size):
    sizes = feature_sizes_for_image(*size)
    first = set(model.stc_levels) | set(model.str_levels)
    for level, (h, w) in enumerate(sizes):
        r = h * w * 2
        assert outputs["step2_logits"][level].shape == (2, r)
        assert outputs["step2_deltas"][level].shape == (2, r, 4)
        assert outputs["anchors"][level].shape == (r, 4)
        if level in first:
            assert outputs["step1_logits"][level].shape == (2, r)
            assert outputs["step1_deltas"][level].shape == (2, r, 4)
        else:
            assert outputs["step1_logits"][level] is None


@pytest.mark.parametrize("depth", [101, 152])
def test_deep_resnets_build(depth):
    with torch.device("meta"):
        model = build_model(backbone=f"resnet{depth}")
    outputs = model(torch.empty(1, 3, 97, 131, device="meta"))
    assert outputs["step2_logits"][0].shape == (1, 25 * 33 * 2)


def test_srn_r50_parameter_count_and_flops():
    with torch.device("meta"):
        model = build_model().eval()
    assert sum(p.numel() for p in model.parameters()) == 53_370_698
    with FlopCounterMode(display=False) as counter:
        model(torch.empty(1, 3, 1024, 1024, device="meta"))
    assert counter.get_total_flops() == pytest.approx(1290e9, rel=0.01)


def test_retinanet_baseline_has_no_first_step():
    model = build_model(stc_levels=(), str_levels=(), rfe=False)
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.startswith(("first_step", "extra")) for n in names)
    assert not any(".branch" in n for n in names)


def test_initialisation_follows_spec():
    model = build_model(backbone="resnet18")
    bias = model.head.cls_pred.bias
    torch.testing.assert_close(bias, torch.full_like(bias, -4.59511985013459))  # -log(0.99/0.01)
    std = model.fpn.outputs[0].weight.std().item()
    assert 0.009 < std < 0.011
    assert not model.backbone.conv1.weight.requires_grad
    model.train()
    assert not model.backbone.bn1.training and model.backbone.layer1.training


def test_uint8_and_float_inputs_agree():
    model = build_model(backbone="resnet18").eval()
    image = torch.randint(0, 256, (1, 3, 40, 56), dtype=torch.uint8)
    with torch.no_grad():
        a = model(image)
        b = model(image.float() / 255)
    torch.testing.assert_close(a["step2_logits"][0], b["step2_logits"][0])


def test_mobilenet_imagenet_file_loads(shared_dir):
    from srn.config import ModelConfig

    path = shared_dir / "weights" / "mobilenet_v2-b0353104.pth"
    model = SRN.from_config(ModelConfig(backbone="mobilenet_v2", width=64, pretrained=str(path)))
    state = torch.load(path, weights_only=True)
    torch.testing.assert_close(model.backbone.features[17].conv[0][0].weight, state["features.17.conv.0.0.weight"])


def test_bad_level_sets_are_rejected():
    with pytest.raises(ValueError, match="stc_levels"):
        build_model(backbone="resnet18", stc_levels=(6,))
    with pytest.raises(ValueError, match="unknown backbone"):
        build_model(backbone="vgg16")
