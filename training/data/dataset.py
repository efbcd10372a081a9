"""Torch datasets over the canonical format: (image, recipe) pairs and recipes alone.

`RecipeImageDataset` yields one item per (recipe, image) pair for training, or the first image of
each recipe for evaluation; `recipe_groups()` lists the items of each recipe, so the training loop
can make an epoch one image of every recipe (TFood's recipe-level epoch). Recipe text is tokenized per item, never all at once. A missing or
corrupt image never stops training: `__getitem__` returns None (and logs the path), and
`collate_batch` drops it and counts it in `batch["n_skipped"]`.

`recipe_index` is the position of the recipe in `dataset.recipes`, i.e. in
`load_recipes(dataset_dir, partition)`; `RecipeTextDataset` over the same partition uses the same
indices, so image and recipe embeddings can be aligned for `retrieval_metrics`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from malm_edge.training.data.canonical import DatasetError, load_recipes, resolve_image_path
from malm_edge.training.data.records import PARTITIONS, Recipe
from malm_edge.training.data.tokenizer import RecipeTokenizer, collate_recipes
from malm_edge.training.data.transforms import ImageError, load_rgb

logger = logging.getLogger(__name__)

ImageTransform = Callable[[Image.Image], torch.Tensor]
NO_CLASS = -1


def class_mapping(recipes: Sequence[Recipe]) -> dict[str, int]:
    """Class name -> id, ids given in sorted name order (recipes without a class are left out)."""
    names = sorted({str(r.class_name) for r in recipes if r.class_name is not None})
    return {name: index for index, name in enumerate(names)}


def _partition_recipes(
    dataset_dir: Path, partition: str | None, class_to_id: dict[str, int] | None, strict: bool
) -> tuple[list[Recipe], dict[str, int]]:
    """Recipes of one partition and a class mapping built over every partition (unless given)."""
    if partition is not None and partition not in PARTITIONS:
        raise DatasetError(f"unknown partition {partition!r} (expected one of {', '.join(PARTITIONS)})")
    everything = load_recipes(dataset_dir, strict=strict)
    if class_to_id is None:
        # Built from the whole dataset so train and test agree on the ids.
        class_to_id = class_mapping(everything)
    if partition is None:
        return everything, class_to_id
    return [r for r in everything if r.partition == partition], class_to_id


def _class_id(recipe: Recipe, class_to_id: dict[str, int]) -> int:
    if recipe.class_name is None:
        return NO_CLASS
    return class_to_id.get(str(recipe.class_name), NO_CLASS)


class _RecipeSource:
    """Shared state of both datasets: the recipes, their class ids and the tokenizer."""

    def _init_recipes(
        self,
        dataset_dir: Path | str,
        partition: str | None,
        tokenizer: RecipeTokenizer,
        class_to_id: dict[str, int] | None,
        strict: bool,
    ) -> None:
        self.dataset_dir = Path(dataset_dir)
        self.partition = partition
        self.tokenizer = tokenizer
        self.recipes, self.class_to_id = _partition_recipes(
            self.dataset_dir, partition, class_to_id, strict
        )
        self.class_ids = np.array(
            [_class_id(recipe, self.class_to_id) for recipe in self.recipes], dtype=np.int64
        )  # (n_recipes,)

    @property
    def class_names(self) -> list[str]:
        """Class names in id order."""
        return sorted(self.class_to_id, key=self.class_to_id.__getitem__)

    def _recipe_item(self, recipe_index: int) -> dict:
        item: dict = self.tokenizer.encode(self.recipes[recipe_index])
        item["recipe_index"] = int(recipe_index)
        item["class_id"] = int(self.class_ids[recipe_index])
        return item


class RecipeImageDataset(_RecipeSource, Dataset):
    """(image, recipe) pairs of one partition of a canonical dataset.

    Args:
        dataset_dir: Folder with `recipes.jsonl`.
        partition: "train", "val", "test", or None for all recipes.
        tokenizer: Recipe tokenizer.
        transform: PIL RGB image -> (3, S, S) float tensor (`TrainTransform`, `EvalTransform`).
        images_root: Overrides where relative image paths resolve (see `resolve_image_path`).
        one_image_per_recipe: One item per recipe with images (its first image), for evaluation;
            otherwise one item per (recipe, image) pair.
        class_to_id: Class mapping to use; by default built from all partitions, sorted by name.
        strict: Raise `DatasetError` on a malformed line of `recipes.jsonl`; otherwise skip it.

    Items are dicts: `image` (3, S, S) float32, the recipe tensors of the tokenizer's contract
    (unbatched), `recipe_index` int and `class_id` int (-1 without a class); or None when the image
    cannot be read.
    """

    def __init__(
        self,
        dataset_dir: Path | str,
        partition: str | None,
        tokenizer: RecipeTokenizer,
        transform: ImageTransform,
        images_root: Path | str | None = None,
        *,
        one_image_per_recipe: bool = False,
        class_to_id: dict[str, int] | None = None,
        strict: bool = True,
    ) -> None:
        self._init_recipes(dataset_dir, partition, tokenizer, class_to_id, strict)
        self.transform = transform
        self.images_root = Path(images_root) if images_root is not None else None
        self.one_image_per_recipe = one_image_per_recipe
        # Flat int arrays rather than a list of tuples: cheap to share with forked workers.
        pairs = [
            (recipe_index, image_index)
            for recipe_index, recipe in enumerate(self.recipes)
            for image_index in range(1 if one_image_per_recipe else len(recipe.images))
            if recipe.images
        ]
        pair_array = np.array(pairs, dtype=np.int64).reshape(-1, 2)  # (n_items, 2)
        self.item_recipe, self.item_image = pair_array[:, 0], pair_array[:, 1]

    def __len__(self) -> int:
        return len(self.item_recipe)

    def recipe_groups(self) -> list[np.ndarray]:
        """Item indices of each recipe with images, in recipe order: the units of a recipe-level
        epoch (harness/loop.py's EpochSampler takes one item of each per epoch)."""
        if not len(self):
            return []
        boundaries = np.flatnonzero(np.diff(self.item_recipe)) + 1  # items are in recipe order
        return np.split(np.arange(len(self)), boundaries)

    def weighted_recipe_groups(self, full_text_repeats: int = 1) -> list[np.ndarray]:
        """`recipe_groups`, with each recipe that has ingredients and instructions listed
        `full_text_repeats` times (the extra copies after the rest, so the sampler shuffles them in)."""
        groups = self.recipe_groups()
        recipes = [self.recipes[self.item_recipe[group[0]]] for group in groups]
        full_text = [group for group, recipe in zip(groups, recipes) if recipe.ingredients and recipe.instructions]
        return groups + full_text * (full_text_repeats - 1)

    def image_path(self, index: int) -> Path:
        """Resolved path of item `index`'s image."""
        recipe = self.recipes[self.item_recipe[index]]
        entry = recipe.images[self.item_image[index]]
        return resolve_image_path(self.dataset_dir, entry, self.images_root)

    def __getitem__(self, index: int) -> dict | None:
        path = self.image_path(index)
        try:
            image = load_rgb(path)
        except ImageError as error:
            recipe_id = self.recipes[self.item_recipe[index]].id
            logger.warning("skipping image of recipe %r: %s", recipe_id, error)
            return None
        item = self._recipe_item(int(self.item_recipe[index]))
        item["image"] = self.transform(image)  # (3, S, S)
        return item


class RecipeTextDataset(_RecipeSource, Dataset):
    """Recipes alone (text-only ones included), for embedding a recipe table.

    Args:
        dataset_dir: Folder with `recipes.jsonl`.
        partition: "train", "val", "test", or None for all recipes.
        tokenizer: Recipe tokenizer.
        class_to_id: Class mapping to use; by default built from all partitions, sorted by name.
        strict: Raise `DatasetError` on a malformed line of `recipes.jsonl`; otherwise skip it.

    Items are the recipe tensors (unbatched), `recipe_index` and `class_id`.
    """

    def __init__(
        self,
        dataset_dir: Path | str,
        partition: str | None,
        tokenizer: RecipeTokenizer,
        *,
        class_to_id: dict[str, int] | None = None,
        strict: bool = True,
    ) -> None:
        self._init_recipes(dataset_dir, partition, tokenizer, class_to_id, strict)

    def __len__(self) -> int:
        return len(self.recipes)

    def __getitem__(self, index: int) -> dict:
        return self._recipe_item(index)


def collate_batch(items: Sequence[dict | None]) -> dict:
    """Collate dataset items, dropping None (unreadable images).

    Returns:
        The recipe contract tensors (B, ...), `image` (B, 3, S, S) when the items have images,
        `recipe_index` (B,) and `class_id` (B,) int64, and `n_skipped` (int). When every item
        was dropped the batch holds only `n_skipped`; callers skip batches without `recipe_index`.
    """
    kept = [item for item in items if item is not None]
    n_skipped = len(items) - len(kept)
    if not kept:
        return {"n_skipped": n_skipped}
    batch = collate_recipes(kept)
    if "image" in kept[0]:
        batch["image"] = torch.stack([item["image"] for item in kept])  # (B, 3, S, S)
    batch["recipe_index"] = torch.tensor([item["recipe_index"] for item in kept], dtype=torch.int64)
    batch["class_id"] = torch.tensor([item["class_id"] for item in kept], dtype=torch.int64)
    if "item_index" in kept[0]:  # set by the training loop's seeded sampler
        batch["item_index"] = torch.tensor([item["item_index"] for item in kept], dtype=torch.int64)
    batch["n_skipped"] = n_skipped
    return batch
