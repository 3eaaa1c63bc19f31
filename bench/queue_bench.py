"""Queue throughput and claim latency: ``syncqueue_tasks.queue`` against bare psycopg 3.

Run from the repository root (needs the PostgreSQL server of the tests, by default
``postgresql://postgres@127.0.0.1:5432/postgres``; ``SYNCQUEUE_TEST_ADMIN_URL`` overrides it)::

    .venv/bin/python bench/queue_bench.py            # full run, about 2-4 minutes
    .venv/bin/python bench/queue_bench.py --quick    # smaller sizes, under a minute

The script creates a throwaway database, migrates it with Alembic, points ``DATABASE_URL`` at
it, and drops it at the end. Each operation is timed twice: through the package (``ours``:
SQLAlchemy engine, validation, ``QueueItem`` objects) and as bare psycopg 3 (``bare``: the
same statements, with the text of ``syncqueue_tasks/sql.py``, one persistent connection per
process, no SQLAlchemy). Both sides make their ids with ``new_id`` and their JSON with
``json.dumps``; a bare store runs what ``queue`` runs for one (``LOCK_RECORDS`` first where
``sql.py`` has it, then the INSERT, one transaction).

1. ``queue.enqueue``, one transaction each;
2. ``queue.enqueue_many`` in batches of 1,000;
3. drain: ``dequeue(100)`` + ``mark_complete_many`` in 1, 2 and 4 spawned processes;
4. claim latency: median ``dequeue(100)`` on a table of PENDING rows, then again after adding
   many COMPLETED rows (one ``INSERT ... SELECT generate_series``, ids sorting before the
   pending ones) and ``ANALYZE``; also the bare CLAIM unprepared (planned for its parameters
   each time) and the shared buffers one CLAIM touches (EXPLAIN), the load-independent view.

The table is truncated between phases and every timed run is preceded by a warm-up (which
also lets psycopg prepare the statements on both sides). Built for a shared, noisy machine:
ours and bare take turns chunk by chunk (1, 2) or load by load (3) or claim by claim (4), so
that a change in load hits both. The code under test is identified by a digest of its files;
the exit status is 1 if those files changed during the run (others may be editing them).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import platform
import re
import statistics
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import psycopg  # noqa: E402
import sqlalchemy  # noqa: E402
from alembic import command  # noqa: E402
from dbutil import alembic_config, create_database, drop_database, use_database  # noqa: E402
from sqlalchemy.dialects.postgresql import psycopg as sa_psycopg  # noqa: E402

from syncqueue_tasks import queue, sql  # noqa: E402
from syncqueue_tasks.db import dispose_engine  # noqa: E402
from syncqueue_tasks.ids import new_id  # noqa: E402

MODEL = "Request"
SOURCES = (
    "syncqueue_tasks/queue.py",
    "syncqueue_tasks/sql.py",
    "syncqueue_tasks/db.py",
    "migrations/versions/0001_sync_queue.py",
)
CLAIM_BATCH = 100
MANY_BATCH = 1000
ENQUEUE_CHUNK = 100  # enqueue: ours and bare take turns every this many rows
PROCESS_COUNTS = (1, 2, 4)
BARRIER_TIMEOUT = 300.0

TARGET_ENQUEUE = 0.8
TARGET_MANY = 0.7
TARGET_DRAIN = 0.7
TARGET_CLAIM = 1.5


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the full run and ``--quick``."""

    enqueue: int
    many: int
    drain: int
    completed: int
    latency_samples: int
    drain_segments: int  # drains: each side's items come in this many alternating loads


FULL = Sizes(
    enqueue=5_000,
    many=100_000,
    drain=100_000,
    completed=1_000_000,
    latency_samples=60,
    drain_segments=4,
)
QUICK = Sizes(
    enqueue=1_000,
    many=20_000,
    drain=20_000,
    completed=200_000,
    latency_samples=30,
    drain_segments=2,
)


# --- bare statements: the text of syncqueue_tasks/sql.py with psycopg placeholders ----------

