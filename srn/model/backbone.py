"""Backbones that return C2..C5 (strides 4, 8, 16, 32), built with torchvision's builders.

:data:`BACKBONES` is the one list of backbones: a name maps to a builder and the channel counts of
C2..C5. ``model.backbone`` is checked against it (:func:`check_backbone`) when a network is built and
when a checkpoint's config is read; a new backbone is one :func:`register_backbone` here.
"""

from __future__ import annotations

import http.client
import os
import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import torch
import torchvision
from torch import Tensor, nn

from srn.errors import ConfigError, WeightsError, brief, excerpt, printable

RESNET_DEPTHS = (18, 34, 50, 101, 152)


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without its classifier. Module names are torchvision's (``conv1``,
    ``bn1``, ``layer1``..``layer4``), so ImageNet files and the release's weights load by name."""

    def __init__(self, depth: int = 50, frozen_stem: bool = True) -> None:
        super().__init__()
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"ResNet depth must be one of {RESNET_DEPTHS}, got {depth}")
        net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = 4 if depth >= 50 else 1
        self.out_channels = [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
        self.frozen_stem = frozen_stem
        if frozen_stem:
            self.conv1.requires_grad_(False)
            self.bn1.requires_grad_(False)

    def train(self, mode: bool = True) -> ResNetBackbone:
        super().train(mode)
        if self.frozen_stem:
            self.bn1.eval()  # the stem's BN statistics stay frozen, as in the release
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]


