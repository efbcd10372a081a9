"""The MALM teacher job: run set-up, the optimisation step, validation, and loading a trained run.

The run template, the epoch loop, checkpoints and exact resume are shared with distillation
(harness/loop.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset

from malm_edge.training.configs import config_hash, with_overrides
from malm_edge.training.data.canonical import load_recipes, recipes_path
from malm_edge.training.data.dataset import RecipeImageDataset
from malm_edge.training.data.sentence_embeddings import SentenceEmbedder, embedder_for_recipes
from malm_edge.training.data.synthfood.cache import cache_root
from malm_edge.training.data.tokenizer import RecipeTokenizer, train_tokenizer
from malm_edge.training.data.transforms import (
    EvalTransform,
    Preprocessing,
    TrainTransform,
)
from malm_edge.training.harness import checkpoint as ckpt
from malm_edge.training.harness.distributed import WorldInfo, barrier, wrap_ddp
from malm_edge.training.harness.evaluate import embed_pairs, eval_split, recipe_batch
from malm_edge.training.harness.feature_cache import AugmentationCache
from malm_edge.training.harness.loop import (
    LoopSpec,
    TrainState,
    derive_seed,
    loss_terms,
    raise_if_non_finite,
    restore_state_checkpoint,
    run_epochs,
    run_job,
)
from malm_edge.training.harness.run import (
    RunError,
    RunPaths,
    check_new_run_dir,
    read_run_config,
    record_linked_paths,
)
from malm_edge.training.metrics import retrieval_metrics
from malm_edge.training.models.config import MalmConfig
from malm_edge.training.models.malm import MALM, create_model
from malm_edge.training.models.student import prepare_for_export
from malm_edge.training.schedule import TrainConfig

log = logging.getLogger(__name__)

TRUNK_CACHE_FOLDER = "trunk-grids"

RecipeInputs = RecipeTokenizer | SentenceEmbedder  # recipe -> the recipe tower's input tensors


def build_optimizer(model: MALM, train_cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam(W) with the paper's two learning rates: the CLIP image tower and everything else."""
    groups = [
        {
            "params": [p for p in model.image_tower_parameters() if p.requires_grad],
            "lr": train_cfg.image_lr,
            "name": "image",
        },
        {"params": [p for p in model.other_parameters() if p.requires_grad], "lr": train_cfg.lr, "name": "other"},
    ]
    tuned = model.tuned_trunk_parameters()
    if tuned:  # not frozen with the rest of the tower; "other" stays the last group
        groups.insert(1, {"params": tuned, "lr": train_cfg.image_lr, "name": "trunk_tuned"})
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
    tokenizer: RecipeInputs
    preprocessing: Preprocessing


def open_recipe_inputs(paths: RunPaths, model_cfg: MalmConfig, data_dir: Path) -> RecipeInputs:
    """What turns a recipe into the recipe tower's inputs: the run's WordPiece tokenizer, or (for
    text_tower="minilm") the sentence embedder, knowing every sentence of the run's dataset."""
    if model_cfg.text_tower == "minilm":
        return embedder_for_recipes(load_recipes(data_dir, partition=None))
    return RecipeTokenizer.load(paths.tokenizer)


def start_run(
    out_dir: Path,
    data_dir: Path,
    model_cfg: MalmConfig,
    train_cfg: TrainConfig,
    world: WorldInfo,
    preset: str | None = None,
) -> TeacherRun:
    """Create a new run folder: tokenizer on the training partition, resolved config."""
    paths = RunPaths(out_dir)
    check_new_run_dir(out_dir, "teacher")
    if world.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        train_recipes = load_recipes(data_dir, partition="train")
        if not train_recipes:
            raise RunError(f"{data_dir}: the training partition is empty")
        if model_cfg.text_tower == "wordpiece":
            train_tokenizer(train_recipes, vocab_size=model_cfg.vocab_size).save(paths.tokenizer)
        paths.metrics.write_text("")
    barrier()
    tokenizer = open_recipe_inputs(paths, model_cfg, data_dir)
    if isinstance(tokenizer, RecipeTokenizer):
        model_cfg = with_overrides(model_cfg, vocab_size=tokenizer.vocab_size)
    _, preprocessing = create_model(model_cfg, build=False)
    if world.is_main:
        config = run_config(model_cfg, train_cfg, data_dir, preprocessing, preset)
        ckpt.write_json_atomic(paths.config, record_linked_paths(out_dir, config, ("data",)))
    barrier()
    return TeacherRun(paths, model_cfg, train_cfg, data_dir, tokenizer, preprocessing)


