"""Training checkpoints: everything needed to continue a run exactly, written atomically; and
``train.init_from``, a warm start from another run's weights.

A training checkpoint is also a valid weights file (``model`` + ``config``), so a detector loads
``runs/x/last.pt`` as it loads any weights. Only tensors and plain Python values are stored, so loading
uses ``torch.load(weights_only=True)`` (through :func:`srn.weights.read_torch_file`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from srn.atomic import atomic_save
from srn.config import ModelConfig, to_dict
from srn.errors import SRNError, TrainingError, WeightsError, one_line
from srn.model import SRN
from srn.model.layers import separable_from_dense
from srn.weights import check_state_dict, read_torch_file, read_weights

logger = logging.getLogger(__name__)

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


SHIPPED = "shipped"  # the name of the packaged model in train.init_from and train.teacher


def resolve_weights(path: str | Path) -> Path:
    """``path``, or the shipped model's file (``srn/assets/srn_mobilenet_v2.pt``) for the name ``shipped``."""
    if str(path) == SHIPPED:
        from srn.inference.detector import DEFAULT_WEIGHTS

        return DEFAULT_WEIGHTS
    return Path(path)


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(map(str, tensor.shape)) or "scalar"


def init_from(model: nn.Module, path: str | Path, strict: bool = True, model_config: ModelConfig | None = None) -> None:
    """Start from an srn checkpoint's weights (``shipped``: the packaged model): every tensor whose
    name and shape match the model's is loaded. A model with a depthwise-separable head starts its
    separable layers from the file's factorised dense head (:func:`srn.model.layers.separable_from_dense`).

    With ``strict`` (the default) every tensor of the model must come from the file, so that a
    fine-tuning run never starts partly from scratch unnoticed; with ``strict=False`` the tensors
    without a match keep their initialisation (a new head on the shipped backbone, say). A residual
    adapter or context block the file lacks (``model.adapter_levels``, ``model.context_levels``) is not a
    mismatch: it starts as the identity, so the model starts as the file's.

    Raises:
        TrainingError: one line: no tensor of the file matches the model; or, when ``strict``, some
            of the model's tensors have no match (the first named, with both shapes, and the model
            keys in which the file's config differs from ``model_config``).
    """
    path = resolve_weights(path)
    file_config, state = read_weights(path)
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise TrainingError(f"{path}: train.init_from has no tensor that matches the model in name and shape")
    # A separable model from a dense one: its depthwise-separable layers start as the nearest
    # factorisation of the dense kernels.
    factored = separable_from_dense(state, own)
    unmatched = [k for k in own if k not in matched and k not in factored]
    blocks = tuple(model.residual_blocks()) if isinstance(model, SRN) else ()
    new_blocks = [k for k in unmatched if k.startswith(blocks) and k not in state]
    missing = [k for k in unmatched if k not in new_blocks]
    if missing and strict:
        shown = []
        for key in missing[:3]:
            shown.append(f"{key} (model {_shape(own[key])}, file {_shape(state[key])})" if key in state else f"{key} (not in the file)")
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        differ = ""
        if model_config is not None:
            mine, theirs = to_dict(model_config), to_dict(file_config.model)
            keys = [k for k in mine if k != "pretrained" and mine[k] != theirs.get(k)]
            if keys:
                differ = "; the file's model differs in " + ", ".join(f"model.{k} (file {theirs.get(k)}, config {mine[k]})" for k in keys)
        raise TrainingError(f"{path}: train.init_from: {len(missing)} of the model's {len(own)} tensors have no match in the file: "
                            f"{', '.join(shown)}{more}{differ}; is this the same architecture? (train.init_strict=false loads "
                            "only the tensors that match)")
    model.load_state_dict({**matched, **factored}, strict=False)
    logger.info("train.init_from %s: loaded %d of the model's %d tensors, factored %d from dense kernels "
                "(%d of the file's did not match)%s%s", path, len(matched), len(own), len(factored), len(state) - len(matched),
                f"; {len(missing)} keep their initialisation" if missing else "",
                f"; {len(new_blocks)} of new residual blocks start at the identity" if new_blocks else "")


def restore_training_state(
    path: str | Path,
    model_config: ModelConfig,
    model: nn.Module,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> int:
    """Load a training checkpoint into the run's objects and the RNGs; return its iteration.

    Raises:
        InputPathError, WeightsError: see :func:`load_training_checkpoint`.
        TrainingError: one line naming ``path``: the checkpoint was trained with another model
            config (every differing key is named), or its state does not fit these objects.
    """
    state = load_training_checkpoint(path)
    check_same_model(path, state["config"], model_config)
    try:
        check_state_dict(model, state["model"], str(path))
        model.load_state_dict(state["model"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
    except SRNError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        raise TrainingError(f"{path}: the training state cannot be restored ({one_line(exc)[:200]})") from None
    return int(state["iteration"])


_ABSENT = object()


def _or_absent(value: Any) -> str:
    return "(absent)" if value is _ABSENT else str(value)


def check_same_model(path: str | Path, saved_config: Mapping[str, Any], model_config: ModelConfig) -> None:
    """A resumed run continues the same network: every model key but ``pretrained`` (only the
    initialisation, which the checkpoint replaces) must be what the checkpoint was trained with.

    Raises:
        TrainingError: ``"<path>: the checkpoint was trained with another model (model.<key>:
            checkpoint <value>, config <value>; ...)"``.
    """
    saved = saved_config.get("model")
    if not isinstance(saved, Mapping):
        raise TrainingError(f"{path}: damaged training checkpoint (its config has no model section)")
    # Keys added to ModelConfig after the checkpoint was written count with their defaults.
    saved = {**to_dict(ModelConfig()), **saved}
    current = to_dict(model_config)
    keys = [*current, *(key for key in saved if key not in current)]
    diffs = [
        f"model.{key}: checkpoint {_or_absent(saved.get(key, _ABSENT))}, config {_or_absent(current.get(key, _ABSENT))}"
        for key in keys
        if key != "pretrained" and saved.get(key, _ABSENT) != current.get(key, _ABSENT)
    ]
    if diffs:
        raise TrainingError(f"{path}: the checkpoint was trained with another model ({'; '.join(diffs)})")
