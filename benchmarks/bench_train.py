"""Training throughput of each MALM preset (and ablation) on this machine; prints JSON lines.

Runs the real forward, backward, optimizer step and EMA update on batches of a canonical dataset
(data loading excluded: it runs in worker processes during training), after warm-up steps.

    python benchmarks/bench_train.py DATASET_DIR [--presets micro tiny] [--ablations full baseline]
        [--steps 5] [--threads 2] [--batch-size N] [--matching-negatives 0 3]

`--batch-size` replaces the preset's batch (e.g. to fit `base` in CPU memory); `peak_rss_mb` is the
process's peak resident memory after the preset ran (Linux ru_maxrss, so it only grows).
`--matching-negatives` times each preset once per value (0: ψ/ψ' on the true pairs only; k: also on
2k hard negative pairs per anchor), side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch

from malm_edge.training.data.canonical import load_recipes
from malm_edge.training.data.dataset import RecipeImageDataset, collate_batch
from malm_edge.training.data.tokenizer import train_tokenizer
from malm_edge.training.data.transforms import TrainTransform
from malm_edge.training.harness.evaluate import recipe_batch
from malm_edge.training.models.malm import count_parameters, create_model
from malm_edge.training.presets import get_preset


def measure(
    dataset_dir: Path,
    preset: str,
    ablation: str,
    steps: int,
    warmup: int,
    batch_size: int | None = None,
    matching_negatives: int | None = None,
) -> dict:
    """Samples per second of full training steps for one preset and ablation."""
    overrides = {} if matching_negatives is None else {"matching_negatives": matching_negatives}
    model_cfg, train_cfg = get_preset(preset, ablation=ablation, **overrides)
    if batch_size is not None:
        train_cfg.batch_size = batch_size
    tokenizer = train_tokenizer(load_recipes(dataset_dir, "train"), vocab_size=model_cfg.vocab_size)
    model_cfg.vocab_size = tokenizer.vocab_size
    torch.manual_seed(0)
    model, prep = create_model(model_cfg)
    dataset = RecipeImageDataset(dataset_dir, "train", tokenizer, TrainTransform(prep))
    items = [dataset[i % len(dataset)] for i in range(train_cfg.batch_size)]
    batch = collate_batch(items)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    timings = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        output = model(
            batch["image"], recipe_batch(batch, torch.device("cpu")), epoch=0, recipe_ids=batch["recipe_index"]
        )
        optimizer.zero_grad(set_to_none=True)
        output["loss"].backward()
        optimizer.step()
        model.update_ema()
        if step >= warmup:
            timings.append(time.perf_counter() - start)
    median = sorted(timings)[len(timings) // 2]
    return {
        "preset": preset,
        "ablation": ablation,
        "matching_negatives": model_cfg.matching_negatives,
        "batch_size": train_cfg.batch_size,
        "image_size": model_cfg.image_size,
        "trainable_params": count_parameters(model),
        "step_s_median": round(median, 3),
        "samples_per_s": round(train_cfg.batch_size / median, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--presets", nargs="+", default=["micro", "tiny"])
    parser.add_argument("--ablations", nargs="+", default=["full"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch-size", type=int, default=None, help="replace the preset's batch size")
    parser.add_argument(
        "--matching-negatives", type=int, nargs="+", default=[None], help="k values to time (default: the preset's)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for preset in args.presets:
        for ablation in args.ablations:
            for negatives in args.matching_negatives:
                record = measure(args.dataset, preset, ablation, args.steps, args.warmup, args.batch_size, negatives)
                record.update(
                    threads=args.threads, machine=platform.processor() or platform.machine(), torch=torch.__version__
                )
                print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
