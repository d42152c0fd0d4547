"""Hide faces: blur, pixelate or black out the region of each detected face.

:func:`anonymize` is pure: it takes an image and boxes (from :meth:`srn.inference.Detector.detect`)
and returns a new image; reading and writing files is the caller's job (``srn anonymize`` reads
images and videos, :mod:`srn.media.video` rewrites videos frame by frame).

The region of a face is its box grown ``mask_scale`` times around the box's centre (detectors box
the face from brow to chin, so hair, ears and chin need the margin), clipped to the image; ``mask``
says whether the whole rectangle or only the ellipse inscribed in it is replaced, by:

- ``blur``: a Gaussian blur with sigma = 1/8 of the face's shorter side (a face 100 pixels wide
  gets sigma 12.5, which leaves no recognisable feature). Large sigmas run on a downscaled copy
  of the region (sigma 4 there) that is scaled back, so the cost stays proportional to the
  region's area, not to area times kernel size;
- ``mosaic``: square blocks of the region's mean colour, 6 blocks across the face's shorter side;
- ``solid``: black.

Overlapping faces are each hidden in turn; a pixel is never left unhidden because two regions meet.

A grown box is clipped to the image before it becomes whole pixels, so that no scale, however
large, can overflow into an empty region and leave a face in the clear: the largest region there is
the whole image. Images may be 8-bit or 16-bit, with one channel (grey) or three (colour); an alpha
channel is the caller's to keep aside (:mod:`srn.media.image_file` writes files that have one).
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from srn.errors import ConfigError, ImageValueError
from srn.inference.results import expand_boxes

__all__ = ["MASKS", "METHODS", "anonymize"]

METHODS = ("blur", "mosaic", "solid")
MASKS = ("box", "ellipse")

BLUR_SIGMA_PER_FACE = 1 / 8  # of the face's shorter side
MOSAIC_BLOCKS_PER_FACE = 6  # across the face's shorter side
_MAX_DIRECT_SIGMA = 4.0  # beyond this, blur a downscaled copy

ImageT = TypeVar("ImageT", np.ndarray, Tensor)

# Pixel types an image may have, and the largest value of each.
_MAX_VALUE = {torch.uint8: 255, torch.uint16: 65535}
_NUMPY_DTYPES = {np.dtype(np.uint8): torch.uint8, np.dtype(np.uint16): torch.uint16}


def anonymize(
    image: ImageT,
    boxes: Tensor | np.ndarray,
    method: str = "blur",
    mask: str = "box",
    mask_scale: float = 1.3,
) -> ImageT:
    """A copy of ``image`` with every face hidden (see the module doc).

    Args:
        image: uint8 or uint16, colour or grey: ``Tensor[C, H, W]`` (on any device) or ``ndarray
            (H, W, C)`` with C = 3 or 1, or ``ndarray (H, W)``; not modified.
        boxes (Tensor[D, 4] or ndarray (D, 4)): x1, y1, x2, y2 in pixels of ``image``.
        method: "blur", "mosaic" or "solid".
        mask: "box" (the whole grown rectangle) or "ellipse" (the ellipse inscribed in it).
        mask_scale: how many times each box grows around its centre (1 keeps the box).

    Returns:
        The anonymised image, of the type, layout, dtype and device of ``image``.

    Raises:
        ConfigError: an unknown method or mask, or a scale that is not a finite positive number.
        ImageValueError: an image of another type, shape or dtype.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown anonymisation method {method!r} (use one of {', '.join(METHODS)})")
    if mask not in MASKS:
        raise ConfigError(f"unknown mask {mask!r} (use one of {', '.join(MASKS)})")
    if not (math.isfinite(mask_scale) and mask_scale > 0):
        raise ConfigError(f"the mask scale must be a positive number, got {mask_scale}")
    as_numpy = isinstance(image, np.ndarray)
    if as_numpy:
        flat = image.ndim == 2
        if not (flat or (image.ndim == 3 and image.shape[2] in (1, 3))) or image.dtype not in _NUMPY_DTYPES:
            raise ImageValueError(f"anonymize: expected a uint8 or uint16 array (H, W, 3), (H, W, 1) or (H, W), "
                                  f"got {image.dtype} of shape {image.shape}")
        copy = np.array(image)
        # (H, W, C) -> (C, H, W), or (H, W) -> (1, H, W): views of the copy
        out = torch.from_numpy(copy).unsqueeze(0) if flat else torch.from_numpy(copy).permute(2, 0, 1)
    else:
        if image.ndim != 3 or image.shape[0] not in (1, 3) or image.dtype not in _MAX_VALUE:
            raise ImageValueError(f"anonymize: expected a uint8 or uint16 Tensor[3, H, W] or Tensor[1, H, W], "
                                  f"got {image.dtype} of shape {tuple(image.shape)}")
        with torch.inference_mode(False):  # a tensor the caller may modify, even from a detector's output
            out = image.detach().clone()
    boxes = torch.as_tensor(boxes.detach().cpu() if isinstance(boxes, Tensor) else np.asarray(boxes), dtype=torch.float64)
    boxes = boxes.reshape(-1, 4)
    height, width = out.shape[-2:]

    sizes = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)  # (D, 2): w, h
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    grown = torch.cat([centres - sizes * mask_scale / 2, centres + sizes * mask_scale / 2], dim=1)  # (D, 4)
    # Clipped while still floats: a huge scale gives the whole image, never an integer overflow.
    limit = torch.tensor([width, height, width, height], dtype=torch.float64)
    regions = expand_boxes(torch.minimum(grown.clamp(min=0), limit), 0.0, int(width), int(height))
    for (x1, y1, x2, y2), face_side, box in zip(regions.tolist(), sizes.min(dim=1).values.tolist(), grown):
        patch = out[:, y1:y2, x1:x2]
        filled = _fill(patch, method, max(face_side, 1.0))
        if mask == "ellipse":
            inside = _ellipse(box, x1, y1, x2, y2).to(out.device)
            filled = torch.where(inside, filled, patch)
        out[:, y1:y2, x1:x2] = filled
    if as_numpy:
        return copy  # the array the views above wrote into
    return out


