"""Trigger capture: every writer's changes reach the queue in its transaction, by SQL alone.

The application's tables are captured by the package's triggers (fixture ``trigger_app``: no
ORM capture). Each test writes through raw SQL, COPY, the ORM or bulk ORM statements, drains
the queue through the workbook writer and compares the sheet with the tables.
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from capture_app import (
    Request,
    Status,
    assert_sheet_equals_tables,
    drain,
    queued,
    session,
    sheet,
    trigger_app,  # noqa: F401  (fixture)
    trigger_sources,
)
from sqlalchemy import text, update
from sqlalchemy.exc import DBAPIError

from syncqueue_tasks import capture
from syncqueue_tasks.capture import triggers
from syncqueue_tasks.core.ids import is_valid_id
from syncqueue_tasks.store import queue
from syncqueue_tasks.store.db import get_engine

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("trigger_app")]
_SERIES = "SELECT 'op' || i, 'n' FROM generate_series(1, {n}) AS i"  # operators op1, op2, ...


def sql(statement: str, **params: object) -> None:
    """Run one statement in a transaction of its own."""
    with get_engine().begin() as conn:
        conn.execute(text(statement), params)


def changes(start: int = 0) -> list[tuple[str, str, dict[str, object]]]:
    """(action, record id, payload) of the queued changes from the ``start``-th on."""
    return [(c["action"], c["record_id"], c["payload"]) for c in queued()[start:]]


def assert_sheet_is_tables(book: Path) -> None:
    assert_sheet_equals_tables(book, trigger_sources())


def test_raw_sql_inserts_updates_and_deletes_reach_the_sheet(trigger_app: Path) -> None:  # noqa: F811
    sql(
        "INSERT INTO capture_request (title, status, amount, due) VALUES "
        "('a', 'open', 12.30, '2026-12-01'), ('b', 'open', NULL, NULL), ('c', 'closed', 1, NULL)"
    )
    sql(
        "INSERT INTO capture_operator (code, name, rate, active, tags) VALUES "
        """('op-1', 'Bo', 1.5, true, '{"team": ["north", 2]}'), ('op-2', 'Al', NULL, false, NULL)"""
    )
    created = changes()
    assert [(a, r) for a, r, _ in created] == [
        ("CREATE", "1"),
        ("CREATE", "2"),
        ("CREATE", "3"),
        ("CREATE", "op-1"),
        ("CREATE", "op-2"),
    ]
    first = created[0][2]
    assert set(first) == {"title", "status", "amount", "due", "ref", "updated_at"}
    assert (first["status"], first["amount"], first["due"]) == ("open", "12.30", "2026-12-01")
    assert str(first["updated_at"]).endswith("+00:00")
    assert created[3][2] == {
        "name": "Bo",
        "rate": 1.5,
        "active": True,
        "tags": {"team": ["north", 2]},
    }
    assert_sheet_is_tables(trigger_app)

    sql("UPDATE capture_request SET status = 'closed' WHERE id <= 2")
    sql("UPDATE capture_operator SET rate = rate * 2")  # op-2: NULL * 2 is NULL, no change
    sql("DELETE FROM capture_request WHERE id = 3")
    assert sorted(changes(5)) == [
        ("DELETE", "3", {}),
        ("UPDATE", "1", {"status": "closed"}),
        ("UPDATE", "2", {"status": "closed"}),
        ("UPDATE", "op-1", {"rate": 3.0}),
    ]
    assert_sheet_is_tables(trigger_app)
    assert set(sheet(trigger_app, "Request")) == {"1", "2"}


def test_an_upsert_is_a_create_of_the_new_rows_and_an_update_of_the_others() -> None:
    sql("INSERT INTO capture_operator (code, name, rate) VALUES ('a', 'old', 1)")
    sql(
        "INSERT INTO capture_operator (code, name, rate) VALUES ('a', 'new', 1), ('b', 'b', 2) "
        "ON CONFLICT (code) DO UPDATE SET name = excluded.name, rate = excluded.rate"
    )
    assert sorted(changes(1)) == [
        ("CREATE", "b", {"name": "b", "rate": 2.0, "active": True, "tags": None}),
        ("UPDATE", "a", {"name": "new"}),
    ]


def test_an_update_that_changes_no_tracked_value_queues_nothing() -> None:
    sql("INSERT INTO capture_request (title, status, amount) VALUES ('a', 'open', 12.3)")
    sql("INSERT INTO capture_operator (code, name) VALUES ('op', 'n')")
    before = len(queued())
    sql("UPDATE capture_request SET title = title, secret = '\\x01'")  # secret: not tracked
    sql("UPDATE capture_request SET amount = 12.300")  # the same number (Decimal's ==)
    sql("UPDATE capture_operator SET name = 'n', active = true")
    sql("UPDATE capture_operator SET name = 'x' WHERE false")  # no row
    assert len(queued()) == before


def test_a_changed_key_deletes_the_old_record_and_creates_the_new(trigger_app: Path) -> None:  # noqa: F811
    sql("INSERT INTO capture_operator (code, name, rate) VALUES ('old', 'n', 2), ('kept', 'k', 1)")
    sql("INSERT INTO capture_request (title) VALUES ('a'), ('b')")
    drain()
    start = len(queued())
    sql("UPDATE capture_operator SET code = 'new', name = 'moved' WHERE code = 'old'")
    sql("UPDATE capture_request SET id = id + 10")
    assert sorted((a, r) for a, r, _ in changes(start)) == [
        ("CREATE", "11"),
        ("CREATE", "12"),
        ("CREATE", "new"),
        ("DELETE", "1"),
        ("DELETE", "2"),
        ("DELETE", "old"),
    ]
    created = {r: p for a, r, p in changes(start) if a == "CREATE"}
    assert created["new"] == {"name": "moved", "rate": 2.0, "active": True, "tags": None}
    assert_sheet_is_tables(trigger_app)
    assert set(sheet(trigger_app, "Operator")) == {"kept", "new"}


def test_copy_is_captured(trigger_app: Path) -> None:  # noqa: F811
    statement = "COPY capture_operator (code, name, rate, tags) FROM STDIN"
    with psycopg.connect(_libpq_url()) as conn, conn.cursor().copy(statement) as copy:
        for i in range(50):
            copy.write_row((f"copied-{i:02}", f"name {i}", i / 4, json.dumps({"n": i})))
    assert len(queued("Operator")) == 50
    assert queued("Operator")[7]["payload"] == {
        "name": "name 7",
        "rate": 1.75,
        "active": True,
        "tags": {"n": 7},
    }
    assert_sheet_is_tables(trigger_app)


def test_orm_writes_and_a_bulk_orm_update_are_captured_by_the_triggers(trigger_app: Path) -> None:  # noqa: F811
    with session() as s, s.begin():
        s.add_all([Request(title=f"r{i}") for i in range(4)])
    with session() as s, s.begin():
        s.execute(update(Request).where(Request.id > 2).values(status=Status.CLOSED))
    updates = [(a, r, p) for a, r, p in changes() if a == "UPDATE"]
    assert sorted(r for _, r, _ in updates) == ["3", "4"]
    assert all(p["status"] == "closed" and set(p) == {"status", "updated_at"} for *_, p in updates)
    assert_sheet_is_tables(trigger_app)


def test_a_rolled_back_transaction_and_savepoint_leave_their_changes_out(trigger_app: Path) -> None:  # noqa: F811
    with get_engine().connect() as conn, conn.begin() as transaction:
        conn.execute(text("INSERT INTO capture_operator (code, name) VALUES ('never', 'n')"))
        transaction.rollback()
    assert queued() == []
    with get_engine().begin() as conn:
        conn.execute(text("INSERT INTO capture_operator (code, name) VALUES ('outer', 'o')"))
        with conn.begin_nested() as savepoint:
            conn.execute(text("INSERT INTO capture_operator (code, name) VALUES ('dropped', 'd')"))
            conn.execute(text("UPDATE capture_operator SET name = 'renamed' WHERE code = 'outer'"))
            savepoint.rollback()
        with conn.begin_nested():
            conn.execute(text("INSERT INTO capture_request (title) VALUES ('kept')"))
    assert [(a, r) for a, r, _ in changes()] == [("CREATE", "outer"), ("CREATE", "1")]
    assert_sheet_is_tables(trigger_app)
    assert sheet(trigger_app, "Operator")["outer"]["name"] == "o"


def test_truncate_deletes_every_record(trigger_app: Path) -> None:  # noqa: F811
    sql(f"INSERT INTO capture_operator (code, name) {_SERIES.format(n=3)}")
    drain()
    sql("TRUNCATE capture_operator")
    assert sorted(changes(3)) == [("DELETE", f"op{i}", {}) for i in (1, 2, 3)]
    assert_sheet_is_tables(trigger_app)
    assert sheet(trigger_app, "Operator") == {}


def test_an_importers_write_reaches_the_table_and_not_the_sheet(trigger_app: Path) -> None:  # noqa: F811
    sql("INSERT INTO capture_operator (code, name) VALUES ('a', 'typed by the app'), ('b', 'x')")
    drain()
    before = sheet(trigger_app, "Operator")

    with session() as s, s.begin(), capture.suppressed(s):  # an ORM session: the helper
        s.execute(text("UPDATE capture_operator SET name = 'edited in the sheet' WHERE code = 'a'"))
        s.execute(text("INSERT INTO capture_operator (code, name) VALUES ('c', 'typed in it')"))
    with get_engine().begin() as conn:
        with capture.suppressed(conn):  # a Core connection: the block only
            conn.execute(text("UPDATE capture_operator SET rate = 9 WHERE code = 'b'"))
        conn.execute(text("UPDATE capture_operator SET active = false WHERE code = 'b'"))
    with psycopg.connect(_libpq_url()) as raw:  # any client: SET LOCAL
        raw.execute("SET LOCAL syncqueue.capture = 'off'")
        raw.execute("DELETE FROM capture_operator WHERE code = 'a'")

    assert changes(2) == [("UPDATE", "b", {"active": False})]
    with get_engine().connect() as conn:
        rows = conn.execute(text("SELECT code, name, rate FROM capture_operator ORDER BY code"))
        assert [tuple(r) for r in rows] == [("b", "x", 9.0), ("c", "typed in it", None)]
    drain()
    assert sheet(trigger_app, "Operator") == {
        "a": before["a"],
        "b": {**before["b"], "active": False},
    }


def test_ids_sort_with_the_ids_python_makes_and_increase_within_a_session() -> None:
    with session() as s, s.begin():
        first = queue.enqueue("UPDATE", "Operator", "py-1", {"name": "a"}, session=s)
        s.execute(text(f"INSERT INTO capture_operator (code, name) {_SERIES.format(n=500)}"))
        s.execute(text("UPDATE capture_operator SET name = 'm' WHERE code = 'op1'"))
        last = queue.enqueue("UPDATE", "Operator", "py-2", {"name": "b"}, session=s)
    rows = _rows()  # in id order: the order the statements ran
    ids = [i for i, _ in rows]
    assert all(is_valid_id(i) for i in ids) and len(set(ids)) == len(ids) == 503
    assert (ids[0], ids[-1]) == (first, last)
    assert {r for _, r in rows[1:501]} == {f"op{i}" for i in range(1, 501)}
    assert rows[501][1] == "op1"  # the UPDATE, after the INSERT's 500


def test_ids_made_where_the_random_part_would_carry_are_made_one_by_one() -> None:
    future = "7ZZZZZZZZZ" + "00" + "00" + "Z" * 11 + "Y"  # the session's last id: its tail 2^60 - 2
    with get_engine().begin() as conn:
        conn.execute(text("SELECT set_config('syncqueue.last_id', :v, false)"), {"v": future})
        conn.execute(text(f"INSERT INTO capture_operator (code, name) {_SERIES.format(n=3)}"))
        conn.execute(text("SELECT set_config('syncqueue.last_id', '', false)"))
    # the statement's base id took the last value without a carry (...0000ZZZZZZZZZZZZ); its
    # three ids could not be that plus 0, 1, 2, so each is the session's next id
    assert [i for i, _ in _rows()] == [
        "7ZZZZZZZZZ0001000000000000",
        "7ZZZZZZZZZ0001000000000001",
        "7ZZZZZZZZZ0001000000000002",
    ]


def test_record_ids_a_sheet_could_not_read_back_fail_the_statement() -> None:
    for code in ("trailing ", " leading", "tab\there", "\u00a0nbsp", ""):
        with pytest.raises(DBAPIError, match="a record id of Operator is empty, longer than 255"):
            sql("INSERT INTO capture_operator (code, name) VALUES (:code, 'n')", code=code)
    with get_engine().connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM capture_operator")).scalar_one() == 0
    assert queued() == []


def test_a_table_captured_by_triggers_is_backfilled_by_its_model_name(trigger_app: Path) -> None:  # noqa: F811
    from click.testing import CliRunner

    from syncqueue_tasks.ops.cli import main

    with psycopg.connect(_libpq_url()) as raw:  # rows from before the capture
        raw.execute("SET LOCAL syncqueue.capture = 'off'")
        raw.execute(f"INSERT INTO capture_operator (code, name) {_SERIES.format(n=30)}")
    result = CliRunner().invoke(main, ["backfill", "--model", "Operator", "--batch-size", "7"])
    assert result.exit_code == 0, result.output
    assert "30 rows read, 30 enqueued" in result.stdout
    assert_sheet_is_tables(trigger_app)


def _rows() -> list[tuple[str, str]]:
    """(id, record id) of the queue's rows, in id order."""
    with get_engine().connect() as conn:
        rows = conn.execute(text("SELECT id, record_id FROM sync_queue ORDER BY id"))
        return [(r.id, r.record_id) for r in rows]


def _libpq_url() -> str:
    return get_engine().url.set(drivername="postgresql").render_as_string(hide_password=False)


def test_a_table_in_another_schema_is_captured_whatever_the_writers_search_path() -> None:
    sql("CREATE SCHEMA capture_elsewhere")
    sql("CREATE TABLE capture_elsewhere.ledger (id int PRIMARY KEY, doc jsonb, total numeric)")
    try:
        triggers.install(get_engine(), "capture_elsewhere.ledger", "Revenue")
        with get_engine().begin() as conn:  # the queue's schema (public) is not on the path
            conn.execute(text("SET LOCAL search_path = capture_elsewhere"))
            conn.execute(text("""INSERT INTO ledger VALUES (1, '{"n": 1e20}', 1.50)"""))
        assert changes() == [
            ("CREATE", "1", {"doc": {"n": "100000000000000000000"}, "total": "1.50"})
        ]
    finally:
        sql("DROP SCHEMA capture_elsewhere CASCADE")
