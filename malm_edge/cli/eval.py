"""`malm-edge eval`: retrieval metrics of a trained run on a split."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from malm_edge.cli._errors import run_or_exit


class Split(str, Enum):
    val = "val"
    test = "test"
    train = "train"


class Which(str, Enum):
    best = "best"
    last = "last"


class Protocol(str, Enum):
    tfood = "tfood"
    ht = "ht"


def evaluate(
    run: Annotated[Path, typer.Argument(help="A teacher or student run folder.", exists=True, file_okay=False)],
    data: Annotated[
        Optional[Path],
        typer.Option(help="Canonical dataset folder (default: the run's own).", exists=True, file_okay=False),
    ] = None,
    split: Annotated[Split, typer.Option(help="Partition to evaluate.")] = Split.val,
    protocol: Annotated[Protocol, typer.Option(help="tfood (MALM's) or ht (H-T's) bag sampling.")] = Protocol.tfood,
    bag_size: Annotated[int, typer.Option(min=2, help="Recipes per bag (1000 or 10000 in the papers).")] = 1000,
    checkpoint: Annotated[Which, typer.Option(help="Which checkpoint of the run.")] = Which.best,
    as_json: Annotated[bool, typer.Option("--json", help="Print {run, split, metrics} as JSON.")] = False,
) -> None:
    """Image-to-recipe and recipe-to-image R@1/5/10 and medR, averaged over bags.

    For a student run, the student's images and the teacher's images both rank the teacher's recipe
    embeddings on the same bags, and retention = student R@1 / teacher R@1 (image to recipe).
    """
    from malm_edge.training.harness.run import read_run_config
    from malm_edge.training.harness.student import evaluate_student
    from malm_edge.training.harness.teacher import evaluate_teacher

    def job() -> dict:
        kind = read_run_config(run).get("kind")
        evaluate_run = evaluate_student if kind == "student" else evaluate_teacher
        return evaluate_run(
            run, data, split=split.value, protocol=protocol.value, bag_size=bag_size, which=checkpoint.value
        )

    result = run_or_exit(job)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    if "metrics" in result:
        _print_metrics(f"{run} on {split.value}", result["metrics"], protocol.value)
        return
    for name in ("teacher", "student"):
        _print_metrics(f"{name} on {split.value}", result[name], protocol.value)
    retention = result["retention"]
    shown = "undefined (teacher R@1 is 0)" if retention is None else f"{retention:.3f}"
    typer.echo(f"retention (student R@1 / teacher R@1, image to recipe): {shown}")


def _print_metrics(title: str, metrics: dict, protocol: str) -> None:
    typer.echo(f"{title} ({protocol}, {metrics['n_bags']} bag(s) of {metrics['bag_size']})")
    for direction in ("image_to_recipe", "recipe_to_image"):
        m = metrics[direction]
        typer.echo(f"  {direction:16s} R@1 {m['r1']:.3f}  R@5 {m['r5']:.3f}  R@10 {m['r10']:.3f}  medR {m['medr']:.1f}")
