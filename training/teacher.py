"""Load a trained teacher run for inference: model (eval mode), tokenizer and preprocessing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from malm_edge.training import checkpoint as ckpt
from malm_edge.training.data.tokenizer import RecipeTokenizer
from malm_edge.training.models.config import MalmConfig
from malm_edge.training.models.malm import MALM, create_model
from malm_edge.training.run import RunPaths, read_run_config


@dataclass
class LoadedTeacher:
    """A teacher ready for `encode_images` / `encode_recipes`."""

    model: MALM
    tokenizer: RecipeTokenizer
    preprocessing: Any
    config: dict
    checkpoint: Path


def load_teacher(run_dir: Path, which: str = "best") -> LoadedTeacher:
    """Load a teacher run's `best` (or `last`) checkpoint in eval mode on the CPU."""
    config = read_run_config(run_dir, kind="teacher")
    model_cfg = MalmConfig.from_dict(config["model"])
    model, preprocessing = create_model(model_cfg, load_clip_weights=False)
    folder = ckpt.resolve_checkpoint(run_dir, which)
    ckpt.load_weights_into(model, ckpt.load_model_state(folder), source=folder)
    model.eval()
    tokenizer = RecipeTokenizer.load(RunPaths(run_dir).tokenizer)
    return LoadedTeacher(model, tokenizer, preprocessing, config, folder)
