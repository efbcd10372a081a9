"""training/plots.py: tick labels and axis ranges a person can read."""

from __future__ import annotations

from malm_edge.training.plots import _scale, nice_number


def test_tick_labels_are_plain_numbers() -> None:
    assert nice_number(1010) == "1,010"  # a last step, not 1.01e+03
    assert nice_number(505.0) == "505"
    assert nice_number(999.7) == "1,000"
    assert nice_number(0.0533) == "0.0533"
    assert nice_number(0) == "0"


def test_axis_of_non_negative_data_starts_at_zero_not_below() -> None:
    lo, hi = _scale(0.0, 0.2)
    assert lo == 0.0 and hi > 0.2  # no "-0.01" tick under a recall axis
    assert _scale(-1.0, 1.0)[0] < -1.0  # negative data keeps its padding
    assert _scale(0.5, 1.5)[0] == 0.45
    assert _scale(0.0, 0.0) == (0.0, 0.5)  # a flat recall of 0 in the first epochs
