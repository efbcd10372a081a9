"""Small charts drawn with pillow (a core dependency; matplotlib is not needed): line panels for
training curves, bar panels and a labelled scatter for the compression report.

A figure is a grid of panels; each panel draws into its own box of one shared image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127)]
PANEL_W, PANEL_H, MARGIN = 520, 300, 16


def font(size: int = 13) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pillow < 10.1: the bitmap font has one size
        return ImageFont.load_default()


def nice_number(value: float) -> str:
    """Tick label: 3 significant figures, no trailing noise."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    if abs(value) >= 999.5:  # what .3g would print as 1e+03
        return f"{value:,.0f}"  # a step count: 1,010, not 1.01e+03
    return f"{value:.3g}"


@dataclass
class Series:
    name: str
    x: Sequence[float]
    y: Sequence[float]
    markers: bool = False


@dataclass
class Panel:
    """One chart: `kind` "line" (series), "bars" (labels + values) or "scatter" (labelled points)."""

    title: str
    kind: str = "line"
    series: list[Series] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    values: list[float | None] = field(default_factory=list)
    x_label: str = ""
    y_label: str = ""
    value_format: str = ".3f"
    note: str = ""
    hlines: list[tuple[float, str]] = field(default_factory=list)  # (y, label): dashed reference lines


def save_figure(panels: list[Panel], path: str | Path, *, title: str = "", columns: int = 2,
                panel_size: tuple[int, int] = (PANEL_W, PANEL_H)) -> Path:
    """Draw `panels` in a grid (`columns` wide) under `title` and save a PNG."""
    from PIL import Image, ImageDraw

    columns = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / columns)
    width, height = panel_size
    top = 34 if title else MARGIN
    image = Image.new("RGB", (columns * width + MARGIN, top + rows * height), "white")
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((MARGIN, 10), title, fill="black", font=font(16))
    for i, panel in enumerate(panels):
        left, upper = MARGIN + (i % columns) * width, top + (i // columns) * height
        box = (left, upper, left + width - MARGIN, upper + height - MARGIN)
        {"line": _draw_lines, "bars": _draw_bars, "scatter": _draw_scatter}[panel.kind](draw, box, panel)
    path = Path(path)
    image.save(path)
    return path


def _frame(draw: Any, box: tuple[int, int, int, int], panel: Panel) -> tuple[int, int, int, int]:
    """Title, outline and axis labels; returns the plotting area."""
    left, upper, right, lower = box
    draw.rectangle(box, outline=(210, 210, 210))
    draw.text((left + 8, upper + 6), panel.title, fill="black", font=font(14))
    if panel.note:
        draw.text((left + 8, lower - 18), panel.note, fill=(90, 90, 90), font=font(11))
    if panel.x_label:
        draw.text((right - 8 - 7 * len(panel.x_label), lower - 34 if panel.note else lower - 18), panel.x_label,
                  fill=(90, 90, 90), font=font(11))
    return left + 58, upper + 30, right - 14, lower - (52 if panel.note else 36)


def _scale(lo: float, hi: float) -> tuple[float, float]:
    pad = 0.5 if hi - lo < 1e-12 else 0.05 * (hi - lo)
    return (lo - pad if lo - pad >= 0 or lo < 0 else 0.0), hi + pad  # data >= 0 keeps a floor of 0


def _axes(draw: Any, area: tuple[int, int, int, int], x_range: tuple[float, float],
          y_range: tuple[float, float], y_label: str) -> None:
    left, upper, right, lower = area
    draw.line([(left, upper), (left, lower), (right, lower)], fill=(120, 120, 120))
    small = font(11)
    for frac in (0.0, 0.5, 1.0):
        y_value = y_range[0] + frac * (y_range[1] - y_range[0])
        y = lower - frac * (lower - upper)
        draw.line([(left - 3, y), (right, y)], fill=(235, 235, 235))
        draw.text((left - 52, y - 6), nice_number(y_value), fill=(60, 60, 60), font=small)
        x_value = x_range[0] + frac * (x_range[1] - x_range[0])
        x = left + frac * (right - left)
        draw.text((x - 10, lower + 4), nice_number(x_value), fill=(60, 60, 60), font=small)
    if y_label:
        draw.text((left + 4, upper - 2), y_label, fill=(90, 90, 90), font=small)


def _legend(draw: Any, area: tuple[int, int, int, int], panel: Panel) -> tuple[int, int, int, int]:
    """Series names in a row above the plot (several series only); returns the area left below it."""
    if len(panel.series) < 2:
        return area
    left, upper, right, lower = area
    x = left
    for i, series in enumerate(panel.series):
        colour = PALETTE[i % len(PALETTE)]
        draw.line([(x, upper + 3), (x + 14, upper + 3)], fill=colour, width=3)
        draw.text((x + 18, upper - 4), series.name, fill=colour, font=font(11))
        x += 30 + 7 * len(series.name)
    return left, upper + 14, right, lower


def _draw_lines(draw: Any, box: tuple[int, int, int, int], panel: Panel) -> None:
    area = _legend(draw, _frame(draw, box, panel), panel)
    points = [(x, y) for s in panel.series for x, y in zip(s.x, s.y) if y is not None and math.isfinite(y)]
    if not points:
        draw.text((area[0] + 10, area[1] + 20), "no data yet", fill=(120, 120, 120), font=font())
        return
    x_lo, x_hi = min(p[0] for p in points), max(p[0] for p in points)
    x_range = (x_lo, x_hi) if x_hi > x_lo else _scale(x_lo, x_hi)
    ys = [p[1] for p in points] + [y for y, _ in panel.hlines]
    y_range = _scale(min(ys), max(ys))
    _axes(draw, area, x_range, y_range, panel.y_label)
    left, upper, right, lower = area

    def at(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x_range[0]) / (x_range[1] - x_range[0]) * (right - left),
                lower - (y - y_range[0]) / (y_range[1] - y_range[0]) * (lower - upper))

    for value, label in panel.hlines:
        _, y = at(x_range[0], value)
        for x in range(int(left), int(right), 12):
            draw.line([(x, y), (min(x + 6, right), y)], fill=(150, 150, 150), width=1)
        draw.text((right - 7 * len(label) - 4, y - 14), label, fill=(120, 120, 120), font=font(11))
    for i, series in enumerate(panel.series):
        colour = PALETTE[i % len(PALETTE)]
        xy = [at(x, y) for x, y in zip(series.x, series.y) if y is not None and math.isfinite(y)]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        if series.markers or len(xy) == 1:
            for x, y in xy:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)


