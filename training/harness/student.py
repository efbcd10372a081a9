"""Distil the MALM teacher's image tower into a compact student (the phone's only network).

Recipes are embedded offline by the teacher's recipe tower, so the student must land in the
teacher's joint space. The teacher is frozen, kept in eval mode and never wrapped in DDP; the student
alone trains. The teacher's recipe embeddings of the training split are computed once and saved in
the run (`teacher_recipes.safetensors`); its image embeddings are cached per augmentation: every
item cycles through K fixed augmentations, so after K epochs the teacher's image tower is no longer
run at all (MobileCLIP's dataset reinforcement, in memory).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel

from malm_edge.training import checkpoint as ckpt
from malm_edge.training.data.dataset import RecipeImageDataset, RecipeTextDataset, collate_batch
from malm_edge.training.data.transforms import EvalTransform, TrainTransform
from malm_edge.training.distill_losses import feature_distillation_loss, similarity_kl_loss
from malm_edge.training.distributed import WorldInfo, all_reduce_mean, barrier, cleanup_distributed, init_distributed
from malm_edge.training.evaluate import embed_pairs, recipe_batch
from malm_edge.training.loop import LoopSpec, NonFiniteLossError, TrainState, derive_seed, restore_state_checkpoint, run_epochs
from malm_edge.training.metrics import retrieval_metrics
from malm_edge.training.models.losses import adaptive_triplet_loss
from malm_edge.training.models.student import StudentConfig, StudentEncoder, create_student, get_student_preset
from malm_edge.training.run import RunPaths, check_new_run_dir, read_run_config, record_linked_paths
from malm_edge.training.teacher import LoadedTeacher, load_teacher

log = logging.getLogger(__name__)

TEACHER_RECIPES_FILE = "teacher_recipes.safetensors"
LOSS_NAMES = ("feature", "kl", "triplet")


@dataclass
class DistillConfig:
    """Distillation schedule and losses.

    Attributes:
        losses: Which terms are on: any of "feature", "kl", "triplet" ("triplet" alone is the
            RecipeSnap-style baseline: the student against frozen recipe embeddings).
        feature_loss: "cosine" or "mse" on normalised embeddings.
        kl_temperature: Temperature of the image->recipe softmax in the KL term.
        kl_table_samples: Table recipes sampled per step as extra KL candidates (beside the batch's).
        triplet_margin: Margin of the adaptive triplet term.
        augmentations: Fixed augmentations per image whose teacher embeddings are cached (0: fresh
            augmentation each epoch, no cache).
    """

    epochs: int = 30
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    num_workers: int = 4
    seed: int = 0
    log_every: int = 10
    save_every_steps: int = 0
    losses: tuple[str, ...] = LOSS_NAMES
    feature_weight: float = 1.0
    feature_loss: str = "cosine"
    kl_weight: float = 1.0
    kl_temperature: float = 0.05
    kl_table_samples: int = 1024
    triplet_weight: float = 1.0
    triplet_margin: float = 0.3
    augmentations: int = 4

    def __post_init__(self) -> None:
        self.losses = tuple(self.losses)
        unknown = set(self.losses) - set(LOSS_NAMES)
        if unknown or not self.losses:
            raise ValueError(f"losses must be a non-empty subset of {LOSS_NAMES}, got {self.losses}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict."""
        data = asdict(self)
        data["losses"] = list(self.losses)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DistillConfig":
        """Rebuild from `to_dict` output; unknown keys raise ValueError."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"DistillConfig has no fields {sorted(unknown)}")
        return cls(**data)


DISTILL_PRESETS: dict[str, dict[str, Any]] = {
    "micro": {"epochs": 4, "batch_size": 32, "lr": 3e-3, "warmup_steps": 5, "num_workers": 0, "kl_table_samples": 128},
    "tiny": {"epochs": 12, "batch_size": 64, "lr": 2e-3, "warmup_steps": 50, "num_workers": 0, "kl_table_samples": 512},
    "small": {"epochs": 30, "batch_size": 128, "num_workers": 4},
    "base": {"epochs": 60, "batch_size": 256, "num_workers": 8, "kl_table_samples": 4096},
}


def get_distill_preset(name: str) -> DistillConfig:
    """The DistillConfig of a named schedule preset."""
    if name not in DISTILL_PRESETS:
        raise ValueError(f"unknown distillation preset {name!r}; choose one of {sorted(DISTILL_PRESETS)}")
    return DistillConfig(**DISTILL_PRESETS[name])


class FrozenTeacher:
    """The teacher's image tower and its precomputed recipe embeddings; never trains, never in DDP."""

    def __init__(self, teacher: LoadedTeacher, device: torch.device) -> None:
        self.model = teacher.model.to(device).eval().requires_grad_(False)
        self.device = device

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, D) normalised teacher image embeddings."""
        self.model.eval()
        return self.model.encode_images(pixels).float()

    @torch.no_grad()
    def encode_recipes(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Recipe batch -> (B, D) normalised teacher recipe embeddings."""
        self.model.eval()
        return self.model.encode_recipes(batch).float()


