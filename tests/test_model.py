import ast
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from srn.anchors import feature_sizes_for_image
from srn.config import ModelConfig, TrainingConfig, from_dict, load_yaml
from srn.engine.trainer import init_from
from srn.model import SRN, build_model
from srn.model.head import SRNHead
from srn.model.rfe import RFE
from srn.weights import load_model, read_weights

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
        assert outputs.step2_logits[level].shape == (2, r)
        assert outputs.step2_deltas[level].shape == (2, r, 4)
        assert outputs.anchors[level].shape == (r, 4)
        if level in first:
            assert outputs.step1_logits[level].shape == (2, r)
            assert outputs.step1_deltas[level].shape == (2, r, 4)
        else:
            assert outputs.step1_logits[level] is None


@pytest.mark.parametrize("depth", [101, 152])
def test_deep_resnets_build(depth):
    with torch.device("meta"):
        model = build_model(backbone=f"resnet{depth}")
    outputs = model(torch.empty(1, 3, 97, 131, device="meta"))
    assert outputs.step2_logits[0].shape == (1, 25 * 33 * 2)


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
    torch.testing.assert_close(a.step2_logits[0], b.step2_logits[0])


def test_mobilenet_imagenet_file_loads(shared_dir):
    from srn.config import ModelConfig

    path = shared_dir / "weights" / "mobilenet_v2-b0353104.pth"
    model = SRN.from_config(ModelConfig(backbone="mobilenet_v2", width=64, pretrained=str(path)))
    state = torch.load(path, weights_only=True)
    torch.testing.assert_close(model.backbone.features[17].conv[0][0].weight, state["features.17.conv.0.0.weight"])


def test_bad_level_sets_are_rejected():
    with pytest.raises(ValueError, match="stc_levels"):
        build_model(backbone="resnet18", stc_levels=(6,))
    with pytest.raises(ValueError, match="adapter_levels"):
        build_model(backbone="resnet18", adapter_levels=(-1,))
    with pytest.raises(ValueError, match=r"model.adapter_levels: must be distinct level indices from 0 to 5 \(strides 4 to 128\), got \[0, 0\]"):
        ModelConfig(adapter_levels=(0, 0))
    with pytest.raises(ValueError, match="unknown backbone"):
        build_model(backbone="vgg16")
    with pytest.raises(ValueError, match=r"model.context_levels: must be distinct level indices from 0 to 5 \(strides 4 to 128\), got \[6\]"):
        ModelConfig(context_levels=(6,))
    with pytest.raises(ValueError, match=r"model.context_dilation: must be a whole number of cells from 1 to 16, got 0"):
        ModelConfig(context_dilation=0)


@pytest.mark.parametrize("dilation", [1, 3])
def test_a_residual_block_sees_4_dilation_plus_1_cells_across(dilation):
    """Two 3x3 layers with taps ``dilation`` apart: a cell's output depends on the input up to 2 * dilation
    cells away in each direction and not beyond; the block keeps the size of its input."""
    from srn.model.layers import ResidualAdapter

    torch.manual_seed(0)
    block = ResidualAdapter(8, dilation=dilation).eval()
    for conv in block.body.modules():
        if isinstance(conv, torch.nn.Conv2d):
            torch.nn.init.normal_(conv.weight, std=0.5)
    x = torch.rand(1, 8, 21, 21)
    centre = (10, 10)
    with torch.no_grad():
        base = block(x)
        assert base.shape == x.shape
        for offset, seen in ((2 * dilation, True), (2 * dilation + 1, False)):
            for dy, dx in ((offset, 0), (0, -offset), (offset, offset)):
                moved = x.clone()
                moved[..., centre[0] + dy, centre[1] + dx] += 10.0
                changed = not torch.equal(block(moved)[..., centre[0], centre[1]], base[..., centre[0], centre[1]])
                assert changed == seen, (offset, dy, dx)


