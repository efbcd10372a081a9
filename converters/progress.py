"""Progress for the converters (index, convert): a context manager yielding `advance(n)` (or a no-op).

A terminal gets a rich bar with the counter, rate and ETA; a log file a plain line every 5% or 30
seconds (training/progress.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from malm_edge.training.progress import Progress


@contextmanager
def recipe_progress(
    enabled: bool, description: str, total: int, unit: str = "recipes"
) -> Iterator[Callable[[int], None]]:
    """Progress over `total` items; `enabled=False` (tests, non-main ranks, --json) shows nothing."""
    with Progress(description, total, unit=unit, enabled=enabled) as bar:
        yield lambda n: bar.advance(n)
