"""`malm-edge distill`: distil the teacher's image tower into a compact student."""

from __future__ import annotations

import json
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from malm_edge.cli._errors import run_or_exit
from malm_edge.cli.train import preset_default


def _default(field: str) -> str:
    schedule = "the schedule's (--preset, else the teacher's)"
    return preset_default(field, "distill").replace("the preset's", schedule)


class Arch(str, Enum):
    """Student presets: the keys of training/presets.py STUDENT_PRESETS (a test keeps them equal)."""

    mnv3_s = "mnv3_s"
    mnv3_l = "mnv3_l"
    mobileone_s0 = "mobileone_s0"
    mobileone_s1 = "mobileone_s1"
    lite0 = "lite0"
    mnv3_micro = "mnv3_micro"
    mobileone_micro = "mobileone_micro"


class Schedule(str, Enum):
    """Distillation schedules: one per teacher preset (training/presets.py TEACHER_PRESETS)."""

    micro = "micro"
    tiny = "tiny"
    small = "small"
    lite = "lite"
    base = "base"


def distill(
    teacher: Annotated[
        Optional[Path], typer.Option(help="Teacher run folder (from `malm-edge train`).", exists=True, file_okay=False)
    ] = None,
    data: Annotated[
        Optional[Path],
        typer.Option(help="Canonical dataset folder (default: the teacher's).", exists=True, file_okay=False),
    ] = None,
    arch: Annotated[
        Arch, typer.Option(help="Student architecture preset (lite0: EfficientNet-Lite0 from ImageNet).")
    ] = Arch.lite0,
    preset: Annotated[
        Optional[Schedule],
        typer.Option(help="Schedule preset (epochs, batch, lr). Default: the teacher's preset, else tiny."),
    ] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder. Default: runs/student-<arch>-<time>.")] = None,
    resume: Annotated[
        Optional[Path],
        typer.Option(help="Continue this student run from its last checkpoint.", exists=True, file_okay=False),
    ] = None,
    losses: Annotated[
        str, typer.Option(help="Comma-separated loss terms: feature, kl, triplet ('triplet' alone = RecipeSnap-style).")
    ] = "feature,kl,triplet",
    epochs: Annotated[
        Optional[int], typer.Option(min=1, help=f"Passes over the training photos. {_default('epochs')}")
    ] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=2, help=f"Photos per step. {_default('batch_size')}")] = None,
    lr: Annotated[Optional[float], typer.Option(min=0.0, help=f"Learning rate. {_default('lr')}")] = None,
    augmentations: Annotated[
        Optional[int],
        typer.Option(min=0, help=f"Cached teacher augmentations per image (0: no cache). {_default('augmentations')}"),
    ] = None,
    workers: Annotated[
        Optional[int], typer.Option(min=0, help=f"DataLoader worker processes. {_default('num_workers')}")
    ] = None,
    seed: Annotated[
        Optional[int], typer.Option(help=f"Seed of the initial weights and sample order. {_default('seed')}")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Train a phone-sized image encoder that lands in the teacher's recipe embedding space.

    The teacher stays frozen (eval mode, outside DDP); its recipe embeddings are computed once.
    """
    from malm_edge.cli.train import print_summary, reject_with_resume

    def job() -> dict:
        from malm_edge.training.harness.run import read_run_config
        from malm_edge.training.harness.student import distill_student
        from malm_edge.training.presets import get_distill_preset
        from malm_edge.training.schedule import DISTILL_LOSSES

        overrides = {
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "augmentations": augmentations,
            "num_workers": workers,
            "seed": seed,
        }
        if resume is not None:
            reject_with_resume(
                {
                    "--teacher": teacher,
                    "--data": data,
                    "--out": out,
                    "--epochs": epochs,
                    "--batch-size": batch_size,
                    "--lr": lr,
                    "--augmentations": augmentations,
                    "--workers": workers,
                    "--seed": seed,
                }
            )
            return distill_student(resume, resume=True, progress=not as_json)
        if teacher is None:
            raise typer.BadParameter("--teacher is required for a new run", param_hint="--teacher")
        terms = tuple(name.strip() for name in losses.split(",") if name.strip())
        unknown = set(terms) - set(DISTILL_LOSSES)
        if unknown or not terms:
            raise typer.BadParameter(
                f"unknown loss term(s) {sorted(unknown)}; use {', '.join(DISTILL_LOSSES)}", param_hint="--losses"
            )
        given = {name: value for name, value in overrides.items() if value is not None}
        schedule = preset.value if preset is not None else read_run_config(teacher, kind="teacher").get("preset")
        cfg = get_distill_preset(schedule or "tiny", losses=terms, **given)
        run_dir = out or Path("runs") / f"student-{arch.value}-{datetime.now():%Y%m%d-%H%M%S}"
        return distill_student(
            run_dir, teacher_run=teacher, data_dir=data, arch=arch.value, distill_cfg=cfg, progress=not as_json
        )

    summary = run_or_exit(job)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        print_summary(summary)
