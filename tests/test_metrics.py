"""retrieval_metrics against a naive double-loop reference and hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from malm_edge.training.metrics import MetricsError, retrieval_metrics


def _naive_rank(query: np.ndarray, candidates: np.ndarray, true_index: int) -> int:
    """1 + number of candidates whose cosine with `query` is strictly above the true one."""

    def cosine(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))

    true_score = cosine(query, candidates[true_index])
    return 1 + sum(cosine(query, c) > true_score for c in candidates)


def _naive_bag(images: np.ndarray, recipes: np.ndarray) -> dict[str, dict[str, float]]:
    out = {}
    for name, queries, candidates in (
        ("image_to_recipe", images, recipes),
        ("recipe_to_image", recipes, images),
    ):
        ranks = [_naive_rank(queries[i], candidates, i) for i in range(len(queries))]
        ranks_sorted = sorted(ranks)
        mid = len(ranks_sorted) // 2
        medr = ranks_sorted[mid] if len(ranks) % 2 else (ranks_sorted[mid - 1] + ranks_sorted[mid]) / 2
        out[name] = {"medr": medr, **{f"r{k}": sum(r <= k for r in ranks) / len(ranks) for k in (1, 5, 10)}}
    return out


def _naive(images, recipes, bags) -> dict[str, dict[str, float]]:
    per_bag = [_naive_bag(images[b], recipes[b]) for b in bags]
    return {
        d: {k: sum(m[d][k] for m in per_bag) / len(per_bag) for k in ("medr", "r1", "r5", "r10")}
        for d in ("image_to_recipe", "recipe_to_image")
    }


def _assert_close(got: dict, want: dict) -> None:
    for direction in ("image_to_recipe", "recipe_to_image"):
        for key in ("medr", "r1", "r5", "r10"):
            assert math.isclose(got[direction][key], want[direction][key], abs_tol=1e-12), (
                direction, key, got[direction][key], want[direction][key],
            )


def _noisy_pairs(n: int, dim: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    recipes = rng.normal(size=(n, dim))
    images = recipes + noise * rng.normal(size=(n, dim))
    return images, recipes


def test_tfood_matches_naive_loop_on_random_data():
    images, recipes = _noisy_pairs(130, 8, 1.2, seed=0)
    got = retrieval_metrics(images, recipes, protocol="tfood", bag_size=40)
    perm = np.random.RandomState(1338).permutation(130)
    bags = [perm[i * 40 : (i + 1) * 40] for i in range(3)]
    _assert_close(got, _naive(images, recipes, bags))
    assert (got["bag_size"], got["n_bags"], got["protocol"]) == (40, 3, "tfood")
    # Noisy enough that retrieval is imperfect, so the check is not trivially all-ones.
    assert 0.0 < got["image_to_recipe"]["r1"] < 1.0


def _ht_reference_bags(ids: np.ndarray, medr_n: int, ntimes: int) -> list[np.ndarray]:
    """H-T's src/eval.py, re-typed: `random.seed(1234)` at import, sort by id, then
    `computeAverageMetrics`' loop of `random.sample(range(0, len(imfeats)), k)`."""
    import random

    random.seed(1234)
    idxs = np.argsort(ids)
    bags = []
    for _ in range(ntimes):
        sub_ids = random.sample(range(0, len(ids)), medr_n)
        bags.append(idxs[sub_ids])
    return bags


def test_ht_matches_naive_loop_and_sorts_by_id():
    images, recipes = _noisy_pairs(60, 6, 1.0, seed=1)
    ids = np.array([f"id{(i * 37) % 60:03d}" for i in range(60)])
    got = retrieval_metrics(images, recipes, protocol="ht", bag_size=25, ids=ids)
    _assert_close(got, _naive(images, recipes, _ht_reference_bags(ids, 25, 10)))
    assert (got["bag_size"], got["n_bags"], got["protocol"]) == (25, 10, "ht")


def test_ht_bags_are_the_reference_loops_bags():
    """Defect 8: H-T samples with Python's random.seed(1234) + random.sample, not np.RandomState.choice."""
    from malm_edge.training.metrics import make_bags

    ids = np.array([f"r{(i * 7919) % 1500:05d}" for i in range(1500)])
    order = np.argsort(ids, kind="stable")
    bags = make_bags(1500, protocol="ht", bag_size=1000, n_bags=None, seed=1234, order=order)
    reference = _ht_reference_bags(ids, 1000, 10)
    assert len(bags) == 10 and all(np.array_equal(got, want) for got, want in zip(bags, reference))


def test_explicit_seed_and_n_bags_are_used():
    images, recipes = _noisy_pairs(100, 5, 1.5, seed=2)
    got = retrieval_metrics(images, recipes, protocol="tfood", bag_size=20, n_bags=2, seed=7)
    perm = np.random.RandomState(7).permutation(100)
    _assert_close(got, _naive(images, recipes, [perm[:20], perm[20:40]]))
    assert got["n_bags"] == 2


