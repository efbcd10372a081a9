"""Hierarchical recipe transformer (MALM, arXiv 2305.11327, Sec 4.3; the H-T / TFood design).

Written from the papers' description, batch-first throughout:

1. A shared token embedding (d) with a learned positional table.
2. Title: a transformer encoder over its tokens; the token outputs are kept.
3. Ingredients and instructions: a per-sentence transformer encoder over each line's tokens,
   mean-pooled over valid tokens into one vector per line; then a sequence transformer over the
   line vectors of the component (with a learned position per line).
4. A cross-component transformer decoder per component: its elements are the queries and the
   other two components, concatenated, are the memory (with key padding masks).
5. Per-component mean pool over valid elements, concatenation, a linear projection to the joint
   space, L2 norm.

R_f (for the matching module) is the concatenation of the decoder outputs: title tokens, ingredient
line vectors, instruction step vectors, with the matching validity mask.

With `text_tower="minilm"` steps 1-3's sentence level is the pretrained all-MiniLM-L6-v2: the batch
carries each sentence's 384-d embedding (data/sentence_embeddings.py) instead of its tokens, under the
same keys (title (B, 1, 384), ingredients / instructions (B, N, 384), masks (B, 1) / (B, N)); a
linear projection + LayerNorm brings them to d, and the sequence transformers, the cross-component
decoder and the pooling are unchanged. The title is then a single element.

Empty inputs: sentences with no tokens are never encoded (only valid sentences go through the
sentence encoder) and pool to zeros. A sequence that is entirely padding (an empty component)
would make attention softmax over nothing (NaN), so its first slot is left visible to attention
(`_safe_mask`) while its inputs are zeroed; its pooled value is zero and its mask stays all-False.
Inputs at padded positions are zeroed, so padded token ids never change any output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from malm_edge.training.models.config import SENTENCE_DIM, MalmConfig

COMPONENTS = ("title", "ingredients", "instructions")


def _safe_mask(valid: torch.Tensor) -> torch.Tensor:
    """Validity mask with the first slot of all-empty rows switched on (attention needs one key).

    Args:
        valid: (N, L) bool, True = real element.
    """
    safe = valid.clone()
    safe[:, 0] |= ~valid.any(dim=1)
    return safe


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of x over dim 1 where valid; zeros for rows with nothing valid.

    Args:
        x: (N, L, d). valid: (N, L) bool.

    Returns:
        (N, d).
    """
    weights = valid.to(x.dtype).unsqueeze(-1)  # (N, L, 1)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class PositionalEncoder(nn.Module):
    """Learned positions + pre-norm transformer encoder with key padding masks."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, max_len: int, dropout: float) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(0.02 * torch.randn(max_len, width))
        layer = nn.TransformerEncoderLayer(
            width, heads, int(width * mlp_ratio), dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(width), enable_nested_tensor=False)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Encode (N, L, d) with (N, L) validity; padded outputs are zeroed."""
        length = x.shape[1]
        if length > self.positional_embedding.shape[0]:
            limit = self.positional_embedding.shape[0]
            raise ValueError(f"sequence of {length} exceeds the positional table ({limit})")
        x = (x + self.positional_embedding[:length]) * valid.unsqueeze(-1).to(x.dtype)  # (N, L, d)
        x = self.encoder(x, src_key_padding_mask=~_safe_mask(valid))  # (N, L, d)
        return x * valid.unsqueeze(-1).to(x.dtype)


