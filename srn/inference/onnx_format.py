"""The ONNX model format that ``srn export onnx`` writes, as a runtime reads it.

An exported file stores everything a deployment needs in its ``metadata_props`` under the key
``srn``, as JSON (:class:`OnnxMetadata`): strides, anchor scales and ratio, STC/STR levels, mean and
std, thresholds and the output names, so nothing is guessed from the number of outputs. Raw-layout
files output, per level ``l``, ``step2_logits_l`` (Tensor[N, H_l, W_l, A]) and ``step2_deltas_l``
(Tensor[N, H_l, W_l, A, 4]), plus ``step1_*`` on the levels with a first step; anchors are rebuilt
from the metadata, and the :class:`srn.postprocess.PostProcessor` that
:meth:`OnnxMetadata.postprocessor` builds runs on them unchanged (docs/design.md, "Inference").
See :mod:`srn.export.onnx` for how the graph is built.

Nothing in the metadata is trusted. When it is read (:func:`read_metadata`) it is checked on its own
(:meth:`OnnxMetadata.__post_init__`: SRN's strides, one anchor per scale, levels among the strides'
levels, three finite pixel statistics, the output names its layout implies) and against the graph it
came with (:func:`check_graph`: one float image input of that name and rank 4, the outputs named and
ordered as stated, each of the rank and trailing sizes its layout gives); the outputs of a run are
checked too (:func:`onnx_outputs_to_torch`: each level's sizes follow the network's stride-2 steps).
A file that does not fit is one :class:`srn.errors.ExportError` line, not a traceback at the first
image or, worse, a run that finds no face.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from srn.version import __version__
from srn.anchors import DEFAULT_STRIDES, AnchorGenerator
from srn.config import PostProcessConfig, from_dict, to_dict
from srn.errors import ConfigError, ExportError, MissingDependencyError, brief, excerpt, printable
from srn.model.outputs import SRNOutputs
from srn.postprocess import PostProcessor

METADATA_KEY = "srn"
METADATA_VERSION = 1
INPUT_NAME = "images"
IN_GRAPH_OUTPUTS = ("boxes", "scores", "num_detections")
# A graph's value: its name and shape, a dimension None where it is symbolic, the shape None where
# the rank is unknown; and its element type (ONNX's TensorProto number, 1 = float32; 0 unknown).
GraphValue = tuple[str, "tuple[int | None, ...] | None", int]
_FLOAT = 1


def _fits(key: str, ok: bool, rule: str, value: object) -> None:
    if not ok:
        raise ConfigError(f"{key}: must be {rule}, got {excerpt(list(value) if isinstance(value, tuple) else value)}")


def raw_output_names(num_levels: int, first_step_levels: Sequence[int]) -> tuple[str, ...]:
    """The outputs of a raw-layout graph, in the exporter's order."""
    names: list[str] = []
    for level in range(num_levels):
        if level in first_step_levels:
            names += [f"step1_logits_{level}", f"step1_deltas_{level}"]
        names += [f"step2_logits_{level}", f"step2_deltas_{level}"]
    return tuple(names)