def _draw_bars(draw: Any, box: tuple[int, int, int, int], panel: Panel) -> None:
    """Horizontal bars, one per label, value written beside each (n/a where missing)."""
    left, upper, right, lower = _frame(draw, box, panel)
    label_w = min(230, (right - left) // 2)
    known = [v for v in panel.values if v is not None]
    top = max(known, default=0.0) or 1.0
    row_h = max(14, min(30, (lower - upper) // max(1, len(panel.labels))))
    small = font(11)
    for i, (label, value) in enumerate(zip(panel.labels, panel.values)):
        y = upper + i * row_h
        draw.text((left - 50, y + 2), label[:38], fill="black", font=small)
        bar_left, bar_right = left - 50 + label_w, right - 60
        if value is not None:
            width = int((bar_right - bar_left) * value / top)
            draw.rectangle([bar_left, y + 1, bar_left + max(width, 1), y + row_h - 4], fill=PALETTE[i % len(PALETTE)])
        text = "n/a" if value is None else format(value, panel.value_format)
        draw.text((bar_right + 6, y + 2), text, fill="black", font=small)


def _draw_scatter(draw: Any, box: tuple[int, int, int, int], panel: Panel) -> None:
    """Labelled points; `series[0]` holds x and y, `labels` one label per point."""
    area = _frame(draw, box, panel)
    series = panel.series[0] if panel.series else Series("", [], [])
    points = [(x, y, label) for x, y, label in zip(series.x, series.y, panel.labels) if x is not None and y is not None]
    if not points:
        draw.text((area[0] + 10, area[1] + 20), "nothing measured on this machine", fill=(120, 120, 120), font=font())
        return
    x_range = (0.0, 1.15 * max(p[0] for p in points) or 1.0)  # from zero: sizes and times
    y_range = (0.0, 1.15 * max(p[1] for p in points) or 1.0)
    _axes(draw, area, x_range, y_range, panel.y_label)
    left, upper, right, lower = area
    for i, (x, y, label) in enumerate(points):
        px = left + (x - x_range[0]) / (x_range[1] - x_range[0]) * (right - left)
        py = lower - (y - y_range[0]) / (y_range[1] - y_range[0]) * (lower - upper)
        colour = PALETTE[i % len(PALETTE)]
        draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=colour)
        draw.text((min(px + 6, right - 150), py - 6 + 12 * (i % 2)), label, fill=colour, font=font(11))
