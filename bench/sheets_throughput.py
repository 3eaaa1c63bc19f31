"""The Google Sheets writer against the quota-enforcing fake, before and after issue 11.

Run from the repository root (needs PostgreSQL and Redis as for the tests)::

    git worktree add /tmp/sq-before 63ee6d7            # the writer before, once
    .venv/bin/python bench/sheets_throughput.py --before /tmp/sq-before [--factor 5]

One fake Sheets server enforces Google's quota (60 reads and 60 writes per rolling minute per
account, 429 like Google) on a clock ``--factor`` times faster than real time; each writer's
limiter runs on the same scaled minute. Each version runs in a process of its own, with its own
code (``--before``: a checkout of the old writer) and a fresh database, through the real queue
and ``batch.process``:

- backlog: 50,000 changes over 10,000 records enqueued, then drained (or stopped after
  ``--minutes`` quota minutes): changes per quota minute, API requests per 1,000 changes, 429s;
- idle: one change at a time, ``process_batch`` started 0.2 s after it (the kick's delay):
  latency from enqueue to written and recorded, p50 / p99;
- verify (after only; there was none before): a 100,000-row tab compared with 100,000 synced
  records, time and requests; then 1% of its cells edited and repaired.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

RECORDS, CHANGES = 10_000, 50_000
VERIFY_ROWS = 100_000
ADMIN_URL = os.environ.get(
    "SYNCQUEUE_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("SYNCQUEUE_REDIS_URL", "redis://127.0.0.1:6379/0")
SID = "bench-sheet"


# ----------------------------------------------------------------------------- child side


def _writer(factor: float, prefix: str) -> Any:
    """This version's Sheets writer, its limiter on the fake's scaled minute."""
    from dataclasses import fields

    from syncqueue_tasks.celery.batch import writer_context
    from syncqueue_tasks.writers.sheets import GoogleSheetsWriter, SheetsTuning

    names = {f.name for f in fields(SheetsTuning)}
    minute = 60.0 / factor
    if "quota_window" in names:  # after: one budget per account, reads and writes
        tuning = SheetsTuning(key_prefix=prefix, quota_window=minute)
    else:  # before: a sliding window of writes only
        tuning = SheetsTuning(key_prefix=prefix, rate_window=minute)
    return GoogleSheetsWriter.from_context(writer_context(), tuning=tuning)


def _backlog(factor: float, prefix: str, minutes: float) -> dict[str, Any]:
    from syncqueue_tasks.celery import batch
    from syncqueue_tasks.store import queue

    changes = []
    for k in range(CHANGES):
        record = f"rec{k % RECORDS:05d}"
        first = k < RECORDS
        payload = (
            {"name": f"name-{k}", "status": "new", "amount": k}
            if first
            else {
                "status": f"s{k}",
                "amount": k,
            }
        )
        changes.append(
            {
                "action": "CREATE" if first else "UPDATE",
                "model": "Request",
                "record_id": record,
                "payload": payload,
            }
        )
    for start in range(0, CHANGES, 5000):
        queue.enqueue_many(changes[start : start + 5000])
    writer = _writer(factor, prefix)
    started = time.time()
    deadline = time.monotonic() + minutes * 60 / factor
    batches = 0
    while time.monotonic() < deadline:
        report = batch.process(writer, batch_size=25, time_budget=5)
        batches += report.batches
        stats = queue.get_queue_stats()
        if stats["pending"] == 0 and stats["processing"] == 0:
            break
    ended = time.time()
    stats = queue.get_queue_stats()
    writer.close()
    return {"started": started, "ended": ended, "completed": stats["completed"], "batches": batches}


def _idle(factor: float, prefix: str, samples: int) -> dict[str, Any]:
    from syncqueue_tasks.celery import batch
    from syncqueue_tasks.store import queue

    writer = _writer(factor, prefix)
    queue.enqueue("CREATE", "Request", "idle", {"name": "warm"})
    batch.process(writer, batch_size=25, time_budget=5)
    latencies = []
    started = time.time()
    for n in range(samples):
        time.sleep(60.0 / factor / 20)  # idle: a few quota seconds between changes
        t0 = time.monotonic()
        queue.enqueue("UPDATE", "Request", "idle", {"status": f"s{n}"})
        time.sleep(0.2)  # the kick's delay before process_batch starts
        batch.process(writer, batch_size=25, time_budget=5)
        latencies.append(time.monotonic() - t0)
    writer.close()
    return {"started": started, "ended": time.time(), "latencies": latencies}


def _verify(factor: float, prefix: str) -> dict[str, Any]:
    from syncqueue_tasks.celery.verify import verify

    writer = _writer(factor, prefix)
    out = {}
    for label, repair in (("read", False), ("repair", True)):
        t0 = time.time()
        report = verify("Request", repair=repair, writer=writer).reports[0]
        out[label] = {
            "seconds": time.time() - t0,
            "reads": report.reads,
            "writes": report.writes,
            "findings": len(report.findings),
            "repaired": report.repaired,
            "rows": report.rows,
        }
    writer.close()
    return out


def child(args: argparse.Namespace) -> None:
    """Run one measurement with the code at ``args.code`` and print it as JSON."""
    sys.path.insert(0, args.code)
    prefix = f"bench:{uuid.uuid4().hex}"
    if args.child == "backlog":
        result = _backlog(args.factor, prefix, args.minutes)
    elif args.child == "idle":
        result = _idle(args.factor, prefix, args.samples)
    else:
        result = _verify(args.factor, prefix)
    print(json.dumps(result))


# ----------------------------------------------------------------------------- parent side


def _database(code: str) -> tuple[str, str]:
    """A fresh database migrated by ``code``'s migrations; returns (name, URL)."""
    import psycopg

    name = f"sheets_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    url = f"{url}/{name}"
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=code,
        env={**os.environ, "DATABASE_URL": url},
        check=True,
        capture_output=True,
    )
    return name, url