@dataclass(frozen=True)
class OnnxMetadata:
    """What a deployment needs to run an exported SRN, stored as JSON in ``metadata_props["srn"]``."""

    strides: tuple[int, ...]
    anchor_scales: tuple[float, ...]
    anchor_ratio: float
    num_anchors: int
    stc_levels: tuple[int, ...]
    str_levels: tuple[int, ...]
    first_step_levels: tuple[int, ...]
    pixel_mean: tuple[float, ...]
    pixel_std: tuple[float, ...]
    postprocess: PostProcessConfig
    postprocess_in_graph: bool
    min_score: float  # in-graph only: detections below it are empty slots
    output_names: tuple[str, ...]
    backbone: str
    width: int
    opset: int
    input_name: str = INPUT_NAME
    input_layout: str = "N,3,H,W float32 RGB in [0, 1]"
    nms_iou_convention: str = "continuous"  # torchvision's and ONNX's: no "+1 pixel" areas
    format_version: int = METADATA_VERSION
    srn_version: str = __version__

    def __post_init__(self) -> None:
        """What the metadata says, checked on its own (a ConfigError naming the key)."""
        levels = len(self.strides)
        _fits("strides", 1 <= levels <= len(DEFAULT_STRIDES) and self.strides == DEFAULT_STRIDES[:levels],
              f"SRN's level strides {list(DEFAULT_STRIDES)} (or a prefix of them)", self.strides)
        _fits("anchor_scales", 0 < len(self.anchor_scales) <= 16 and all(math.isfinite(v) and v > 0 for v in self.anchor_scales),
              "1 to 16 positive numbers", self.anchor_scales)
        _fits("anchor_ratio", math.isfinite(self.anchor_ratio) and self.anchor_ratio > 0, "a positive number", self.anchor_ratio)
        _fits("num_anchors", self.num_anchors == len(self.anchor_scales), f"one per anchor scale ({len(self.anchor_scales)})",
              self.num_anchors)
        for key in ("stc_levels", "str_levels", "first_step_levels"):
            value = getattr(self, key)
            _fits(key, all(0 <= v < levels for v in value) and len(set(value)) == len(value),
                  f"distinct levels from 0 to {levels - 1} (one per stride)", value)
        union = tuple(sorted(set(self.stc_levels) | set(self.str_levels)))
        _fits("first_step_levels", tuple(sorted(self.first_step_levels)) == union, f"the STC and STR levels {list(union)}",
              self.first_step_levels)
        for key in ("pixel_mean", "pixel_std"):
            value = getattr(self, key)
            low = 0.0 if key == "pixel_mean" else 1e-6
            _fits(key, len(value) == 3 and all(math.isfinite(v) and low <= v <= 1 for v in value),
                  f"three numbers from {low:g} to 1 (R, G, B of images in [0, 1])", value)
        _fits("min_score", 0 <= self.min_score <= 1, "from 0 to 1", self.min_score)
        expected = IN_GRAPH_OUTPUTS if self.postprocess_in_graph else raw_output_names(levels, self.first_step_levels)
        _fits("output_names", self.output_names == expected, f"{excerpt(list(expected), 120)} for its levels and layout",
              self.output_names)
        _fits("input_name", bool(self.input_name), "a name", self.input_name)

    def postprocessor(self, config: PostProcessConfig | None = None) -> PostProcessor:
        """The post-processing of the exported network's levels, with ``config`` (default: the
        settings stored at export), for the raw layout's outputs."""
        return PostProcessor(self.stc_levels, self.str_levels, self.num_anchors, config or self.postprocess)

    def to_json(self) -> str:
        return json.dumps(to_dict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "<onnx>") -> OnnxMetadata:
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("format_version") != METADATA_VERSION:
                found = data.get("format_version") if isinstance(data, dict) else None
                raise ExportError(f"{source}: srn ONNX metadata version {found} is not {METADATA_VERSION}")
            return from_dict(cls, data)
        except ExportError:
            raise
        except RecursionError:
            raise ExportError(f"{printable(source)}: unreadable srn metadata (nested too deeply)") from None
        except (ValueError, TypeError) as exc:  # ConfigError is a ValueError; its values are excerpts
            raise ExportError(f"{printable(source)}: srn metadata that does not fit an SRN ({brief(str(exc), 300)})") from None


def require_onnx():
    try:
        import onnx
    except ImportError:
        raise MissingDependencyError("ONNX files need the onnx package: pip install onnx") from None
    return onnx


def read_metadata(source: str | Path | Mapping[str, str], name: str = "<onnx>",
                  graph: tuple[Sequence[GraphValue], Sequence[GraphValue]] | None = None) -> OnnxMetadata:
    """The :class:`OnnxMetadata` of an ONNX file, or of an onnxruntime ``custom_metadata_map``
    (``name`` is the file it came from, for messages), checked against the graph it came with
    (:func:`check_graph`).

    Args:
        graph: the graph's ``(inputs, outputs)`` (:func:`session_signature` of an onnxruntime
            session); default: read from the file (``source``, or ``name`` when ``source`` is a
            mapping and ``name`` a file).

    Raises:
        ExportError: one line: not an ONNX file, no srn metadata, metadata that does not fit an SRN
            or does not fit the graph.
    """
    if isinstance(source, Mapping):
        props = dict(source)
    else:
        name = str(source)
        proto = load_proto(source)
        props = {p.key: p.value for p in proto.metadata_props}
        graph = graph or proto_signature(proto)
    if METADATA_KEY not in props:
        raise ExportError(f"{printable(name)}: no srn metadata; export it with 'srn export onnx'")
    metadata = OnnxMetadata.from_json(props[METADATA_KEY], name)
    if graph is None and Path(name).is_file() and importlib.util.find_spec("onnx") is not None:
        graph = proto_signature(load_proto(name))
    if graph is not None:
        check_graph(metadata, *graph, name)
    return metadata


