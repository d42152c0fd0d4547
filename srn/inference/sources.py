"""Sources of a run (:func:`srn.inference.loop.run`): image files here; the frames of a video
(:class:`srn.media.video.VideoSource`) and of a live stream (:class:`srn.media.live.LiveSource`)
beside the decoders that read them.

A source yields batches of :class:`srn.inference.loop.Item`, each an image with where it came from,
or the one line that says why it could not be read. A new kind of input is one class with
``unit``, ``total``, ``batches(batch_size, stop)`` and ``close()``; the loop does not change.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from torch.utils.data import DataLoader

from srn.data.image_folder import DecodedImage, ImageFiles, collate_decoded
from srn.errors import ConfigError
from srn.inference.loop import Item

__all__ = ["ImageFileSource", "decode_files"]


def decode_files(paths: Sequence[str | os.PathLike[str]], batch_size: int = 8, workers: int = 0) -> Iterator[list[DecodedImage]]:
    """Decode image files, ``batch_size`` at a time, in ``workers`` processes (0: in this one).

    The main process runs the network while the workers decode the next batches, so decoding (a
    large share of the time for JPEG photos on the CPU) overlaps with inference.

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


class ImageFileSource:
    """Image files (as :func:`srn.paths.expand_inputs` lists a run's files, folders and globs),
    decoded in ``workers`` processes (0: in this one); an item's ``source`` is the path as given.

    How the files are cut into batches (the batch size, the workers, a ``torchrun`` process's share)
    never changes an image's record: :meth:`srn.inference.Detector.detect` pads every image to its
    own canonical size and runs only images of one canonical size together.
    """

    unit = "img"

    def __init__(self, paths: Sequence[str | os.PathLike[str]], workers: int = 0) -> None:
        self.paths = [Path(p) for p in paths]
        self.workers = workers
        self.total: int | None = len(self.paths)

    def batches(self, batch_size: int, stop: threading.Event | None = None) -> Iterator[list[Item]]:
        for batch in decode_files(self.paths, batch_size, self.workers):
            yield [Item(d.index, str(d.path), d.image, d.error) for d in batch]

    def close(self) -> None:
        pass
