"""Image files decoded in ``DataLoader`` workers, for inference over folders.

A bad file must not stop a run over a million images, and an exception raised in a worker would
stop the whole loader. So an item is a :class:`DecodedImage` that carries either the image or the
one-line reason it could not be read, and :func:`collate_decoded` keeps a batch as a plain list
(images differ in size; :class:`srn.inference.Detector` pads and batches them itself).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor
from torch.utils.data import Dataset

from srn.data.image_io import read_image
from srn.errors import ImageReadError

__all__ = ["DecodedImage", "ImageFiles", "collate_decoded"]


@dataclass
class DecodedImage:
    """One input file, read or not.

    Attributes:
        index: its position in the list given to :class:`ImageFiles`.
        path: the file.
        image (Tensor[3, H, W] | None): ``uint8`` RGB (see :func:`srn.data.image_io.read_image`),
            or None when it could not be read.
        error: ``"<path>: <reason>"`` when it could not be read, else None.
    """

    index: int
    path: Path
    image: Tensor | None = None
    error: str | None = None


class ImageFiles(Dataset):
    """The images at ``paths``, item ``i`` being the :class:`DecodedImage` of ``paths[i]``; a file
    that cannot be read (missing, a folder, a FIFO, a device, not an image, truncated) comes back
    with its error instead of raising."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]]) -> None:
        self.paths = [Path(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> DecodedImage:
        path = self.paths[index]
        try:
            return DecodedImage(index, path, image=read_image(path))
        except ImageReadError as exc:
            return DecodedImage(index, path, error=str(exc))
        except MemoryError:
            return DecodedImage(index, path, error=str(ImageReadError(path, "too large to decode in the memory available")))


def collate_decoded(items: list[DecodedImage]) -> list[DecodedImage]:
    """A ``collate_fn`` that keeps a batch as the list of its items, in order."""
    return list(items)
