"""The account-wide limiter and the spreadsheet lock of ``writers.flow``, against real Redis.

Decisions and returned waits are asserted (with a few ms of slack for the Redis round trips),
never how long something took: the limiter reserves slots on Redis' clock, so a test can read
the whole schedule without sleeping.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from dbutil import REDIS_URL
from redis import Redis

from syncqueue_tasks.settings import Settings
from syncqueue_tasks.writers.flow import AccountLimiter, Budget, SpreadsheetLock

pytestmark = pytest.mark.integration

SLACK = 0.25  # seconds the machine may stall between two reservations


@pytest.fixture
def redis() -> Iterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def prefix(redis: Redis) -> Iterator[str]:
    """A key prefix of the test's own; its keys are removed afterwards."""
    key_prefix = f"test:flow:{uuid.uuid4().hex}"
    yield key_prefix
    keys = list(redis.scan_iter(f"{key_prefix}:*"))
    if keys:
        redis.delete(*keys)


def redis_now(redis: Redis) -> float:
    """Redis' clock (the limiter's), in seconds."""
    seconds, micros = redis.time()
    return seconds + micros / 1_000_000


def limiter(redis: Redis, prefix: str, account: str = "sa@x", **budget: float) -> AccountLimiter:
    made = Budget(**budget)  # type: ignore[arg-type]
    return AccountLimiter(redis, account, {"read": made, "write": made}, key_prefix=prefix)


def test_budget_paces_so_no_window_holds_more_than_the_quota() -> None:
    budget = Budget(quota=60, window=60.0, margin=2.0, burst=3)
    assert budget.interval == pytest.approx(62 / 58)
    assert budget.tolerance == pytest.approx(2 * 62 / 58)
    # The GCRA admits at most floor((t + tolerance) / interval) + 1 in any span t.
    assert int((62 - 1e-9 + budget.tolerance) / budget.interval) + 1 == 60
    for bad in ({"quota": 0}, {"burst": 0}, {"burst": 61}, {"window": 0}, {"margin": -1}):
        with pytest.raises(ValueError):
            Budget(**bad)  # type: ignore[arg-type]


def test_slots_are_paced_through_the_window_not_burst(redis: Redis, prefix: str) -> None:
    paced = limiter(redis, prefix, quota=60, window=60.0, margin=0.0, burst=1)
    before = redis_now(redis)
    waits = [paced.reserve("write", 1000.0, spreadsheet=f"s{i}") for i in range(61)]
    elapsed = redis_now(redis) - before  # each wait is counted from its own call
    for i, wait in enumerate(waits):
        assert i - elapsed <= wait <= i, (i, wait)  # one second apart, the 61st a minute later
    refused = paced.reserve("write", 10.0, spreadsheet="late")
    assert -61 <= refused <= -61 + elapsed + SLACK  # nothing reserved: the real wait, negated
    assert paced.reserve("read", 0.0, "s0") == 0.0  # reads: a budget of their own


