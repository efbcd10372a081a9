"""`malm-edge report BUNDLE [--data DIR]`: R@1 / medR, size and latency through every stage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from malm_edge.cli._errors import run_or_exit


def report(
    bundle: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Bundle folder.")],
    data: Annotated[Optional[Path], typer.Option(exists=True, file_okay=False,
                                                 help="Dataset with a val split (default: the one "
                                                 "named in the manifest).")] = None,
    val_limit: Annotated[int, typer.Option(min=1, help="At most this many val pairs.")] = 1000,
) -> None:
    """Write report.md, report.json and report.png into the bundle and print the table."""
    from malm_edge.converters.report import build_report

    path = run_or_exit(lambda: build_report(bundle, data, val_limit))
    typer.echo(path.read_text(encoding="utf-8"))
    typer.echo(f"report written to {path} and {path.with_suffix('.png')}")
