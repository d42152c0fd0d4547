"""Weights on disk: the authors' ``SRN.pth`` and this project's self-describing checkpoint.

Nothing here unpickles arbitrary objects: every file is read with ``torch.load(weights_only=True)``,
and only after its first bytes show a ``torch.save`` archive. A file that is something else (a
photo, a text file, a truncated download) is refused in one line that says what it is; torch's own
messages, which suggest unsafe loading, are never shown.

The release's file is ``{'state_dict': {'module.<name>': tensor}}`` written by torch 0.3 (legacy
serialization, no ``num_batches_tracked``); :func:`convert_official_state_dict` maps its names onto
this project's modules. Our own file holds the detector's config next to its weights, so that
:func:`load_detector` needs no other argument.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from srn.atomic import atomic_save
from srn.config import ConfigError, DetectorConfig, ModelConfig, PostProcessConfig, from_dict, to_dict
from srn.errors import WeightsError, excerpt, one_line
from srn.paths import check_input_file, check_output_file

FORMAT = "srn"
FORMAT_VERSION = 1

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6
_PICKLE_MAGIC = b"\x80"  # the legacy format (torch 0.x, the release's SRN.pth) starts with a pickle
# What a file named as weights often is instead, by its first bytes.
_OTHER_CONTENT: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "it is a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "it is a PNG image"),
    (b"GIF8", "it is a GIF image"),
    (b"BM", "it is a BMP image"),
    (b"%PDF", "it is a PDF document"),
    (b"\x1f\x8b", "it is a gzip archive"),
)

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
    keys = {k.removeprefix("module.") for k in state if isinstance(k, str)}
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
        ours = official_to_ours(key.removeprefix("module.")) if isinstance(key, str) else None
        if ours is None or not isinstance(value, Tensor):
            unknown.append(excerpt(key) if not isinstance(key, str) or len(key) > 80 else key)
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


def _looks_like_text(head: bytes) -> bool:
    text = head.decode("utf-8", "replace")
    # A few replacement characters may come from a multi-byte character cut at the end of ``head``.
    odd = sum(1 for c in text if c == "\ufffd" or (c < " " and c not in "\t\n\r\f"))
    return bool(text) and odd <= 3


def _content(head: bytes) -> str:
    """What a file that is not a ``torch.save`` archive looks like, from its first bytes."""
    for magic, kind in _OTHER_CONTENT:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "it is a WebP image"
    return "it is a text file" if _looks_like_text(head) else "unrecognised content"


def _refusal(exc: Exception, is_zip: bool) -> str:
    """A short reason for a failed ``torch.load``, without torch's advice to load unsafely."""
    message = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in message:
        name = re.search(r"GLOBAL (\S+)", message)
        if name:
            return f"it holds a Python object ({name[1]}), which is never unpickled"
        return "damaged zip archive" if is_zip else "a pickle that torch.save did not write"
    if isinstance(exc, EOFError):
        return "truncated"
    return "damaged zip archive" if is_zip else "damaged legacy torch file"


def read_torch_file(path: str | Path, what: str = "weights file") -> Any:
    """``torch.load(path, weights_only=True)`` for files a user names, with one-line errors.

    Args:
        path: the file.
        what: what the file should be, for messages ("weights file", "training checkpoint").

    Raises:
        InputPathError: ``path`` is missing, a folder, a FIFO or device, unreadable or empty.
        WeightsError: ``"<path>: not a PyTorch <what> (<reason>)"``: another kind of file (a photo,
            text), a truncated or damaged archive, or a pickle holding Python objects.
    """
    path = check_input_file(path, what=what)
    with open(path, "rb") as handle:
        head = handle.read(4096)
    is_zip = head.startswith(_ZIP_MAGIC)
    if is_zip:
        reason = None
        try:
            with zipfile.ZipFile(path) as archive:
                if not any(name.endswith("/data.pkl") or name == "data.pkl" for name in archive.namelist()):
                    reason = "a zip archive that torch.save did not write"
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            reason = "truncated or damaged zip archive"
        if reason:
            raise WeightsError(f"{path}: not a PyTorch {what} ({reason})")
    elif not head.startswith(_PICKLE_MAGIC):
        raise WeightsError(f"{path}: not a PyTorch {what} ({_content(head)})")
    try:
        with warnings.catch_warnings():
            # The weights-only unpickler warns about pickle protocols it was not written for.
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle a file is the same user error
        raise WeightsError(f"{path}: not a PyTorch {what} ({_refusal(exc, is_zip)})") from None


