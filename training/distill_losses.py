"""Losses that land a compact student image encoder in the teacher's embedding space.

All inputs are L2-normalised embeddings. The recipe embeddings come from the frozen teacher.
- feature distillation: the student's image embedding towards the teacher's (cosine or MSE);
- similarity distillation (KL): the student's image->recipe similarity distribution over a set of
  candidate recipes matches the teacher's (as in CLIP-KD / MobileCLIP's reinforced distillation);
- contrastive: the adaptive triplet loss against the true recipe embedding (RecipeSnap-style when used
  alone).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from malm_edge.training.models.losses import adaptive_triplet_loss


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


def recipe_triplet_loss(student: torch.Tensor, recipes: torch.Tensor, margin: float) -> torch.Tensor:
    """Bidirectional adaptive triplet loss between student images and their true recipes.

    Args:
        student: (B, D) student image embeddings.
        recipes: (B, D) teacher recipe embeddings, row i the recipe of image i.
        margin: Triplet margin.
    """
    return adaptive_triplet_loss(student, recipes, margin)