class CrossComponentDecoder(nn.Module):
    """Pre-norm transformer decoder: one component's elements attend to the other components."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        layer = nn.TransformerDecoderLayer(
            width, heads, int(width * mlp_ratio), dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, layers, norm=nn.LayerNorm(width))

    def forward(
        self, queries: torch.Tensor, query_valid: torch.Tensor, memory: torch.Tensor, memory_valid: torch.Tensor
    ) -> torch.Tensor:
        """queries (B, Lq, d), memory (B, Lm, d) with validity masks -> (B, Lq, d), padded zeroed."""
        out = self.decoder(
            queries,
            memory,
            tgt_key_padding_mask=~_safe_mask(query_valid),
            memory_key_padding_mask=~_safe_mask(memory_valid),
        )
        return out * query_valid.unsqueeze(-1).to(out.dtype)


def drop_lines(valid: torch.Tensor, p: float) -> torch.Tensor:
    """Leave out each valid line with probability p, but never every line of a non-empty list.

    (B, N) bool -> (B, N) bool, a subset of `valid` (training-time augmentation of the recipe side).
    """
    kept = valid & (torch.rand(valid.shape, device=valid.device) >= p)  # (B, N)
    emptied = valid.any(dim=1, keepdim=True) & ~kept.any(dim=1, keepdim=True)  # (B, 1)
    return torch.where(emptied, valid, kept)


class RecipeEncoder(nn.Module):
    """Hierarchical recipe transformer producing the joint embedding and token-level R_f.

    Args:
        config: Uses vocab_size, recipe_width, recipe_heads, sentence_layers, sequence_layers,
            decoder_layers, recipe_mlp_ratio, max_tokens, max_sentences, embed_dim, recipe_dropout,
            sentence_drop.
    """

    def __init__(self, config: MalmConfig) -> None:
        super().__init__()
        d, heads, ratio, drop = config.recipe_width, config.recipe_heads, config.recipe_mlp_ratio, config.recipe_dropout
        self.width, self.sentence_drop = d, config.sentence_drop
        if config.text_tower == "minilm":
            self.sentence_projection = nn.Sequential(nn.Linear(SENTENCE_DIM, d), nn.LayerNorm(d))
        else:
            self.token_embedding = nn.Embedding(config.vocab_size, d, padding_idx=0)
            nn.init.normal_(self.token_embedding.weight, std=0.02)
            self.sentence_encoders = nn.ModuleDict(
                {
                    c: PositionalEncoder(d, config.sentence_layers, heads, ratio, config.max_tokens, drop)
                    for c in COMPONENTS
                }
            )
        self.sequence_encoders = nn.ModuleDict(
            {
                c: PositionalEncoder(d, config.sequence_layers, heads, ratio, config.max_sentences, drop)
                for c in COMPONENTS[1:]
            }
        )
        self.decoders = nn.ModuleDict(
            {c: CrossComponentDecoder(d, config.decoder_layers, heads, ratio, drop) for c in COMPONENTS}
        )
        self.projection = nn.Linear(3 * d, config.embed_dim)

    def _encode_sentences(self, component: str, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Sentence vectors of a list component.

        Args:
            tokens: (B, N, L) int64. valid: (B, N, L) bool.

        Returns:
            (B, N, d), zeros for empty sentences.
        """
        batch, lines, length = tokens.shape
        flat_tokens, flat_valid = tokens.reshape(-1, length), valid.reshape(-1, length)  # (B*N, L)
        keep = flat_valid.any(dim=1).nonzero().squeeze(1)  # (n,) only non-empty sentences are encoded
        vectors = torch.zeros(batch * lines, self.width, dtype=self.token_embedding.weight.dtype, device=tokens.device)
        if keep.numel():
            kept_valid = flat_valid[keep]  # (n, L)
            length = int(kept_valid.any(dim=0).nonzero().max()) + 1  # drop all-padding tail columns
            kept_valid, kept_tokens = kept_valid[:, :length], flat_tokens[keep, :length]
            encoded = self.sentence_encoders[component](self.token_embedding(kept_tokens), kept_valid)  # (n, l, d)
            vectors = vectors.index_copy(0, keep, masked_mean(encoded, kept_valid).to(vectors.dtype))
        return vectors.reshape(batch, lines, self.width)

    def _encode_components(self, batch: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per-component element features before the cross-component decoder: {name: ((B, L, d), (B, L))}."""
        if hasattr(self, "sentence_projection"):
            return self._encode_sentence_vectors(batch)
        title_valid = batch["title_mask"].bool()
        title = self.sentence_encoders["title"](self.token_embedding(batch["title"]), title_valid)  # (B, Lt, d)
        parts = {"title": (title, title_valid)}
        for component in COMPONENTS[1:]:
            token_valid = batch[f"{component}_mask"].bool()  # (B, N, L)
            vectors = self._encode_sentences(component, batch[component], token_valid)  # (B, N, d)
            line_valid = token_valid.any(dim=-1)  # (B, N)
            if self.training and self.sentence_drop > 0:
                line_valid = drop_lines(line_valid, self.sentence_drop)
            parts[component] = (self.sequence_encoders[component](vectors, line_valid), line_valid)
        return parts

    def _encode_sentence_vectors(self, batch: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """As `_encode_components`, from precomputed sentence embeddings (text_tower="minilm")."""
        parts = {}
        for component in COMPONENTS:
            valid = batch[f"{component}_mask"].bool()  # (B, N)
            if component != "title" and self.training and self.sentence_drop > 0:
                valid = drop_lines(valid, self.sentence_drop)
            vectors = self.sentence_projection(batch[component]) * valid.unsqueeze(-1)  # (B, N, d)
            if component != "title":
                vectors = self.sequence_encoders[component](vectors, valid)
            parts[component] = (vectors, valid)
        return parts

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Encode a recipe batch.

        Args:
            batch: title (B, Lt), title_mask (B, Lt), ingredients (B, Ni, Li), ingredients_mask,
                instructions (B, Ns, Ls), instructions_mask; masks True = real token, pad id 0.

        Returns:
            embedding: (B, E) L2-normalised joint embedding.
            tokens: (B, S, d) R_f, S = Lt + Ni + Ns (zeros at invalid positions).
            tokens_mask: (B, S) bool, True = valid element.
        """
        parts = self._encode_components(batch)
        decoded, pooled = [], []
        for component in COMPONENTS:
            x, valid = parts[component]
            others = [parts[c] for c in COMPONENTS if c != component]
            memory = torch.cat([o[0] for o in others], dim=1)  # (B, Lm, d)
            memory_valid = torch.cat([o[1] for o in others], dim=1)  # (B, Lm)
            out = self.decoders[component](x, valid, memory, memory_valid)  # (B, L, d)
            decoded.append(out)
            pooled.append(masked_mean(out, valid))  # (B, d)
        embedding = F.normalize(self.projection(torch.cat(pooled, dim=-1)), dim=-1)  # (B, E)
        tokens = torch.cat(decoded, dim=1)  # (B, S, d)
        tokens_mask = torch.cat([parts[c][1] for c in COMPONENTS], dim=1)  # (B, S)
        return {"embedding": embedding, "tokens": tokens, "tokens_mask": tokens_mask}
