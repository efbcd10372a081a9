"""MALM's loss terms (arXiv 2305.11327, Eqs. 2, 7-11) and TFood's adaptive triplet.

- `adaptive_triplet_loss`: L_itc, TFood's bidirectional triplet on the global embeddings with
  in-batch negatives (never a row of the anchor's own recipe) and AdaMine's adaptive averaging: in each direction, the sum of the triplet
  hinge losses divided by the number of triplets that violate the margin (0 when none does). The two
  directions are summed. Optional semantic term (AdaMine): anchors with a class id >= 0, positives
  of the other modality with the same class (other than the anchor's own pair), negatives with a
  different valid class; adaptive averaging again; weighted by `semantic_weight`.
- `margin_at_epoch`: TFood's incremental margin (0.18 + 0.005 * epoch, capped at 0.3).
- `info_nce`: CLIP's symmetric InfoNCE (Eqs. 7-8, 10) on L2-normalised features, for features that
  each come from their own true pair (`matching_negatives=0`). Eq. 7 as printed leaves the positive
  out of the denominator and omits the log; we use the standard cross-entropy form of the CLIP loss
  the paper cites [46]. Leading dimensions are batched, so per-patch L_LC is one call on (P, B, M).
- `candidate_nce`: the same loss (Eqs. 7-8, 10) when every (image, recipe) pair is
  decoded jointly by ψ/ψ' and so has its own similarity: each image anchor scores its true recipe
  against k negative recipes, and each recipe anchor its true image against k negative images; the
  loss is the cross-entropy of the true pair, averaged over anchors and the two directions. With
  k = B-1 and pair-independent features it is exactly `info_nce`. Per-patch L_LC is one call on
  (P, B, 1+k) scores (Eq. 10's 1/P).
- `masked_distillation_loss`: L_dist (Eq. 2), SmoothL1(β) between predicted and teacher features,
  averaged over the feature dimension and then over the masked patches only. The teacher targets
  are detached and normalised by the paper's "Normalize" block, which we read as a LayerNorm
  without affine parameters over the feature dimension (as in data2vec, the paper's ref. [2]).

Distillation of the image tower into a student (all inputs L2-normalised; recipe embeddings come
from the frozen teacher):
- `feature_distillation_loss`: the student's image embedding towards the teacher's (cosine or MSE);
- `similarity_kl_loss`: the student's image->recipe similarity distribution over candidate recipes
  matches the teacher's (as in CLIP-KD / MobileCLIP's reinforced distillation);
- the contrastive term is `adaptive_triplet_loss` against the true recipe embedding (RecipeSnap-style
  when used alone).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from malm_edge.training.models.config import MalmConfig


def margin_at_epoch(epoch: int, config: MalmConfig) -> float:
    """TFood's incremental margin: margin_start + margin_step * epoch, capped at margin_max."""
    return min(config.margin_start + config.margin_step * epoch, config.margin_max)


def _adaptive_mean(costs: torch.Tensor) -> torch.Tensor:
    """Sum of costs over the number of positive costs (AdaMine); zero when none is positive."""
    violating = (costs > 0).sum()
    return costs.sum() / violating.clamp(min=1).to(costs.dtype)


