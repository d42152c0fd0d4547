"""The 3x3 convolution of the FPN and the head, dense or depthwise-separable, the residual adapter
of a pyramid level, and the factorisation of a dense kernel into a separable pair."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from srn.model.init import init_conv


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, separable: bool = False, dilation: int = 1) -> nn.Module:
    """A 3x3 convolution with bias and "same" padding (``dilation``: its taps ``dilation`` cells apart).

    ``separable``: a depthwise 3x3 followed by a pointwise 1x1, with no activation in between, so
    it replaces the dense layer one for one; a cell costs C_in * 9 + C_in * C_out multiply-adds
    instead of C_in * C_out * 9 (MobileNet, Howard et al. 2017, section 3.1). There is no
    BatchNorm: the head is shared by the C and P branches, whose statistics differ.
    """
    if not separable:
        return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation)
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=dilation, dilation=dilation, groups=in_channels),
        nn.Conv2d(in_channels, out_channels, 1),
    )


class ResidualAdapter(nn.Module):
    """``x + f(x)``, ``f`` two depthwise-separable 3x3 convolutions with a ReLU between them, whose
    last (pointwise) layer starts at zero: a new block starts as the identity, so a trained model
    given one computes exactly what it did, and a fine-tune adds capacity to one pyramid level only
    (the head is shared by all levels). Separable because it runs at the level's full resolution,
    stride 4 for level 0 (C * 9 + C * C multiply-adds a cell per layer).

    ``dilation`` spreads the 3x3 taps apart at the same cost: with dilation ``d`` the block sees
    ``4d + 1`` cells across instead of 5, context around a face (a context block, ``model.context_levels``).
    """

    def __init__(self, width: int, dilation: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(conv3x3(width, width, separable=True, dilation=dilation), nn.ReLU(inplace=True),
                                  conv3x3(width, width, separable=True, dilation=dilation))

    @property
    def last(self) -> nn.Conv2d:
        """The last layer of ``f`` (pointwise, linear): scaling it scales the residual."""
        return self.body[-1][-1]

    def reset_parameters(self, init: str) -> None:
        for module in self.body.modules():
            if isinstance(module, nn.Conv2d):
                init_conv(module, init)
        nn.init.zeros_(self.last.weight)
        nn.init.zeros_(self.last.bias)

    @torch.no_grad()
    def scale_residual_(self, factor: float) -> None:
        """Make the block compute ``x + factor * f(x)``."""
        self.last.weight.mul_(factor)
        self.last.bias.mul_(factor)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def factor_separable(weight: Tensor) -> tuple[Tensor, Tensor]:
    """The depthwise-separable pair nearest (in Frobenius norm, input channel by input channel) to a
    dense convolution kernel.

    A depthwise k x l followed by a pointwise 1x1 computes ``y_o = sum_i P[o, i] (D_i * x_i)``: for
    each input channel ``i`` the dense kernel's slice ``W[:, i]`` (C_out x k*l) is replaced by the
    rank-1 product ``P[:, i] D_i``. The best such product is the slice's first singular pair
    (Eckart-Young), split evenly between the two factors. A warm start for a separable model from a
    dense one; the rest of what the dense kernel did is left to training.

    Args:
        weight (Tensor[C_out, C_in, k, l]): the dense kernel.

    Returns:
        depthwise (Tensor[C_in, 1, k, l]) and pointwise (Tensor[C_out, C_in, 1, 1]).
    """
    c_out, c_in, k, l = weight.shape
    slices = weight.detach().float().permute(1, 0, 2, 3).reshape(c_in, c_out, k * l)  # (C_in, C_out, k*l)
    u, s, vh = torch.linalg.svd(slices, full_matrices=False)  # (C_in, C_out, r), (C_in, r), (C_in, r, k*l)
    root = s[:, :1].sqrt()  # (C_in, 1)
    depthwise = (vh[:, 0, :] * root).reshape(c_in, 1, k, l)
    pointwise = (u[:, :, 0] * root).T.reshape(c_out, c_in, 1, 1)  # (C_in, C_out) -> (C_out, C_in, 1, 1)
    return depthwise.to(weight.dtype), pointwise.to(weight.dtype)


def separable_from_dense(state: Mapping[str, Tensor], own: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Tensors of a separable model (``own``, its state dict) derived from a dense model's ``state``
    with :func:`factor_separable`, for the layers where the two differ:

    - a dense 3x3 ``name.weight``/``name.bias`` that is a :func:`conv3x3` pair ``name.0`` (depthwise)
      and ``name.1`` (pointwise) here: the pointwise layer keeps the dense bias, the depthwise one
      gets a zero bias;
    - a dense C x C k x l kernel of the same name that is depthwise here (the RFE's): its diagonal,
      ``W[c, c]``, the depthwise kernel nearest to it when no pointwise layer follows (a ReLU does).

    Tensors that already match in name and shape are not returned.
    """
    derived: dict[str, Tensor] = {}
    for name, tensor in own.items():
        if not name.endswith(".weight") or tensor.dim() != 4 or tensor.shape[1] != 1:
            continue
        prefix = name[: -len(".weight")]
        parent = prefix[: -len(".0")] if prefix.endswith(".0") else None
        dense = state.get(f"{parent}.weight") if parent is not None else None
        pointwise_name = f"{parent}.1.weight"
        if dense is not None and dense.dim() == 4 and pointwise_name in own and own[pointwise_name].shape == (dense.shape[0], dense.shape[1], 1, 1) \
                and tensor.shape == (dense.shape[1], 1, *dense.shape[2:]):
            depthwise, pointwise = factor_separable(dense)
            derived[name], derived[pointwise_name] = depthwise, pointwise
            if f"{prefix}.bias" in own:
                derived[f"{prefix}.bias"] = torch.zeros_like(own[f"{prefix}.bias"])
            if f"{parent}.bias" in state and f"{parent}.1.bias" in own:
                derived[f"{parent}.1.bias"] = state[f"{parent}.bias"]
            continue
        dense = state.get(name)
        if dense is not None and dense.dim() == 4 and dense.shape[0] == tensor.shape[0] and dense.shape[2:] == tensor.shape[2:] \
                and dense.shape[1] == dense.shape[0] and dense.shape != tensor.shape:
            derived[name] = torch.diagonal(dense).permute(2, 0, 1)[:, None].clone()  # (k, l, C) -> (C, 1, k, l)
    return derived
