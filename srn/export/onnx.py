"""ONNX export: the detector as one ``.onnx`` file that onnxruntime runs (:class:`srn.inference.Detector` reads it back).

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
  strides, scales and ratio are in the metadata, so :func:`srn.inference.onnx_format.onnx_outputs_to_torch`
  rebuilds them and :meth:`OnnxMetadata.postprocessor` applies the same
  :class:`srn.postprocess.PostProcessor` unchanged.
- ``postprocess=True``: docs/design.md's Inference inside the graph: the STC gate, STR double decode,
  per-level thresholds and top-k are :meth:`srn.postprocess.PostProcessor.candidates` traced as it
  is, followed by one ONNX ``NonMaxSuppression`` with a native batch axis and a per-image top-k:
  ``boxes`` (Tensor[N, D, 4]), ``scores`` (Tensor[N, D], by score descending; empty slots score -1 and
  have zero boxes) and ``num_detections`` (Tensor[N] int64), with D = min(max_detections, candidates).
  ONNX NMS, like torchvision's, uses continuous coordinates (no "+1 pixel" areas).

Everything a deployment needs is in the model's ``metadata_props`` under the key ``srn`` as JSON
(:class:`OnnxMetadata`): strides, anchor scales and ratio, STC/STR levels, mean/std, thresholds and
the output names, so nothing is guessed from the number of outputs.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import nms

from srn.atomic import atomic_output
from srn.config import PostProcessConfig
from srn.errors import ExportError, one_line
from srn.inference import DEFAULT_WEIGHTS, Detector
from srn.inference.onnx_format import INPUT_NAME, METADATA_KEY, OnnxMetadata, require_onnx
from srn.model import SRN
from srn.model.outputs import SRNOutputs
from srn.postprocess import PostProcessor, clamped_size

DEFAULT_OPSET = 17


# ---------------------------------------------------------------------------------------------
# The graph
# ---------------------------------------------------------------------------------------------


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


def _level_anchors(feature: Tensor, stride: int, cell_anchors: Tensor) -> Tensor:
    """A level's anchors, built from its feature map so that the grid size stays in the graph.

    :class:`srn.anchors.AnchorGenerator` keys its cache on Python ints, which a trace freezes; this
    builds the same grid from ``cumsum`` of ones over the map (row-major cells, anchors by scale).

    Args:
        feature (Tensor[N, C, H, W]): the level's features.
        cell_anchors (Tensor[A, 4]): the anchors of cell (0, 0).

    Returns:
        anchors (Tensor[H*W*A, 4]).
    """
    ones = torch.ones_like(feature[0, 0], dtype=torch.float32)  # (H, W)
    shift_x = (ones.cumsum(1) - 1) * stride
    shift_y = (ones.cumsum(0) - 1) * stride
    # (H, W, 4) -> (H*W, 1, 4); + (1, A, 4) -> (H*W*A, 4)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=-1).reshape(-1, 1, 4)
    return (shifts + cell_anchors.reshape(1, -1, 4)).reshape(-1, 4)


class ExportableSRN(nn.Module):
    """SRN wrapped for tracing: tuple outputs in a fixed order, grid sizes kept dynamic.

    Args:
        model: the network (it is put in eval mode by :func:`export_onnx`).
        postprocess: None for the raw layout; else the inference settings to build into the graph.
        min_score: in-graph post-processing only; detections below it become empty slots.

    ``forward(images (Tensor[N, 3, H, W]))`` returns the tensors named by :attr:`output_names`.
    """

    def __init__(self, model: SRN, postprocess: PostProcessConfig | None = None, min_score: float = 0.0) -> None:
        super().__init__()
        self.model = model
        # The runner's post-processing, traced as it is; only the NMS is the graph's own (_BatchedNMS).
        self.postprocessor = PostProcessor.from_model(model, postprocess) if postprocess is not None else None
        self.min_score = float(min_score)
        self.num_anchors = model.head.num_anchors
        self.first_step_levels = tuple(sorted(set(model.stc_levels) | set(model.str_levels)))
        generator = model.anchor_generator
        for level, base in enumerate(generator.cell_anchors):
            self.register_buffer(f"cell_anchors_{level}", base.float(), persistent=False)
        self.strides = generator.strides

    @property
    def output_names(self) -> tuple[str, ...]:
        if self.postprocessor is not None:
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
        if self.postprocessor is None:
            return self._raw(outputs, features)
        return self._detections(outputs, features)

    def _raw(self, outputs: SRNOutputs, features: list[Tensor]) -> tuple[Tensor, ...]:
        results = []
        for level, feature in enumerate(features):
            n, _, height, width = feature.shape
            for step in ("step1", "step2"):
                logits, deltas = getattr(outputs, f"{step}_logits")[level], getattr(outputs, f"{step}_deltas")[level]
                if logits is None:
                    continue
                results.append(logits.reshape(n, height, width, self.num_anchors))  # (N, R) -> (N, H, W, A)
                results.append(deltas.reshape(n, height, width, self.num_anchors, 4))  # (N, R, 4) -> (N, H, W, A, 4)
        return tuple(results)

    def _detections(self, outputs: SRNOutputs, features: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """:class:`srn.postprocess.PostProcessor`'s candidates, then ONNX NMS and a per-image top-k,
        with every size-dependent choice kept in the graph."""
        postprocessor = self.postprocessor
        assert postprocessor is not None
        config = postprocessor.config
        anchors = [
            _level_anchors(feature, self.strides[level], getattr(self, f"cell_anchors_{level}"))
            for level, feature in enumerate(features)
        ]
        boxes, scores = postprocessor.candidates(outputs._replace(anchors=anchors))  # (N, K, 4), (N, K)

        # Empty slots score -1 and real candidates >= 0, so -0.5 separates them whatever the NMS's
        # strictness; NMS returns boxes by score, so stopping at max_detections per image is exact.
        selected = _BatchedNMS.apply(boxes, scores.unsqueeze(1), config.nms_iou, config.max_detections, -0.5)  # (M, 3)
        image_idxs, box_idxs = selected[:, 0], selected[:, 2]
        kept = torch.full_like(scores, -1.0)
        kept[image_idxs, box_idxs] = scores[image_idxs, box_idxs]  # (N, K), -1 where suppressed
        top_scores, top_idxs = kept.topk(clamped_size(kept, 1, config.max_detections), dim=1)  # (N, D)
        top_boxes = boxes.gather(1, top_idxs.unsqueeze(-1).expand(-1, -1, 4))  # (N, D, 4)
        valid = top_scores >= max(self.min_score, 0.0)
        top_scores = torch.where(valid, top_scores, torch.full_like(top_scores, -1.0))
        top_boxes = torch.where(valid.unsqueeze(-1), top_boxes, torch.zeros_like(top_boxes))
        return top_boxes, top_scores, valid.sum(dim=1)


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


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
        postprocess: build the release's post-processing into the graph (outputs ``boxes``, ``scores``, ``num_detections``).
        postprocess_config: thresholds, top-k and NMS IoU (default: the release's).
        min_score: in-graph only: detections below it are empty slots.
        backbone: the backbone's config name, recorded for people reading the metadata.

    Returns:
        The metadata written into the file's ``metadata_props["srn"]``.
    """
    onnx = require_onnx()
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
    try:
        with atomic_output(path) as tmp:
            with warnings.catch_warnings(), torch.no_grad():
                # The tracer warns about the (unused) anchor cache's int() and the exporter about being
                # the legacy one; neither concerns the exported graph.
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                # Our gather indices are never negative, the one case the index warning is about.
                warnings.filterwarnings("ignore", message=".*advanced indexing.*")
                try:
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
                except (RuntimeError, ValueError, torch.onnx.errors.OnnxExporterError) as exc:
                    raise ExportError(f"{path}: the exporter failed at opset {opset} ({one_line(str(exc))[:200]})") from None
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
    finally:
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
    """``srn export onnx``: load a PyTorch weights file (None: the shipped checkpoint, whatever the
    Detector's default on this machine), export, return the metadata."""
    if weights is not None and Path(weights).suffix.lower() == ".onnx":
        raise ExportError(f"{weights}: already an ONNX file; export takes an srn checkpoint or SRN.pth")
    detector = Detector(DEFAULT_WEIGHTS if weights is None else weights, device="cpu")
    assert detector.model is not None  # a PyTorch weights file gives a PyTorch backend
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
