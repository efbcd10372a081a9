"""`malm-edge data`: create, import and check datasets in the canonical format.

Only typer and the standard library are imported here; the dataset code loads inside each command.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from malm_edge.cli._errors import run_or_exit

# Options every importer shares.
SkipBad = Annotated[bool, typer.Option("--skip-bad", help="Skip malformed records (counted) and write the good ones.")]
MaxBad = Annotated[
    float, typer.Option(min=0.0, max=1.0, help="With --skip-bad: fail if more than this share is malformed.")
]

app = typer.Typer(help="Create, import and check datasets in the canonical format.", no_args_is_help=True)
import_app = typer.Typer(help="Import an existing dataset (read in place) into the canonical format.",
                         no_args_is_help=True)
app.add_typer(import_app, name="import")


class ImageCheckChoice(str, Enum):
    none = "none"
    exists = "exists"
    verify = "verify"
    decode = "decode"


def _echo_problems(problems: list[str], total: int) -> None:
    if not problems:
        return
    typer.echo(f"problems (first {len(problems)} of {total}):" if total > len(problems) else "problems:")
    for problem in problems:
        typer.echo(f"  {problem}")


@app.command()
def check(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder holding recipes.jsonl.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    no_images: Annotated[
        bool, typer.Option("--no-images", hidden=True, help="Same as --images none (kept for old scripts).")
    ] = False,
    images: Annotated[
        ImageCheckChoice, typer.Option(help="Image check: none, exists, verify (header only) or decode (to the end).")
    ] = ImageCheckChoice.decode,
    images_root: Annotated[
        Optional[Path], typer.Option(help="Folder relative image paths are relative to (default: dataset.json's).")
    ] = None,
    max_problems: Annotated[int, typer.Option(min=0, help="Problems to list.")] = 20,
) -> None:
    """Validate every line and image; print counts and the first problems (exit 1 if any)."""
    from malm_edge.training.data.canonical import check_dataset

    mode = ImageCheckChoice.none if no_images else images
    report = run_or_exit(
        lambda: check_dataset(dataset, mode.value, max_problems, images_root, progress=not as_json)
    )
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        parts = ", ".join(f"{name} {count}" for name, count in report.partitions.items())
        typer.echo(f"{dataset}: {report.n_recipes} recipes ({parts}), {report.n_text_only} text-only")
        typer.echo(
            f"images: {report.n_images} referenced, {report.n_missing_images} missing, "
            f"{report.n_unreadable_images} unreadable (check: {report.image_check})"
        )
        if report.image_check != "decode":
            typer.echo(f"note: images were not decoded (check: {report.image_check}); truncated files show "
                       "only with --images decode")
        typer.echo(f"bad lines: {report.n_bad_lines}")
        _echo_problems([f"{f}:{n}: {m}" for f, n, m in report.problems], report.n_problems)
        typer.echo("ok" if report.ok else f"{report.n_problems} problem(s)")
    if not report.ok:
        raise typer.Exit(1)


@app.command("dev-split")
def dev_split(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder to carve the dev split from (read, not changed).")],
    out: Annotated[Path, typer.Option(help="New dataset folder: train minus the dev recipes, val = the dev recipes.")],
    size: Annotated[
        int, typer.Option(min=1, help="Dev recipes, drawn from train (with photos; full text when val has it).")
    ] = 300,
    seed: Annotated[int, typer.Option(help="Seed of the draw.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing dataset at --out.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the new dataset.json as JSON.")] = False,
) -> None:
    """Carve a dev split out of train for choosing hyper-parameters; val and test are left out.

    Train on OUT and compare settings by its val (the dev recipes); then train the chosen setting
    on DATASET and report DATASET's val.
    """
    from malm_edge.training.data.dev_split import carve_dev_split

    meta = run_or_exit(lambda: carve_dev_split(dataset, out, size, seed, overwrite))
    if as_json:
        typer.echo(json.dumps(meta, indent=2))
    else:
        parts = meta["partitions"]
        typer.echo(f"{out}: train {parts['train']}, dev (as val) {parts['val']}; "
                   f"left out of it: val {meta['dropped']['val']}, test {meta['dropped']['test']}")


@import_app.command("recipe1m")
def import_recipe1m(
    root: Annotated[Path, typer.Argument(help="Recipe1M folder: layer1.json, layer2.json, images.")],
    out: Annotated[Path, typer.Option(help="Dataset folder to write (recipes.jsonl, dataset.json).")],
    max_images: Annotated[int, typer.Option(min=0, help="Photos kept per recipe (H-T: 5).")] = 5,
    ht_filters: Annotated[
        bool,
        typer.Option("--ht-filters", help="H-T's filters: drop recipes without photo or ingredients, or 20+ steps."),
    ] = False,
    require_images: Annotated[bool, typer.Option("--require-images", help="Drop recipes without a photo.")] = False,
    max_steps: Annotated[
        Optional[int], typer.Option(min=1, help="Drop recipes with this many steps or more.")
    ] = None,
    det_ingrs: Annotated[
        bool, typer.Option("--det-ingrs", help="Use det_ingrs.json's valid ingredient names for the ingredients.")
    ] = False,
    no_image_check: Annotated[
        bool, typer.Option("--no-image-check", help="List every layer2 photo without checking its file exists.")
    ] = False,
    skip_bad: SkipBad = False,
    max_bad: MaxBad = 0.05,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing dataset at --out.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Import Recipe1M in place: recipes.jsonl points at the original photos."""
    from malm_edge.training.data.recipe1m import Recipe1MOptions
    from malm_edge.training.data.recipe1m import import_recipe1m as run_import

    options = Recipe1MOptions.ht() if ht_filters else Recipe1MOptions()
    options.max_images = max_images
    options.require_images = options.require_images or require_images
    options.max_steps = max_steps if max_steps is not None else options.max_steps
    options.use_det_ingrs = det_ingrs
    options.check_image_files = not no_image_check
    options.skip_bad, options.max_bad_fraction = skip_bad, max_bad
    summary = run_or_exit(lambda: run_import(root, out, options, overwrite=overwrite, progress=not as_json))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    _echo_summary(out, summary["n_recipes"], summary["partitions"], summary["n_images"])
    typer.echo(f"text-only recipes: {summary['n_text_only']}")
    for name, count in summary["counts"].items():
        typer.echo(f"  {name}: {count}")
    _echo_problems(summary["problems"], summary["counts"].get("skipped_bad_record", 0))
    typer.echo(f"note: photos were only checked to exist; decode them all before a long run with "
               f"`malm-edge data check {out}`")


