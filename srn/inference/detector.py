"""The Python API: ``Detector(weights=..., device=...).detect(images)``.

One class for every kind of weights: an srn checkpoint or the release's ``SRN.pth`` runs in PyTorch
(:class:`srn.inference.backends.TorchBackend`), an ``.onnx`` file from ``srn export onnx`` in
onnxruntime (:class:`srn.inference.backends.OnnxBackend`). The backend is chosen by the file type;
everything around it (reading, fitting between ``min_size`` and ``max_size``, padding, batching,
mapping boxes back) is here.

Without weights, the model shipped with the package runs: on the CPU its int8 copy
(``srn/assets/srn_mobilenet_v2.int8.onnx``, :data:`DEFAULT_CPU_WEIGHTS`) through onnxruntime, which is
about twice as fast as the fp32 network (``benchmarks/RESULTS.md``); on a GPU the PyTorch checkpoint
(:data:`DEFAULT_WEIGHTS`).

**A photo's answer does not depend on what runs beside it.** Each fitted image is padded bottom/right
with the mean colour to its own *canonical size*, its sides rounded up to a multiple of 32, the
backbone's output stride (:meth:`Detector.padded_size`), and a forward pass only ever holds images that share
that size. Padding a photo to the size of a larger neighbour would change the features near its right
and bottom edges, so its boxes would move with its batch. On the CPU every image also runs alone
(one image per forward pass is no slower there and does the same arithmetic whatever the batch), so the
records are bitwise the same whatever the batch size, the neighbours, the order, the decoding
workers or the number of ``torchrun`` processes; on a GPU, batches of one canonical size agree with
single images to float rounding.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Union, overload

import numpy as np
import torch
from torch import Tensor

from srn.config import DetectorConfig, check_image_size
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

CHANNEL_ORDERS = ("rgb", "bgr")  # of numpy arrays and tensors given to detect

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "assets" / "srn_mobilenet_v2.pt"
# The same model, quantised to int8 by tools/export_default_int8.py: the default on the CPU.
DEFAULT_CPU_WEIGHTS = DEFAULT_WEIGHTS.with_name("srn_mobilenet_v2.int8.onnx")
# Canonical sizes are multiples of the backbone's output stride, so that the backbone's maps (and
# the FPN levels built on them) are exact fractions of the input. Rounding up to the coarsest level
# stride (128) instead pads 29% more pixels on the held-out photos and is 15% slower, at the same AP
# within 0.002 (benchmarks/RESULTS.md, "Padding rule").
SIZE_DIVISOR = 32

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZoomPass:
    """A second, upscaled pass for the faces too small for the first: a test-time scale policy.

    Each image is also run with its longer side upscaled to ``size`` pixels (never past the
    detector's ``max_size``; an image that the first pass already ran at that scale or larger gets no
    second pass). Of the faces that pass finds, those whose shorter side is under ``max_face``
    original pixels join the first pass's (:meth:`merge`):

    - a face that the first pass finds at 32 px or more keeps the first pass's box, with the higher
      of the two scores: it is never lost or moved, so no face of that size is missed that one pass
      finds (upscaled past the largest anchors, large faces are found badly);
    - smaller faces are merged by NMS at the detector's IoU (upscaled, they are found and placed
      better: on the project's held-out crowd photos, AP of faces under 16 px 0.161 -> 0.349 at
      ``ZoomPass(1536, 128)``; ``benchmarks/RESULTS.md``);
    - a small box lying mostly inside a first-pass face at least twice ``max_face`` is a part of it
      (an eye, a nose) and is dropped.

    Args:
        size: the longer side, in pixels, of the upscaled pass.
        max_face: faces from the upscaled pass are kept under this size (shorter side, original pixels).
        when: run the upscaled pass only on images where the first pass found a face under
            ``max_face`` scoring at least this (None: on every image). The first pass's own score
            threshold applies first, so a ``when`` under it means "any small face the first pass kept".
    """

    size: int = 1536
    max_face: float = 32.0
    when: float | None = None

    # Faces whose first-pass box is at least this large (shorter side, pixels) are seen well at the
    # native scale: their box is the first pass's (:meth:`merge`).
    SEEN_AT_NATIVE_SCALE: ClassVar[float] = 32.0

    def __post_init__(self) -> None:
        check_image_size("the zoom pass's size", self.size, self.size)
        if not self.size >= 32:
            raise ConfigError(f"the zoom pass's size must be at least 32, got {self.size}")
        if not 0.0 < self.max_face <= self.size:
            raise ConfigError(f"the zoom pass's largest face must be in (0, {self.size}], got {self.max_face}")
        if self.when is not None and not 0.0 <= self.when <= 1.0:
            raise ConfigError(f"the zoom pass's score to run must be in [0, 1], got {self.when}")

    def runs_on(self, first: Detections) -> bool:
        """Whether the first pass's detections (original pixels) call for the upscaled pass."""
        if self.when is None:
            return True
        return bool(((_shorter_sides(first.boxes) < self.max_face) & (first.scores >= self.when)).any())

    def merge(self, first: Detections, second: Detections, nms_iou: float, max_detections: int) -> Detections:
        """The first pass's detections with the upscaled pass's small faces (both in original pixels),
        by the rules above; at most ``max_detections``, by score descending."""
        from torchvision.ops import box_iou, nms

        boxes, scores = second
        small = _shorter_sides(boxes) < self.max_face
        boxes, scores = boxes[small], scores[small]
        large = first.boxes[_shorter_sides(first.boxes) >= 2 * self.max_face]
        if len(boxes) and len(large):
            # The share of each small box inside each large first-pass face.
            top_left = torch.maximum(boxes[:, None, :2], large[None, :, :2])
            bottom_right = torch.minimum(boxes[:, None, 2:], large[None, :, 2:])
            inter = (bottom_right - top_left).clamp(min=0).prod(-1)
            area = (boxes[:, 2:] - boxes[:, :2]).prod(-1)
            inside = (inter / area.clamp(min=1e-6)[:, None]).amax(1) > 0.5
            boxes, scores = boxes[~inside], scores[~inside]
        if not len(boxes):
            return first
        boxes, scores = boxes.to(first.boxes.dtype), scores.to(first.scores.dtype)
        first_scores = first.scores
        seen = _shorter_sides(first.boxes) >= self.SEEN_AT_NATIVE_SCALE
        if bool(seen.any()):
            # A face that the first pass sees at a good size keeps the first pass's box, with the
            # higher of the two scores; smaller faces are settled by NMS below.
            best, owner = box_iou(boxes, first.boxes[seen]).max(1)
            again = best >= nms_iou
            owner = seen.nonzero()[:, 0][owner[again]]
            first_scores = first_scores.clone().scatter_reduce_(0, owner, scores[again], reduce="amax")
            boxes, scores = boxes[~again], scores[~again]
        boxes = torch.cat([first.boxes, boxes])
        scores = torch.cat([first_scores, scores])
        keep = nms(boxes, scores, nms_iou)[:max_detections]  # by score descending
        return Detections(boxes[keep], scores[keep])