_BIND = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def bare_sql(statement: Any) -> str:
    """``:name`` -> ``%(name)s``; checked against what SQLAlchemy itself sends to psycopg."""
    converted = _BIND.sub(r"%(\1)s", statement.text)
    sent = str(statement.compile(dialect=sa_psycopg.dialect()))
    if converted != sent:
        raise RuntimeError("bare statement text differs from SQLAlchemy's")
    return converted


# enqueue runs sql.INSERT_ONE (scalar parameters) where sql.py has it, else sql.INSERT, the
# one statement for one or many changes (arrays); enqueue_many runs INSERT_MANY / INSERT.
ONE_AS_ARRAYS = not hasattr(sql, "INSERT_ONE")
INSERT_ONE = bare_sql(sql.INSERT if ONE_AS_ARRAYS else sql.INSERT_ONE)
INSERT_MANY = bare_sql(sql.INSERT_MANY if hasattr(sql, "INSERT_MANY") else sql.INSERT)
CLAIM = bare_sql(sql.CLAIM)
COMPLETE = bare_sql(sql.COMPLETE)
# Where sql.py has LOCK_RECORDS, queue stores run it first, in the same transaction (a
# per-record advisory lock against concurrent claims): the bare store does the same.
LOCK_RECORDS = bare_sql(sql.LOCK_RECORDS) if hasattr(sql, "LOCK_RECORDS") else None
# Where sql.py has LOCK_CLAIMED_RECORDS, mark_complete_many runs it before COMPLETE, in the
# same transaction (marks and stores serialize per record): the bare completion does the same.
LOCK_CLAIMED = bare_sql(sql.LOCK_CLAIMED_RECORDS) if hasattr(sql, "LOCK_CLAIMED_RECORDS") else None
# Where sql.py has RELEASE_OVERTAKEN, dequeue runs it after CLAIM, in the same transaction (the
# recheck against stores that committed during the claim): the bare claim does the same.
RELEASE_OVERTAKEN = bare_sql(sql.RELEASE_OVERTAKEN) if hasattr(sql, "RELEASE_OVERTAKEN") else None

# Setup only (never timed): PENDING rows spread over many records, ids '01' + 24 digits
# (ULIDs made today also start with "01"); COMPLETED history with ids '0' + 25 digits, which
# sort before them. {pc}/{pv}: further required id-like columns (see Bench), set to the id.
FILL_PENDING = """
    INSERT INTO sync_queue (id, action, model, record_id, payload{pc})
    SELECT k.id, 'UPDATE', %(model)s, 'rec' || floor(random() * %(records)s)::int,
           jsonb_build_object('name', 'name-' || g, 'status', 'open', 'amount', g,
                              'note', 'benchmark row'){pv}
    FROM generate_series(1, %(n)s) AS g,
         LATERAL (SELECT '01' || lpad((%(start)s + g)::text, 24, '0') AS id) AS k
"""
FILL_COMPLETED = """
    INSERT INTO sync_queue (id, action, model, record_id, payload, status, created_at,
                            available_at, processed_at{pc})
    SELECT k.id, 'UPDATE', %(model)s, 'rec' || (g %% %(records)s),
           jsonb_build_object('name', 'old', 'status', 'done'), 'COMPLETED',
           now() - interval '2 days', now() - interval '2 days',
           now() - interval '1 day' + (g %% 3600) * interval '1 second'{pv}
    FROM generate_series(1, %(n)s) AS g,
         LATERAL (SELECT '0' || lpad(g::text, 25, '0') AS id) AS k
"""
PENDING_LEFT = "SELECT EXISTS (SELECT 1 FROM sync_queue WHERE status = 'PENDING')"


def completion(cur: psycopg.Cursor[Any], rows: list[Any]) -> dict[str, list[Any]]:
    """COMPLETE's parameters for the rows a bare CLAIM just returned (columns by name)."""
    assert cur.description is not None
    names = [c.name for c in cur.description]
    i, t = names.index("id"), names.index("claim_token")
    return {"ids": [r[i] for r in rows], "tokens": [r[t] for r in rows]}


