"""Weights on disk: the authors' ``SRN.pth`` and this project's self-describing checkpoint.

Nothing here unpickles arbitrary objects: every file is read with ``torch.load(weights_only=True)``.

The release's file is ``{'state_dict': {'module.<name>': tensor}}`` written by torch 0.3 (legacy
serialization, no ``num_batches_tracked``); :func:`convert_official_state_dict` maps its names onto
this project's modules. Our own file holds the detector's config next to its weights, so that
:func:`load_detector` needs no other argument.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from srn.atomic import atomic_save
from srn.config import ConfigError, DetectorConfig, ModelConfig, PostProcessConfig, from_dict, to_dict
from srn.errors import WeightsError

FORMAT = "srn"
FORMAT_VERSION = 1

# Release name -> ours. Order matters only where one pattern is a prefix of another (the *_pred
# rules come before the towers).
_OFFICIAL_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^(conv1|bn1|layer[1-4])\.(.+)$"), r"backbone.\1.\2"),
    (re.compile(r"^layer5\.(.+)$"), r"extra.c6.\1"),
    (re.compile(r"^layer6\.(.+)$"), r"extra.c7.\1"),
    (re.compile(r"^c([2-7])_conv\.(.+)$"), lambda m: f"first_step.convs.{int(m[1]) - 2}.{m[2]}"),
    (re.compile(r"^c([2-5])_lateral\.(.+)$"), lambda m: f"fpn.laterals.{int(m[1]) - 2}.{m[2]}"),
    (re.compile(r"^p([2-7])_conv\.(.+)$"), lambda m: f"fpn.outputs.{int(m[1]) - 2}.{m[2]}"),
    (re.compile(r"^cls_subnet_pred\.(.+)$"), r"head.cls_pred.\1"),
    (re.compile(r"^box_subnet_pred\.(.+)$"), r"head.box_pred.\1"),
    (re.compile(r"^cls_subnet\.(.+)$"), r"head.cls_tower.\1"),
    (re.compile(r"^box_subnet\.(.+)$"), r"head.box_tower.\1"),
]


def official_to_ours(name: str) -> str | None:
    """Our parameter name for a release state-dict key (without ``module.``), or None."""
    for pattern, replacement in _OFFICIAL_RULES:
        match = pattern.match(name)
        if match:
            return match.expand(replacement) if isinstance(replacement, str) else replacement(match)
    return None


def is_official_state_dict(obj: Any) -> bool:
    state = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    if not isinstance(state, Mapping):
        return False
    keys = {k.removeprefix("module.") for k in state}
    return "cls_subnet_pred.weight" in keys and "c2_lateral.weight" in keys


def convert_official_state_dict(obj: Mapping[str, Any]) -> dict[str, Tensor]:
    """Map the release's state dict onto :class:`srn.model.SRN`'s names.

    Accepts the file's ``{'state_dict': ...}`` wrapper or the bare dict, with or without the
    ``module.`` prefix and the ``num_batches_tracked`` entries (added as 0 where absent, as
    torch 0.3 never wrote them).

    Raises:
        WeightsError: naming every key that has no place in the network.
    """
    state = obj["state_dict"] if "state_dict" in obj and isinstance(obj["state_dict"], Mapping) else obj
    converted: dict[str, Tensor] = {}
    unknown = []
    for key, value in state.items():
        name = key.removeprefix("module.")
        ours = official_to_ours(name)
        if ours is None or not isinstance(value, Tensor):
            unknown.append(key)
            continue
        converted[ours] = value
    if unknown:
        raise WeightsError(f"unexpected keys in the release's state dict: {', '.join(unknown[:10])}" + (" ..." if len(unknown) > 10 else ""))
    for name in list(converted):
        if name.endswith(".running_mean"):
            tracked = name.removesuffix("running_mean") + "num_batches_tracked"
            converted.setdefault(tracked, torch.tensor(0, dtype=torch.long))
    return converted


def check_state_dict(model: torch.nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Raise WeightsError naming missing, unexpected and mis-shaped keys, if any."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", shapes)):
        if items:
            shown = ", ".join(items[:8]) + (f" ... ({len(items)} in all)" if len(items) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise WeightsError(f"{source}: weights do not fit the network; " + "; ".join(problems))


def _load_file(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is the same user error
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path}: not a loadable weights file ({reason[:200]})") from None


def read_weights(path: str | Path) -> tuple[DetectorConfig, dict[str, Tensor]]:
    """Read any supported weights file into (config, state dict in our names).

    Supported: this project's checkpoint (inference or training), and the release's ``SRN.pth`` in
    any of its forms (which implies the paper's SRN-R50 config).
    """
    obj = _load_file(path)
    if isinstance(obj, Mapping) and "model" in obj and "config" in obj:
        try:
            config = _detector_config(obj["config"])
        except ConfigError as exc:
            raise WeightsError(f"{path}: bad config in checkpoint: {exc}") from None
        return config, dict(obj["model"])
    if is_official_state_dict(obj):
        try:
            return DetectorConfig(), convert_official_state_dict(obj)
        except WeightsError as exc:
            raise WeightsError(f"{path}: {exc}") from None
    raise WeightsError(f"{path}: neither an srn checkpoint nor the release's SRN.pth")


def _detector_config(data: Mapping[str, Any]) -> DetectorConfig:
    # Training checkpoints carry a larger config; only its model and postprocess sections matter here.
    model = from_dict(ModelConfig, data.get("model", {}), prefix="model.")
    post = from_dict(PostProcessConfig, data.get("postprocess", {}), prefix="postprocess.")
    return DetectorConfig(model=model, postprocess=post)


def save_checkpoint(model: torch.nn.Module, config: DetectorConfig, path: str | Path) -> None:
    """Write an inference checkpoint: config and weights in one file."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_save({"format": FORMAT, "version": FORMAT_VERSION, "config": to_dict(config), "model": state}, path)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, DetectorConfig]:
    """Build the network a weights file describes and load it strictly, in eval mode."""
    from srn.model import SRN

    config, state = read_weights(path)
    # The file holds every weight, so no ImageNet file is read.
    model = SRN.from_config(dataclasses.replace(config.model, pretrained=None))
    check_state_dict(model, state, str(path))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), config


def convert_official_file(src: str | Path, dst: str | Path) -> DetectorConfig:
    """``srn convert``: read the release's SRN.pth, check it against SRN-R50, write our checkpoint."""
    obj = _load_file(src)
    if not is_official_state_dict(obj):
        raise WeightsError(f"{src}: not the release's SRN.pth (no cls_subnet_pred / c2_lateral keys)")
    model, config = load_model(src)
    save_checkpoint(model, config, dst)
    return config
