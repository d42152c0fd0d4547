"""Exact int8 convolutions where onnxruntime's U8S8 kernel clips (x86 without VNNI): the weights are
re-encoded as uint8 with zero point 128, the same values, and the shipped int8 file then gives on every
CPU what it gives where the kernel is exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing import assert_close

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from srn import Detector  # noqa: E402
from srn.inference.backends import OnnxBackend  # noqa: E402
from srn.inference.detector import DEFAULT_CPU_WEIGHTS as SHIPPED_INT8  # noqa: E402
from srn.inference.int8_kernels import _probe_graph, exact_weights, u8s8_saturates  # noqa: E402

SELFIE = "data/demo/images/Tencent__data_worlds-largest-selfie.jpg"
PROBE_EXACT = 64 * 255.0 * 127


def _run(model, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_the_probe_is_exact_once_reencoded_and_as_stored_only_where_the_kernel_does_not_clip():
    x = np.full((1, 64, 8, 8), 255.0, np.float32)
    stored = _run(_probe_graph(), x)
    model = _probe_graph()
    assert exact_weights(model) == 1
    weight = {t.name: t for t in model.graph.initializer}["w"]
    assert weight.data_type == TensorProto.UINT8 and numpy_helper.to_array(weight).min() == 255
    assert_close(torch.from_numpy(_run(model, x)), torch.full((1, 16, 8, 8), PROBE_EXACT), rtol=0, atol=0)
    # As stored, the clipping kernel gives about half (pairs of 255 * 127 clipped at 32767).
    expected = torch.full((1, 16, 8, 8), 32 * 32767.0 if u8s8_saturates() else PROBE_EXACT)
    assert_close(torch.from_numpy(stored), expected, rtol=0.01, atol=0)


def test_the_shipped_file_keeps_its_values_and_its_depthwise_weights():
    model = onnx.load(str(SHIPPED_INT8))
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert exact_weights(model) == 68  # every quantised convolution but the 27 depthwise ones
    after = {t.name: t for t in model.graph.initializer}
    changed = [name for name, tensor in after.items() if tensor.data_type == TensorProto.UINT8 and before[name].dtype == np.int8]
    assert len(changed) == 68 * 2  # a weight and its zero point each
    for name in changed:
        assert_close(torch.from_numpy(numpy_helper.to_array(after[name]).astype(np.int32) - 128),
                     torch.from_numpy(before[name].astype(np.int32)), rtol=0, atol=0)
    depthwise = [t for t in after.values() if t.data_type == TensorProto.INT8 and len(t.dims) == 4 and t.dims[1] == 1]
    assert len(depthwise) == 27
    assert len(after) == len(before)


def test_a_weight_shared_with_another_use_is_left_alone():
    # One zero point shared by a convolution's weight and a MatMul's: re-encoding it would change the MatMul.
    constants = [
        numpy_helper.from_array(np.full((4, 8, 1, 1), 5, np.int8), "w"),
        numpy_helper.from_array(np.full((8, 4), 5, np.int8), "m"),
        numpy_helper.from_array(np.array(0.5, np.float32), "scale"),
        numpy_helper.from_array(np.array(0, np.int8), "zero"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["w", "scale", "zero"], ["wd"]),
        helper.make_node("DequantizeLinear", ["m", "scale", "zero"], ["md"]),
        helper.make_node("Conv", ["x", "wd"], ["y"]),
        helper.make_node("MatMul", ["z", "md"], ["v"]),
    ]
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 2, 2]),
                                                helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 2, 2]),
                               helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 4])], constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert exact_weights(model) == 0
    assert all(t.data_type == TensorProto.INT8 for t in model.graph.initializer if t.name != "scale")


def test_convolutions_of_int8_activations_are_left_alone():
    # S8S8 (export with activation_type "qint8"): onnxruntime has no int8 x uint8 convolution to re-encode to.
    model = _probe_graph()
    zero = {t.name: t for t in model.graph.initializer}["x_zero"]
    zero.CopyFrom(numpy_helper.from_array(np.array(0, np.int8), "x_zero"))
    assert exact_weights(model) == 0


def test_an_fp32_file_has_nothing_to_reencode(small_weights, tmp_path):
    from srn.export.onnx import export_checkpoint

    path = tmp_path / "small.onnx"
    export_checkpoint(small_weights, path)
    assert OnnxBackend(path, torch.device("cpu"), exact_int8=True).exact_int8_weights == 0


@pytest.mark.usefixtures("one_thread")
def test_the_shipped_int8_file_finds_the_same_faces_on_every_cpu(shared_dir):
    cpu = torch.device("cpu")
    exact = OnnxBackend(SHIPPED_INT8, cpu, threads=1, exact_int8=True)
    stored = OnnxBackend(SHIPPED_INT8, cpu, threads=1, exact_int8=False)
    default = OnnxBackend(SHIPPED_INT8, cpu, threads=1)
    assert (exact.exact_int8_weights, stored.exact_int8_weights) == (68, 0)
    assert default.exact_int8_weights == (68 if u8s8_saturates() else 0)
    assert Detector(SHIPPED_INT8, device="cpu", exact_int8=True).backend.exact_int8_weights == 68
    found = Detector(backend=exact).detect(shared_dir / SELFIE)
    # 303 boxes at srn detect's threshold: what the shipped file gave on a CPU with VNNI (RESULTS,
    # "Shipped: a residual adapter on pyramid level 1"); as stored, a clipping CPU found 267.
    assert len(found) == 303
    as_stored = Detector(backend=stored).detect(shared_dir / SELFIE)
    if u8s8_saturates():
        assert len(as_stored) < 290
    else:
        assert_close(as_stored.scores, found.scores, rtol=0, atol=1e-3)
        assert_close(as_stored.boxes, found.boxes, rtol=0, atol=0.5)
