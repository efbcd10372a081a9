"""Torch datasets over a tiny canonical dataset with one corrupt and one missing image."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from malm_edge.training.data.canonical import DatasetError
from malm_edge.training.data.dataset import (
    RecipeImageDataset,
    RecipeTextDataset,
    collate_batch,
)
from malm_edge.training.data.records import Recipe, write_recipes_jsonl
from malm_edge.training.data.tokenizer import RECIPE_KEYS, train_tokenizer
from malm_edge.training.data.transforms import EvalTransform, Preprocessing, TrainTransform

SIZE = 16


def _recipe(i: int, partition: str, images: list[str], class_name: str | None) -> Recipe:
    return Recipe(
        id=f"r{i}",
        title=f"dish {i} with tomato",
        ingredients=[f"{i} cups rice", "1 onion"],
        instructions=["boil the rice", "add the onion"],
        images=images,
        partition=partition,
        class_name=class_name,
    )


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    """Train: r0 (2 images), r1 (corrupt + good), r2 (missing), r3 (text-only); test: r4, r5."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c", "e", "f"):
        pixels = rng.integers(0, 256, size=(20 + len(name), 30, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{name}.jpg")
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    recipes = [
        _recipe(0, "train", ["images/a.jpg", "images/b.jpg"], "soup"),
        _recipe(1, "train", ["images/corrupt.jpg", "images/c.jpg"], "cake"),
        _recipe(2, "train", ["images/missing.jpg"], None),
        _recipe(3, "train", [], "soup"),
        _recipe(4, "test", ["images/e.jpg"], "pasta"),
        _recipe(5, "test", ["images/f.jpg"], None),
    ]
    write_recipes_jsonl(recipes, tmp_path)
    return tmp_path


@pytest.fixture
def tokenizer(dataset_dir):
    from malm_edge.training.data.canonical import load_recipes

    return train_tokenizer(load_recipes(dataset_dir), vocab_size=120, min_frequency=1)


def test_items_and_class_ids(dataset_dir, tokenizer):
    data = RecipeImageDataset(dataset_dir, "train", tokenizer, EvalTransform(Preprocessing(input_size=SIZE)))
    assert len(data) == 5  # r0 x2, r1 x2, r2 x1; text-only r3 has no pair
    assert data.class_to_id == {"cake": 0, "pasta": 1, "soup": 2}  # over all partitions, sorted
    assert data.class_names == ["cake", "pasta", "soup"]
    item = data[1]
    assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
    assert item["recipe_index"] == 0 and item["class_id"] == 2
    assert item["title"].shape == (15,) and item["ingredients"].shape == (20, 15)
    expected = tokenizer.encode(data.recipes[0])
    assert all(torch.equal(item[k], expected[k]) for k in RECIPE_KEYS)
    assert data.image_path(1) == dataset_dir / "images" / "b.jpg"
    assert data[4] is None  # missing file


def test_corrupt_image_returns_none_and_logs(dataset_dir, tokenizer, caplog):
    data = RecipeImageDataset(dataset_dir, "train", tokenizer, EvalTransform(Preprocessing(input_size=SIZE)))
    with caplog.at_level(logging.WARNING, logger="malm_edge.training.data.dataset"):
        assert data[2] is None
    assert "corrupt.jpg" in caplog.text and "'r1'" in caplog.text


def test_one_image_per_recipe_for_evaluation(dataset_dir, tokenizer):
    data = RecipeImageDataset(
        dataset_dir, "test", tokenizer, EvalTransform(Preprocessing(input_size=SIZE)),
        one_image_per_recipe=True,
    )
    assert len(data) == 2
    assert [data[i]["recipe_index"] for i in range(2)] == [0, 1]
    assert [data[i]["class_id"] for i in range(2)] == [1, -1]
    train = RecipeImageDataset(
        dataset_dir, "train", tokenizer, EvalTransform(Preprocessing(input_size=SIZE)),
        one_image_per_recipe=True,
    )
    assert [train.image_path(i).name for i in range(len(train))] == ["a.jpg", "corrupt.jpg", "missing.jpg"]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_skips_bad_images(dataset_dir, tokenizer, num_workers):
    transform = TrainTransform(Preprocessing(input_size=SIZE))
    data = RecipeImageDataset(dataset_dir, "train", tokenizer, transform)
    loader = DataLoader(data, batch_size=3, shuffle=False, num_workers=num_workers, collate_fn=collate_batch)
    batches = list(loader)
    assert [b["n_skipped"] for b in batches] == [1, 1]  # corrupt at index 2, missing at index 4
    first = batches[0]
    assert first["image"].shape == (2, 3, SIZE, SIZE)
    assert first["title"].shape == (2, 15) and first["title_mask"].dtype == torch.bool
    assert first["instructions"].shape == (2, 20, 20)
    assert first["recipe_index"].tolist() == [0, 0] and first["class_id"].tolist() == [2, 2]
    assert batches[1]["recipe_index"].tolist() == [1]
    assert sum(len(b["recipe_index"]) for b in batches) == 3


def test_collate_all_skipped_and_text_dataset(dataset_dir, tokenizer):
    assert collate_batch([None, None]) == {"n_skipped": 2}
    texts = RecipeTextDataset(dataset_dir, "train", tokenizer)
    assert len(texts) == 4  # the text-only recipe is included
    batch = collate_batch([texts[i] for i in range(4)])
    assert "image" not in batch and batch["n_skipped"] == 0
    assert batch["ingredients"].shape == (4, 20, 15)
    assert batch["recipe_index"].tolist() == [0, 1, 2, 3] and batch["class_id"].tolist() == [2, 0, -1, 2]
    assert len(RecipeTextDataset(dataset_dir, None, tokenizer)) == 6


def test_bad_partition_and_missing_dataset(dataset_dir, tokenizer, tmp_path):
    with pytest.raises(DatasetError, match="unknown partition"):
        RecipeTextDataset(dataset_dir, "dev", tokenizer)
    with pytest.raises(DatasetError, match="does not exist"):
        RecipeTextDataset(tmp_path / "nowhere", "train", tokenizer)


def test_recipe_groups_list_the_items_of_each_recipe(dataset_dir, tokenizer):
    dataset = RecipeImageDataset(dataset_dir, "train", tokenizer, EvalTransform(Preprocessing(input_size=SIZE)))
    groups = dataset.recipe_groups()
    assert [g.tolist() for g in groups] == [[0, 1], [2, 3], [4]]  # r0 x2, r1 x2, r2 x1
    assert np.concatenate(groups).tolist() == list(range(len(dataset)))
    for group in groups:
        assert len(set(dataset.item_recipe[group].tolist())) == 1
    assert len(groups) == len(set(dataset.item_recipe.tolist()))


def test_weighted_recipe_groups_repeat_only_full_text_recipes(tmp_path, tokenizer):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    full, title_only = _recipe(0, "train", ["a.jpg"], None), Recipe("t1", "toast", [], [], ["a.jpg", "a.jpg"])
    write_recipes_jsonl([title_only, full, Recipe("t2", "tea", ["1 bag"], [], ["a.jpg"])], tmp_path)
    dataset = RecipeImageDataset(tmp_path, "train", tokenizer, EvalTransform(Preprocessing(input_size=SIZE)))
    assert [g.tolist() for g in dataset.weighted_recipe_groups()] == [[0, 1], [2], [3]]
    assert [g.tolist() for g in dataset.weighted_recipe_groups(3)] == [[0, 1], [2], [3], [2], [2]]


def test_full_text_repeats_need_recipe_level_epochs():
    from malm_edge.training.schedule import TrainConfig

    with pytest.raises(ValueError, match="recipe-level"):
        TrainConfig(full_text_repeats=2, epoch_unit="pair")
    with pytest.raises(ValueError, match=">= 1"):
        TrainConfig(full_text_repeats=0)
