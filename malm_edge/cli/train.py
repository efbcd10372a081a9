"""`malm-edge train`: train the MALM teacher."""

from __future__ import annotations

import json
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from malm_edge.cli._errors import run_or_exit
from malm_edge.training.presets import TEACHER_PRESETS


class Preset(str, Enum):
    """Teacher presets: the keys of training/presets.py TEACHER_PRESETS (a test keeps them equal)."""

    micro = "micro"
    tiny = "tiny"
    small = "small"
    lite = "lite"
    base = "base"


def preset_default(field: str, schedule: str = "train") -> str:
    """`(default: the preset's: micro 30, tiny 20, ...)` for an option's help, read from the preset table.

    `schedule` is the TeacherPreset attribute that holds the field: "train", "distill" or "model".
    """
    values = {name: getattr(getattr(preset, schedule), field) for name, preset in TEACHER_PRESETS.items()}
    if len(set(values.values())) == 1:
        return f"(default: {next(iter(values.values()))})"
    return "(default: the preset's: " + ", ".join(f"{name} {value}" for name, value in values.items()) + ")"


class Ablation(str, Enum):
    baseline = "baseline"
    lc = "lc"
    lc_gc = "lc_gc"
    full = "full"


class PredictorInput(str, Enum):
    """What the masked-feature predictor T reads (MalmConfig.predictor_input)."""

    matched = "matched"
    image_tokens = "image_tokens"


class EpochUnit(str, Enum):
    """What one epoch passes over (TrainConfig.epoch_unit)."""

    recipe = "recipe"
    pair = "pair"


