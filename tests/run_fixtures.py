"""Builders of fake training artifacts for tests: a tiny canonical dataset and a micro teacher run.

`make_dataset` writes a canonical dataset whose photos are real ones (absolute paths, read in
place) when given, else small synthetic images; some recipes have no image (a catalog must embed
them too). `make_teacher_run` saves a randomly initialised `micro` MALM in exactly the layout
training/run.py + training/checkpoint.py define (config.json kind "teacher", tokenizer.json,
checkpoints/ via `save_checkpoint`), so `load_teacher` reads it like a trained run.
`calibrate_batchnorm` gives a randomly initialised CNN realistic activation ranges (its BN running
statistics measured on real photos) so int8 quantization tests mean something.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from malm_edge.training.data.records import Recipe, write_recipes_jsonl

_WORDS = ["chicken", "curry", "tomato", "basil", "lemon", "garlic", "rice", "noodle", "beef", "tofu",
          "salmon", "mushroom", "pepper", "ginger", "apple", "chocolate", "onion", "butter"]


def fake_recipe(i: int, images: list[str], partition: str, rng: np.random.Generator) -> Recipe:
    """A recipe with word-based title, ingredients and steps."""
    words = [_WORDS[j] for j in rng.choice(len(_WORDS), size=4, replace=False)]
    return Recipe(id=f"rec{i:05d}", title=f"{words[0].title()} with {words[1]} {i}",
                  ingredients=[f"{1 + i % 3} cups {w}" for w in words],
                  instructions=[f"Chop the {words[0]}.", f"Cook with {words[2]} and {words[3]}.", "Serve."],
                  images=images, partition=partition)


def _synthetic_photos(out_dir: Path, n: int, seed: int) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = out_dir / "images"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        pixels = (rng.random((48 + i % 16, 80, 3)) * 255).astype(np.uint8)
        path = folder / f"img{i:03d}.jpg"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def make_dataset(out_dir: Path, photos: list[Path] | None = None, *, n_train_photos: int = 16,
                 n_val_photos: int = 16, n_text_only: int = 24, seed: int = 0) -> Path:
    """A canonical dataset: train recipes with photos, val recipes with photos, text-only recipes.

    Photos are used in order (train first, then val); `photos=None` makes synthetic ones.
    """
    out_dir = Path(out_dir)
    needed = n_train_photos + n_val_photos
    photos = list(photos or _synthetic_photos(out_dir, needed, seed))[:needed]
    rng = np.random.default_rng(seed)
    recipes = []
    for i, photo in enumerate(photos):
        partition = "train" if i < n_train_photos else "val"
        recipes.append(fake_recipe(i, [str(Path(photo).resolve())], partition, rng))
    for j in range(n_text_only):
        recipes.append(fake_recipe(len(photos) + j, [], "train" if j % 2 else "test", rng))
    write_recipes_jsonl(recipes, out_dir)
    return out_dir


def make_teacher_run(run_dir: Path, data_dir: Path, *, seed: int = 0) -> Path:
    """Save a random-init `micro` MALM as a teacher run folder readable by `load_teacher`."""
    from malm_edge.training.configs import config_hash
    from malm_edge.training.data.canonical import load_recipes
    from malm_edge.training.data.tokenizer import train_tokenizer
    from malm_edge.training.harness import checkpoint as ckpt
    from malm_edge.training.harness.run import RunPaths
    from malm_edge.training.harness.teacher import run_config
    from malm_edge.training.models.malm import create_model
    from malm_edge.training.presets import get_preset

    run_dir = Path(run_dir)
    paths = RunPaths(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(load_recipes(data_dir), vocab_size=256, min_frequency=1)
    tokenizer.save(paths.tokenizer)
    model_cfg, train_cfg = get_preset("micro")
    model_cfg.vocab_size = tokenizer.vocab_size
    torch.manual_seed(seed)
    model, preprocessing = create_model(model_cfg, load_clip_weights=False)
    ckpt.write_json_atomic(paths.config, run_config(model_cfg, train_cfg, data_dir, preprocessing))
    meta = {"epoch": 0, "global_step": 0, "config_hash": config_hash(model_cfg)}
    ckpt.save_checkpoint(paths.checkpoints, model.state_dict(), {"counters": {}}, meta,
                         tag="step-00000000", is_best=True)
    return run_dir


def calibrate_batchnorm(model: nn.Module, pixels: torch.Tensor) -> nn.Module:
    """Set every BN's running statistics to those of `pixels` (N, 3, S, S); returns eval model."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the forward passes below
    model.train()
    with torch.no_grad():
        model(pixels)
    return model.eval()


def make_student(preset: str, pixels: torch.Tensor, *, embed_dim: int | None = None,
                 seed: int = 0) -> nn.Module:
    """A random-init student with BN statistics from real photos (eval mode)."""
    from malm_edge.training.models.student import create_student
    from malm_edge.training.presets import get_student_preset

    torch.manual_seed(seed)
    overrides = {"embed_dim": embed_dim} if embed_dim else {}
    return calibrate_batchnorm(create_student(get_student_preset(preset, **overrides)), pixels)


def make_student_run(run_dir: Path, teacher_run: Path, model: nn.Module, preprocessing: object) -> Path:
    """Save a student as a run folder readable by `training.student_run.load_student`
    (the layout of training/distill.py: config.json kind "student", checkpoints/)."""

    from malm_edge.training.configs import config_hash
    from malm_edge.training.harness import checkpoint as ckpt
    from malm_edge.training.harness.run import RunPaths

    run_dir = Path(run_dir)
    paths = RunPaths(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    student_cfg = model.config.to_dict()
    config = {"kind": "student", "arch": student_cfg["arch"], "student": student_cfg,
              "teacher_run": str(Path(teacher_run).resolve()),
              "preprocessing": preprocessing.to_dict(),
              "config_hash": config_hash(model.config)}
    ckpt.write_json_atomic(paths.config, config)
    ckpt.save_checkpoint(paths.checkpoints, model.state_dict(), {"counters": {}},
                         {"epoch": 0, "global_step": 0}, tag="step-00000000", is_best=True)
    return run_dir
