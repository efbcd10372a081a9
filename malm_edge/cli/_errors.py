"""Turn the library's expected errors into one clear line and exit code 1 (no traceback)."""

from __future__ import annotations

from typing import Callable, TypeVar

import typer

T = TypeVar("T")

# Error types whose message is meant for the user. Matched by name so this module stays import-light.
USER_ERRORS = {
    "DatasetError",
    "RunError",
    "CheckpointError",
    "NonFiniteLossError",
    "ImageError",
    "BundleError",
    "BackendError",
    "CatalogError",
    "TokenizerError",
    "MetricsError",
    "WeightsError",
    "ConversionError",
    "DemoError",
    "ClipWeightsError",
    "PretrainedWeightsError",
    "ConvertError",
    "ExportError",
    "CalibrationError",
    "IndexFolderError",
    "ReportError",
    "FileNotFoundError",
}


def run_or_exit(job: Callable[[], T]) -> T:
    """Run `job`; on a user-facing error print `error: ...` to stderr and exit 1."""
    try:
        return job()
    except Exception as error:  # noqa: BLE001 - filtered by type name below
        if any(cls.__name__ in USER_ERRORS for cls in type(error).__mro__):
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None
        raise
