"""Load a distilled student run for inference and export."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from malm_edge.training import checkpoint as ckpt
from malm_edge.training.data.transforms import Preprocessing
from malm_edge.training.models.student import StudentConfig, StudentEncoder, create_student
from malm_edge.training.run import read_run_config


@dataclass
class LoadedStudent:
    """A student encoder in eval mode with what export and evaluation need."""

    model: StudentEncoder
    preprocessing: Preprocessing
    config: dict
    teacher_run: Path
    checkpoint: Path


def load_student(run_dir: Path, which: str = "best") -> LoadedStudent:
    """Load a student run's `best` (or `last`) checkpoint in eval mode on the CPU."""
    config = read_run_config(run_dir, kind="student")
    model = create_student(StudentConfig.from_dict(config["student"]))
    folder = ckpt.resolve_checkpoint(run_dir, which)
    ckpt.load_weights_into(model, ckpt.load_model_state(folder), source=folder)
    model.eval()
    return LoadedStudent(
        model, Preprocessing.from_dict(config["preprocessing"]), config, Path(config["teacher_run"]), folder
    )
