"""MALM: Mask Augmentation based Local Matching (arXiv 2305.11327), the teacher model.

Training objective (Eq. 11): L = L_itc + λ_itm (L_GC + L_LC) + λ_dist L_dist, with the terms present
per ablation (config.py): `baseline` has only L_itc; `lc` adds L_LC; `lc_gc` adds L_GC; `full` adds
masking and L_dist. Disabled terms are absent from the output dict.

- Student image encoder φ (vit.py) sees the masked image (full ablation) and yields I_f.
- EMA teacher φ⁻ (a deep copy, requires_grad False, always in eval mode, updated by `update_ema()`
  which the loop calls after each optimizer step) sees the full image; its patch features, normalised,
  are the distillation targets (Eq. 2).
- I_f is projected to match_width (the paper's "Projection layer", shared by the matching module and
  the predictor T, Fig. 2).
- L_itc's image embedding comes from the MASKED student's cls token, as the paper trains ("the input
  to L_itc are image features from student encoder", Sec 3.3); set `itc_on_masked=False` to add an
  unmasked student pass for L_itc instead. Inference (`encode_images`) never masks.
- The image embedding is image_head(ln_post(cls) @ proj): CLIP's projection followed by a new linear
  map into the joint space (E); the recipe embedding is the recipe encoder's projection.

`forward` always applies the configured (effective) mask ratio, in train and eval mode alike: it is
the training objective. Retrieval uses `encode_images` / `encode_recipes`.

DDP notes for the loop: every parameter with requires_grad=True is meant to be used by `forward` in
every ablation (unused modules are not built; the mask token is frozen when nothing is masked); the
harness (harness/teacher.py) still wraps with `find_unused_parameters=True`, which costs a graph walk
per step and keeps a step correct should a term ever skip a module. The teacher's parameters never
require gradients; call `model.module.update_ema()` on the wrapped model.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from malm_edge.edge.bundle import CLIP_MEAN, CLIP_STD, Preprocessing
from malm_edge.training.models.clip_weights import LoadReport, load_clip_vision_weights
from malm_edge.training.models.config import MalmConfig
from malm_edge.training.models.efficientnet_lite import LITE_MEAN, LITE_STD
from malm_edge.training.models.hybrid_vit import HybridTrunk, HybridViT
from malm_edge.training.models.losses import (
    adaptive_triplet_loss,
    candidate_nce,
    info_nce,
    margin_at_epoch,
    masked_distillation_loss,
)
from malm_edge.training.models.matching import CrossPairs, TwoLevelMatching, cross_pairs
from malm_edge.training.models.predictor import MaskedFeaturePredictor
from malm_edge.training.models.recipe_encoder import RecipeEncoder
from malm_edge.training.models.vit import VisionTransformer

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp: τ >= 0.01


class MALM(nn.Module):
    """The MALM teacher: image and recipe towers, matching module, predictor, EMA teacher.

    Args:
        config: The model configuration (ablation decides which parts are built).
    """

    def __init__(self, config: MalmConfig) -> None:
        super().__init__()
        self.config = config
        self.trunk = HybridTrunk(config) if config.uses_trunk else None
        self.image_encoder = HybridViT(config, self.trunk.channels) if self.trunk else VisionTransformer(config)
        self.image_encoder.mask_token.requires_grad_(config.uses_distillation)
        self.image_head = nn.Linear(config.vit_output_dim, config.embed_dim)
        self.recipe_encoder = RecipeEncoder(config)
        self.image_token_proj = nn.Linear(config.vit_width, config.match_width) if config.uses_matching else None
        self.matching = TwoLevelMatching(config) if config.uses_matching else None
        self.predictor = MaskedFeaturePredictor(config) if config.uses_distillation else None
        self.teacher = self._make_teacher() if config.uses_distillation else None
        log_scale = torch.tensor(math.log(1.0 / config.temperature))
        if config.learnable_temperature:
            self.logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("logit_scale", log_scale)

    def _make_teacher(self) -> VisionTransformer:
        teacher = copy.deepcopy(self.image_encoder)
        teacher.requires_grad_(False)
        return teacher.eval()

    # ---- modes, parameters, EMA -------------------------------------------------------------

    def train(self, mode: bool = True) -> "MALM":
        """Set train/eval mode; the EMA teacher always stays in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def image_tower_parameters(self) -> list[nn.Parameter]:
        """The pretrained image tower (image_lr, frozen first): the CLIP ViT without the new mask
        token, or the hybrid's CNN trunk (whose transformer is new and trains at lr)."""
        if self.trunk is not None:
            return list(self.trunk.parameters())
        return [p for name, p in self.image_encoder.named_parameters() if name != "mask_token"]

    def other_parameters(self) -> list[nn.Parameter]:
        """Every other trainable parameter (lr), excluding the teacher."""
        tower = {id(p) for p in self.image_tower_parameters()}
        return [
            p
            for name, p in self.named_parameters()
            if id(p) not in tower and not name.startswith("teacher.") and p.requires_grad
        ]

    def freeze_image_tower(self, frozen: bool = True) -> None:
        """Freeze (or unfreeze) the student ViT; the mask token and heads stay trainable."""
        for p in self.image_tower_parameters():
            p.requires_grad_(not frozen)

    @torch.no_grad()
    def update_ema(self, momentum: float | None = None) -> None:
        """teacher = m * teacher + (1 - m) * student, parameter by parameter (no-op without a teacher)."""
        if self.teacher is None:
            return
        m = self.config.ema_momentum if momentum is None else momentum
        for t, s in zip(self.teacher.parameters(), self.image_encoder.parameters(), strict=True):
            t.lerp_(s.detach().to(t.dtype), 1.0 - m)

    def sync_teacher(self) -> None:
        """Copy the student's weights into the teacher (after loading CLIP weights)."""
        if self.teacher is not None:
            self.teacher.load_state_dict(self.image_encoder.state_dict())

    def load_clip(self, path: str | Path) -> LoadReport:
        """Initialise the student (and teacher) ViT from a local CLIP checkpoint (clip_weights.py)."""
        report = load_clip_vision_weights(self.image_encoder, path)
        self.sync_teacher()
        return report

    @property
    def temperature(self) -> torch.Tensor:
        """τ = 1 / exp(logit_scale), with the logit scale clamped at log(100)."""
        return 1.0 / self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()

    # ---- inference -----------------------------------------------------------------------------

    def image_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """What the image encoder reads: the pixels, or the hybrid trunk's (B, C, g, g) grid."""
        if self.trunk is None:
            return pixels
        with torch.set_grad_enabled(torch.is_grad_enabled() and any(p.requires_grad for p in self.trunk.parameters())):
            return self.trunk(pixels)

    def encode_images(self, pixels: torch.Tensor, trunk_features: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels (or the trunk's grid of them) -> (B, E) L2-normalised
        embeddings (no masking)."""
        inputs = trunk_features if trunk_features is not None else self.image_input(pixels)
        pooled = self.image_encoder(inputs)["pooled"]  # (B, D)
        return F.normalize(self.image_head(pooled), dim=-1)

    def encode_recipes(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Recipe batch (see RecipeEncoder.forward) -> (B, E) L2-normalised embeddings."""
        return self.recipe_encoder(batch)["embedding"]

    # ---- training objective --------------------------------------------------------------------

    def forward(
        self,
        images: torch.Tensor,
        recipe_batch: dict[str, torch.Tensor],
        *,
        epoch: int,
        class_ids: torch.Tensor | None = None,
        recipe_ids: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        trunk_features: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Compute the MALM losses for a batch of true pairs.

        Args:
            images: (B, 3, S, S) normalised pixels.
            recipe_batch: Tokenised recipes (RecipeEncoder.forward), row i paired with image i.
            epoch: Current epoch (0-based), for the margin schedule.
            class_ids: Optional (B,) int64 semantic classes, -1 = none.
            recipe_ids: Optional (B,) int64 recipe of each pair; with `matching_negatives` > 0, two
                photos of one recipe are then never each other's cross-decoded negatives (L_itc and
                the true-pair reading do not use it).
            generator: Optional RNG for the patch mask.
            trunk_features: The hybrid trunk's (B, C, g, g) grid of `images`, when already computed
                (cached per augmentation while the trunk is frozen); `images` is then not read.

        Returns:
            loss (total), loss_itc and, per ablation, loss_lc, loss_gc, loss_dist; image_embedding,
            recipe_embedding (B, E); margin and temperature (0-d tensors, detached).
        """
        cfg = self.config
        images = trunk_features if trunk_features is not None else self.image_input(images)
        student = self.image_encoder(images, cfg.effective_mask_ratio, generator)
        pooled = student["pooled"]
        if not cfg.itc_on_masked and cfg.effective_mask_ratio > 0:
            pooled = self.image_encoder(images)["pooled"]
        image_embedding = F.normalize(self.image_head(pooled), dim=-1)  # (B, E)
        recipe = self.recipe_encoder(recipe_batch)
        margin = margin_at_epoch(epoch, cfg)
        out: dict[str, Any] = {
            "loss_itc": adaptive_triplet_loss(
                image_embedding, recipe["embedding"], margin, class_ids, cfg.semantic_weight
            )
        }
        temperature = self.temperature
        image_tokens = None
        if self.image_token_proj is not None:
            image_tokens = self.image_token_proj(student["tokens"])  # (B, 1+P, M)
        if self.matching is not None:
            if cfg.matching_negatives > 0:
                similarity = image_embedding @ recipe["embedding"].t()  # (B, B) [image, recipe]
                same_recipe = None if recipe_ids is None else recipe_ids.unsqueeze(1) == recipe_ids.unsqueeze(0)
                pairs = cross_pairs(similarity, cfg.matching_negatives, same_recipe)
                local, overall = self._cross_pair_contrast(image_tokens, recipe, temperature, pairs)
            else:
                local, overall = self._true_pair_contrast(image_tokens, recipe, temperature)
            out["loss_lc"] = local
            if overall is not None:
                out["loss_gc"] = overall
        if self.predictor is not None:
            out["loss_dist"] = self._distillation_loss(images, image_tokens, student["mask"])
        out["loss"] = self._total(out)
        out.update(
            image_embedding=image_embedding,
            recipe_embedding=recipe["embedding"],
            margin=torch.tensor(margin),
            temperature=temperature.detach(),
        )
        return out

    def _true_pair_contrast(
        self, image_tokens: torch.Tensor, recipe: dict[str, torch.Tensor], temperature: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(L_LC, L_GC or None) with ψ/ψ' run on the true pairs only; the other pairs are the negatives."""
        match = self.matching(image_tokens, recipe["tokens"], recipe["tokens_mask"])
        patches = match["image_att"][:, 1:].transpose(0, 1)  # (P, B, M)
        local = match["recipe_local"].transpose(0, 1)  # (P, B, M)
        overall = None
        if self.config.uses_global_matching:
            overall = info_nce(match["image_global"], match["recipe_global"], temperature)
        return info_nce(patches, local, temperature), overall

    def _cross_pair_contrast(
        self,
        image_tokens: torch.Tensor,
        recipe: dict[str, torch.Tensor],
        temperature: torch.Tensor,
        pairs: CrossPairs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(L_LC, L_GC or None) with ψ/ψ' run on the true pairs and on decoded hard negative pairs."""
        match = self.matching(
            image_tokens[pairs.image_index],  # (N, 1+P, M)
            recipe["tokens"][pairs.recipe_index],  # (N, S, d)
            recipe["tokens_mask"][pairs.recipe_index],  # (N, S)
        )
        local = F.cosine_similarity(match["image_att"][:, 1:], match["recipe_local"], dim=-1)  # (N, P)
        overall = None
        if self.config.uses_global_matching:
            pair_global = F.cosine_similarity(match["image_global"], match["recipe_global"], dim=-1)  # (N,)
            overall = candidate_nce(*pairs.anchor_scores(pair_global), temperature, pairs.valid)
        return candidate_nce(*pairs.anchor_scores(local), temperature, pairs.valid), overall

    def _distillation_loss(self, images: torch.Tensor, image_tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """L_dist (Eq. 2) between T(I_f) and the EMA teacher's patch features on masked patches."""
        with torch.no_grad():
            target = self.teacher(images)["tokens"][:, 1:]  # (B, P, W)
        prediction = self.predictor(image_tokens)  # (B, P, W)
        return masked_distillation_loss(prediction, target, mask, self.config.smooth_l1_beta)

    def _total(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """Eq. 11 over the terms present."""
        cfg = self.config
        total = losses["loss_itc"]
        for name in ("loss_lc", "loss_gc"):
            if name in losses:
                total = total + cfg.lambda_itm * losses[name]
        if "loss_dist" in losses:
            total = total + cfg.lambda_dist * losses["loss_dist"]
        return total


def default_preprocessing(config: MalmConfig) -> Preprocessing:
    """The eval-time image preprocessing of `config`: its image size, and CLIP's mean and std, or for
    an EfficientNet-Lite trunk the (x - 127) / 128 its ImageNet weights were trained with."""
    if config.uses_trunk:
        return Preprocessing(input_size=config.image_size, mean=LITE_MEAN, std=LITE_STD)
    return Preprocessing(input_size=config.image_size, mean=CLIP_MEAN, std=CLIP_STD)


def create_model(
    config: MalmConfig, *, build: bool = True, load_clip_weights: bool = True
) -> tuple[MALM | None, Preprocessing]:
    """Build MALM and its preprocessing.

    Args:
        config: Model configuration.
        build: False returns (None, preprocessing) without building the model.
        load_clip_weights: Load the pretrained image weights: `config.clip_weights` (when set) into
            the ViT, student and teacher, and a hybrid's ImageNet trunk from its pip package. Pass
            False when a trained checkpoint is loaded next (the path may not exist on this machine).

    Returns:
        (model, preprocessing): the preprocessing object travels unchanged to the run config, the
        export and the bundle manifest.
    """
    preprocessing = default_preprocessing(config)
    if not build:
        return None, preprocessing
    model = MALM(config)
    if load_clip_weights and config.clip_weights:
        model.load_clip(config.clip_weights)
    if load_clip_weights and model.trunk is not None:
        model.trunk.load_pretrained()
    return model, preprocessing


def count_parameters(module: nn.Module, exclude_prefix: str = "teacher.") -> int:
    """Number of parameters, excluding the EMA teacher's copy by default."""
    return sum(p.numel() for name, p in module.named_parameters() if not name.startswith(exclude_prefix))


def iter_loss_names(config: MalmConfig) -> Iterator[str]:
    """The loss keys `forward` returns for this config (for loggers that want them up front)."""
    yield "loss"
    yield "loss_itc"
    if config.uses_matching:
        yield "loss_lc"
    if config.uses_global_matching:
        yield "loss_gc"
    if config.uses_distillation:
        yield "loss_dist"
