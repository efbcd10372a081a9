"""A rich progress bar for training loops: loss terms and samples/s on one line."""

from __future__ import annotations

from types import TracebackType

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TrainProgress:
    """Context manager around `rich.progress.Progress`; a no-op when disabled (other ranks, tests)."""

    def __init__(self, total_steps: int, *, enabled: bool = True, completed: int = 0) -> None:
        self.enabled = enabled
        self._progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[terms]}"),
            disable=not enabled,
        )
        self._task = self._progress.add_task("train", total=total_steps, completed=completed, epoch=0, terms="")

    def __enter__(self) -> "TrainProgress":
        self._progress.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.__exit__(exc_type, exc, tb)

    def update(self, epoch: int, terms: dict[str, float]) -> None:
        """Advance one step and show the named loss terms."""
        shown = " ".join(
            f"{name.removeprefix('loss_')}={value:.3f}" if name.startswith("loss") else f"{value:.0f} samples/s"
            for name, value in terms.items()
        )
        self._progress.update(self._task, advance=1, epoch=epoch, terms=shown)