def _shorter_sides(boxes: Tensor) -> Tensor:
    """Tensor[N]: the shorter side of each (x1, y1, x2, y2) box."""
    return (boxes[:, 2:] - boxes[:, :2]).amin(1)


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
            the package (on the CPU its int8 ONNX copy, on a GPU the PyTorch checkpoint; without
            onnxruntime the checkpoint everywhere, with a one-line notice).
        device: "cpu", "cuda", "cuda:1", a GPU number ... (default: CUDA when available).
        score_thresh: detections below this score are dropped (after NMS). Default 0.3, the best
            F1 of the shipped model's calibrated scores on held-out photos (docs/model_card.md);
            0 keeps every candidate, for evaluation.
        nms_iou: IoU of the final NMS (the release's 0.4).
        max_size: images whose longer side exceeds this are downscaled before the network runs;
            boxes are mapped back to original pixels.
        min_size: images whose longer side is shorter than this are upscaled so that it is
            ``min_size`` (test-time scale: small faces in small photos get bigger; never past
            ``max_size``); None leaves them as they are. Boxes are mapped back to original pixels.
        zoom_pass: a :class:`ZoomPass`, a second upscaled pass whose small faces join the first
            pass's (more small faces found, at the cost of the second pass's time); None: one pass.
        batch_size: images per forward pass on a GPU (images of one canonical size only). On the
            CPU every image runs alone, which is no slower there.
        model, config: an already built network and its config, instead of ``weights``.
        precision: "fp32", or "bf16" to run an inference copy of the network (BatchNorm folded,
            bf16 weights, channels_last); boxes are still decoded in fp32. PyTorch only.
        cuda_graphs: on CUDA, capture the network and a fixed-shape post-processing as CUDA graphs
            once per input shape and replay them (see :mod:`srn.inference.runner`); worth it for repeated
            shapes: video, a camera, fixed-size batches. PyTorch only.
        threads: onnxruntime's threads within an op (PyTorch's are ``torch.set_num_threads``).
        backend: an already built backend, instead of ``weights``/``model``.
        exact_int8: an ONNX file's :class:`srn.inference.backends.OnnxBackend` option: None (the default)
            re-encodes an int8 file's weights for exact sums where this CPU's int8 kernel clips (x86
            without VNNI), False runs it as stored, True always re-encodes.
    """

    def __init__(
        self,
        weights: str | Path | None = None,
        device: str | int | torch.device | None = None,
        score_thresh: float = 0.3,
        nms_iou: float | None = None,
        max_size: int = 2100,
        batch_size: int = 8,
        model: SRN | None = None,
        config: DetectorConfig | None = None,
        precision: str = "fp32",
        cuda_graphs: bool = False,
        threads: int | None = None,
        backend: Backend | None = None,
        min_size: int | None = None,
        zoom_pass: ZoomPass | None = None,
        exact_int8: bool | None = None,
    ) -> None:
        if not 0.0 <= score_thresh <= 1.0:
            raise ConfigError(f"the score threshold must be in [0, 1], got {score_thresh}")
        if nms_iou is not None and not 0.0 < nms_iou <= 1.0:
            raise ConfigError(f"the NMS IoU must be in (0, 1], got {nms_iou}")
        if max_size < 32:
            raise ConfigError(f"the maximum image size must be at least 32, got {max_size}")
        check_image_size("the maximum image size", max_size, max_size)
        if min_size is not None and not 32 <= min_size <= max_size:
            raise ConfigError(f"the minimum image size must be in [32, {max_size}] (the maximum size), got {min_size}")
        if batch_size < 1:
            raise ConfigError(f"the batch size must be at least 1, got {batch_size}")
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.device = resolve_device(device)
        self._score_thresh = score_thresh  # the backend builds its runner for it once
        if backend is None:
            backend = self._open(weights, model, config, nms_iou, precision, cuda_graphs, threads, exact_int8)
        self.backend = backend
        self.score_thresh = score_thresh
        self.max_size, self.min_size = max_size, min_size
        self.zoom_pass = zoom_pass
        self.batch_size = batch_size
        self.precision, self.cuda_graphs = precision, cuda_graphs

    def _open(self, weights, model, config, nms_iou, precision, cuda_graphs, threads, exact_int8) -> Backend:
        if model is None and runs_shipped_int8(weights, self.device.type, precision, cuda_graphs):
            weights = default_cpu_weights()  # None: the checkpoint, below
        if model is None and weights is not None and Path(weights).suffix.lower() == ".onnx":
            if precision != "fp32" or cuda_graphs:
                raise ConfigError(f"{weights}: an ONNX model runs as exported, in fp32 and without CUDA graphs")
            return OnnxBackend(weights, self.device, nms_iou=nms_iou, threads=threads, exact_int8=exact_int8)
        if model is None:
            if weights is None:
                weights = DEFAULT_WEIGHTS
                if not weights.is_file():
                    raise WeightsError(f"{weights}: no default model is installed; pass the path of a weights file")
            model, config = load_model(weights, self.device)
        config = config or DetectorConfig()
        if nms_iou is not None:
            config = replace(config, postprocess=replace(config.postprocess, nms_iou=nms_iou))
        return TorchBackend(model, config, self.device, precision, cuda_graphs, score_thresh=self._score_thresh)

    @property
    def config(self) -> DetectorConfig:
        return self.backend.config

    @property
    def model(self) -> SRN | None:
        """The PyTorch network (None when onnxruntime runs it)."""
        return getattr(self.backend, "model", None)

    @property
    def size_divisor(self) -> int:
        """Every padded input is a multiple of this many pixels (:data:`SIZE_DIVISOR`)."""
        return SIZE_DIVISOR

    # -- inputs --------------------------------------------------------------------------------
    @staticmethod
    def load(image: ImageInput, channels: str = "rgb") -> tuple[Tensor, str | None]:
        """Any supported input as (uint8 RGB Tensor[3, H, W], source path or None); ``channels``
        is the order of an array's or tensor's channels ("rgb", or "bgr" as OpenCV gives them)."""
        if channels not in CHANNEL_ORDERS:
            raise ConfigError(f"channels must be one of {', '.join(CHANNEL_ORDERS)}, got {channels!r}")
        if isinstance(image, str | Path):
            return read_image(image), str(image)
        rgb = to_rgb_tensor(image)
        if channels == "bgr" and isinstance(image, np.ndarray | Tensor):
            rgb = rgb.flip(0)  # (B, G, R) -> (R, G, B); files and PIL images know their own order
        return rgb, None

    def fitted_scale(self, height: int, width: int) -> float:
        """The factor by which an image of this size is resized before the network: down under
        ``max_size``, up to ``min_size``, else 1."""
        longer = max(height, width)
        if self.min_size is not None and longer < self.min_size:
            return self.min_size / longer  # min_size <= max_size
        return min(1.0, self.max_size / longer)

    def _fit(self, image: Tensor, scale: float | None = None) -> tuple[Tensor, float]:
        """Float [0, 1] image on the device, resized by ``scale`` (default :meth:`fitted_scale`);
        and the scale used."""
        height, width = image.shape[-2:]
        if scale is None:
            scale = self.fitted_scale(int(height), int(width))
        if scale != 1.0:
            from torchvision.transforms.v2.functional import resize

            size = [max(1, round(height * scale)), max(1, round(width * scale))]
            # Resize the uint8 image on the CPU before it ever becomes float: a 20000x20000 photo
            # would take 4.8 GB as float32.
            image = resize(image, size, antialias=True)
            scale = size[1] / width
        return image.to(self.backend.device, non_blocking=True).float().div_(255.0), scale

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The canonical size of a fitted image: each side rounded up to a multiple of :attr:`size_divisor`."""
        divisor = self.size_divisor
        return -(-height // divisor) * divisor, -(-width // divisor) * divisor

    def _batch(self, images: Sequence[Tensor], size: tuple[int, int] | None = None) -> Tensor:
        """Pad images bottom/right with the mean colour (0 after normalisation) to ``size``
        (default: the largest canonical size among them) and stack them."""
        if size is None:
            sizes = [self.padded_size(*im.shape[-2:]) for im in images]
            size = (max(h for h, _ in sizes), max(w for _, w in sizes))
        height, width = size
        if all(im.shape[-2:] == (height, width) for im in images):
            return torch.stack(list(images))
        pad = self.backend.pad_value().to(images[0].device, images[0].dtype)
        batch = pad.expand(len(images), 3, height, width).clone()
        for slot, im in zip(batch, images):
            slot[:, : im.shape[-2], : im.shape[-1]] = im
        return batch

    def _forward_batch_size(self) -> int:
        # On the CPU one image per forward pass is no slower (PyTorch 1.5x faster, onnxruntime the
        # same, for 8 images at 512x384 on one thread: benchmarks/bench_cpu_batch.py) and is the
        # same arithmetic whatever the batch.
        return 1 if self.backend.device.type == "cpu" else self.batch_size

    # -- running -------------------------------------------------------------------------------
    @torch.inference_mode()
    def raw_outputs(self, images: ImageInput | Sequence[ImageInput]) -> SRNOutputs:
        """The network's raw outputs for a batch (step-1 and step-2 logits and deltas per level,
        and the anchors); images are fitted as :meth:`detect` fits them and padded to the largest
        canonical size among them (one image: its own canonical size, as :meth:`detect` runs it)."""
        items = images if isinstance(images, list | tuple) else [images]
        fitted = [self._fit(self.load(im)[0])[0] for im in items]
        return self.backend.raw_outputs(self._batch(fitted))

    @torch.inference_mode()
    def detect_tensors(self, images: Sequence[Tensor]) -> list[Detections]:
        """Single-pass detection on float [0, 1] images already on the device, without resizing.

        This is the building block for test-time augmentation. Each image is padded to its
        canonical size (:meth:`padded_size`) and runs only with images of that size, so its
        detections do not depend on the others. Returns one :class:`srn.postprocess.Detections`
        (it unpacks as ``boxes, scores``) per image, in order, in the image's pixels (boxes may
        reach past its border).
        """
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, image in enumerate(images):
            groups[self.padded_size(*image.shape[-2:])].append(index)
        results: list[Detections | None] = [None] * len(images)
        step = self._forward_batch_size()
        for size, members in groups.items():
            for start in range(0, len(members), step):
                idxs = members[start : start + step]
                batch = self._batch([images[i] for i in idxs], size)
                for i, found in zip(idxs, self.backend.detections(batch, self.score_thresh)):
                    results[i] = found
        return results  # type: ignore[return-value]

    @overload
    def detect(self, images: list[ImageInput] | tuple[ImageInput, ...], channels: str = "rgb",
               sources: Sequence[str | None] | None = None,
               frames: Sequence[tuple[int, float] | None] | None = None) -> list[Faces]: ...
    @overload
    def detect(self, images: ImageInput, channels: str = "rgb", sources: Sequence[str | None] | None = None,
               frames: Sequence[tuple[int, float] | None] | None = None) -> Faces: ...
    @torch.inference_mode()
    def detect(self, images: ImageInput | Sequence[ImageInput], channels: str = "rgb",
               sources: Sequence[str | None] | None = None,
               frames: Sequence[tuple[int, float] | None] | None = None) -> Faces | list[Faces]:
        """Detect faces.

        Args:
            images: a path, an RGB numpy array (H, W, 3), a PIL image or a Tensor[3, H, W]
                (uint8, or float in [0, 1]); or a list (tuple) of them, of mixed sizes if need be.
            channels: the channel order of numpy arrays and tensors: "rgb", or "bgr" for what
                ``cv2.imread`` gives. Files and PIL images are always read right.
            sources: the name of each image, for its :attr:`Faces.source` (default: the path of an
                image given as one, else None).
            frames: for frames of a video, each one's ``(number, time in seconds)``, for
                :attr:`Faces.frame` and :attr:`Faces.time` (and :meth:`Faces.record`).

        Returns:
            :class:`Faces` for a single image; a list of them, in order, for a list (tuple), even
            of one image. Boxes are in the original image's pixels, clipped to it; a box that the
            clipping leaves without width or height (it lay in the padding) is dropped. Each keeps
            the decoded uint8 image for ``plot``/``crops`` (see :mod:`srn.inference.results` for
            the memory this costs; :meth:`stream` bounds it).
        """
        single = not isinstance(images, list | tuple)
        items = [images] if single else list(images)
        loaded = [self.load(im, channels) for im in items]
        for given, what in ((sources, "sources"), (frames, "frames")):
            if given is not None and len(given) != len(items):
                raise ConfigError(f"detect: {len(items)} images but {len(given)} {what}")
        if sources is not None:
            loaded = [(image, source) for (image, _), source in zip(loaded, sources)]
        results: list[Faces | None] = [None] * len(loaded)
        # Fit and run a GPU batch's worth at a time, so that memory holds one batch of float images.
        for start in range(0, len(loaded), self.batch_size):
            idxs = range(start, min(start + self.batch_size, len(loaded)))
            fitted = [self._fit(loaded[i][0]) for i in idxs]
            detections = self.detect_tensors([im for im, _ in fitted])
            found = [to_original_pixels(d, scale, *loaded[i][0].shape[-2:]) for i, (_, scale), d in zip(idxs, fitted, detections)]
            if self.zoom_pass is not None:
                found = self._with_zoom_pass([loaded[i][0] for i in idxs], [scale for _, scale in fitted], found)
            for i, faces in zip(idxs, found):
                image, source = loaded[i]
                frame, time = (frames[i] or (None, None)) if frames is not None else (None, None)
                results[i] = Faces.from_detections(faces, int(image.shape[-1]), int(image.shape[-2]), source, image=image,
                                                   frame=frame, time=time)
        return results[0] if single else results  # type: ignore[return-value]

    __call__ = detect  # ``detector(images)``: a detector is used like a function

    def _with_zoom_pass(self, images: Sequence[Tensor], first_scales: Sequence[float], first: list[Detections]) -> list[Detections]:
        """:attr:`zoom_pass` run on the images that call for it; ``first``: the first pass's detections
        in original pixels, ``first_scales``: the scale it ran each image at."""
        zoom = self.zoom_pass
        assert zoom is not None
        todo, scales = [], []
        for index, (image, first_scale, found) in enumerate(zip(images, first_scales, first)):
            height, width = (int(side) for side in image.shape[-2:])
            scale = min(zoom.size, self.max_size) / max(height, width)
            if scale > first_scale and zoom.runs_on(found):
                todo.append(index)
                scales.append(scale)
        if not todo:
            return first
        post = self.config.postprocess
        merged = list(first)
        # One image at a time: an upscaled float image is large.
        for index, scale in zip(todo, scales):
            image = images[index]
            upscaled, used = self._fit(image, scale)
            (second,) = self.detect_tensors([upscaled])
            second = to_original_pixels(second, used, *image.shape[-2:])
            merged[index] = zoom.merge(first[index], second, post.nms_iou, post.max_detections)
        return merged

    def stream(self, images: Iterable[ImageInput], batch_size: int | None = None, channels: str = "rgb") -> Iterator[Faces]:
        """Detect faces in a long (or endless) sequence of images, one :class:`Faces` per input, in order.

        Inputs are read and run ``batch_size`` at a time (default: the detector's), so memory holds
        one batch whatever the sequence's length; a generator of paths or of video frames works.
        An unreadable file raises :class:`srn.errors.ImageReadError` naming it, which ends the stream.
        Each result is the one :meth:`detect` gives for that input alone.

        Args:
            images: an iterable of anything :meth:`detect` takes; a single path, array or image
                counts as a sequence of one.
            batch_size: inputs per forward pass.
            channels: the channel order of arrays and tensors, as :meth:`detect` takes it.
        """
        size = self.batch_size if batch_size is None else batch_size
        if size < 1:
            raise ConfigError(f"the batch size must be at least 1, got {size}")
        from srn.inference.loop import Item, detected

        single = isinstance(images, str | Path) or not isinstance(images, Iterable)  # a path, a PIL image
        if single or (isinstance(images, np.ndarray | Tensor) and images.ndim <= 3):
            images = [images]
        loader = self

        class Inputs:
            """Anything :meth:`detect` takes, read a batch at a time as the run loop asks."""

            unit, total = "img", None

            def batches(self, batch_size: int, stop: Any = None) -> Iterator[list[Item]]:
                iterator, start = iter(images), 0
                while batch := list(itertools.islice(iterator, batch_size)):
                    loaded = [loader.load(image, channels) for image in batch]  # an unreadable file ends the stream
                    yield [Item(start + i, source, image) for i, (image, source) in enumerate(loaded)]  # type: ignore[arg-type]
                    start += len(batch)

            def close(self) -> None:
                pass

        def infer(items: Sequence[Item]) -> list[Faces]:
            return self.detect([item.image for item in items], sources=[item.source for item in items])

        for batch in detected(Inputs(), size, infer):
            yield from (faces for _, faces in batch)  # type: ignore[misc]


def to_original_pixels(detections: Detections, scale: float, height: int, width: int) -> Detections:
    """Detections on a fitted image as boxes in the original ``height`` x ``width`` image: divided by
    the fitting ``scale``, clipped to the image, and without the boxes that clipping leaves with no
    width or height (they lay in the padding below or right of the image)."""
    boxes = detections.boxes / scale
    # Anchors reach past the border, and so do boxes decoded from them.
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, int(width))
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, int(height))
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if bool(keep.all()):
        return Detections(boxes, detections.scores)
    return Detections(boxes[keep], detections.scores[keep])


