"""Image -> recipe retrieval on the validation split, for the bundle manifest and the report.

Pairs are the val recipes that have a photo (first photo each, first `limit` readable in file
order); recipe embeddings come from the teacher's recipe tower, image embeddings from whichever
stage is measured (teacher, eager student, quantized student, exported file through its runtime).
Metrics are `training.metrics.retrieval_metrics` (image -> recipe, tfood protocol; with fewer rows
than the bag size, one bag of all rows, its true size reported).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from malm_edge.converters.calibration import as_preprocessing
from malm_edge.training.data.canonical import iter_records, resolve_image_path
from malm_edge.training.data.records import Recipe
from malm_edge.training.data.transforms import (
    EvalTransform,
    ImageError,
    Preprocessing,
    load_rgb,
)
from malm_edge.training.metrics import retrieval_metrics

DEFAULT_VAL_LIMIT = 1000


@dataclass
class ValPairs:
    """Val photos (as paths) and their recipes, row i a true pair."""

    photos: list[Path]
    recipes: list[Recipe]

    def pixels(self, preprocessing: Preprocessing | dict) -> torch.Tensor:
        """(N, 3, S, S) float32 photos through the eval transform of `preprocessing`."""
        transform = EvalTransform(as_preprocessing(preprocessing))
        return torch.stack([transform(load_rgb(p)) for p in self.photos])

    def raw_rgb(self, preprocessing: Preprocessing | dict) -> np.ndarray:
        """(N, 3, S, S) float32 0..255 RGB (resized and cropped, not normalised)."""
        prep = as_preprocessing(preprocessing)
        pixels = self.pixels(prep).numpy()  # (N, 3, S, S) normalised
        mean = np.asarray(prep.mean, np.float32)[None, :, None, None]
        std = np.asarray(prep.std, np.float32)[None, :, None, None]
        return pixels * std * np.float32(255.0) + mean * np.float32(255.0)


def load_val_pairs(recipes_dir: Path, limit: int = DEFAULT_VAL_LIMIT,
                   partition: str = "val") -> ValPairs | None:
    """The first `limit` val recipes with a readable photo, or None when there are none."""
    photos, recipes = [], []
    for recipe in iter_records(recipes_dir):
        if len(photos) >= limit:
            break
        if recipe.partition != partition or not recipe.images:
            continue
        path = resolve_image_path(recipes_dir, recipe.images[0])
        try:
            load_rgb(path)
        except ImageError:
            continue
        photos.append(path)
        recipes.append(recipe)
    return ValPairs(photos, recipes) if photos else None


def image_to_recipe(image_emb: np.ndarray, recipe_emb: np.ndarray) -> dict[str, float]:
    """{"r1", "r5", "r10", "medr", "bag_size", "n_bags"} image -> recipe on aligned rows."""
    metrics = retrieval_metrics(np.asarray(image_emb, np.float32), np.asarray(recipe_emb, np.float32))
    out = {k: float(v) for k, v in metrics["image_to_recipe"].items()}
    out.update(bag_size=int(metrics["bag_size"]), n_bags=int(metrics["n_bags"]))
    return out


def torch_latency_ms(module: Callable[[torch.Tensor], Any], one: torch.Tensor, repeats: int = 10) -> float:
    """Median wall time (ms) of one eager forward on a (1, 3, S, S) input, after a warm-up."""
    with torch.inference_mode():
        module(one)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            module(one)
            times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers (int8 tensors count 1 byte per value)."""
    tensors = {id(t): t for t in list(module.parameters()) + list(module.buffers())}
    return int(sum(t.numel() * t.element_size() for t in tensors.values()))
