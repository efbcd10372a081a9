"""Recipe tokenizer and the recipe batch contract of the hierarchical recipe encoder.

A WordPiece tokenizer (lower-cased, NFD with accents stripped, split on whitespace and punctuation)
of the `tokenizers` library, its vocabulary built deterministically from the training partition only
(frequent words plus character pieces, see `_word_vocabulary`), saved as `tokenizer.json`. A recipe
is encoded with H-T's truncation (Salvador et al. 2021, also used by TFood and MALM): title 15 tokens,
20 ingredient lines x 15 tokens, 20 instruction steps x 20 tokens.

The recipe batch contract (the recipe encoder in training/models codes against it):

=====================  ==============  =====  ==============================================
key                    shape           dtype  meaning
=====================  ==============  =====  ==============================================
``title``              (B, 15)         int64  token ids, pad 0
``title_mask``         (B, 15)         bool   True = real token
``ingredients``        (B, 20, 15)     int64  one row per ingredient line
``ingredients_mask``   (B, 20, 15)     bool
``instructions``       (B, 20, 20)     int64  one row per instruction step
``instructions_mask``  (B, 20, 20)     bool
=====================  ==============  =====  ==============================================

Lines are packed at the front and blank lines dropped, so line j is present exactly when
``mask[..., j, 0]`` is True. A recipe without ingredients or instructions (title-only) has an
all-False mask for that component. No [CLS]/[SEP] are added: the encoder mean-pools.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

from malm_edge.training.data.records import Recipe
from malm_edge.training.errors import TrainingError

TOKENIZER_FILE = "tokenizer.json"
PAD_TOKEN, UNK_TOKEN = "[PAD]", "[UNK]"
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, "[CLS]", "[SEP]", "[MASK]")  # [PAD] must be id 0
PAD_ID = 0
RECIPE_KEYS = (
    "title",
    "title_mask",
    "ingredients",
    "ingredients_mask",
    "instructions",
    "instructions_mask",
)


class TokenizerError(TrainingError, ValueError):
    """Raised for a tokenizer that cannot be trained or loaded as a recipe tokenizer."""


@dataclass(frozen=True)
class TextLimits:
    """H-T truncation limits (tokens per sentence, sentences per component)."""

    title_tokens: int = 15
    max_ingredients: int = 20
    ingredient_tokens: int = 15
    max_steps: int = 20
    step_tokens: int = 20

    def to_dict(self) -> dict[str, int]:
        """Plain dict for run configs."""
        return asdict(self)


def recipe_texts(recipe: Recipe) -> Iterator[str]:
    """Every text of a recipe: title, ingredient lines, instruction steps."""
    yield recipe.title
    yield from recipe.ingredients
    yield from recipe.instructions


def _new_wordpiece(vocab: dict[str, int] | None = None) -> Tokenizer:
    model = models.WordPiece(vocab=vocab, unk_token=UNK_TOKEN) if vocab else models.WordPiece(unk_token=UNK_TOKEN)
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()]
    )
    # Whitespace splits on `\w+|[^\w\s]+`, so punctuation becomes its own pre-token.
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def train_tokenizer(
    recipes: Iterable[Recipe],
    *,
    vocab_size: int = 16_000,
    min_frequency: int = 2,
    partition: str | None = "train",
    limits: TextLimits = TextLimits(),
) -> "RecipeTokenizer":
    """Train a WordPiece recipe tokenizer.

    Args:
        recipes: Recipes to learn from (streamed once). Only those of `partition` are read, so the
            whole dataset may be passed without leaking val/test words into the vocabulary.
        vocab_size: Target vocabulary size, special tokens included.
        min_frequency: Minimum count of a merged piece.
        partition: Partition to train on; None reads every recipe given.
        limits: Truncation limits of the returned tokenizer.

    Returns:
        The trained tokenizer, [PAD] at id 0.

    Raises:
        TokenizerError: No recipe of `partition` was given.
    """
    counter = {"recipes": 0}

    def texts() -> Iterator[str]:
        for recipe in recipes:
            if partition is None or recipe.partition == partition:
                counter["recipes"] += 1
                yield from recipe_texts(recipe)

    tokenizer = _new_wordpiece(_word_vocabulary(texts(), vocab_size, min_frequency))
    if counter["recipes"] == 0:
        raise TokenizerError(f"no recipes of partition {partition!r} to train the tokenizer on")
    return RecipeTokenizer(tokenizer, limits)


def _word_vocabulary(texts: Iterable[str], vocab_size: int, min_frequency: int) -> dict[str, int]:
    """A WordPiece vocabulary, built deterministically: special tokens, every character (as a word
    start and as a `##` continuation), then the most frequent words (ties broken alphabetically).

    The `tokenizers` trainer numbers and merges in hash-map order, so two trainings on the same text
    give different vocabularies and a repeated run with the same seed would not be the same run.
    Frequent words become single tokens (as H-T's word-level vocabulary); rarer ones fall back to
    the longest known pieces, down to characters, so nothing maps to [UNK] that was seen in training.
    """
    reader = _new_wordpiece()
    counts: Counter[str] = Counter()
    for text in texts:
        normalized = reader.normalizer.normalize_str(text)
        counts.update(word for word, _ in reader.pre_tokenizer.pre_tokenize_str(normalized))
    characters = sorted({char for word in counts for char in word})
    base = [*SPECIAL_TOKENS, *characters, *(f"##{char}" for char in characters)]
    frequent = sorted(
        (word for word, count in counts.items() if count >= min_frequency and len(word) > 1),
        key=lambda word: (-counts[word], word),
    )[: max(0, vocab_size - len(base))]
    return {piece: i for i, piece in enumerate([*base, *sorted(frequent)])}


def _pack(encodings: Sequence, max_rows: int, max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and mask of the first `max_rows` non-empty encoded sentences, each cut to `max_tokens`."""
    ids = np.zeros((max_rows, max_tokens), dtype=np.int64)  # (rows, tokens)
    mask = np.zeros((max_rows, max_tokens), dtype=np.bool_)  # (rows, tokens)
    row = 0
    for encoding in encodings:
        if row == max_rows:
            break
        tokens = encoding.ids[:max_tokens]
        if not tokens:  # keep lines packed at the front: row j present <=> mask[j, 0]
            continue
        ids[row, : len(tokens)] = tokens
        mask[row, : len(tokens)] = True
        row += 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def _non_blank(lines: Sequence[str]) -> list[str]:
    return [line for line in lines if line.strip()]


class RecipeTokenizer:
    """A `tokenizers.Tokenizer` plus H-T truncation into the recipe batch contract.

    Args:
        tokenizer: A trained tokenizer whose [PAD] token is id 0.
        limits: Truncation limits.
    """

    def __init__(self, tokenizer: Tokenizer, limits: TextLimits = TextLimits()) -> None:
        if tokenizer.token_to_id(PAD_TOKEN) != PAD_ID:
            raise TokenizerError(f"{PAD_TOKEN} must be token id {PAD_ID}")
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.tokenizer = tokenizer
        self.limits = limits

    @property
    def vocab_size(self) -> int:
        """Vocabulary size, special tokens included (the embedding table size)."""
        return self.tokenizer.get_vocab_size()

    def save(self, path: Path) -> Path:
        """Write `tokenizer.json` (into `path` if it is a folder). Returns the file written."""
        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        self.tokenizer.save(str(path))
        return path

    @classmethod
    def load(cls, path: Path, limits: TextLimits = TextLimits()) -> "RecipeTokenizer":
        """Read `tokenizer.json` (or a folder holding it).

        Raises:
            TokenizerError: The file is missing or not a tokenizer with [PAD] at id 0.
        """
        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        if not path.is_file():
            raise TokenizerError(f"{path}: tokenizer file not found")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:  # the Rust side raises plain Exception
            raise TokenizerError(f"{path}: not a tokenizers JSON file ({error})") from error
        return cls(tokenizer, limits)

    def tokenize(self, text: str) -> list[str]:
        """Word pieces of a text (for inspection)."""
        return self.tokenizer.encode(text).tokens

    def encode(self, recipe: Recipe) -> dict[str, torch.Tensor]:
        """Encode one recipe into the unbatched recipe contract.

        Sentences are encoded one by one: as fast as `encode_batch` for one recipe's ~30 short
        lines, and safe in forked DataLoader workers (no Rust thread pool).

        Returns:
            title (15,), ingredients (20, 15), instructions (20, 20) int64 ids (pad 0) and the
            matching bool masks (True = real token) under `<key>_mask`.
        """
        title, ingredients, steps = _sentences(recipe)
        encodings = [self.tokenizer.encode(text) for text in (title, *ingredients, *steps)]
        return self._assemble(encodings, len(ingredients))

    def encode_batch(self, recipes: Sequence[Recipe]) -> dict[str, torch.Tensor]:
        """Encode and collate recipes into the batched contract, (B, ...) tensors.

        All sentences go to the tokenizer in one parallel `encode_batch` call, for bulk encoding
        in the main process (e.g. the recipe table).
        """
        parts = [_sentences(recipe) for recipe in recipes]
        texts = [text for title, ingr, steps in parts for text in (title, *ingr, *steps)]
        encodings = self.tokenizer.encode_batch(texts)
        encoded, start = [], 0
        for _, ingredients, steps in parts:
            stop = start + 1 + len(ingredients) + len(steps)
            encoded.append(self._assemble(encodings[start:stop], len(ingredients)))
            start = stop
        return collate_recipes(encoded)

    def _assemble(self, encodings: Sequence, n_ingredients: int) -> dict[str, torch.Tensor]:
        """Recipe tensors from the encodings of [title, *ingredients, *steps]."""
        limits = self.limits
        title_ids, title_mask = _pack(encodings[:1], 1, limits.title_tokens)
        ingredient_ids, ingredient_mask = _pack(
            encodings[1 : 1 + n_ingredients], limits.max_ingredients, limits.ingredient_tokens
        )
        step_ids, step_mask = _pack(encodings[1 + n_ingredients :], limits.max_steps, limits.step_tokens)
        return {
            "title": title_ids[0],  # (title_tokens,)
            "title_mask": title_mask[0],
            "ingredients": ingredient_ids,  # (max_ingredients, ingredient_tokens)
            "ingredients_mask": ingredient_mask,
            "instructions": step_ids,  # (max_steps, step_tokens)
            "instructions_mask": step_mask,
        }


def _sentences(recipe: Recipe) -> tuple[str, list[str], list[str]]:
    """Title, non-blank ingredient lines and non-blank steps (blank lines carry no tokens)."""
    return recipe.title, _non_blank(recipe.ingredients), _non_blank(recipe.instructions)


def collate_recipes(encoded: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack encoded recipes into (B, ...) tensors of the recipe batch contract.

    Other keys present in every item are ignored here; callers collate them.
    """
    if not encoded:
        raise ValueError("cannot collate an empty list of recipes")
    return {key: torch.stack([item[key] for item in encoded]) for key in RECIPE_KEYS}
