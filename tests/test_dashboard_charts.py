"""The overview chart's rates (Redis counter samples) and geometry (SVG layout)."""

from __future__ import annotations

import json

import pytest

from syncqueue_tasks.dashboard import charts, rates
from syncqueue_tasks.ops import metrics
from syncqueue_tasks.redis_client import get_redis, key


@pytest.fixture
def clean_counters() -> None:
    get_redis().delete(key("metrics"), rates.samples_key())


@pytest.mark.integration
def test_a_counter_reset_or_a_missing_sample_is_a_gap_never_a_zero(clean_counters: None) -> None:
    minute = 29_000_000  # minutes since the epoch; far from now, so nothing else samples it
    metrics.record_outcomes(completed=50, retried=0, failed=0)
    rates.sample(minute * 60)
    metrics.record_outcomes(completed=5, retried=0, failed=0)
    rates.sample((minute + 1) * 60 + 3)
    get_redis().delete(key("metrics"))  # Redis lost the totals (a restart without persistence)
    metrics.record_outcomes(completed=2, retried=0, failed=0)
    rates.sample((minute + 2) * 60)
    # minute + 3: nobody sampled
    rates.sample((minute + 4) * 60)
    rates.sample((minute + 5) * 60)
    completed = rates.rates((minute + 6) * 60).per_minute["completed"]
    assert completed[-6:] == [5, None, None, None, 0, None]
    assert len(completed) == rates.WINDOW_MINUTES


@pytest.mark.integration
def test_samples_older_than_the_keep_window_are_pruned(clean_counters: None) -> None:
    minute = 29_000_000
    rates.sample(minute * 60)
    rates.sample((minute + rates.KEEP_MINUTES + 1) * 60)
    fields = {int(f) for f in get_redis().hkeys(rates.samples_key())}
    assert fields == {minute + rates.KEEP_MINUTES + 1}
    stored = json.loads(get_redis().hget(rates.samples_key(), str(min(fields))))  # type: ignore[arg-type]
    assert set(stored) == set(metrics.COUNTERS)
    assert 0 < get_redis().ttl(rates.samples_key()) <= rates.KEEP_MINUTES * 60


@pytest.mark.unit
def test_unknown_values_break_the_line_and_lone_values_become_points() -> None:
    chart = charts.line_chart(
        {"completed": [1, 2, None, 7, None, 3, 4], "failed": [None] * 7}, {0: "a", 6: "b"}
    )
    completed, failed = chart.lines
    assert len(completed.polylines) == 2 and len(completed.points) == 1
    assert failed.polylines == [] and failed.points == []
    assert [t.label for t in chart.y_ticks] == ["0", "2", "4", "6", "8"]  # whole numbers
    assert chart.y_ticks[0].at == chart.bottom and chart.y_ticks[-1].at == chart.top
    first = completed.polylines[0].split()[0]
    assert first == f"{chart.left}.0,{chart.bottom - (chart.bottom - chart.top) / 8}"
    assert [t.label for t in chart.x_ticks] == ["a", "b"] and not chart.empty
    assert charts.line_chart({"completed": [None, None]}, {}).empty


@pytest.mark.unit
@pytest.mark.parametrize(
    ("value", "step"), [(0, 1), (1, 1), (1.5, 2), (3, 5), (7, 10), (12, 20), (450, 500)]
)
def test_y_steps_are_one_two_or_five_times_a_power_of_ten(value: float, step: int) -> None:
    assert charts.nice_step(value) == step
