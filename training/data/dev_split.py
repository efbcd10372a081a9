"""Carve a dev split out of a dataset's train partition, for choosing hyper-parameters without val.

`carve_dev_split(SRC, OUT, size=300)` writes a new dataset OUT whose `val` partition is `size`
recipes drawn (seeded) from SRC's train recipes that look like SRC's val: they have photos and, when
SRC's val recipes have full text, ingredients and instructions too (Epicurious with
`--add-unpaired` has thousands of title-only training photos and a val of full recipes). The rest
of SRC's train stays `train`; SRC's val and test recipes are left out of OUT entirely, so nothing
trained or chosen on OUT can have seen them. Images are read in place: OUT's `dataset.json` points
`images_root` at SRC's (absolute), and absolute image paths stay as they are.

Train on OUT, compare runs by their val (= dev) metrics, then train the chosen setting on SRC and
report SRC's val or test.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

from malm_edge.training.data.canonical import (
    DatasetError,
    dataset_images_root,
    ensure_writable,
    load_recipes,
    read_dataset_meta,
    write_dataset,
)
from malm_edge.training.data.records import Recipe


def _has_full_text(recipe: Recipe) -> bool:
    return bool(recipe.ingredients) and bool(recipe.instructions)


def carve_dev_split(
    source: Path | str, out_dir: Path | str, size: int = 300, seed: int = 0, overwrite: bool = False
) -> dict:
    """Write OUT: SRC's train recipes, `size` of them moved to `val`; SRC's val and test dropped.

    Args:
        source: The dataset folder to carve from.
        out_dir: The new dataset folder.
        size: Dev recipes (each keeps all its photos).
        seed: Seed of the draw.
        overwrite: Replace an existing dataset at `out_dir`.

    Returns:
        The `dataset.json` written to `out_dir` (with the counts).

    Raises:
        DatasetError: For an unreadable SRC, too few eligible train recipes, or OUT being SRC.
    """
    source, out_dir = Path(source), Path(out_dir)
    if size < 1:
        raise DatasetError(f"dev size must be at least 1, got {size}")
    if out_dir.resolve() == source.resolve():
        raise DatasetError(f"{out_dir}: the dev dataset must go to a new folder, not over its source")
    ensure_writable(out_dir, overwrite)
    recipes = load_recipes(source)
    train = [recipe for recipe in recipes if recipe.partition == "train"]
    held_out = [recipe for recipe in recipes if recipe.partition != "train"]
    val_full_text = any(_has_full_text(recipe) for recipe in held_out if recipe.partition == "val")
    eligible = [i for i, recipe in enumerate(train) if recipe.images and (_has_full_text(recipe) or not val_full_text)]
    kind = "with photos and full text" if val_full_text else "with photos"
    if len(eligible) <= size:
        raise DatasetError(
            f"{source}: only {len(eligible)} train recipes {kind}; a dev split of {size} would leave none to train on"
        )
    dev = set(random.Random(seed).sample(eligible, size))
    carved = [replace(recipe, partition="val") if i in dev else recipe for i, recipe in enumerate(train)]
    source_meta = read_dataset_meta(source)
    meta = {
        "format": source_meta.get("format", "malm-edge-dataset"),
        "version": source_meta.get("version", 1),
        "source": source_meta.get("source"),
        "dev_split_of": str(source.resolve()),
        "dev_split": {"size": size, "seed": seed, "drawn_from": f"train recipes {kind}"},
        "n_recipes": len(carved),
        "partitions": {"train": len(carved) - size, "val": size, "test": 0},
        "dropped": {name: sum(r.partition == name for r in held_out) for name in ("val", "test")},
        "images_root": str(dataset_images_root(source).resolve()),
    }
    write_dataset(out_dir, iter(carved), meta)
    return meta