class MobileNetV2Backbone(nn.Module):
    """torchvision's MobileNetV2 ``features[:18]``, split at strides 4, 8, 16 and 32.

    The indices of ``features`` are kept, so torchvision's ImageNet file loads by name.
    """

    # features[a:b] of each stage; outputs have 24, 32, 96 and 320 channels.
    _SPLITS = (0, 4, 7, 14, 18)

    def __init__(self, frozen_stem: bool = True) -> None:
        super().__init__()
        net = torchvision.models.mobilenet_v2(weights=None)
        self.features = net.features[: self._SPLITS[-1]]
        self.out_channels = [24, 32, 96, 320]
        self.frozen_stem = frozen_stem
        if frozen_stem:
            self.features[0].requires_grad_(False)

    def train(self, mode: bool = True) -> MobileNetV2Backbone:
        super().train(mode)
        if self.frozen_stem:
            self.features[0].eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs = []
        for start, end in zip(self._SPLITS[:-1], self._SPLITS[1:]):
            for index in range(start, end):
                x = self.features[index](x)
            outputs.append(x)
        return outputs


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone.

    Attributes:
        build: ``build(frozen_stem) -> module`` whose forward returns ``[C2, C3, C4, C5]`` and whose
            ``out_channels`` lists their channels.
        out_channels: the channels of C2..C5 (what the FPN and the first step are built for).
    """

    build: Callable[[bool], nn.Module]
    out_channels: tuple[int, int, int, int]


BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(name: str, out_channels: tuple[int, int, int, int]) -> Callable[[Callable[[bool], nn.Module]], Callable[[bool], nn.Module]]:
    """Decorator: register ``build(frozen_stem) -> nn.Module`` as backbone ``name``."""

    def register(build: Callable[[bool], nn.Module]) -> Callable[[bool], nn.Module]:
        BACKBONES[name] = BackboneSpec(build, out_channels)
        return build

    return register


for _depth in RESNET_DEPTHS:
    _expansion = 4 if _depth >= 50 else 1
    register_backbone(f"resnet{_depth}", tuple(c * _expansion for c in (64, 128, 256, 512)))(
        lambda frozen_stem, depth=_depth: ResNetBackbone(depth, frozen_stem=frozen_stem)
    )
register_backbone("mobilenet_v2", (24, 32, 96, 320))(lambda frozen_stem: MobileNetV2Backbone(frozen_stem=frozen_stem))


def check_backbone(name: str) -> BackboneSpec:
    """The registered backbone ``name``.

    Raises:
        ConfigError: ``"model.backbone: unknown backbone 'x'; choose one of ..."``.
    """
    if name not in BACKBONES:
        raise ConfigError(f"model.backbone: unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name]


def build_backbone(name: str, frozen_stem: bool = True) -> nn.Module:
    """The backbone registered as ``name`` (:data:`BACKBONES`)."""
    return check_backbone(name).build(frozen_stem)


def load_imagenet_weights(backbone: nn.Module, name: str, source: str | Path) -> None:
    """Initialise ``backbone`` from ImageNet weights.

    Args:
        source: ``"imagenet"`` for torchvision's weights (taken from torch's hub cache, downloaded
            there only if absent), or the path of a torchvision-layout state dict file.

    Raises:
        WeightsError: the weights are not in the hub cache and cannot be downloaded (no network,
            say): one line that names the file, the address it comes from, and the two places to
            put it (the hub cache, or a path that ``model.pretrained`` names).
    """
    if str(source) == "imagenet":
        state = _hub_weights(name)
    else:
        state = _read_state_dict(Path(source))
    own = backbone.state_dict()
    # The classifier (fc / classifier / features.18) has no place in a detector backbone.
    state = {k: v for k, v in state.items() if k in own}
    missing = sorted(set(own) - set(state))
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing:
        raise WeightsError(f"{printable(source)}: ImageNet weights lack {len(missing)} backbone keys, e.g. {excerpt(missing[:3])}")
    try:
        backbone.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of another shape under a known name
        raise WeightsError(f"{printable(source)}: ImageNet weights do not fit the {name} backbone "
                           f"({brief(str(exc), 160)})") from None


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """The torchvision-layout state dict in ``path``, read with ``torch.load(weights_only=True)``.

    Raises:
        WeightsError: one line: the file is missing, is not a file ``torch.save`` wrote (text, a
            photo), holds Python objects (never unpickled; torch's own advice to load them unsafely
            is not repeated), or holds something other than a mapping of names to tensors.
    """
    if not path.is_file():
        raise WeightsError(f"{printable(path)}: ImageNet weights file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the weights-only unpickler warns about pickle protocols
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle a file is the same user error
        held = re.search(r"GLOBAL (\S+)", str(exc)) if isinstance(exc, pickle.UnpicklingError) else None
        reason = f"it holds a Python object ({printable(held[1])[:80]}), which is never unpickled" if held else \
            "not a file that torch.save wrote"
        raise WeightsError(f"{printable(path)}: not a state dict of ImageNet weights ({reason})") from None
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise WeightsError(f"{printable(path)}: not a state dict of ImageNet weights (it holds a {type(state).__name__}, "
                           "not names mapped to tensors)")
    return dict(state)


def hub_cache_path(url: str) -> Path:
    """Where torch's hub cache keeps the file of ``url``: ``$TORCH_HOME/hub/checkpoints/<file>``
    (``~/.cache/torch`` when ``TORCH_HOME`` is not set)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlsplit(url).path)


def _hub_weights(name: str) -> dict[str, Tensor]:
    """torchvision's ImageNet weights of backbone ``name``, from the hub cache or downloaded into it."""
    url = torchvision.models.get_model_weights(name).IMAGENET1K_V1.url
    cached = hub_cache_path(url)
    if not cached.is_file():
        try:
            # Not torch.hub.load_state_dict_from_url: it prints "Downloading ..." before it fails.
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(cached), progress=False)
        except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts and SSL errors are OSErrors
            reason = getattr(exc, "reason", None) or exc
            raise WeightsError(
                f"{cached.name}: the ImageNet weights of {name} are not in torch's hub cache and could not be downloaded "
                f"({' '.join(str(reason).split())}); download {url} and put it at {cached}, "
                "or set model.pretrained to the path of a copy"
            ) from None
    try:
        return torch.load(cached, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
        raise WeightsError(f"{cached}: the cached ImageNet weights of {name} cannot be read ({type(exc).__name__}); "
                           f"delete the file, and download {url} again") from None
