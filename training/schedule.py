"""Optimisation schedules: how a teacher is trained (`TrainConfig`) and a student distilled (`DistillConfig`).

Plain dataclasses, so the preset table (presets.py) can name them without importing the harness that
runs them (harness/teacher.py, harness/student.py). The image size lives in the model configs, the
single source of truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from malm_edge.training import configs

DISTILL_LOSSES = ("feature", "kl", "triplet")
EPOCH_UNITS = ("recipe", "pair")


@dataclass
class TrainConfig:
    """The teacher's optimisation settings.

    Attributes:
        epochs: Training epochs.
        batch_size: Batch size per process (under torchrun the global batch is this times the world size).
        lr: Adam learning rate of everything but the image tower.
        image_lr: Learning rate of the (CLIP) image tower.
        weight_decay: Adam(W) weight decay.
        freeze_image_epochs: Epochs during which the image tower is frozen.
        warmup_steps: Linear warm-up steps.
        num_workers: DataLoader workers.
        grad_clip: Gradient-norm clip (0 disables; TFood clips at 8, the `base` preset does too).
        seed: Base seed (rank is added by the loop).
        eval_bag_size: Validation bag size for retrieval metrics.
        log_every: Steps between metrics.jsonl step records.
        save_every_steps: Steps between mid-epoch checkpoints (0: only at epoch ends).
        augmentations: Fixed augmentations per image, cycled over the epochs; with a frozen
            pretrained trunk (the hybrid image tower) its feature grids are then computed once per
            augmentation and cached (0: a fresh augmentation every epoch, no cache).
        augment_seed: Seed of those K augmentations (None: `seed`). Runs that share it (seeds of a
            study, ablation rows) share one cached set of trunk grids on disk.
        epoch_unit: "recipe" (default, as TFood): an epoch is one image of every training recipe, so
            the epoch-based schedules (epochs, frozen epochs, margin) mean what the paper's do
            whatever the images per recipe; "pair" (ablation): every (recipe, image) pair.
        full_text_repeats: With recipe-level epochs, each recipe with ingredients and instructions
            comes this many times per epoch (1: once, as every other recipe). For datasets where
            most training photos have only a title (Epicurious with `--add-unpaired`) while the
            recipes to retrieve have full text.
    """

    epochs: int = 120
    batch_size: int = 128
    lr: float = 1e-5
    image_lr: float = 1e-6
    weight_decay: float = 0.0
    freeze_image_epochs: int = 20
    warmup_steps: int = 0
    num_workers: int = 4
    grad_clip: float = 0.0
    seed: int = 0
    eval_bag_size: int = 1000
    log_every: int = 10
    save_every_steps: int = 0
    augmentations: int = 0
    augment_seed: int | None = None
    epoch_unit: str = "recipe"
    full_text_repeats: int = 1

    def __post_init__(self) -> None:
        if self.epoch_unit not in EPOCH_UNITS:
            raise ValueError(f"epoch_unit must be one of {EPOCH_UNITS}, got {self.epoch_unit!r}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (0 disables), got {self.grad_clip}")
        if self.full_text_repeats < 1:
            raise ValueError(f"full_text_repeats must be >= 1, got {self.full_text_repeats}")
        if self.full_text_repeats > 1 and self.epoch_unit != "recipe":
            raise ValueError("full_text_repeats needs recipe-level epochs (epoch_unit 'recipe')")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict."""
        return configs.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Rebuild from `to_dict` output; unknown keys raise ValueError."""
        return configs.from_dict(cls, data)


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
    losses: tuple[str, ...] = DISTILL_LOSSES
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
        unknown = set(self.losses) - set(DISTILL_LOSSES)
        if unknown or not self.losses:
            raise ValueError(f"losses must be a non-empty subset of {DISTILL_LOSSES}, got {self.losses}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict."""
        return configs.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DistillConfig":
        """Rebuild from `to_dict` output; unknown keys raise ValueError."""
        return configs.from_dict(cls, data)
