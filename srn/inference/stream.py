"""Detection over many image files, decoded in ``DataLoader`` workers, one batch at a time.

The main process runs the network while the workers decode the next batches, so decoding (a large
share of the time for JPEG photos on the CPU) overlaps with inference. Results come back batch by
batch and in input order, so a caller can write and flush each batch as it completes: a crash or a
kill loses at most the batch in flight. ``srn detect``, ``srn anonymize`` and ``srn eval``
(:func:`srn.evaluation.run.detect_images`) all read their images through here.

How the files are cut into batches (``batch_size``, the workers, a ``torchrun`` process's share)
never changes an image's record: :meth:`srn.inference.Detector.detect` pads every image to its own
canonical size and runs only images of one canonical size together (see :mod:`srn.inference.detector`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from torch.utils.data import DataLoader

from srn.data.image_folder import DecodedImage, ImageFiles, collate_decoded
from srn.errors import ConfigError
from srn.inference.detector import Detector

__all__ = ["decode_files", "default_workers", "detect_files"]


def default_workers() -> int:
    """Decoding processes by default: as many as cores, at most 4 (beyond that the network, not
    decoding, is the bottleneck on a CPU)."""
    return min(4, os.cpu_count() or 1)


def decode_files(paths: Sequence[str | os.PathLike[str]], batch_size: int = 8, workers: int = 0) -> Iterator[list[DecodedImage]]:
    """Decode image files, ``batch_size`` at a time, in ``workers`` processes (0: in this one).

    Yields:
        One list of :class:`DecodedImage` per batch, in the order of ``paths``; a file that could
        not be read is in it with its ``error`` instead of its ``image``.
    """
    if batch_size < 1:
        raise ConfigError(f"the batch size must be at least 1, got {batch_size}")
    if workers < 0:
        raise ConfigError(f"the number of decoding workers must be at least 0, got {workers}")
    loader = DataLoader(
        ImageFiles(paths),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_decoded,
        prefetch_factor=2 if workers else None,
    )
    yield from loader


def detect_files(
    detector: Detector, paths: Sequence[str | os.PathLike[str]], batch_size: int = 8, workers: int = 0
) -> Iterator[list[DecodedImage]]:
    """Detect faces in image files, ``batch_size`` files at a time.

    Args:
        detector: the detector to run.
        paths: image files.
        batch_size: files per batch (the detector's own ``batch_size`` still bounds a forward pass).
        workers: decoding processes; 0 decodes in this process.

    Yields:
        One list of :class:`DecodedImage` per batch, in the order of ``paths``, each with its
        ``faces`` (whose ``source`` is the file), or with its ``error`` when the file could not be read.
    """
    for batch in decode_files(paths, batch_size, workers):
        readable = [item for item in batch if item.image is not None]
        found = detector.detect([item.image for item in readable]) if readable else []
        for item, faces in zip(readable, found):
            faces.source = str(item.path)
            item.faces = faces
        yield batch