def test_a_burst_is_granted_at_once_then_pacing_starts(redis: Redis, prefix: str) -> None:
    bursty = limiter(redis, prefix, quota=10, window=90.0, margin=0.0, burst=3)  # interval 11.25
    waits = [bursty.reserve("write", 100.0, spreadsheet=f"s{i}") for i in range(5)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert 11.25 - SLACK <= waits[3] <= 11.25 and 22.5 - SLACK <= waits[4] <= 22.5


def test_the_budget_is_shared_per_account_across_instances(redis: Redis, prefix: str) -> None:
    other_connection = Redis.from_url(REDIS_URL)
    try:
        first = limiter(redis, prefix, quota=60, window=60.0, margin=0.0, burst=1)
        second = limiter(other_connection, prefix, quota=60, window=60.0, margin=0.0, burst=1)
        assert first.reserve("write", 0.0, "a") == 0.0
        assert 1 - SLACK <= second.reserve("write", 5.0, "b") <= 1  # queued behind the first
        stranger = limiter(redis, prefix, "other@x", quota=60, window=60.0, margin=0.0, burst=1)
        assert stranger.reserve("write", 0.0, "a") == 0.0  # another account: its own budget
    finally:
        other_connection.close()


def test_spreadsheets_of_one_account_take_turns(redis: Redis, prefix: str) -> None:
    fair = limiter(redis, prefix, quota=60, window=60.0, margin=0.0, burst=1)
    assert fair.reserve("write", 100.0, "busy") == 0.0
    assert 1 - SLACK <= fair.reserve("write", 100.0, "busy") <= 1  # holds a future slot now
    held = fair.reserve("write", 100.0, "busy")  # one future slot per spreadsheet
    assert -2 <= held <= -2 + SLACK
    assert 2 - SLACK <= fair.reserve("write", 100.0, "quiet") <= 2  # next in line: the other one
    assert -3 <= fair.reserve("write", 100.0, "busy") <= -3 + SLACK


def test_wait_for_sleeps_to_its_slot_or_answers_the_real_wait(redis: Redis, prefix: str) -> None:
    sleeps: list[float] = []
    budget = Budget(quota=60, window=60.0, margin=0.0, burst=1)
    paced = AccountLimiter(
        redis, "sa@x", {"read": budget, "write": budget}, key_prefix=prefix, sleep=sleeps.append
    )
    assert paced.wait_for("write", 5.0, "a") == 0.0 and sleeps == []
    assert paced.wait_for("write", 5.0, "b") == 0.0
    assert len(sleeps) == 1 and 1 - SLACK <= sleeps[0] <= 1  # slept until its slot
    expected = paced.wait_for("write", 0.5, "c")  # the next slot is 2 s away: not reserved
    assert 2 - SLACK <= expected <= 2 and len(sleeps) == 1
    assert 2 - SLACK <= paced.reserve("write", 5.0, "c") <= 2  # still free for whoever comes


def test_from_config_reads_the_quota_rows(redis: Redis, prefix: str) -> None:
    settings = Settings.from_env()
    made = AccountLimiter.from_config(redis, "sa@x", settings.sheets, prefix)
    assert made.budgets["read"].quota == settings.sheets.read_quota == 60
    assert made.budgets["write"].quota == settings.sheets.write_quota == 60
    assert made.budgets["write"].margin == settings.sheets.quota_margin
    assert made.key == f"{prefix}:quota:sa@x"


# ----------------------------------------------------------------------------- the lock


def test_a_waiter_is_told_the_holders_expected_wait(redis: Redis, prefix: str) -> None:
    holder = SpreadsheetLock(redis, f"{prefix}:lock:s", ttl=120)
    waiter = SpreadsheetLock(redis, f"{prefix}:lock:s", ttl=120)
    assert holder.acquire(0)
    assert not waiter.expect(5)  # only the holder publishes
    assert holder.expect(30)
    wait = waiter.wait_for(1.0)  # 30 s > 1 s: gives up at once with the real wait
    assert 30 - SLACK <= wait <= 30
    assert 30 - SLACK <= waiter.expected_wait() <= 30
    holder.release()
    assert waiter.expected_wait() == 0.0
    assert waiter.wait_for(0) == 0.0 and waiter.held
    assert 120 - SLACK <= holder.expected_wait() <= 120  # no expectation published: the TTL
    waiter.release()
    assert redis.get(waiter.eta_key) is None


def test_without_an_expectation_a_waiter_polls_then_answers_the_ttl(
    redis: Redis, prefix: str
) -> None:
    holder = SpreadsheetLock(redis, f"{prefix}:lock:t", ttl=10)
    waiter = SpreadsheetLock(redis, f"{prefix}:lock:t", ttl=10)
    assert holder.acquire(0)
    wait = waiter.wait_for(0.05)
    assert 10 - 0.5 <= wait <= 10 and not waiter.held
    holder.release()
    assert waiter.acquire(0.05)
    waiter.release()
