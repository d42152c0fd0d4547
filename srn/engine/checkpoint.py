"""Training checkpoints: everything needed to continue a run exactly, written atomically.

A training checkpoint is also a valid weights file (``model`` + ``config``), so ``srn detect
--weights runs/x/last.pt`` works on it. Only tensors and plain Python values are stored, so loading
uses ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from srn.weights import WeightsError, atomic_save

FORMAT = "srn-train"


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
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is the same user error
        raise WeightsError(f"{path}: not a loadable checkpoint ({str(exc).strip().splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise WeightsError(f"{path}: not an srn training checkpoint")
    return state
