"""Detection runs for evaluation: single pass or the release's test-time augmentation, per image.

Used by ``srn eval``; each benchmark module then scores what this returns. Images go through the
run loop of ``srn detect`` (:func:`srn.inference.loop.run`): decoded in ``DataLoader`` workers while
the network runs, and an image that cannot be read is reported on one line, not fatal.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from srn.evaluation.tta import tta_detect
from srn.inference import Detector

logger = logging.getLogger(__name__)


def detect_images(
    detector: Detector,
    paths: Sequence[Path],
    tta: bool = False,
    tta_max_size: int = 2100,
    keep_singletons: bool = False,
    workers: int = 0,
) -> tuple[dict[Path, tuple[Tensor, Tensor]], list[str]]:
    """Detect faces in every image; unreadable images are reported, not fatal.

    Args:
        tta: the release's multi-scale + flip + box-voting test (docs/design.md, Test-time augmentation) instead of one pass.
        tta_max_size: its ``max_size`` (2100 as released; 1400 fits a 12 GB GPU).
        workers: processes that decode images ahead of the network (0: decode in this process).

    Returns:
        ``{path: (boxes (Tensor[K, 4]) x1 y1 x2 y2 on the CPU, scores (Tensor[K]))}`` in the order
        of ``paths``, and the one-line messages (``"<path>: <reason>"``) of the images that failed.
    """
    from srn.inference.loop import BaseSink, run
    from srn.inference.results import Faces
    from srn.inference.sources import ImageFileSource

    results: dict[Path, tuple[Tensor, Tensor]] = {}

    class Collect(BaseSink):
        def write(self, faces: Faces, item=None) -> None:
            results[paths[item.index]] = (faces.boxes.cpu(), faces.scores.cpu())

    def single_pass(images: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        # TTA hands over resized uint8 images; the detector wants float [0, 1] on its device.
        return detector.detect_tensors([im.to(detector.device).float().div_(255) for im in images])

    def augmented(items) -> list[Faces]:
        found = []
        for item in items:
            boxes, scores = tta_detect(item.image, single_pass, max_size=tta_max_size, keep_singletons=keep_singletons)
            found.append(Faces(boxes, scores, int(item.image.shape[-1]), int(item.image.shape[-2]), item.source))
        return found

    summary = run(detector, ImageFileSource(paths, workers), [Collect()], detector.batch_size, infer=augmented if tta else None)
    if summary.stopped is not None:
        raise summary.stopped
    failures = summary.failures
    return results, failures


def eval_detector(weights: str | None, device: str | None, batch_size: int, max_size: int) -> Detector:
    """A detector set up as the benchmarks expect: every detection the release keeps (no final
    score threshold), the release's NMS and top 750."""
    return Detector(weights=weights, device=device, score_thresh=0.0, max_size=max_size, batch_size=batch_size)


__all__ = ["detect_images", "eval_detector"]