def runs_shipped_int8(weights: str | Path | None, device_type: str, precision: str = "fp32", cuda_graphs: bool = False) -> bool:
    """Whether a :class:`Detector` with these settings runs the shipped model's int8 ONNX copy (when
    it is installed and onnxruntime can run it): no weights given, on the CPU, in fp32, without CUDA
    graphs. ``srn bench`` times by the same rule what ``srn detect`` runs."""
    return weights is None and device_type == "cpu" and precision == "fp32" and not cuda_graphs


def shipped_int8() -> tuple[Path | None, str | None]:
    """The shipped model's int8 ONNX copy and None when onnxruntime can run it; else None and why
    not, in words (the PyTorch checkpoint runs instead)."""
    if not DEFAULT_CPU_WEIGHTS.is_file():
        return None, f"{DEFAULT_CPU_WEIGHTS.name} is not installed"
    try:
        if importlib.util.find_spec("onnxruntime") is None:
            raise ImportError("onnxruntime")
        import onnxruntime  # noqa: F401
    except ImportError:
        return None, "onnxruntime is not installed"
    return DEFAULT_CPU_WEIGHTS, None


def default_cpu_weights() -> Path | None:
    """The shipped model for the CPU: its int8 ONNX copy when onnxruntime can run it, else None (the
    PyTorch checkpoint), with a one-line notice on stderr."""
    path, why = shipped_int8()
    if why is not None and path is None and why.startswith("onnxruntime"):
        logger.warning("srn: %s; running the shipped model in PyTorch, about 2x slower on the CPU (pip install onnxruntime)", why)
    elif why is not None:
        logger.warning("srn: %s; running the shipped model in PyTorch (slower on the CPU)", why)
    return path