def _drop(name: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _run(mode: str, code: str, fake_url: str, db_url: str, args: argparse.Namespace) -> Any:
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "SYNCQUEUE_SHEETS_API_URL": fake_url,
        "SYNCQUEUE_SHEETS_SPREADSHEET_ID": SID,
        "SYNCQUEUE_SHEETS_TABS": "Request=Requests",
        "SYNCQUEUE_REDIS_URL": REDIS_URL,
        "SYNCQUEUE_MODELS": "Request",
        "CELERY_QUEUE": f"sheets-bench-{uuid.uuid4().hex[:8]}",
        "SYNCQUEUE_BACKOFF_BASE_SECONDS": "0.2",
        "SYNCQUEUE_BACKOFF_MAX_SECONDS": "2",
        "SYNCQUEUE_MAX_RETRIES": "100",
    }
    for name in ("SYNCQUEUE_SHEETS_CREDENTIALS_FILE", "GOOGLE_APPLICATION_CREDENTIALS"):
        env.pop(name, None)
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        mode,
        "--code",
        code,
        "--factor",
        str(args.factor),
        "--minutes",
        str(args.minutes),
        "--samples",
        str(args.samples),
    ]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=code)
    if out.returncode:
        raise SystemExit(f"{mode} with {code} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _calls(fake: Any, started: float, ended: float) -> tuple[int, int, int]:
    """(requests, of them reads, 429 answers) the fake received in [started, ended]."""
    with fake.lock:
        calls = [c for c in fake.calls if started <= c.at <= ended and c.kind != "oauth.token"]
    from fake_sheets import READ_KINDS

    reads = sum(1 for c in calls if c.kind in READ_KINDS)
    return len(calls), reads, sum(1 for c in calls if c.status == 429)


def _seed_verify(fake: Any, db_url: str) -> None:
    """A 100,000-row tab and the 100,000 records it should show."""
    import psycopg

    rows = [["id", "name", "status", "amount"]]
    rows += [[f"v{n:06d}", f"name-{n}", "open", n] for n in range(VERIFY_ROWS)]
    fake.add_spreadsheet(SID, {"Requests": rows})
    for n in range(0, VERIFY_ROWS, 100):  # 1% edited by people
        fake.set_cell(SID, "Requests", n + 2, 3, "edited")
    plain = db_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO sync_record (model, record_id, fields, versions, created_id,
                                        touched_id, synced_at)
               SELECT 'Request', 'v' || lpad(g::text, 6, '0'),
                      jsonb_build_object('name', 'name-' || g, 'status', 'open', 'amount', g),
                      jsonb_build_object('name', '01', 'status', '01', 'amount', '01'),
                      '01', '01', now()
               FROM generate_series(0, %s) AS g""",
            (VERIFY_ROWS - 1,),
        )


def parent(args: argparse.Namespace) -> None:
    from fake_sheets import FakeSheets, Quota

    versions = [("after", str(ROOT))]
    if args.before:
        versions.insert(0, ("before", str(Path(args.before).resolve())))
    fake = FakeSheets(quota=Quota(time_factor=args.factor)).start()
    results: dict[str, dict[str, Any]] = {}
    try:
        for label, code in versions:
            results[label] = {}
            for mode in ("backlog", "idle"):
                fake.add_spreadsheet(SID, {"Requests": [["id", "name", "status", "amount"]]})
                fake.quota.reset()  # type: ignore[union-attr]
                name, url = _database(code)
                try:
                    out = _run(mode, code, fake.url, url, args)
                finally:
                    _drop(name)
                out["calls"] = _calls(fake, out["started"], out["ended"])
                results[label][mode] = out
                print(f"{label} {mode}: done", file=sys.stderr)
        fake.quota.reset()  # type: ignore[union-attr]
        name, url = _database(str(ROOT))
        try:
            _seed_verify(fake, url)
            results["after"]["verify"] = _run("verify", str(ROOT), fake.url, url, args)
        finally:
            _drop(name)
    finally:
        fake.stop()
    _print(results, args)


def _print(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    minute = 60.0 / args.factor
    print(f"Quota-enforcing fake, clock x{args.factor:g} (a quota minute = {minute:g} s real)")
    print(
        f"{'writer':<8} {'changes':>8} {'quota min':>9} {'changes/min':>12} {'req/1000':>9} "
        f"{'reads':>6} {'429s':>5} {'batches':>8} {'idle p50':>9} {'idle p99':>9}"
    )
    for label, r in results.items():
        b, idle = r["backlog"], r["idle"]
        spent = (b["ended"] - b["started"]) / minute
        requests, reads, refused = b["calls"]
        lat = sorted(idle["latencies"])
        p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
        print(
            f"{label:<8} {b['completed']:>8} {spent:>9.2f} {b['completed'] / spent:>12,.0f} "
            f"{1000 * requests / max(1, b['completed']):>9.1f} {reads:>6} {refused:>5} "
            f"{b['batches']:>8} {statistics.median(lat):>8.2f}s {p99:>8.2f}s"
        )
        print(f"         idle: {idle['calls'][0]} requests, {idle['calls'][2]} answered 429")
    v = results["after"]["verify"]
    for label in ("read", "repair"):
        x = v[label]
        print(
            f"verify {label:<6} {x['rows']:,} rows: {x['seconds']:.1f}s, {x['reads']} read(s), "
            f"{x['writes']} write(s), {x['findings']:,} finding(s), {x['repaired']:,} repaired"
        )
    print("verify before: none (the writer had no verify)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="a checkout of the writer before (commit 63ee6d7)")
    parser.add_argument("--factor", type=float, default=5.0)
    parser.add_argument("--minutes", type=float, default=4.0, help="quota minutes at most")
    parser.add_argument("--samples", type=int, default=40, help="idle changes")
    parser.add_argument("--child", choices=["backlog", "idle", "verify"])
    parser.add_argument("--code", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
