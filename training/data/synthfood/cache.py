"""The built-in default data: SynthFood, generated once into a cache folder on first use."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from malm_edge.training.data.records import RECIPES_FILE
from malm_edge.training.data.synthfood.generate import generate_synthfood

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """`$MALM_EDGE_CACHE`, else `~/.cache/malm-edge`."""
    return Path(os.environ.get("MALM_EDGE_CACHE", Path.home() / ".cache" / "malm-edge"))


def default_synthfood(
    *, n_recipes: int = 2000, images_per_recipe: int = 3, image_size: int = 128, seed: int = 0
) -> Path:
    """The SynthFood folder for these settings, generating it when it is not cached yet."""
    # v2: partitions per family (v1 folders split per recipe, leaking near-twins into val/test)
    folder = cache_root() / f"synthfood-v2-n{n_recipes}-k{images_per_recipe}-px{image_size}-seed{seed}"
    if not (folder / RECIPES_FILE).exists():
        log.info("generating SynthFood into %s (first use)", folder)
        generate_synthfood(
            folder,
            n_recipes=n_recipes,
            images_per_recipe=images_per_recipe,
            image_size=image_size,
            seed=seed,
            workers=os.cpu_count() or 1,
            overwrite=True,
        )
    return folder
