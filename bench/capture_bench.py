"""The cost of change capture on the application's own writes, and the backfill rate.

Run from the repository root (needs the PostgreSQL server of the tests, by default
``postgresql://postgres@127.0.0.1:5432/postgres``; ``SYNCQUEUE_TEST_ADMIN_URL`` overrides it)::

    .venv/bin/python bench/capture_bench.py            # full run, a few minutes
    .venv/bin/python bench/capture_bench.py --quick    # smaller sizes

The script creates a throwaway database, migrates it, and drops it at the end. Tables of the
same shape receive the same statements, captured and not:

1. ORM capture (``capture.track``): single-row INSERT (``session.add`` + commit) and UPDATE
   (``session.get``, one field, commit), one transaction each;
2. trigger capture (``capture.triggers.install``): single-row ``INSERT`` and ``UPDATE ...
   WHERE id = ...`` in SQL, one transaction each (psycopg, no ORM), and a 10,000-row
   ``UPDATE`` of one column, one transaction; the queue is emptied (not timed) before each
   bulk round, so each round stores into the same queue;
   captured and plain take turns every ``CHUNK`` transactions (bulk: every round), so that a
   change in the machine's load hits both; the figure is the median per transaction;
3. backfill of N rows (``capture.backfill``, batches of 1,000) against one plain
   ``INSERT INTO sync_queue ... SELECT`` of the same rows with a payload built in SQL.
"""

from __future__ import annotations

import argparse
import decimal
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import psycopg  # noqa: E402
from alembic import command  # noqa: E402
from dbutil import alembic_config, create_database, drop_database, use_database  # noqa: E402
from sqlalchemy import Numeric, String, text  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column  # noqa: E402

from syncqueue_tasks import capture  # noqa: E402
from syncqueue_tasks.capture import triggers  # noqa: E402
from syncqueue_tasks.core.ids import new_id  # noqa: E402
from syncqueue_tasks.store.db import dispose_engine, get_engine  # noqa: E402

CHUNK = 50
BULK_ROWS = 10_000
TARGET = 2.0  # capture: at most 2x the statement without capture (issue 12)


class Base(DeclarativeBase):
    pass


class Shape:
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20))
    amount: Mapped[decimal.Decimal] = mapped_column(Numeric(12, 2))


class Tracked(Shape, Base):
    __tablename__ = "bench_tracked"


class Plain(Shape, Base):
    __tablename__ = "bench_plain"


class Triggered(Shape, Base):
    __tablename__ = "bench_triggered"


class SqlPlain(Shape, Base):
    __tablename__ = "bench_sql_plain"


def _insert(cls: type[Shape]) -> Callable[[int], None]:
    def run(n: int) -> None:
        with Session(get_engine()) as s, s.begin():
            s.add(cls(title=f"title {n}", status="open", amount=decimal.Decimal("12.30")))

    return run


def _update(cls: type[Shape]) -> Callable[[int], None]:
    def run(n: int) -> None:
        with Session(get_engine()) as s, s.begin():
            row = s.get(cls, n)
            assert row is not None
            row.status = f"s{n % 7}"

    return run


def _sql(connection: psycopg.Connection, statement: str) -> Callable[[int], None]:
    """One SQL statement (``{n}``: the call's number) and a commit per call."""

    def run(n: int) -> None:
        connection.execute(statement.format(n=n))
        connection.commit()

    return run


def _take_turns(
    ours: Callable[[int], None],
    plain: Callable[[int], None],
    count: int,
    chunk: int = CHUNK,
    between: Callable[[], None] | None = None,
) -> tuple[float, float]:
    """Median seconds per call of each, alternating every ``chunk`` calls (``between``, not
    timed, runs before each call)."""
    times: dict[str, list[float]] = {"ours": [], "plain": []}
    for run in (ours, plain):  # warm-up: connections, statement caches
        for n in range(1, 6):
            if between:
                between()
            run(n)
    for start in range(6, count + 6, chunk):
        for name, run in (("ours", ours), ("plain", plain)):
            for n in range(start, min(start + chunk, count + 6)):
                if between:
                    between()
                began = time.perf_counter()
                run(n)
                times[name].append(time.perf_counter() - began)
    return statistics.median(times["ours"]), statistics.median(times["plain"])


