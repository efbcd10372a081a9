"""Two-level image-recipe matching module ψ / ψ' (MALM, arXiv 2305.11327, Sec 3.2, Eqs. 3-10).

Used only in training. Inputs are the (mask-appended, projected) image features I_f (B, 1+P, M) and
the recipe token features R_f (B, S, d) of the pairs to decode (row i of each is one pair; see
`cross_pairs` for which pairs):

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
- Pairs. Eqs. 8 and 10 contrast B positive pairs with B²-B negative pairs, but ψ/ψ' see an image
  and a recipe together, so the features of (image i, recipe j) are not those of (image i, recipe
  i). Two readings, chosen by `MalmConfig.matching_negatives`:
  - 0 (ablation only): ψ/ψ' run once per true pair, and pair i's features are contrasted with those
    of the other true pairs k, each computed from its own pair (Z sums over the batch index k).
    I_att[i] already mixes in recipe i, so ψ solves L_GC / L_LC by carrying pair identity across
    (measured: L_GC 2.5 -> 0.05 within ~100 steps on `micro`) and the terms teach nothing.
  - k > 0 (every preset): negatives are decoded as pairs of their own (`cross_pairs`): each image with the k
    recipes its L_itc embedding finds most similar, and each recipe with its k most similar images
    (ALBEF-style hard negatives; k = B-1 uses all B²-B false pairs, each decoded twice: once
    per anchor side). The module must then tell a true pair from a close false one. Two photos of
    one recipe in a batch are never negatives.
"""

from __future__ import annotations

from dataclasses import dataclass

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
        """Decode each image row with the recipe row of the same index (one pair per row).

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


@dataclass
class CrossPairs:
    """The (image, recipe) pairs to decode: B true pairs, then B*k image-anchored negatives (each
    image with k recipes), then B*k recipe-anchored negatives (each recipe with k images).

    Attributes:
        image_index: (N,) int64 batch row of each pair's image, N = B * (1 + 2k).
        recipe_index: (N,) int64 batch row of each pair's recipe.
        negatives: k.
        valid: ((B, k), (B, k)) bool, False for a negative that is really a positive (same recipe).
    """

    image_index: torch.Tensor
    recipe_index: torch.Tensor
    negatives: int
    valid: tuple[torch.Tensor, torch.Tensor]

    def anchor_scores(self, pair_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pair scores (N, *rest) -> image-anchored and recipe-anchored (*rest, B, 1+k), true pair first."""
        k = self.negatives
        batch = pair_scores.shape[0] // (1 + 2 * k)
        rest = pair_scores.shape[1:]
        positive = pair_scores[:batch].unsqueeze(1)  # (B, 1, *rest)
        image_negative = pair_scores[batch : batch * (1 + k)].reshape(batch, k, *rest)  # (B, k, *rest)
        recipe_negative = pair_scores[batch * (1 + k) :].reshape(batch, k, *rest)  # (B, k, *rest)
        return tuple(  # type: ignore[return-value]
            torch.movedim(torch.cat([positive, negative], dim=1), (0, 1), (-2, -1))  # (*rest, B, 1+k)
            for negative in (image_negative, recipe_negative)
        )


def cross_pairs(similarity: torch.Tensor, negatives: int, same_recipe: torch.Tensor | None = None) -> CrossPairs:
    """Choose the hard negative pairs for ψ/ψ' from the batch's image-recipe similarities.

    Args:
        similarity: (B, B) [image, recipe] similarities (detached here).
        negatives: k, negatives per anchor (capped at B-1).
        same_recipe: Optional (B, B) bool, True where image i and recipe j belong to the same
            recipe; those pairs are never negatives. The diagonal is always excluded.
    """
    batch = similarity.shape[0]
    k = max(0, min(negatives, batch - 1))
    excluded = torch.eye(batch, dtype=torch.bool, device=similarity.device)  # (B, B)
    if same_recipe is not None:
        excluded = excluded | same_recipe
    scores = similarity.detach().masked_fill(excluded, float("-inf"))  # (B, B)
    hard_recipes = scores.topk(k, dim=1).indices  # (B, k) for each image anchor
    hard_images = scores.t().topk(k, dim=1).indices  # (B, k) for each recipe anchor
    valid = (
        torch.gather(~excluded, 1, hard_recipes),  # (B, k)
        torch.gather(~excluded.t(), 1, hard_images),  # (B, k)
    )
    anchors = torch.arange(batch, device=similarity.device)
    repeated = anchors.repeat_interleave(k)  # (B*k,)
    image_index = torch.cat([anchors, repeated, hard_images.reshape(-1)])  # (N,)
    recipe_index = torch.cat([anchors, hard_recipes.reshape(-1), repeated])  # (N,)
    return CrossPairs(image_index, recipe_index, k, valid)