# --- SRN-Lite (srn/configs/srn_lite.yaml): the light design, selected by configuration -----------

LITE_PRESET = Path(__file__).resolve().parents[1] / "srn" / "configs" / "srn_lite.yaml"
SHIPPED = Path(__file__).resolve().parents[1] / "srn" / "assets" / "srn_mobilenet_v2.pt"


def lite_config() -> ModelConfig:
    return replace(load_yaml(TrainingConfig, LITE_PRESET).model, pretrained=None)


def all_outputs(outputs) -> list[torch.Tensor]:
    fields = outputs if isinstance(outputs, dict) else outputs._asdict()
    keys = ("step1_logits", "step1_deltas", "step2_logits", "step2_deltas")
    return [t for k in keys for t in fields[k] if t is not None]


def test_lite_preset_parameter_count_and_flops():
    config = lite_config()
    assert (config.backbone, config.width, config.tower_convs) == ("mobilenet_v2", 32, 2)
    assert config.separable_head and config.separable_fpn and config.rfe
    with torch.device("meta"):
        model = SRN.from_config(config).eval()
        shipped = SRN.from_config(ModelConfig(backbone="mobilenet_v2", width=48)).eval()
    assert sum(p.numel() for p in model.parameters()) == 2_374_666
    assert sum(p.numel() for p in shipped.parameters()) == 2_621_306
    flops = {}
    for name, net in (("lite", model), ("shipped", shipped)):
        with FlopCounterMode(display=False) as counter:
            net(torch.empty(1, 3, 480, 640, device="meta"))
        flops[name] = counter.get_total_flops()
    # The backbone's 3.42 GFLOP are common to both; the head falls from 10.08 to 1.36 GFLOP.
    assert flops == {"lite": 5_033_948_160, "shipped": 14_795_688_960}


@pytest.mark.parametrize("overrides", [dict(), dict(tower_convs=0), dict(tower_convs=3, rfe=False)])
def test_lite_every_parameter_gets_a_gradient(overrides):
    model = SRN.from_config(replace(lite_config(), **overrides)).train()
    loss = sum(t.square().mean() for t in all_outputs(model(torch.rand(2, 3, 64, 96))))
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_lite_output_shapes():
    model = SRN.from_config(lite_config()).eval()
    with torch.no_grad():
        outputs = model(torch.rand(2, 3, 97, 131))
    check_shapes(model, outputs, (97, 131))


def test_separable_layers_have_no_dense_spatial_kernel():
    model = SRN.from_config(lite_config())
    spatial = [m for m in (*model.head.modules(), *model.fpn.outputs.modules())
               if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    assert spatial and all(m.groups == m.in_channels == m.out_channels for m in spatial)


@pytest.mark.parametrize(
    "tower_convs, expected",
    [
        (0, ["RFE"]),
        (1, ["Conv2d", "ReLU", "RFE"]),
        (2, ["Conv2d", "ReLU", "RFE", "Conv2d", "ReLU"]),  # the release's index layout
        (3, ["Conv2d", "ReLU", "RFE", "Conv2d", "ReLU", "Conv2d", "ReLU"]),
    ],
)
def test_tower_layout(tower_convs, expected):
    head = SRNHead(32, 2, tower_convs=tower_convs)
    assert [type(m).__name__ for m in head.cls_tower] == expected
    assert [type(m).__name__ for m in head.box_tower] == expected


def test_separable_rfe_runs_its_branches_fused_with_the_same_result():
    torch.manual_seed(0)
    rfe = RFE(48, separable=True)
    for conv in rfe.modules():
        if isinstance(conv, nn.Conv2d):
            nn.init.normal_(conv.weight, std=0.3)
            nn.init.normal_(conv.bias, std=0.1)
    assert [tuple(b[2].weight.shape) for b in (rfe.branch0, rfe.branch1, rfe.branch2, rfe.branch3)] == [
        (12, 1, 1, 5), (12, 1, 5, 1), (12, 1, 1, 3), (12, 1, 3, 1),
    ]
    x = torch.randn(2, 48, 11, 13)
    fused = rfe(x)
    rfe.separable = False  # the same parameters, branch by branch as the paper draws them
    torch.testing.assert_close(fused, rfe(x))


def test_paper_network_is_unchanged_by_the_light_fields():
    """The defaults build the release's layers: no grouped convolution, the release's names."""
    model = build_model(backbone="resnet18")
    assert not any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in model.modules())
    state = model.state_dict()
    assert state["head.cls_tower.0.weight"].shape == (256, 256, 3, 3)
    assert state["head.cls_tower.2.branch0.2.weight"].shape == (64, 64, 1, 5)
    assert state["head.box_tower.3.weight"].shape == (256, 256, 3, 3)
    assert state["fpn.outputs.4.weight"].shape == (256, 256, 3, 3)


