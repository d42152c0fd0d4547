"""The Selective Refinement Network: backbone, two feature branches, one shared head, anchors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields, replace

import torch
from torch import Tensor, nn

from srn.anchors import AnchorGenerator
from srn.config import ModelConfig
from srn.model.backbone import build_backbone, load_imagenet_weights
from srn.model.fpn import FPN, ExtraLayers, FirstStepFeatures
from srn.model.head import SRNHead
from srn.model.init import INITS, init_conv
from srn.model.layers import ResidualAdapter
from srn.model.outputs import SRNOutputs

NUM_LEVELS = 6
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SRN(nn.Module):
    """SRN returning raw outputs; it applies no sigmoid and has no train/test switch.

    ``forward(images)`` takes RGB images (Tensor[N, 3, H, W], uint8, or float in [0, 1]), normalises
    them with the ImageNet mean and std held as buffers, and returns :class:`srn.model.SRNOutputs`,
    a NamedTuple of per-level lists (level l has stride 4 * 2**l and R_l = H_l * W_l * A anchors):

    - ``step1_logits`` (list[Tensor[N, R_l] | None]) and ``step1_deltas`` (list[Tensor[N, R_l, 4] | None]):
      the first step, from the C branch; ``None`` on levels that are neither STC nor STR levels.
    - ``step2_logits`` (list[Tensor[N, R_l]]) and ``step2_deltas`` (list[Tensor[N, R_l, 4]]): the second
      step, from the FPN.
    - ``anchors`` (list[Tensor[R_l, 4]]): (x1, y1, x2, y2), shared by the images of the batch.

    The light design (``srn/configs/srn_lite.yaml``, measured in ``benchmarks/lite_design.md``) keeps
    STC, STR and the RFE and changes only the cost of their convolutions: ``separable_head`` makes
    the head's 3x3 layers depthwise-separable and the RFE's k x l layers depthwise,
    ``separable_fpn`` does the same for the FPN's output layers, and ``tower_convs`` sets the 3x3
    layers per head tower (2 in the paper). The defaults build the paper's network.

    ``adapter_levels``: levels whose FPN output passes through a :class:`srn.model.layers.ResidualAdapter`
    before the head (the second step only), zero at the start: capacity for one level in a fine-tune of
    a trained model, which starts as that model exactly (``recipes/default_model_crowd_level0_adapter.yaml``).
    ``context_levels``: levels that get a second such block after it, its 3x3 taps ``context_dilation``
    cells apart, so that a level's faces are classified with their surroundings (a small face is told from
    background by the head and shoulders around it: Hu and Ramanan, "Finding Tiny Faces", CVPR 2017).
    Adapters and context blocks are the model's *residual blocks*: :meth:`residual_blocks`.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        width: int = 256,
        stc_levels: Sequence[int] = (0, 1, 2),
        str_levels: Sequence[int] = (3, 4, 5),
        rfe: bool = True,
        anchor_scales: Sequence[float] = (2.0, 2.828427),
        anchor_ratio: float = 1.25,
        frozen_stem: bool = True,
        prior_prob: float = 0.01,
        init: str = "normal",
        tower_convs: int = 2,
        separable_head: bool = False,
        separable_fpn: bool = False,
        adapter_levels: Sequence[int] = (),
        context_levels: Sequence[int] = (),
        context_dilation: int = 3,
    ) -> None:
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        for name, levels in (("stc_levels", stc_levels), ("str_levels", str_levels), ("adapter_levels", adapter_levels),
                             ("context_levels", context_levels)):
            if any(l not in range(NUM_LEVELS) for l in levels):
                raise ValueError(f"{name} must be a subset of 0..{NUM_LEVELS - 1}, got {tuple(levels)}")
        self.stc_levels = tuple(sorted(set(stc_levels)))
        self.str_levels = tuple(sorted(set(str_levels)))
        first_step_levels = sorted(set(self.stc_levels) | set(self.str_levels))

        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

        self.backbone = build_backbone(backbone, frozen_stem=frozen_stem)
        c5_channels = self.backbone.out_channels[-1]
        # C6/C7 only feed the first step, so they exist only when a first-step level needs them.
        max_level = max(first_step_levels, default=-1)
        self.extra = ExtraLayers(c5_channels, c5_channels // 2, width, with_c7=max_level >= 5) if max_level >= 4 else None
        c_channels = self.backbone.out_channels + [c5_channels // 2, width]
        self.first_step = FirstStepFeatures(c_channels, width, first_step_levels)
        self.fpn = FPN(self.backbone.out_channels, width, separable=separable_fpn)
        self.anchor_generator = AnchorGenerator(scales=anchor_scales, ratio=anchor_ratio)
        self.head = SRNHead(
            width,
            self.anchor_generator.num_anchors_per_cell,
            rfe=rfe,
            prior_prob=prior_prob,
            tower_convs=tower_convs,
            separable=separable_head,
        )
        self.adapter_levels = tuple(sorted(set(adapter_levels)))
        self.adapters = nn.ModuleDict({str(level): ResidualAdapter(width) for level in self.adapter_levels})
        self.context_levels = tuple(sorted(set(context_levels)))
        self.contexts = nn.ModuleDict({str(level): ResidualAdapter(width, dilation=context_dilation) for level in self.context_levels})
        self._init_new_layers(init)

    @classmethod
    def from_config(cls, config: ModelConfig) -> SRN:
        # Every field but the backbone's initialisation is a constructor argument of the same name.
        arguments = {f.name: getattr(config, f.name) for f in fields(config) if f.name != "pretrained"}
        model = cls(**arguments)
        if config.pretrained:
            load_imagenet_weights(model.backbone, config.backbone, config.pretrained)
        return model

    def _init_new_layers(self, init: str) -> None:
        for module in (self.extra, self.first_step, self.fpn):
            if module is None:
                continue
            for conv in module.modules():
                if isinstance(conv, nn.Conv2d):
                    init_conv(conv, init)
        self.head.reset_parameters(init)
        for block in self.residual_blocks().values():
            block.reset_parameters(init)

    def residual_blocks(self) -> dict[str, ResidualAdapter]:
        """The adapters and context blocks by the prefix of their tensors' names (``"adapters.0."``,
        ``"contexts.0."``): blocks that start as the identity, so a checkpoint without one loads as
        the same model (:func:`srn.engine.checkpoint.init_from`)."""
        return {f"{group}.{level}.": block for group in ("adapters", "contexts") for level, block in getattr(self, group).items()}

    def normalize(self, images: Tensor) -> Tensor:
        if images.dtype == torch.uint8:
            images = images.to(self.pixel_mean.dtype).div_(255.0)
        # In the network's dtype: float32 [0, 1] images are normalised in float32 and then cast
        # for a bf16 inference copy (srn.inference.runner).
        return ((images - self.pixel_mean) / self.pixel_std).to(self.pixel_mean.dtype)

    def forward(self, images: Tensor) -> SRNOutputs:
        x = self.normalize(images)
        c_features = self.backbone(x)
        p_features = self.fpn(c_features)
        for blocks in (self.adapters, self.contexts):  # a level's adapter, then its context block
            p_features = [blocks[str(level)](p) if str(level) in blocks else p for level, p in enumerate(p_features)]
        if self.extra is not None:
            c_features = c_features + self.extra(c_features[-1])
        first = self.first_step(c_features)

        outputs = SRNOutputs.empty()
        for level, p in enumerate(p_features):
            if level in first:
                # The head is shared by both steps: run it once on the two branches stacked.
                n = p.shape[0]
                logits, deltas = self.head(torch.cat([first[level], p], dim=0))  # (2N, ...)
                outputs.step1_logits.append(logits[:n])
                outputs.step1_deltas.append(deltas[:n])
                outputs.step2_logits.append(logits[n:])
                outputs.step2_deltas.append(deltas[n:])
            else:
                logits, deltas = self.head(p)
                outputs.step1_logits.append(None)
                outputs.step1_deltas.append(None)
                outputs.step2_logits.append(logits)
                outputs.step2_deltas.append(deltas)
        outputs.anchors.extend(self.anchor_generator.grid_anchors(
            [tuple(p.shape[-2:]) for p in p_features], p_features[0].device
        ))
        return outputs


def build_model(config: ModelConfig | None = None, **overrides) -> SRN:
    """Build SRN from a :class:`ModelConfig` (the paper's SRN-R50 by default)."""
    config = replace(config or ModelConfig(), **overrides)
    return SRN.from_config(config)
