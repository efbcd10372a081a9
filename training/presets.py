"""The one table of named presets: a teacher preset is a model, its training and distillation
schedules and its default data; a student preset is a phone encoder architecture.

Teacher presets (`malm-edge train --preset`, `malm-edge distill --preset`):
    micro  tests and quick checks: trains from scratch in about two minutes on 300 SynthFood recipes.
    tiny   sized for 2 CPU cores: SynthFood's default 2,000 recipes (about 15 minutes before issue 13;
           its k = 4 cross-decoded negatives make a step about 2.5x dearer, not yet re-timed).
    small  a GPU-sized model between tiny and the paper's.
    lite   MALM on pretrained towers (EfficientNet-Lite2 trunk, MiniLM sentences): the preset for real
           photos on a CPU.
    base   the paper's setup (MALM, arXiv 2305.11327, Sec 4.3): CLIP ViT-B/16 at 224 px, Adam lr 1e-5
           (image tower 1e-6), image tower frozen for 20 epochs, batch 128, 120 epochs, gradients
           clipped at 8 (TFood).

Every preset is MALM as the paper means it (issue 13): cross-decoded matching negatives
(`matching_negatives` k > 0; k = 0 is an ablation row only), positions before ψ, L_itc on the
unmasked pass, T on ψ's matched tokens, recipe-level epochs.

Student presets (`malm-edge distill --arch`): each name is also its `StudentConfig.arch`; the
embedding width and input size are set from the teacher when a student is distilled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from malm_edge.training.configs import with_overrides
from malm_edge.training.data.synthfood.cache import default_synthfood
from malm_edge.training.models.config import MalmConfig
from malm_edge.training.models.student_config import StudentConfig
from malm_edge.training.schedule import DistillConfig, TrainConfig


@dataclass(frozen=True)
class SynthFoodSize:
    """How much SynthFood a preset trains on by default: enough for its model, quick to generate."""

    n_recipes: int
    images_per_recipe: int
    image_size: int


@dataclass(frozen=True)
class TeacherPreset:
    """A named teacher: model, schedules and default data."""

    model: MalmConfig
    train: TrainConfig
    distill: DistillConfig
    synthfood: SynthFoodSize = field(default_factory=lambda: SynthFoodSize(2000, 3, 128))


TEACHER_PRESETS: dict[str, TeacherPreset] = {
    # From scratch on 300 recipes, the matching and distillation terms at the paper's weight 1 and a
    # 75% mask hold L_itc back (BENCHMARKS.md, `micro`): they are kept, at weight 0.1 and mask 0.5.
    # Epochs are recipe-level (one image of each recipe): 30 of them are ~210 steps, the old budget.
    # k = 2 cross-decoded negatives: each k costs two more ψ/ψ' decodes per pair, and micro must
    # train in CI in about a minute (BENCHMARKS.md, "Issue 13").
    "micro": TeacherPreset(
        model=MalmConfig(
            image_size=64, patch_size=8, vit_width=64, vit_layers=2, vit_heads=2, vit_output_dim=64,
            quick_gelu=False, vocab_size=4096, recipe_dropout=0.0, recipe_width=64, recipe_heads=2,
            sentence_layers=1, sequence_layers=1, decoder_layers=1, embed_dim=64, match_width=64,
            matching_layers=1, matching_heads=2, predictor_layers=1, predictor_heads=2, ema_momentum=0.99,
            mask_ratio=0.5, lambda_itm=0.1, lambda_dist=0.1, matching_negatives=2,
        ),
        train=TrainConfig(
            epochs=30, batch_size=32, lr=1e-3, image_lr=1e-3, weight_decay=0.0, freeze_image_epochs=0,
            warmup_steps=10, num_workers=0, eval_bag_size=100,
        ),
        distill=DistillConfig(epochs=4, batch_size=32, lr=3e-3, warmup_steps=5, num_workers=0, kl_table_samples=128),
        synthfood=SynthFoodSize(n_recipes=300, images_per_recipe=6, image_size=64),
    ),
    # CPU-sized: k = 4 negatives (k = 8 costs 5x a k = 0 step here, k = 4 2.5x), 20 recipe-level epochs.
    "tiny": TeacherPreset(
        model=MalmConfig(
            image_size=64, patch_size=8, vit_width=128, vit_layers=4, vit_heads=4, vit_output_dim=128,
            quick_gelu=False, vocab_size=8192, recipe_width=96, recipe_heads=4, sentence_layers=1,
            sequence_layers=1, decoder_layers=1, recipe_mlp_ratio=2.0, embed_dim=128, match_width=96,
            matching_layers=1, matching_heads=4, predictor_layers=1, predictor_heads=2, ema_momentum=0.995,
            matching_negatives=4,
        ),
        train=TrainConfig(
            epochs=20, batch_size=64, lr=1e-3, image_lr=1e-3, weight_decay=0.0, freeze_image_epochs=0,
            warmup_steps=50, num_workers=1, eval_bag_size=1000,
        ),
        distill=DistillConfig(epochs=12, batch_size=64, lr=2e-3, warmup_steps=50, num_workers=0, kl_table_samples=512),
        synthfood=SynthFoodSize(n_recipes=2000, images_per_recipe=3, image_size=128),
    ),
    "small": TeacherPreset(
        model=MalmConfig(
            image_size=160, patch_size=16, vit_width=384, vit_layers=12, vit_heads=6, vit_output_dim=384,
            quick_gelu=False, vocab_size=30000, recipe_width=384, recipe_heads=4, sentence_layers=2,
            sequence_layers=2, decoder_layers=2, embed_dim=512, match_width=384, matching_layers=2,
            matching_heads=4, predictor_layers=2, predictor_heads=2, ema_momentum=0.998,
        ),
        train=TrainConfig(
            epochs=120, batch_size=128, lr=1e-4, image_lr=5e-5, weight_decay=0.0, freeze_image_epochs=0,
            warmup_steps=500, num_workers=4,
        ),
        distill=DistillConfig(epochs=30, batch_size=128, num_workers=4),
        synthfood=SynthFoodSize(n_recipes=6000, images_per_recipe=3, image_size=160),
    ),
    # MALM on pretrained towers, for real photos on an ordinary machine: the hybrid ViT over a frozen
    # ImageNet EfficientNet-Lite2 trunk (7 x 7 grid at stride 32; 4 fixed augmentations per photo whose
    # grids are cached on disk and shared by every seed and ablation row) and the
    # hierarchical recipe transformer over frozen all-MiniLM-L6-v2 sentence vectors. 4 augmentations
    # and sentence drop 0.3 were chosen on an Epicurious dev split carved from train, against the
    # overfitting measured there (BENCHMARKS.md, "`lite` on a dev split"). k = 2 negatives:
    # one batch-64 step costs 0.9 s (baseline), 2.0 s (k = 0), 3.8 s (k = 2), 5.6 s (k = 4), 10 s (k = 8)
    # on one loaded core (BENCHMARKS.md), and k = 8 would make a 10-epoch run about 3 hours.
    "lite": TeacherPreset(
        model=MalmConfig(
            image_size=224, image_tower="lite2", trunk_stride=32, vit_width=128, vit_layers=2, vit_heads=4,
            vit_output_dim=128, quick_gelu=False, text_tower="minilm", recipe_width=128, recipe_heads=4,
            sequence_layers=1, decoder_layers=1, recipe_mlp_ratio=2.0, recipe_dropout=0.1, embed_dim=128,
            match_width=128, matching_layers=1, matching_heads=4, predictor_layers=1, predictor_heads=2,
            ema_momentum=0.99, mask_ratio=0.5, lambda_itm=0.1, lambda_dist=0.1, matching_negatives=2,
            sentence_drop=0.3,
        ),
        train=TrainConfig(
            epochs=10, batch_size=64, lr=5e-4, image_lr=1e-5, weight_decay=0.01, freeze_image_epochs=10,
            warmup_steps=50, num_workers=0, eval_bag_size=1000, augmentations=4, augment_seed=0,
        ),
        distill=DistillConfig(epochs=3, batch_size=32, lr=5e-4, warmup_steps=20, num_workers=0, augmentations=1),
        synthfood=SynthFoodSize(n_recipes=2000, images_per_recipe=3, image_size=224),
    ),
    "base": TeacherPreset(
        model=MalmConfig(),
        train=TrainConfig(grad_clip=8.0),
        distill=DistillConfig(epochs=60, batch_size=256, num_workers=8, kl_table_samples=4096),
        synthfood=SynthFoodSize(n_recipes=10000, images_per_recipe=3, image_size=224),
    ),
}

STUDENT_PRESETS: dict[str, StudentConfig] = {
    "mnv3_s": StudentConfig("mnv3_s", 1.0, 224, 1024, 0.2, hidden_dim=1024),
    "mnv3_l": StudentConfig("mnv3_l", 1.0, 224, 1024, 0.2, hidden_dim=1280),
    "mobileone_s0": StudentConfig("mobileone_s0", 1.0, 224, 1024, 0.1, hidden_dim=0),
    "mobileone_s1": StudentConfig("mobileone_s1", 1.0, 224, 1024, 0.1, hidden_dim=0),
    # ImageNet EfficientNet-Lite0 (no squeeze-excite, ReLU6: fully XNNPACK- and CoreML-friendly)
    "lite0": StudentConfig("lite0", 1.0, 224, 1024, 0.2, hidden_dim=0, pretrained=True),
    # test-sized, matching the teacher's `micro` preset (64 px, 64-d joint space)
    "mnv3_micro": StudentConfig("mnv3_micro", 1.0, 64, 64, 0.0, hidden_dim=96),
    "mobileone_micro": StudentConfig("mobileone_micro", 1.0, 64, 64, 0.0, hidden_dim=0),
}


def _teacher_preset(name: str) -> TeacherPreset:
    if name not in TEACHER_PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {tuple(TEACHER_PRESETS)}")
    return TEACHER_PRESETS[name]


def get_preset(name: str, **model_overrides: Any) -> tuple[MalmConfig, TrainConfig]:
    """Fresh copies of a teacher preset's (MalmConfig, TrainConfig).

    Args:
        name: A key of TEACHER_PRESETS.
        **model_overrides: MalmConfig fields to replace (e.g. ablation="lc", mask_ratio=0.5).

    Raises:
        ValueError: Unknown preset name or override field, or an invalid value.
    """
    preset = _teacher_preset(name)
    return with_overrides(preset.model, **model_overrides), with_overrides(preset.train)


def get_distill_preset(name: str, **overrides: Any) -> DistillConfig:
    """A fresh copy of the distillation schedule of a teacher preset, with fields replaced."""
    return with_overrides(_teacher_preset(name).distill, **overrides)


def get_student_preset(name: str, **overrides: Any) -> StudentConfig:
    """A copy of a named student with fields replaced (e.g. ``embed_dim=teacher.embed_dim``).

    Raises:
        ValueError: Unknown preset or field.
    """
    if name not in STUDENT_PRESETS:
        raise ValueError(f"unknown student preset {name!r}; choose one of {sorted(STUDENT_PRESETS)}")
    return with_overrides(STUDENT_PRESETS[name], **overrides)


def default_synthfood_for(preset: str) -> Path:
    """The default SynthFood folder of a teacher preset, generated into the cache on first use."""
    size = _teacher_preset(preset).synthfood
    return default_synthfood(
        n_recipes=size.n_recipes, images_per_recipe=size.images_per_recipe, image_size=size.image_size
    )
