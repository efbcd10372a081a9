"""MALM model and training configuration: dataclasses, named presets, ablation switches.

The `base` preset reproduces the paper's setup (MALM, arXiv 2305.11327, Sec 4.3): CLIP ViT-B/16 at
224 px, a d=512 hierarchical recipe transformer (2 layers, 4 heads), projections to 768, a 4-layer
4-head matching module, a 2-layer 2-head predictor, mask ratio 0.75, Adam lr 1e-5 (image tower 1e-6),
image tower frozen for 20 epochs, batch 128, 120 epochs, λ_itm = λ_dist = 1 (Eq. 11). The margin
schedule and the semantic weight are TFood's adaptive triplet (0.18, +0.005 per epoch, capped at 0.3;
semantic weight 0.1).

Joint embedding size: the paper does not state it. H-T and TFood use 1024; `base` keeps 1024. The
smaller presets use smaller joint spaces (64 / 256 / 512) to keep the recipe table on the phone small.

Ablations (paper Table 2 rows):
    baseline: L_itc only (no matching module, no masking, no teacher, no distillation).
    lc:       + L_LC (local CLIP loss).            The matching module is built; no masking.
    lc_gc:    + L_GC (global CLIP loss).           No masking.
    full:     + masked self-distillation (L_dist). Masking at `mask_ratio` (0 disables masking and
              the distillation branch, leaving lc_gc).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

ABLATIONS = ("baseline", "lc", "lc_gc", "full")
PRESETS = ("micro", "tiny", "small", "base")


@dataclass
class MalmConfig:
    """Architecture and loss settings of the MALM teacher.

    Attributes:
        image_size: Input side in pixels (square).
        patch_size: ViT patch side; image_size must be a multiple of it.
        vit_width: ViT hidden width W.
        vit_layers: Number of ViT residual blocks.
        vit_heads: ViT attention heads.
        vit_mlp_ratio: ViT MLP hidden = ratio * width.
        vit_output_dim: Width of the ViT's `proj` (CLIP's image embedding, 512 for ViT-B/16).
        quick_gelu: Use QuickGELU (OpenAI CLIP weights were trained with it).
        vocab_size: Token vocabulary size (from the tokenizer); pad id is 0.
        recipe_width: Hidden size d of the recipe transformer.
        recipe_heads: Attention heads of every recipe transformer.
        sentence_layers: Layers of the per-sentence (and title) encoders.
        sequence_layers: Layers of the encoders over sentence vectors.
        decoder_layers: Layers of the cross-component decoder.
        recipe_mlp_ratio: MLP ratio of the recipe transformers.
        recipe_dropout: Dropout inside the recipe transformers.
        max_tokens: Longest sentence / title in tokens (positional table size).
        max_sentences: Most ingredient lines / instruction steps (positional table size).
        embed_dim: Joint image-recipe embedding size E.
        match_width: Width of the projections into the matching module and predictor (768 in paper).
        matching_layers: Layers of each of ψ and ψ'.
        matching_heads: Heads of ψ and ψ'.
        matching_negatives: Negatives of L_GC / L_LC. 0: ψ/ψ' decode the B true pairs and each
            pair's features are contrasted with the other true pairs' (cheap; ψ sees both sides
            of a pair, so the terms act as regularisers). k > 0: each image is also decoded with
            the k recipes of the batch its embedding is closest to, and each recipe with its k
            closest images (matching.cross_pairs), so ψ/ψ' must tell true from false pairs;
            k >= B-1 uses every false pair (each decoded twice, once per anchor side). Costs
            1 + 2k true-pair runs of ψ/ψ'.
        predictor_layers: Layers of the masked-feature predictor T.
        predictor_heads: Heads of T.
        mask_ratio: Fraction of patches masked for the student (used by the `full` ablation).
        ema_momentum: Teacher EMA momentum: teacher = m * teacher + (1 - m) * student.
        temperature: Initial InfoNCE temperature τ.
        learnable_temperature: Learn τ (as CLIP's log logit scale) or keep it fixed.
        lambda_itm: Weight of L_GC + L_LC (Eq. 11).
        lambda_dist: Weight of L_dist (Eq. 11).
        smooth_l1_beta: β of the SmoothL1 distillation loss (Eq. 2).
        margin_start: Triplet margin at epoch 0.
        margin_step: Margin increase per epoch.
        margin_max: Margin cap.
        semantic_weight: Weight of the semantic (class) triplet term.
        ablation: One of ABLATIONS.
        itc_on_masked: Compute L_itc's image embedding from the masked student, as the paper does
            (Sec 3.3); False adds an unmasked student pass for L_itc.
        clip_weights: Optional local CLIP checkpoint that `create_model` loads into the image tower.
    """

    # image tower
    image_size: int = 224
    patch_size: int = 16
    vit_width: int = 768
    vit_layers: int = 12
    vit_heads: int = 12
    vit_mlp_ratio: float = 4.0
    vit_output_dim: int = 512
    quick_gelu: bool = True
    # recipe tower
    vocab_size: int = 30000
    recipe_width: int = 512
    recipe_heads: int = 4
    sentence_layers: int = 2
    sequence_layers: int = 2
    decoder_layers: int = 2
    recipe_mlp_ratio: float = 4.0
    recipe_dropout: float = 0.1
    max_tokens: int = 32
    max_sentences: int = 32
    # joint space and matching
    embed_dim: int = 1024
    match_width: int = 768
    matching_layers: int = 4
    matching_heads: int = 4
    matching_negatives: int = 0
    predictor_layers: int = 2
    predictor_heads: int = 2
    # losses
    mask_ratio: float = 0.75
    ema_momentum: float = 0.999
    temperature: float = 0.07
    learnable_temperature: bool = True
    lambda_itm: float = 1.0
    lambda_dist: float = 1.0
    smooth_l1_beta: float = 1.0
    margin_start: float = 0.18
    margin_step: float = 0.005
    margin_max: float = 0.3
    semantic_weight: float = 0.1
    ablation: str = "full"
    itc_on_masked: bool = True
    clip_weights: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        if self.ablation not in ABLATIONS:
            raise ValueError(f"ablation must be one of {ABLATIONS}, got {self.ablation!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        for width, heads, name in (
            (self.vit_width, self.vit_heads, "vit"),
            (self.recipe_width, self.recipe_heads, "recipe"),
            (self.match_width, self.matching_heads, "matching"),
            (self.match_width, self.predictor_heads, "predictor"),
        ):
            if width % heads:
                raise ValueError(f"{name} width {width} is not divisible by its {heads} heads")
        if self.matching_negatives < 0:
            raise ValueError(f"matching_negatives must be >= 0, got {self.matching_negatives}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (see module-level `to_dict`)."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MalmConfig":
        """Rebuild from `to_dict` output (see module-level `from_dict`)."""
        return from_dict(cls, data)

    @property
    def grid_size(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """P, the number of image patches."""
        return self.grid_size**2

    @property
    def uses_matching(self) -> bool:
        """Whether the two-level matching module (ψ, ψ') is built and trained."""
        return self.ablation != "baseline"

    @property
    def uses_global_matching(self) -> bool:
        """Whether L_GC is part of the loss."""
        return self.ablation in ("lc_gc", "full")

    @property
    def uses_distillation(self) -> bool:
        """Whether masking, the EMA teacher, the predictor and L_dist are active."""
        return self.ablation == "full" and self.mask_ratio > 0

    @property
    def effective_mask_ratio(self) -> float:
        """The mask ratio the student sees in training (0 unless distillation is on)."""
        return self.mask_ratio if self.uses_distillation else 0.0


@dataclass
class TrainConfig:
    """Optimisation settings (the image size lives in MalmConfig, the single source of truth).

    Attributes:
        epochs: Training epochs.
        batch_size: Batch size per process (under torchrun the global batch is this times the world size).
        lr: Adam learning rate of everything but the image tower.
        image_lr: Learning rate of the (CLIP) image tower.
        weight_decay: Adam(W) weight decay.
        freeze_image_epochs: Epochs during which the image tower is frozen.
        warmup_steps: Linear warm-up steps.
        num_workers: DataLoader workers.
        grad_clip: Gradient-norm clip (0 disables).
        seed: Base seed (rank is added by the loop).
        eval_bag_size: Validation bag size for retrieval metrics.
        log_every: Steps between metrics.jsonl step records.
        save_every_steps: Steps between mid-epoch checkpoints (0: only at epoch ends).
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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (see module-level `to_dict`)."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Rebuild from `to_dict` output (see module-level `from_dict`)."""
        return from_dict(cls, data)


def _micro() -> tuple[MalmConfig, TrainConfig]:
    # From scratch on 300 recipes, the matching and distillation terms at the paper's weight 1 and a
    # 75% mask hold L_itc back (BENCHMARKS.md, `micro`): they are kept, at weight 0.1 and mask 0.5.
    model = MalmConfig(
        image_size=64, patch_size=8, vit_width=64, vit_layers=2, vit_heads=2, vit_output_dim=64,
        quick_gelu=False, vocab_size=4096, recipe_dropout=0.0, recipe_width=64, recipe_heads=2, sentence_layers=1,
        sequence_layers=1, decoder_layers=1, embed_dim=64, match_width=64, matching_layers=1,
        matching_heads=2, predictor_layers=1, predictor_heads=2, ema_momentum=0.99,
        mask_ratio=0.5, lambda_itm=0.1, lambda_dist=0.1,
    )
    train = TrainConfig(
        epochs=5, batch_size=32, lr=1e-3, image_lr=1e-3, weight_decay=0.0, freeze_image_epochs=0,
        warmup_steps=10, num_workers=0, eval_bag_size=100,
    )
    return model, train


def _tiny() -> tuple[MalmConfig, TrainConfig]:
    # Sized for 2 CPU cores: SynthFood's default set trains in about 15 minutes.
    model = MalmConfig(
        image_size=64, patch_size=8, vit_width=128, vit_layers=4, vit_heads=4, vit_output_dim=128,
        quick_gelu=False, vocab_size=8192, recipe_width=96, recipe_heads=4, sentence_layers=1,
        sequence_layers=1, decoder_layers=1, recipe_mlp_ratio=2.0, embed_dim=128, match_width=96,
        matching_layers=1, matching_heads=4, predictor_layers=1, predictor_heads=2, ema_momentum=0.995,
    )
    train = TrainConfig(
        epochs=10, batch_size=64, lr=1e-3, image_lr=1e-3, weight_decay=0.0, freeze_image_epochs=0,
        warmup_steps=50, num_workers=1, eval_bag_size=1000,
    )
    return model, train


def _small() -> tuple[MalmConfig, TrainConfig]:
    model = MalmConfig(
        image_size=160, patch_size=16, vit_width=384, vit_layers=12, vit_heads=6, vit_output_dim=384,
        quick_gelu=False, vocab_size=30000, recipe_width=384, recipe_heads=4, sentence_layers=2,
        sequence_layers=2, decoder_layers=2, embed_dim=512, match_width=384, matching_layers=2,
        matching_heads=4, predictor_layers=2, predictor_heads=2, ema_momentum=0.998,
    )
    train = TrainConfig(
        epochs=40, batch_size=128, lr=1e-4, image_lr=5e-5, weight_decay=0.0, freeze_image_epochs=0,
        warmup_steps=500, num_workers=4,
    )
    return model, train


def _base() -> tuple[MalmConfig, TrainConfig]:
    return MalmConfig(), TrainConfig()


_PRESET_BUILDERS = {"micro": _micro, "tiny": _tiny, "small": _small, "base": _base}


def get_preset(name: str, **model_overrides: Any) -> tuple[MalmConfig, TrainConfig]:
    """Return the (MalmConfig, TrainConfig) of a named preset.

    Args:
        name: One of PRESETS.
        **model_overrides: MalmConfig fields to replace (e.g. ablation="lc", mask_ratio=0.5).

    Raises:
        ValueError: Unknown preset name or override field.
    """
    if name not in _PRESET_BUILDERS:
        raise ValueError(f"unknown preset {name!r}; choose one of {PRESETS}")
    model, train = _PRESET_BUILDERS[name]()
    unknown = set(model_overrides) - {f.name for f in fields(MalmConfig)}
    if unknown:
        raise ValueError(f"unknown MalmConfig fields: {sorted(unknown)}")
    return replace(model, **model_overrides), train


def to_dict(config: MalmConfig | TrainConfig) -> dict[str, Any]:
    """A JSON-safe dict of a config."""
    return asdict(config)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a config dataclass from `to_dict` output.

    Raises:
        ValueError: `data` has keys that `cls` does not define (a config from another version).
    """
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{cls.__name__} has no fields {sorted(unknown)}")
    return cls(**data)


HASH_EXCLUDED = frozenset({"clip_weights"})  # a machine-local path, not part of what the model is


def config_hash(config: MalmConfig | TrainConfig) -> str:
    """A short stable hash (sha256 of the sorted JSON, first 12 hex digits; clip_weights excluded)."""
    data = {k: v for k, v in to_dict(config).items() if k not in HASH_EXCLUDED}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]

