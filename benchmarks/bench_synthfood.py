"""Benchmark SynthFood generation; prints one JSON line per image size.

Times `generate_synthfood` end to end (recipes, rendering, JPEG encoding, writing files) into a
temporary folder, and, separately, rendering alone (no JPEG, no disk) on the same recipes.

    python benchmarks/bench_synthfood.py [--sizes 64 128 224] [--recipes 300] [--images-per-recipe 3]
        [--workers 1] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from malm_edge.training.data.synthfood.generate import generate_synthfood
from malm_edge.training.data.synthfood.layouts import render_recipe_image
from malm_edge.training.data.synthfood.recipes import sample_families


def render_only(n_recipes: int, images_per_recipe: int, size: int, seed: int) -> tuple[float, float]:
    """Images/s of rendering alone (no JPEG, no disk), one process: by wall clock and by CPU time
    (the second is steadier on a shared machine)."""
    specs = sample_families(n_recipes, seed)
    wall, cpu = time.perf_counter(), time.process_time()
    for spec in specs:
        for render in range(images_per_recipe):
            render_recipe_image(spec, size, seed, render)
    n_images = n_recipes * images_per_recipe
    return n_images / (time.perf_counter() - wall), n_images / (time.process_time() - cpu)


def bench_size(size: int, args: argparse.Namespace) -> dict:
    """One record: end-to-end and render-only throughput at `size` px."""
    wall_rate, cpu_rate = render_only(args.recipes, args.images_per_recipe, size, args.seed)  # also warms caches
    with tempfile.TemporaryDirectory() as tmp:
        stats = generate_synthfood(Path(tmp) / "synth", n_recipes=args.recipes,
                                   images_per_recipe=args.images_per_recipe, image_size=size, seed=args.seed,
                                   workers=args.workers, progress=False)
        jpeg_bytes = sum(f.stat().st_size for f in (Path(tmp) / "synth" / "images").iterdir())
    return {
        "bench": "synthfood", "size": size, "recipes": args.recipes, "images": stats["n_images"],
        "workers": args.workers, "seconds": stats["seconds"], "images_per_second": stats["images_per_second"],
        "images_per_minute": round(60 * stats["images_per_second"]),
        "render_only_images_per_second": round(wall_rate, 1), "render_only_cpu_images_per_second": round(cpu_rate, 1),
        "mean_jpeg_kb": round(jpeg_bytes / stats["n_images"] / 1024, 2),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224])
    parser.add_argument("--recipes", type=int, default=300)
    parser.add_argument("--images-per-recipe", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for size in args.sizes:
        print(json.dumps(bench_size(size, args)), flush=True)


if __name__ == "__main__":
    main()