def _trigger_rows(singles: int, bulk_rounds: int) -> tuple[list[tuple[str, float, float]], str]:
    """Trigger capture against the same SQL without it: single rows, then the bulk UPDATE;
    and a note on how much of the bulk UPDATE's time storing its changes takes."""
    engine = get_engine()
    triggers.install(engine, "bench_triggered", "Operator")
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    rows = []
    with psycopg.connect(url) as conn:
        insert = "INSERT INTO {table} (title, status, amount) VALUES ('t {{n}}', 'open', 12.30)"
        update = "UPDATE {table} SET status = 's{{n}}' WHERE id = {{n}}"
        for label, statement in (
            ("SQL single-row INSERT (trigger)", insert),
            ("SQL single-row UPDATE by key (trigger)", update),
        ):
            ours, plain = _take_turns(
                _sql(conn, statement.format(table="bench_triggered")),
                _sql(conn, statement.format(table="bench_sql_plain")),
                singles,
            )
            rows.append((label, ours, plain))
        conn.execute("SET syncqueue.capture = 'off'")  # the rows the bulk UPDATE changes
        for table in ("bench_triggered", "bench_sql_plain"):
            conn.execute(
                f"INSERT INTO {table} (id, title, status, amount) SELECT i, 't ' || i, 'open', i "
                f"FROM generate_series((SELECT max(id) + 1 FROM {table}), {BULK_ROWS}) AS i"
            )
        conn.execute("RESET syncqueue.capture")
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE bench_triggered, bench_sql_plain")
        conn.autocommit = False

        def empty_queue() -> None:
            conn.execute("TRUNCATE sync_queue, sync_record")
            conn.commit()

        bulk = "UPDATE {table} SET status = 'bulk {{n}}'"
        ours, plain = _take_turns(
            _sql(conn, bulk.format(table="bench_triggered")),
            _sql(conn, bulk.format(table="bench_sql_plain")),
            bulk_rounds,
            chunk=1,
            between=empty_queue,
        )
        rows.append((f"SQL {BULK_ROWS:,}-row bulk UPDATE of one column (trigger)", ours, plain))
        store = (
            "SELECT syncqueue_capture_enqueue('Operator', array_agg('UPDATE'::sync_action), "
            "array_agg(id::text), array_agg(jsonb_build_object('status', status || '{n}')), "
            "false) FROM bench_triggered"
        )
        alone, _ = _take_turns(
            _sql(conn, store), lambda n: None, bulk_rounds, chunk=1, between=empty_queue
        )
    note = (
        f"Of the bulk UPDATE's {ours * 1000:.0f} ms with capture, storing its {BULK_ROWS:,} "
        f"changes alone (one syncqueue_capture_enqueue call: ids, then the queue's "
        f"syncqueue_enqueue) takes {alone * 1000:.0f} ms."
    )
    return rows, note


_PAYLOAD = "jsonb_build_object('title', t.title, 'status', t.status, 'amount', t.amount::text)"


def _plain_insert_select(rows: int) -> float:
    """Seconds for one INSERT ... SELECT of the tracked table's rows into sync_queue."""
    prefix = new_id()[:10]
    statement = text(
        "INSERT INTO sync_queue (id, action, model, record_id, payload, max_retries) "
        f"SELECT '{prefix}' || lpad(t.id::text, 16, '0'), 'CREATE', 'Request', t.id::text, "
        f"{_PAYLOAD}, 3 FROM bench_tracked AS t"
    )
    with get_engine().begin() as conn:
        began = time.perf_counter()
        inserted = conn.execute(statement).rowcount
        seconds = time.perf_counter() - began
        assert inserted == rows, inserted
        conn.execute(text("DELETE FROM sync_queue WHERE id LIKE :p"), {"p": prefix + "%"})
    return seconds


