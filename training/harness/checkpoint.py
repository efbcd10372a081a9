"""Checkpoints written atomically and loaded without unpickling.

A checkpoint is a folder `checkpoints/step-NNNNNNNN/` holding `model.safetensors` (weights),
`train_state.pt` (optimizer state and counters, tensors and plain Python only, read back with
`torch.load(weights_only=True)`) and `meta.json`. It is written under a temporary name and renamed
into place, then the pointer files `last.json` / `best.json` are replaced with `os.replace`. "Latest"
is therefore never overwritten in place: a kill at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from malm_edge.edge.write_errors import guard_writes
from malm_edge.training.errors import TrainingError
from malm_edge.training.models.weights import strip_prefixes

MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"
META_FILE = "meta.json"


class CheckpointError(TrainingError, RuntimeError):
    """A checkpoint is missing, incomplete or does not fit the model."""


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to a temporary file beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
    os.replace(tmp, path)


def save_checkpoint(
    checkpoint_root: Path,
    model_state: dict[str, torch.Tensor],
    train_state: dict[str, Any],
    meta: dict[str, Any],
    *,
    tag: str,
    is_best: bool = False,
) -> Path:
    """Write a checkpoint folder atomically and point `last` (and optionally `best`) at it.

    Args:
        checkpoint_root: The run's `checkpoints/` folder.
        model_state: Model weights (prefixes stripped, tensors made contiguous).
        train_state: Optimizer state and counters (tensors and plain Python only).
        meta: JSON-safe description (epoch, step, metrics).
        tag: Folder name, e.g. `step-00000120`.
        is_best: Also point `best.json` at this checkpoint.
    """
    previous = read_pointer(checkpoint_root, "last") if (checkpoint_root / "last.json").exists() else None
    intact = f"the last good checkpoint ({previous}) is intact" if previous else "no checkpoint was written"
    with guard_writes(checkpoint_root / tag, CheckpointError, intact=intact):
        return _save_checkpoint(checkpoint_root, model_state, train_state, meta, tag=tag, is_best=is_best)


def _save_checkpoint(checkpoint_root: Path, model_state: dict[str, torch.Tensor], train_state: dict[str, Any],
                     meta: dict[str, Any], *, tag: str, is_best: bool) -> Path:
    checkpoint_root.mkdir(parents=True, exist_ok=True)
    final_dir = checkpoint_root / tag
    tmp_dir = Path(tempfile.mkdtemp(dir=checkpoint_root, prefix=f".{tag}."))
    try:
        tensors = {k: v.detach().cpu().contiguous() for k, v in strip_prefixes(model_state).items()}
        save_file(tensors, str(tmp_dir / MODEL_FILE))
        torch.save(train_state, tmp_dir / STATE_FILE)
        (tmp_dir / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        if final_dir.exists():
            shutil.rmtree(final_dir)
        os.replace(tmp_dir, final_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    write_json_atomic(checkpoint_root / "last.json", {"dir": tag, **meta})
    if is_best:
        write_json_atomic(checkpoint_root / "best.json", {"dir": tag, **meta})
    _remove_unreferenced(checkpoint_root)
    return final_dir


def _remove_unreferenced(checkpoint_root: Path) -> None:
    """Delete checkpoint folders that neither `last` nor `best` points to."""
    keep = {read_pointer(checkpoint_root, name) for name in ("last", "best")}
    for child in checkpoint_root.iterdir():
        if child.is_dir() and not child.name.startswith(".") and child.name not in keep:
            shutil.rmtree(child, ignore_errors=True)


def read_pointer(checkpoint_root: Path, which: str) -> str | None:
    """The folder name `last.json` / `best.json` points to, or None."""
    pointer = checkpoint_root / f"{which}.json"
    if not pointer.exists():
        return None
    return json.loads(pointer.read_text())["dir"]


def resolve_checkpoint(run_dir: Path, which: str = "best") -> Path:
    """The checkpoint folder of a run (`best` or `last`), with a clear error when absent."""
    checkpoint_root = run_dir / "checkpoints"
    tag = read_pointer(checkpoint_root, which)
    if tag is None and which == "best":
        tag = read_pointer(checkpoint_root, "last")
    if tag is None:
        raise CheckpointError(f"{run_dir}: no checkpoint found (expected {checkpoint_root}/{which}.json)")
    folder = checkpoint_root / tag
    for name in (MODEL_FILE, STATE_FILE, META_FILE):
        if not (folder / name).exists():
            raise CheckpointError(f"{folder / name}: missing; the checkpoint is incomplete")
    return folder


def load_model_state(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    """Model weights of a checkpoint folder (safetensors, prefixes stripped)."""
    return strip_prefixes(load_file(str(checkpoint_dir / MODEL_FILE)))


def load_train_state(checkpoint_dir: Path) -> dict[str, Any]:
    """Optimizer state and counters, read with `weights_only=True` (no arbitrary unpickling)."""
    return torch.load(checkpoint_dir / STATE_FILE, map_location="cpu", weights_only=True)


def load_meta(checkpoint_dir: Path) -> dict[str, Any]:
    """The checkpoint's JSON description."""
    return json.loads((checkpoint_dir / META_FILE).read_text())


def load_weights_into(model: torch.nn.Module, state: dict[str, torch.Tensor], *, source: Path) -> None:
    """Load weights strictly, naming every missing, unexpected or mis-shaped key."""
    own = model.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if mismatched or missing or unexpected:
        lines = [f"{source}: weights do not fit the model"]
        lines += [f"  shape mismatch {m}" for m in mismatched]
        lines += [f"  missing {k}" for k in missing[:20]]
        lines += [f"  unexpected {k}" for k in unexpected[:20]]
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state)
