"""Geometry of the overview's line chart, drawn as SVG by a template (no JavaScript).

Values that are unknown (None) break a line instead of being drawn as zeros.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

WIDTH, HEIGHT = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 28
Y_STEPS = 4  # grid lines above zero, at whole numbers


@dataclass(frozen=True)
class Line:
    """One series: its polylines (one per run of known values) and its lone points."""

    name: str
    polylines: list[str]
    points: list[tuple[float, float]]


@dataclass(frozen=True)
class Tick:
    """An axis label and where it goes (x or y in pixels)."""

    at: float
    label: str


@dataclass(frozen=True)
class LineChart:
    """Everything the template needs to draw the chart."""

    width: int
    height: int
    left: int
    right: float
    top: int
    bottom: float
    lines: list[Line]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    empty: bool


def nice_step(value: float) -> int:
    """The smallest of 1, 2, 5 x 10^k that is at least ``value`` (at least 1)."""
    if value <= 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    return next(int(m * power) for m in (1, 2, 5, 10) if m * power >= value)


def line_chart(
    series: Mapping[str, Sequence[int | None]], x_labels: Mapping[int, str]
) -> LineChart:
    """Lay out ``series`` (equal lengths, oldest value first) on a shared y axis from 0.

    ``x_labels`` maps value indexes to the labels shown under them.
    """
    count = max((len(v) for v in series.values()), default=0)
    known = [v for values in series.values() for v in values if v is not None]
    step_value = nice_step(max(known, default=0) / Y_STEPS)
    top_value = step_value * Y_STEPS
    right, bottom = WIDTH - RIGHT, HEIGHT - BOTTOM
    step = (right - LEFT) / max(count - 1, 1)

    def x(index: int) -> float:
        return round(LEFT + index * step, 1)

    def y(value: float) -> float:
        return round(bottom - value / top_value * (bottom - TOP), 1)

    lines = []
    for name, values in series.items():
        runs: list[list[tuple[float, float]]] = [[]]
        for index, value in enumerate(values):
            if value is None:
                runs.append([])
            else:
                runs[-1].append((x(index), y(value)))
        lines.append(
            Line(
                name=name,
                polylines=[" ".join(f"{px},{py}" for px, py in r) for r in runs if len(r) > 1],
                points=[r[0] for r in runs if len(r) == 1],
            )
        )
    return LineChart(
        width=WIDTH,
        height=HEIGHT,
        left=LEFT,
        right=right,
        top=TOP,
        bottom=bottom,
        lines=lines,
        y_ticks=[Tick(y(step_value * n), str(step_value * n)) for n in range(Y_STEPS + 1)],
        x_ticks=[Tick(x(i), label) for i, label in sorted(x_labels.items())],
        empty=not known,
    )
