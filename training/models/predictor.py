"""Masked-feature predictor T (MALM, arXiv 2305.11327, Sec 3.1, Eq. 1).

A small transformer encoder over the projected, mask-appended student features I_f predicts the
teacher's normalised feature at every patch; L_dist (losses.masked_distillation_loss) reads only the
masked positions. Paper: 2 layers, 2 heads, hidden 768 (= match_width).

Masked positions all carry the same mask token, so T gets its own learned positional table (as MAE's
decoder does); without it T could not tell masked patches apart. A final LayerNorm and a linear head
map back to the teacher's width W.
"""

from __future__ import annotations

import torch
from torch import nn

from malm_edge.training.models.config import MalmConfig
from malm_edge.training.models.vit import Transformer


class MaskedFeaturePredictor(nn.Module):
    """T: (B, 1+P, M) projected I_f -> (B, P, W) predicted teacher patch features.

    Args:
        config: Uses match_width, predictor_layers, predictor_heads, num_patches, vit_width.
    """

    def __init__(self, config: MalmConfig) -> None:
        super().__init__()
        width = config.match_width
        self.positional_embedding = nn.Parameter(0.02 * torch.randn(config.num_patches + 1, width))
        self.transformer = Transformer(width, config.predictor_layers, config.predictor_heads, 4.0, quick_gelu=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, config.vit_width)

    def forward(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """Predict features for every patch (cls output dropped)."""
        x = self.transformer(image_tokens + self.positional_embedding)  # (B, 1+P, M)
        return self.head(self.norm(x[:, 1:]))  # (B, P, W)
