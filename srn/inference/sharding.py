"""Detection over many files by several processes (``torchrun``): who does which input, and one
output from their parts.

Process ``r`` of ``n`` takes every ``n``-th input from the ``r``-th (:meth:`Shard.indices`), so that
the shares differ by one input at most whatever the order of the files. Each process writes its
records as JSON Lines to its own part, ``OUT.rank<r>.jsonl`` beside the output ``OUT``
(:meth:`Shard.part`); when every process is done, process 0 merges the parts into ``OUT`` in the
order of the inputs (:func:`merge_parts`, with what a resumed output already held) and removes them. Parts that a killed run left behind are
found again (:func:`leftover_parts`) and merged by the run that resumes it.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from srn.atomic import atomic_write_text
from srn.inference.writers import Record, read_jsonl, render, resolved_image

__all__ = ["Shard", "all_processes_sum", "barrier", "join_process_group", "leave_process_group", "leftover_parts", "merge_parts"]


@dataclass(frozen=True)
class Shard:
    """This process's share of the inputs: process ``rank`` of ``world_size`` (0 of 1 alone).

    Attributes:
        rank: this process's number, from 0.
        world_size: the number of processes.
        local_rank: its number on this machine (which GPU it runs on).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Shard:
        """The share that ``torchrun``'s environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) gives."""
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def indices(self, count: int) -> range:
        """The positions of this process's inputs among ``count``: every ``world_size``-th from ``rank``."""
        return range(self.rank, count, self.world_size)

    def part(self, out: Path, rank: int | None = None) -> Path:
        """The file that process ``rank`` (default: this one) writes its records to."""
        return out.with_name(f"{out.stem}.rank{self.rank if rank is None else rank}.jsonl")

    def parts(self, out: Path) -> list[Path]:
        """The part of every process."""
        return [self.part(out, rank) for rank in range(self.world_size)]


def leftover_parts(out: Path) -> list[Path]:
    """The parts of ``out`` that exist now, of any number of processes (a killed run's)."""
    return sorted(out.parent.glob(f"{out.stem}.rank*.jsonl"))


def merge_parts(out: Path, fmt: str, files: Sequence[Path], parts: Sequence[Path], keep: Sequence[Record] = ()) -> None:
    """Write ``keep`` (what a resumed output already held) and the parts' records together, in the
    order of ``files``, to ``out`` in ``fmt`` (json, jsonl or csv), atomically; then remove the parts.

    An image is written once (its first record, ``keep``'s before the parts'); a record of an image
    that is not in ``files`` goes last. Images are matched by name, then by resolved path.
    """
    position = {str(path): index for index, path in enumerate(files)}
    resolved = {resolved_image(path): index for index, path in enumerate(files)}

    def order(record: Record) -> int:
        name = record["image"]
        return position.get(name, resolved.get(resolved_image(name), len(files)))

    seen: set[str] = set()
    merged: list[Record] = []
    for record in itertools.chain(keep, *(read_jsonl(part) for part in parts)):
        if record["image"] not in seen:
            seen.add(record["image"])
            merged.append(record)
    merged.sort(key=order)  # stable: equal positions keep their order
    atomic_write_text(out, render(fmt, merged))
    for part in parts:
        part.unlink(missing_ok=True)


# -- the process group ----------------------------------------------------------------------------


def join_process_group(shard: Shard, device: str | None) -> str:
    """Join ``torchrun``'s process group (NCCL on GPUs, Gloo on the CPU); returns the device this
    process runs on: ``device``, or with None or ``"cuda"`` the GPU of its local rank where there is one."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from srn.inference.detector import resolve_device

    if device is None or device == "cuda":
        device = f"cuda:{shard.local_rank}" if torch.cuda.is_available() else "cpu"
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    # A long timeout: process 0 waits at the barrier until the slowest process has done its share.
    dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo", timeout=timedelta(hours=12))
    return str(resolved)


def barrier() -> None:
    """Wait until every process of the group is here."""
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def all_processes_sum(value: int) -> int:
    """The sum of ``value`` over every process of the group."""
    import torch
    import torch.distributed as dist

    total = torch.tensor([value], device=f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(total)
    return int(total.item())


def leave_process_group() -> None:
    import torch.distributed as dist

    dist.destroy_process_group()
