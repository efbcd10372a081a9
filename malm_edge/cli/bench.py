"""`malm-edge bench --bundle B`: latency of preprocessing, each encoder x threads, table search.

Only typer and the standard library are imported here; edge/ loads inside the command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer


def _table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> Any:
    """A compact rich table in which no value is ever cut (headers wrap instead); text columns left,
    numbers right."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, title_justify="left")
    for i, column in enumerate(columns):
        values = [row[i] for row in rows]
        numeric = all(v.replace(".", "", 1).isdigit() for v in values if v)
        table.add_column(column, no_wrap=not numeric, min_width=max(map(len, [*values, *column.split()])),
                         justify="right" if numeric else "left")  # numeric headers may wrap
    for row in rows:
        table.add_row(*row)
    return table


def _print_table(console: Any, table: Any) -> None:
    """Print at the console's width, or wider where the table cannot fit (rich would drop columns)."""
    from rich.measure import Measurement

    needed = Measurement.get(console, console.options.update(width=10_000), table).maximum  # unwrapped
    if sum(column.min_width or 0 for column in table.columns) + 2 * len(table.columns) <= console.width:
        needed = console.width  # it fits once numeric headers wrap
    width = console.width
    console.width = max(width, needed)  # print(width=...) is clamped to the console's width
    try:
        console.print(table)
    finally:
        console.width = width


def _recall(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _print_tables(report: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console()
    pre = report["preprocess"]
    console.print(f"bundle {report['bundle']}: preprocessing median {pre['median_ms']:.2f} ms, "
                  f"p90 {pre['p90_ms']:.2f} ms; peak RSS {report['peak_rss_mb']:.0f} MB")
    encoders = [(row["encoder"], row["backend"], row["quantization"], str(row["threads"]), f"{row['median_ms']:.2f}",
                 f"{row['p90_ms']:.2f}", f"{row['size_mb']:.2f}") for row in report["encoders"]]
    _print_table(console, _table("Encoders (batch 1)", ("encoder", "backend", "quant", "thr", "p50 ms", "p90 ms", "MB"),
                         encoders))
    search = [(row["table"], str(row["rows"]), str(row["dim"]), row["dtype"], f"{row['median_ms']:.2f}",
               f"{row['p90_ms']:.2f}", f"{row['table_mb']:.1f}", f"{row['bytes_per_recipe']:.0f}",
               f"{row['search_peak_alloc_mb']:.1f}", _recall(row.get("recall_at_1")), _recall(row.get("recall_at_10")))
              for row in report["search"]]
    _print_table(console, _table("Table top-k search (recall: against exact float32, measured by convert)",
                                 ("table", "rows", "dim", "dtype", "p50 ms", "p90 ms", "table MB", "B/recipe",
                                  "peak alloc MB", "recall@1", "recall@10"), search))
    for row in report["end_to_end"]:
        console.print(f"end to end ({row['encoder']}): median {row['median_ms']:.2f} ms, "
                      f"p90 {row['p90_ms']:.2f} ms")
    for skipped in report["skipped"]:
        console.print(f"[yellow]skipped {skipped['encoder']}: {skipped['reason']}[/yellow]")
    console.print("files: " + ", ".join(f"{k} {v / 2**20:.2f} MB" for k, v in report["files"].items()))


def bench(
    bundle: Annotated[Path, typer.Option("--bundle", "-b", help="Bundle folder (manifest.json).")],
    rows: Annotated[
        Optional[list[int]],
        typer.Option("--rows", help="Synthetic int8 table sizes to search (repeatable; default "
                                    "100000 and 1029720; 0 for none)."),
    ] = None,
    photo: Annotated[Optional[Path], typer.Option(help="Photo to preprocess (default: synthetic).")] = None,
    threads: Annotated[
        Optional[list[int]], typer.Option("--threads", help="Thread counts (default: 1 and all cores).")
    ] = None,
    backend: Annotated[
        Optional[list[str]],
        typer.Option("--backend", help="Only these targets: executorch, onnx, coreml (repeatable)."),
    ] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Timed runs per measurement.")] = 20,
    require_signature: Annotated[Optional[Path], typer.Option(
        "--require-signature", metavar="PUBKEY", help="Refuse the bundle unless signed by this Ed25519 key (PEM).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Median/p90 latency of preprocessing, each encoder and backend at 1 and all threads, table
    search at the bundle's size and at synthetic 100k / 1,029,720 rows; peak memory, file sizes."""
    from malm_edge.converters.executorch_runtime import register_executorch_backend
    from malm_edge.edge.backends import BackendError
    from malm_edge.edge.bench import DEFAULT_SYNTHETIC_ROWS, run_bench
    from malm_edge.edge.bundle import BundleError
    from malm_edge.edge.preprocess import ImageError

    register_executorch_backend()
    synthetic = DEFAULT_SYNTHETIC_ROWS if rows is None else tuple(r for r in rows if r > 0)
    from rich.console import Console

    status = Console(stderr=True).status("benchmarking (synthetic tables take a few seconds)...")
    try:
        with status:
            report = run_bench(bundle, photo=photo, backends=backend or None,
                               threads=threads or None, synthetic_rows=synthetic, repeats=repeats,
                               require_signature=require_signature)
    except (BundleError, BackendError, ImageError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print_tables(report)
