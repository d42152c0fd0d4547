import os
import pickle
import random
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from srn.config import DetectorConfig, ModelConfig, to_dict
from srn.engine.checkpoint import load_training_checkpoint, save_training_checkpoint
from srn.errors import InputPathError, SRNError
from srn.model import build_model
from srn.postprocess import PostProcessor
from srn.weights import (
    WeightsError,
    check_state_dict,
    convert_official_file,
    convert_official_state_dict,
    load_model,
    read_weights,
    save_checkpoint,
)
from tests.reference_release import release_detections, release_forward


def official_key_shapes(shared_dir):
    rows = (shared_dir / "reference" / "official_srn_state_dict.tsv").read_text().splitlines()
    return [(name, tuple(int(d) for d in shape.strip("()").split(",") if d.strip())) for name, shape in (r.split("\t") for r in rows)]


def random_official_state(shared_dir, seed=0, torch03=True):
    """The release's state dict, filled with distinct random values; as torch 0.3 wrote it
    (``module.`` prefix, no ``num_batches_tracked``) when ``torch03``."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in official_key_shapes(shared_dir):
        if name.endswith("num_batches_tracked"):
            if not torch03:
                state[name] = torch.tensor(7)
            continue
        value = torch.randn(shape, generator=gen) * 0.05
        if name.endswith("running_var"):
            value = value.abs() + 0.5
        state[("module." + name) if torch03 else name] = value
    return state


def test_all_418_release_keys_map_by_value(shared_dir):
    keys = official_key_shapes(shared_dir)
    assert len(keys) == 418
    official = random_official_state(shared_dir, torch03=False)
    converted = convert_official_state_dict(official)
    model = build_model()
    model.load_state_dict(converted, strict=True)
    ours = model.state_dict()
    assert len(ours) == 418
    # Every release tensor lands in exactly one parameter, found by value (the values are distinct).
    for name, value in official.items():
        if name.endswith("num_batches_tracked"):
            continue
        hits = [k for k, v in ours.items() if v.shape == value.shape and torch.equal(v, value)]
        assert len(hits) == 1, (name, hits)
    # and the right one, for one sample of every kind of key
    expected = {
        "conv1.weight": "backbone.conv1.weight",
        "layer3.5.bn2.running_var": "backbone.layer3.5.bn2.running_var",
        "layer5.weight": "extra.c6.weight",
        "layer6.bias": "extra.c7.bias",
        "c2_conv.weight": "first_step.convs.0.weight",
        "c7_conv.bias": "first_step.convs.5.bias",
        "c4_lateral.weight": "fpn.laterals.2.weight",
        "p2_conv.weight": "fpn.outputs.0.weight",
        "p7_conv.bias": "fpn.outputs.5.bias",
        "cls_subnet.2.branch1.2.weight": "head.cls_tower.2.branch1.2.weight",
        "box_subnet.2.cated_conv.0.bias": "head.box_tower.2.cated_conv.0.bias",
        "box_subnet.3.weight": "head.box_tower.3.weight",
        "cls_subnet_pred.bias": "head.cls_pred.bias",
        "box_subnet_pred.weight": "head.box_pred.weight",
    }
    for theirs, mine in expected.items():
        assert torch.equal(ours[mine], official[theirs]), theirs


def test_torch03_form_loads_from_a_legacy_file(shared_dir, tmp_path):
    state = random_official_state(shared_dir)
    path = tmp_path / "SRN.pth"
    torch.save({"state_dict": state}, path, _use_new_zipfile_serialization=False)
    model, config = load_model(path)
    assert config == DetectorConfig()
    assert_close(model.state_dict()["head.cls_pred.weight"], state["module.cls_subnet_pred.weight"])
    assert int(model.state_dict()["backbone.bn1.num_batches_tracked"]) == 0


def _prepare_for_forward(state):
    # Larger predictor weights so that scores spread over (0, 1) and every gate has work to do.
    gen = torch.Generator().manual_seed(3)
    state["module.cls_subnet_pred.weight"] = torch.randn(state["module.cls_subnet_pred.weight"].shape, generator=gen) * 0.05
    state["module.cls_subnet_pred.bias"] = torch.tensor([-2.0, -1.0])
    state["module.box_subnet_pred.weight"] = torch.randn(state["module.box_subnet_pred.weight"].shape, generator=gen) * 0.03  # |dw| stays under the exp clamp
    return state


def test_converted_release_network_matches_reference_forward(shared_dir):
    state = _prepare_for_forward(random_official_state(shared_dir, seed=1))
    plain = {k.removeprefix("module."): v for k, v in state.items()}
    model = build_model().eval()
    model.load_state_dict(convert_official_state_dict({"state_dict": state}), strict=True)
    images = torch.rand(2, 3, 150, 203, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = model(images)
        raw = release_forward(plain, images)
    for level, (cls_fs, loc_fs, cls_ss, loc_ss) in enumerate(raw):
        n = cls_fs.shape[0]
        # release layout (N, A, H, W) -> (N, H*W*A); (N, 4A, H, W) -> (N, H*W*A, 4)
        assert_close(ours.step1_logits[level], cls_fs.permute(0, 2, 3, 1).reshape(n, -1), rtol=1e-4, atol=1e-4)
        assert_close(ours.step2_logits[level], cls_ss.permute(0, 2, 3, 1).reshape(n, -1), rtol=1e-4, atol=1e-4)
        assert_close(ours.step1_deltas[level], loc_fs.permute(0, 2, 3, 1).reshape(n, -1, 4), rtol=1e-4, atol=1e-4)
        assert_close(ours.step2_deltas[level], loc_ss.permute(0, 2, 3, 1).reshape(n, -1, 4), rtol=1e-4, atol=1e-4)

    # The detections that follow equal the release's single-pass procedure, image by image.
    from srn.config import PostProcessConfig

    config = PostProcessConfig(pre_nms_top_k=300, max_detections=100)
    dets = PostProcessor.from_model(model, config)(ours)
    expected = release_detections(raw, top_n=300, max_det=100)
    for got, want in zip(dets, expected):
        assert len(want) > 20
        assert_close(got.scores.double(), torch.from_numpy(want[:, 4]), rtol=1e-4, atol=1e-5)
        assert_close(got.boxes.double(), torch.from_numpy(want[:, :4]), rtol=1e-4, atol=1e-2)


def test_missing_extra_and_misshaped_keys_are_named(shared_dir):
    state = random_official_state(shared_dir, torch03=False)
    model = build_model()
    broken = dict(convert_official_state_dict(state))
    del broken["fpn.outputs.3.bias"]
    broken["head.extra_thing.weight"] = torch.zeros(1)
    broken["head.cls_pred.weight"] = torch.zeros(4, 256, 1, 1)
    with pytest.raises(WeightsError) as info:
        check_state_dict(model, broken, "x.pt")
    message = str(info.value)
    assert "fpn.outputs.3.bias" in message and "head.extra_thing.weight" in message
    assert "head.cls_pred.weight (4, 256, 1, 1) != (2, 256, 1, 1)" in message
    assert "\n" not in message
    with pytest.raises(WeightsError, match="unexpected keys.*module.bogus.weight"):
        convert_official_state_dict({"state_dict": {"module.bogus.weight": torch.zeros(1), **state}})


def test_convert_command_roundtrip(shared_dir, tmp_path):
    src = tmp_path / "SRN.pth"
    torch.save({"state_dict": random_official_state(shared_dir)}, src)
    dst = tmp_path / "srn_r50.pt"
    convert_official_file(src, dst)
    config, state = read_weights(dst)
    assert config == DetectorConfig()
    reference = convert_official_state_dict(torch.load(src, weights_only=True))
    for key, value in reference.items():
        assert torch.equal(state[key], value), key


def test_own_checkpoint_holds_its_config(tmp_path):
    config = DetectorConfig(model=ModelConfig(backbone="mobilenet_v2", width=32, stc_levels=(0,), str_levels=(5,), rfe=False))
    model = build_model(config.model).eval()
    path = tmp_path / "m.pt"
    save_checkpoint(model, config, path)
    loaded, loaded_config = load_model(path)
    assert loaded_config == config
    image = torch.rand(1, 3, 64, 80)
    with torch.no_grad():
        assert_close(loaded(image).step2_logits[2], model(image).step2_logits[2])
    assert not list(tmp_path.glob(".*.tmp"))


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


@pytest.mark.parametrize("protocol, reason", [
    (2, "it holds a Python object (posix.system), which is never unpickled"),
    (4, "a pickle that torch.save did not write"),
])
def test_malicious_pickle_is_refused(tmp_path, protocol, reason):
    sentinel = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.sentinel = sentinel
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"model": exploit, "config": {}}, handle, protocol=protocol)
    with pytest.raises(WeightsError) as info:
        read_weights(path)
    assert str(info.value) == f"{path}: not a PyTorch weights file ({reason})"
    assert not sentinel.exists()


def test_unreadable_weights_give_one_line(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "text.pt").write_text("hello")
    expected = {
        "empty.pt": (InputPathError, "is empty (0 bytes), not a weights file"),
        "text.pt": (WeightsError, "not a PyTorch weights file (it is a text file)"),
        "absent.pt": (InputPathError, "no such weights file"),
    }
    for name, (kind, reason) in expected.items():
        with pytest.raises(kind) as info:
            read_weights(tmp_path / name)
        assert str(info.value) == f"{tmp_path / name}: {reason}"
    torch.save({"foo": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="neither an srn checkpoint nor the release"):
        read_weights(tmp_path / "other.pt")


ASSET = Path(__file__).resolve().parents[1] / "srn" / "assets" / "srn_mobilenet_v2.pt"


def _damaged_copies(data, rng, truncations, flips):
    """Prefixes of ``data`` (from 0 bytes to all but one), and copies with a few bytes changed in
    the first 4 KiB (the zip's first headers and the pickle), the last 2 KiB (the zip directory) or
    anywhere (mostly tensor data)."""
    for _ in range(truncations):
        yield data[: rng.randrange(len(data))]
    regions = [(0, 4096), (len(data) - 2048, len(data)), (0, len(data))]
    for index in range(flips):
        low, high = regions[index % 3]
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            damaged[rng.randrange(low, high)] = rng.randrange(256)
        yield bytes(damaged)


def test_random_and_damaged_files_succeed_or_raise_srn_errors(tmp_path):
    rng = random.Random(20190127)
    small = tmp_path / "small.pt"
    save_checkpoint(build_model(ModelConfig(backbone="resnet18", width=8)), DetectorConfig(model=ModelConfig(backbone="resnet18", width=8)), small)
    training = tmp_path / "training.pt"
    save_training_checkpoint(training, model={"w": torch.ones(3)}, optimizer={"state": {}, "param_groups": []}, scheduler={},
                             scaler={}, epoch=0, iteration=5, config=to_dict(DetectorConfig()))
    assert load_training_checkpoint(training)["iteration"] == 5
    cases = []
    for source, readers, truncations, flips in ((ASSET, (read_weights, load_model), 6, 6),
                                                (small, (read_weights, load_model), 8, 8),
                                                (training, (load_training_checkpoint,), 6, 6)):
        cases += [(data, readers) for data in _damaged_copies(source.read_bytes(), rng, truncations, flips)]
    for prefix in (b"", b"PK\x03\x04", b"\x80\x02", b"\x80\x04", b"\x89PNG\r\n\x1a\n"):
        for _ in range(2):
            noise = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4096)))
            cases.append((prefix + noise, (read_weights, load_model, load_training_checkpoint)))
    assert len(cases) == 50
    outcomes = {"loaded": 0, "refused": 0}
    for index, (data, readers) in enumerate(cases):
        path = tmp_path / f"case{index}.pt"
        path.write_bytes(data)
        for reader in readers:
            try:
                reader(path)
                outcomes["loaded"] += 1
            except SRNError as exc:
                assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc) and "weights_only" not in str(exc), str(exc)
                outcomes["refused"] += 1
    assert outcomes["refused"] > 40, outcomes