@import_app.command("epicurious")
def import_epicurious(
    src: Annotated[Path, typer.Argument(help="The Kaggle download: folder with the CSV and 'Food Images/'.")],
    out: Annotated[Path, typer.Option(help="Dataset folder to write (recipes.jsonl, dataset.json).")],
    split_file: Annotated[
        Optional[Path], typer.Option(help="split.json {partition: [row index, ...]}; default: fixed split by recipe.")
    ] = None,
    add_unpaired: Annotated[
        bool, typer.Option("--add-unpaired", help="Add photos without a CSV row as title-only train recipes.")
    ] = False,
    skip_bad: SkipBad = False,
    max_bad: MaxBad = 0.05,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing dataset at --out.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Import the Epicurious (Kaggle) set in place; bad rows are reported and skipped."""
    from malm_edge.training.data.epicurious import import_epicurious as run_import

    report = run_or_exit(
        lambda: run_import(src, out, split_file, add_unpaired, overwrite=overwrite, progress=not as_json,
                           skip_bad=skip_bad, max_bad_fraction=max_bad)
    )
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    _echo_summary(out, report.n_recipes, report.partitions, report.n_recipes)
    typer.echo(f"CSV rows: {report.n_rows}; unpaired photos added: {report.n_unpaired}")
    typer.echo(f"photo formats: {report.image_formats}")
    if report.skipped:
        typer.echo(f"skipped: {report.skipped}")
    if report.fixed:
        typer.echo(f"fixed: {report.fixed}")
    _echo_problems(report.problems, sum(report.skipped.values()) + sum(report.fixed.values()))


def _echo_summary(out: Path, n_recipes: int, partitions: dict[str, int], n_images: int) -> None:
    parts = ", ".join(f"{name} {count}" for name, count in partitions.items())
    typer.echo(f"wrote {n_recipes} recipes ({parts}) with {n_images} photos to {out}")


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Dataset folder to write.")],
    recipes: Annotated[int, typer.Option(min=1, help="Number of recipes.")] = 1000,
    images_per_recipe: Annotated[int, typer.Option(min=1, help="Photos rendered per recipe.")] = 3,
    size: Annotated[int, typer.Option(min=16, help="Photo side in pixels.")] = 224,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same dataset).")] = 0,
    workers: Annotated[int, typer.Option(min=0, help="Worker processes (0: in this process).")] = 1,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing dataset at --out.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the generator's stats as JSON.")] = False,
) -> None:
    """Generate SynthFood, the built-in procedural dataset of recipes and matching food photos."""
    from malm_edge.training.data.synthfood.generate import generate_synthfood

    def job() -> dict:
        try:
            return generate_synthfood(
                out, n_recipes=recipes, images_per_recipe=images_per_recipe, image_size=size, seed=seed,
                workers=workers, progress=not as_json, overwrite=overwrite,
            )
        except FileExistsError as error:
            typer.echo(f"error: {error} (pass --overwrite to replace it)", err=True)
            raise typer.Exit(1) from None

    stats = run_or_exit(job)
    if as_json:
        typer.echo(json.dumps(stats, indent=2, default=str))
        return
    typer.echo(f"SynthFood written to {out}")
    for name, value in (stats or {}).items():
        if isinstance(value, (int, float, str, bool)) or value is None:
            typer.echo(f"  {name}: {value:.1f}" if isinstance(value, float) else f"  {name}: {value}")
        elif isinstance(value, dict) and all(not isinstance(v, (dict, list)) for v in value.values()):
            typer.echo(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in value.items()))
