"""`malm-edge convert STUDENT_RUN --target ... --recipes DATA --out BUNDLE`: the on-device bundle.

Only typer and the standard library are imported here; converters/ (torch, executorch,
coremltools, onnxruntime) load inside the command.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from malm_edge.cli._errors import run_or_exit

COLLAPSED_SPREAD = 0.01  # converters/bundle_builder.py COLLAPSED_SPREAD (a test keeps them equal)


class Target(str, Enum):
    executorch = "executorch"
    coreml = "coreml"
    onnx = "onnx"
    all = "all"


class Quantize(str, Enum):
    none = "none"
    int8 = "int8"


class TableDtype(str, Enum):
    int8 = "int8"
    float16 = "float16"


class TableFormat(str, Enum):
    exact = "exact"
    twostage = "twostage"


def parity_text(encoder: dict) -> str:
    """The parity part of an encoder's summary line; a collapsed student says so in the same line."""
    check, parity = encoder["verification"], encoder.get("parity")
    if not check:
        return "not run here (structural check only)"
    text = (f"cosine {check['cosine_mean']:.4f} (min {check['cosine_min']:.4f}), "
            f"top-10 {check['top10_agreement']:.2f}")
    if parity and parity["eager_spread"] < COLLAPSED_SPREAD:
        return (f"COLLAPSED student: photos embed nearly alike (spread {parity['eager_spread']:.4f}), so "
                f"{text} says little; centred cosine {parity['centered_cosine_mean']:.4f}")
    return text


def convert(
    student_run: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Student run folder.")],
    out: Annotated[Path, typer.Option("--out", help="Bundle folder to create.")],
    recipes: Annotated[Optional[Path], typer.Option("--recipes", exists=True, file_okay=False,
                                          help="Canonical dataset whose recipes form the table "
                                               "(default: the student run's dataset).")] = None,
    target: Annotated[list[Target], typer.Option(
        "--target", help="Export target(s); repeatable.")] = [Target.all],  # noqa: B006
    quantize: Annotated[Quantize, typer.Option(help="int8 writes the int8 file AND the float one.")] = Quantize.int8,
    calibration: Annotated[Optional[Path], typer.Option(
        exists=True, file_okay=False, help="Calibration photos: a folder or a dataset (train split). "
        "Default: the --recipes dataset's train split.")] = None,
    table_dtype: Annotated[TableDtype, typer.Option(help="Recipe table storage (--table exact).")] = TableDtype.int8,
    table_format: Annotated[TableFormat, typer.Option(
        "--table", help="exact: every row scored (table v1); twostage: sign-bit prefilter + 8-bit "
        "rescoring, 128 bytes a 128-d recipe (table v3).")] = TableFormat.exact,
    candidates: Annotated[int, typer.Option(min=1, help=(
        "--table twostage: rows the prefilter keeps (BENCHMARKS.md: 1000 holds recall@10 >= 0.95 at 1M "
        "rows of text embeddings; photo queries against a trained teacher's 1M-recipe table need 2000)."))] = 1000,
    query_bits: Annotated[Optional[int], typer.Option(min=1, max=4, help=(
        "--table twostage: bits of the prefilter's query weights (1: the plain Hamming distance; "
        "default 4, fewer above 4,369 dims). More bits keep more of the true top-10 for photo "
        "queries and cost more scan time (BENCHMARKS.md, \"Weighted prefilter\")."))] = None,
    table_width: Annotated[Optional[int], typer.Option(min=1, help=(
        "Project the recipe table and the exported encoder's output onto this many principal directions "
        "of the recipe embeddings (a two-stage table costs one byte a dim). Default: 128 for --table "
        "twostage when the teacher is wider (128 bytes a recipe), else the teacher's width. Recall "
        "against the full-width float32 search is measured and printed."))] = None,
    index_dir: Annotated[Optional[Path], typer.Option(help="Keep / reuse the recipe index shards here.")] = None,
    n_calibration: Annotated[int, typer.Option(min=1, help="Calibration photos.")] = 64,
    n_verify: Annotated[int, typer.Option(min=1, help="Held-out verification photos.")] = 64,
    batch_size: Annotated[int, typer.Option(min=1, help="Recipes per forward pass.")] = 128,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing bundle at --out.")] = False,
    report: Annotated[bool, typer.Option(help="Write report.md / report.png into the bundle.")] = True,
    allow_collapsed: Annotated[bool, typer.Option(
        "--collapsed-ok", help="Convert a student whose embeddings of different photos are nearly identical "
        "(refused by default: it cannot tell photos apart).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
    sign: Annotated[Optional[Path], typer.Option(
        "--sign", metavar="KEY", help="Sign the manifest with this Ed25519 private key (PEM; `malm-edge keygen`).")
    ] = None,
) -> None:
    """Export a distilled student (ExecuTorch / CoreML / ONNX), build the recipe table and catalog,
    verify every file on real photos and write a checked bundle."""
    from malm_edge.converters.bundle_builder import ConvertOptions
    from malm_edge.converters.bundle_builder import convert as run_convert
    from malm_edge.edge.bundle import TARGETS

    names = TARGETS if Target.all in target else tuple(t.value for t in target)
    options = ConvertOptions(targets=names, quantize=quantize.value, table_dtype=table_dtype.value,
                             table_format=table_format.value, candidates=candidates,
                             query_bits=query_bits, table_width=table_width, calibration=calibration,
                             n_calibration=n_calibration,
                             n_verify=n_verify,
                             index_dir=index_dir, batch_size=batch_size, overwrite=overwrite,
                             report=report, progress=not as_json, allow_collapsed=allow_collapsed,
                             sign_key=sign)
    if sign is not None:
        from malm_edge.edge.signing import load_private_key

        run_or_exit(lambda: load_private_key(sign))  # a bad key fails before the long conversion
    result = run_or_exit(lambda: run_convert(student_run, recipes, out, options))
    if sign is not None:  # signed in the staging folder, before the bundle was published
        from malm_edge.edge.signing import SIGNATURE_FILE

        typer.echo(f"signed: {out / SIGNATURE_FILE}", err=as_json)
    summary = result.summary()
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    for encoder in summary["encoders"]:
        typer.echo(f"{encoder['file']}: {encoder['size_bytes'] / 1e6:.2f} MB, {parity_text(encoder)}")
        if encoder["non_delegated_ops"]:
            typer.echo(f"  not delegated to XNNPACK: {', '.join(encoder['non_delegated_ops'])}")
    table = summary["table"]
    narrowed = (f", {table['width']} of the teacher's {table['from_dim']} dims (PCA keeps "
                f"{table['retained_energy']:.1%} of the energy)" if "width" in table else "")
    typer.echo(f"table: {table['rows']} recipes, {table['dtype']} ({table['bytes_per_recipe']:.0f} bytes a "
               f"recipe{narrowed}), recall@1 {table['recall_at_1']:.3f} "
               f"recall@10 {table['recall_at_10']:.3f} vs float32")
    typer.echo(f"bundle written to {summary['bundle']}")
