"""Progress that a person can follow in a terminal and in a log file.

In a terminal: a rich bar whose first line always keeps the counter, the rate, the elapsed time and
the ETA (about 75 columns), with anything long (the loss terms) on a second line cut to the
terminal's width. Anywhere else (a log file, a pipe, CI): one plain log line at the first step, then
every `every_s` seconds or every `every_fraction` of the total, whichever comes first, and at the end:

    12:03:04 INFO malm_edge.progress: train epoch 1/5: 120/500 (24%), 61.2 samples/s, elapsed 1m58s,
    ETA 6m15s | loss 1.234 itc 0.811

Plain lines go through `logging` (logger `malm_edge.progress`), so they interleave with the other
log lines and follow the one logging setup of the entry point. No torch here: training, data and
converters all use it.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import IO, Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("malm_edge.progress")

EVERY_S = 30.0
EVERY_FRACTION = 0.05


def format_duration(seconds: float | None) -> str:
    """`42s`, `6m15s`, `2h03m`; `?` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _count(value: float, unit: str) -> str:
    return f"{value / 1e6:.1f}" if unit == "bytes" else f"{int(value)}"


class Progress:
    """Progress over `total` steps: a two-line rich bar in a terminal, periodic log lines elsewhere.

    Args:
        description: What is counted, shown first ("train epoch 1/5", "embedding recipes").
        total: Steps in all.
        unit: Name of the steps in plain lines ("steps", "recipes"; "bytes" shows MB).
        rate_unit: Name of the items counted for the rate ("samples"); default: `unit`.
        enabled: False shows nothing (tests, other ranks, `--json`).
        completed: Steps already done (a resumed run); the rate and ETA count only this session's.
        interactive: Force the terminal (True) or plain-line (False) mode; default: whether
            stderr is a terminal.
        every_s / every_fraction: How often plain lines are written.
        transient: Remove the terminal bar when done.
    """

    def __init__(self, description: str, total: int, *, unit: str = "steps", rate_unit: str | None = None,
                 enabled: bool = True, completed: int = 0, interactive: bool | None = None,
                 every_s: float = EVERY_S, every_fraction: float = EVERY_FRACTION, transient: bool = False,
                 stream: IO[str] | None = None) -> None:
        self.description, self.total, self.unit = description, max(int(total), 0), unit
        self.rate_unit = rate_unit or unit
        self.enabled, self.completed, self.info = enabled, int(completed), ""
        stream = stream or sys.stderr
        self.interactive = bool(getattr(stream, "isatty", lambda: False)()) if interactive is None else interactive
        self.every_s, self.every_steps = every_s, max(1, int(self.total * every_fraction))
        self._stream, self._transient = stream, transient
        self._start = self._last_line = time.perf_counter()
        self._session_steps, self._items, self._lines, self._lines_step = 0, 0.0, 0, self.completed
        self._bar: Any = None
        self._task: Any = None

    # ---- measurements

    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def rate(self) -> float | None:
        """Items per second in this session."""
        elapsed = self.elapsed()
        return self._items / elapsed if self._session_steps and elapsed > 0 else None

    def eta(self) -> float | None:
        """Seconds left at this session's pace."""
        if not self._session_steps:
            return None
        return max(self.total - self.completed, 0) * self.elapsed() / self._session_steps

    def rate_text(self, unknown: str = "?") -> str:
        """`61.2 samples/s` (`12.3 MB/s` for bytes), or `unknown` before the first step."""
        rate = self.rate()
        if rate is None:
            return unknown
        return f"{rate / 1e6:.1f} MB/s" if self.rate_unit == "bytes" else f"{rate:.1f} {self.rate_unit}/s"

    def status(self) -> str:
        """`120/500 (24%), 61.2 samples/s, elapsed 1m58s, ETA 6m15s` (the part that is never cut)."""
        percent = f" ({100 * self.completed / self.total:.0f}%)" if self.total else ""
        return (f"{_count(self.completed, self.unit)}/{_count(self.total, self.unit)}{percent}, {self.rate_text()}, "
                f"elapsed {format_duration(self.elapsed())}, ETA {format_duration(self.eta())}")

    def line(self) -> str:
        """The plain line: description, status and, after ` | `, the info (loss terms)."""
        info = f" | {self.info}" if self.info else ""
        return f"{self.description}: {self.status()}{info}"

    # ---- updates

    def advance(self, steps: int = 1, *, items: float | None = None, info: str | None = None,
                description: str | None = None) -> None:
        """Count `steps` more steps (`items` more items for the rate; default `steps`)."""
        if not self.enabled:
            return
        self.completed += steps
        self._session_steps += steps
        self._items += steps if items is None else items
        if info is not None:
            self.info = info
        if description is not None:
            self.description = description
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed, description=self.description,
                             status=self._bar_status(), info=self.info)
        elif self._due():
            self._write_line()

    def _due(self) -> bool:
        if self._lines == 0 or self.completed >= self.total:
            return True
        crossed = self.completed // self.every_steps > self._lines_step // self.every_steps
        return crossed or time.perf_counter() - self._last_line >= self.every_s

    def _write_line(self) -> None:
        log.info("%s", self.line())
        self._lines += 1
        self._lines_step = self.completed
        self._last_line = time.perf_counter()

    def _bar_status(self) -> str:
        return f"{self.rate_text(unknown='')}  ETA {format_duration(self.eta())}"

    # ---- context

    def __enter__(self) -> "Progress":
        self._start = self._last_line = time.perf_counter()
        self._lines_step = self.completed
        if self.enabled and self.interactive:
            self._bar, self._task = _rich_bar(self)
            self._bar.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)
            self._bar = None
        elif self.enabled and self._session_steps and self._lines_step != self.completed:
            self._write_line()  # where it stopped (finished, interrupted or failed)


def _rich_bar(progress: Progress) -> tuple[Any, Any]:
    """A rich Progress whose first line fits 80 columns; the info goes on a second line."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress
    from rich.text import Text

    class TwoLines(RichProgress):
        def get_renderables(self) -> Iterator[Any]:
            yield self.make_tasks_table(self.tasks)
            for task in self.tasks:
                if task.fields.get("info"):
                    yield Text(f"  {task.fields['info']}", no_wrap=True, overflow="ellipsis")

    bar = TwoLines(
        TextColumn("{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=Console(file=progress._stream), transient=progress._transient, expand=False,
    )
    task = bar.add_task(progress.description, total=progress.total or None, completed=progress.completed,
                        status="", info="")
    return bar, task


@contextmanager
def counting(description: str, total: int, *, enabled: bool = True, unit: str = "items",
             transient: bool = False) -> Iterator[Callable[[int], None]]:
    """A `Progress` as a context manager yielding its `advance(n)` callable (a no-op when disabled)."""
    with Progress(description, total, unit=unit, enabled=enabled, transient=transient) as bar:
        yield lambda n: bar.advance(n)


def iterate(items: Iterable[T], total: int, description: str, *, enabled: bool = True,
            unit: str = "items") -> Iterator[T]:
    """`items`, counted by a transient `Progress`."""
    if not enabled:
        yield from items
        return
    with Progress(description, total, unit=unit, transient=True) as bar:
        for item in items:
            yield item
            bar.advance()
