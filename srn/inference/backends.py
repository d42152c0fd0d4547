"""What runs the network: a backend maps a padded batch to detections, or to raw outputs.

:class:`srn.inference.Detector` does everything around it once (reading, fitting under
``max_size``, size-sorted batching, mapping boxes back), whichever backend runs:

- :class:`TorchBackend`: the PyTorch network through :class:`srn.inference.runner.Runner` (fp32, on the
  CPU with BatchNorm folded and channels_last; or the bf16 inference copy; CUDA graphs;
  post-processing on the device);
- :class:`OnnxBackend`: a file from ``srn export onnx`` in an onnxruntime session; raw-layout
  files are post-processed by the same :class:`srn.postprocess.PostProcessor`, so both give the
  same detections.

Both give one :class:`srn.postprocess.Detections` per image.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from srn.config import DetectorConfig, ModelConfig
from srn.errors import DeviceError, ExportError, one_line
from srn.inference.int8_kernels import exact_weights, u8s8_saturates
from srn.inference.onnx_format import OnnxMetadata, load_proto, onnx_outputs_to_torch, read_metadata, session_signature
from srn.inference.runner import Runner, postprocess_each_image
from srn.model import SRN
from srn.model.outputs import SRNOutputs
from srn.postprocess import Detections


class Backend(Protocol):
    """The part of a detector that differs between PyTorch and onnxruntime."""

    device: torch.device
    config: DetectorConfig

    def pad_value(self) -> Tensor:
        """The colour (Tensor[3, 1, 1], float [0, 1]) that padding takes: 0 after normalisation."""
        ...

    def detections(self, batch: Tensor, score_thresh: float) -> list[Detections]:
        """Detections of each image of a float [0, 1] batch (Tensor[N, 3, H, W]), in the batch's pixels."""
        ...

    def raw_outputs(self, batch: Tensor) -> SRNOutputs:
        """The network's per-level outputs and anchors for the batch (see :class:`srn.model.SRN`)."""
        ...


class TorchBackend:
    """The PyTorch network, run by :class:`srn.inference.runner.Runner`.

    Args:
        model: the network; config: its detector config (post-processing settings included).
        precision: "fp32", or "bf16" for the inference copy (BatchNorm folded, bf16 weights,
            channels_last); boxes are still decoded in fp32.
        cuda_graphs: capture and replay the network and post-processing per input shape (CUDA only).
        score_thresh: the threshold the first runner is built for (a call at another rebuilds it).
    """

    def __init__(self, model: SRN, config: DetectorConfig, device: torch.device, precision: str = "fp32",
                 cuda_graphs: bool = False, score_thresh: float = 0.5) -> None:
        self.device = device
        self.model = model.to(device).eval()
        self.config = config
        self.precision, self.cuda_graphs = precision, cuda_graphs
        self._runner: Runner | None = None
        self._runner_key: tuple | None = None
        # Built now, for the threshold it will run at (each build copies the network and folds
        # BatchNorm), so that bad settings fail here.
        self.runner(score_thresh)

    def runner(self, score_thresh: float) -> Runner:
        """The :class:`Runner` for this threshold and the current post-processing settings (cached)."""
        key = (score_thresh, self.config.postprocess)
        if self._runner is None or self._runner_key != key:
            # On the CPU the folded channels_last copy is faster at the same detections (see srn.inference.runner).
            self._runner = Runner(self.model, self.config.postprocess, score_thresh, self.precision, self.cuda_graphs,
                                  fold=self.device.type == "cpu")
            self._runner_key = key
        return self._runner

    def pad_value(self) -> Tensor:
        return self.model.pixel_mean.reshape(3, 1, 1)

    def detections(self, batch: Tensor, score_thresh: float) -> list[Detections]:
        return self.runner(score_thresh)(batch)

    def raw_outputs(self, batch: Tensor) -> SRNOutputs:
        return self.model(batch)


