"""Cross-modal retrieval metrics: median rank and recall@k over bags (docs/architecture.md, "Evaluation").

Two protocols share one ranking core:

- ``tfood`` (the one MALM, arXiv 2305.11327, reports): the rows are shuffled once with
  ``np.random.RandomState(1338).permutation`` and cut into disjoint consecutive bags; by default as
  many bags as fit, at most 10 for bags of 1k and at most 5 for bags of 10k.
- ``ht`` (H-T, Salvador et al. 2021, src/eval.py): the rows are sorted by id, and each of 10 bags
  is a ``random.sample(range(0, n), bag_size)`` draw from Python's ``random`` seeded once with 1234,
  so the bags are H-T's own.

Direction names say what the query is: ``image_to_recipe`` ranks all recipes of the bag for each
image (TFood's code labels this the other way round; we do not). Similarity is cosine. The rank of a
query is 1 + the number of candidates scoring strictly higher than its true match, so ties count in
the query's favour. Each metric is computed per bag and averaged over bags; recall is a fraction in
[0, 1] and medR is 1-based.
"""

from __future__ import annotations

import random
from typing import Sequence

import numpy as np

from malm_edge.edge.backends import l2_normalize
from malm_edge.training.errors import TrainingError

PROTOCOLS = ("tfood", "ht")
DEFAULT_SEEDS = {"tfood": 1338, "ht": 1234}
RECALL_AT = (1, 5, 10)
HT_BAGS = 10
_ROW_CHUNK = 2048  # rows of the similarity matrix held at once (2048 x 10k float32 = 80 MB)


class MetricsError(TrainingError, ValueError):
    """Raised for inputs the metrics cannot be computed on (shapes, protocol, bag count)."""


