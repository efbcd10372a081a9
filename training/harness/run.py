"""The run folder: one place that knows its layout.

    RUN/
      config.json        resolved model + training config, data folder, preprocessing
      tokenizer.json     recipe tokenizer trained on the training partition
      metrics.jsonl      one JSON object per logged step and per epoch
      checkpoints/       see training/checkpoint.py (last.json, best.json, step-*/)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from malm_edge.edge.safe_json import JsonFileError, load_json_file
from malm_edge.training.errors import TrainingError

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
RELATIVE_PATHS_KEY = "relative_paths"


class RunError(TrainingError, RuntimeError):
    """A run folder is missing, incomplete or of the wrong kind."""


@dataclass(frozen=True)
class RunPaths:
    """Paths inside a run folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def tokenizer(self) -> Path:
        return self.root / TOKENIZER_FILE

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINT_DIR


def read_run_config(run_dir: Path, *, kind: str | None = None) -> dict[str, Any]:
    """The resolved config of a run, checking that it exists and is of the expected kind."""
    paths = RunPaths(run_dir)
    if not paths.config.exists():
        raise RunError(f"{run_dir}: not a malm-edge run folder ({CONFIG_FILE} is missing)")
    try:
        config = load_json_file(paths.config)
    except JsonFileError as error:  # a run folder may come from another machine: bounded, errors named
        raise RunError(f"{paths.config}: not valid JSON ({str(error).split(': ', 1)[-1]})") from None
    if not isinstance(config, dict):
        raise RunError(f"{paths.config}: not valid JSON (expected an object)")
    if kind is not None and config.get("kind") != kind:
        raise RunError(f"{run_dir}: a {config.get('kind')!r} run, expected a {kind!r} run")
    return _follow_moved_paths(run_dir, config)


def record_linked_paths(run_dir: Path, config: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """Store `keys` (absolute paths in `config`) also relative to the run folder.

    Runs are copied between machines (trained on a GPU box, converted on a laptop); where the
    recorded absolute path is gone, read_run_config falls back to the relative one.
    """
    root = Path(run_dir).resolve()
    config[RELATIVE_PATHS_KEY] = {key: os.path.relpath(Path(config[key]).resolve(), root) for key in keys}
    return config


def _follow_moved_paths(run_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Replace recorded absolute paths that no longer exist by their run-relative twins that do."""
    for key, relative in config.get(RELATIVE_PATHS_KEY, {}).items():
        candidate = Path(run_dir) / relative
        if key in config and not Path(config[key]).exists() and candidate.exists():
            config[key] = str(candidate.resolve())
    return config


def check_new_run_dir(out_dir: Path, kind: str) -> None:
    """Refuse an --out that would overwrite something: a file, another run, or an unrelated folder."""
    paths = RunPaths(out_dir)
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise RunError(f"{out_dir}: exists and is not a folder; choose another --out")
    if paths.checkpoints.exists() and any(paths.checkpoints.iterdir()):
        raise RunError(f"{out_dir} already holds a run; pass --resume to continue it or choose another --out")
    if paths.config.exists():
        if read_run_config(out_dir).get("kind") != kind:
            raise RunError(f"{out_dir}: holds a different kind of run; choose another --out")
    elif any(out_dir.iterdir()):
        raise RunError(f"{out_dir}: exists, is not empty and is not a malm-edge run; choose another --out")


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one JSON line to metrics.jsonl."""
    with RunPaths(run_dir).metrics.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")


def truncate_metrics_after(run_dir: Path, global_step: int) -> None:
    """Drop metrics logged after a checkpoint's step, so a resumed run does not log twice."""
    path = RunPaths(run_dir).metrics
    if not path.exists():
        return
    kept = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and json.loads(line).get("global_step", 0) <= global_step
    ]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
