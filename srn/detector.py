"""The Python API: ``Detector(weights=..., device=...).detect(images)``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

from srn.config import DetectorConfig
from srn.data.image_io import read_image, to_rgb_tensor
from srn.model import SRN
from srn.runner import Runner
from srn.weights import WeightsError, load_model

ImageInput = Union[str, Path, np.ndarray, Tensor, Any]  # Any: a PIL image

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "assets" / "srn_mobilenet_v2.pt"


@dataclass
class Faces:
    """Detections of one image, in the original image's pixel coordinates.

    Attributes:
        boxes (Tensor[D, 4]): x1, y1, x2, y2.
        scores (Tensor[D]): by descending score.
        width, height: the original image size.
        source: the image's path when it was given as one.
    """

    boxes: Tensor
    scores: Tensor
    width: int
    height: int
    source: str | None = None

    def __len__(self) -> int:
        return int(self.scores.numel())

    def to_records(self, decimals: int = 2) -> list[dict[str, Any]]:
        boxes = self.boxes.detach().cpu().double().numpy().round(decimals)
        scores = self.scores.detach().cpu().double().numpy().round(4)
        return [{"box": b.tolist(), "score": float(s)} for b, s in zip(boxes, scores)]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Detector:
    """Face detection with SRN.

    Args:
        weights: an srn checkpoint, the release's ``SRN.pth`` (converted on the fly) or None for
            the model shipped with the package.
        device: "cpu", "cuda", "cuda:1", ... (default: CUDA when available).
        score_thresh: detections below this score are dropped (after NMS). 0.05 with
            ``min_score=0`` reproduces the release's output for evaluation.
        nms_iou: IoU of the final NMS (the release's 0.4).
        max_size: images whose longer side exceeds this are downscaled before the network runs;
            boxes are mapped back to original pixels.
        batch_size: images per forward pass when a list is given.
        model, config: an already built network and its config, instead of ``weights``.
        precision: "fp32", or "bf16" to run an inference copy of the network (BatchNorm folded,
            bf16 weights, channels_last); boxes are still decoded in fp32.
        cuda_graphs: on CUDA, capture the network and a fixed-shape post-processing as CUDA graphs
            once per input shape and replay them (see :mod:`srn.runner`); worth it for repeated
            shapes: video, a camera, fixed-size batches.
    """

    def __init__(
        self,
        weights: str | Path | None = None,
        device: str | torch.device | None = None,
        score_thresh: float = 0.5,
        nms_iou: float | None = None,
        max_size: int = 2100,
        batch_size: int = 8,
        model: SRN | None = None,
        config: DetectorConfig | None = None,
        precision: str = "fp32",
        cuda_graphs: bool = False,
    ) -> None:
        self.device = torch.device(device) if device is not None else default_device()
        if model is None:
            if weights is None:
                weights = DEFAULT_WEIGHTS
                if not weights.is_file():
                    raise WeightsError(f"{weights}: no default model is installed; pass weights=PATH")
            model, config = load_model(weights, self.device)
        self.model = model.to(self.device).eval()
        self.config = config or DetectorConfig()
        if nms_iou is not None:
            self.config = replace(self.config, postprocess=replace(self.config.postprocess, nms_iou=nms_iou))
        if max_size < 32:
            raise ValueError(f"max_size must be at least 32, got {max_size}")
        self.score_thresh = score_thresh
        self.max_size = max_size
        self.batch_size = max(1, batch_size)
        self.precision, self.cuda_graphs = precision, cuda_graphs
        self._runner: Runner | None = None
        self._runner_key: tuple | None = None
        self.runner  # noqa: B018 - built now, so that bad settings fail here

    @property
    def runner(self) -> Runner:
        """The network and post-processing as :class:`srn.runner.Runner` runs them; rebuilt when
        ``score_thresh`` or the post-processing settings change."""
        key = (self.score_thresh, self.config.postprocess)
        if self._runner is None or self._runner_key != key:
            self._runner = Runner(self.model, self.config.postprocess, self.score_thresh, self.precision, self.cuda_graphs)
            self._runner_key = key
        return self._runner

    # -- inputs --------------------------------------------------------------------------------
    @staticmethod
    def load(image: ImageInput) -> tuple[Tensor, str | None]:
        """Any supported input as (uint8 RGB Tensor[3, H, W], source path or None)."""
        if isinstance(image, str | Path):
            return read_image(image), str(image)
        return to_rgb_tensor(image), None

    def _fit(self, image: Tensor) -> tuple[Tensor, float]:
        """Float [0, 1] image on the device, downscaled under ``max_size``; and the scale used."""
        height, width = image.shape[-2:]
        scale = min(1.0, self.max_size / max(height, width))
        if scale < 1.0:
            from torchvision.transforms.v2.functional import resize

            size = [max(1, round(height * scale)), max(1, round(width * scale))]
            # Resize the uint8 image on the CPU before it ever becomes float: a 20000x20000 photo
            # would take 4.8 GB as float32.
            image = resize(image, size, antialias=True)
            scale = size[1] / width
        return image.to(self.device, non_blocking=True).float().div_(255.0), scale

    def _batch(self, images: Sequence[Tensor]) -> Tensor:
        """Pad images bottom/right to one size with the mean colour (0 after normalisation)."""
        height = max(im.shape[-2] for im in images)
        width = max(im.shape[-1] for im in images)
        if all(im.shape[-2:] == (height, width) for im in images):
            return torch.stack(list(images))
        batch = self.model.pixel_mean.to(images[0].dtype).expand(len(images), 3, height, width).clone()
        for slot, im in zip(batch, images):
            slot[:, : im.shape[-2], : im.shape[-1]] = im
        return batch

    # -- running -------------------------------------------------------------------------------
    @torch.inference_mode()
    def raw_outputs(self, images: ImageInput | Sequence[ImageInput]) -> dict[str, list]:
        """The network's raw outputs for a batch (step-1 and step-2 logits and deltas per level,
        and the anchors); images are fitted under ``max_size`` and padded as :meth:`detect` does."""
        items = images if isinstance(images, list | tuple) else [images]
        fitted = [self._fit(self.load(im)[0])[0] for im in items]
        return self.model(self._batch(fitted))

    @torch.inference_mode()
    def detect_tensors(self, images: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """Single-pass detection on float [0, 1] images already on the device, without resizing.

        This is the building block for test-time augmentation. Returns (boxes, scores) per image.
        """
        results = []
        for start in range(0, len(images), self.batch_size):
            results.extend(self.runner(self._batch(images[start : start + self.batch_size])))
        return results

    @torch.inference_mode()
    def detect(self, images: ImageInput | Sequence[ImageInput]) -> Faces | list[Faces]:
        """Detect faces.

        Args:
            images: a path, an RGB numpy array (H, W, 3), a PIL image or a Tensor[3, H, W]
                (uint8, or float in [0, 1]); or a list of them, of mixed sizes if need be.

        Returns:
            :class:`Faces` for a single image, a list of them for a list.
        """
        single = not isinstance(images, list | tuple)
        items = [images] if single else list(images)
        loaded = [self.load(im) for im in items]
        # Batch images of similar size together so that padding stays small.
        order = sorted(range(len(loaded)), key=lambda i: tuple(loaded[i][0].shape[-2:]))
        results: list[Faces | None] = [None] * len(loaded)
        for start in range(0, len(order), self.batch_size):
            idxs = order[start : start + self.batch_size]
            fitted = [self._fit(loaded[i][0]) for i in idxs]
            detections = self.detect_tensors([im for im, _ in fitted])
            for i, (_, scale), (boxes, scores) in zip(idxs, fitted, detections):
                height, width = loaded[i][0].shape[-2:]
                results[i] = Faces(boxes / scale, scores, int(width), int(height), loaded[i][1])
        return results[0] if single else results  # type: ignore[return-value]


def open_detector(
    weights: str | Path | None = None,
    device: str | torch.device | None = None,
    threads: int | None = None,
    **options: Any,
) -> Detector:
    """A detector for ``weights`` of any kind: an srn checkpoint or the release's ``SRN.pth`` (run by
    PyTorch, :class:`Detector`), or an ``.onnx`` file written by ``srn export onnx`` (run by
    onnxruntime, :class:`srn.export.OnnxDetector`, on its CPU provider, or its CUDA provider when
    ``device`` is a CUDA device).

    Args:
        threads: onnxruntime's threads within an op (PyTorch's are ``torch.set_num_threads``).
        options: :class:`Detector`'s keyword arguments.
    """
    if weights is None or Path(weights).suffix.lower() != ".onnx":
        return Detector(weights, device, **options)
    from srn.export import OnnxDetector

    if options.pop("precision", "fp32") != "fp32" or options.pop("cuda_graphs", False):
        raise ValueError(f"{weights}: an ONNX model runs as exported, in fp32 and without CUDA graphs")
    import onnxruntime

    provider = "CUDAExecutionProvider" if device is not None and torch.device(device).type == "cuda" else "CPUExecutionProvider"
    if provider not in onnxruntime.get_available_providers():
        raise ValueError(f"{weights}: this onnxruntime has no {provider} (install onnxruntime-gpu, or use --device cpu)")
    session_options = onnxruntime.SessionOptions()
    if threads:
        session_options.intra_op_num_threads = threads
    return OnnxDetector(weights, providers=[provider], session_options=session_options, **options)