def test_default_bag_counts_are_capped():
    images, recipes = _noisy_pairs(250, 4, 1.0, seed=3)
    assert retrieval_metrics(images, recipes, bag_size=20)["n_bags"] == 10  # 12 fit, cap 10
    assert retrieval_metrics(images, recipes, bag_size=100)["n_bags"] == 2
    with pytest.raises(MetricsError, match="disjoint"):
        retrieval_metrics(images, recipes, bag_size=100, n_bags=3)


def test_ties_count_in_the_query_favour():
    # Recipes 0 and 1 are identical, so image 0 and image 1 each tie between them: both rank 1.
    recipes = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    images = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    got = retrieval_metrics(images, recipes, bag_size=1000)
    assert got["image_to_recipe"] == {"medr": 1.0, "r1": 1.0, "r5": 1.0, "r10": 1.0}
    assert got["recipe_to_image"] == {"medr": 1.0, "r1": 1.0, "r5": 1.0, "r10": 1.0}


def test_hand_made_ranks_per_query():
    # Unit vectors at angles: images at 30, 50, -90 degrees, recipes at 0, 38, -90 degrees.
    # image 0: recipe 1 is 8 deg away, its own recipe 0 is 30 deg away -> rank 2; others rank 1.
    # recipe 1: image 0 is 8 deg away, its own image 1 is 12 deg away -> rank 2; others rank 1.
    angles = np.deg2rad
    images = np.stack([np.cos(angles([30, 50, -90])), np.sin(angles([30, 50, -90]))], axis=1)
    recipes = np.stack([np.cos(angles([0, 38, -90])), np.sin(angles([0, 38, -90]))], axis=1)
    got = retrieval_metrics(images, recipes, bag_size=3)
    for direction in ("image_to_recipe", "recipe_to_image"):
        assert got[direction] == pytest.approx({"medr": 1.0, "r1": 2 / 3, "r5": 1.0, "r10": 1.0})
    _assert_close(got, _naive(images, recipes, [np.arange(3)]))


def test_directions_differ_and_are_not_swapped():
    # Recipe 0 is a hub: images 1 and 2 are nearer recipe 0 than their own recipes, yet each
    # recipe's nearest image is its own. So image->recipe is poor and recipe->image perfect.
    images = np.array([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.9, 0.0, 0.1]])
    recipes = np.eye(3)
    got = retrieval_metrics(images, recipes, bag_size=3)
    assert got["image_to_recipe"] == pytest.approx({"medr": 2.0, "r1": 1 / 3, "r5": 1.0, "r10": 1.0})
    assert got["recipe_to_image"] == pytest.approx({"medr": 1.0, "r1": 1.0, "r5": 1.0, "r10": 1.0})
    _assert_close(got, _naive(images, recipes, [np.arange(3)]))
    # Swapping the arguments swaps the directions.
    swapped = retrieval_metrics(recipes, images, bag_size=3)
    assert swapped["image_to_recipe"] == got["recipe_to_image"]


def test_small_n_gives_one_bag_of_all_rows():
    images, recipes = _noisy_pairs(37, 4, 1.0, seed=4)
    for protocol in ("tfood", "ht"):
        got = retrieval_metrics(images, recipes, protocol=protocol, bag_size=1000)
        assert got["bag_size"] == 37 and got["n_bags"] == 1
        _assert_close(got, _naive(images, recipes, [np.arange(37)]))


def test_cosine_not_dot_product():
    # Scaling rows must not change anything.
    images, recipes = _noisy_pairs(50, 4, 1.0, seed=5)
    scales = np.random.default_rng(0).uniform(0.1, 10.0, size=(50, 1))
    assert retrieval_metrics(images * scales, recipes) == retrieval_metrics(images, recipes)


def test_returned_keys_and_types():
    images, recipes = _noisy_pairs(20, 3, 0.5, seed=6)
    got = retrieval_metrics(images.astype(np.float32), recipes.astype(np.float32), bag_size=10)
    assert set(got) == {"image_to_recipe", "recipe_to_image", "bag_size", "n_bags", "protocol"}
    for direction in ("image_to_recipe", "recipe_to_image"):
        assert set(got[direction]) == {"medr", "r1", "r5", "r10"}
        assert all(isinstance(v, float) for v in got[direction].values())
        assert 0.0 <= got[direction]["r1"] <= got[direction]["r5"] <= got[direction]["r10"] <= 1.0
        assert got[direction]["medr"] >= 1.0


@pytest.mark.parametrize(
    ("images", "recipes", "kwargs", "match"),
    [
        (np.zeros((3, 2)), np.zeros((4, 2)), {}, "aligned"),
        (np.zeros(3), np.zeros(3), {}, "2-D"),
        (np.zeros((3, 2)), np.zeros((3, 2)), {"protocol": "x"}, "unknown protocol"),
        (np.zeros((3, 2)), np.zeros((3, 2)), {"protocol": "ht", "ids": [1, 2]}, "one entry per row"),
    ],
)
def test_bad_inputs_raise(images, recipes, kwargs, match):
    with pytest.raises(MetricsError, match=match):
        retrieval_metrics(images, recipes, **kwargs)