def test_checkpoint_config_without_the_light_fields_loads(tmp_path):
    """Checkpoints saved before the light fields existed rebuild the same dense network."""
    fields = {"backbone": "mobilenet_v2", "width": 48, "init": "scaled"}
    config = from_dict(ModelConfig, fields)
    assert (config.tower_convs, config.separable_head, config.separable_fpn) == (2, False, False)
    dense = SRN.from_config(config)
    state = dense.state_dict()
    torch.save({"format": "srn", "version": 1, "config": {"model": fields}, "model": state}, tmp_path / "old.pt")
    model, loaded = load_model(tmp_path / "old.pt")
    assert loaded.model == config
    assert set(model.state_dict()) == set(state)
    assert not any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in model.head.modules())  # dense


def test_lite_model_starts_from_the_shipped_backbone():
    """train.init_from loads the tensors that match in name and shape: the whole MobileNetV2, C6 and
    the predictors' biases; the 32-wide separable FPN and head keep their initialisation."""
    model = SRN.from_config(lite_config())
    _, shipped = read_weights(SHIPPED)
    own = model.state_dict()
    matching = {k for k, v in shipped.items() if k in own and own[k].shape == v.shape}
    backbone = {k for k in own if k.startswith("backbone.")}
    assert matching == backbone | {"extra.c6.weight", "extra.c6.bias", "head.cls_pred.bias", "head.box_pred.bias"}
    init_from(model, SHIPPED, strict=False)
    own = model.state_dict()
    for key in sorted(matching):
        torch.testing.assert_close(own[key], shipped[key])


def test_head_does_not_import_the_model():
    """init_conv lives in srn/model/init.py, so head.py no longer imports srn.model.srn (a cycle)."""
    import srn.model.head

    tree = ast.parse(Path(srn.model.head.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "srn.model.srn" not in imported and "srn.model.init" in imported


def test_model_constants_are_declared_once():
    # NUM_LEVELS and the ImageNet mean/std live in srn/model/srn.py, the precisions in the runner;
    # everything else imports them (the mean/std travel as model buffers, docs/design.md, Network).
    root = Path(__file__).resolve().parents[1]
    homes = {"NUM_LEVELS": "srn/model/srn.py", "IMAGENET_MEAN": "srn/model/srn.py",
             "IMAGENET_STD": "srn/model/srn.py", "PRECISIONS": "srn/inference/runner.py"}
    found = []
    for path in sorted([*root.glob("srn/**/*.py"), *root.glob("benchmarks/*.py"), *root.glob("experiments/*.py"), *root.glob("tools/*.py")]):
        name = path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), filename=name)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            found += [(t.id, name) for t in targets if isinstance(t, ast.Name) and homes.get(t.id, name) != name]
            if isinstance(node, ast.Constant) and node.value in (0.485, 0.456, 0.406, 0.229, 0.224, 0.225) and name != homes["IMAGENET_MEAN"]:
                found.append((node.value, name))
    assert found == []
