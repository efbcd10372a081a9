"""Train the MALM teacher: run set-up, the optimisation step and validation.

The epoch loop, checkpoints and exact resume are shared with distillation (training/loop.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from malm_edge.training import checkpoint as ckpt
from malm_edge.training.data.dataset import RecipeImageDataset, collate_batch
from malm_edge.training.data.canonical import load_recipes
from malm_edge.training.data.tokenizer import RecipeTokenizer, train_tokenizer
from malm_edge.training.data.transforms import EvalTransform, TrainTransform
from malm_edge.training.distributed import WorldInfo, all_reduce_mean, barrier, cleanup_distributed, init_distributed
from malm_edge.training.evaluate import embed_pairs, recipe_batch
from malm_edge.training.metrics import retrieval_metrics
from malm_edge.training.models.config import MalmConfig, TrainConfig, config_hash
from malm_edge.training.models.malm import MALM, create_model
from malm_edge.training.loop import (
    LoopSpec,
    NonFiniteLossError,
    TrainState,
    derive_seed,
    restore_state_checkpoint,
    run_epochs,
)
from malm_edge.training.run import RunError, RunPaths, check_new_run_dir, read_run_config, record_linked_paths

log = logging.getLogger(__name__)


def build_optimizer(model: MALM, train_cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam(W) with the paper's two learning rates: the CLIP image tower and everything else."""
    groups = [
        {"params": [p for p in model.image_tower_parameters() if p.requires_grad], "lr": train_cfg.image_lr, "name": "image"},
        {"params": [p for p in model.other_parameters() if p.requires_grad], "lr": train_cfg.lr, "name": "other"},
    ]
    for group in groups:
        group["base_lr"] = group["lr"]
    return torch.optim.AdamW(groups, weight_decay=train_cfg.weight_decay)



# --------------------------------------------------------------------------------------------
# Run set-up


@dataclass
class TeacherRun:
    """Everything the loop needs, built once."""

    paths: RunPaths
    model_cfg: MalmConfig
    train_cfg: TrainConfig
    data_dir: Path
    tokenizer: RecipeTokenizer
    preprocessing: Any


def start_run(
    out_dir: Path, data_dir: Path, model_cfg: MalmConfig, train_cfg: TrainConfig, world: WorldInfo
) -> TeacherRun:
    """Create a new run folder: tokenizer on the training partition, resolved config."""
    paths = RunPaths(out_dir)
    check_new_run_dir(out_dir, "teacher")
    if world.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        train_recipes = load_recipes(data_dir, partition="train")
        if not train_recipes:
            raise RunError(f"{data_dir}: the training partition is empty")
        tokenizer = train_tokenizer(train_recipes, vocab_size=model_cfg.vocab_size)
        tokenizer.save(paths.tokenizer)
        paths.metrics.write_text("")
    barrier()
    tokenizer = RecipeTokenizer.load(paths.tokenizer)
    model_cfg.vocab_size = tokenizer.vocab_size
    _, preprocessing = create_model(model_cfg, build=False)
    if world.is_main:
        config = run_config(model_cfg, train_cfg, data_dir, preprocessing)
        ckpt.write_json_atomic(paths.config, record_linked_paths(out_dir, config, ("data",)))
    barrier()
    return TeacherRun(paths, model_cfg, train_cfg, data_dir, tokenizer, preprocessing)


def run_config(model_cfg: MalmConfig, train_cfg: TrainConfig, data_dir: Path, preprocessing: Any) -> dict:
    """The resolved, JSON-safe description of a teacher run."""
    return {
        "kind": "teacher",
        "model": model_cfg.to_dict(),
        "train": train_cfg.to_dict(),
        "data": str(Path(data_dir).resolve()),
        "preprocessing": preprocessing.to_dict(),
        "config_hash": config_hash(model_cfg),
    }


def reopen_run(out_dir: Path) -> TeacherRun:
    """Open an existing run folder to resume it, with its own saved config."""
    config = read_run_config(out_dir, kind="teacher")
    paths = RunPaths(out_dir)
    model_cfg = MalmConfig.from_dict(config["model"])
    train_cfg = TrainConfig.from_dict(config["train"])
    tokenizer = RecipeTokenizer.load(paths.tokenizer)
    _, preprocessing = create_model(model_cfg, build=False)
    return TeacherRun(paths, model_cfg, train_cfg, Path(config["data"]), tokenizer, preprocessing)


def build_datasets(run: TeacherRun) -> tuple[Dataset, Dataset]:
    """The training pairs (augmented) and the validation pairs (one image per recipe)."""
    train_set = RecipeImageDataset(
        run.data_dir, "train", run.tokenizer, TrainTransform(run.preprocessing)
    )
    val_set = RecipeImageDataset(
        run.data_dir,
        "val",
        run.tokenizer,
        EvalTransform(run.preprocessing),
        one_image_per_recipe=True,
    )
    return train_set, val_set


