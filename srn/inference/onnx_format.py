"""The ONNX model format that ``srn export onnx`` writes, as a runtime reads it.

An exported file stores everything a deployment needs in its ``metadata_props`` under the key
``srn``, as JSON (:class:`OnnxMetadata`): strides, anchor scales and ratio, STC/STR levels, mean and
std, thresholds and the output names, so nothing is guessed from the number of outputs. Raw-layout
files output, per level ``l``, ``step2_logits_l`` (Tensor[N, H_l, W_l, A]) and ``step2_deltas_l``
(Tensor[N, H_l, W_l, A, 4]), plus ``step1_*`` on the levels with a first step; anchors are rebuilt
from the metadata, and the :class:`srn.postprocess.PostProcessor` that
:meth:`OnnxMetadata.postprocessor` builds runs on them unchanged (docs/design.md, "Inference").
See :mod:`srn.export.onnx` for how the graph is built.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from srn.version import __version__
from srn.anchors import AnchorGenerator
from srn.config import PostProcessConfig, from_dict, to_dict
from srn.errors import ExportError, MissingDependencyError
from srn.model.outputs import SRNOutputs
from srn.postprocess import PostProcessor

METADATA_KEY = "srn"
METADATA_VERSION = 1
INPUT_NAME = "images"


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
        except (ValueError, TypeError) as exc:  # ConfigError is a ValueError
            raise ExportError(f"{source}: unreadable srn metadata ({exc})") from None


def require_onnx():
    try:
        import onnx
    except ImportError:
        raise MissingDependencyError("ONNX files need the onnx package: pip install 'srn-face[export]'") from None
    return onnx


def read_metadata(source: str | Path | Mapping[str, str], name: str = "<onnx>") -> OnnxMetadata:
    """The :class:`OnnxMetadata` of an ONNX file, or of an onnxruntime ``custom_metadata_map``
    (``name`` is the file it came from, for messages)."""
    if isinstance(source, Mapping):
        props = dict(source)
    else:
        onnx = require_onnx()
        name = str(source)
        if not Path(source).is_file():
            raise ExportError(f"{name}: ONNX file not found")
        try:
            proto = onnx.load(str(source), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the same user error
            raise ExportError(f"{name}: not a readable ONNX file ({type(exc).__name__})") from None
        props = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in props:
        raise ExportError(f"{name}: no srn metadata; export it with 'srn export onnx'")
    return OnnxMetadata.from_json(props[METADATA_KEY], name)


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
    for level in range(len(metadata.strides)):
        logits = torch.from_numpy(np.asarray(outputs[f"step2_logits_{level}"]))
        n, height, width, _ = logits.shape
        sizes.append((height, width))
        for step in ("step1", "step2"):
            if step == "step1" and level not in metadata.first_step_levels:
                result.step1_logits.append(None)
                result.step1_deltas.append(None)
                continue
            level_logits = torch.from_numpy(np.asarray(outputs[f"{step}_logits_{level}"]))
            level_deltas = torch.from_numpy(np.asarray(outputs[f"{step}_deltas_{level}"]))
            getattr(result, f"{step}_logits").append(level_logits.reshape(n, -1))  # (N, H, W, A) -> (N, R)
            getattr(result, f"{step}_deltas").append(level_deltas.reshape(n, -1, 4))  # (N, H, W, A, 4) -> (N, R, 4)
    generator = _anchor_generator(tuple(metadata.strides), tuple(metadata.anchor_scales), metadata.anchor_ratio)
    result.anchors.extend(generator.grid_anchors(sizes, torch.device("cpu")))
    return result


@functools.lru_cache(maxsize=8)
def _anchor_generator(strides: tuple[int, ...], scales: tuple[float, ...], ratio: float) -> AnchorGenerator:
    """One generator per anchor layout, so that its per-size anchor cache survives between calls."""
    return AnchorGenerator(strides, scales, ratio)
