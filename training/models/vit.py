"""CLIP-style Vision Transformer with MALM's patch masking (MALM, arXiv 2305.11327, Sec 3.1).

Parameter names follow OpenAI CLIP's `VisionTransformer` (conv1, class_embedding,
positional_embedding, ln_pre, transformer.resblocks.N.{ln_1, attn, ln_2, mlp.c_fc, mlp.c_proj},
ln_post, proj) so a CLIP `visual.*` state dict maps one-to-one (see clip_weights.py). Attention is
`nn.MultiheadAttention(batch_first=True)`, whose in_proj_weight / out_proj names match CLIP's.

Masking: for each image a random subset of round(P * mask_ratio) patches is masked; the transformer
encodes ONLY the cls token and the visible patches (Ĩ_f = {f̃_cls} ∪ {f̃_p∉M}); the outputs are then
scattered back to their P positions and masked positions are filled with a learnable `mask_token`,
giving I_f = {f̃_cls, f̃_1..f̃_P}. The mask token is added after `ln_post` (it stands in for an
output feature, not an input patch), so it carries no positional information: MALM adds this
ViT's positional table, projected to the matching width, to every patch token before ψ
(malm.py, `match_positions`), as the predictor T adds its own.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from malm_edge.training.models.config import MalmConfig


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), the activation OpenAI CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Mlp(nn.Module):
    """CLIP's MLP (c_fc -> activation -> c_proj)."""

    def __init__(self, width: int, hidden: int, quick_gelu: bool) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = QuickGELU() if quick_gelu else nn.GELU()
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block, batch-first."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, quick_gelu: bool) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = Mlp(width, int(width * mlp_ratio), quick_gelu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)  # (B, T, W)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of residual attention blocks (CLIP's `transformer.resblocks`)."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, quick_gelu: bool) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio, quick_gelu) for _ in range(layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


def random_patch_mask(
    batch: int, num_patches: int, mask_ratio: float, device: torch.device, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A random mask with exactly round(P * mask_ratio) masked patches per image.

    Returns:
        (B, P) bool, True = masked.
    """
    num_masked = int(round(num_patches * mask_ratio))
    if num_masked == 0:
        return torch.zeros(batch, num_patches, dtype=torch.bool, device=device)
    noise = torch.rand(batch, num_patches, generator=generator, device=generator.device if generator else device)
    ranks = noise.to(device).argsort(dim=1).argsort(dim=1)  # (B, P) rank of each patch's noise
    return ranks < num_masked


def resize_positional_embedding(pos: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Bicubically resample a (1 + g*g, W) ViT positional table to (1 + grid_size**2, W).

    The cls row is kept as is; the patch rows are treated as a g x g image.
    """
    old_grid = int(math.isqrt(pos.shape[0] - 1))
    if old_grid * old_grid != pos.shape[0] - 1:
        raise ValueError(f"positional embedding of {pos.shape[0]} rows is not 1 + a square grid")
    if old_grid == grid_size:
        return pos
    cls_pos, patch_pos = pos[:1], pos[1:]
    width = pos.shape[1]
    grid = patch_pos.reshape(1, old_grid, old_grid, width).permute(0, 3, 1, 2).float()  # (1, W, g, g)
    grid = F.interpolate(grid, size=(grid_size, grid_size), mode="bicubic", align_corners=False)
    patch_pos = grid.permute(0, 2, 3, 1).reshape(grid_size * grid_size, width).to(pos.dtype)
    return torch.cat([cls_pos, patch_pos], dim=0)


class VisionTransformer(nn.Module):
    """CLIP ViT with visible-only encoding of masked images.

    Args:
        config: Uses image_size, patch_size, vit_width, vit_layers, vit_heads, vit_mlp_ratio,
            vit_output_dim, quick_gelu.
    """

    def __init__(self, config: MalmConfig) -> None:
        super().__init__()
        width = config.vit_width
        self.image_size = config.image_size
        self.patch_size = config.patch_size
        self.num_patches = config.num_patches
        scale = width**-0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=config.patch_size, stride=config.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.num_patches + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(
            width, config.vit_layers, config.vit_heads, config.vit_mlp_ratio, config.quick_gelu
        )
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, config.vit_output_dim))
        self.mask_token = nn.Parameter(0.02 * torch.randn(width))

    @property
    def width(self) -> int:
        """Hidden width W."""
        return self.class_embedding.shape[0]

    def _patch_embed(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"expected {self.image_size}x{self.image_size} images, got {tuple(pixels.shape[-2:])}")
        x = self.conv1(pixels)  # (B, W, g, g)
        x = x.flatten(2).transpose(1, 2)  # (B, P, W)
        return x + self.positional_embedding[1:].to(x.dtype)

    def forward(
        self, pixels: torch.Tensor, mask_ratio: float = 0.0, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Encode images, masking a random subset of patches when mask_ratio > 0.

        Args:
            pixels: (B, 3, S, S) normalised images.
            mask_ratio: Fraction of patches to mask per image.
            generator: Optional RNG for the mask.

        Returns:
            tokens: (B, 1 + P, W) cls + patch features after ln_post, mask token at masked positions.
            mask: (B, P) bool, True = masked.
            pooled: (B, vit_output_dim) ln_post(cls) @ proj (CLIP's image feature).
        """
        patches = self._patch_embed(pixels)  # (B, P, W)
        batch, num_patches, width = patches.shape
        mask = random_patch_mask(batch, num_patches, mask_ratio, pixels.device, generator)  # (B, P)
        num_visible = num_patches - int(round(num_patches * mask_ratio))  # same count for every image
        # stable sort puts visible (False) patches first, in their original order
        order = mask.to(torch.int8).argsort(dim=1, stable=True)  # (B, P)
        visible_idx = order[:, :num_visible]  # (B, V)
        visible = patches.gather(1, visible_idx.unsqueeze(-1).expand(-1, -1, width))  # (B, V, W)
        cls = (self.class_embedding + self.positional_embedding[0]).to(patches.dtype)
        x = torch.cat([cls.expand(batch, 1, width), visible], dim=1)  # (B, 1 + V, W)
        x = self.ln_post(self.transformer(self.ln_pre(x)))  # (B, 1 + V, W)
        tokens = self.mask_token.to(x.dtype).expand(batch, num_patches, width).clone()  # (B, P, W)
        tokens = tokens.scatter(1, visible_idx.unsqueeze(-1).expand(-1, -1, width), x[:, 1:])
        tokens = torch.cat([x[:, :1], tokens], dim=1)  # (B, 1 + P, W)
        pooled = x[:, 0] @ self.proj.to(x.dtype)  # (B, D)
        return {"tokens": tokens, "mask": mask, "pooled": pooled}