# --------------------------------------------------------------------------------------------
# Checkpoints


# --------------------------------------------------------------------------------------------
# The loop


def validate(model: MALM, val_set: Dataset, batch_size: int, device: torch.device, bag_size: int = 1000) -> dict:
    """Image-to-recipe and recipe-to-image metrics on the validation pairs (tfood bags)."""
    model.eval()
    image_emb, recipe_emb, _ = embed_pairs(
        model.encode_images, model.encode_recipes, val_set, batch_size=batch_size, device=device
    )
    model.train()
    return retrieval_metrics(image_emb, recipe_emb, protocol="tfood", bag_size=bag_size)


def loss_terms(output: dict) -> dict[str, float]:
    """The named loss terms of a forward output, as floats for logging."""
    return {k: float(v.detach()) for k, v in output.items() if k.startswith("loss") and torch.is_tensor(v)}


def train_step(
    model: torch.nn.Module,
    core: MALM,
    optimizer: torch.optim.Optimizer,
    batch: dict,
    *,
    epoch: int,
    grad_clip: float,
    device: torch.device,
) -> dict[str, float]:
    """One optimisation step; raises NonFiniteLossError before touching the weights."""
    images = batch["image"].to(device, non_blocking=True)  # (B, 3, S, S)
    class_ids = batch["class_id"].to(device) if "class_id" in batch else None
    recipe_ids = batch["recipe_index"].to(device) if "recipe_index" in batch else None
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        output = model(images, recipe_batch(batch, device), epoch=epoch, class_ids=class_ids, recipe_ids=recipe_ids)
    loss = output["loss"]
    if not bool(torch.isfinite(all_reduce_mean(loss.detach()))):
        raise NonFiniteLossError(f"non-finite loss at epoch {epoch}: {loss_terms(output)}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(core.parameters(), grad_clip)
    optimizer.step()
    core.update_ema()
    return loss_terms(output)


def train_teacher(
    out_dir: Path,
    *,
    data_dir: Path | None = None,
    model_cfg: MalmConfig | None = None,
    train_cfg: TrainConfig | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_after_steps: int | None = None,
) -> dict:
    """Train (or resume) a MALM teacher run and return its summary.

    Args:
        out_dir: The run folder.
        data_dir: Canonical dataset folder (not needed on resume).
        model_cfg: Model config (not needed on resume: the run's own is used).
        train_cfg: Training config (idem).
        resume: Continue the run in `out_dir` from its last checkpoint.
        progress: Show a progress bar (rank 0).
        stop_after_steps: Stop (after checkpointing) once this many global steps are done; for tests
            and time-boxed benchmarks.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    world = init_distributed(device.type)
    try:
        if resume:
            run = reopen_run(out_dir)
        else:
            if data_dir is None or model_cfg is None or train_cfg is None:
                raise ValueError("a new run needs data_dir, model_cfg and train_cfg")
            run = start_run(out_dir, data_dir, model_cfg, train_cfg, world)
        return _train(run, world, device, resume=resume, progress=progress, stop_after_steps=stop_after_steps)
    finally:
        cleanup_distributed()


def _train(
    run: TeacherRun, world: WorldInfo, device: torch.device, *, resume: bool, progress: bool, stop_after_steps: int | None
) -> dict:
    cfg = run.train_cfg
    torch.manual_seed(derive_seed(cfg.seed, "init"))  # identical initial weights on every rank
    model, _ = create_model(run.model_cfg, load_clip_weights=not resume)
    model.to(device)
    optimizer = build_optimizer(model, cfg)
    state = restore_state_checkpoint(run.paths.root, model, optimizer) if resume else TrainState()
    ddp_model = (
        DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
        if world.distributed
        else model
    )
    train_set, val_set = build_datasets(run)

    def step(batch: dict, epoch: int) -> dict[str, float]:
        try:
            return train_step(ddp_model, model, optimizer, batch, epoch=epoch, grad_clip=cfg.grad_clip, device=device)
        except NonFiniteLossError as error:
            raise NonFiniteLossError(
                f"{error}; the run stopped, its last good checkpoint is kept in {run.paths.checkpoints}"
            ) from None

    spec = LoopSpec(
        run_dir=run.paths.root,
        model=model,
        optimizer=optimizer,
        train_set=train_set,
        collate=collate_batch,
        step=step,
        validate=lambda: validate(model, val_set, cfg.batch_size, device, cfg.eval_bag_size),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        warmup_steps=cfg.warmup_steps,
        seed=cfg.seed,
        num_workers=cfg.num_workers,
        log_every=cfg.log_every,
        save_every_steps=cfg.save_every_steps,
        config_hash=config_hash(run.model_cfg),
        frozen_group="image",
        frozen_group_epochs=cfg.freeze_image_epochs,
    )
    return run_epochs(spec, world, state, progress=progress, stop_after_steps=stop_after_steps)
