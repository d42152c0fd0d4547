"""The Python API: ``Detector(weights=..., device=...).detect(images)``.

One class for every kind of weights: an srn checkpoint or the release's ``SRN.pth`` runs in PyTorch
(:class:`srn.inference.backends.TorchBackend`), an ``.onnx`` file from ``srn export onnx`` in
onnxruntime (:class:`srn.inference.backends.OnnxBackend`). The backend is chosen by the file type;
everything around it (reading, fitting under ``max_size``, batching, mapping boxes back) is here.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Union, overload

import numpy as np
import torch
from torch import Tensor

from srn.config import DetectorConfig
from srn.data.image_io import read_image, to_rgb_tensor
from srn.errors import ConfigError, DeviceError, WeightsError
from srn.inference.backends import Backend, OnnxBackend, TorchBackend
from srn.inference.results import Faces
from srn.inference.runner import PRECISIONS
from srn.model import SRN
from srn.model.outputs import SRNOutputs
from srn.postprocess import Detections
from srn.weights import load_model

ImageInput = Union[str, Path, np.ndarray, Tensor, Any]  # Any: a PIL image

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "assets" / "srn_mobilenet_v2.pt"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | int | torch.device | None) -> torch.device:
    """``None`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``0`` or ``"0"`` (= ``cuda:0``)
    as a device that exists on this machine."""
    if device is None:
        return default_device()
    if isinstance(device, int) or (isinstance(device, str) and device.strip().isdigit()):
        device = f"cuda:{int(device)}"
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise DeviceError(f"unknown device {device!r} (use cpu, cuda, cuda:N or a GPU number)") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r}: no CUDA GPU is available on this machine")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif resolved.type != "cpu":
        raise DeviceError(f"device {device!r}: only cpu and cuda devices are supported")
    return resolved


class Detector:
    """Face detection with SRN.

    Args:
        weights: an srn checkpoint, the release's ``SRN.pth`` (converted on the fly), an ``.onnx``
            file from ``srn export onnx`` (run by onnxruntime), or None for the model shipped with
            the package.
        device: "cpu", "cuda", "cuda:1", a GPU number ... (default: CUDA when available).
        score_thresh: detections below this score are dropped (after NMS). 0.05 with
            ``min_score=0`` reproduces the release's output for evaluation.
        nms_iou: IoU of the final NMS (the release's 0.4).
        max_size: images whose longer side exceeds this are downscaled before the network runs;
            boxes are mapped back to original pixels.
        batch_size: images per forward pass when a list is given.
        model, config: an already built network and its config, instead of ``weights``.
        precision: "fp32", or "bf16" to run an inference copy of the network (BatchNorm folded,
            bf16 weights, channels_last); boxes are still decoded in fp32. PyTorch only.
        cuda_graphs: on CUDA, capture the network and a fixed-shape post-processing as CUDA graphs
            once per input shape and replay them (see :mod:`srn.inference.runner`); worth it for repeated
            shapes: video, a camera, fixed-size batches. PyTorch only.
        threads: onnxruntime's threads within an op (PyTorch's are ``torch.set_num_threads``).
        backend: an already built backend, instead of ``weights``/``model``.
    """

    def __init__(
        self,
        weights: str | Path | None = None,
        device: str | int | torch.device | None = None,
        score_thresh: float = 0.5,
        nms_iou: float | None = None,
        max_size: int = 2100,
        batch_size: int = 8,
        model: SRN | None = None,
        config: DetectorConfig | None = None,
        precision: str = "fp32",
        cuda_graphs: bool = False,
        threads: int | None = None,
        backend: Backend | None = None,
    ) -> None:
        if not 0.0 <= score_thresh <= 1.0:
            raise ConfigError(f"the score threshold must be in [0, 1], got {score_thresh}")
        if nms_iou is not None and not 0.0 < nms_iou <= 1.0:
            raise ConfigError(f"the NMS IoU must be in (0, 1], got {nms_iou}")
        if max_size < 32:
            raise ConfigError(f"the maximum image size must be at least 32, got {max_size}")
        if batch_size < 1:
            raise ConfigError(f"the batch size must be at least 1, got {batch_size}")
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.device = resolve_device(device)
        if backend is None:
            backend = self._open(weights, model, config, nms_iou, precision, cuda_graphs, threads)
        self.backend = backend
        self.score_thresh = score_thresh
        self.max_size = max_size
        self.batch_size = batch_size
        self.precision, self.cuda_graphs = precision, cuda_graphs

    def _open(self, weights, model, config, nms_iou, precision, cuda_graphs, threads) -> Backend:
        if model is None and weights is not None and Path(weights).suffix.lower() == ".onnx":
            if precision != "fp32" or cuda_graphs:
                raise ConfigError(f"{weights}: an ONNX model runs as exported, in fp32 and without CUDA graphs")
            return OnnxBackend(weights, self.device, nms_iou=nms_iou, threads=threads)
        if model is None:
            if weights is None:
                weights = DEFAULT_WEIGHTS
                if not weights.is_file():
                    raise WeightsError(f"{weights}: no default model is installed; pass the path of a weights file")
            model, config = load_model(weights, self.device)
        config = config or DetectorConfig()
        if nms_iou is not None:
            config = replace(config, postprocess=replace(config.postprocess, nms_iou=nms_iou))
        return TorchBackend(model, config, self.device, precision, cuda_graphs)

    @property
    def config(self) -> DetectorConfig:
        return self.backend.config

    @property
    def model(self) -> SRN | None:
        """The PyTorch network (None when onnxruntime runs it)."""
        return getattr(self.backend, "model", None)

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
        return image.to(self.backend.device, non_blocking=True).float().div_(255.0), scale

    def _batch(self, images: Sequence[Tensor]) -> Tensor:
        """Pad images bottom/right to one size with the mean colour (0 after normalisation)."""
        height = max(im.shape[-2] for im in images)
        width = max(im.shape[-1] for im in images)
        if all(im.shape[-2:] == (height, width) for im in images):
            return torch.stack(list(images))
        pad = self.backend.pad_value().to(images[0].device, images[0].dtype)
        batch = pad.expand(len(images), 3, height, width).clone()
        for slot, im in zip(batch, images):
            slot[:, : im.shape[-2], : im.shape[-1]] = im
        return batch

    # -- running -------------------------------------------------------------------------------
    @torch.inference_mode()
    def raw_outputs(self, images: ImageInput | Sequence[ImageInput]) -> SRNOutputs:
        """The network's raw outputs for a batch (step-1 and step-2 logits and deltas per level,
        and the anchors); images are fitted under ``max_size`` and padded as :meth:`detect` does."""
        items = images if isinstance(images, list | tuple) else [images]
        fitted = [self._fit(self.load(im)[0])[0] for im in items]
        return self.backend.raw_outputs(self._batch(fitted))

    @torch.inference_mode()
    def detect_tensors(self, images: Sequence[Tensor]) -> list[Detections]:
        """Single-pass detection on float [0, 1] images already on the device, without resizing.

        This is the building block for test-time augmentation. Returns one
        :class:`srn.postprocess.Detections` (it unpacks as ``boxes, scores``) per image.
        """
        results = []
        for start in range(0, len(images), self.batch_size):
            results.extend(self.backend.detections(self._batch(images[start : start + self.batch_size]), self.score_thresh))
        return results

    @overload
    def detect(self, images: list[ImageInput] | tuple[ImageInput, ...]) -> list[Faces]: ...
    @overload
    def detect(self, images: ImageInput) -> Faces: ...
    @torch.inference_mode()
    def detect(self, images: ImageInput | Sequence[ImageInput]) -> Faces | list[Faces]:
        """Detect faces.

        Args:
            images: a path, an RGB numpy array (H, W, 3), a PIL image or a Tensor[3, H, W]
                (uint8, or float in [0, 1]); or a list (tuple) of them, of mixed sizes if need be.

        Returns:
            :class:`Faces` for a single image; a list of them, in order, for a list (tuple), even
            of one image. Each keeps the decoded uint8 image for ``plot``/``crops`` (see
            :mod:`srn.inference.results` for the memory this costs; :meth:`stream` bounds it).
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
            for i, (_, scale), found in zip(idxs, fitted, detections):
                height, width = loaded[i][0].shape[-2:]
                boxes = found.boxes / scale
                # Anchors reach past the border, and so do boxes decoded from them.
                boxes[:, 0::2] = boxes[:, 0::2].clamp(0, int(width))
                boxes[:, 1::2] = boxes[:, 1::2].clamp(0, int(height))
                found = found._replace(boxes=boxes)  # in the original image's pixels
                results[i] = Faces.from_detections(found, int(width), int(height), loaded[i][1], image=loaded[i][0])
        return results[0] if single else results  # type: ignore[return-value]

    def stream(self, images: Iterable[ImageInput], batch_size: int | None = None) -> Iterator[Faces]:
        """Detect faces in a long (or endless) sequence of images, one :class:`Faces` per input, in order.

        Inputs are read and run ``batch_size`` at a time (default: the detector's), so memory holds
        one batch whatever the sequence's length; a generator of paths or of video frames works.
        An unreadable file raises :class:`srn.errors.ImageReadError` naming it, which ends the stream.

        Args:
            images: an iterable of anything :meth:`detect` takes; a single path, array or image
                counts as a sequence of one.
            batch_size: inputs per forward pass.
        """
        size = self.batch_size if batch_size is None else batch_size
        if size < 1:
            raise ConfigError(f"the batch size must be at least 1, got {size}")
        single = isinstance(images, str | Path) or not isinstance(images, Iterable)  # a path, a PIL image
        if single or (isinstance(images, np.ndarray | Tensor) and images.ndim <= 3):
            images = [images]
        iterator = iter(images)
        while batch := list(itertools.islice(iterator, size)):
            yield from self.detect(batch)