def true_match_ranks(queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """1-based rank of candidate i among all candidates for query i (dot-product scores).

    Args:
        queries: (N, D) query embeddings.
        candidates: (N, D) candidate embeddings; row i is the true match of query i.

    Returns:
        (N,) int64 ranks, 1 + the number of candidates scoring strictly higher than the true one.
    """
    n = queries.shape[0]
    ranks = np.empty(n, dtype=np.int64)
    for start in range(0, n, _ROW_CHUNK):
        stop = min(start + _ROW_CHUNK, n)
        scores = queries[start:stop] @ candidates.T  # (chunk, N)
        # The true score is read from the same matrix so that ties are exact, not re-computed.
        true_scores = scores[np.arange(stop - start), np.arange(start, stop)]  # (chunk,)
        ranks[start:stop] = 1 + (scores > true_scores[:, None]).sum(axis=1)
    return ranks


def rank_metrics(ranks: np.ndarray) -> dict[str, float]:
    """medR and R@{1,5,10} (fractions) of one bag's ranks."""
    metrics = {"medr": float(np.median(ranks))}
    for k in RECALL_AT:
        metrics[f"r{k}"] = float(np.mean(ranks <= k))
    return metrics


def _default_n_bags(n_rows: int, bag_size: int, protocol: str) -> int:
    if protocol == "ht":
        return HT_BAGS
    cap = 5 if bag_size >= 10_000 else 10
    return min(cap, n_rows // bag_size)


def make_bags(
    n_rows: int,
    *,
    protocol: str,
    bag_size: int,
    n_bags: int | None,
    seed: int,
    order: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Row indices of each bag under a protocol.

    Args:
        n_rows: Number of aligned (image, recipe) rows.
        protocol: "tfood" or "ht".
        bag_size: Rows per bag; must not exceed n_rows (the caller handles small N).
        n_bags: Bag count, or None for the protocol default.
        seed: Seed of the protocol's generator (tfood: `np.random.RandomState`; ht: Python's
            `random.Random`, as H-T's `random.seed` + `random.sample`).
        order: (n_rows,) base order of the rows (sorted by id for `ht`); identity when None.

    Returns:
        One (bag_size,) int64 index array per bag.
    """
    base = np.arange(n_rows) if order is None else np.asarray(order)
    count = _default_n_bags(n_rows, bag_size, protocol) if n_bags is None else n_bags
    if count < 1:
        raise MetricsError(f"n_bags must be >= 1, got {count}")
    if protocol == "tfood":
        rng = np.random.RandomState(seed)
        if count * bag_size > n_rows:
            raise MetricsError(
                f"tfood uses disjoint bags: {count} bags of {bag_size} need {count * bag_size} "
                f"rows, only {n_rows} given"
            )
        shuffled = base[rng.permutation(n_rows)]
        return [shuffled[i * bag_size : (i + 1) * bag_size] for i in range(count)]
    # H-T's eval.py: `random.seed(1234)` once, then `random.sample(range(0, n), bag_size)` per bag.
    sampler = random.Random(seed)
    return [base[np.array(sampler.sample(range(0, n_rows), bag_size), dtype=np.int64)] for _ in range(count)]


def _check_inputs(image_emb: np.ndarray, recipe_emb: np.ndarray, protocol: str, bag_size: int) -> None:
    if protocol not in PROTOCOLS:
        raise MetricsError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    if image_emb.ndim != 2 or recipe_emb.ndim != 2:
        raise MetricsError(
            f"embeddings must be 2-D (N, D); got {image_emb.shape} and {recipe_emb.shape}"
        )
    if image_emb.shape != recipe_emb.shape:
        raise MetricsError(
            f"image and recipe embeddings must be aligned with one width; got {image_emb.shape} "
            f"and {recipe_emb.shape}"
        )
    if image_emb.shape[0] == 0:
        raise MetricsError("no rows to evaluate")
    if bag_size < 1:
        raise MetricsError(f"bag_size must be >= 1, got {bag_size}")


def _id_order(ids: Sequence | np.ndarray | None, n_rows: int) -> np.ndarray | None:
    if ids is None:
        return None
    ids = np.asarray(ids)
    if ids.shape != (n_rows,):
        raise MetricsError(f"ids must have one entry per row ({n_rows}), got shape {ids.shape}")
    return np.argsort(ids, kind="stable")


def retrieval_metrics(
    image_emb: np.ndarray,
    recipe_emb: np.ndarray,
    *,
    protocol: str = "tfood",
    bag_size: int = 1000,
    n_bags: int | None = None,
    seed: int | None = None,
    ids: Sequence | np.ndarray | None = None,
) -> dict:
    """Image-to-recipe and recipe-to-image medR and R@{1,5,10}, averaged over bags.

    Args:
        image_emb: (N, D) image embeddings; row i pairs with row i of `recipe_emb`.
        recipe_emb: (N, D) recipe embeddings.
        protocol: "tfood" (shuffle once, disjoint bags) or "ht" (sort by id, random bags).
        bag_size: Rows per bag. With fewer than `bag_size` rows, one bag of all rows is used and
            the reported `bag_size` is the true one.
        n_bags: Bag count; None gives the protocol default (tfood: as many disjoint bags as fit,
            at most 10, or 5 for bags of 10k or more; ht: 10).
        seed: Generator seed; None gives the protocol's (tfood 1338, ht 1234).
        ids: Optional (N,) row ids; the `ht` protocol sorts rows by them before sampling (ignored
            by `tfood`). Without ids the given order is kept.

    Returns:
        {"image_to_recipe": {"medr", "r1", "r5", "r10"}, "recipe_to_image": {...},
        "bag_size": int, "n_bags": int, "protocol": str}.

    Raises:
        MetricsError: Misshapen inputs, an unknown protocol or more disjoint bags than rows allow.
    """
    image_emb = np.asarray(image_emb)
    recipe_emb = np.asarray(recipe_emb)
    _check_inputs(image_emb, recipe_emb, protocol, bag_size)
    dtype = np.result_type(image_emb.dtype, recipe_emb.dtype, np.float32)
    images = l2_normalize(image_emb.astype(dtype, copy=False))  # (N, D)
    recipes = l2_normalize(recipe_emb.astype(dtype, copy=False))  # (N, D)
    n_rows = images.shape[0]
    seed = DEFAULT_SEEDS[protocol] if seed is None else seed
    order = _id_order(ids, n_rows) if protocol == "ht" else None

    if n_rows < bag_size:
        base = np.arange(n_rows) if order is None else order
        bags = [base]
    else:
        bags = make_bags(
            n_rows, protocol=protocol, bag_size=bag_size, n_bags=n_bags, seed=seed, order=order
        )

    per_bag = {"image_to_recipe": [], "recipe_to_image": []}
    for bag in bags:
        bag_images, bag_recipes = images[bag], recipes[bag]  # (bag, D) each
        per_bag["image_to_recipe"].append(rank_metrics(true_match_ranks(bag_images, bag_recipes)))
        per_bag["recipe_to_image"].append(rank_metrics(true_match_ranks(bag_recipes, bag_images)))

    result: dict = {
        direction: {key: float(np.mean([m[key] for m in bag_metrics])) for key in bag_metrics[0]}
        for direction, bag_metrics in per_bag.items()
    }
    result.update(bag_size=int(len(bags[0])), n_bags=len(bags), protocol=protocol)
    return result
