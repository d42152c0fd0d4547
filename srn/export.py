"""ONNX export and an onnxruntime backend with :class:`srn.detector.Detector`'s API.

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``. In torch 2.14 the
dynamo-based exporter needs the extra ``onnxscript`` package, takes about 4x longer on SRN, and
specialises H and W to the sample size (the anchor cache's ``int(h)`` keys guard on them), so the
legacy tracer is the one that keeps batch, height and width dynamic. The top-down
``F.interpolate(size=lateral.shape[-2:])`` of the FPN traces as a ``Resize`` fed by ``Shape``, so the
upsampling follows any input size.

Graph input ``images``: Tensor[N, 3, H, W] float32 RGB in [0, 1]; the mean/std normalisation is part of
the graph. Two output layouts:

- raw (default): per level ``l`` (stride ``4 * 2**l``) ``step2_logits_l`` (Tensor[N, H_l, W_l, A]) and
  ``step2_deltas_l`` (Tensor[N, H_l, W_l, A, 4]), plus ``step1_logits_l`` / ``step1_deltas_l`` on the
  levels that have a first step. No anchors are output: the grid size is in each output's shape and
  strides, scales and ratio are in the metadata, so :func:`postprocess_onnx_outputs` rebuilds them
  and applies :func:`srn.postprocess.postprocess` unchanged.
- ``postprocess=True``: SPEC §4 inside the graph (STC gate, STR double decode, per-level thresholds
  and top-k, one ONNX ``NonMaxSuppression`` with a native batch axis, per-image top-k):
  ``boxes`` (Tensor[N, D, 4]), ``scores`` (Tensor[N, D], by score descending; empty slots score -1 and
  have zero boxes) and ``num_detections`` (Tensor[N] int64), with D = min(max_detections, candidates).
  ONNX NMS, like torchvision's, uses continuous coordinates (no "+1 pixel" areas).

Everything a deployment needs is in the model's ``metadata_props`` under the key ``srn`` as JSON
(:class:`OnnxMetadata`): strides, anchor scales and ratio, STC/STR levels, mean/std, thresholds and
the output names, so nothing is guessed from the number of outputs.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import nms

import srn
from srn.anchors import AnchorGenerator
from srn.box_coder import decode
from srn.config import DetectorConfig, PostProcessConfig, from_dict, to_dict
from srn.detector import Detector, ImageInput
from srn.model import SRN
from srn.postprocess import postprocess

METADATA_KEY = "srn"
METADATA_VERSION = 1
INPUT_NAME = "images"
DEFAULT_OPSET = 17


class ExportError(ValueError):
    """An ONNX file or export request that cannot be used; the message names the file."""


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
    srn_version: str = srn.__version__

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


# ---------------------------------------------------------------------------------------------
# The graph
# ---------------------------------------------------------------------------------------------


def _clamped_k(x: Tensor, k: int) -> int | Tensor:
    """min(k, x.shape[1]) that stays a graph value when traced, so top-k follows the input size.

    Eagerly a Python int; while tracing, a 0-d int64 tensor that ``topk`` accepts as its ``k``
    (the trick torchvision's detection models use for their ONNX export).
    """
    if not torch.jit.is_tracing():
        return min(k, x.shape[1])
    size = torch._shape_as_tensor(x)[1:2]  # (1,) int64, a Shape node in the graph
    return torch.minimum(size, torch.tensor([k], dtype=size.dtype)).squeeze(0)


class _BatchedNMS(torch.autograd.Function):
    """Per-image NMS that exports as one ONNX ``NonMaxSuppression`` over the batch axis.

    Unlike ``torchvision.ops.batched_nms``, which traces as the coordinate-offset trick over all
    images flattened, this keeps images apart exactly and lets onnxruntime stop after
    ``max_per_image`` boxes.

    Args:
        boxes (Tensor[N, K, 4]): x1, y1, x2, y2.
        scores (Tensor[N, 1, K]): boxes scoring <= ``score_threshold`` are ignored.

    Returns:
        selected (Tensor[M, 3] int64): rows (image, 0, box index), by image, then by score descending.
    """

    @staticmethod
    def forward(ctx: Any, boxes: Tensor, scores: Tensor, iou_threshold: float, max_per_image: int, score_threshold: float) -> Tensor:
        rows = []
        for image, (image_boxes, image_scores) in enumerate(zip(boxes, scores[:, 0])):
            valid = (image_scores > score_threshold).nonzero().squeeze(1)
            keep = valid[nms(image_boxes[valid].float(), image_scores[valid].float(), iou_threshold)][:max_per_image]
            rows.append(torch.stack((torch.full_like(keep, image), torch.zeros_like(keep), keep), dim=1))
        return torch.cat(rows) if rows else torch.zeros((0, 3), dtype=torch.long, device=boxes.device)

    @staticmethod
    def symbolic(g: Any, boxes: Any, scores: Any, iou_threshold: float, max_per_image: int, score_threshold: float) -> Any:
        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            g.op("Constant", value_t=torch.tensor([max_per_image], dtype=torch.long)),
            g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float)),
            g.op("Constant", value_t=torch.tensor([score_threshold], dtype=torch.float)),
        )


def _level_anchors(feature: Tensor, stride: int, cell_anchors: Tensor) -> tuple[Tensor, Tensor]:
    """A level's anchors, built from its feature map so that the grid size stays in the graph.

    :class:`srn.anchors.AnchorGenerator` keys its cache on Python ints, which a trace freezes; this
    builds the same grid from ``cumsum`` of ones over the map (row-major cells, anchors by scale).

    Args:
        feature (Tensor[N, C, H, W]): the level's features.
        cell_anchors (Tensor[A, 4]): the anchors of cell (0, 0).

    Returns:
        anchors (Tensor[H*W*A, 4]) and the number of cells H*W (0-d float tensor).
    """
    ones = torch.ones_like(feature[0, 0], dtype=torch.float32)  # (H, W)
    shift_x = (ones.cumsum(1) - 1) * stride
    shift_y = (ones.cumsum(0) - 1) * stride
    # (H, W, 4) -> (H*W, 1, 4); + (1, A, 4) -> (H*W*A, 4)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=-1).reshape(-1, 1, 4)
    return (shifts + cell_anchors.reshape(1, -1, 4)).reshape(-1, 4), ones.sum()


class ExportableSRN(nn.Module):
    """SRN wrapped for tracing: tuple outputs in a fixed order, grid sizes kept dynamic.

    Args:
        model: the network (it is put in eval mode by :func:`export_onnx`).
        postprocess: None for the raw layout; else the SPEC §4 settings to build into the graph.
        min_score: in-graph post-processing only; detections below it become empty slots.

    ``forward(images (Tensor[N, 3, H, W]))`` returns the tensors named by :attr:`output_names`.
    """

    def __init__(self, model: SRN, postprocess: PostProcessConfig | None = None, min_score: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.postprocess = postprocess
        self.min_score = float(min_score)
        self.num_anchors = model.head.num_anchors
        self.first_step_levels = tuple(sorted(set(model.stc_levels) | set(model.str_levels)))
        generator = model.anchor_generator
        for level, base in enumerate(generator.cell_anchors):
            self.register_buffer(f"cell_anchors_{level}", base.float(), persistent=False)
        self.strides = generator.strides

    @property
    def output_names(self) -> tuple[str, ...]:
        if self.postprocess is not None:
            return ("boxes", "scores", "num_detections")
        names = []
        for level in range(len(self.strides)):
            if level in self.first_step_levels:
                names += [f"step1_logits_{level}", f"step1_deltas_{level}"]
            names += [f"step2_logits_{level}", f"step2_deltas_{level}"]
        return tuple(names)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        # The FPN's outputs carry each level's (H_l, W_l) as graph values; SRN's own anchors were
        # built from Python ints and would freeze the sample's size into the graph.
        captured: list[list[Tensor]] = []
        handle = self.model.fpn.register_forward_hook(lambda module, args, out: captured.append(out))
        try:
            outputs = self.model(images)
        finally:
            handle.remove()
        features = captured[0]
        if self.postprocess is None:
            return self._raw(outputs, features)
        return self._detections(outputs, features)

    def _raw(self, outputs: dict[str, list], features: list[Tensor]) -> tuple[Tensor, ...]:
        results = []
        for level, feature in enumerate(features):
            n, _, height, width = feature.shape
            for step in ("step1", "step2"):
                logits, deltas = outputs[f"{step}_logits"][level], outputs[f"{step}_deltas"][level]
                if logits is None:
                    continue
                results.append(logits.reshape(n, height, width, self.num_anchors))  # (N, R) -> (N, H, W, A)
                results.append(deltas.reshape(n, height, width, self.num_anchors, 4))  # (N, R, 4) -> (N, H, W, A, 4)
        return tuple(results)

    def _detections(self, outputs: dict[str, list], features: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """:func:`srn.postprocess.postprocess` with every size-dependent choice kept in the graph."""
        config = self.postprocess
        assert config is not None
        boxes_per_level, scores_per_level = [], []
        for level, feature in enumerate(features):
            anchors, num_cells = _level_anchors(feature, self.strides[level], getattr(self, f"cell_anchors_{level}"))
            scores = outputs["step2_logits"][level].float().sigmoid()  # (N, R)
            # The release lowers the threshold to 0 on levels with few cells (SPEC §4, step 3).
            thresh = torch.where(num_cells >= config.min_cells_for_thresh, torch.tensor(config.candidate_thresh), torch.tensor(0.0))
            is_candidate = scores > thresh
            if level in self.model.stc_levels:
                is_candidate = is_candidate & (outputs["step1_logits"][level].float().sigmoid() > 1.0 - config.stc_theta)
            masked = torch.where(is_candidate, scores, torch.full_like(scores, -1.0))
            top_scores, top_idxs = masked.topk(_clamped_k(masked, config.pre_nms_top_k), dim=1)  # (N, k)
            level_anchors = anchors[top_idxs]  # (R, 4)[(N, k)] -> (N, k, 4)
            gather_idxs = top_idxs.unsqueeze(-1).expand(-1, -1, 4)  # (N, k) -> (N, k, 4)
            if level in self.model.str_levels:
                level_anchors = decode(outputs["step1_deltas"][level].float().gather(1, gather_idxs), level_anchors)
            boxes_per_level.append(decode(outputs["step2_deltas"][level].float().gather(1, gather_idxs), level_anchors))
            scores_per_level.append(top_scores)
        boxes = torch.cat(boxes_per_level, dim=1)  # 6 x (N, k_l, 4) -> (N, K, 4)
        scores = torch.cat(scores_per_level, dim=1)  # 6 x (N, k_l) -> (N, K)

        # Empty slots score -1 and real candidates >= 0, so -0.5 separates them whatever the NMS's
        # strictness; NMS returns boxes by score, so stopping at max_detections per image is exact.
        selected = _BatchedNMS.apply(boxes, scores.unsqueeze(1), config.nms_iou, config.max_detections, -0.5)  # (M, 3)
        image_idxs, box_idxs = selected[:, 0], selected[:, 2]
        kept = torch.full_like(scores, -1.0)
        kept[image_idxs, box_idxs] = scores[image_idxs, box_idxs]  # (N, K), -1 where suppressed
        top_scores, top_idxs = kept.topk(_clamped_k(kept, config.max_detections), dim=1)  # (N, D)
        top_boxes = boxes.gather(1, top_idxs.unsqueeze(-1).expand(-1, -1, 4))  # (N, D, 4)
        valid = top_scores >= max(self.min_score, 0.0)
        top_scores = torch.where(valid, top_scores, torch.full_like(top_scores, -1.0))
        top_boxes = torch.where(valid.unsqueeze(-1), top_boxes, torch.zeros_like(top_boxes))
        return top_boxes, top_scores, valid.sum(dim=1)


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ExportError("ONNX export needs the onnx package: install srn[export]") from None
    return onnx


def export_onnx(
    model: SRN,
    path: str | Path,
    *,
    sample_size: tuple[int, int] = (480, 640),
    sample_batch: int = 2,
    opset: int = DEFAULT_OPSET,
    postprocess: bool = False,
    postprocess_config: PostProcessConfig | None = None,
    min_score: float = 0.0,
    backbone: str = "",
) -> OnnxMetadata:
    """Write ``model`` as an ONNX file with dynamic batch, height and width.

    Args:
        model: the network; it runs in eval mode during export and gets its mode back after.
        sample_size: (H, W) of the tracing sample; the file works for any other size.
        sample_batch: batch of the tracing sample (2, so that no size-1 axis is folded away).
        postprocess: build SPEC §4 into the graph (outputs ``boxes``, ``scores``, ``num_detections``).
        postprocess_config: thresholds, top-k and NMS IoU (default: the release's).
        min_score: in-graph only: detections below it are empty slots.
        backbone: the backbone's config name, recorded for people reading the metadata.

    Returns:
        The metadata written into the file's ``metadata_props["srn"]``.
    """
    onnx = _require_onnx()
    path = Path(path)
    height, width = sample_size
    if height < 32 or width < 32:
        raise ExportError(f"{path}: the sample size must be at least 32x32, got {height}x{width}")
    config = postprocess_config or PostProcessConfig()
    wrapper = ExportableSRN(model, config if postprocess else None, min_score)
    output_names = wrapper.output_names
    dynamic_axes: dict[str, dict[int, str]] = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
    for name in output_names:
        if name.startswith("step"):
            level = name.rsplit("_", 1)[1]
            dynamic_axes[name] = {0: "batch", 1: f"height_{level}", 2: f"width_{level}"}
        else:
            dynamic_axes[name] = {0: "batch", 1: "detections"} if name != "num_detections" else {0: "batch"}

    device = model.pixel_mean.device
    sample = torch.rand(sample_batch, 3, height, width, generator=torch.Generator().manual_seed(0)).to(device)
    was_training = model.training
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The tracer warns about the (unused) anchor cache's int() and the exporter about being
            # the legacy one; neither concerns the exported graph.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            # Our gather indices are never negative, the one case the index warning is about.
            warnings.filterwarnings("ignore", message=".*advanced indexing.*")
            torch.onnx.export(
                wrapper,
                (sample,),
                tmp,
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=list(output_names),
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
        proto = onnx.load(tmp)
        metadata = OnnxMetadata(
            strides=tuple(model.anchor_generator.strides),
            anchor_scales=tuple(model.anchor_generator.scales),
            anchor_ratio=model.anchor_generator.ratio,
            num_anchors=model.head.num_anchors,
            stc_levels=tuple(model.stc_levels),
            str_levels=tuple(model.str_levels),
            first_step_levels=wrapper.first_step_levels,
            # float32 buffers; 6 decimals give back the constants they were made from.
            pixel_mean=tuple(round(v, 6) for v in model.pixel_mean.flatten().tolist()),
            pixel_std=tuple(round(v, 6) for v in model.pixel_std.flatten().tolist()),
            postprocess=config,
            postprocess_in_graph=postprocess,
            min_score=float(min_score) if postprocess else 0.0,
            output_names=output_names,
            backbone=backbone,
            width=int(model.head.cls_pred.in_channels),
            opset=opset,
        )
        del proto.metadata_props[:]
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, metadata.to_json()
        onnx.save(proto, tmp)
        onnx.checker.check_model(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
        model.train(was_training)
    return metadata


def export_checkpoint(
    weights: str | Path | None,
    out: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    postprocess: bool = False,
    sample_size: tuple[int, int] = (480, 640),
    min_score: float = 0.0,
) -> OnnxMetadata:
    """``srn export onnx``: load weights as :class:`Detector` does, export, return the metadata."""
    detector = Detector(weights, device="cpu")
    return export_onnx(
        detector.model,
        out,
        sample_size=sample_size,
        opset=opset,
        postprocess=postprocess,
        postprocess_config=detector.config.postprocess,
        min_score=min_score,
        backbone=detector.config.model.backbone,
    )


def read_metadata(source: str | Path | Mapping[str, str]) -> OnnxMetadata:
    """The :class:`OnnxMetadata` of an ONNX file, or of an onnxruntime ``custom_metadata_map``."""
    if isinstance(source, Mapping):
        name, props = "<onnx>", dict(source)
    else:
        onnx = _require_onnx()
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


def onnx_outputs_to_torch(outputs: Mapping[str, np.ndarray], metadata: OnnxMetadata) -> dict[str, list]:
    """Raw ONNX outputs in :class:`srn.model.SRN`'s layout, anchors rebuilt from the metadata.

    Args:
        outputs: name -> array, as ``session.run`` gives them (``step2_logits_l`` (N, H_l, W_l, A), ...).

    Returns:
        The dict SRN's forward returns: per-level ``step1_logits`` / ``step1_deltas`` (None on levels
        without a first step), ``step2_logits`` (Tensor[N, R_l]), ``step2_deltas`` (Tensor[N, R_l, 4])
        and ``anchors`` (Tensor[R_l, 4]).
    """
    if metadata.postprocess_in_graph:
        raise ExportError("this ONNX model has post-processing in its graph; it has no raw outputs")
    result: dict[str, list] = {k: [] for k in ("step1_logits", "step1_deltas", "step2_logits", "step2_deltas")}
    sizes = []
    for level in range(len(metadata.strides)):
        logits = torch.from_numpy(np.asarray(outputs[f"step2_logits_{level}"]))
        n, height, width, _ = logits.shape
        sizes.append((height, width))
        for step in ("step1", "step2"):
            if step == "step1" and level not in metadata.first_step_levels:
                result["step1_logits"].append(None)
                result["step1_deltas"].append(None)
                continue
            level_logits = torch.from_numpy(np.asarray(outputs[f"{step}_logits_{level}"]))
            level_deltas = torch.from_numpy(np.asarray(outputs[f"{step}_deltas_{level}"]))
            result[f"{step}_logits"].append(level_logits.reshape(n, -1))  # (N, H, W, A) -> (N, R)
            result[f"{step}_deltas"].append(level_deltas.reshape(n, -1, 4))  # (N, H, W, A, 4) -> (N, R, 4)
    generator = _anchor_generator(tuple(metadata.strides), tuple(metadata.anchor_scales), metadata.anchor_ratio)
    result["anchors"] = generator.grid_anchors(sizes, torch.device("cpu"))
    return result


@functools.lru_cache(maxsize=8)
def _anchor_generator(strides: tuple[int, ...], scales: tuple[float, ...], ratio: float) -> AnchorGenerator:
    """One generator per anchor layout, so that its per-size anchor cache survives between calls."""
    return AnchorGenerator(strides, scales, ratio)


def postprocess_onnx_outputs(
    outputs: Mapping[str, np.ndarray],
    metadata: OnnxMetadata,
    config: PostProcessConfig | None = None,
    min_score: float = 0.0,
) -> list[dict[str, Tensor]]:
    """SPEC §4 on the raw outputs of an exported model, with :func:`srn.postprocess.postprocess`.

    Args:
        outputs: name -> array from ``onnxruntime.InferenceSession.run`` on a raw-layout model.
        config: thresholds, top-k and NMS IoU (default: those stored at export).
        min_score: detections must score at least this (applied after NMS).

    Returns:
        One dict per image: ``boxes`` (Tensor[D, 4], x1 y1 x2 y2 in input pixels) and ``scores``
        (Tensor[D]) by score descending, exactly as :class:`srn.detector.Detector` computes them.
    """
    raw = onnx_outputs_to_torch(outputs, metadata)
    return postprocess(raw, metadata.stc_levels, metadata.str_levels, config or metadata.postprocess, min_score, metadata.num_anchors)


class OnnxDetector(Detector):
    """:class:`Detector`'s API (``detect``, ``detect_tensors``, ``raw_outputs``) on onnxruntime.

    Input handling (reading, ``max_size`` downscaling, size-sorted batching) is Detector's; only the
    network and post-processing run in onnxruntime (raw-layout files are post-processed by
    :func:`srn.postprocess.postprocess`, so results equal Detector's).

    Args:
        path: a file written by :func:`export_onnx` / ``srn export onnx``.
        providers: onnxruntime execution providers (default: CPU).
        score_thresh, max_size, batch_size: as for :class:`Detector`.
        nms_iou: override the stored NMS IoU (raw-layout files only: NMS is fixed in a graph).
    """

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[str] | None = None,
        score_thresh: float = 0.5,
        nms_iou: float | None = None,
        max_size: int = 2100,
        batch_size: int = 8,
        session_options: Any = None,
    ) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise ExportError("OnnxDetector needs onnxruntime: install srn[export]") from None
        path = Path(path)
        if not path.is_file():
            raise ExportError(f"{path}: ONNX file not found")
        try:
            self.session = onnxruntime.InferenceSession(str(path), session_options, providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise ExportError(f"{path}: onnxruntime cannot load it ({str(exc).strip().splitlines()[0][:200]})") from None
        self.metadata = read_metadata(self.session.get_modelmeta().custom_metadata_map)
        post = self.metadata.postprocess
        if nms_iou is not None and nms_iou != post.nms_iou:
            if self.metadata.postprocess_in_graph:
                raise ExportError(f"{path}: NMS IoU {post.nms_iou} is built into this graph; export without --postprocess to choose it at run time")
            post = dataclasses.replace(post, nms_iou=nms_iou)
        if max_size < 32:
            raise ValueError(f"max_size must be at least 32, got {max_size}")
        self.path = path
        self.model = None  # the network lives in the onnxruntime session
        self.device = torch.device("cpu")
        self.config = DetectorConfig(postprocess=post)
        self.score_thresh = score_thresh
        self.max_size = max_size
        self.batch_size = max(1, batch_size)
        self._pixel_mean = torch.tensor(self.metadata.pixel_mean).view(1, 3, 1, 1)

    def _batch(self, images: Sequence[Tensor]) -> Tensor:
        """As Detector's: pad bottom/right with the mean colour (0 after the graph's normalisation)."""
        height = max(im.shape[-2] for im in images)
        width = max(im.shape[-1] for im in images)
        batch = self._pixel_mean.expand(len(images), 3, height, width).clone()
        for slot, im in zip(batch, images):
            slot[:, : im.shape[-2], : im.shape[-1]] = im
        return batch

    def _run(self, batch: Tensor) -> dict[str, np.ndarray]:
        arrays = self.session.run(None, {self.metadata.input_name: batch.float().cpu().numpy()})
        return dict(zip(self.metadata.output_names, arrays))

    @torch.inference_mode()
    def raw_outputs(self, images: ImageInput | Sequence[ImageInput]) -> dict[str, list]:
        """As :meth:`Detector.raw_outputs` (raw-layout files only)."""
        items = images if isinstance(images, list | tuple) else [images]
        fitted = [self._fit(self.load(im)[0])[0] for im in items]
        return onnx_outputs_to_torch(self._run(self._batch(fitted)), self.metadata)

    @torch.inference_mode()
    def detect_tensors(self, images: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """As :meth:`Detector.detect_tensors`: float [0, 1] Tensor[3, H, W] images, no resizing."""
        results = []
        for start in range(0, len(images), self.batch_size):
            outputs = self._run(self._batch(images[start : start + self.batch_size]))
            if not self.metadata.postprocess_in_graph:
                detections = postprocess_onnx_outputs(outputs, self.metadata, self.config.postprocess, self.score_thresh)
                results.extend((d["boxes"], d["scores"]) for d in detections)
                continue
            boxes, scores, counts = (torch.from_numpy(outputs[k]) for k in ("boxes", "scores", "num_detections"))
            for image_boxes, image_scores, count in zip(boxes, scores, counts.tolist()):
                # Slots come by score, so the threshold keeps a prefix.
                keep = int((image_scores[:count] >= self.score_thresh).sum())
                results.append((image_boxes[:keep], image_scores[:keep]))
        return results


# ---------------------------------------------------------------------------------------------
# srn export
# ---------------------------------------------------------------------------------------------

EXPORT_HELP = """\
Export a detector for deployment.

Examples:
  srn export onnx --weights srn_r50.pt --out srn.onnx
  srn export onnx --weights srn_r50.pt --out srn_nms.onnx --postprocess
  srn export onnx --weights SRN.pth --out srn.onnx --opset 18 --input-size 1024 1024

Run it with srn.export.OnnxDetector('srn.onnx').detect('photo.jpg').
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``srn export`` (with its ``onnx`` format) to the ``srn`` command line."""
    parser = sub.add_parser("export", help="export the detector (ONNX)", description=EXPORT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    formats = parser.add_subparsers(dest="export_format", metavar="FORMAT", required=True)
    onnx_parser = formats.add_parser("onnx", help="ONNX with dynamic batch, height and width", description=EXPORT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    onnx_parser.add_argument("--weights", help="srn checkpoint or the release's SRN.pth (default: the shipped model)")
    onnx_parser.add_argument("--out", required=True, help="the .onnx file to write")
    onnx_parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    onnx_parser.add_argument("--postprocess", action="store_true", help="build STC/STR decoding, top-k and NMS into the graph")
    onnx_parser.add_argument("--input-size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"), help="size of the tracing sample (the file takes any size)")
    onnx_parser.add_argument("--min-score", type=float, default=0.0, help="with --postprocess: drop detections below this in the graph")
    onnx_parser.set_defaults(func=cmd_export_onnx)


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from srn.cli import UserError

    try:
        metadata = export_checkpoint(
            args.weights,
            args.out,
            opset=args.opset,
            postprocess=args.postprocess,
            sample_size=tuple(args.input_size),
            min_score=args.min_score,
        )
    except ExportError as exc:
        raise UserError(str(exc)) from None
    layout = "boxes/scores/num_detections (post-processing in the graph)" if metadata.postprocess_in_graph else f"{len(metadata.output_names)} raw per-level outputs"
    print(f"wrote {args.out} ({metadata.backbone}, opset {metadata.opset}, {layout})")
    return 0
