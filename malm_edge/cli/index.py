"""`malm-edge index --teacher RUN --recipes DATA --out DIR`: embed every recipe of a catalog.

Resumable (complete shards are kept) and shardable with torchrun (rank r takes shards r, r+W, ...);
rank 0 then finalizes the table and catalog into DIR. Only typer and the standard library are
imported at module import time.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from malm_edge.cli._errors import run_or_exit


class TableDtype(str, Enum):
    int8 = "int8"
    float16 = "float16"


class TableFormat(str, Enum):
    exact = "exact"
    twostage = "twostage"


def run_index(teacher_run: Path, recipes: Path, out: Path, *, shard_size: int = 8192,
              batch_size: int = 128, table_dtype: str = "int8", table_format: str = "exact",
              candidates: int = 1000, query_bits: int | None = None, finalize_table: bool = True,
              progress: bool = True) -> dict:
    """Build the shards (this process's share), then on rank 0 the table, catalog and quality."""
    import torch

    from malm_edge.converters import index as idx
    from malm_edge.training.harness.distributed import (
        barrier,
        cleanup_distributed,
        init_distributed,
    )
    from malm_edge.training.harness.teacher import load_teacher

    world = init_distributed("cpu")
    torch.manual_seed(0)
    try:
        teacher = load_teacher(teacher_run)
        result = idx.build_index(teacher, recipes, out, shard_size=shard_size, batch_size=batch_size,
                                 world=world, progress=progress)
        summary = {"rank": world.rank, "world_size": world.world_size, **result.to_dict()}
        barrier()
        if finalize_table and world.is_main:
            table_dir = out / "table"
            entry, count = idx.finalize(out, recipes, table_dir, table_dtype=table_dtype,
                                        table_format=table_format, candidates=candidates,
                                        query_bits=query_bits)
            queries = idx.teacher_image_queries(teacher, recipes)
            source = "teacher val image embeddings"
            if queries is None:
                queries, source = idx.mixed_recipe_queries(out), "mixed recipe embeddings"
            summary["table"] = {"dir": str(table_dir), "rows": entry.rows, "dim": entry.dim,
                                "catalog_rows": count, "candidates": entry.candidates,
                                "query_bits": entry.query_bits,
                                **idx.table_quality(out, table_dir, entry, queries), "queries": source}
        barrier()
    finally:
        cleanup_distributed()
    return summary


def index(
    teacher: Annotated[Path, typer.Option("--teacher", exists=True, file_okay=False, help="Teacher run folder.")],
    recipes: Annotated[Path, typer.Option("--recipes", exists=True, file_okay=False,
                                          help="Canonical dataset (recipes.jsonl), all recipes are embedded.")],
    out: Annotated[Path, typer.Option("--out", help="Index folder (shards; table/ after finalize).")],
    shard_size: Annotated[int, typer.Option(min=1, help="Recipes per shard.")] = 8192,
    batch_size: Annotated[int, typer.Option(min=1, help="Recipes per forward pass.")] = 128,
    table_dtype: Annotated[TableDtype, typer.Option(help="Finalized table storage (--table exact).")] = TableDtype.int8,
    table_format: Annotated[TableFormat, typer.Option(
        "--table", help="exact: every row scored (table v1); twostage: sign-bit prefilter + 8-bit "
        "rescoring (table v3).")] = TableFormat.exact,
    candidates: Annotated[int, typer.Option(min=1, help="--table twostage: rows the prefilter keeps.")] = 1000,
    query_bits: Annotated[Optional[int], typer.Option(min=1, max=4, help=(
        "--table twostage: bits of the prefilter's query weights (1: the plain Hamming distance; "
        "default 4, fewer above 4,369 dims). More bits keep more of the true top-10 for photo "
        "queries and cost more scan time (BENCHMARKS.md, \"Weighted prefilter\")."))] = None,
    finalize: Annotated[bool, typer.Option(help="Write table + catalog into OUT/table when done.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Embed every recipe with the teacher's recipe tower into resumable shards (torchrun-ready)."""
    summary = run_or_exit(lambda: run_index(teacher, recipes, out, shard_size=shard_size,
                                            batch_size=batch_size, table_dtype=table_dtype.value,
                                            table_format=table_format.value, candidates=candidates,
                                            query_bits=query_bits, finalize_table=finalize, progress=not as_json))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(f"rank {summary['rank']}/{summary['world_size']}: {len(summary['computed'])} shards "
               f"embedded, {len(summary['skipped'])} already done, "
               f"{summary['recipes_per_second']:.1f} recipes/s")
    if "table" in summary:
        table = summary["table"]
        typer.echo(f"table {table['dir']}: {table['rows']} x {table['dim']} {table['dtype']} "
                   f"({table['bytes_per_recipe']:.0f} bytes a recipe), recall@1 {table['recall_at_1']:.3f}, "
                   f"recall@10 {table['recall_at_10']:.3f} vs float32")