def _fill(patch: Tensor, method: str, face_side: float) -> Tensor:
    """The replacement of a region (C, h, w) of the image's dtype."""
    if method == "solid":
        return torch.zeros_like(patch)
    if method == "mosaic":
        return _mosaic(patch, max(1, math.ceil(face_side / MOSAIC_BLOCKS_PER_FACE)))
    return _blur(patch, face_side * BLUR_SIGMA_PER_FACE)


def _mosaic(patch: Tensor, block: int) -> Tensor:
    height, width = patch.shape[-2:]
    # ceil_mode: the last row and column of blocks average only the pixels they hold.
    means = F.avg_pool2d(patch[None].float(), block, stride=block, ceil_mode=True)[0]  # (C, ceil(h/b), ceil(w/b))
    blocks = means.round().to(patch.dtype).repeat_interleave(block, dim=1).repeat_interleave(block, dim=2)
    return blocks[:, :height, :width]


def _blur(patch: Tensor, sigma: float) -> Tensor:
    from torchvision.transforms.v2.functional import gaussian_blur, resize

    height, width = patch.shape[-2:]
    work = patch.float()
    factor = max(1.0, sigma / _MAX_DIRECT_SIGMA)
    if factor > 1.0:
        small = [max(1, round(height / factor)), max(1, round(width / factor))]
        work = resize(work, small, antialias=True)
        sigma /= factor
    kernel = [_kernel_size(sigma, work.shape[-1]), _kernel_size(sigma, work.shape[-2])]  # x, y
    work = gaussian_blur(work, kernel, [sigma, sigma])
    if factor > 1.0:
        work = resize(work, [height, width], antialias=False)
    return work.round_().clamp_(0, _MAX_VALUE[patch.dtype]).to(patch.dtype)


def _kernel_size(sigma: float, length: int) -> int:
    # Three sigmas each side, but reflect padding needs fewer than `length` pixels of padding.
    return max(1, min(2 * math.ceil(3 * sigma) + 1, 2 * length - 1))


def _ellipse(box: Tensor, x1: int, y1: int, x2: int, y2: int) -> Tensor:
    """Bool (h, w): the pixels of region x1:x2, y1:y2 whose centres lie in the ellipse inscribed in ``box``."""
    bx1, by1, bx2, by2 = box.tolist()
    half_w, half_h = max((bx2 - bx1) / 2, 0.5), max((by2 - by1) / 2, 0.5)
    xs = (torch.arange(x1, x2, dtype=torch.float64) + 0.5 - (bx1 + bx2) / 2) / half_w
    ys = (torch.arange(y1, y2, dtype=torch.float64) + 0.5 - (by1 + by2) / 2) / half_h
    return ys[:, None] ** 2 + xs[None, :] ** 2 <= 1.0  # (h, 1) + (1, w) -> (h, w)
