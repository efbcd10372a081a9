"""Embed a split with a trained model and score it with `retrieval_metrics`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from malm_edge.training.data.dataset import collate_batch
from malm_edge.training.data.tokenizer import RECIPE_KEYS


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
        from malm_edge.training.run import RunError

        raise RunError("the evaluation split has no readable image-recipe pairs (is the partition empty?)")
    recipe_emb = torch.cat(recipes).numpy() if recipes else np.zeros((0, 0), dtype=np.float32)
    return torch.cat(images).numpy(), recipe_emb, torch.cat(indices).numpy()



def evaluate_teacher(
    run_dir: Path,
    data_dir: Path | None = None,
    *,
    split: str = "val",
    protocol: str = "tfood",
    bag_size: int = 1000,
    n_bags: int | None = None,
    which: str = "best",
) -> dict:
    """Retrieval metrics of a teacher run on a split (`{"run", "split", "metrics"}`)."""
    from malm_edge.training.data.dataset import RecipeImageDataset
    from malm_edge.training.data.transforms import EvalTransform
    from malm_edge.training.metrics import retrieval_metrics
    from malm_edge.training.teacher import load_teacher

    teacher = load_teacher(run_dir, which)
    data_dir = Path(data_dir or teacher.config["data"])
    dataset = RecipeImageDataset(
        data_dir,
        split,
        teacher.tokenizer,
        EvalTransform(teacher.preprocessing),
        one_image_per_recipe=True,
    )
    image_emb, recipe_emb, recipe_index = embed_pairs(
        teacher.model.encode_images, teacher.model.encode_recipes, dataset
    )
    ids = [dataset.recipes[i].id for i in recipe_index]
    metrics = retrieval_metrics(
        image_emb, recipe_emb, protocol=protocol, bag_size=bag_size, n_bags=n_bags, ids=ids
    )
    return {"run": str(run_dir), "split": split, "metrics": metrics}


def evaluate_student(
    run_dir: Path,
    data_dir: Path | None = None,
    *,
    split: str = "val",
    protocol: str = "tfood",
    bag_size: int = 1000,
    n_bags: int | None = None,
    which: str = "best",
) -> dict:
    """Student and teacher metrics on the same bags, and retention = student R@1 / teacher R@1.

    Both rank the teacher's recipe embeddings; only the image tower differs.
    """
    from malm_edge.training.data.dataset import RecipeImageDataset
    from malm_edge.training.data.transforms import EvalTransform
    from malm_edge.training.metrics import retrieval_metrics
    from malm_edge.training.student_run import load_student
    from malm_edge.training.teacher import load_teacher

    student = load_student(run_dir, which)
    teacher = load_teacher(student.teacher_run)
    data_dir = Path(data_dir or student.config["data"])
    dataset = RecipeImageDataset(
        data_dir, split, teacher.tokenizer, EvalTransform(student.preprocessing), one_image_per_recipe=True
    )
    teacher_images, recipe_emb, recipe_index = embed_pairs(teacher.model.encode_images, teacher.model.encode_recipes, dataset)
    student_images, _, _ = embed_pairs(student.model, None, dataset)
    ids = [dataset.recipes[i].id for i in recipe_index]
    scores = {
        name: retrieval_metrics(images, recipe_emb, protocol=protocol, bag_size=bag_size, n_bags=n_bags, ids=ids)
        for name, images in (("teacher", teacher_images), ("student", student_images))
    }
    teacher_r1 = scores["teacher"]["image_to_recipe"]["r1"]
    retention = scores["student"]["image_to_recipe"]["r1"] / teacher_r1 if teacher_r1 > 0 else None
    return {"run": str(run_dir), "split": split, **scores, "retention": retention}
