"""Step cost of the `lite` teacher once its frozen trunk's grids are cached: forward, backward and
optimizer time of one batch per matching-negatives k (and the L_itc-only baseline), side by side.

    python benchmarks/bench_lite_step.py [--negatives 0 2 4 8] [--batch-size 64] [--steps 3] [--threads 1]

The inputs are random tensors of the training shapes (a (B, C, 7, 7) trunk grid, MiniLM sentence
vectors for 1 title, 20 ingredients and 12 instructions), so no data or trunk is needed; the model,
losses, backward, AdamW step and EMA update are the real ones. Prints one JSON line per row.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from malm_edge.training.data.sentence_embeddings import SENTENCE_DIM
from malm_edge.training.models.malm import create_model
from malm_edge.training.presets import get_preset

COMPONENT_LENGTHS = {"title": 1, "ingredients": 20, "instructions": 12}


def recipe_inputs(batch_size: int) -> dict[str, torch.Tensor]:
    """Random sentence vectors with every sentence valid: (B, N, SENTENCE_DIM) per component."""
    inputs = {}
    for component, length in COMPONENT_LENGTHS.items():
        inputs[component] = torch.randn(batch_size, length, SENTENCE_DIM)
        inputs[f"{component}_mask"] = torch.ones(batch_size, length, dtype=torch.bool)
    return inputs


def measure(negatives: int, ablation: str, batch_size: int, steps: int) -> dict[str, float]:
    """Mean seconds of forward, backward and optimizer+EMA over `steps` steps after one warm-up."""
    model, _ = create_model(get_preset("lite", matching_negatives=negatives, ablation=ablation)[0])
    model.train()
    for parameter in model.image_tower_parameters():
        parameter.requires_grad_(False)  # the frozen phase, as in training
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    grid = torch.randn(batch_size, model.trunk.channels, 7, 7)  # (B, C, g, g)
    pixels, recipes, recipe_ids = torch.zeros(batch_size, 3, 224, 224), recipe_inputs(batch_size), torch.arange(batch_size)
    totals = {"forward_s": 0.0, "backward_s": 0.0, "optimizer_s": 0.0}
    for step in range(steps + 1):
        start = time.perf_counter()
        loss = model(pixels, recipes, epoch=0, recipe_ids=recipe_ids, trunk_features=grid)["loss"]
        forward_done = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        backward_done = time.perf_counter()
        optimizer.step()
        model.update_ema()
        if step:  # the first step is the warm-up
            totals["forward_s"] += forward_done - start
            totals["backward_s"] += backward_done - forward_done
            totals["optimizer_s"] += time.perf_counter() - backward_done
    return {name: round(value / steps, 3) for name, value in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--negatives", type=int, nargs="+", default=[0, 2, 4, 8])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = [("baseline", 0)] + [("full", k) for k in args.negatives]
    for ablation, negatives in rows:
        timing = measure(negatives, ablation, args.batch_size, args.steps)
        step_s = sum(timing.values())
        print(json.dumps({"ablation": ablation, "matching_negatives": negatives, **timing, "step_s": round(step_s, 3)}))


if __name__ == "__main__":
    main()
