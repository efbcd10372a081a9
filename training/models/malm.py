"""MALM: Mask Augmentation based Local Matching (arXiv 2305.11327), the teacher model.

Training objective (Eq. 11): L = L_itc + λ_itm (L_GC + L_LC) + λ_dist L_dist, with the terms present
per ablation (config.py): `baseline` has only L_itc; `lc` adds L_LC; `lc_gc` adds L_GC; `full` adds
masking and L_dist. Disabled terms are absent from the output dict.

- Student image encoder φ (vit.py) sees the masked image (full ablation) and yields I_f.
- EMA teacher φ⁻ (a deep copy, requires_grad False, always in eval mode, updated by `update_ema()`
  which the loop calls after each optimizer step) sees the full image; its patch features, normalised,
  are the distillation targets (Eq. 2).
- I_f is projected to match_width (the paper's "Projection layer", shared by the matching module and
  the predictor T, Fig. 2), and the ViT's positional table, projected to match_width, is added to
  every patch token (`match_positions`): the mask token carries no position, so without it every
  masked patch of an image would be one identical query of ψ and one repeated L_LC term.
- L_itc's image embedding comes from an UNMASKED pass of the student φ (one extra forward), the pass
  retrieval runs. Sec 3.3: "the input to L_itc are image features from student encoder"; in Fig. 2
  the EMA teacher φ⁻ feeds only "Normalize" -> L_dist, and it gets no gradient, so L_itc on its
  pass would not train the tower that is deployed. `itc_on_masked=True` (ablation) reads the masked
  student's cls token instead. Inference (`encode_images`) never masks.
- T reads ψ's output I_att of the true pairs (`predictor_input="matched"`): Fig. 2's caption and
  Sec. 4.6 reconstruct masked features from the matched, recipe-conditioned tokens, which is what
  makes the student "text-aware"; "image_tokens" feeds T the projected I_f alone.
- Same-recipe rows (`recipe_ids`, two photos of one recipe) are never negatives, in L_itc, in the
  true-pair InfoNCE and in the cross-decoded pairs.
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
        self.match_position_proj = _match_position_proj(config)
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
            tuned = {id(p) for p in self.trunk.tuned_parameters()}
            return [p for p in self.trunk.parameters() if id(p) not in tuned]
        return [p for name, p in self.image_encoder.named_parameters() if name != "mask_token"]

    def tuned_trunk_parameters(self) -> list[nn.Parameter]:
        """The hybrid trunk's last `trunk_tuned_blocks` blocks: trained from the first epoch at
        image_lr, never frozen with the rest of the tower (empty without them)."""
        return self.trunk.tuned_parameters() if self.trunk is not None else []

    def other_parameters(self) -> list[nn.Parameter]:
        """Every other trainable parameter (lr), excluding the teacher."""
        tower = {id(p) for p in self.image_tower_parameters() + self.tuned_trunk_parameters()}
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

    def tokens_input(self, pixels: torch.Tensor, trunk_features: torch.Tensor | None = None) -> torch.Tensor:
        """`image_input`, or the same from the frozen trunk blocks' output when it is already computed
        (`trunk_features`, (B, C', g', g'): the tuned blocks, if any, run on it here)."""
        if trunk_features is None:
            return self.image_input(pixels)
        return self.trunk.tune(trunk_features)  # identity when no block is tuned

    def encode_images(self, pixels: torch.Tensor, trunk_features: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels (or the frozen trunk's output for them) -> (B, E)
        L2-normalised embeddings (no masking)."""
        inputs = self.tokens_input(pixels, trunk_features)
        pooled = self.retrieval_image_encoder(inputs)["pooled"]  # (B, D)
        return F.normalize(self.image_head(pooled), dim=-1)

    @property
    def retrieval_image_encoder(self) -> nn.Module:
        """The image encoder retrieval embeds with: the EMA teacher's with `ema_inference`, else the student's."""
        return self.teacher if self.config.ema_inference and self.teacher is not None else self.image_encoder

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
            recipe_ids: Optional (B,) int64 recipe of each pair; two photos of one recipe are then
                never each other's negatives (L_itc, L_GC, L_LC).
            generator: Optional RNG for the patch mask.
            trunk_features: The hybrid trunk's frozen blocks' (B, C', g', g') output for `images`,
                when already computed (cached per augmentation while the trunk is frozen); `images`
                is then not read.

        Returns:
            loss (total), loss_itc and, per ablation, loss_lc, loss_gc, loss_dist; image_embedding,
            recipe_embedding (B, E); margin and temperature (0-d tensors, detached).
        """
        cfg = self.config
        images = self.tokens_input(images, trunk_features)
        student = self.image_encoder(images, cfg.effective_mask_ratio, generator)
        image_embedding = self._itc_image_embedding(images, student["pooled"])  # (B, E)
        recipe = self.recipe_encoder(recipe_batch)
        margin = margin_at_epoch(epoch, cfg)
        same_recipe = _same_recipe(recipe_ids)
        out: dict[str, Any] = {
            "loss_itc": adaptive_triplet_loss(
                image_embedding, recipe["embedding"], margin, class_ids, cfg.semantic_weight, same_recipe
            )
        }
        temperature = self.temperature
        image_tokens = self._matching_tokens(student["tokens"]) if self.image_token_proj is not None else None
        matched = None
        if self.matching is not None:
            if cfg.matching_negatives > 0:
                similarity = image_embedding @ recipe["embedding"].t()  # (B, B) [image, recipe]
                pairs = cross_pairs(similarity, cfg.matching_negatives, same_recipe)
                local, overall, matched = self._cross_pair_contrast(image_tokens, recipe, temperature, pairs)
            else:
                local, overall, matched = self._true_pair_contrast(image_tokens, recipe, temperature, same_recipe)
            out["loss_lc"] = local
            if overall is not None:
                out["loss_gc"] = overall
        if self.predictor is not None:
            predictor_tokens = matched if cfg.predictor_input == "matched" else image_tokens
            out["loss_dist"] = self._distillation_loss(images, predictor_tokens, student["mask"])
        out["loss"] = self._total(out)
        out.update(
            image_embedding=image_embedding,
            recipe_embedding=recipe["embedding"],
            margin=torch.tensor(margin),
            temperature=temperature.detach(),
        )
        return out

    def _itc_image_embedding(self, images: torch.Tensor, masked_pooled: torch.Tensor) -> torch.Tensor:
        """L_itc's image embedding: of the unmasked student pass (the one retrieval runs) unless
        `itc_on_masked`, or when nothing is masked (then the student pass is already the full one)."""
        pooled = masked_pooled
        if not self.config.itc_on_masked and self.config.effective_mask_ratio > 0:
            pooled = self.image_encoder(images)["pooled"]  # (B, D)
        return F.normalize(self.image_head(pooled), dim=-1)

    def _matching_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """I_f (B, 1+P, W) -> projected (B, 1+P, M), the ViT's positions (projected) added to the patches.

        The mask token stands in for an output feature and carries no position; without this every
        masked patch of an image would be the same query in ψ (and the same L_LC term).
        """
        projected = self.image_token_proj(tokens)  # (B, 1+P, M)
        if self.match_position_proj is None:
            return projected
        positions = self.match_position_proj(self.image_encoder.positional_embedding[1:].to(projected.dtype))  # (P, M)
        return torch.cat([projected[:, :1], projected[:, 1:] + positions], dim=1)

    def _true_pair_contrast(
        self,
        image_tokens: torch.Tensor,
        recipe: dict[str, torch.Tensor],
        temperature: torch.Tensor,
        same_recipe: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(L_LC, L_GC or None, true-pair I_att) with ψ/ψ' run on the true pairs only (ablation:
        the other pairs are the negatives)."""
        match = self.matching(image_tokens, recipe["tokens"], recipe["tokens_mask"])
        patches = match["image_att"][:, 1:].transpose(0, 1)  # (P, B, M)
        local = match["recipe_local"].transpose(0, 1)  # (P, B, M)
        overall = None
        if self.config.uses_global_matching:
            overall = info_nce(match["image_global"], match["recipe_global"], temperature, same_recipe)
        return info_nce(patches, local, temperature, same_recipe), overall, match["image_att"]

    def _cross_pair_contrast(
        self,
        image_tokens: torch.Tensor,
        recipe: dict[str, torch.Tensor],
        temperature: torch.Tensor,
        pairs: CrossPairs,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(L_LC, L_GC or None, true-pair I_att) with ψ/ψ' run on the true pairs and on decoded hard
        negative pairs."""
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
        batch = image_tokens.shape[0]
        true_pairs = match["image_att"][:batch]  # (B, 1+P, M): the first B decoded pairs are the true ones
        return candidate_nce(*pairs.anchor_scores(local), temperature, pairs.valid), overall, true_pairs

    def _distillation_loss(self, images: torch.Tensor, image_tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """L_dist (Eq. 2) between T(tokens) and the EMA teacher's patch features on masked patches;
        tokens are ψ's I_att or the projected I_f (`predictor_input`)."""
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


def _match_position_proj(config: MalmConfig) -> nn.Linear | None:
    """The map of the ViT's positional table into the matching width (None when unused)."""
    if not (config.uses_matching and config.match_positions):
        return None
    return nn.Linear(config.vit_width, config.match_width, bias=False)


def _same_recipe(recipe_ids: torch.Tensor | None) -> torch.Tensor | None:
    """(B,) recipe of each pair -> (B, B) bool, True where two rows belong to one recipe (or None)."""
    if recipe_ids is None:
        return None
    return recipe_ids.unsqueeze(1) == recipe_ids.unsqueeze(0)


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