class TeacherImageCache:
    """Teacher image embeddings per (item, augmentation slot), filled lazily."""

    def __init__(self, n_items: int, augmentations: int, dim: int) -> None:
        slots = max(augmentations, 1)
        self.embeddings = torch.zeros(n_items, slots, dim)  # (N, K, D)
        self.filled = torch.zeros(n_items, slots, dtype=torch.bool)  # (N, K)
        self.enabled = augmentations > 0

    def lookup(self, teacher: FrozenTeacher, images: torch.Tensor, items: torch.Tensor, slot: int) -> torch.Tensor:
        """Teacher embeddings of a batch, computing only the ones not cached yet. (B, D)"""
        if not self.enabled:
            return teacher.encode_images(images)
        missing = ~self.filled[items, slot]  # (B,)
        if missing.any():
            fresh = teacher.encode_images(images[missing.to(images.device)]).cpu()  # (M, D)
            self.embeddings[items[missing], slot] = fresh
            self.filled[items[missing], slot] = True
        return self.embeddings[items, slot]


# --------------------------------------------------------------------------------------------
# The run


@dataclass
class StudentRun:
    """A distillation run: paths, configs, teacher and data."""

    paths: RunPaths
    student_cfg: StudentConfig
    distill_cfg: DistillConfig
    teacher_run: Path
    data_dir: Path
    teacher: LoadedTeacher


def student_config_hash(student_cfg: StudentConfig) -> str:
    """A short stable hash of the student architecture."""
    import hashlib
    import json

    text = json.dumps(student_cfg.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def start_student_run(
    out_dir: Path, teacher_run: Path, data_dir: Path | None, arch: str, distill_cfg: DistillConfig, world: WorldInfo
) -> StudentRun:
    """Create a distillation run folder: the student sized to the teacher, the resolved config."""
    paths = RunPaths(out_dir)
    check_new_run_dir(out_dir, "student")
    teacher = load_teacher(teacher_run)
    model_cfg = teacher.config["model"]
    student_cfg = get_student_preset(arch, embed_dim=model_cfg["embed_dim"], image_size=model_cfg["image_size"])
    data_dir = Path(data_dir or teacher.config["data"])
    if world.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / TEACHER_RECIPES_FILE).unlink(missing_ok=True)  # from an aborted run with other inputs
        paths.metrics.write_text("")
        config = {
            "kind": "student",
            "arch": arch,
            "student": student_cfg.to_dict(),
            "distill": distill_cfg.to_dict(),
            "teacher_run": str(Path(teacher_run).resolve()),
            "teacher_config_hash": teacher.config["config_hash"],
            "data": str(data_dir.resolve()),
            "preprocessing": teacher.preprocessing.to_dict(),
            "config_hash": student_config_hash(student_cfg),
        }
        ckpt.write_json_atomic(paths.config, record_linked_paths(out_dir, config, ("teacher_run", "data")))
    barrier()
    return StudentRun(paths, student_cfg, distill_cfg, Path(teacher_run), data_dir, teacher)


def reopen_student_run(out_dir: Path) -> StudentRun:
    """Open an existing distillation run to resume it with its own saved config."""
    config = read_run_config(out_dir, kind="student")
    teacher = load_teacher(Path(config["teacher_run"]))
    return StudentRun(
        RunPaths(out_dir),
        StudentConfig.from_dict(config["student"]),
        DistillConfig.from_dict(config["distill"]),
        Path(config["teacher_run"]),
        Path(config["data"]),
        teacher,
    )


def teacher_recipe_table(run: StudentRun, frozen: FrozenTeacher, world: WorldInfo) -> torch.Tensor:
    """The teacher's embeddings of every training recipe, (N_recipes, D), computed once per run."""
    path = run.paths.root / TEACHER_RECIPES_FILE
    if world.is_main and not path.exists():
        dataset = RecipeTextDataset(run.data_dir, "train", run.teacher.tokenizer)
        loader = torch.utils.data.DataLoader(dataset, batch_size=256, collate_fn=collate_batch)
        rows = [frozen.encode_recipes(recipe_batch(batch, frozen.device)).cpu() for batch in loader]
        table = torch.cat(rows)  # (N_recipes, D)
        tmp = path.with_suffix(".tmp")
        save_file({"recipes": table.contiguous()}, str(tmp))
        tmp.replace(path)
    barrier()
    return load_file(str(path))["recipes"]


