"""A foreign ONNX file that carries srn metadata: a graph that is not an SRN export (its outputs are
constants of the sizes an SRN gives a 64x64 input), with metadata written to fit it, which each
variant then bends (made fresh by the tests; nothing is committed but this)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from srn.anchors import feature_sizes_for_image
from srn.config import PostProcessConfig
from srn.inference.onnx_format import METADATA_KEY, OnnxMetadata, raw_output_names


def srn_metadata(**changes: Any) -> OnnxMetadata:
    levels = tuple(range(6))
    metadata = OnnxMetadata(
        strides=(4, 8, 16, 32, 64, 128), anchor_scales=(2.0, 2.828427), anchor_ratio=1.25, num_anchors=2,
        stc_levels=(0, 1, 2), str_levels=(3, 4, 5), first_step_levels=levels,
        pixel_mean=(0.485, 0.456, 0.406), pixel_std=(0.229, 0.224, 0.225), postprocess=PostProcessConfig(),
        postprocess_in_graph=False, min_score=0.0, output_names=raw_output_names(6, levels), backbone="resnet18",
        width=32, opset=17)
    return dataclasses.replace(metadata, **changes) if changes else metadata


def foreign_onnx(path: Path, metadata_json: str | None = None, input_name: str = "images",
                 outputs: dict[str, list[int]] | None = None) -> Path:
    """A graph with one input ``input_name`` (N, 3, H, W) and, per output name, a zero constant of
    the given shape (default: an SRN's raw outputs for a 64x64 input, two anchors per cell)."""
    import onnx
    from onnx import TensorProto, helper

    if outputs is None:
        outputs = {}
        for level, (h, w) in enumerate(feature_sizes_for_image(64, 64)):
            for step in ("step1", "step2"):
                outputs[f"{step}_logits_{level}"] = [1, h, w, 2]
                outputs[f"{step}_deltas_{level}"] = [1, h, w, 2, 4]
        outputs = {name: outputs[name] for name in raw_output_names(6, range(6))}
    nodes, values = [], []
    for name, shape in outputs.items():
        nodes.append(helper.make_node("Constant", [], [f"{name}_shape"],
                                      value=helper.make_tensor(f"{name}_s", TensorProto.INT64, [len(shape)], shape)))
        nodes.append(helper.make_node("ConstantOfShape", [f"{name}_shape"], [name],
                                      value=helper.make_tensor(f"{name}_v", TensorProto.FLOAT, [1], [0.0])))
        values.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    image = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", 3, "height", "width"])
    graph = helper.make_graph(nodes, "foreign", [image], values)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata_json if metadata_json is not None else srn_metadata().to_json()
    onnx.save(model, path)
    return path
