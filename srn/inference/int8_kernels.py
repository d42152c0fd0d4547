"""Exact int8 convolutions on CPUs whose int8 kernel saturates.

A static int8 file (``srn export onnx --int8``, the shipped ``srn_mobilenet_v2.int8.onnx``) stores
uint8 activations and signed int8 weights (U8S8), which onnxruntime runs as integer convolutions. On
x86 CPUs without VNNI (AVX2 or AVX-512 only: AMD Zen 2 and 3, Intel before Ice Lake), its U8S8 kernel
multiplies with ``vpmaddubsw``, which adds two uint8 x int8 products into a signed 16-bit integer and
clips the sum at 32767: a pair of large activations (in MobileNetV2, the linear bottlenecks feeding an
expansion, whose zero point sits mid-range) and large weights comes out wrong. With VNNI the products
are added in 32 bits and the same file is exact. On such a CPU the shipped file loses 0.022 of WIDER Hard
on the held-out split, and 36 of 303 faces in a demo crowd photo (``benchmarks/RESULTS.md``, "int8 on
CPUs without VNNI").

The cure keeps the file's quantised values: a signed weight ``w`` with zero point 0 is the same number
as the unsigned weight ``w + 128`` with zero point 128, and onnxruntime runs uint8 x uint8 (U8U8)
convolutions with 32-bit sums. Only the convolutions that go through the matrix-multiply kernel are
re-encoded; depthwise ones (one input channel per group) have their own kernel, which is exact and
slower in U8U8.

:func:`u8s8_saturates` asks this onnxruntime, on this CPU, with a one-convolution graph whose exact
result a clipping kernel cannot give; :class:`srn.inference.backends.OnnxBackend` re-encodes an int8
file's weights (:func:`exact_weights`) when it does, unless told otherwise (``exact_int8=False``).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from srn.inference.onnx_format import require_onnx

# The probe: every activation 255 and every weight 127 over 64 input channels. Exact: 64 * 255 * 127;
# a kernel that clips pairs at 32767 gives about half.
_PROBE_CHANNELS = 64


def _probe_graph() -> Any:
    require_onnx()
    from onnx import TensorProto, helper, numpy_helper

    exact = 255.0 * 127 * _PROBE_CHANNELS
    constants = [
        numpy_helper.from_array(np.array(1.0, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.uint8), "x_zero"),
        numpy_helper.from_array(np.full((16, _PROBE_CHANNELS, 1, 1), 127, np.int8), "w"),
        numpy_helper.from_array(np.ones(16, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(16, np.int8), "w_zero"),
        numpy_helper.from_array(np.array(exact / 255, np.float32), "y_scale"),
        numpy_helper.from_array(np.array(0, np.uint8), "y_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd"], ["y"]),
        helper.make_node("QuantizeLinear", ["y", "y_scale", "y_zero"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zero"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "u8s8_probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, _PROBE_CHANNELS, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 16, 8, 8])], constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@functools.cache
def u8s8_saturates() -> bool:
    """Whether onnxruntime's CPU U8S8 convolution clips sums on this machine (checked once per process)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(_probe_graph().SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": np.full((1, _PROBE_CHANNELS, 8, 8), 255.0, np.float32)})[0]
    return bool(out.min() < 0.99 * 255.0 * 127 * _PROBE_CHANNELS)


def exact_weights(model: Any) -> int:
    """Re-encode, in place, the int8 weights of ``model`` (an ``onnx.ModelProto`` in QDQ form) that a
    convolution of uint8 activations multiplies through the matrix-multiply kernel, as uint8 with zero
    point 128: the same values, which onnxruntime then multiplies with 32-bit sums. Depthwise
    convolutions' weights, those of convolutions of int8 activations and any tensor shared with another
    use stay as they are. Returns how many weight tensors were re-encoded (0 for an fp32 file)."""
    require_onnx()
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    producers = {name: node for node in graph.node for name in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def initializer_type(name: str) -> int | None:
        tensor = initializers.get(name)
        return None if tensor is None else tensor.data_type

    def u8_input(conv: Any) -> bool:  # the convolution's input is a dequantised uint8 tensor (U8S8)
        source = producers.get(conv.input[0])
        return source is not None and source.op_type == "DequantizeLinear" and len(source.input) > 2 \
            and initializer_type(source.input[2]) == TensorProto.UINT8

    def depthwise(conv: Any, weight: Any) -> bool:
        return weight.dims[1] == 1 and next((a.i for a in conv.attribute if a.name == "group"), 1) > 1

    def convertible(node: Any) -> bool:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3:
            return False
        weight, zero = initializers.get(node.input[0]), initializers.get(node.input[2])
        users = consumers.get(node.output[0], [])
        return (weight is not None and zero is not None and weight.data_type == TensorProto.INT8
                and zero.data_type == TensorProto.INT8 and len(weight.dims) == 4
                and not numpy_helper.to_array(zero).any() and bool(users)
                and all(user.op_type == "Conv" and user.input[1] == node.output[0] and u8_input(user)
                        and not depthwise(user, weight) for user in users))

    nodes = [node for node in graph.node if convertible(node)]
    # A weight or zero point shared with any other use stays: re-encoding it would change that use.
    while True:
        chosen = {id(node) for node in nodes}
        kept = [node for node in nodes if all(id(user) in chosen for name in node.input[0::2] for user in consumers[name])]
        if len(kept) == len(nodes):
            break
        nodes = kept
    tensors = {name: initializers[name] for node in nodes for name in node.input[0::2]}
    for name, tensor in tensors.items():
        values = numpy_helper.to_array(tensor).astype(np.int16) + 128
        tensor.CopyFrom(numpy_helper.from_array(values.astype(np.uint8), name))
    return len({node.input[0] for node in nodes})
