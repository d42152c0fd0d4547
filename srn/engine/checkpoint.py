"""Training checkpoints: everything needed to continue a run exactly, written atomically.

A training checkpoint is also a valid weights file (``model`` + ``config``), so ``srn detect
--weights runs/x/last.pt`` works on it. Only tensors and plain Python values are stored, so loading
uses ``torch.load(weights_only=True)`` (through :func:`srn.weights.read_torch_file`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from srn.atomic import atomic_save
from srn.errors import WeightsError
from srn.weights import read_torch_file

FORMAT = "srn-train"
# Entry -> the type it must have for a run to continue from it.
_ENTRIES: dict[str, type | tuple[type, ...]] = {
    "model": Mapping, "optimizer": Mapping, "scheduler": Mapping, "scaler": Mapping,
    "epoch": int, "iteration": int, "rng": Mapping, "config": Mapping,
}


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        # numpy's state holds an ndarray, which weights_only loading refuses; store it as a tensor.
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_checkpoint(path: str | Path, **parts: Any) -> None:
    """Write ``parts`` (model, optimizer, scheduler, scaler, epoch, iteration, config, ...) plus the
    RNG state, through a temporary file and a rename."""
    atomic_save({"format": FORMAT, **parts, "rng": rng_state()}, path)


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint that :func:`save_training_checkpoint` wrote.

    Raises:
        InputPathError: ``path`` is missing, not a regular file, unreadable or empty.
        WeightsError: one line naming ``path``: not a torch file, truncated, not an srn training
            checkpoint (an inference ``model.pt``, say), or an entry missing or of the wrong type.
    """
    state = read_torch_file(path, what="training checkpoint")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise WeightsError(f"{path}: not an srn training checkpoint (no 'format': '{FORMAT}' entry)")
    for key, kind in _ENTRIES.items():
        if key not in state:
            raise WeightsError(f"{path}: damaged training checkpoint (no {key!r} entry)")
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise WeightsError(f"{path}: damaged training checkpoint ({key!r} is a {type(state[key]).__name__})")
    return state
