"""Detection runs for evaluation: single pass or the release's test-time augmentation, per image.

Used by ``srn eval``; each benchmark module then scores what this returns. Images are read by the
pipeline of ``srn detect`` (:mod:`srn.inference.stream`): decoded in ``DataLoader`` workers while
the network runs, and an image that cannot be read is reported on one line, not fatal.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from srn.evaluation.tta import tta_detect
from srn.inference import Detector
from srn.inference.stream import decode_files

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
    from tqdm import tqdm

    results: dict[Path, tuple[Tensor, Tensor]] = {}
    failures: list[str] = []

    def single_pass(images: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        # TTA hands over resized uint8 images; the detector wants float [0, 1] on its device.
        return detector.detect_tensors([im.to(detector.device).float().div_(255) for im in images])

    # Full batches of readable images, as a serial loop makes them: an unreadable file leaves no
    # hole in a batch, so the detections (padding included) do not depend on which files failed.
    pending: list[tuple[Path, Tensor]] = []

    def flush() -> None:
        for (path, _), faces in zip(pending, detector.detect([image for _, image in pending])):
            results[path] = (faces.boxes.cpu(), faces.scores.cpu())
        pending.clear()

    with tqdm(total=len(paths), unit="img", disable=len(paths) < 8 or None, file=sys.stderr) as progress:
        for batch in decode_files(paths, detector.batch_size, workers):
            for item in batch:
                if item.image is None:
                    failures.append(str(item.error))
                    continue
                path = paths[item.index]
                if tta:
                    boxes, scores = tta_detect(item.image, single_pass, max_size=tta_max_size, keep_singletons=keep_singletons)
                    results[path] = (boxes.cpu(), scores.cpu())
                else:
                    pending.append((path, item.image))
                    if len(pending) == detector.batch_size:
                        flush()
            progress.update(len(batch))
        if pending:
            flush()
    return results, failures


def eval_detector(weights: str | None, device: str | None, batch_size: int, max_size: int) -> Detector:
    """A detector set up as the benchmarks expect: every detection the release keeps (no final
    score threshold), the release's NMS and top 750."""
    return Detector(weights=weights, device=device, score_thresh=0.0, max_size=max_size, batch_size=batch_size)


__all__ = ["detect_images", "eval_detector"]
