"""Training progress: step counter, samples/s and ETA always visible; loss terms beside them.

In a terminal the counter, rate and ETA are the bar's first line and the loss terms its second
(training/progress.py); in a log file a plain line every 5% of the steps or 30 seconds.
"""

from __future__ import annotations

from types import TracebackType

from malm_edge.training.progress import Progress


def format_terms(terms: dict[str, float]) -> str:
    """`loss 1.234 itc 0.811 dist 0.020` from {"loss_itc": ..., "loss": ..., ...}: the total first, the
    terms in their order, other keys ignored."""
    names = sorted((name for name in terms if name.startswith("loss")), key=lambda name: name != "loss")
    return " ".join(f"{'loss' if name == 'loss' else name.removeprefix('loss_')} {terms[name]:.3f}" for name in names)


class TrainProgress:
    """The training loop's progress; a no-op when disabled (other ranks, tests, `--json`)."""

    def __init__(self, total_steps: int, *, enabled: bool = True, completed: int = 0, epochs: int | None = None,
                 interactive: bool | None = None, every_s: float | None = None) -> None:
        self.epochs = epochs
        extra = {} if every_s is None else {"every_s": every_s}
        self._progress = Progress(self._description(0), total_steps, unit="steps", rate_unit="samples",
                                  enabled=enabled, completed=completed, interactive=interactive, **extra)

    def _description(self, epoch: int) -> str:
        """1-based for people ("epoch 1/5"); metrics.jsonl keeps 0-based epochs."""
        return f"epoch {epoch + 1}" + (f"/{self.epochs}" if self.epochs else "")

    def __enter__(self) -> "TrainProgress":
        self._progress.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.__exit__(exc_type, exc, tb)

    def update(self, epoch: int, terms: dict[str, float], samples: int = 0) -> None:
        """Advance one step of `samples` samples and show the named loss terms."""
        self._progress.advance(1, items=samples, info=format_terms(terms), description=self._description(epoch))
