"""MobileOne backbone, written from "MobileOne: An Improved One millisecond Mobile Backbone"
(Vasu et al., CVPR 2023, arXiv 2206.04040).

- Train time (paper Fig. 3): each MobileOne block is a sum of over-parameterised branches followed
  by ReLU: ``k`` parallel kxk conv-BN branches, a 1x1 conv-BN "scale" branch (only when the kernel
  is larger than 1) and a BN-only identity branch (only when the shapes allow a skip).
- A stage unit is a 3x3 depthwise MobileOne block followed by a 1x1 pointwise MobileOne block.
- Inference time (Sec. 3.1, structural re-parameterisation as in RepVGG): every branch is folded
  with its BN into a kxk kernel and bias (the 1x1 kernel zero-padded to kxk, the identity written as
  a centred one-hot kernel), and the branches are summed into one convolution, so the deployed net
  is a plain stack of conv + ReLU.
- Widths (paper Table 7): stages of 64, 128, 256, 512 base channels with per-stage multipliers
  alpha and ``[2, 8, 10, 1]`` blocks (stages 4 and 5 of the table share a width and are merged).
  S0 uses alpha = (0.75, 1, 1, 2) and k = 4 branches.

:func:`reparameterize_mobileone` works IN PLACE; ``student.prepare_for_export`` calls it on a copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from malm_edge.training.models.conv_layers import ConvBNAct, fuse_conv_bn_weights, init_conv_weights


@dataclass(frozen=True)
class MobileOneSpec:
    """Widths and depths of a MobileOne variant.

    Attributes:
        base_widths: Base channels of the four stages before the multipliers.
        width_multipliers: Per-stage multipliers (alpha in the paper).
        num_blocks: Stage units per stage (first unit of each stage has stride 2).
        num_conv_branches: k, the number of parallel kxk conv-BN branches at train time.
    """

    base_widths: tuple[int, int, int, int]
    width_multipliers: tuple[float, float, float, float]
    num_blocks: tuple[int, int, int, int]
    num_conv_branches: int


MOBILEONE_SPECS: dict[str, MobileOneSpec] = {
    "s0": MobileOneSpec((64, 128, 256, 512), (0.75, 1.0, 1.0, 2.0), (2, 8, 10, 1), 4),
    "s1": MobileOneSpec((64, 128, 256, 512), (1.5, 1.5, 2.0, 2.5), (2, 8, 10, 1), 1),
    "micro": MobileOneSpec((8, 16, 24, 32), (1.0, 1.0, 1.0, 1.0), (1, 2, 1, 1), 2),
}


class MobileOneBlock(nn.Module):
    """One MobileOne block: sum of conv-BN branches (+ 1x1 scale, + BN identity) then ReLU.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Kernel of the main branches (3 for depthwise blocks, 1 for pointwise ones).
        stride: Stride.
        groups: Convolution groups (``in_channels`` for depthwise).
        num_conv_branches: k, the number of parallel kxk conv-BN branches.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        num_conv_branches: int = 1,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.groups = kernel_size, stride, groups

        def conv_bn(kernel: int) -> ConvBNAct:
            return ConvBNAct(in_channels, out_channels, kernel, stride, groups, activation="identity")

        self.conv_branches = nn.ModuleList(conv_bn(kernel_size) for _ in range(num_conv_branches))
        self.scale_branch = conv_bn(1) if kernel_size > 1 else None
        has_identity = in_channels == out_channels and stride == 1
        self.identity_branch = nn.BatchNorm2d(out_channels) if has_identity else None
        self.reparam_conv: nn.Conv2d | None = None
        self.act = nn.ReLU()

    @property
    def is_reparameterized(self) -> bool:
        """True once :meth:`reparameterize` has replaced the branches with one convolution."""
        return self.reparam_conv is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.act(self.reparam_conv(x))  # (B, out, H / s, W / s)
        out = self.identity_branch(x) if self.identity_branch is not None else 0.0
        if self.scale_branch is not None:
            out = out + self.scale_branch(x)
        for branch in self.conv_branches:
            out = out + branch(x)  # (B, out, H / s, W / s)
        return self.act(out)

    def _identity_kernel(self) -> torch.Tensor:
        """The identity map as a centred one-hot kxk kernel, (out, in / groups, k, k)."""
        in_per_group = self.in_channels // self.groups
        reference = self.conv_branches[0].conv.weight
        kernel = torch.zeros(
            self.out_channels, in_per_group, self.kernel_size, self.kernel_size,
            dtype=reference.dtype, device=reference.device,
        )
        centre = self.kernel_size // 2
        for channel in range(self.out_channels):
            kernel[channel, channel % in_per_group, centre, centre] = 1.0
        return kernel

    def fused_kernel_and_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Fold every branch with its BN and sum them (eval-mode BN statistics).

        Returns:
            ``(kernel, bias)``: (out, in / groups, k, k) and (out,).
        """
        kernels, biases = [], []
        for branch in self.conv_branches:
            weight, bias = fuse_conv_bn_weights(branch.conv.weight, branch.conv.bias, branch.bn)
            kernels.append(weight)
            biases.append(bias)
        if self.scale_branch is not None:
            weight, bias = fuse_conv_bn_weights(
                self.scale_branch.conv.weight, self.scale_branch.conv.bias, self.scale_branch.bn
            )
            pad = self.kernel_size // 2
            kernels.append(F.pad(weight, [pad, pad, pad, pad]))  # 1x1 -> kxk, centred
            biases.append(bias)
        if self.identity_branch is not None:
            weight, bias = fuse_conv_bn_weights(self._identity_kernel(), None, self.identity_branch)
            kernels.append(weight)
            biases.append(bias)
        return torch.stack(kernels).sum(0), torch.stack(biases).sum(0)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Replace the branches by one equivalent convolution, IN PLACE. Idempotent.

        Equal to the branched block in eval mode (it uses the BN running statistics).
        """
        if self.reparam_conv is not None:
            return
        kernel, bias = self.fused_kernel_and_bias()
        conv = nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, self.stride,
            self.kernel_size // 2, groups=self.groups, bias=True,
        ).to(kernel.device, kernel.dtype)
        conv.weight.copy_(kernel)
        conv.bias.copy_(bias)
        self.reparam_conv = conv
        del self.conv_branches, self.scale_branch, self.identity_branch
        self.conv_branches, self.scale_branch, self.identity_branch = nn.ModuleList(), None, None


