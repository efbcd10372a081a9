"""Recipe tokenizer: training on the train partition, H-T truncation, masks, save/load."""

from __future__ import annotations

import pytest
import torch

from malm_edge.training.data.records import Recipe
from malm_edge.training.data.tokenizer import (
    PAD_ID,
    RECIPE_KEYS,
    RecipeTokenizer,
    TextLimits,
    TokenizerError,
    collate_recipes,
    train_tokenizer,
)


def _recipes() -> list[Recipe]:
    words = "tomato basil garlic onion pepper salt butter flour sugar egg milk cream".split()
    train = [
        Recipe(
            id=f"r{i}",
            title=f"Crème {words[i % 12].title()} Soup number {i}",
            ingredients=[f"{j + 1} cups {words[(i + j) % 12]}, chopped" for j in range(3 + i % 4)],
            instructions=[
                f"Stir the {words[(i + j) % 12]} gently for {j} minutes." for j in range(2 + i % 3)
            ],
            partition="train",
        )
        for i in range(24)
    ]
    held_out = [
        Recipe(id="v0", title="zucchiniwaffle zucchiniwaffle", ingredients=["zucchiniwaffle"] * 5,
               instructions=["zucchiniwaffle"] * 5, partition="val"),
        Recipe(id="t0", title="quinoapancake quinoapancake", ingredients=["quinoapancake"] * 5,
               instructions=["quinoapancake"] * 5, partition="test"),
    ]
    return train + held_out


@pytest.fixture(scope="module")
def tokenizer() -> RecipeTokenizer:
    return train_tokenizer(_recipes(), vocab_size=300, min_frequency=1)


def test_vocabulary_comes_from_train_only(tokenizer):
    vocab = tokenizer.tokenizer.get_vocab()
    assert vocab["[PAD]"] == PAD_ID
    assert "tomato" in vocab and "creme" in vocab  # lower-cased, accent stripped
    assert "zucchiniwaffle" not in vocab and "quinoapancake" not in vocab
    # With every partition the held-out words are learnt (so the filter above is what kept them out).
    everything = train_tokenizer(_recipes(), vocab_size=300, min_frequency=1, partition=None)
    assert "zucchiniwaffle" in everything.tokenizer.get_vocab()


def test_no_train_recipes_raises():
    with pytest.raises(TokenizerError, match="no recipes of partition 'train'"):
        train_tokenizer([r for r in _recipes() if r.partition != "train"], vocab_size=100)


def test_normalisation_and_punctuation(tokenizer):
    assert tokenizer.tokenize("CRÈME, Tomato.") == ["creme", ",", "tomato", "."]
    assert tokenizer.tokenize("kiwi!")[-1] == "[UNK]"  # unseen characters map to [UNK]


def test_shapes_masks_and_truncation(tokenizer):
    recipe = Recipe(
        id="long",
        title=" ".join(["tomato"] * 40),
        ingredients=[" ".join(["garlic"] * 30)] * 25 + ["x"],
        instructions=["   ", *["stir the tomato gently"] * 30],
    )
    encoded = tokenizer.encode(recipe)
    assert set(encoded) == set(RECIPE_KEYS)
    assert encoded["title"].shape == (15,) and encoded["title"].dtype == torch.int64
    assert encoded["ingredients"].shape == (20, 15)
    assert encoded["instructions"].shape == (20, 20)
    for key in ("title", "ingredients", "instructions"):
        mask = encoded[f"{key}_mask"]
        assert mask.dtype == torch.bool and mask.shape == encoded[key].shape
        assert torch.equal(encoded[key][~mask], torch.zeros_like(encoded[key][~mask]))
    assert encoded["title_mask"].all()  # 40 tokens cut to 15
    assert encoded["ingredients_mask"].all()  # 26 lines of 30 tokens cut to 20 x 15
    # The blank step is dropped, so step 0 is "stir the tomato gently": 4 tokens.
    assert encoded["instructions_mask"].sum(dim=1).tolist() == [4] * 20
    assert encoded["instructions_mask"].all(dim=1).sum() == 0 and encoded["instructions_mask"][:, 0].all()
    garlic = tokenizer.tokenizer.token_to_id("garlic")
    assert (encoded["ingredients"] == garlic).all()


def test_short_and_title_only_recipes(tokenizer):
    recipe = Recipe(id="s", title="Tomato soup", ingredients=["2 egg"], instructions=[])
    encoded = tokenizer.encode(recipe)
    assert encoded["title_mask"].tolist() == [True, True] + [False] * 13
    assert encoded["ingredients_mask"][0].sum() == 2 and not encoded["ingredients_mask"][1:].any()
    assert not encoded["instructions_mask"].any()
    assert (encoded["instructions"] == PAD_ID).all()
    ids = encoded["title"][encoded["title_mask"]].tolist()
    assert tokenizer.tokenizer.decode(ids) == "tomato soup"


def test_custom_limits():
    limits = TextLimits(title_tokens=4, max_ingredients=3, ingredient_tokens=2, max_steps=2, step_tokens=5)
    tok = train_tokenizer(_recipes(), vocab_size=200, min_frequency=1, limits=limits)
    encoded = tok.encode(_recipes()[5])
    shapes = {k: tuple(v.shape) for k, v in encoded.items()}
    assert shapes["title"] == (4,) and shapes["ingredients"] == (3, 2) and shapes["instructions"] == (2, 5)


def test_collate_and_encode_batch(tokenizer):
    recipes = _recipes()[:5]
    batch = collate_recipes([tokenizer.encode(r) for r in recipes])
    expected = {
        "title": (5, 15), "title_mask": (5, 15),
        "ingredients": (5, 20, 15), "ingredients_mask": (5, 20, 15),
        "instructions": (5, 20, 20), "instructions_mask": (5, 20, 20),
    }
    assert {k: tuple(v.shape) for k, v in batch.items()} == expected
    assert batch["title"].dtype == torch.int64 and batch["title_mask"].dtype == torch.bool
    again = tokenizer.encode_batch(recipes)
    assert all(torch.equal(batch[k], again[k]) for k in batch)
    assert torch.equal(batch["ingredients"][3], tokenizer.encode(recipes[3])["ingredients"])


def test_save_load_roundtrip(tokenizer, tmp_path):
    written = tokenizer.save(tmp_path)
    assert written == tmp_path / "tokenizer.json" and written.is_file()
    loaded = RecipeTokenizer.load(tmp_path)
    assert loaded.vocab_size == tokenizer.vocab_size
    for recipe in _recipes():
        a, b = tokenizer.encode(recipe), loaded.encode(recipe)
        assert all(torch.equal(a[k], b[k]) for k in RECIPE_KEYS)


def test_load_rejects_missing_and_bad_files(tmp_path):
    with pytest.raises(TokenizerError, match="not found"):
        RecipeTokenizer.load(tmp_path / "nope.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError, match="not a tokenizers JSON"):
        RecipeTokenizer.load(bad)
