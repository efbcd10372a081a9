"""MobileNetV3 backbone, written from "Searching for MobileNetV3" (Howard et al., ICCV 2019, arXiv 1905.02244).

- Inverted residual ("bneck") blocks of MobileNetV2 (Sandler et al., 2018): 1x1 expansion, kxk
  depthwise convolution, optional squeeze-and-excite, linear 1x1 projection, residual when the
  stride is 1 and the widths match.
- Squeeze-and-excite with a hardsigmoid gate, bottleneck = expanded / 4 rounded to 8 (Sec. 5.3).
- Hardswish ``x * relu6(x + 3) / 6`` in the deeper half, ReLU in the early layers (Sec. 5.2).
- Layer tables: paper Table 1 (Large) and Table 2 (Small); the efficient last stage (Sec. 5.1)
  is a 1x1 conv to 6x the last width; the pooled 1x1 "conv NBN" (1024 / 1280 wide) lives in the
  student head (``StudentConfig.hidden_dim``), not here.
- Width multiplier: every width is ``make_divisible(width * width_mult, 8)``.

The network is fully convolutional, so any input size works; the student config's ``image_size``
only fixes the export shape. Module names differ from torchvision's; ``pretrained.py`` maps them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from malm_edge.training.models.conv_layers import (
    ConvBNAct,
    SqueezeExcite,
    init_conv_weights,
    make_divisible,
)

# torchvision's (and TF-slim's) MobileNetV3 batch-norm settings; needed for pretrained weights.
BN_EPS = 1e-3
BN_MOMENTUM = 0.1  # PyTorch default; torchvision uses 0.01, too slow for short distillation runs


@dataclass(frozen=True)
class BneckSpec:
    """One inverted residual block of a MobileNetV3 table (widths before the width multiplier).

    Attributes:
        kernel: Depthwise kernel size (3 or 5).
        expanded: Expansion width ("exp size").
        out: Output width.
        use_se: Whether the block has squeeze-and-excite.
        activation: ``relu`` ("RE") or ``hardswish`` ("HS").
        stride: Depthwise stride (1 or 2).
    """

    kernel: int
    expanded: int
    out: int
    use_se: bool
    activation: str
    stride: int


def _specs(rows: list[tuple[int, int, int, bool, str, int]]) -> tuple[BneckSpec, ...]:
    names = {"RE": "relu", "HS": "hardswish"}
    return tuple(BneckSpec(k, e, o, se, names[a], s) for k, e, o, se, a, s in rows)


# (kernel, exp size, out, SE, NL, stride), first conv width, as in the paper's tables.
MOBILENETV3_TABLES: dict[str, tuple[int, tuple[BneckSpec, ...]]] = {
    "large": (16, _specs([  # Table 1
        (3, 16, 16, False, "RE", 1),
        (3, 64, 24, False, "RE", 2),
        (3, 72, 24, False, "RE", 1),
        (5, 72, 40, True, "RE", 2),
        (5, 120, 40, True, "RE", 1),
        (5, 120, 40, True, "RE", 1),
        (3, 240, 80, False, "HS", 2),
        (3, 200, 80, False, "HS", 1),
        (3, 184, 80, False, "HS", 1),
        (3, 184, 80, False, "HS", 1),
        (3, 480, 112, True, "HS", 1),
        (3, 672, 112, True, "HS", 1),
        (5, 672, 160, True, "HS", 2),
        (5, 960, 160, True, "HS", 1),
        (5, 960, 160, True, "HS", 1),
    ])),
    "small": (16, _specs([  # Table 2
        (3, 16, 16, True, "RE", 2),
        (3, 72, 24, False, "RE", 2),
        (3, 88, 24, False, "RE", 1),
        (5, 96, 40, True, "HS", 2),
        (5, 240, 40, True, "HS", 1),
        (5, 240, 40, True, "HS", 1),
        (5, 120, 48, True, "HS", 1),
        (5, 144, 48, True, "HS", 1),
        (5, 288, 96, True, "HS", 2),
        (5, 576, 96, True, "HS", 1),
        (5, 576, 96, True, "HS", 1),
    ])),
    # Test-sized: every block kind (with/without expansion, SE, residual, both activations).
    "micro": (8, _specs([
        (3, 8, 8, True, "RE", 2),
        (3, 32, 16, False, "RE", 2),
        (5, 48, 16, True, "HS", 1),
        (5, 64, 24, True, "HS", 2),
        (3, 96, 32, True, "HS", 2),
    ])),
}


class InvertedResidual(nn.Module):
    """MobileNetV3 bneck: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 linear project (+ residual).

    Args:
        in_channels: Input width.
        expanded: Expansion width; no expansion conv when equal to ``in_channels``.
        out_channels: Output width.
        kernel: Depthwise kernel size.
        stride: Depthwise stride.
        use_se: Whether to add squeeze-and-excite after the depthwise conv.
        activation: ``relu`` or ``hardswish``.
    """

    def __init__(
        self,
        in_channels: int,
        expanded: int,
        out_channels: int,
        kernel: int,
        stride: int,
        use_se: bool,
        activation: str,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        bn = {"bn_eps": BN_EPS, "bn_momentum": BN_MOMENTUM}
        self.use_residual = stride == 1 and in_channels == out_channels
        self.expand = (
            ConvBNAct(in_channels, expanded, 1, activation=activation, **bn)
            if expanded != in_channels
            else None
        )
        self.depthwise = ConvBNAct(
            expanded, expanded, kernel, stride, groups=expanded, activation=activation, **bn
        )
        self.se = SqueezeExcite(expanded, make_divisible(expanded // 4, 8)) if use_se else None
        self.project = ConvBNAct(expanded, out_channels, 1, activation="identity", **bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(x) if self.expand is not None else x  # (B, exp, H, W)
        out = self.depthwise(out)  # (B, exp, H / s, W / s)
        if self.se is not None:
            out = self.se(out)
        out = self.project(out)  # (B, out, H / s, W / s)
        return out + x if self.use_residual else out


class MobileNetV3(nn.Module):
    """MobileNetV3 feature extractor: stem -> bneck blocks -> 1x1 head conv (no pooling, no classifier).

    Args:
        variant: ``small``, ``large`` or ``micro`` (a test-sized table).
        width_mult: Multiplier applied to every width, rounded with ``make_divisible(., 8)``.

    Attributes:
        out_channels: Width of the returned feature map.
    """

    def __init__(self, variant: str = "small", width_mult: float = 1.0) -> None:
        super().__init__()
        if variant not in MOBILENETV3_TABLES:
            raise ValueError(f"unknown MobileNetV3 variant {variant!r}; expected {sorted(MOBILENETV3_TABLES)}")
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        self.variant = variant
        stem_width, specs = MOBILENETV3_TABLES[variant]
        bn = {"bn_eps": BN_EPS, "bn_momentum": BN_MOMENTUM}

        def width(channels: int) -> int:
            return make_divisible(channels * width_mult, 8)

        in_channels = width(stem_width)
        self.stem = ConvBNAct(3, in_channels, 3, stride=2, activation="hardswish", **bn)
        blocks = []
        for spec in specs:
            out_channels = width(spec.out)
            blocks.append(InvertedResidual(
                in_channels, width(spec.expanded), out_channels, spec.kernel, spec.stride,
                spec.use_se, spec.activation,
            ))
            in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = 6 * in_channels
        self.head = ConvBNAct(in_channels, self.out_channels, 1, activation="hardswish", **bn)
        init_conv_weights(self)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.stem(pixels)  # (B, C0, H / 2, W / 2)
        x = self.blocks(x)  # (B, C_last, H / 32, W / 32)
        return self.head(x)  # (B, out_channels, H / 32, W / 32)