class OnnxBackend:
    """A file written by ``srn export onnx``, run by onnxruntime.

    Args:
        path: the ``.onnx`` file.
        device: CPU, or a CUDA device for onnxruntime's CUDA provider.
        nms_iou: override the stored NMS IoU (raw-layout files only: in-graph NMS is fixed).
        threads: onnxruntime's threads within an op (default: its own choice).
        providers, session_options: passed to ``onnxruntime.InferenceSession`` as they are.
        exact_int8: run an int8 file's convolutions with 32-bit sums (:mod:`srn.inference.int8_kernels`):
            the same quantised values, re-encoded so that onnxruntime's kernel cannot clip them. ``None``
            (the default): on the CPU, when this machine's int8 kernel clips (x86 without VNNI), at about
            1.5x the int8 time there; ``False``: as stored, faster there but wrong wherever it clips.

    Attributes:
        exact_int8_weights: how many weight tensors were re-encoded (0: the file runs as stored).
    """

    def __init__(self, path: str | Path, device: torch.device, nms_iou: float | None = None, threads: int | None = None,
                 providers: Sequence[str] | None = None, session_options: Any = None,
                 exact_int8: bool | None = None) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise ExportError(f"{path}: running ONNX files needs onnxruntime (pip install onnxruntime)") from None
        path = Path(path)
        if not path.is_file():
            raise ExportError(f"{path}: ONNX file not found")
        if providers is None:
            provider = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
            if provider not in onnxruntime.get_available_providers():
                raise DeviceError(f"{path}: this onnxruntime has no {provider} (install onnxruntime-gpu, or run on the CPU)")
            providers = [provider]
        if session_options is None:
            session_options = onnxruntime.SessionOptions()
            if threads:
                session_options.intra_op_num_threads = threads
        if exact_int8 is None:
            exact_int8 = list(providers) == ["CPUExecutionProvider"] and u8s8_saturates()
        source: str | bytes = str(path)
        self.exact_int8_weights = 0
        if exact_int8:
            try:
                model = load_proto(path, load_external_data=True)
            except ExportError:
                model = None  # not an ONNX file: onnxruntime says so below, in its own words
            self.exact_int8_weights = 0 if model is None else exact_weights(model)
            if self.exact_int8_weights:
                source = model.SerializeToString()
        try:
            self.session = onnxruntime.InferenceSession(source, session_options, providers=list(providers))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise ExportError(f"{path}: onnxruntime cannot load it ({one_line(str(exc))[:200]})") from None
        self.metadata: OnnxMetadata = read_metadata(self.session.get_modelmeta().custom_metadata_map, str(path),
                                                    graph=session_signature(self.session))
        post = self.metadata.postprocess
        if nms_iou is not None and nms_iou != post.nms_iou:
            if self.metadata.postprocess_in_graph:
                raise ExportError(f"{path}: NMS IoU {post.nms_iou} is built into this graph; export it without "
                                  "post-processing to choose the IoU at run time")
            post = dataclasses.replace(post, nms_iou=nms_iou)
        self.path = path
        self.device = torch.device("cpu")  # inputs and outputs cross as numpy arrays
        meta = self.metadata
        # What the file says of its network; the rest of ModelConfig (training-only settings, the
        # head's layout) is not stored and keeps its defaults.
        model = ModelConfig(backbone=meta.backbone or ModelConfig.backbone, width=meta.width, stc_levels=meta.stc_levels,
                            str_levels=meta.str_levels, anchor_scales=meta.anchor_scales, anchor_ratio=meta.anchor_ratio)
        self.config = DetectorConfig(model=model, postprocess=post)
        # Raw-layout files only: the post-processing the metadata describes, built once.
        self.postprocessor = self.metadata.postprocessor(post)
        self._pad = torch.tensor(self.metadata.pixel_mean, dtype=torch.float32).view(3, 1, 1)

    def pad_value(self) -> Tensor:
        return self._pad

    def run(self, batch: Tensor) -> dict[str, np.ndarray]:
        """``session.run`` on the batch: output name -> array."""
        arrays = self.session.run(None, {self.metadata.input_name: batch.float().cpu().numpy()})
        return dict(zip(self.metadata.output_names, arrays))

    def detections(self, batch: Tensor, score_thresh: float) -> list[Detections]:
        outputs = self.run(batch)
        if not self.metadata.postprocess_in_graph:
            return postprocess_each_image(self.postprocessor, onnx_outputs_to_torch(outputs, self.metadata), score_thresh)
        boxes, scores, counts = (torch.from_numpy(outputs[k]) for k in ("boxes", "scores", "num_detections"))
        results = []
        for image_boxes, image_scores, count in zip(boxes, scores, counts.tolist()):
            # Slots come by score, so the threshold keeps a prefix.
            keep = int((image_scores[:count] >= score_thresh).sum())
            results.append(Detections(image_boxes[:keep], image_scores[:keep]))
        return results

    def raw_outputs(self, batch: Tensor) -> SRNOutputs:
        return onnx_outputs_to_torch(self.run(batch), self.metadata)
