"""The run's training curves: `RUN/curves.png`, rewritten at the end of every epoch.

Three panels from metrics.jsonl: the logged loss terms per step, and val image->recipe R@1 and
medR per epoch (1-based, as the progress lines count them). Drawn with pillow (training/plots.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from malm_edge.training.harness.run import RunPaths
from malm_edge.training.plots import Panel, Series, save_figure

CURVES_PNG = "curves.png"
log = logging.getLogger(__name__)


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(step records, epoch records) of a run's metrics.jsonl (unreadable lines skipped)."""
    steps, epochs = [], []
    path = RunPaths(run_dir).metrics
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        (epochs if record.get("type") == "epoch" else steps).append(record)
    return steps, epochs


def curve_panels(steps: list[dict], epochs: list[dict]) -> list[Panel]:
    """Loss terms per step; val R@1 and medR per epoch."""
    names = sorted({k for record in steps for k in record if k.startswith("loss")}, key=lambda k: (k != "loss", k))
    losses = [
        Series(name if name == "loss" else name.removeprefix("loss_"),
               [r["global_step"] for r in steps if name in r], [r[name] for r in steps if name in r])
        for name in names
    ]
    numbers = [r["epoch"] + 1 for r in epochs]
    i2r = [r["val"]["image_to_recipe"] for r in epochs]
    bag = epochs[-1]["val"].get("bag_size") if epochs else None
    note = f"val: one bag of {bag} pairs" if bag else ""
    chance_r1 = [(1 / bag, "chance")] if bag else []
    chance_medr = [((bag + 1) / 2, "chance")] if bag else []
    return [
        Panel("training losses", series=losses, x_label="step"),
        Panel("val image->recipe R@1 (higher is better)", series=[Series("R@1", numbers, [m["r1"] for m in i2r], True)],
              x_label="epoch", note=note, hlines=chance_r1),
        Panel("val image->recipe medR (lower is better)",
              series=[Series("medR", numbers, [m["medr"] for m in i2r], True)], x_label="epoch", note=note,
              hlines=chance_medr),
    ]


def write_curves(run_dir: Path) -> Path | None:
    """Draw RUN/curves.png; a failure is logged, never fatal to training."""
    try:
        steps, epochs = read_metrics(run_dir)
        return save_figure(curve_panels(steps, epochs), Path(run_dir) / CURVES_PNG,
                           title=f"{Path(run_dir).name}: training curves", columns=3)
    except Exception as error:  # noqa: BLE001 - a plot must never stop a training run
        log.warning("%s: could not draw %s (%s)", run_dir, CURVES_PNG, error)
        return None