def distill_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict,
    *,
    frozen: FrozenTeacher,
    cache: TeacherImageCache,
    recipe_table: torch.Tensor,
    cfg: DistillConfig,
    epoch: int,
    device: torch.device,
) -> dict[str, float]:
    """One student step with the configured loss terms."""
    images = batch["image"].to(device)  # (B, 3, S, S)
    student_emb = model(images)  # (B, D)
    if {"feature", "kl"} & set(cfg.losses):  # the RecipeSnap-style baseline never needs the teacher's images
        slot = epoch % max(cfg.augmentations, 1)
        teacher_emb = cache.lookup(frozen, images, batch["item_index"], slot).to(device)  # (B, D)
    recipes = recipe_table[batch["recipe_index"]].to(device)  # (B, D)
    terms: dict[str, torch.Tensor] = {}
    if "feature" in cfg.losses:
        terms["loss_feature"] = cfg.feature_weight * feature_distillation_loss(student_emb, teacher_emb, cfg.feature_loss)
    if "kl" in cfg.losses:
        sampled = torch.randint(len(recipe_table), (cfg.kl_table_samples,))
        rows = torch.unique(torch.cat([batch["recipe_index"], sampled]))
        candidates = recipe_table[rows].to(device)  # (C, D)
        terms["loss_kl"] = cfg.kl_weight * similarity_kl_loss(student_emb, teacher_emb, candidates, cfg.kl_temperature)
    if "triplet" in cfg.losses:
        terms["loss_triplet"] = cfg.triplet_weight * adaptive_triplet_loss(student_emb, recipes, cfg.triplet_margin)
    loss = sum(terms.values())
    if not bool(torch.isfinite(all_reduce_mean(loss.detach()))):
        raise NonFiniteLossError(f"non-finite distillation loss at epoch {epoch}: { {k: float(v) for k, v in terms.items()} }")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}}


def validate_student(
    student: StudentEncoder, frozen: FrozenTeacher, val_set: RecipeImageDataset, batch_size: int
) -> dict:
    """Student images against teacher recipes on the validation pairs (1k bags, tfood)."""
    student.eval()
    image_emb, recipe_emb, _ = embed_pairs(
        student, frozen.encode_recipes, val_set, batch_size=batch_size, device=frozen.device
    )
    student.train()
    return retrieval_metrics(image_emb, recipe_emb, protocol="tfood", bag_size=1000)


def distill_student(
    out_dir: Path,
    *,
    teacher_run: Path | None = None,
    data_dir: Path | None = None,
    arch: str = "mnv3_s",
    distill_cfg: DistillConfig | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_after_steps: int | None = None,
) -> dict:
    """Distil (or resume distilling) a student run and return its summary.

    Args:
        out_dir: The student run folder.
        teacher_run: The teacher run folder (not needed on resume).
        data_dir: Canonical dataset (default: the teacher's).
        arch: Student preset name (training/models/student.py STUDENT_PRESETS).
        distill_cfg: Schedule and losses (default: the `tiny` preset).
        resume: Continue `out_dir` from its last checkpoint.
        progress: Show a progress bar (rank 0).
        stop_after_steps: Stop after this many global steps (checkpointed), for tests.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    world = init_distributed(device.type)
    try:
        if resume:
            run = reopen_student_run(out_dir)
        else:
            if teacher_run is None:
                raise ValueError("a new distillation run needs teacher_run")
            run = start_student_run(out_dir, teacher_run, data_dir, arch, distill_cfg or get_distill_preset("tiny"), world)
        return _distill(run, world, device, resume=resume, progress=progress, stop_after_steps=stop_after_steps)
    finally:
        cleanup_distributed()


def _distill(run: StudentRun, world: WorldInfo, device: torch.device, *, resume: bool, progress: bool, stop_after_steps: int | None) -> dict:
    cfg = run.distill_cfg
    frozen = FrozenTeacher(run.teacher, device)
    recipe_table = teacher_recipe_table(run, frozen, world)
    torch.manual_seed(derive_seed(cfg.seed, "student-init"))
    student = create_student(run.student_cfg).to(device)
    optimizer = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    for group in optimizer.param_groups:
        group.update(base_lr=cfg.lr, name="student")
    state = restore_state_checkpoint(run.paths.root, student, optimizer) if resume else TrainState()
    model = DistributedDataParallel(student) if world.distributed else student
    prep = run.teacher.preprocessing
    train_set = RecipeImageDataset(run.data_dir, "train", run.teacher.tokenizer, TrainTransform(prep))
    val_set = RecipeImageDataset(run.data_dir, "val", run.teacher.tokenizer, EvalTransform(prep), one_image_per_recipe=True)
    cache = TeacherImageCache(len(train_set), cfg.augmentations, recipe_table.shape[1])

    def step(batch: dict, epoch: int) -> dict[str, float]:
        return distill_step(
            model, optimizer, batch, frozen=frozen, cache=cache, recipe_table=recipe_table, cfg=cfg, epoch=epoch, device=device
        )

    spec = LoopSpec(
        run_dir=run.paths.root,
        model=student,
        optimizer=optimizer,
        train_set=train_set,
        collate=collate_batch,
        step=step,
        validate=lambda: validate_student(student, frozen, val_set, cfg.batch_size),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        warmup_steps=cfg.warmup_steps,
        seed=cfg.seed,
        num_workers=cfg.num_workers,
        log_every=cfg.log_every,
        save_every_steps=cfg.save_every_steps,
        config_hash=student_config_hash(run.student_cfg),
        augmentations=cfg.augmentations,
    )
    return run_epochs(spec, world, state, progress=progress, stop_after_steps=stop_after_steps)
