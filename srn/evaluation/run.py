"""Detection runs for evaluation: single pass or the release's test-time augmentation, per image.

Used by ``srn eval``; each benchmark module then scores what this returns.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from srn.data.image_io import ImageReadError, read_image
from srn.inference import Detector
from srn.evaluation.tta import tta_detect

logger = logging.getLogger(__name__)


def detect_images(
    detector: Detector,
    paths: Sequence[Path],
    tta: bool = False,
    tta_max_size: int = 2100,
    keep_singletons: bool = False,
) -> tuple[dict[Path, tuple[Tensor, Tensor]], list[str]]:
    """Detect faces in every image; unreadable images are reported, not fatal.

    Args:
        tta: the release's multi-scale + flip + box-voting test (docs/design.md, Test-time augmentation) instead of one pass.
        tta_max_size: its ``max_size`` (2100 as released; 1400 fits a 12 GB GPU).

    Returns:
        ``{path: (boxes (Tensor[K, 4]) x1 y1 x2 y2 on the CPU, scores (Tensor[K]))}`` and the
        one-line messages of the images that failed.
    """
    from tqdm import tqdm

    results: dict[Path, tuple[Tensor, Tensor]] = {}
    failures: list[str] = []

    def single_pass(images: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        # TTA hands over resized uint8 images; the detector wants float [0, 1] on its device.
        return detector.detect_tensors([im.to(detector.device).float().div_(255) for im in images])

    batch: list[tuple[Path, Tensor]] = []

    def flush() -> None:
        faces = detector.detect([image for _, image in batch])
        for (path, _), found in zip(batch, faces):
            results[path] = (found.boxes.cpu(), found.scores.cpu())
        batch.clear()

    for path in tqdm(paths, unit="img", disable=len(paths) < 8 or None, file=sys.stderr):
        try:
            image = read_image(path)
        except ImageReadError as exc:
            failures.append(str(exc))
            continue
        if tta:
            boxes, scores = tta_detect(image, single_pass, max_size=tta_max_size, keep_singletons=keep_singletons)
            results[path] = (boxes.cpu(), scores.cpu())
        else:
            batch.append((path, image))
            if len(batch) == detector.batch_size:
                flush()
    if batch:
        flush()
    return results, failures


def eval_detector(weights: str | None, device: str | None, batch_size: int, max_size: int) -> Detector:
    """A detector set up as the benchmarks expect: every detection the release keeps (no final
    score threshold), the release's NMS and top 750."""
    return Detector(weights=weights, device=device, score_thresh=0.0, max_size=max_size, batch_size=batch_size)


__all__ = ["detect_images", "eval_detector"]