def _negatives(batch: int, same_recipe: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """(B, B) bool: which off-diagonal entries are negatives (never another row of the same recipe)."""
    negative = ~torch.eye(batch, dtype=torch.bool, device=device)
    return negative if same_recipe is None else negative & ~same_recipe.to(device)


def _instance_triplet(similarity: torch.Tensor, margin: float, same_recipe: torch.Tensor | None = None) -> torch.Tensor:
    """One direction: anchors are rows, the positive is the diagonal, negatives the rest of the row.

    Args:
        similarity: (B, B), similarity[i, k] = anchor i vs candidate k.
        same_recipe: Optional (B, B) bool, True where rows i and k belong to one recipe (not negatives).
    """
    positive = similarity.diagonal().unsqueeze(1)  # (B, 1)
    costs = (margin - positive + similarity).clamp(min=0)  # (B, B)
    return _adaptive_mean(costs * _negatives(similarity.shape[0], same_recipe, similarity.device))


def _semantic_triplet(similarity: torch.Tensor, class_ids: torch.Tensor, margin: float) -> torch.Tensor:
    """One direction of the class-level triplet: costs[i, j, k] for positive j and negative k.

    Args:
        similarity: (B, B) anchors x candidates of the other modality.
        class_ids: (B,) int64, -1 = no class.
    """
    labelled = class_ids >= 0  # (B,)
    same = class_ids.unsqueeze(1) == class_ids.unsqueeze(0)  # (B, B)
    not_self = ~torch.eye(class_ids.shape[0], dtype=torch.bool, device=class_ids.device)
    positive = same & not_self & labelled.unsqueeze(1) & labelled.unsqueeze(0)  # (B, B) [anchor, j]
    negative = ~same & labelled.unsqueeze(1) & labelled.unsqueeze(0)  # (B, B) [anchor, k]
    costs = (margin - similarity.unsqueeze(2) + similarity.unsqueeze(1)).clamp(min=0)  # (B, B_j, B_k)
    valid = positive.unsqueeze(2) & negative.unsqueeze(1)  # (B, B_j, B_k)
    return _adaptive_mean(costs * valid)


def adaptive_triplet_loss(
    image_embedding: torch.Tensor,
    recipe_embedding: torch.Tensor,
    margin: float,
    class_ids: torch.Tensor | None = None,
    semantic_weight: float = 0.1,
    same_recipe: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_itc: bidirectional adaptive triplet loss with in-batch negatives.

    Args:
        image_embedding: (B, E) L2-normalised.
        recipe_embedding: (B, E) L2-normalised, row i paired with image row i.
        margin: Triplet margin (see margin_at_epoch).
        class_ids: Optional (B,) int64 class per pair, -1 where unknown.
        semantic_weight: Weight of the semantic term.
        same_recipe: Optional (B, B) bool, True where rows i and k belong to one recipe: those
            entries are not negatives (two photos of one recipe in a batch).

    Returns:
        Scalar loss.
    """
    similarity = image_embedding @ recipe_embedding.t()  # (B, B) [image, recipe]
    same_t = None if same_recipe is None else same_recipe.t()
    loss = _instance_triplet(similarity, margin, same_recipe) + _instance_triplet(similarity.t(), margin, same_t)
    if class_ids is not None and semantic_weight > 0:
        semantic = _semantic_triplet(similarity, class_ids, margin) + _semantic_triplet(
            similarity.t(), class_ids, margin
        )
        loss = loss + semantic_weight * semantic
    return loss


def info_nce(
    a: torch.Tensor, b: torch.Tensor, temperature: torch.Tensor | float, same_recipe: torch.Tensor | None = None
) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP loss) between paired rows of a and b.

    Args:
        a: (..., B, D) features; row i pairs with row i of b. Leading dims are independent problems.
        b: (..., B, D).
        temperature: τ, scalar.
        same_recipe: Optional (B, B) bool (symmetric), True where rows i and k belong to one recipe:
            those off-diagonal entries are left out of the softmax (not negatives).

    Returns:
        Scalar: mean over leading dims, rows and both directions.
    """
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    logits = a @ b.transpose(-1, -2) / temperature  # (..., B, B)
    batch = logits.shape[-1]
    if same_recipe is not None:
        eye = torch.eye(batch, dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(same_recipe.to(logits.device) & ~eye, float("-inf"))  # (..., B, B)
    flat = logits.reshape(-1, batch, batch)  # (N, B, B)
    targets = torch.arange(batch, device=logits.device).repeat(flat.shape[0])  # (N*B,)
    a_to_b = F.cross_entropy(flat.reshape(-1, batch), targets)
    b_to_a = F.cross_entropy(flat.transpose(1, 2).reshape(-1, batch), targets)
    return (a_to_b + b_to_a) / 2


def candidate_nce(
    image_anchor_scores: torch.Tensor,
    recipe_anchor_scores: torch.Tensor,
    temperature: torch.Tensor | float,
    valid: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE over per-pair similarities; column 0 of each row is the true pair.

    Args:
        image_anchor_scores: (..., B, 1+k) cosine similarities of image i with its own recipe
            (column 0) and with k negative recipes. Leading dims are independent problems.
        recipe_anchor_scores: (..., B, 1+k) the same with recipes as anchors and images as candidates.
        temperature: τ, scalar.
        valid: Optional ((B, k), (B, k)) bool masks of the negatives that count (False: the
            candidate is left out, e.g. another image of the anchor's own recipe).

    Returns:
        Scalar: mean over leading dims, anchors and both directions.
    """
    losses = []
    for scores, keep in zip((image_anchor_scores, recipe_anchor_scores), valid or (None, None)):
        logits = scores / temperature  # (..., B, 1+k)
        if keep is not None:
            keep = torch.cat([keep.new_ones(keep.shape[0], 1), keep], dim=1)  # (B, 1+k)
            logits = logits.masked_fill(~keep, float("-inf"))
        losses.append(-logits.log_softmax(dim=-1)[..., 0].mean())
    return (losses[0] + losses[1]) / 2


def normalize_features(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The paper's "Normalize": LayerNorm without affine parameters over the last dim."""
    return F.layer_norm(x, x.shape[-1:], eps=eps)


def masked_distillation_loss(
    prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, beta: float = 1.0
) -> torch.Tensor:
    """L_dist (Eq. 2): SmoothL1 between predicted and normalised teacher features on masked patches.

    Args:
        prediction: (B, P, W) predictor output f''_p.
        target: (B, P, W) raw teacher patch features f_p (detached and normalised here).
        mask: (B, P) bool, True = masked.
        beta: SmoothL1 β.

    Returns:
        Scalar; zero when nothing is masked.
    """
    target = normalize_features(target.detach().float())
    per_patch = F.smooth_l1_loss(prediction.float(), target, reduction="none", beta=beta).mean(-1)  # (B, P)
    weights = mask.to(per_patch.dtype)
    return (per_patch * weights).sum() / weights.sum().clamp(min=1.0)


def feature_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Mean over the batch of (1 - cos) or of the squared distance between normalised embeddings.

    Args:
        student: (B, D) normalised student image embeddings.
        teacher: (B, D) normalised teacher image embeddings.
        kind: "cosine" or "mse".
    """
    if kind == "cosine":
        return (1.0 - (student * teacher).sum(dim=-1)).mean()
    if kind == "mse":
        return (student - teacher).pow(2).sum(dim=-1).mean()
    raise ValueError(f"unknown feature loss {kind!r}; use 'cosine' or 'mse'")


def similarity_kl_loss(
    student: torch.Tensor, teacher: torch.Tensor, candidates: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(teacher || student) of the image->recipe softmax over candidate recipes, batch mean.

    Args:
        student: (B, D) student image embeddings.
        teacher: (B, D) teacher image embeddings.
        candidates: (C, D) recipe embeddings (the batch's recipes plus a sample of the table).
        temperature: Softmax temperature of both distributions.
    """
    student_logp = F.log_softmax(student @ candidates.T / temperature, dim=-1)  # (B, C)
    teacher_logp = F.log_softmax(teacher @ candidates.T / temperature, dim=-1)  # (B, C)
    return F.kl_div(student_logp, teacher_logp, log_target=True, reduction="batchmean")
