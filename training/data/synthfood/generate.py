"""SynthFood: a procedural food image-to-recipe dataset, built from pillow and numpy alone.

Why
    A dataset that installs with the package and generates in a minute, so every part of the
    pipeline (MALM teacher, distillation, export, on-device search) can be trained and tested
    without Recipe1M. It is made so that image-to-recipe retrieval is learnable but not trivial, and
    so that it rewards fine-grained local evidence, which is what MALM's masked self-distillation and
    patch-level matching (arXiv 2305.11327, Sec. 3.2-3.3) claim to exploit.

Vocabulary (`synthfood_vocab`)
    `INGREDIENTS` (116): each has its own look: a base HSV colour with per-piece jitter, a piece
    shape (circle, cube, wedge, halfmoon, crescent, leaf, grain, crumb, stick, blob, dot, slice,
    ring, strand), a piece size and a texture (flat, noise, speckle, stripes, spots, shaded, center,
    seeds) with a secondary colour. Several are near-twins on purpose (carrots / sweet potato /
    butternut squash are orange cubes that differ in hue and texture). `BASES` are colour fields:
    broths, sauces, doughs, breads, tortillas, sponges. `PANTRY_INGREDIENTS` (salt, oil, water...)
    appear in the text only. `DISH_TYPES` (14): soup, salad, pasta, pizza, layered cake, stir-fry,
    sandwich, rice and curry, skewers, sushi platter, tacos, pancakes stack, poke bowl, fruit tart;
    each names its layout, base/sauce kinds and ingredient slots (pools by category).

Recipes (`synthfood_recipes`)
    Recipes come in families: a base recipe per dish type (base, sauce, 2-6 ingredients with an
    amount level each), then 1-5 variants that swap one or two ingredients (or the sauce/base) for
    another of the same slot, keeping the amounts. Family members differ only in a few pieces of the
    image, so retrieval must look at local pieces. Dish types take turns, so classes are balanced.
    Text: titles from templates and synonyms (some generic or naming an invisible pantry item,
    e.g. "Grandma's Tuesday Curry with Peas", "Sunday Special"; variants keep the base title 35% of
    the time), ingredient lines with quantities and units whose amount sets the piece count
    ("2 1/2 cups diced carrots", metric or imperial; in the image the amount sets the piece count, or the
    band thickness, sector width, repeats on a skewer, rolls on a sushi board), 2-4 invisible pantry lines, and 3-10
    instruction steps (prep steps whose verb matches the piece shape, dish-specific assembly,
    pantry and filler steps).

Rendering (`synthfood_render`, `synthfood_layouts`)
    Per image: a table (wood, checked cloth, stone, plain), the dish's furniture (plate, bowl, pan,
    board, bread, dough), then one layer per ingredient holding its pieces placed by the dish's rule
    (floating, heaped, scattered, banded, threaded on sticks, rolled, in sectors or rings), textured
    with a cached pattern and pasted with a drop shadow. Renders of one recipe differ in pose
    (rotation, offset, camera tilt), scale, piece arrangement, lighting (brightness, colour cast,
    gradient), background, partial occlusion (napkin, utensil, glass) and JPEG quality (55-95).

Determinism and output
    Recipes come from one stream seeded by `seed`; each image from (seed, recipe index, render), so
    `workers` does not change any byte. Output is the canonical format (docs/architecture.md):
    `images/<id>_<k>.jpg` first, `recipes.jsonl` last and atomically, so a folder without
    `recipes.jsonl` is never a finished dataset. Partitions are drawn per family (seeded; no val or
    test recipe has a member of its family in train), `class` is the dish type.

Speed (benchmarks/bench_synthfood.py, one process; CPU time of rendering alone): about 300 images/s
at 64 px, 230-280 at 128 px, 130-140 at 224 px, i.e. over ten thousand a minute on one core at 128 px;
end to end (JPEG + disk) on a loaded 2-core box, 100-220 images/s at 64-128 px.
"""

from __future__ import annotations

import logging
import random
import shutil
import time
from pathlib import Path
from typing import Iterator, Sequence

