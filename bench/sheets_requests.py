"""API requests the Google Sheets writer makes per 1,000 changes, measured on the fake server.

Run from the repository root (needs Redis, ``SYNCQUEUE_REDIS_URL`` or redis://127.0.0.1:6379/0)::

    .venv/bin/python bench/sheets_requests.py

Prints requests per 1,000 changes spread over 100 and over 1,000 records at batch size 25
(``writer.write`` called directly on in-memory ``QueueItem`` s), the ratio against one request
per change, and the wall time to write 10,000 changes. Each run checks the sheet's final
content against the changes.
"""

from __future__ import annotations

import os
import random
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from redis import Redis  # noqa: E402

from syncqueue_tasks.models import QueueItem, SyncAction  # noqa: E402
from syncqueue_tasks.settings import get_settings  # noqa: E402
from syncqueue_tasks.writers.base import OutcomeKind  # noqa: E402
from syncqueue_tasks.writers.sheets import GoogleSheetsWriter, SheetsTuning  # noqa: E402
from tests.fake_sheets import WRITE_KINDS, FakeSheets  # noqa: E402

BATCH = 25
FIELDS = ("name", "status", "amount", "note")


def changes(n: int, records: int, rng: random.Random) -> list[QueueItem]:
    """``n`` changes to ``records`` records: a CREATE first, then UPDATEs of 1-2 fields."""
    created: set[str] = set()
    out = []
    for k in range(n):
        record_id = f"rec{rng.randrange(records):05d}"
        if record_id in created:
            action = SyncAction.UPDATE
            payload = {f: f"{f}-{k}" for f in rng.sample(FIELDS, rng.randint(1, 2))}
        else:
            created.add(record_id)
            action = SyncAction.CREATE
            payload = {f: f"{f}-{k}" for f in FIELDS}
        out.append(
            QueueItem(
                f"{k:08d}",
                action,
                "Request",
                record_id,
                None,
                payload,
                0,
                3,
                datetime.now(UTC),
                uuid.uuid4(),
            )
        )
    return out


def expected(items: list[QueueItem]) -> dict[str, dict[str, Any]]:
    state: dict[str, dict[str, Any]] = {}
    for i in items:
        state.setdefault(i.record_id, {"id": i.record_id}).update(i.payload)
    return state


def run(fake: FakeSheets, prefix: str, n: int, records: int, seed: int) -> tuple[int, int, float]:
    """Write ``n`` changes in batches; return (requests, write requests, seconds)."""
    sid = f"bench-{uuid.uuid4().hex[:8]}"
    fake.add_spreadsheet(sid, {"Requests": [["id", *FIELDS]]})
    os.environ["SYNCQUEUE_SHEETS_SPREADSHEET_ID"] = sid
    get_settings.cache_clear()
    writer = GoogleSheetsWriter(
        get_settings(), tuning=SheetsTuning(key_prefix=prefix, rate_limit=10**9)
    )
    items = changes(n, records, random.Random(seed))
    fake.reset_calls()
    started = time.perf_counter()
    try:
        for start in range(0, n, BATCH):
            outcomes = writer.write(items[start : start + BATCH])
            bad = [o for o in outcomes.values() if o.kind is not OutcomeKind.DONE]
            if bad:
                raise SystemExit(f"unexpected outcome: {bad[0]}")
    finally:
        writer.close()
    seconds = time.perf_counter() - started
    rows = {r["id"]: r for r in fake.records(sid, "Requests")}
    want = expected(items)
    if {k: {f: rows[k].get(f, "") for f in v} for k, v in want.items() if k in rows} != want:
        raise SystemExit("sheet content does not match the changes")
    if len(rows) != len(want):
        raise SystemExit(f"{len(rows)} rows for {len(want)} records")
    return fake.count(), fake.count(WRITE_KINDS), seconds


def main() -> None:
    fake = FakeSheets().start()
    os.environ.update(
        SYNCQUEUE_SHEETS_API_URL=fake.url,
        SYNCQUEUE_SHEETS_TABS="Request=Requests",
        SYNCQUEUE_REDIS_URL=os.environ.get("SYNCQUEUE_REDIS_URL", "redis://127.0.0.1:6379/0"),
    )
    prefix = f"bench:sheets:{uuid.uuid4().hex}"
    try:
        print(f"batch size {BATCH}; fake Sheets server at {fake.url}")
        for records in (100, 1000):
            total, writes, _ = run(fake, prefix, 1000, records, seed=records)
            print(
                f"1,000 changes over {records:>5,} records: {total:4d} requests "
                f"({writes} writes, {total - writes} reads) = {total / 1000:.3f} per change, "
                f"{1000 / total:.1f}x fewer than one request per change; "
                f"{writes / 55:.1f} min of the default 55 writes/min quota"
            )
        total, writes, seconds = run(fake, prefix, 10_000, 1000, seed=7)
        print(
            f"10,000 changes over 1,000 records: {total} requests ({writes} writes) "
            f"in {seconds:.2f} s wall ({10_000 / seconds:,.0f} changes/s, "
            f"{seconds / total * 1000:.1f} ms per request incl. Redis flow control)"
        )
    finally:
        fake.stop()
        redis = Redis.from_url(os.environ["SYNCQUEUE_REDIS_URL"])
        keys = list(redis.scan_iter(f"{prefix}:*"))
        if keys:
            redis.delete(*keys)
        redis.close()


if __name__ == "__main__":
    main()
