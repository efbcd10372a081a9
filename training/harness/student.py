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
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from malm_edge.edge.write_errors import guard_writes
from malm_edge.training.configs import config_hash
from malm_edge.training.data.dataset import (
    RecipeImageDataset,
    RecipeTextDataset,
    collate_batch,
)
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
    RunPaths,
    check_new_run_dir,
    read_run_config,
    record_linked_paths,
)
from malm_edge.training.harness.teacher import LoadedTeacher, load_teacher
from malm_edge.training.metrics import retrieval_metrics
from malm_edge.training.models.losses import (
    adaptive_triplet_loss,
    feature_distillation_loss,
    similarity_kl_loss,
)
from malm_edge.training.models.student import (
    StudentConfig,
    StudentEncoder,
    create_student,
)
from malm_edge.training.presets import get_distill_preset, get_student_preset
from malm_edge.training.schedule import DistillConfig

log = logging.getLogger(__name__)

TEACHER_RECIPES_FILE = "teacher_recipes.safetensors"


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
            "config_hash": config_hash(student_cfg),
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
        with guard_writes(path, ckpt.CheckpointError):
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
    cache: AugmentationCache,
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
        teacher_emb = cache.lookup(frozen.encode_images, images, batch["item_index"], slot).to(device)  # (B, D)
    recipes = recipe_table[batch["recipe_index"]].to(device)  # (B, D)
    terms: dict[str, torch.Tensor] = {}
    if "feature" in cfg.losses:
        feature = feature_distillation_loss(student_emb, teacher_emb, cfg.feature_loss)
        terms["loss_feature"] = cfg.feature_weight * feature
    if "kl" in cfg.losses:
        sampled = torch.randint(len(recipe_table), (cfg.kl_table_samples,))
        rows = torch.unique(torch.cat([batch["recipe_index"], sampled]))
        candidates = recipe_table[rows].to(device)  # (C, D)
        terms["loss_kl"] = cfg.kl_weight * similarity_kl_loss(student_emb, teacher_emb, candidates, cfg.kl_temperature)
    if "triplet" in cfg.losses:
        rows = batch["recipe_index"].to(device)
        same_recipe = rows.unsqueeze(1) == rows.unsqueeze(0)  # (B, B): two photos of one recipe are not negatives
        terms["loss_triplet"] = cfg.triplet_weight * adaptive_triplet_loss(
            student_emb, recipes, cfg.triplet_margin, same_recipe=same_recipe
        )
    loss = sum(terms.values())
    raise_if_non_finite(loss, terms, epoch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss_terms({"loss": loss, **terms})


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
        arch: Student preset name (training/presets.py STUDENT_PRESETS).
        distill_cfg: Schedule and losses (default: the `tiny` preset).
        resume: Continue `out_dir` from its last checkpoint.
        progress: Show a progress bar (rank 0).
        stop_after_steps: Stop after this many global steps (checkpointed), for tests.
    """

    def open_run(world: WorldInfo) -> StudentRun:
        if resume:
            return reopen_student_run(out_dir)
        if teacher_run is None:
            raise ValueError("a new distillation run needs teacher_run")
        return start_student_run(out_dir, teacher_run, data_dir, arch, distill_cfg or get_distill_preset("tiny"), world)

    return run_job(
        open_run, lambda run, world, device: _distill(run, world, device, resume, progress, stop_after_steps)
    )


def _distill(
    run: StudentRun, world: WorldInfo, device: torch.device, resume: bool, progress: bool, stop_after_steps: int | None
) -> dict:
    cfg = run.distill_cfg
    frozen = FrozenTeacher(run.teacher, device)
    recipe_table = teacher_recipe_table(run, frozen, world)
    torch.manual_seed(derive_seed(cfg.seed, "student-init"))
    student = create_student(run.student_cfg, load_pretrained=not resume).to(device)
    optimizer = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    for group in optimizer.param_groups:
        group.update(base_lr=cfg.lr, name="student")
    state = restore_state_checkpoint(run.paths.root, student, optimizer) if resume else TrainState()
    model = wrap_ddp(student, world, device)
    prep = run.teacher.preprocessing
    train_set = RecipeImageDataset(run.data_dir, "train", run.teacher.tokenizer, TrainTransform(prep))
    val_set = RecipeImageDataset(
        run.data_dir, "val", run.teacher.tokenizer, EvalTransform(prep), one_image_per_recipe=True
    )
    cache = AugmentationCache(len(train_set), cfg.augmentations, (recipe_table.shape[1],))

    def step(batch: dict, epoch: int) -> dict[str, float]:
        return distill_step(
            model,
            optimizer,
            batch,
            frozen=frozen,
            cache=cache,
            recipe_table=recipe_table,
            cfg=cfg,
            epoch=epoch,
            device=device,
        )

    spec = LoopSpec(
        run_dir=run.paths.root,
        model=student,
        optimizer=optimizer,
        train_set=train_set,
        step=step,
        validate=lambda: validate_student(student, frozen, val_set, cfg.batch_size),
        schedule=cfg,
        config_hash=config_hash(run.student_cfg),
        augmentations=cfg.augmentations,
        command="malm-edge distill",
    )
    return run_epochs(spec, world, state, progress=progress, stop_after_steps=stop_after_steps)


# --------------------------------------------------------------------------------------------
# A trained run, for inference and export


@dataclass
class LoadedStudent:
    """A student encoder in eval mode with what export and evaluation need."""

    model: StudentEncoder
    preprocessing: Preprocessing
    config: dict
    teacher_run: Path
    checkpoint: Path


def load_student(run_dir: Path, which: str = "best") -> LoadedStudent:
    """Load a student run's `best` (or `last`) checkpoint in eval mode on the CPU."""
    config = read_run_config(run_dir, kind="student")
    model = create_student(StudentConfig.from_dict(config["student"]))
    folder = ckpt.resolve_checkpoint(run_dir, which)
    ckpt.load_weights_into(model, ckpt.load_model_state(folder), source=folder)
    model.eval()
    return LoadedStudent(
        model, Preprocessing.from_dict(config["preprocessing"]), config, Path(config["teacher_run"]), folder
    )


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
    student = load_student(run_dir, which)
    teacher = load_teacher(student.teacher_run)
    dataset = eval_split(Path(data_dir or student.config["data"]), split, teacher.tokenizer, student.preprocessing)
    teacher_images, recipe_emb, recipe_index = embed_pairs(
        teacher.model.encode_images, teacher.model.encode_recipes, dataset
    )
    student_images, _, _ = embed_pairs(student.model, None, dataset)
    ids = [dataset.recipes[i].id for i in recipe_index]
    scores = {
        name: retrieval_metrics(images, recipe_emb, protocol=protocol, bag_size=bag_size, n_bags=n_bags, ids=ids)
        for name, images in (("teacher", teacher_images), ("student", student_images))
    }
    teacher_r1 = scores["teacher"]["image_to_recipe"]["r1"]
    retention = scores["student"]["image_to_recipe"]["r1"] / teacher_r1 if teacher_r1 > 0 else None
    return {"run": str(run_dir), "split": split, **scores, "retention": retention}
