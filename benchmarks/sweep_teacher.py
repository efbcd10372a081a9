"""Train one MALM teacher with any config field overridden, then score it on val, test and train.

For small studies of the teacher's settings (the `micro` rows of BENCHMARKS.md): every MalmConfig
and TrainConfig field can be set, not only those `malm-edge train` exposes. Prints one JSON line:
the overrides, wall time of the training, and image->recipe R@1 / R@10 / medR of the last
checkpoint on each split (one bag of `--bag-size` recipes; the train split averages its disjoint
bags, to show how well the model fits what it saw).

    python benchmarks/sweep_teacher.py DATASET_DIR --out RUN [--preset micro] [--bag-size 30]
        [--set epochs=5 mask_ratio=0.5 ablation=baseline ...]

Values are parsed as JSON when they can be (5, 0.5, false) and kept as strings otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from malm_edge.training.harness.teacher import evaluate_teacher, train_teacher
from malm_edge.training.models.config import MalmConfig
from malm_edge.training.presets import get_preset
from malm_edge.training.schedule import TrainConfig


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """["epochs=5", "ablation=baseline"] -> {"epochs": 5, "ablation": "baseline"}."""
    overrides = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects name=value, got {pair!r}")
        try:
            overrides[name] = json.loads(text)
        except json.JSONDecodeError:
            overrides[name] = text
    return overrides


def split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Route each override to MalmConfig or TrainConfig by field name."""
    model_fields = {f.name for f in dataclasses.fields(MalmConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(overrides) - model_fields - train_fields
    if unknown:
        raise SystemExit(f"unknown config fields: {sorted(unknown)}")
    return (
        {k: v for k, v in overrides.items() if k in model_fields},
        {k: v for k, v in overrides.items() if k in train_fields},
    )


def sweep_point(dataset_dir: Path, out: Path, preset: str, overrides: dict[str, Any], bag_size: int) -> dict:
    """Train a fresh run in `out` and return its wall time and per-split image->recipe metrics."""
    model_overrides, train_overrides = split_overrides(overrides)
    model_cfg, train_cfg = get_preset(preset, **model_overrides)
    train_cfg = dataclasses.replace(train_cfg, **train_overrides)
    start = time.perf_counter()
    train_teacher(out, data_dir=dataset_dir, model_cfg=model_cfg, train_cfg=train_cfg, progress=False)
    result: dict[str, Any] = {"preset": preset, "set": overrides, "train_wall_s": round(time.perf_counter() - start, 1)}
    for split in ("val", "test", "train"):
        metrics = evaluate_teacher(out, dataset_dir, split=split, bag_size=bag_size, which="last")["metrics"]
        result[split] = {k: round(v, 3) for k, v in metrics["image_to_recipe"].items()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="New run folder.")
    parser.add_argument("--preset", default="micro")
    parser.add_argument("--bag-size", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="Config overrides.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps(sweep_point(args.dataset, args.out, args.preset, parse_overrides(args.set), args.bag_size)))


if __name__ == "__main__":
    main()
