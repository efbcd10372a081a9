"""Turn the library's expected errors into one clear line and exit code 1 (no traceback).

Every package has one base for the errors whose message is meant for a person: EdgeError
(edge/errors.py), TrainingError (training/errors.py), ConverterError (converters/errors.py). They are
matched by name, so a torch-free `malm-edge search` never imports training or converters.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import typer

T = TypeVar("T")

USER_ERROR_BASES = frozenset({"EdgeError", "TrainingError", "ConverterError", "FileNotFoundError"})


def run_or_exit(job: Callable[[], T]) -> T:
    """Run `job`; on a user-facing error print `error: ...` to stderr and exit 1."""
    try:
        return job()
    except Exception as error:  # noqa: BLE001 - filtered by base class name below
        if any(cls.__name__ in USER_ERROR_BASES for cls in type(error).__mro__):
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None
        message = _write_failure_message(error)
        if message:
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(1) from None
        raise


def _write_failure_message(error: Exception) -> str | None:
    """One line for a write that failed outside a guarded writer (an OSError naming its path)."""
    from malm_edge.edge.write_errors import write_failure_cause

    if not isinstance(error, OSError):
        return None
    path = error.filename
    cause = write_failure_cause(error, path)
    if cause is None:
        return None
    return f"{path}: cannot write ({cause})" if path else f"cannot write the output ({cause})"
