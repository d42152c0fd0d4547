"""SRN training augmentation (docs/design.md, Training recipe) on torchvision ``transforms.v2``.

A sample is ``(image, target)``: ``image`` a ``uint8`` tensor ``(3, H, W)``, ``target`` a
:class:`~srn.data.target.Target` with ``boxes`` (Tensor[N, 4], ``float32`` ``x1 y1 x2 y2`` pixels),
``ignore`` (Tensor[N], ``bool``) and any other keys (``image_id``...), which are passed through.
Outputs keep that form; images stay ``uint8`` (the model normalises).

The training pipeline, in the SSD / S3FD order of docs/design.md, Training recipe:

1. photometric distortion (``v2.RandomPhotometricDistort``), on the small original image;
2. zoom-out (``v2.RandomZoomOut``) by a factor in [1, 4], filled with the ImageNet mean colour;
3. :class:`RandomSquareCrop`: one of two square patches, side = the shorter image side, or that
   times U[0.3, 1]; boxes whose centre falls outside are removed, the others clipped;
4. horizontal flip (``x1' = W - x2``, ``x2' = W - x1``: continuous coordinates);
5. resize to ``size x size`` (aspect not kept, as in SSD);
6. :class:`MarkSmallFacesIgnored`: faces whose **shorter side** is under ``min_face_size`` pixels
   after resizing stay, but are marked ignored.

**How ``ignore`` travels.** Inside the pipeline the image is a ``tv_tensors.Image`` and the boxes a
``tv_tensors.BoundingBoxes``; ``ignore`` stays a plain tensor, which v2 transforms pass through
untouched when an explicit Image is present. Only the crop removes boxes, and it does so the v2 way
(like ``v2.RandomIoUCrop``): it turns removed boxes into all-zero, degenerate boxes, and the
``v2.SanitizeBoundingBoxes`` right after it drops those boxes **and** the same rows of ``ignore``
(and of ``labels``, if present) through its ``labels_getter`` (:func:`per_box_tensors`). Sanitize's
smallest allowed ``min_size`` is 1 px, so a face narrower than 1 px at that point (before the
resize) is dropped as well; it could never be learnt.

Every random draw uses torch's global generator, so ``torch.manual_seed`` (and DataLoader's
per-worker seeding) makes augmentation reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from srn.data.image_io import to_rgb_tensor
from srn.data.target import Target

__all__ = [
    "DEFAULT_MIN_FACE_SIZE",
    "IMAGENET_MEAN_UINT8",
    "PER_BOX_KEYS",
    "MarkSmallFacesIgnored",
    "RandomSquareCrop",
    "ToPlainTensors",
    "ToTVTensors",
    "build_eval_transforms",
    "build_train_transforms",
    "crop_boxes_by_centre",
    "per_box_tensors",
]

SampleTransform = Callable[[Tensor, Target], tuple[Tensor, Target]]

# round(255 * (0.485, 0.456, 0.406)): the model's normalisation mean, so zoom-out padding normalises
# to about zero.
IMAGENET_MEAN_UINT8: tuple[int, int, int] = (124, 116, 104)

# The smallest SRN anchor is 8x10 px (stride 4, scale 2). A face of shorter side s and height 1.25 s
# overlaps it with IoU at most 1.25 s^2 / 80, under the 0.5 of a step-2 positive when s < 6.3: such a
# face can never be a positive, and should not make its neighbourhood negative either.
DEFAULT_MIN_FACE_SIZE: float = 6.0

# Target entries with one row per box, which must be filtered together with the boxes.
PER_BOX_KEYS: tuple[str, ...] = ("ignore", "labels")


def per_box_tensors(sample: Any) -> tuple[Tensor, ...]:
    """``labels_getter`` for ``v2.SanitizeBoundingBoxes``: the target's :data:`PER_BOX_KEYS` tensors.

    A module-level function rather than a lambda, so that pipelines pickle into DataLoader workers.
    """
    target = sample[1] if isinstance(sample, (tuple, list)) and len(sample) > 1 else sample
    if not isinstance(target, dict):
        return ()
    return tuple(target[k] for k in PER_BOX_KEYS if isinstance(target.get(k), Tensor))


def crop_boxes_by_centre(boxes: Tensor, left: int, top: int, side: int) -> tuple[Tensor, Tensor]:
    """Boxes after cropping the square patch ``[left, left + side) x [top, top + side)``.

    Args:
        boxes (Tensor[N, 4]): ``(x1, y1, x2, y2)`` in the source image.
        left, top, side: the patch.

    Returns:
        boxes (Tensor[N, 4]): in patch coordinates, clipped to ``[0, side]``.
        keep (Tensor[N]): ``bool``, True for boxes whose centre lies strictly inside the patch.
    """
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    keep = (cx > left) & (cx < left + side) & (cy > top) & (cy < top + side)
    offset = torch.tensor([left, top, left, top], dtype=boxes.dtype, device=boxes.device)
    return (boxes - offset).clamp(0, side), keep


class RandomSquareCrop(v2.Transform):
    """Crop one of two random square patches (SRN / S3FD style).

    With probability ``full_side_prob`` the side is the shorter image side, otherwise the shorter
    side times U[``scale_range``]; the position is uniform. Boxes whose centre lies outside the
    patch become all-zero (degenerate) so that a following ``v2.SanitizeBoundingBoxes`` removes them
    together with their ``ignore`` flags; the others are clipped to the patch.

    Args:
        scale_range: ``(low, high)``, with ``0 < low <= high <= 1``; the paper gives (0.3, 1) or (0.5, 1).
        full_side_prob: probability of the full-side patch.
        max_attempts: when the sample has boxes, draw again (up to this many times) until the patch
            keeps at least one box centre; the last draw is used either way. 1 disables retries.
    """

    def __init__(self, scale_range: Sequence[float] = (0.3, 1.0), full_side_prob: float = 0.5, max_attempts: int = 10) -> None:
        super().__init__()
        low, high = (float(v) for v in scale_range)
        if not 0 < low <= high <= 1:
            raise ValueError(f"RandomSquareCrop: scale_range must satisfy 0 < low <= high <= 1, got {tuple(scale_range)}")
        if not 0 <= full_side_prob <= 1:
            raise ValueError(f"RandomSquareCrop: full_side_prob must be in [0, 1], got {full_side_prob}")
        if max_attempts < 1:
            raise ValueError(f"RandomSquareCrop: max_attempts must be >= 1, got {max_attempts}")
        self.scale_range = (low, high)
        self.full_side_prob = full_side_prob
        self.max_attempts = max_attempts

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = _canvas_size(flat_inputs)
        boxes = next((x for x in flat_inputs if isinstance(x, tv_tensors.BoundingBoxes)), None)
        short = min(height, width)
        low, high = self.scale_range
        for _ in range(self.max_attempts):
            if float(torch.rand(())) < self.full_side_prob:
                side = short
            else:
                side = int(round(short * (low + (high - low) * float(torch.rand(())))))
                side = min(max(side, 1), short)
            left = int(torch.randint(0, width - side + 1, ()))
            top = int(torch.randint(0, height - side + 1, ()))
            if boxes is None or len(boxes) == 0:
                break
            if crop_boxes_by_centre(boxes.as_subclass(Tensor), left, top, side)[1].any():
                break
        return {"left": left, "top": top, "side": side}

    # torchvision < 0.21 calls these private names instead of make_params / transform.
    def _get_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return self.make_params(flat_inputs)

    def _transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self.transform(inpt, params)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        left, top, side = params["left"], params["top"], params["side"]
        if isinstance(inpt, tv_tensors.BoundingBoxes):
            if inpt.format != tv_tensors.BoundingBoxFormat.XYXY:
                raise ValueError(f"RandomSquareCrop: expected XYXY boxes, got {inpt.format}")
            boxes, keep = crop_boxes_by_centre(inpt.as_subclass(Tensor), left, top, side)
            boxes[~keep] = 0  # degenerate: SanitizeBoundingBoxes removes it and its per-box rows
            return tv_tensors.wrap(boxes, like=inpt, canvas_size=(side, side))
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.Video, tv_tensors.Mask)):
            return self._call_kernel(F.crop, inpt, top=top, left=left, height=side, width=side)
        return inpt


class MarkSmallFacesIgnored:
    """Mark faces whose shorter side is under ``min_face_size`` pixels as ignored; keep them.

    The shorter side, not the square root of the area, because a face is only as detectable as its
    narrowest dimension: a 4x40 box has a square-root area of 12.6 px but no anchor can match it.
    """

    def __init__(self, min_face_size: float) -> None:
        self.min_face_size = float(min_face_size)

    def __call__(self, image: Any, target: Target) -> tuple[Any, Target]:
        boxes = target["boxes"]
        shorter = torch.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        target = dict(target)
        target["ignore"] = target["ignore"] | (shorter.as_subclass(Tensor) < self.min_face_size)
        return image, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}(min_face_size={self.min_face_size})"


class ToTVTensors:
    """Wrap a sample for v2 transforms: ``tv_tensors.Image``, ``tv_tensors.BoundingBoxes`` (XYXY).

    Accepts anything :func:`~srn.data.image_io.to_rgb_tensor` accepts as the image. Adds an
    all-False ``ignore`` when the target has none. The target dict is copied, never modified.
    """

    def __call__(self, image: Any, target: Target) -> tuple[tv_tensors.Image, Target]:
        image = to_rgb_tensor(image)
        boxes = torch.as_tensor(target["boxes"], dtype=torch.float32)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            if boxes.numel() != 0:
                raise ValueError(f"ToTVTensors: target['boxes'] must have shape (N, 4), got {tuple(boxes.shape)}")
            boxes = boxes.reshape(0, 4)
        ignore = target.get("ignore")
        ignore = torch.zeros(len(boxes), dtype=torch.bool) if ignore is None else torch.as_tensor(ignore, dtype=torch.bool)
        if ignore.shape != (len(boxes),):
            raise ValueError(f"ToTVTensors: target['ignore'] must have shape ({len(boxes)},), got {tuple(ignore.shape)}")
        target = dict(target)
        target["boxes"] = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(image.shape[-2:]))
        target["ignore"] = ignore
        return tv_tensors.Image(image), target

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ToPlainTensors:
    """Unwrap a sample: plain ``uint8`` image tensor and plain ``float32`` boxes."""

    def __call__(self, image: Any, target: Target) -> tuple[Tensor, Target]:
        target = dict(target)
        target["boxes"] = target["boxes"].as_subclass(Tensor).to(torch.float32)
        return image.as_subclass(Tensor), target

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def build_train_transforms(
    size: int = 1024,
    zoom_out: Sequence[float] | None = (1.0, 4.0),
    crop_scale: Sequence[float] | None = (0.3, 1.0),
    min_face_size: float | None = DEFAULT_MIN_FACE_SIZE,
    photometric: bool = True,
    flip_prob: float = 0.5,
    *,
    zoom_out_prob: float = 0.5,
    crop_full_side_prob: float = 0.5,
    crop_max_attempts: int = 10,
    fill: Sequence[int] = IMAGENET_MEAN_UINT8,
) -> SampleTransform:
    """The SRN training augmentation (docs/design.md, Training recipe); see the module docstring for the steps.

    Args:
        size: output side; images come out ``(3, size, size)``.
        zoom_out: zoom-out factor range, or ``None`` to disable; applied with ``zoom_out_prob``.
        crop_scale: ``U[low, high]`` range of the smaller square patch, or ``None`` to disable the crop.
        min_face_size: faces with a shorter side below this (pixels, after resizing) are marked
            ignored; ``None`` or 0 disables it.
        photometric: apply ``v2.RandomPhotometricDistort`` (each sub-step with probability 0.5).
        flip_prob: horizontal flip probability.
        zoom_out_prob: probability of a zoom-out (SSD uses 0.5; the paper does not say).
        crop_full_side_prob: probability of the full-side patch rather than the scaled one.
        crop_max_attempts: see :class:`RandomSquareCrop`.
        fill: zoom-out padding colour, ``uint8`` RGB.

    Returns:
        ``(image, target) -> (image uint8 Tensor[3, size, size], target)``.
    """
    steps: list[Callable[..., Any]] = [ToTVTensors()]
    if photometric:
        steps.append(v2.RandomPhotometricDistort(p=0.5))
    if zoom_out is not None:
        steps.append(v2.RandomZoomOut(fill={tv_tensors.Image: tuple(fill), "others": 0}, side_range=tuple(zoom_out), p=zoom_out_prob))
    if crop_scale is not None:
        steps.append(RandomSquareCrop(crop_scale, full_side_prob=crop_full_side_prob, max_attempts=crop_max_attempts))
        steps.append(v2.SanitizeBoundingBoxes(min_size=1.0, min_area=1.0, labels_getter=per_box_tensors))
    if flip_prob > 0:
        steps.append(v2.RandomHorizontalFlip(p=flip_prob))
    steps.append(v2.Resize((size, size), antialias=True))
    if min_face_size:
        steps.append(MarkSmallFacesIgnored(min_face_size))
    steps.append(ToPlainTensors())
    return v2.Compose(steps)


def build_eval_transforms(size: int | None = None) -> SampleTransform:
    """Evaluation-time conversion: the image as is, or resized to ``size x size`` with its boxes.

    SRN runs on any image size, and the test-time augmentation (docs/design.md) picks its own scales, so
    the default changes nothing but the types.

    Returns:
        ``(image, target) -> (image uint8 Tensor[3, H, W], target)``.
    """
    steps: list[Callable[..., Any]] = [ToTVTensors()]
    if size is not None:
        steps.append(v2.Resize((size, size), antialias=True))
    steps.append(ToPlainTensors())
    return v2.Compose(steps)


def _canvas_size(flat_inputs: list[Any]) -> tuple[int, int]:
    for inpt in flat_inputs:
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.Video, tv_tensors.Mask)):
            return int(inpt.shape[-2]), int(inpt.shape[-1])
    for inpt in flat_inputs:
        if isinstance(inpt, tv_tensors.BoundingBoxes):
            return inpt.canvas_size
    raise ValueError("RandomSquareCrop: the sample has no tv_tensors.Image, Mask or BoundingBoxes to size the crop")