from malm_edge.training.data.records import PARTITIONS, RECIPES_FILE, Recipe, write_recipes_jsonl
from malm_edge.training.data.synthfood.layouts import render_recipe_jpeg
from malm_edge.training.data.synthfood.recipes import RecipeSpec, recipe_text, sample_families
from malm_edge.training.data.synthfood.vocab import (
    BASES,
    DISH_TYPE_NAMES,
    DISH_TYPES,
    INGREDIENT_NAMES,
    INGREDIENTS,
    PANTRY_INGREDIENTS,
)
from malm_edge.training.errors import TrainingError

__all__ = [
    "BASES", "DISH_TYPES", "DISH_TYPE_NAMES", "INGREDIENTS", "INGREDIENT_NAMES", "PANTRY_INGREDIENTS",
    "SynthFoodExistsError", "generate_synthfood", "synthfood_recipes",
]

logger = logging.getLogger(__name__)
IMAGES_DIR = "images"


class SynthFoodExistsError(TrainingError, FileExistsError):
    """The output folder already holds a finished dataset and overwrite was not asked for."""


def recipe_id(index: int) -> str:
    """Dataset id of the recipe at `index`."""
    return f"sf{index:06d}"


def image_path(index: int, render: int) -> str:
    """Image path, relative to the dataset folder, of render `render` of recipe `index`."""
    return f"{IMAGES_DIR}/{recipe_id(index)}_{render}.jpg"


def assign_partitions(families: Sequence[int], seed: int, val_fraction: float, test_fraction: float) -> list[str]:
    """Partition per FAMILY: a seeded shuffle of the families; whole families go to test until it holds
    its share of the recipes, then to val; the rest train.

    Family members differ in one or two ingredients and often share a title, so a per-recipe draw
    would put a near-twin of most val/test recipes in train (measured on the default 2,000 recipes:
    393 of 400). A non-zero share gets at least one family once there are 3 families; train always
    keeps one.

    Args:
        families: (n_recipes,) family number of each recipe.
    """
    members: dict[int, list[int]] = {}
    for index, family in enumerate(families):
        members.setdefault(family, []).append(index)
    order = sorted(members)
    random.Random(f"synthfood-family-partitions-{seed}").shuffle(order)
    n_recipes = len(families)
    partitions = ["train"] * n_recipes
    position = 0
    for name, fraction in (("test", test_fraction), ("val", val_fraction)):
        wanted, taken = round(n_recipes * fraction), 0
        while position < len(order) - 1 and fraction > 0 and len(order) >= 3 and (taken < wanted or taken == 0):
            for index in members[order[position]]:
                partitions[index] = name
            taken += len(members[order[position]])
            position += 1
    return partitions


def synthfood_recipes(n_recipes: int, *, images_per_recipe: int = 3, seed: int = 0, val_fraction: float = 0.1,
                      test_fraction: float = 0.1) -> tuple[list[RecipeSpec], list[Recipe]]:
    """The recipe specs and their canonical records (text, image paths, partition, class); no images."""
    specs = sample_families(n_recipes, seed)
    partitions = assign_partitions([spec.family for spec in specs], seed, val_fraction, test_fraction)
    base_titles: dict[int, str] = {}
    records = []
    for spec in specs:
        title, ingredients, instructions = recipe_text(spec, seed, base_titles.get(spec.family))
        base_titles.setdefault(spec.family, title)
        records.append(Recipe(id=recipe_id(spec.index), title=title, ingredients=ingredients,
                              instructions=instructions,
                              images=[image_path(spec.index, k) for k in range(images_per_recipe)],
                              partition=partitions[spec.index], class_name=spec.dish))
    return specs, records


def _check_arguments(n_recipes: int, images_per_recipe: int, image_size: int, val_fraction: float,
                     test_fraction: float, workers: int) -> None:
    if n_recipes < 1 or images_per_recipe < 1 or workers < 0:
        raise ValueError(f"n_recipes ({n_recipes}) and images_per_recipe ({images_per_recipe}) must be at least 1 "
                         f"and workers ({workers}) at least 0")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16 px, got {image_size}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must leave a train share")


def _prepare_folder(out_dir: Path, overwrite: bool) -> None:
    """Refuse a finished dataset unless overwrite; then drop its records first, so a crash never pairs
    old records with new images."""
    existing = out_dir / RECIPES_FILE
    if existing.exists():
        if not overwrite:
            raise SynthFoodExistsError(f"{existing} already exists: refusing to overwrite a finished dataset")
        existing.unlink()
        shutil.rmtree(out_dir / IMAGES_DIR, ignore_errors=True)
    (out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)


