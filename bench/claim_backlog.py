"""Claim latency over a backlog that cannot be claimed yet, against a claim on an empty queue.

Run from the repository root (the tests' PostgreSQL; ``SYNCQUEUE_TEST_ADMIN_URL`` overrides)::

    .venv/bin/python bench/claim_backlog.py            # 20,000 and 100,000 rows, ~1 minute

Two backlogs a claim must walk past without claiming anything from them:

- writer down: every record's head waits out a backoff (a failed attempt), and the record's
  other changes are queued behind it;
- hot record: one record has a change in flight (PROCESSING) and the whole backlog behind it;
  25 claimable changes of other records come after the backlog.

Each is timed as the median of 15 ``queue.dequeue(25)`` (claims rolled back between runs by
putting the claimed rows back), next to the median claim on an empty queue in the same run.
The script makes and drops its own database.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from alembic import command  # noqa: E402
from dbutil import alembic_config, create_database, drop_database, use_database  # noqa: E402
from sqlalchemy import text  # noqa: E402

from syncqueue_tasks import queue  # noqa: E402
from syncqueue_tasks.db import dispose_engine, get_engine  # noqa: E402

SAMPLES = 15
FILL = """
    INSERT INTO sync_queue (id, origin_id, position, action, model, record_id, payload)
    SELECT k.id, k.id, k.id, 'UPDATE', 'Request', :prefix || (g % :records), '{}'
    FROM generate_series(1, :n) AS g,
         LATERAL (SELECT :idp || lpad(g::text, 24, '0') AS id) AS k
"""


def run(statement: str, **params: object) -> None:
    with get_engine().begin() as conn:
        conn.execute(text(statement), params)


def median_claim(expected: int) -> float:
    """Median seconds of ``dequeue(25)``; claimed rows go back to PENDING after each."""
    times = []
    for _ in range(SAMPLES):
        start = time.perf_counter()
        items = queue.dequeue(25)
        times.append(time.perf_counter() - start)
        if len(items) != expected:
            raise RuntimeError(f"claimed {len(items)}, expected {expected}")
        run(
            "UPDATE sync_queue SET status = 'PENDING', claim_token = NULL, claimed_at = NULL "
            "WHERE id = ANY(:ids)",
            ids=[i.id for i in items],
        )
    return statistics.median(times)


def writer_down(n: int) -> None:
    run(FILL, prefix="r", records=n // 20, n=n, idp="01")
    run("""UPDATE sync_queue AS s SET available_at = now() + interval '1 hour', retries = 1
           FROM (SELECT min(position) AS p FROM sync_queue GROUP BY model, record_id) AS h
           WHERE s.position = h.p""")


def hot_record(n: int) -> None:
    run(FILL, prefix="hot", records=1, n=n, idp="01")
    run("UPDATE sync_queue SET status = 'PROCESSING', claimed_at = now() WHERE id = :i",
        i="01" + "1".zfill(24))  # fmt: skip
    run(FILL, prefix="cold", records=25, n=25, idp="02")  # after the backlog


def main() -> int:
    name = "sq_bench_claim_backlog"
    drop_database(name)
    use_database(create_database(name))
    try:
        command.upgrade(alembic_config(), "head")
        empty = median_claim(0)
        print(f"claim on an empty queue: {empty * 1000:.1f} ms (median of {SAMPLES})")
        print(f"{'backlog':<40} {'claim':>10} {'vs empty':>9}")
        for n in (20_000, 100_000):
            for label, fill, expected in (
                (f"writer down, {n:,} rows / {n // 20:,} records", writer_down, 0),
                (f"hot record in flight, {n:,} rows behind it", hot_record, 25),
            ):
                run("TRUNCATE sync_queue")
                fill(n)
                run("ANALYZE sync_queue")
                took = median_claim(expected)
                print(f"{label:<40} {took * 1000:>8.1f} ms {took / empty:>8.1f}x")
    finally:
        dispose_engine()
        drop_database(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