def bare_claim(cur: psycopg.Cursor[Any], prepare: bool | None = None) -> dict[str, list[Any]]:
    """The statements of one bare claim, as queue.dequeue runs them (caller commits); return
    COMPLETE's parameters for the rows it kept."""
    cur.execute(CLAIM, {"batch_size": CLAIM_BATCH, "token": uuid.uuid4()}, prepare=prepare)
    params = completion(cur, cur.fetchall())
    if params["ids"] and RELEASE_OVERTAKEN is not None:
        cur.execute(RELEASE_OVERTAKEN, {"ids": params["ids"]}, prepare=prepare)
        released = {r[0] for r in cur.fetchall()}
        keep = [n for n, i in enumerate(params["ids"]) if i not in released]
        params = {k: [v[n] for n in keep] for k, v in params.items()}
    return params


def bare_complete(cur: psycopg.Cursor[Any], params: dict[str, list[Any]]) -> int:
    """The statements of one bare completion, as queue.mark_complete_many runs them (caller
    commits); return how many rows it completed."""
    if LOCK_CLAIMED is not None:
        cur.execute(LOCK_CLAIMED, {"ids": params["ids"]})
        cur.fetchall()
    cur.execute(COMPLETE, params)
    return len(cur.fetchall())


def store(
    cur: psycopg.Cursor[Any], insert: str, params: dict[str, Any], rows: list[dict[str, Any]]
) -> None:
    """The statements of one bare store, as queue._store runs them (caller commits)."""
    if LOCK_RECORDS is not None:
        cur.execute(
            LOCK_RECORDS,
            {"models": [r["model"] for r in rows], "record_ids": [r["record_id"] for r in rows]},
        )
        cur.fetchall()
    cur.execute(insert, params)
    if cur.description is not None:
        cur.fetchall()  # sql.INSERT returns later changes of the records (usually none)


