"""A rich progress bar as a context manager that yields an `advance(n)` callable (or a no-op)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def recipe_progress(enabled: bool, description: str, total: int) -> Iterator[Callable[[int], None]]:
    """Progress over `total` items; `enabled=False` (tests, non-main ranks) shows nothing."""
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