def load_proto(path: str | Path, load_external_data: bool = False):
    """The ``onnx.ModelProto`` of a file (without its external data unless asked); errors are one line."""
    onnx = require_onnx()
    if not Path(path).is_file():
        raise ExportError(f"{printable(path)}: ONNX file not found")
    try:
        return onnx.load(str(path), load_external_data=load_external_data)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the same user error
        raise ExportError(f"{printable(path)}: not a readable ONNX file ({type(exc).__name__})") from None


def proto_signature(proto) -> tuple[list[GraphValue], list[GraphValue]]:
    """The ``(inputs, outputs)`` of an ONNX ``ModelProto``'s graph (initializers listed as inputs
    left out)."""
    graph = proto.graph
    initializers = {init.name for init in graph.initializer}

    def value(info) -> GraphValue:
        tensor = info.type.tensor_type
        shape = None
        if tensor.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
        return info.name, shape, int(tensor.elem_type)

    return [value(i) for i in graph.input if i.name not in initializers], [value(o) for o in graph.output]


def session_signature(session) -> tuple[list[GraphValue], list[GraphValue]]:
    """The ``(inputs, outputs)`` of an onnxruntime ``InferenceSession``."""
    types = {"tensor(float)": _FLOAT}

    def value(arg) -> GraphValue:
        shape = arg.shape
        dims = None if shape is None else tuple(d if isinstance(d, int) and d >= 0 else None for d in shape)
        return arg.name, dims, types.get(arg.type, -1)

    return [value(a) for a in session.get_inputs()], [value(a) for a in session.get_outputs()]


def check_graph(metadata: OnnxMetadata, inputs: Sequence[GraphValue], outputs: Sequence[GraphValue],
                source: str | Path = "<onnx>") -> None:
    """Whether the graph is the one the metadata describes.

    Checks: one input, named as the metadata says, float32 of rank 4 with 3 channels (where its
    type and sizes are stated); the outputs named, and ordered, as the metadata says (they are
    matched to the names by position); a raw layout's ``*_logits_l`` of rank 4 ending in A and
    ``*_deltas_l`` of rank 5 ending in (A, 4), float32; an in-graph layout's ``boxes`` (N, D, 4),
    ``scores`` (N, D) and ``num_detections`` (N,).

    Raises:
        ExportError: ``"<file>: its graph does not fit its srn metadata: <what>"``.
    """
    def refuse(what: str) -> None:
        raise ExportError(f"{printable(source)}: its graph does not fit its srn metadata: {what}")

    input_names = [name for name, _, _ in inputs]
    if input_names != [metadata.input_name]:
        refuse(f"inputs {excerpt(input_names, 120)}, the metadata says one, {excerpt(metadata.input_name)}")
    _, shape, kind = inputs[0]
    if kind not in (0, _FLOAT) or (shape is not None and (len(shape) != 4 or shape[1] not in (None, 3))):
        refuse(f"input {excerpt(metadata.input_name)} is not a float32 (N, 3, H, W) batch of images")
    output_names = [name for name, _, _ in outputs]
    stated = list(metadata.output_names)
    if len(output_names) != len(stated):
        refuse(f"{len(output_names)} outputs, the metadata names {len(stated)} "
               f"({len(metadata.strides)} levels, {'in-graph' if metadata.postprocess_in_graph else 'raw'} layout)")
    for index, (name, want) in enumerate(zip(output_names, stated)):
        if name != want:
            refuse(f"output {index} is {excerpt(name)}, the metadata says {excerpt(want)}")
    a = metadata.num_anchors
    for name, shape, kind in outputs:
        if metadata.postprocess_in_graph:
            want: tuple[int | None, ...] = {"boxes": (None, None, 4), "scores": (None, None), "num_detections": (None,)}[name]
        elif "_logits_" in name:
            want = (None, None, None, a)
        else:
            want = (None, None, None, a, 4)
        if kind not in (0, -1, _FLOAT) and name != "num_detections":
            refuse(f"output {name} is not float32")
        if shape is not None and (len(shape) != len(want) or any(w is not None and d not in (None, w) for d, w in zip(shape, want))):
            shown = "x".join("?" if w is None else str(w) for w in want)
            refuse(f"output {name} has shape {excerpt(list(shape))}, its layout ({a} anchors per cell) gives {shown}")


