"""The `malm-edge` command line: the typer app, one sub-app or command per command group.

Each command module imports only typer and the standard library at import time; heavy libraries
(torch, executorch, coremltools, onnxruntime) are imported inside the command so `--help` is instant.
Only commands that work are registered here.
"""

from __future__ import annotations

import logging

import typer

from malm_edge import __version__
from malm_edge.cli import bench as bench_cli
from malm_edge.cli import convert as convert_cli
from malm_edge.cli import data
from malm_edge.cli import demo as demo_cli
from malm_edge.cli import distill as distill_cli
from malm_edge.cli import eval as eval_cli
from malm_edge.cli import index as index_cli
from malm_edge.cli import report as report_cli
from malm_edge.cli import search as search_cli
from malm_edge.cli import sign as sign_cli
from malm_edge.cli import train as train_cli
from malm_edge.cli._help import tidy_typer
from malm_edge.cli._quiet import filter_native_stderr, quiet_third_party

tidy_typer()

app = typer.Typer(
    name="malm-edge",
    help="MALM food image-to-recipe retrieval: train, distill, convert and search on the phone.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data.app, name="data")
app.command("train")(train_cli.train)
app.command("distill")(distill_cli.distill)
app.command("eval")(eval_cli.evaluate)
app.command("index")(index_cli.index)
app.command("convert")(convert_cli.convert)
app.command("report")(report_cli.report)
app.command("search")(search_cli.search)
app.command("bench")(bench_cli.bench)
app.command("demo")(demo_cli.demo)
app.command("keygen")(sign_cli.keygen)
app.command("sign")(sign_cli.sign)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"malm-edge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Log debug messages, and let third-party libraries and runtimes talk."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not verbose:
        quiet_third_party()
        undo = filter_native_stderr()
        if undo is not None:
            ctx.call_on_close(undo)


def main() -> None:
    """Console-script entry point."""
    app()