def as_arrays(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The array parameters of the unnest INSERT for ``rows`` (one dict per change)."""
    return {
        "ids": [r["id"] for r in rows],
        "actions": [r["action"] for r in rows],
        "models": [r["model"] for r in rows],
        "record_ids": [r["record_id"] for r in rows],
        "sheet_row_indexes": [r["sheet_row_index"] for r in rows],
        "payloads": [r["payload"] for r in rows],
        "max_retries": [r["max_retries"] for r in rows],
    }


def payload(i: int) -> dict[str, Any]:
    return {"name": f"name-{i}", "status": "open", "amount": i, "note": "benchmark row"}


def dumps(value: dict[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def record(i: int, records: int) -> str:
    return f"rec{(i * 7919) % records}"


# --- the database -----------------------------------------------------------------------------


class Bench:
    """The throwaway database, its URLs, and one autocommit connection for setup work."""

    def __init__(self, sa_url: str) -> None:
        self.sa_url = sa_url
        self.url = sa_url.replace("postgresql+psycopg://", "postgresql://", 1)
        self.admin = psycopg.connect(self.url, autocommit=True)
        # Required columns the fills do not name (the schema has grown "position" and
        # "origin_id", both equal to the id for a fresh change): set them to the id.
        extra = self.admin.execute(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_name = 'sync_queue' AND is_nullable = 'NO' AND column_default IS NULL"
            " AND column_name NOT IN ('id', 'action', 'model', 'record_id', 'payload')"
            " ORDER BY ordinal_position"
        ).fetchall()
        odd = [f"{c} ({t})" for c, t in extra if t not in ("text", "character varying")]
        if odd:
            raise RuntimeError(f"the benchmark cannot fill required column(s) {', '.join(odd)}")
        pc = "".join(f", {c}" for c, _ in extra)
        pv = ", k.id" * len(extra)
        self.fill_pending_sql = FILL_PENDING.format(pc=pc, pv=pv)
        self.fill_completed_sql = FILL_COMPLETED.format(pc=pc, pv=pv)

    def run(self, statement: str, params: dict[str, Any] | None = None) -> None:
        self.admin.execute(statement, params)  # type: ignore[arg-type]

    def scalar(self, statement: str) -> Any:
        row = self.admin.execute(statement).fetchone()  # type: ignore[arg-type]
        assert row is not None
        return row[0]

    def truncate(self) -> None:
        self.run("TRUNCATE sync_queue")

    def count(self, status: str | None = None) -> int:
        where = "true" if status is None else f"status = '{status}'"
        return int(self.scalar(f"SELECT count(*) FROM sync_queue WHERE {where}"))

    def fill_pending(self, n: int, records: int, start: int = 0) -> None:
        self.run("SELECT setseed(0.42)")
        self.run(
            self.fill_pending_sql, {"start": start, "model": MODEL, "records": records, "n": n}
        )

    def close(self) -> None:
        self.admin.close()


def bare_connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, application_name="syncqueue-bench-bare")


# --- 1. enqueue, 2. enqueue_many ------------------------------------------------------------


def interleaved(
    db: Bench,
    chunks: list[Any],
    ours: Callable[[Any], None],
    bare: Callable[[Any], None],
    warmup: int,
) -> tuple[float, float]:
    """Rows per second of ``ours`` and of ``bare`` over ``chunks``, taken in turns.

    Each chunk is run by both sides back to back (who goes first alternates), so a change in
    the machine's load hits both alike. The first ``warmup`` chunks run untimed first. The
    rate is the chunk size over the median chunk time: one chunk hit by a checkpoint or a
    neighbour's burst does not decide the result.
    """
    for chunk in chunks[:warmup]:
        ours(chunk)
        bare(chunk)
    db.truncate()
    spent: dict[str, list[float]] = {"ours": [], "bare": []}
    for k, chunk in enumerate(chunks):
        order = [("ours", ours), ("bare", bare)]
        for name, fn in order if k % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn(chunk)
            spent[name].append((time.perf_counter() - start) / len(chunk))
    return 1 / statistics.median(spent["ours"]), 1 / statistics.median(spent["bare"])


def bench_enqueue(db: Bench, n: int) -> tuple[float, float]:
    """Rows per second for ``queue.enqueue`` and for a bare INSERT + COMMIT each."""
    records = max(1, n // 5)
    payloads = [payload(i) for i in range(n)]
    conn = bare_connect(db.url)
    cur = conn.cursor()

    def ours(indexes: range) -> None:
        for i in indexes:
            queue.enqueue("UPDATE", MODEL, record(i, records), payloads[i])

    def bare(indexes: range) -> None:
        for i in indexes:
            row = {
                "id": new_id(),
                "action": "UPDATE",
                "model": MODEL,
                "record_id": record(i, records),
                "sheet_row_index": None,
                "payload": dumps(payloads[i]),
                "max_retries": 3,
            }
            store(cur, INSERT_ONE, as_arrays([row]) if ONE_AS_ARRAYS else row, [row])
            conn.commit()

    chunks = [range(i, min(i + ENQUEUE_CHUNK, n)) for i in range(0, n, ENQUEUE_CHUNK)]
    try:
        rates = interleaved(db, chunks, ours, bare, warmup=3)
    finally:
        conn.close()
    check(db.count() == 2 * n, f"enqueue: expected {2 * n} rows, found {db.count()}")
    db.truncate()
    return rates


def bench_enqueue_many(db: Bench, n: int) -> tuple[float, float]:
    """Rows per second for ``queue.enqueue_many`` and a bare unnest INSERT, 1,000 a batch."""
    records = max(1, n // 10)
    changes = [
        {"action": "UPDATE", "model": MODEL, "record_id": record(i, records), "payload": payload(i)}
        for i in range(n)
    ]
    batches = [changes[i : i + MANY_BATCH] for i in range(0, n, MANY_BATCH)]
    conn = bare_connect(db.url)
    cur = conn.cursor()

    def ours(batch: list[dict[str, Any]]) -> None:
        queue.enqueue_many(batch)

    def bare(batch: list[dict[str, Any]]) -> None:
        rows = [
            {
                "id": new_id(),
                "action": c["action"],
                "model": c["model"],
                "record_id": c["record_id"],
                "sheet_row_index": None,
                "payload": dumps(c["payload"]),
                "max_retries": 3,
            }
            for c in batch
        ]
        store(cur, INSERT_MANY, as_arrays(rows), rows)
        conn.commit()

    try:
        rates = interleaved(db, batches, ours, bare, warmup=3)
    finally:
        conn.close()
    check(db.count() == 2 * n, f"enqueue_many: expected {2 * n} rows, found {db.count()}")
    db.truncate()
    return rates


# --- 3. drain -------------------------------------------------------------------------------


def _drain_ops(impl: str, url: str) -> tuple[Callable[[], tuple[int, int]], Callable[[], None]]:
    """(claim and complete one batch -> (claimed, completed), warm-up on the empty table)."""
    if impl == "ours":

        def step() -> tuple[int, int]:
            items = queue.dequeue(CLAIM_BATCH)
            return (len(items), queue.mark_complete_many(items)) if items else (0, 0)

        def warm() -> None:
            queue.dequeue(CLAIM_BATCH)
            queue.mark_complete_many([queue.Claim(new_id(), uuid.uuid4())])

        return step, warm

    conn = bare_connect(url)
    cur = conn.cursor()

    def bare_step() -> tuple[int, int]:
        params = bare_claim(cur)
        conn.commit()
        if not params["ids"]:
            return 0, 0
        completed = bare_complete(cur, params)
        conn.commit()
        return len(params["ids"]), completed

    def bare_warm() -> None:
        bare_step()
        bare_complete(cur, {"ids": [new_id()], "tokens": [uuid.uuid4()]})
        conn.commit()

    return bare_step, bare_warm


def drain_worker(impl: str, url: str, barrier: Any, stop: Any, results: Any) -> None:
    """One draining process: warm up, then for each segment drain until nothing is PENDING."""
    try:
        step, warm = _drain_ops(impl, url)
        # "Anything left?" is harness, not the measured operation: the same cheap query on a
        # side connection for both implementations, asked only after an empty claim.
        side = psycopg.connect(url, autocommit=True)
        # Warm-up on the still empty table: connect, and run both statements past psycopg's
        # prepare threshold (5) so that neither side is timed while still unprepared.
        for _ in range(8):
            warm()
        barrier.wait(timeout=BARRIER_TIMEOUT)  # ready
        while True:
            barrier.wait(timeout=BARRIER_TIMEOUT)  # go: the parent has loaded the table
            if stop.is_set():
                break
            claimed = completed = 0
            while True:
                got, done = step()
                claimed += got
                completed += done
                if got:
                    continue
                row = side.execute(PENDING_LEFT).fetchone()
                if not (row and row[0]):
                    break
                time.sleep(0.001)  # what is left waits behind another process's claims
            results.put(("ok", claimed, completed))
        side.close()
    except BaseException:
        barrier.abort()
        results.put(("error", traceback.format_exc(), 0))


class DrainPool:
    """``processes`` spawned workers of one implementation, kept alive across segments."""

    def __init__(self, ctx: Any, impl: str, url: str, processes: int) -> None:
        self.impl = impl
        self.barrier = ctx.Barrier(processes + 1)
        self.stop = ctx.Event()
        self.results = ctx.Queue()
        self.procs = [
            ctx.Process(
                target=drain_worker,
                args=(impl, url, self.barrier, self.stop, self.results),
                daemon=True,
            )
            for _ in range(processes)
        ]
        for p in self.procs:
            p.start()

    def wait_ready(self) -> None:
        self._wait()

    def _wait(self) -> None:
        try:
            self.barrier.wait(timeout=BARRIER_TIMEOUT)
        except threading.BrokenBarrierError:
            raise RuntimeError(self._error()) from None

    def _error(self) -> str:
        try:
            outcome = self.results.get(timeout=5)
        except Exception:
            return f"a {self.impl} drain worker did not answer"
        return str(outcome[1])

    def drain(self) -> tuple[float, int]:
        """Release the workers on the loaded table; (seconds until all are done, completed)."""
        self._wait()
        start = time.perf_counter()
        outcomes = [self.results.get(timeout=BARRIER_TIMEOUT) for _ in self.procs]
        seconds = time.perf_counter() - start
        errors = [o[1] for o in outcomes if o[0] != "ok"]
        if errors:
            raise RuntimeError(errors[0])
        return seconds, sum(o[2] for o in outcomes)

    def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(threading.BrokenBarrierError):
            self.barrier.wait(timeout=10)
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()


def bench_drain(db: Bench, n: int, processes: int, segments: int) -> tuple[float, float]:
    """Items per second drained by ``processes`` processes, ours and bare.

    Each side drains ``n`` items in total, in ``segments`` equal loads of a fresh table; the
    two sides take turns (who goes first alternates) so that load changes hit both alike.
    """
    ctx = mp.get_context("spawn")
    per_segment = n // segments
    db.truncate()
    pools = {impl: DrainPool(ctx, impl, db.url, processes) for impl in ("ours", "bare")}
    spent = {"ours": 0.0, "bare": 0.0}
    try:
        for pool in pools.values():
            pool.wait_ready()
        for k in range(segments):
            for impl in ("ours", "bare") if k % 2 == 0 else ("bare", "ours"):
                db.truncate()
                db.fill_pending(per_segment, records=max(1, per_segment // 10))
                db.run("ANALYZE sync_queue")
                seconds, completed = pools[impl].drain()
                done = db.count("COMPLETED")
                check(
                    completed == done == per_segment,
                    f"drain {impl} x{processes}: {completed}/{done} of {per_segment} completed",
                )
                spent[impl] += seconds
    finally:
        for pool in pools.values():
            pool.close()
        db.truncate()
    total = per_segment * segments
    return total / spent["ours"], total / spent["bare"]


# --- 4. claim latency -------------------------------------------------------------------------


def bench_claim_latency(db: Bench, sizes: Sizes) -> dict[str, dict[str, float]]:
    """Median ms of one claim of 100, ours and bare, before and after adding COMPLETED rows.

    Every sample claims fresh PENDING rows (the front of the queue); the claimed rows are then
    completed, untimed, so no claim is left blocking later changes of its record. Autovacuum
    is off for the table meanwhile, so a vacuum of the new rows cannot run during (only) the
    second measurement. Besides time, which the machine's load moves, the work of one claim is
    counted in shared buffers (EXPLAIN (ANALYZE, BUFFERS) of the bare CLAIM, rolled back).
    """
    samples, warm = sizes.latency_samples, 10
    per_state = (samples + warm + 3) * 3 * CLAIM_BATCH
    pending = 2 * per_state + 10 * CLAIM_BATCH
    records = pending // 4
    db.truncate()
    db.run("ALTER TABLE sync_queue SET (autovacuum_enabled = off)")
    db.fill_pending(pending, records=records)
    db.run("ANALYZE sync_queue")
    conn = bare_connect(db.url)
    cur = conn.cursor()

    def ours() -> float:
        start = time.perf_counter()
        items = queue.dequeue(CLAIM_BATCH)
        seconds = time.perf_counter() - start
        check(len(items) == CLAIM_BATCH, f"claimed {len(items)}, expected {CLAIM_BATCH}")
        queue.mark_complete_many(items)
        return seconds

    def bare(prepare: bool | None = None) -> float:
        start = time.perf_counter()
        params = bare_claim(cur, prepare)
        conn.commit()
        seconds = time.perf_counter() - start
        count = len(params["ids"])
        check(count == CLAIM_BATCH, f"claimed {count}, expected {CLAIM_BATCH}")
        bare_complete(cur, params)
        conn.commit()
        return seconds

    def buffers() -> float:
        counts = []
        for _ in range(3):
            cur.execute(
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + CLAIM,
                {"batch_size": CLAIM_BATCH, "token": uuid.uuid4()},
            )
            row = cur.fetchone()
            conn.rollback()
            assert row is not None
            plan = row[0][0]["Plan"]
            counts.append(plan["Shared Hit Blocks"] + plan["Shared Read Blocks"])
        return float(statistics.median(counts))

    def measure() -> dict[str, float]:
        for _ in range(warm):
            ours()
            bare()
        times: dict[str, list[float]] = {"ours": [], "bare": [], "unprepared": []}
        for _ in range(samples):  # interleaved, so drift hits all alike
            times["ours"].append(ours())
            times["bare"].append(bare())
            times["unprepared"].append(bare(prepare=False))
        result = {k: statistics.median(v) * 1000 for k, v in times.items()}
        result["buffers"] = buffers()
        return result

    try:
        result = {"before": measure()}
        db.run(db.fill_completed_sql, {"model": MODEL, "records": records, "n": sizes.completed})
        db.run("ANALYZE sync_queue")
        result["after"] = measure()
        result["table"] = {"rows": db.count(), "completed": db.count("COMPLETED")}
        return result
    finally:
        conn.close()
        db.truncate()
        db.run("ALTER TABLE sync_queue RESET (autovacuum_enabled)")


def source_digest() -> str:
    """Short sha256 of the files whose code is measured (they change while others work)."""
    parts = []
    for rel in SOURCES:
        path = ROOT / rel
        data = path.read_bytes() if path.exists() else b""
        parts.append(f"{path.name} {hashlib.sha256(data).hexdigest()[:10]}")
    return ", ".join(parts)


# --- report -----------------------------------------------------------------------------------


class Failed(AssertionError):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


def fmt_rate(rate: float) -> str:
    return f"{rate:,.0f}/s"


@dataclass
class Row:
    name: str
    ours: str
    bare: str
    ratio: float
    target: str
    ok: bool


def print_table(rows: list[Row]) -> None:
    head = ("operation", "ours", "bare", "ours/bare", "target", "")
    cells = [head] + [
        (r.name, r.ours, r.bare, f"{r.ratio:.2f}x", r.target, "ok" if r.ok else "MISS")
        for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    for k, c in enumerate(cells):
        print(
            "  ".join(
                c[i].ljust(widths[i]) if i == 0 else c[i].rjust(widths[i]) for i in range(len(head))
            )
        )
        if k == 0:
            print("  ".join("-" * w for w in widths))


def latency_rows(lat: dict[str, dict[str, float]]) -> list[tuple[str, str, str, str, str, str]]:
    """(side, before, after, after/before, target, verdict) per implementation."""
    out = []
    for side in ("ours", "bare", "unprepared"):
        before, after = lat["before"][side], lat["after"][side]
        growth = after / before
        if side == "ours":
            target, verdict = f"<= {TARGET_CLAIM}x", "ok" if growth <= TARGET_CLAIM else "MISS"
        else:
            target, verdict = "(reference)", ""
        out.append((side, f"{before:.2f} ms", f"{after:.2f} ms", f"{growth:.2f}x", target, verdict))
    before, after = lat["before"]["buffers"], lat["after"]["buffers"]
    out.append(
        ("buffers", f"{before:,.0f}", f"{after:,.0f}", f"{after / before:.2f}x", "(work)", "")
    )
    return out


def print_markdown(
    rows: list[Row], lat: dict[str, dict[str, float]], sizes: Sizes, env: str
) -> None:
    print("| Operation | syncqueue_tasks | bare psycopg 3 | ours / bare | target | |")
    print("|---|---:|---:|---:|---:|:---:|")
    for r in rows:
        mark = "✅" if r.ok else "❌"
        print(f"| {r.name} | {r.ours} | {r.bare} | {r.ratio:.2f}x | {r.target} | {mark} |")
    print()
    print(
        f"| Claim latency, median `dequeue(100)` | PENDING rows only "
        f"| + {sizes.completed:,} COMPLETED rows | after / before | target | |"
    )
    print("|---|---:|---:|---:|---:|:---:|")
    for side, before, after, growth, target, verdict in latency_rows(lat):
        name = {
            "ours": "syncqueue_tasks",
            "bare": "bare psycopg 3",
            "unprepared": "bare psycopg 3, unprepared (custom plan each time)",
            "buffers": "shared buffers touched by one CLAIM (EXPLAIN, custom plan)",
        }[side]
        mark = {"ok": "✅", "MISS": "❌"}.get(verdict, "")
        print(f"| {name} | {before} | {after} | {growth} | {target} | {mark} |")
    print()
    print(
        f"*{env}. enqueue / enqueue_many: ours and bare take turns chunk by chunk (rate from"
        f" the median chunk); drains: each side's items in {sizes.drain_segments} alternating"
        f" loads; latency: median of {sizes.latency_samples} claims, ours and bare"
        " interleaved.*"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (under a minute)")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL

    name = f"syncqueue_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    db: Bench | None = None
    try:
        use_database(create_database(name))
        command.upgrade(alembic_config(), "head")
        db = Bench(os.environ["DATABASE_URL"])
        server = db.scalar("SHOW server_version").split()[0]
        env = (
            f"PostgreSQL {server}, Python {platform.python_version()}, SQLAlchemy "
            f"{sqlalchemy.__version__}, psycopg {psycopg.__version__}, {os.cpu_count()} CPUs"
        )
        print(f"queue benchmark ({'quick' if args.quick else 'full'}) on database {name}")
        print(env)
        sources = source_digest()
        print(f"code under test: {sources}")
        print()
        rows: list[Row] = []

        def step(title: str) -> None:
            print(f"{title} ... (t = {time.perf_counter() - started:.0f} s)", flush=True)

        step(f"[1/4] enqueue x {sizes.enqueue:,}")
        o, b = bench_enqueue(db, sizes.enqueue)
        rows.append(
            Row(
                f"enqueue, 1 tx each ({sizes.enqueue:,} rows)",
                fmt_rate(o),
                fmt_rate(b),
                o / b,
                f">= {TARGET_ENQUEUE}x",
                o / b >= TARGET_ENQUEUE,
            )
        )

        step(f"[2/4] enqueue_many x {sizes.many:,}")
        o, b = bench_enqueue_many(db, sizes.many)
        rows.append(
            Row(
                f"enqueue_many, batches of {MANY_BATCH:,} ({sizes.many:,} rows)",
                fmt_rate(o),
                fmt_rate(b),
                o / b,
                f">= {TARGET_MANY}x",
                o / b >= TARGET_MANY,
            )
        )

        for procs in PROCESS_COUNTS:
            step(f"[3/4] drain {sizes.drain:,} items, {procs} process(es)")
            o, b = bench_drain(db, sizes.drain, procs, sizes.drain_segments)
            rows.append(
                Row(
                    f"drain {sizes.drain:,}: dequeue(100) + mark_complete_many, {procs} proc",
                    fmt_rate(o),
                    fmt_rate(b),
                    o / b,
                    f">= {TARGET_DRAIN}x",
                    o / b >= TARGET_DRAIN,
                )
            )

        step(f"[4/4] claim latency, then + {sizes.completed:,} COMPLETED rows")
        lat = bench_claim_latency(db, sizes)

        print()
        print("Throughput (rows or items per second; ratio = ours / bare, higher is better)")
        print()
        print_table(rows)
        print()
        print(
            f"Claim latency: median of {sizes.latency_samples} dequeue(100), PENDING rows only"
            f" vs. after + {sizes.completed:,} COMPLETED rows and ANALYZE"
            f" (table then held {lat['table']['rows']:,} rows; autovacuum off for the table"
            " meanwhile; 'buffers' = shared buffers one CLAIM touches, the machine-independent"
            " measure of its work)"
        )
        print()
        cells = [
            ("", "pending only", "+ COMPLETED", "after/before", "target", ""),
            *latency_rows(lat),
        ]
        widths = [max(len(c[i]) for c in cells) for i in range(6)]
        for k, c in enumerate(cells):
            print(
                "  ".join(
                    c[i].ljust(widths[i]) if i == 0 else c[i].rjust(widths[i]) for i in range(6)
                )
            )
            if k == 0:
                print("  ".join("-" * w for w in widths))
        print()
        print("Summary (Markdown):")
        print()
        print_markdown(rows, lat, sizes, env)
        print()
        print(f"total time {time.perf_counter() - started:.0f} s")
        if source_digest() != sources:
            print(
                "WARNING: syncqueue_tasks sources changed during the run (worker processes may"
                f" have run other code); now {source_digest()}"
            )
            return 1
        return 0
    finally:
        if db is not None:
            db.close()
        dispose_engine()
        drop_database(name)


if __name__ == "__main__":
    sys.exit(main())
