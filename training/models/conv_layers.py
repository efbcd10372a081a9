"""Convolution building blocks shared by the compact student backbones.

Every block here uses only operators that ExecuTorch's XNNPACK delegate and CoreML run natively:
convolution (dense and depthwise), batch norm (folded into the convolution before export), ReLU,
hardswish, hardsigmoid, a spatial mean with ``keepdim=True`` (XNNPACK global average pooling),
elementwise add and mul.

Batch-norm folding follows the usual identity for an inference-mode BN after a convolution:
``BN(W * x + b) = (gamma / sigma) W * x + beta + (b - mu) gamma / sigma`` with
``sigma = sqrt(running_var + eps)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to the nearest multiple of ``divisor`` (MobileNetV2/V3 width rule).

    The result never drops more than 10% below ``value`` and never below ``min_value``.

    Args:
        value: The unrounded channel count (e.g. ``base_channels * width_mult``).
        divisor: The multiple to round to.
        min_value: Lower bound; defaults to ``divisor``.

    Returns:
        The rounded channel count.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def fuse_conv_bn_weights(
    conv_weight: torch.Tensor, conv_bias: torch.Tensor | None, bn: nn.BatchNorm2d
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an inference-mode BatchNorm2d into the preceding convolution's weight and bias.

    Args:
        conv_weight: Convolution kernel, (out, in / groups, kh, kw).
        conv_bias: Convolution bias (out,) or None.
        bn: The batch norm applied to the convolution's output (its running statistics are used).

    Returns:
        ``(weight, bias)`` of one convolution equal to ``bn(conv(x))`` in eval mode.
    """
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (out,)
    bias = conv_bias if conv_bias is not None else torch.zeros_like(bn.running_mean)
    fused_weight = conv_weight * scale.reshape(-1, 1, 1, 1)  # (out, in/g, kh, kw)
    fused_bias = bn.bias + (bias - bn.running_mean) * scale  # (out,)
    return fused_weight.detach(), fused_bias.detach()


class HardSigmoid(nn.Module):
    """``relu6(x + 3) / 6``, the piecewise-linear sigmoid of MobileNetV3 (Howard et al., 2019, Eq. 1).

    Written out rather than ``F.hardsigmoid``: the aten op's decomposition lifts its scalars into
    tensor constants that ExecuTorch copies outside the XNNPACK delegate; this form lowers to one
    delegated add, clamp and div. Same values as ``F.hardsigmoid``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x + 3.0) / 6.0


def make_activation(name: str) -> nn.Module:
    """Build an activation by name: ``relu``, ``hardswish`` or ``identity``."""
    activations = {"relu": nn.ReLU, "hardswish": nn.Hardswish, "identity": nn.Identity}
    if name not in activations:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(activations)}")
    return activations[name]()


class ConvBNAct(nn.Module):
    """Convolution (no bias) -> BatchNorm2d -> activation, foldable into a single biased convolution.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Square kernel size; padding is ``kernel_size // 2`` ("same" at stride 1).
        stride: Convolution stride.
        groups: Convolution groups (``groups == in_channels`` for depthwise).
        activation: ``relu``, ``hardswish`` or ``identity``.
        bn_eps: Batch-norm epsilon (torchvision's MobileNetV3 uses 1e-3).
        bn_momentum: Batch-norm momentum (torchvision's MobileNetV3 uses 0.01).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        activation: str = "relu",
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False
        )
        self.bn: nn.Module = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
        self.act = make_activation(activation)

    @property
    def is_fused(self) -> bool:
        """True once :meth:`fuse_bn` has folded the batch norm into the convolution."""
        return isinstance(self.bn, nn.Identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))  # (B, out, H / stride, W / stride)

    @torch.no_grad()
    def fuse_bn(self) -> None:
        """Fold the batch norm into the convolution, in place (eval semantics: running statistics).

        Idempotent. Training a fused block afterwards is possible but no longer normalises.
        """
        if self.is_fused:
            return
        assert isinstance(self.bn, nn.BatchNorm2d)
        weight, bias = fuse_conv_bn_weights(self.conv.weight, self.conv.bias, self.bn)
        conv = self.conv
        fused = nn.Conv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            dilation=conv.dilation, groups=conv.groups, bias=True,
        ).to(weight.device, weight.dtype)
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
        self.conv = fused
        self.bn = nn.Identity()


class SqueezeExcite(nn.Module):
    """Squeeze-and-excite with a hardsigmoid gate (Hu et al., 2018, as adapted in MobileNetV3 Sec. 5.3).

    ``x * hardsigmoid(fc2(relu(fc1(mean_hw(x)))))``; the two "fully connected" layers are 1x1
    convolutions on the (B, C, 1, 1) pooled tensor so that the whole block stays 4-D and lowers to
    XNNPACK global average pooling plus convolutions.

    Args:
        channels: Channels of the input (and output).
        squeeze_channels: Bottleneck width.
    """

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.gate = HardSigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        scale = self.gate(self.fc2(self.act(self.fc1(scale))))  # (B, C, 1, 1)
        return x * scale  # (B, C, H, W)


def fuse_all_conv_bn(module: nn.Module) -> int:
    """Fold every :class:`ConvBNAct` inside ``module`` in place.

    Returns:
        The number of blocks folded by this call.
    """
    folded = 0
    for block in list(module.modules()):
        if isinstance(block, ConvBNAct) and not block.is_fused:
            block.fuse_bn()
            folded += 1
    return folded


def init_conv_weights(module: nn.Module) -> None:
    """Initialise as MobileNetV3/torchvision do: Kaiming (fan-out) convs, unit BN, small linear."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, 0.0, 0.01)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