def _tensor_dict(value: Any, path: str | Path, entry: str) -> dict[str, Tensor]:
    """``value`` as a state dict (names to tensors), or WeightsError naming the file and ``entry``."""
    if not isinstance(value, Mapping):
        raise WeightsError(f"{path}: its {entry} is a {type(value).__name__}, not a state dict of tensors")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, Tensor):
            raise WeightsError(f"{path}: its {entry} maps {excerpt(key)} to a {type(item).__name__}, not a tensor")
    return dict(value)


def _checkpoint_config(data: Any, path: str | Path) -> DetectorConfig:
    from srn.model.backbone import check_backbone

    try:
        config = _detector_config(data)
        check_backbone(config.model.backbone)
    except (ConfigError, TypeError, ValueError) as exc:
        raise WeightsError(f"{path}: bad config in checkpoint: {one_line(exc)}") from None
    return config


def read_weights(path: str | Path) -> tuple[DetectorConfig, dict[str, Tensor]]:
    """Read any supported weights file into (config, state dict in our names).

    Supported: this project's checkpoint (inference or training), and the release's ``SRN.pth`` in
    any of its forms (which implies the paper's SRN-R50 config).
    """
    obj = read_torch_file(path)
    if isinstance(obj, Mapping) and "model" in obj and "config" in obj:
        state = _tensor_dict(obj["model"], path, "'model' entry")
        return _checkpoint_config(obj["config"], path), state
    if is_official_state_dict(obj):
        try:
            return DetectorConfig(), convert_official_state_dict(obj)
        except WeightsError as exc:
            raise WeightsError(f"{path}: {exc}") from None
    raise WeightsError(f"{path}: neither an srn checkpoint nor the release's SRN.pth")


def _detector_config(data: Any) -> DetectorConfig:
    # Training checkpoints carry a larger config; only its model and postprocess sections matter here.
    if not isinstance(data, Mapping):
        raise ConfigError(f"a {type(data).__name__}, not a mapping")
    for section in ("model", "postprocess"):
        if not isinstance(data.get(section, {}), Mapping):
            raise ConfigError(f"{section}: a {type(data[section]).__name__}, not a mapping")
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
    try:
        # The file holds every weight, so no ImageNet file is read.
        model = SRN.from_config(dataclasses.replace(config.model, pretrained=None))
    except (ValueError, TypeError, IndexError) as exc:
        raise WeightsError(f"{path}: the checkpoint's config does not give a network ({one_line(exc)})") from None
    check_state_dict(model, state, str(path))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # names and shapes fit (checked above), so a dtype or layout does not
        raise WeightsError(f"{path}: weights do not fit the network ({one_line(exc)[:200]})") from None
    return model.to(device).eval(), config


def convert_official_file(src: str | Path, dst: str | Path) -> DetectorConfig:
    """``srn convert``: read the release's SRN.pth, check it against SRN-R50, write our checkpoint."""
    check_input_file(src, what="weights file")
    check_output_file(dst, inputs=(src,))
    obj = read_torch_file(src)
    if not is_official_state_dict(obj):
        raise WeightsError(f"{src}: not the release's SRN.pth (no cls_subnet_pred / c2_lateral keys)")
    model, config = load_model(src)
    save_checkpoint(model, config, dst)
    return config
