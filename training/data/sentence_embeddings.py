"""Recipes as pretrained sentence embeddings: the recipe inputs of `text_tower="minilm"`.

Every title, ingredient line and instruction step is embedded once by all-MiniLM-L6-v2
(models/minilm.py) and cached per set of texts in the cache folder ($MALM_EDGE_CACHE or
~/.cache/malm-edge, `sentence-embeddings/`), so a run, its resume and its evaluation never embed a
sentence twice. `SentenceEmbedder.encode` has the interface of `RecipeTokenizer.encode` and the same
keys, holding vectors instead of token ids (models/recipe_encoder.py reads either), so datasets,
collation and the recipe table work unchanged. Sentences met later (another catalog to index) are
embedded when first seen.

Cache files are `.npz` of the texts (UTF-8 bytes and their offsets) and a float16 (U, 384) array,
read with `allow_pickle=False`: a file from outside cannot run code.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from malm_edge.training.data.records import Recipe
from malm_edge.training.data.synthfood.cache import cache_root
from malm_edge.training.data.tokenizer import RECIPE_KEYS, TextLimits, collate_recipes, recipe_texts
from malm_edge.training.models.config import SENTENCE_DIM
from malm_edge.training.models.minilm import MiniLMSentenceEncoder, load_minilm

log = logging.getLogger(__name__)

CACHE_FOLDER = "sentence-embeddings"
PROGRESS_EVERY = 2048  # sentences between progress lines
MODEL_NAME = "all-MiniLM-L6-v2"


def _non_blank(lines: Sequence[str]) -> list[str]:
    return [line for line in lines if line.strip()]


class SentenceEmbedder:
    """Recipe -> sentence-vector tensors (title (1, 384), ingredients (20, 384), instructions (20, 384),
    float32, zero rows past the end, and the (1,) / (20,) bool masks under `<key>_mask`).

    Args:
        encoder: The sentence encoder for texts not in `vectors` (None: every text must be there).
        vectors: Known sentence -> (384,) embedding.
        limits: H-T's sentence counts (token limits do not apply: MiniLM truncates at 256 tokens).
    """

    def __init__(
        self,
        encoder: MiniLMSentenceEncoder | None,
        vectors: dict[str, np.ndarray] | None = None,
        limits: TextLimits = TextLimits(),
    ) -> None:
        self.encoder = encoder
        self.vectors = dict(vectors or {})
        self.limits = limits

    def add(self, texts: Iterable[str], batch_size: int = 64) -> int:
        """Embed the texts not known yet (in batches, logging progress on large sets); returns how many
        were new."""
        new = sorted({text for text in texts if text not in self.vectors})
        if not new:
            return 0
        if self.encoder is None:
            raise ValueError(f"{len(new)} sentences have no cached embedding and no encoder was given")
        started = time.perf_counter()
        for start in range(0, len(new), PROGRESS_EVERY):
            chunk = new[start:start + PROGRESS_EVERY]
            embedded = self.encoder.embed_texts(chunk, batch_size=batch_size).numpy()  # (n, 384)
            self.vectors.update(zip(chunk, embedded.astype(np.float16)))
            if len(new) > PROGRESS_EVERY:
                done, elapsed = start + len(chunk), time.perf_counter() - started
                log.info("embedded %d/%d sentences (%.0f/s, ETA %.0f s)", done, len(new), done / elapsed,
                         (len(new) - done) * elapsed / done)
        return len(new)

    def _rows(self, texts: Sequence[str], rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.add(texts[:rows])
        vectors = np.zeros((rows, SENTENCE_DIM), dtype=np.float32)  # (rows, 384)
        mask = np.zeros(rows, dtype=np.bool_)
        for row, text in enumerate(texts[:rows]):
            vectors[row], mask[row] = self.vectors[text], True
        return torch.from_numpy(vectors), torch.from_numpy(mask)

    def encode(self, recipe: Recipe) -> dict[str, torch.Tensor]:
        """One recipe in the (unbatched) sentence-vector contract."""
        title, title_mask = self._rows([recipe.title] if recipe.title.strip() else [], 1)
        ingredients, ingredients_mask = self._rows(_non_blank(recipe.ingredients), self.limits.max_ingredients)
        steps, steps_mask = self._rows(_non_blank(recipe.instructions), self.limits.max_steps)
        encoded = {"title": title, "title_mask": title_mask, "ingredients": ingredients,
                   "ingredients_mask": ingredients_mask, "instructions": steps, "instructions_mask": steps_mask}
        assert tuple(encoded) == RECIPE_KEYS
        return encoded

    def encode_batch(self, recipes: Sequence[Recipe]) -> dict[str, torch.Tensor]:
        """Encode and collate recipes into (B, ...) tensors (new sentences embedded in one go)."""
        self.add(text for recipe in recipes for text in recipe_texts(recipe))
        return collate_recipes([self.encode(recipe) for recipe in recipes])


def _cache_path(texts: Sequence[str], root: Path) -> Path:
    digest = hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()[:16]
    return root / CACHE_FOLDER / f"{MODEL_NAME}-{digest}.npz"


def _read_cache(path: Path, texts: Sequence[str]) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            blob, offsets, vectors = data["text_bytes"].tobytes(), data["text_offsets"], data["vectors"]
        cached_texts = [blob[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:])]
    except (OSError, KeyError, ValueError, UnicodeDecodeError) as error:
        log.warning("ignoring unreadable sentence-embedding cache %s (%s)", path, error)
        return None
    if cached_texts != list(texts) or vectors.shape != (len(texts), SENTENCE_DIM):
        log.warning("ignoring sentence-embedding cache %s: it holds other texts", path)
        return None
    return dict(zip(texts, vectors))


def _write_cache(path: Path, texts: Sequence[str], vectors: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npz")
    encoded = [text.encode("utf-8") for text in texts]
    offsets = np.cumsum([0] + [len(text) for text in encoded], dtype=np.int64)  # (U + 1,)
    with os.fdopen(fd, "wb") as handle:
        np.savez(handle, text_bytes=np.frombuffer(b"".join(encoded), dtype=np.uint8), text_offsets=offsets,
                 vectors=np.stack([vectors[t] for t in texts]))
    os.replace(tmp, path)


def embedder_for_recipes(
    recipes: Iterable[Recipe], encoder: MiniLMSentenceEncoder | None = None, cache: Path | None = None
) -> SentenceEmbedder:
    """A `SentenceEmbedder` knowing every sentence of `recipes`, from the cache or embedded now.

    Args:
        recipes: The recipes whose sentences to embed (a whole dataset: train, val and test text).
        encoder: The sentence encoder (default: the packaged all-MiniLM-L6-v2, loaded once).
        cache: Cache root (default: `cache_root()`).
    """
    texts = sorted({text for recipe in recipes for text in recipe_texts(recipe) if text.strip()})
    path = _cache_path(texts, cache or cache_root())
    encoder = encoder if encoder is not None else load_minilm()
    known = _read_cache(path, texts) if path.exists() else None
    embedder = SentenceEmbedder(encoder, known)
    if known is None:
        log.info("embedding %d sentences with %s (cached in %s)", len(texts), MODEL_NAME, path)
        embedder.add(texts)
        _write_cache(path, texts, embedder.vectors)
    return embedder