class MobileOne(nn.Module):
    """MobileOne feature extractor: stem block -> four stages of (depthwise, pointwise) units.

    Args:
        variant: ``s0``, ``s1`` or ``micro`` (a test-sized variant).
        width_mult: Extra multiplier applied on top of the variant's per-stage multipliers.

    Attributes:
        out_channels: Width of the returned feature map.
    """

    def __init__(self, variant: str = "s0", width_mult: float = 1.0) -> None:
        super().__init__()
        if variant not in MOBILEONE_SPECS:
            raise ValueError(f"unknown MobileOne variant {variant!r}; expected {sorted(MOBILEONE_SPECS)}")
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        self.variant = variant
        spec = MOBILEONE_SPECS[variant]
        k = spec.num_conv_branches
        widths = [
            max(8, int(base * alpha * width_mult))
            for base, alpha in zip(spec.base_widths, spec.width_multipliers)
        ]
        in_channels = min(spec.base_widths[0], widths[0])
        self.stem = MobileOneBlock(3, in_channels, 3, stride=2, num_conv_branches=k)
        stages = []
        for width, depth in zip(widths, spec.num_blocks):
            units = []
            for index in range(depth):
                stride = 2 if index == 0 else 1
                units.append(MobileOneBlock(in_channels, in_channels, 3, stride, in_channels, k))
                units.append(MobileOneBlock(in_channels, width, 1, 1, 1, k))
                in_channels = width
            stages.append(nn.Sequential(*units))
        self.stages = nn.Sequential(*stages)
        self.out_channels = in_channels
        init_conv_weights(self)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.stem(pixels)  # (B, C0, H / 2, W / 2)
        return self.stages(x)  # (B, out_channels, H / 32, W / 32)


def reparameterize_mobileone(model: nn.Module) -> int:
    """Re-parameterise every :class:`MobileOneBlock` inside ``model`` IN PLACE.

    Returns:
        The number of blocks re-parameterised by this call.
    """
    count = 0
    for block in list(model.modules()):
        if isinstance(block, MobileOneBlock) and not block.is_reparameterized:
            block.reparameterize()
            count += 1
    return count