def _render_recipe(task: tuple[RecipeSpec, int, int, int, str]) -> int:
    """Worker: render and write every image of one recipe; returns how many were written."""
    spec, image_size, seed, images_per_recipe, out_dir = task
    for render in range(images_per_recipe):
        jpeg = render_recipe_jpeg(spec, image_size, seed, render)
        (Path(out_dir) / image_path(spec.index, render)).write_bytes(jpeg)
    return images_per_recipe


def _run_tasks(tasks: list[tuple[RecipeSpec, int, int, int, str]], workers: int) -> Iterator[int]:
    if workers <= 1:
        yield from map(_render_recipe, tasks)
        return
    import multiprocessing

    # fork where there is one: works from any caller (stdin scripts, notebooks); rendering itself
    # uses no threads. Output does not depend on the start method.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(workers) as pool:
        yield from pool.imap_unordered(_render_recipe, tasks, chunksize=max(1, len(tasks) // (workers * 16)))


def _render_all(tasks: list[tuple[RecipeSpec, int, int, int, str]], workers: int, progress: bool) -> int:
    total = sum(task[3] for task in tasks)
    if not progress:
        return sum(_run_tasks(tasks, workers))
    from malm_edge.training.progress import Progress

    done = 0
    with Progress("SynthFood images", total, unit="images", transient=True) as bar:
        for written in _run_tasks(tasks, workers):
            done += written
            bar.advance(written)
    return done


def generate_synthfood(out_dir: Path, *, n_recipes: int = 2000, images_per_recipe: int = 3, image_size: int = 128,
                       seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.1, workers: int = 1,
                       progress: bool = True, overwrite: bool = False) -> dict:
    """Generate a SynthFood dataset in the canonical format (`recipes.jsonl` + `images/`).

    Args:
        out_dir: Output folder (created if missing).
        n_recipes: Number of recipes.
        images_per_recipe: Renders per recipe.
        image_size: Square image side in pixels.
        seed: Same seed, same bytes (recipes.jsonl and every JPEG), whatever `workers` is.
        val_fraction: Share of recipes in the val partition.
        test_fraction: Share of recipes in the test partition.
        workers: Processes rendering images (0 or 1: in this process).
        progress: Show a rich progress bar.
        overwrite: Replace a finished dataset already in `out_dir`.

    Returns:
        Stats: n_recipes, n_images, n_families, n_classes, image_size, seed, seconds, images_per_second
        and `partitions` {name: {"recipes", "images"}}.

    Raises:
        SynthFoodExistsError: `out_dir/recipes.jsonl` exists and overwrite is False.
        ValueError: An argument is out of range.
    """
    out_dir = Path(out_dir)
    _check_arguments(n_recipes, images_per_recipe, image_size, val_fraction, test_fraction, workers)
    _prepare_folder(out_dir, overwrite)
    start = time.perf_counter()
    specs, records = synthfood_recipes(n_recipes, images_per_recipe=images_per_recipe, seed=seed,
                                       val_fraction=val_fraction, test_fraction=test_fraction)
    tasks = [(spec, image_size, seed, images_per_recipe, str(out_dir)) for spec in specs]
    n_images = _render_all(tasks, workers, progress)
    write_recipes_jsonl(records, out_dir)  # last: its presence marks a finished dataset
    seconds = time.perf_counter() - start
    stats = {
        "n_recipes": len(records), "n_images": n_images, "n_families": len({spec.family for spec in specs}),
        "n_classes": len({spec.dish for spec in specs}), "image_size": image_size, "seed": seed,
        "seconds": round(seconds, 3), "images_per_second": round(n_images / max(seconds, 1e-9), 1),
        "partitions": {name: {"recipes": sum(r.partition == name for r in records),
                              "images": sum(len(r.images) for r in records if r.partition == name)}
                       for name in PARTITIONS},
    }
    logger.info("SynthFood: %d recipes, %d images in %.1f s -> %s", len(records), n_images, seconds, out_dir)
    return stats