# ---------------------------------------------------------------------------------------------
# Running exported models
# ---------------------------------------------------------------------------------------------


def onnx_outputs_to_torch(outputs: Mapping[str, np.ndarray], metadata: OnnxMetadata) -> SRNOutputs:
    """Raw ONNX outputs in :class:`srn.model.SRN`'s layout, anchors rebuilt from the metadata.

    Args:
        outputs: name -> array, as ``session.run`` gives them (``step2_logits_l`` (N, H_l, W_l, A), ...).

    Returns:
        What SRN's forward returns (:class:`srn.model.SRNOutputs`): per-level ``step1_logits`` / ``step1_deltas`` (None on levels
        without a first step), ``step2_logits`` (Tensor[N, R_l]), ``step2_deltas`` (Tensor[N, R_l, 4])
        and ``anchors`` (Tensor[R_l, 4]).
    """
    if metadata.postprocess_in_graph:
        raise ExportError("this ONNX model has post-processing in its graph; it has no raw outputs")
    result = SRNOutputs.empty()
    sizes = []
    a = metadata.num_anchors
    for level in range(len(metadata.strides)):
        logits = torch.from_numpy(np.asarray(outputs[f"step2_logits_{level}"]))
        if logits.ndim != 4 or logits.shape[3] != a:
            raise ExportError(f"output step2_logits_{level} has shape {list(logits.shape)}, not (N, H, W, {a})")
        n, height, width, _ = logits.shape
        if sizes and (height, width) != ((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2):
            raise ExportError(f"output step2_logits_{level} is {height}x{width} after a level of {sizes[-1][0]}x{sizes[-1][1]}: "
                              "not the network's stride-2 step between levels")
        sizes.append((height, width))
        for step in ("step1", "step2"):
            if step == "step1" and level not in metadata.first_step_levels:
                result.step1_logits.append(None)
                result.step1_deltas.append(None)
                continue
            level_logits = torch.from_numpy(np.asarray(outputs[f"{step}_logits_{level}"]))
            level_deltas = torch.from_numpy(np.asarray(outputs[f"{step}_deltas_{level}"]))
            if tuple(level_logits.shape) != (n, height, width, a) or tuple(level_deltas.shape) != (n, height, width, a, 4):
                raise ExportError(f"outputs {step}_logits_{level} {list(level_logits.shape)} and {step}_deltas_{level} "
                                  f"{list(level_deltas.shape)} are not (N, H, W, {a}) and (N, H, W, {a}, 4) of level {level}")
            getattr(result, f"{step}_logits").append(level_logits.reshape(n, -1))  # (N, H, W, A) -> (N, R)
            getattr(result, f"{step}_deltas").append(level_deltas.reshape(n, -1, 4))  # (N, H, W, A, 4) -> (N, R, 4)
    generator = _anchor_generator(tuple(metadata.strides), tuple(metadata.anchor_scales), metadata.anchor_ratio)
    result.anchors.extend(generator.grid_anchors(sizes, torch.device("cpu")))
    return result


@functools.lru_cache(maxsize=8)
def _anchor_generator(strides: tuple[int, ...], scales: tuple[float, ...], ratio: float) -> AnchorGenerator:
    """One generator per anchor layout, so that its per-size anchor cache survives between calls."""
    return AnchorGenerator(strides, scales, ratio)
