"""MALM loss terms against naive loop references (training/models/losses.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from malm_edge.training.models.config import MalmConfig
from malm_edge.training.models.losses import (
    adaptive_triplet_loss,
    candidate_nce,
    info_nce,
    margin_at_epoch,
    masked_distillation_loss,
    normalize_features,
)


def _embeddings(batch: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(batch, dim, generator=g, dtype=torch.float64), dim=-1)
    recipe = F.normalize(image + 0.8 * torch.randn(batch, dim, generator=g, dtype=torch.float64), dim=-1)
    return image, recipe


def _naive_adaptive(costs: list[float]) -> float:
    violating = [c for c in costs if c > 0]
    return sum(violating) / len(violating) if violating else 0.0


def naive_triplet(image, recipe, margin, class_ids=None, semantic_weight=0.1) -> float:
    """Loop reference: AdaMine adaptive instance (+ semantic) triplet, both directions summed."""
    n = image.shape[0]
    s = [[float(image[i] @ recipe[k]) for k in range(n)] for i in range(n)]
    total = 0.0
    for sim in (s, [list(row) for row in zip(*s)]):  # image->recipe, recipe->image
        costs = [max(0.0, margin - sim[i][i] + sim[i][k]) for i in range(n) for k in range(n) if k != i]
        total += _naive_adaptive(costs)
    if class_ids is None:
        return total
    c = [int(x) for x in class_ids]
    for sim in (s, [list(row) for row in zip(*s)]):
        costs = []
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    if c[i] < 0 or c[j] < 0 or c[k] < 0 or j == i:
                        continue
                    if c[j] == c[i] and c[k] != c[i]:
                        costs.append(max(0.0, margin - sim[i][j] + sim[i][k]))
        total += semantic_weight * _naive_adaptive(costs)
    return total


@pytest.mark.parametrize("margin", [0.18, 0.3, 2.5])
def test_adaptive_triplet_matches_naive(margin: float) -> None:
    image, recipe = _embeddings(7, 5, seed=1)
    got = adaptive_triplet_loss(image, recipe, margin)
    assert got.item() == pytest.approx(naive_triplet(image, recipe, margin), rel=1e-9, abs=1e-12)


def test_adaptive_triplet_semantic_matches_naive() -> None:
    image, recipe = _embeddings(9, 4, seed=2)
    class_ids = torch.tensor([0, 1, 0, 2, -1, 1, 0, -1, 2])
    got = adaptive_triplet_loss(image, recipe, 0.25, class_ids, semantic_weight=0.1)
    want = naive_triplet(image, recipe, 0.25, class_ids, semantic_weight=0.1)
    assert got.item() == pytest.approx(want, rel=1e-9)
    plain = adaptive_triplet_loss(image, recipe, 0.25)
    assert got.item() != pytest.approx(plain.item())


def test_adaptive_triplet_zero_when_separated() -> None:
    image = torch.eye(4, dtype=torch.float64)
    assert adaptive_triplet_loss(image, image.clone(), 0.3).item() == 0.0


def test_margin_schedule() -> None:
    config = MalmConfig()
    assert margin_at_epoch(0, config) == pytest.approx(0.18)
    assert margin_at_epoch(10, config) == pytest.approx(0.23)
    assert margin_at_epoch(24, config) == pytest.approx(0.30)
    assert margin_at_epoch(100, config) == pytest.approx(0.30)


def naive_info_nce(a: torch.Tensor, b: torch.Tensor, tau: float) -> float:
    """Loop reference of the symmetric CLIP loss for one (B, D) problem."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    n = a.shape[0]
    total = 0.0
    for i in range(n):
        row = [float(a[i] @ b[k]) / tau for k in range(n)]
        col = [float(b[i] @ a[k]) / tau for k in range(n)]
        total += -(row[i] - math.log(sum(math.exp(v) for v in row)))
        total += -(col[i] - math.log(sum(math.exp(v) for v in col)))
    return total / (2 * n)


def test_info_nce_matches_naive() -> None:
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(6, 8, generator=g, dtype=torch.float64), torch.randn(6, 8, generator=g, dtype=torch.float64)
    assert info_nce(a, b, 0.07).item() == pytest.approx(naive_info_nce(a, b, 0.07), rel=1e-9)


def test_info_nce_batched_is_mean_over_leading_dims() -> None:
    g = torch.Generator().manual_seed(4)
    a = torch.randn(3, 5, 8, generator=g, dtype=torch.float64)  # (P, B, D)
    b = torch.randn(3, 5, 8, generator=g, dtype=torch.float64)
    want = sum(naive_info_nce(a[p], b[p], 0.1) for p in range(3)) / 3
    assert info_nce(a, b, 0.1).item() == pytest.approx(want, rel=1e-9)


