"""Progress a person can follow (issue 18, item 1): the counter, rate and ETA always visible, loss
terms on a second line in a terminal, and plain periodic lines when stderr is not a terminal."""

from __future__ import annotations

import io
import logging
import re

import pytest

from malm_edge.training.harness.progress import TrainProgress, format_terms
from malm_edge.training.progress import Progress, format_duration

TERMS = {"loss": 1.2345, "loss_itc": 0.811, "loss_gc": 0.3, "loss_lc": 0.25, "loss_dist": 0.02,
         "samples_per_s": 99.0}


def _progress_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "malm_edge.progress"]


def test_plain_lines_every_fraction_with_counter_rate_eta_and_losses(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="malm_edge.progress")
    with TrainProgress(100, epochs=4, interactive=False, every_s=3600) as bar:
        for step in range(100):
            bar.update(step // 25, TERMS, samples=32)
    lines = _progress_lines(caplog)
    # the first step, every 5% (20 lines), none twice at the end
    assert len(lines) == 21, lines
    assert lines[0].startswith("epoch 1/4: 1/100 (1%), ")
    assert lines[-1].startswith("epoch 4/4: 100/100 (100%), ")
    for line in lines:
        assert re.search(r"\d+/100 \(\d+%\), [\d.]+ samples/s, elapsed \w+, ETA \w+ \| loss 1.234 itc 0.811", line)


def test_plain_lines_every_seconds(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO, logger="malm_edge.progress")
    clock = iter(float(t) for t in range(10_000))
    monkeypatch.setattr("malm_edge.training.progress.time.perf_counter", lambda: next(clock))
    with Progress("embedding recipes", 10_000, unit="recipes", interactive=False, every_s=30,
                  every_fraction=1.0) as bar:
        for _ in range(200):
            bar.advance(1)
    lines = _progress_lines(caplog)
    assert 5 <= len(lines) <= 9, lines  # ~2 clock ticks per step: a line every 15 steps or so... every 30 s
    assert lines[1].startswith("embedding recipes: ") and "recipes/s" in lines[1]
    assert lines[-1].startswith("embedding recipes: 200/10000 (2%)")  # where it stopped


def test_disabled_progress_prints_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="malm_edge.progress")
    with TrainProgress(10, enabled=False, interactive=False) as bar:
        for _ in range(10):
            bar.update(0, TERMS, samples=4)
    assert _progress_lines(caplog) == []


def test_terminal_bar_keeps_counter_and_eta_in_80_columns_and_losses_below() -> None:
    stream = io.StringIO()
    terms = {**TERMS, **{f"loss_extra_term_{i}": 0.5 for i in range(8)}}  # far wider than 80 columns
    bar = Progress("epoch 10/10", 7500, unit="steps", rate_unit="samples", interactive=True, stream=stream)
    with bar:
        for _ in range(7500):
            bar.advance(1, items=64, info=format_terms(terms))
    lines = [line.rstrip() for line in stream.getvalue().splitlines() if line.strip()]
    first, second = lines[-2], lines[-1]
    assert len(first) <= 80 and len(second) <= 80, lines
    assert "7500/7500" in first and "samples/s" in first and "ETA" in first
    assert second.lstrip().startswith("loss 1.234 itc 0.811") and second.endswith("…")


def test_format_helpers() -> None:
    assert [format_duration(s) for s in (None, 5, 75, 3725)] == ["?", "5s", "1m15s", "1h02m"]
    assert format_terms(TERMS) == "loss 1.234 itc 0.811 gc 0.300 lc 0.250 dist 0.020"


def test_a_training_run_off_a_terminal_logs_periodic_progress_lines(
    tiny_synthfood, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    from malm_edge.training.harness.teacher import train_teacher
    from malm_edge.training.presets import get_preset

    caplog.set_level(logging.INFO)
    model_cfg, train_cfg = get_preset("micro")
    train_cfg.epochs, train_cfg.batch_size = 2, 16
    train_teacher(tmp_path / "run", data_dir=tiny_synthfood, model_cfg=model_cfg, train_cfg=train_cfg, progress=True)
    lines = _progress_lines(caplog)
    assert lines, "no progress lines"
    assert any(line.startswith("epoch 1/2: 1/") for line in lines)
    assert any(line.startswith("epoch 2/2: ") and " samples/s, " in line and "ETA" in line and "| loss " in line
               for line in lines)
    assert (tmp_path / "run" / "curves.png").is_file()
