"""Two-level image-recipe matching module ψ / ψ' (MALM, arXiv 2305.11327, Sec 3.2, Eqs. 3-10).

Used only in training. Inputs are the (mask-appended, projected) image features I_f (B, 1+P, M) and
the recipe token features R_f (B, S, d) of the SAME pairs (row i of each is a true pair):

- ψ (Eqs. 3-4): a transformer decoder with image tokens as queries and R_f (projected to M) as
  keys/values gives I_att (B, 1+P, M) and A_I (B, 1+P, S), the last layer's cross-attention
  weights averaged over heads (zero at padded recipe tokens).
- ψ' (Eqs. 5-6): a transformer decoder with the recipe tokens as queries and I_att as keys/values
  gives R_att (B, S, M).
- Global (Eq. 8): I_g = I_att[:, cls], R_g = mean of R_att over the VALID recipe tokens.
- Local (Eq. 9): R_lp[b, p] = Σ_s A_I[b, p, s] R_att[b, s] for each patch p (cls excluded).
  The paper writes the mean over s of A_I[:, p, :] ⊙ R_att, i.e. this sum divided by S; the
  factor is irrelevant because both sides are L2-normalised before the contrastive loss.

Choices where the paper is terse (the lead should know them):
- "Transformer decoder" is taken literally: pre-norm layers with self-attention over the queries,
  cross-attention, MLP, residuals; I_att / R_att are the stack outputs (after a final LayerNorm),
  not the bare A·V of Eq. 4.
- ψ/ψ' run once per true pair (B runs, not B²). Contrastive negatives for pair i are then the
  features of the other pairs k (I_att[k], R_lp[k]), each computed from its own pair; this is the
  literal reading of Eqs. 8 and 10 (Z sums over the batch index k). A consequence: I_att[i] already
  mixes in recipe i, so L_GC / L_LC are regularisers of the towers, while retrieval itself is learned
  by L_itc on the unimodal embeddings.
"""

from __future__ import annotations

import torch
from torch import nn

from malm_edge.training.models.config import MalmConfig
from malm_edge.training.models.recipe_encoder import _safe_mask, masked_mean


class CrossAttentionLayer(nn.Module):
    """Pre-norm decoder layer (self-attention, cross-attention returning its weights, MLP)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(width)
        self.self_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm_query = nn.LayerNorm(width)
        self.norm_memory = nn.LayerNorm(width)
        self.cross_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        query_padding: torch.Tensor | None,
        memory_padding: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, Q, M), memory (B, K, M), paddings (B, Q) / (B, K) True = ignore.

        Returns:
            (B, Q, M) outputs and (B, Q, K) head-averaged cross-attention weights.
        """
        h = self.norm_self(x)
        x = x + self.self_attn(h, h, h, key_padding_mask=query_padding, need_weights=False)[0]
        memory = self.norm_memory(memory)
        attended, weights = self.cross_attn(
            self.norm_query(x), memory, memory, key_padding_mask=memory_padding,
            need_weights=True, average_attn_weights=True,
        )  # (B, Q, M), (B, Q, K)
        x = x + attended
        return x + self.mlp(self.norm_mlp(x)), weights


class MatchingDecoder(nn.Module):
    """A stack of CrossAttentionLayer with a final LayerNorm; returns the last layer's attention."""

    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CrossAttentionLayer(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        query_padding: torch.Tensor | None = None,
        memory_padding: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Q, M), (B, K, M) -> (B, Q, M), (B, Q, K)."""
        weights = None
        for layer in self.layers:
            x, weights = layer(x, memory, query_padding, memory_padding)
        return self.norm(x), weights


class TwoLevelMatching(nn.Module):
    """ψ and ψ' with the global and local feature read-outs.

    Args:
        config: Uses recipe_width, match_width, matching_layers, matching_heads.
    """

    def __init__(self, config: MalmConfig) -> None:
        super().__init__()
        self.recipe_proj = nn.Linear(config.recipe_width, config.match_width)
        self.psi = MatchingDecoder(config.match_width, config.matching_layers, config.matching_heads)
        self.psi_prime = MatchingDecoder(config.match_width, config.matching_layers, config.matching_heads)

    def forward(
        self, image_tokens: torch.Tensor, recipe_tokens: torch.Tensor, recipe_mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Match each image with its own recipe.

        Args:
            image_tokens: (B, 1+P, M) projected I_f (cls first).
            recipe_tokens: (B, S, d) R_f.
            recipe_mask: (B, S) bool, True = valid recipe token.

        Returns:
            image_att: (B, 1+P, M) I_att.  attention: (B, 1+P, S) A_I.
            recipe_att: (B, S, M) R_att.
            image_global: (B, M) I_g.  recipe_global: (B, M) R_g.
            recipe_local: (B, P, M) R_lp for the P patches.
        """
        recipe = self.recipe_proj(recipe_tokens)  # (B, S, M)
        recipe_padding = ~_safe_mask(recipe_mask)  # (B, S)
        image_att, attention = self.psi(image_tokens, recipe, memory_padding=recipe_padding)  # (B,1+P,M),(B,1+P,S)
        recipe_att, _ = self.psi_prime(recipe, image_att, query_padding=recipe_padding)  # (B, S, M)
        recipe_local = torch.einsum("bps,bsm->bpm", attention[:, 1:], recipe_att)  # (B, P, M), Eq. 9
        return {
            "image_att": image_att,
            "attention": attention,
            "recipe_att": recipe_att,
            "image_global": image_att[:, 0],
            "recipe_global": masked_mean(recipe_att, ~recipe_padding),
            "recipe_local": recipe_local,
        }
