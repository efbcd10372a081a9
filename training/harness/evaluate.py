"""Embed an evaluation split with a model's image and recipe towers (scored by training/metrics.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from malm_edge.training.data.dataset import RecipeImageDataset, collate_batch
from malm_edge.training.data.tokenizer import RECIPE_KEYS, RecipeTokenizer
from malm_edge.training.data.transforms import EvalTransform, Preprocessing
from malm_edge.training.harness.run import RunError


def recipe_batch(batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """The recipe tensors of a collated batch, moved to `device`."""
    return {key: batch[key].to(device, non_blocking=True) for key in RECIPE_KEYS}


@torch.no_grad()
def embed_pairs(
    encode_images: Callable[[torch.Tensor], torch.Tensor],
    encode_recipes: Callable[[dict], torch.Tensor] | None,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embed every readable (image, recipe) pair of an evaluation dataset.

    Returns:
        (image_emb, recipe_emb, recipe_index): float32 (N, D) arrays, row i of each a true pair, and
        the (N,) position of each pair's recipe in `dataset.recipes` (unreadable images are skipped).
        With `encode_recipes=None` the recipe array is empty (images only).
    """
    device = torch.device(device)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_batch
    )
    images, recipes, indices = [], [], []
    for batch in loader:
        if "image" not in batch:  # every image of this batch was unreadable
            continue
        images.append(encode_images(batch["image"].to(device)).float().cpu())  # (B, D)
        if encode_recipes is not None:
            recipes.append(encode_recipes(recipe_batch(batch, device)).float().cpu())  # (B, D)
        indices.append(batch["recipe_index"])
    if not images:
        raise RunError("the evaluation split has no readable image-recipe pairs (is the partition empty?)")
    recipe_emb = torch.cat(recipes).numpy() if recipes else np.zeros((0, 0), dtype=np.float32)
    return torch.cat(images).numpy(), recipe_emb, torch.cat(indices).numpy()


def eval_split(
    data_dir: Path, split: str, tokenizer: RecipeTokenizer, preprocessing: Preprocessing
) -> RecipeImageDataset:
    """One image per recipe of a split, through the eval transform."""
    return RecipeImageDataset(data_dir, split, tokenizer, EvalTransform(preprocessing), one_image_per_recipe=True)
