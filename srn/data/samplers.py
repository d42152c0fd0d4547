"""What each training step draws: the order of the items, their repeats, and their augmentation.

- :class:`RepeatDataset` repeats a source by a (fractional) factor; :func:`source_sampling_weights`
  gives per-sample weights for a ``WeightedRandomSampler`` so that each source is drawn with a
  chosen probability. Datasets are plain map-style datasets of the same item type, so
  ``torch.utils.data.ConcatDataset`` mixes them.
- :class:`ResumableSampler` shuffles per epoch, splits the items over the DDP processes and can
  start part-way into an epoch; :class:`SeededSamples` makes an item's random augmentation a function
  of (seed, epoch, index). Together they make a resumed run, or one with another number of
  workers, see exactly the same samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence, Sized
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler

__all__ = ["RepeatDataset", "ResumableSampler", "SeededSamples", "source_sampling_weights"]


class RepeatDataset(Dataset):
    """A dataset repeated ``factor`` times, where ``factor`` may be fractional.

    ``factor = 2.5`` gives every item twice plus a fixed random half of the items once more (drawn
    once from ``seed``, so epochs and workers agree); ``factor = 0.3`` gives a fixed 30% subset. Use it
    inside a ``ConcatDataset`` to over- or under-sample a source.
    """

    def __init__(self, dataset: Dataset, factor: float, seed: int = 0) -> None:
        if not factor > 0 or not math.isfinite(factor):
            raise ValueError(f"RepeatDataset: factor must be a positive finite number, got {factor}")
        self.dataset = dataset
        self.factor = factor
        n = len(dataset)  # type: ignore[arg-type]
        whole, fraction = int(factor), factor - int(factor)
        extra = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: round(fraction * n)]
        self.indices = torch.cat((torch.arange(n).repeat(whole), extra.sort().values))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[int(self.indices[index])]


def source_sampling_weights(datasets: Sequence[Sized], weights: Sequence[float]) -> Tensor:
    """Per-sample weights that draw source ``k`` with probability ``weights[k] / sum(weights)``.

    Pass them, with ``ConcatDataset(datasets)``, to
    ``torch.utils.data.WeightedRandomSampler(w, num_samples=...)``. Within a source, samples are
    equally likely.

    Returns:
        weights (Tensor[sum of len(datasets)]): ``float64``, summing to 1.
    """
    if len(datasets) != len(weights):
        raise ValueError(f"source_sampling_weights: {len(datasets)} datasets but {len(weights)} weights")
    if any(not (w >= 0 and math.isfinite(w)) for w in weights) or sum(weights) <= 0:
        raise ValueError(f"source_sampling_weights: weights must be finite, >= 0 and not all 0, got {list(weights)}")
    total = float(sum(weights))
    parts = []
    for dataset, weight in zip(datasets, weights):
        n = len(dataset)
        if n == 0 and weight > 0:
            raise ValueError("source_sampling_weights: an empty dataset cannot have a positive weight")
        parts.append(torch.full((n,), weight / total / max(n, 1), dtype=torch.float64))
    return torch.cat(parts)


class SeededSamples(Dataset):
    """Makes the random augmentation of item ``i`` in epoch ``e`` a function of (seed, e, i) alone.

    So a resumed run, or one with another number of workers, sees exactly the same samples.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch * 998_244_353 + index) % (2**63))
            return self.dataset[index]


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled from ``seed``, the last incomplete share dropped) that can
    start part-way into an epoch, for mid-epoch resume.

    Args:
        dataset: the training dataset.
        world_size, rank: this process's share of every epoch (1 and 0 without DDP).
        seed: the shuffle of epoch ``e`` is drawn from ``seed + e`` on every process alike.
    """

    def __init__(self, dataset: Dataset, world_size: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0

    def start_at(self, epoch: int, start: int) -> None:
        """Draw epoch ``epoch``'s order, and skip this process's first ``start`` items of it."""
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start :])

    def __len__(self) -> int:
        return super().__len__() - self.start
