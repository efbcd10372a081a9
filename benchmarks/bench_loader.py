"""Benchmark the training data pipeline on a canonical dataset; prints one JSON object.

Measures tokenizer training time on the train split, then DataLoader throughput (samples/s of
decoded, augmented, tokenized and collated (image, recipe) pairs) for several worker counts.

    python benchmarks/bench_loader.py DATASET_DIR [--workers 0 1 2] [--batch-size 32]
        [--input-size 224] [--max-samples 2000] [--vocab-size 16000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from malm_edge.training.data.canonical import load_recipes
from malm_edge.training.data.dataset import RecipeImageDataset, collate_batch
from malm_edge.training.data.tokenizer import RecipeTokenizer, train_tokenizer
from malm_edge.training.data.transforms import Preprocessing, TrainTransform


def time_tokenizer(dataset_dir: Path, vocab_size: int) -> tuple[RecipeTokenizer, dict]:
    """Train the tokenizer on the train split; returns it and its timing record."""
    recipes = load_recipes(dataset_dir, "train")
    start = time.perf_counter()
    tokenizer = train_tokenizer(recipes, vocab_size=vocab_size)
    seconds = time.perf_counter() - start
    record = {
        "train_recipes": len(recipes),
        "vocab_size_requested": vocab_size,
        "vocab_size": tokenizer.vocab_size,
        "seconds": round(seconds, 3),
    }
    return tokenizer, record


def time_loader(dataset: RecipeImageDataset, workers: int, batch_size: int, max_samples: int) -> dict:
    """Samples/s over up to `max_samples` items (the first batch, worker start-up, timed apart)."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        collate_fn=collate_batch,
        generator=torch.Generator().manual_seed(0),
        persistent_workers=False,
    )
    start = time.perf_counter()
    samples = skipped = 0
    first_batch_s = None
    timed_start = start
    for batch in loader:
        if first_batch_s is None:
            first_batch_s = time.perf_counter() - start
            timed_start = time.perf_counter()
        else:
            samples += len(batch.get("recipe_index", []))
        skipped += batch["n_skipped"]
        if samples >= max_samples:
            break
    seconds = time.perf_counter() - timed_start
    return {
        "workers": workers,
        "samples": samples,
        "skipped": skipped,
        "first_batch_s": round(first_batch_s or 0.0, 3),
        "samples_per_s": round(samples / seconds, 1) if seconds > 0 and samples else None,
    }


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and print the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset_dir", type=Path)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--max-samples", type=int, default=2000)
    parser.add_argument("--vocab-size", type=int, default=16_000)
    args = parser.parse_args(argv)

    tokenizer, tokenizer_record = time_tokenizer(args.dataset_dir, args.vocab_size)
    transform = TrainTransform(Preprocessing(input_size=args.input_size))
    dataset = RecipeImageDataset(args.dataset_dir, "train", tokenizer, transform)
    result = {
        "dataset": str(args.dataset_dir),
        "train_pairs": len(dataset),
        "input_size": args.input_size,
        "batch_size": args.batch_size,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "tokenizer": tokenizer_record,
        "loader": [
            time_loader(dataset, workers, args.batch_size, args.max_samples) for workers in args.workers
        ],
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