def _store_in_sql(rows: int) -> float:
    """Seconds for storing the same CREATEs with the SQL store in one statement (ids, the
    changes and their records marked waiting, as a trigger does); rolled back."""
    statement = text(
        "SELECT syncqueue_capture_enqueue('Request', array_agg('CREATE'::sync_action), "
        f"array_agg(t.id::text), array_agg({_PAYLOAD}), false) FROM bench_tracked AS t"
    )
    with get_engine().connect() as conn, conn.begin() as transaction:
        began = time.perf_counter()
        stored = conn.execute(statement).scalar_one()
        seconds = time.perf_counter() - began
        assert stored == rows, stored
        transaction.rollback()
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    args = parser.parse_args()
    singles, bulk_rounds, backfill_rows = (300, 5, 20_000) if args.quick else (1_000, 15, 100_000)
    name = f"syncqueue_capture_bench_{os.getpid()}"
    use_database(create_database(name))
    try:
        command.upgrade(alembic_config(), "head")
        Base.metadata.create_all(get_engine())
        capture.track(Tracked, model="Request")
        print(
            f"capture bench: {platform.node()}, load {os.getloadavg()[0]:.1f}, "
            f"{singles} single-row transactions per side, {bulk_rounds} bulk UPDATEs per side, "
            f"backfill of {backfill_rows:,} rows"
        )
        rows = []
        ours, plain = _take_turns(_insert(Tracked), _insert(Plain), singles)
        rows.append(("ORM single-row INSERT (add + commit)", ours, plain))
        ours, plain = _take_turns(_update(Tracked), _update(Plain), singles)
        rows.append(("ORM single-row UPDATE (get + set + commit)", ours, plain))
        trigger_rows, note = _trigger_rows(singles, bulk_rounds)
        rows += trigger_rows
        print(
            "\n| statement | with capture | without | ratio | target |\n|---|---:|---:|---:|---:|"
        )
        for label, ours, plain in rows:
            print(
                f"| {label} | {ours * 1000:.2f} ms | {plain * 1000:.2f} ms | "
                f"{ours / plain:.2f}x | <= {TARGET:.0f}x |"
            )
        print(f"\n{note}")

        with get_engine().begin() as conn:
            conn.execute(text("TRUNCATE bench_tracked, sync_queue, sync_record"))
            conn.execute(
                text(
                    "INSERT INTO bench_tracked (id, title, status, amount) "
                    "SELECT i, 'title ' || i, 'open', i * 1.5 FROM generate_series(1, :n) AS i"
                ),
                {"n": backfill_rows},
            )
            conn.execute(text("ANALYZE bench_tracked"))
        plain_seconds = _plain_insert_select(backfill_rows)
        store_seconds = _store_in_sql(backfill_rows)
        report = capture.backfill(
            get_engine(), "Request", restart=True, state_dir=Path(f"/tmp/{name}")
        )
        assert report.enqueued == backfill_rows
        with get_engine().connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM sync_queue")).scalar() == backfill_rows
        ours_rate = backfill_rows / report.seconds
        plain_rate = backfill_rows / plain_seconds
        print(
            f"\n| backfill of {backfill_rows:,} rows | rows/s |\n|---|---:|\n"
            f"| `capture.backfill` (batches of 1,000, FOR SHARE, one enqueue_many each) "
            f"| {ours_rate:,.0f} |\n"
            f"| plain `INSERT INTO sync_queue ... SELECT` (one statement) | {plain_rate:,.0f} |\n"
            f"| the queue's SQL store, one statement (`syncqueue_capture_enqueue`: ids, changes, "
            f"records marked waiting) | {backfill_rows / store_seconds:,.0f} |\n"
            f"| ratio | {ours_rate / plain_rate:.2f}x |"
        )
    finally:
        dispose_engine()
        drop_database(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