def _all_pair_scores(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair-independent features laid out as candidate scores with k = B-1 (true pair first)."""
    sim = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).transpose(-1, -2)  # (..., B, B)
    n = sim.shape[-1]
    order = torch.tensor([[i] + [k for k in range(n) if k != i] for i in range(n)])  # (B, B)
    image_anchor = torch.gather(sim, -1, order.expand(sim.shape))
    recipe_anchor = torch.gather(sim.transpose(-1, -2), -1, order.expand(sim.shape))
    return image_anchor, recipe_anchor


def test_candidate_nce_over_all_pairs_is_the_clip_loss() -> None:
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(6, 8, generator=g, dtype=torch.float64), torch.randn(6, 8, generator=g, dtype=torch.float64)
    loss = candidate_nce(*_all_pair_scores(a, b), 0.07)
    assert loss.item() == pytest.approx(naive_info_nce(a, b, 0.07), rel=1e-9)


def test_candidate_nce_batched_is_mean_over_leading_dims() -> None:
    g = torch.Generator().manual_seed(4)
    a = torch.randn(3, 5, 8, generator=g, dtype=torch.float64)  # (P, B, D)
    b = torch.randn(3, 5, 8, generator=g, dtype=torch.float64)
    want = sum(naive_info_nce(a[p], b[p], 0.1) for p in range(3)) / 3
    assert candidate_nce(*_all_pair_scores(a, b), 0.1).item() == pytest.approx(want, rel=1e-9)


def test_candidate_nce_drops_invalid_negatives() -> None:
    scores = torch.tensor([[0.9, 0.5, 0.8], [0.2, 0.1, 0.3]], dtype=torch.float64)  # (B=2, 1+k=3)
    valid = torch.tensor([[True, False], [True, True]])
    loss = candidate_nce(scores, scores, 0.5, (valid, valid))

    def row_loss(row: list[float]) -> float:
        return -(row[0] / 0.5 - math.log(sum(math.exp(v / 0.5) for v in row)))

    want = (row_loss([0.9, 0.5]) + row_loss([0.2, 0.1, 0.3])) / 2
    assert loss.item() == pytest.approx(want, rel=1e-9)


def test_masked_distillation_matches_naive() -> None:
    g = torch.Generator().manual_seed(5)
    pred = torch.randn(3, 6, 4, generator=g, dtype=torch.float64)
    target = 3 * torch.randn(3, 6, 4, generator=g, dtype=torch.float64) + 1
    mask = torch.rand(3, 6, generator=g) < 0.5
    beta = 0.5
    losses = []
    for b in range(3):
        for p in range(6):
            if not mask[b, p]:
                continue
            t = target[b, p]
            t = (t - t.mean()) / torch.sqrt(t.var(unbiased=False) + 1e-6)
            per = []
            for w in range(4):
                diff = abs(float(pred[b, p, w] - t[w]))
                per.append(0.5 * diff**2 / beta if diff < beta else diff - 0.5 * beta)
            losses.append(sum(per) / 4)
    got = masked_distillation_loss(pred, target, mask, beta)
    assert got.item() == pytest.approx(sum(losses) / len(losses), rel=1e-6)


def test_masked_distillation_ignores_visible_and_stops_target_gradient() -> None:
    pred = torch.zeros(2, 4, 3, requires_grad=True)
    target = torch.randn(2, 4, 3, requires_grad=True)
    mask = torch.tensor([[True, False, False, False], [False, False, True, False]])
    loss = masked_distillation_loss(pred, target, mask)
    loss.backward()
    assert target.grad is None
    assert pred.grad[~mask].abs().sum() == 0
    assert pred.grad[mask].abs().sum() > 0
    assert masked_distillation_loss(pred, target, torch.zeros(2, 4, dtype=torch.bool)).item() == 0.0


def test_normalize_features_is_layer_norm_without_affine() -> None:
    x = torch.randn(2, 3, 16) * 5 + 2
    y = normalize_features(x)
    assert torch.allclose(y.mean(-1), torch.zeros(2, 3), atol=1e-5)
    assert torch.allclose(y.var(-1, unbiased=False), torch.ones(2, 3), atol=1e-3)


def test_same_recipe_rows_are_not_negatives_in_triplet_and_info_nce() -> None:
    """Defect 5: two photos of one recipe in a batch were each other's negatives."""
    image, recipe = _embeddings(6, 8, seed=11)
    recipe_ids = torch.tensor([0, 0, 1, 2, 2, 2])
    same = recipe_ids.unsqueeze(1) == recipe_ids.unsqueeze(0)  # (B, B)
    s = (image @ recipe.t()).tolist()
    margin, want = 0.3, 0.0
    for sim in (s, [list(row) for row in zip(*s)]):
        costs = [max(0.0, margin - sim[i][i] + sim[i][k]) for i in range(6) for k in range(6) if not same[i, k]]
        want += _naive_adaptive(costs)
    got = adaptive_triplet_loss(image, recipe, margin, same_recipe=same)
    assert got.item() == pytest.approx(want, rel=1e-9)
    assert got.item() != pytest.approx(adaptive_triplet_loss(image, recipe, margin).item(), rel=1e-6)
    logits = (F.normalize(image, dim=-1) @ F.normalize(recipe, dim=-1).t() / 0.1).tolist()
    naive = 0.0
    for rows in (logits, [list(row) for row in zip(*logits)]):
        for i in range(6):
            kept = [rows[i][k] for k in range(6) if k == i or not same[i, k]]
            naive -= rows[i][i] - math.log(sum(math.exp(v) for v in kept))
    assert info_nce(image, recipe, 0.1, same).item() == pytest.approx(naive / 12, rel=1e-9)