def train(
    data: Annotated[
        Optional[Path],
        typer.Option(
            help="Canonical dataset folder. Default: SynthFood, generated into the cache on first use.",
            exists=True,
            file_okay=False,
        ),
    ] = None,
    preset: Annotated[Preset, typer.Option(help="Model and schedule preset.")] = Preset.tiny,
    out: Annotated[Optional[Path], typer.Option(help="Run folder. Default: runs/malm-<preset>-<time>.")] = None,
    resume: Annotated[
        Optional[Path],
        typer.Option(help="Continue this run folder from its last checkpoint.", exists=True, file_okay=False),
    ] = None,
    ablation: Annotated[
        Optional[Ablation], typer.Option(help="Paper Table 2 row: baseline, lc, lc_gc or full.")
    ] = None,
    mask_ratio: Annotated[Optional[float], typer.Option(min=0.0, max=0.95, help="Fraction of patches masked.")] = None,
    lambda_itm: Annotated[Optional[float], typer.Option(min=0.0, help="Weight of L_GC + L_LC (paper: 1).")] = None,
    lambda_dist: Annotated[
        Optional[float], typer.Option(min=0.0, help="Weight of the masked distillation loss (paper: 1).")
    ] = None,
    matching_negatives: Annotated[
        Optional[int],
        typer.Option(
            min=0,
            help="L_GC/L_LC negatives: k decodes each image with its k hardest recipes and vice versa "
            "(presets: 8); 0 (ablation) contrasts the true pairs' own features.",
        ),
    ] = None,
    itc_on_masked: Annotated[
        Optional[bool],
        typer.Option(
            "--itc-on-masked/--itc-on-full",
            help="L_itc on the masked student pass (ablation) or on an unmasked one (default).",
        ),
    ] = None,
    ema_inference: Annotated[
        Optional[bool],
        typer.Option(
            "--ema-inference/--student-inference",
            help="Embed photos for retrieval (validation, eval, distillation) with the EMA teacher's image "
            "encoder, a running average of the student's weights, or with the student's.",
        ),
    ] = None,
    match_positions: Annotated[
        Optional[bool],
        typer.Option(help="Add the (projected) positional embedding to the patch tokens before ψ (default on)."),
    ] = None,
    sentence_drop: Annotated[
        Optional[float],
        typer.Option(
            min=0.0, max=0.95,
            help="Training only: leave out each ingredient line and step with this probability (recipe-side "
            f"augmentation). {preset_default('sentence_drop', 'model')}",
        ),
    ] = None,
    trunk_tuned_blocks: Annotated[
        Optional[int],
        typer.Option(
            min=0,
            help="`lite`: train the pretrained trunk's last N blocks from the first epoch at --image-lr (the blocks "
            "before them stay frozen and cached). (default: 0)",
        ),
    ] = None,
    predictor_input: Annotated[
        Optional[PredictorInput], typer.Option(help="What T reads: ψ's matched tokens or the projected I_f.")
    ] = None,
    epoch_unit: Annotated[
        Optional[EpochUnit], typer.Option(help="An epoch is one image of every recipe (default) or every pair.")
    ] = None,
    grad_clip: Annotated[Optional[float], typer.Option(min=0.0, help="Gradient-norm clip (0: off; TFood: 8).")] = None,
    epochs: Annotated[
        Optional[int], typer.Option(min=1, help=f"Epochs (see --epoch-unit). {preset_default('epochs')}")
    ] = None,
    batch_size: Annotated[
        Optional[int], typer.Option(min=2, help=f"Image-recipe pairs per step. {preset_default('batch_size')}")
    ] = None,
    lr: Annotated[
        Optional[float], typer.Option(min=0.0, help="Learning rate of everything but the image tower.")
    ] = None,
    image_lr: Annotated[Optional[float], typer.Option(min=0.0, help="Learning rate of the image tower.")] = None,
    weight_decay: Annotated[
        Optional[float], typer.Option(min=0.0, help=f"AdamW weight decay. {preset_default('weight_decay')}")
    ] = None,
    augmentations: Annotated[
        Optional[int],
        typer.Option(
            min=0,
            help="Fixed augmentations per photo, cycled by epoch (0: a fresh one every epoch); with a frozen trunk "
            f"each one is computed once and cached. {preset_default('augmentations')}",
        ),
    ] = None,
    full_text_repeats: Annotated[
        Optional[int],
        typer.Option(
            min=1,
            help="Times per epoch each recipe with ingredients and instructions is seen (for data whose photos "
            f"mostly have only a title). {preset_default('full_text_repeats')}",
        ),
    ] = None,
    workers: Annotated[
        Optional[int], typer.Option(min=0, help=f"DataLoader worker processes. {preset_default('num_workers')}")
    ] = None,
    seed: Annotated[
        Optional[int],
        typer.Option(help=f"Seed of the initial weights, sample order and masks. {preset_default('seed')}"),
    ] = None,
    save_every: Annotated[
        Optional[int], typer.Option(min=0, help="Also checkpoint every N steps within an epoch (0: epoch ends only).")
    ] = None,
    clip_weights: Annotated[
        Optional[Path],
        typer.Option(
            help="Local CLIP ViT state dict (.pt/.bin/.safetensors) to start the image tower from.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Train the MALM teacher (image + recipe towers) and report validation retrieval metrics.

    With no arguments: the `tiny` preset on SynthFood, about 13 minutes on 2 CPU cores. Launch with
    `torchrun --nproc-per-node N -m malm_edge train ...` for several GPUs or processes.
    """

    def job() -> dict:
        from malm_edge.training.configs import with_overrides
        from malm_edge.training.harness.teacher import train_teacher
        from malm_edge.training.presets import default_synthfood_for, get_preset

        overrides = {
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "image_lr": image_lr,
            "weight_decay": weight_decay,
            "augmentations": augmentations,
            "full_text_repeats": full_text_repeats,
            "num_workers": workers,
            "seed": seed,
            "save_every_steps": save_every,
            "epoch_unit": epoch_unit.value if epoch_unit is not None else None,
            "grad_clip": grad_clip,
        }
        if resume is not None:
            reject_with_resume(
                {
                    "--data": data,
                    "--out": out,
                    "--ablation": ablation,
                    "--mask-ratio": mask_ratio,
                    "--clip-weights": clip_weights,
                    "--matching-negatives": matching_negatives,
                    "--lambda-itm": lambda_itm,
                    "--lambda-dist": lambda_dist,
                    "--epochs": epochs,
                    "--batch-size": batch_size,
                    "--lr": lr,
                    "--image-lr": image_lr,
                    "--weight-decay": weight_decay,
                    "--augmentations": augmentations,
                    "--full-text-repeats": full_text_repeats,
                    "--workers": workers,
                    "--seed": seed,
                    "--save-every": save_every,
                    "--itc-on-masked/--itc-on-full": itc_on_masked,
                    "--ema-inference/--student-inference": ema_inference,
                    "--match-positions": match_positions,
                    "--predictor-input": predictor_input,
                    "--trunk-tuned-blocks": trunk_tuned_blocks,
                    "--sentence-drop": sentence_drop,
                    "--epoch-unit": epoch_unit,
                    "--grad-clip": grad_clip,
                }
            )
            return train_teacher(resume, resume=True, progress=not as_json)
        model_overrides = {
            "ablation": ablation.value if ablation is not None else None,
            "mask_ratio": mask_ratio,
            "lambda_itm": lambda_itm,
            "lambda_dist": lambda_dist,
            "matching_negatives": matching_negatives,
            "itc_on_masked": itc_on_masked,
            "ema_inference": ema_inference,
            "match_positions": match_positions,
            "predictor_input": predictor_input.value if predictor_input is not None else None,
            "trunk_tuned_blocks": trunk_tuned_blocks,
            "sentence_drop": sentence_drop,
            "clip_weights": str(clip_weights) if clip_weights is not None else None,
        }
        model_cfg, train_cfg = get_preset(preset.value, **{k: v for k, v in model_overrides.items() if v is not None})
        train_cfg = with_overrides(train_cfg, **{k: v for k, v in overrides.items() if v is not None})
        data_dir = data if data is not None else default_synthfood_for(preset.value)
        run_dir = out or Path("runs") / f"malm-{preset.value}-{datetime.now():%Y%m%d-%H%M%S}"
        return train_teacher(
            run_dir,
            data_dir=data_dir,
            model_cfg=model_cfg,
            train_cfg=train_cfg,
            progress=not as_json,
            preset=preset.value,
        )

    summary = run_or_exit(job)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    print_summary(summary)


def reject_with_resume(options: dict[str, object]) -> None:
    """A resumed run keeps its saved config: refuse options that would be silently ignored."""
    given = sorted(name for name, value in options.items() if value is not None)
    if given:
        raise typer.BadParameter(f"a resumed run uses its saved config; drop {', '.join(given)}", param_hint="--resume")


def print_summary(summary: dict) -> None:
    """Print where the run is and its last validation metrics."""
    typer.echo(f"run: {summary['run']}")
    last = summary.get("last_val")
    if last:
        i2r = last["image_to_recipe"]
        typer.echo(
            f"val image->recipe (bag {last['bag_size']}): R@1 {i2r['r1']:.3f}  R@5 {i2r['r5']:.3f}  "
            f"R@10 {i2r['r10']:.3f}  medR {i2r['medr']:.1f}"
        )
    if summary.get("stopped_early"):
        typer.echo("stopped early; continue with --resume")