def run_config(
    model_cfg: MalmConfig,
    train_cfg: TrainConfig,
    data_dir: Path,
    preprocessing: Preprocessing,
    preset: str | None = None,
) -> dict:
    """The resolved, JSON-safe description of a teacher run (`preset`: the name it started from, which
    picks the default distillation schedule)."""
    return {
        "kind": "teacher",
        "preset": preset,
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
    tokenizer = open_recipe_inputs(paths, model_cfg, Path(config["data"]))
    _, preprocessing = create_model(model_cfg, build=False)
    return TeacherRun(paths, model_cfg, train_cfg, Path(config["data"]), tokenizer, preprocessing)


def build_datasets(run: TeacherRun) -> tuple[Dataset, Dataset]:
    """The training pairs (augmented) and the validation pairs (one image per recipe)."""
    train_set = RecipeImageDataset(run.data_dir, "train", run.tokenizer, TrainTransform(run.preprocessing))
    val_set = RecipeImageDataset(
        run.data_dir,
        "val",
        run.tokenizer,
        EvalTransform(run.preprocessing),
        one_image_per_recipe=True,
    )
    return train_set, val_set


# --------------------------------------------------------------------------------------------
# The loop


def frozen_trunk(model: MALM) -> Callable[[torch.Tensor], torch.Tensor]:
    """The hybrid trunk's frozen blocks with batch norm folded, run channels-last: what
    `model.tokens_input` reads as `trunk_features` (to float rounding), faster on a CPU.
    (B, 3, S, S) -> (B, C', g', g') (the grid itself when no block is tuned)."""
    fused = prepare_for_export(model.trunk.backbone).to(memory_format=torch.channels_last)
    split = model.trunk.split

    def grids(pixels: torch.Tensor) -> torch.Tensor:
        return fused.forward_until(pixels.contiguous(memory_format=torch.channels_last), split).contiguous()

    return grids


def trunk_cache_paths(run: TeacherRun, n_items: int) -> Callable[[int], Path]:
    """Where the frozen trunk's grids of augmentation slot j of this run are kept: keyed by the
    dataset's recipes.jsonl, the preprocessing, the trunk, the augmentation seed and j (not the count,
    so a run with more augmentations reuses the slots of one with fewer)."""
    model_cfg, cfg = run.model_cfg, run.train_cfg
    key = {
        "recipes_sha256": hashlib.sha256(recipes_path(run.data_dir).read_bytes()).hexdigest(),
        "items": n_items,
        "preprocessing": run.preprocessing.to_dict(),
        "trunk": [model_cfg.image_tower, model_cfg.trunk_stride, model_cfg.image_size]
        + ([model_cfg.trunk_tuned_blocks] if model_cfg.trunk_tuned_blocks else []),  # keeps older keys
        "augment_seed": cfg.seed if cfg.augment_seed is None else cfg.augment_seed,
        "transform": "TrainTransform/1",
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_root() / TRUNK_CACHE_FOLDER
    return lambda slot: folder / f"{model_cfg.image_tower}-{digest}-slot{slot}.safetensors"


class FrozenTrunkMemo:
    """`encode_images` for validation that keeps the frozen trunk's grids of the val batches after the
    first pass (the val loader is unshuffled and its transform deterministic: same batches each time).

    Args:
        model: A MALM whose hybrid trunk stays frozen while this is used.
        trunk: Computes the grids (`frozen_trunk(model)`).
    """

    def __init__(self, model: MALM, trunk: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.model, self.trunk, self.grids, self.position = model, trunk, [], 0

    def rewind(self) -> None:
        """Start a new pass over the val batches."""
        self.position = 0

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.position == len(self.grids):
            with torch.no_grad():
                self.grids.append(self.trunk(pixels).to(torch.float16))  # (B, C, g, g)
        grid = self.grids[self.position].float()
        self.position += 1
        return self.model.encode_images(pixels, trunk_features=grid)


def validate(
    model: MALM,
    val_set: Dataset,
    batch_size: int,
    device: torch.device,
    bag_size: int = 1000,
    trunk_memo: FrozenTrunkMemo | None = None,
) -> dict:
    """Image-to-recipe and recipe-to-image metrics on the validation pairs (tfood bags)."""
    model.eval()
    encode_images = model.encode_images
    if trunk_memo is not None:
        trunk_memo.rewind()
        encode_images = trunk_memo
    image_emb, recipe_emb, _ = embed_pairs(
        encode_images, model.encode_recipes, val_set, batch_size=batch_size, device=device
    )
    model.train()
    return retrieval_metrics(image_emb, recipe_emb, protocol="tfood", bag_size=bag_size)


def train_step(
    model: torch.nn.Module,
    core: MALM,
    optimizer: torch.optim.Optimizer,
    batch: dict,
    *,
    epoch: int,
    grad_clip: float,
    device: torch.device,
    trunk_features: torch.Tensor | None = None,
) -> dict[str, float]:
    """One optimisation step; raises NonFiniteLossError before touching the weights."""
    images = batch["image"].to(device, non_blocking=True)  # (B, 3, S, S)
    class_ids = batch["class_id"].to(device) if "class_id" in batch else None
    recipe_ids = batch["recipe_index"].to(device) if "recipe_index" in batch else None
    recipes = recipe_batch(batch, device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        output = model(
            images, recipes, epoch=epoch, class_ids=class_ids, recipe_ids=recipe_ids, trunk_features=trunk_features
        )
    loss = output["loss"]
    raise_if_non_finite(loss, output, epoch)
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
    preset: str | None = None,
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
        preset: The teacher preset the configs came from, recorded in the run (distillation takes its
            schedule from it by default).
    """

    def open_run(world: WorldInfo) -> TeacherRun:
        if resume:
            return reopen_run(out_dir)
        if data_dir is None or model_cfg is None or train_cfg is None:
            raise ValueError("a new run needs data_dir, model_cfg and train_cfg")
        return start_run(out_dir, data_dir, model_cfg, train_cfg, world, preset)

    return run_job(open_run, lambda run, world, device: _train(run, world, device, resume, progress, stop_after_steps))


def _train(
    run: TeacherRun, world: WorldInfo, device: torch.device, resume: bool, progress: bool, stop_after_steps: int | None
) -> dict:
    cfg = run.train_cfg
    torch.manual_seed(derive_seed(cfg.seed, "init"))  # identical initial weights on every rank
    model, _ = create_model(run.model_cfg, load_clip_weights=not resume)
    model.to(device)
    optimizer = build_optimizer(model, cfg)
    state = restore_state_checkpoint(run.paths.root, model, optimizer) if resume else TrainState()
    tower = FrozenTower(model, world, device)
    train_set, val_set = build_datasets(run)
    trunk_cache, trunk_memo = None, None
    if model.trunk is not None and cfg.freeze_image_epochs > 0:
        grid = model.trunk.frozen_shape  # (C', g', g')
        slot_paths = trunk_cache_paths(run, len(train_set)) if world.is_main and not world.distributed else None
        trunk_cache = AugmentationCache(len(train_set), cfg.augmentations, grid, torch.float16, slot_paths)
        trunk = frozen_trunk(model)
        trunk_memo = FrozenTrunkMemo(model, trunk)

    trained_epochs = [state.epoch]  # the epoch the loop is in, for validation's trunk memo

    def step(batch: dict, epoch: int) -> dict[str, float]:
        trained_epochs[0] = epoch
        trunk_features = None
        if trunk_cache is not None and epoch < cfg.freeze_image_epochs:
            images = batch["image"].to(device)  # (B, 3, S, S)
            slot = epoch % max(cfg.augmentations, 1)
            trunk_cache.save(slots=epoch)  # the slots of the epochs already over, kept for later runs
            trunk_features = trunk_cache.lookup(trunk, images, batch["item_index"], slot)
        return train_step(
            tower.ddp_model,
            model,
            optimizer,
            batch,
            epoch=epoch,
            grad_clip=cfg.grad_clip,
            device=device,
            trunk_features=trunk_features,
        )

    def validate_epoch() -> dict:  # the trunk is unchanged when the epoch just trained kept it frozen
        memo = trunk_memo if trained_epochs[0] < cfg.freeze_image_epochs else None
        return validate(model, val_set, cfg.batch_size, device, cfg.eval_bag_size, memo)

    spec = LoopSpec(
        run_dir=run.paths.root,
        model=model,
        optimizer=optimizer,
        train_set=train_set,
        step=step,
        validate=validate_epoch,
        schedule=cfg,
        config_hash=config_hash(run.model_cfg),
        frozen_group="image",
        frozen_group_epochs=cfg.freeze_image_epochs,
        augmentations=cfg.augmentations,
        groups=train_set.weighted_recipe_groups(cfg.full_text_repeats) if cfg.epoch_unit == "recipe" else None,
        set_frozen=tower.set_frozen,
    )
    result = run_epochs(spec, world, state, progress=progress, stop_after_steps=stop_after_steps)
    if trunk_cache is not None:
        trunk_cache.save()  # the last slots' grids, also when the run stopped before their epoch ended
    return result


class FrozenTower:
    """The frozen-tower phase as requires_grad (no backward pass through the tower, not only lr 0).

    DDP fixes the parameters it reduces when it wraps a model, so the model is re-wrapped whenever
    the tower is frozen or thawed (every rank does so at the same epoch boundary).
    """

    def __init__(self, model: MALM, world: WorldInfo, device: torch.device) -> None:
        self.model, self.world, self.device = model, world, device
        self.frozen: bool | None = None
        self.ddp_model: torch.nn.Module = model

    def set_frozen(self, frozen: bool) -> None:
        """Freeze or thaw the student ViT (idempotent) and wrap the model for this phase."""
        if frozen == self.frozen:
            return
        self.model.freeze_image_tower(frozen)
        self.ddp_model = wrap_ddp(self.model, self.world, self.device, find_unused_parameters=True)
        self.frozen = frozen


# --------------------------------------------------------------------------------------------
# A trained run, for inference


@dataclass
class LoadedTeacher:
    """A teacher ready for `encode_images` / `encode_recipes`."""

    model: MALM
    tokenizer: RecipeInputs
    preprocessing: Preprocessing
    config: dict
    checkpoint: Path


def load_teacher(run_dir: Path, which: str = "best") -> LoadedTeacher:
    """Load a teacher run's `best` (or `last`) checkpoint in eval mode on the CPU."""
    config = read_run_config(run_dir, kind="teacher")
    model, preprocessing = create_model(MalmConfig.from_dict(config["model"]), load_clip_weights=False)
    folder = ckpt.resolve_checkpoint(run_dir, which)
    ckpt.load_weights_into(model, ckpt.load_model_state(folder), source=folder)
    model.eval()
    tokenizer = open_recipe_inputs(RunPaths(run_dir), model.config, Path(config["data"]))
    return LoadedTeacher(model, tokenizer, preprocessing, config, folder)


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
    teacher = load_teacher(run_dir, which)
    dataset = eval_split(Path(data_dir or teacher.config["data"]), split, teacher.tokenizer, teacher.preprocessing)
    image_emb, recipe_emb, recipe_index = embed_pairs(
        teacher.model.encode_images, teacher.model.encode_recipes, dataset
    )
    ids = [dataset.recipes[i].id for i in recipe_index]
    metrics = retrieval_metrics(image_emb, recipe_emb, protocol=protocol, bag_size=bag_size, n_bags=n_bags, ids=ids)
    return {"run": str(run_dir), "split": split, "metrics": metrics}
