"""Bulk statements through ``Session.execute`` on tracked tables: captured, or refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from capture_app import (
    Operator,
    Request,
    Status,
    app,  # noqa: F401  (fixture)
    assert_sheet_equals_tables,
    queued,
    session,
)
from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from syncqueue_tasks import capture

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("app")]

REQUESTS = Request.__table__
OPERATORS = Operator.__table__


def _seed() -> None:
    with session() as s, s.begin():
        s.add_all([Request(title=f"r{i}") for i in range(1, 6)])
        s.add_all([Operator(code=f"op{i}", name=f"n{i}", rate=float(i)) for i in range(1, 4)])


def _since(count: int) -> list[tuple[str, str, str]]:
    return [(c["action"], c["model"], c["record_id"]) for c in queued()[count:]]


def test_bulk_orm_update_enqueues_the_set_fields_of_every_row_it_changed(
    app: Path,  # noqa: F811
) -> None:
    _seed()
    with session() as s, s.begin():
        loaded = s.get(Request, 4)
        result = s.execute(
            update(Request).where(Request.id >= 3).values(status=Status.CLOSED, title="bulk")
        )
        assert result.rowcount == 3
        assert loaded is not None and loaded.title == "bulk"  # the session was synchronized
    changes = queued()[8:]
    assert sorted(c["record_id"] for c in changes) == ["3", "4", "5"]
    for change in changes:
        assert change["action"] == "UPDATE"
        assert set(change["payload"]) == {"title", "status", "updated_at"}
        assert change["payload"]["status"] == "closed"
    assert len(queued()) == 11  # the synchronized object was not captured a second time
    assert_sheet_equals_tables(app)


def test_core_statements_through_the_session_are_captured_too(app: Path) -> None:  # noqa: F811
    _seed()
    count = len(queued())
    with session() as s, s.begin():
        s.execute(update(OPERATORS).where(OPERATORS.c.rate > 1).values(rate=OPERATORS.c.rate * 2))
        s.execute(delete(REQUESTS).where(REQUESTS.c.id == 1))
        s.execute(insert(OPERATORS).values(code="core", name="c"))
    assert sorted(_since(count)) == [
        ("CREATE", "Operator", "core"),
        ("DELETE", "Request", "1"),
        ("UPDATE", "Operator", "op2"),
        ("UPDATE", "Operator", "op3"),
    ]
    assert {c["payload"]["rate"] for c in queued("Operator")[3:5]} == {4.0, 6.0}
    assert_sheet_equals_tables(app)


def test_a_statement_with_its_own_returning_gets_exactly_its_columns_back(
    app: Path,  # noqa: F811
) -> None:
    _seed()
    with session() as s, s.begin():
        rows = s.execute(
            update(Operator).where(Operator.code != "op1").values(name="x").returning(Operator.code)
        ).all()
        assert sorted(rows) == [("op2",), ("op3",)]
        deleted = s.scalars(delete(Request).where(Request.id < 3).returning(Request)).all()
        assert sorted(r.id for r in deleted) == [1, 2]
        ids = s.scalars(
            insert(Request).returning(Request.id), [{"title": "a"}, {"title": "b"}]
        ).all()
        assert sorted(ids) == [6, 7]
    assert_sheet_equals_tables(app)


def test_inserts_in_every_form_are_creates_with_every_field(app: Path) -> None:  # noqa: F811
    with session() as s, s.begin():
        s.execute(insert(Request).values([{"title": "a"}, {"title": "b"}]))
        s.execute(insert(Operator), [{"code": "x", "name": "X"}, {"code": "y", "name": "Y"}])
        s.execute(
            insert(Request).from_select(["title"], select(func.concat("copy of ", Request.title)))
        )
        upsert = pg_insert(Operator).values(code="x", name="X2", rate=9.5)
        s.execute(upsert.on_conflict_do_update(index_elements=["code"], set_={"rate": 9.5}))
        s.execute(pg_insert(Operator).values(code="y", name="dup").on_conflict_do_nothing())
    assert _since(0) == [
        ("CREATE", "Request", "1"),
        ("CREATE", "Request", "2"),
        ("CREATE", "Operator", "x"),
        ("CREATE", "Operator", "y"),
        ("CREATE", "Request", "3"),
        ("CREATE", "Request", "4"),
        ("CREATE", "Operator", "x"),  # the upsert: CREATE of an existing record updates it
    ]  # the insert that did nothing (ON CONFLICT DO NOTHING) enqueued nothing
    assert queued("Request")[0]["payload"]["status"] == "open"  # a default, every field sent
    assert_sheet_equals_tables(app)


def test_orm_bulk_update_by_primary_key_reads_the_rows_back(app: Path) -> None:  # noqa: F811
    _seed()
    count = len(queued())
    with session() as s, s.begin():
        s.execute(
            update(Operator),
            [
                {"code": "op1", "rate": 10.0},
                {"code": "op2", "name": "renamed", "rate": 20.0},
            ],
        )
        s.execute(update(Request), [{"id": 1, "title": "one"}])
    assert sorted(_since(count)) == [
        ("UPDATE", "Operator", "op1"),
        ("UPDATE", "Operator", "op2"),
        ("UPDATE", "Request", "1"),
    ]
    by_id = {c["record_id"]: c["payload"] for c in queued()[count:]}
    assert by_id["op1"] == {"rate": 10.0}
    assert by_id["op2"] == {"name": "renamed", "rate": 20.0}
    assert set(by_id["1"]) == {"title", "updated_at"}
    assert_sheet_equals_tables(app)


def test_updates_that_change_no_tracked_field_or_no_row_enqueue_nothing() -> None:
    _seed()
    count = len(queued())
    with session() as s, s.begin():
        s.execute(update(Operator).where(Operator.code == "nobody").values(name="x"))
        s.execute(update(Request).where(Request.id == 1).values(secret=b"untracked"))
    # the row was updated, so its onupdate field (updated_at) changed: only that is sent
    assert [(c["record_id"], set(c["payload"])) for c in queued()[count:]] == [
        ("1", {"updated_at"})
    ]


def test_statements_capture_cannot_follow_are_refused_before_they_run() -> None:
    _seed()
    count = len(queued())
    with session() as s, s.begin():
        with pytest.raises(capture.CaptureError, match="sets the key 'code' of 'Operator'"):
            s.execute(update(Operator).where(Operator.code == "op1").values(code="moved"))
        with pytest.raises(capture.CaptureError, match="executemany UPDATE or DELETE"):
            s.execute(
                update(OPERATORS).where(OPERATORS.c.code == bindparam("c")).values(name="x"),
                [{"c": "op1"}, {"c": "op2"}],
            )
        assert s.get(Operator, "op1") is not None  # nothing ran
        assert {o.name for o in s.scalars(select(Operator))} == {"n1", "n2", "n3"}
    assert len(queued()) == count


def test_bulk_statements_roll_back_with_their_transaction_and_savepoint(
    app: Path,  # noqa: F811
) -> None:
    _seed()
    count = len(queued())
    with session() as s:
        s.execute(update(Operator).values(name="gone"))
        s.rollback()
    with session() as s, s.begin():
        savepoint = s.begin_nested()
        s.execute(delete(Request))
        savepoint.rollback()
        with s.begin_nested():
            s.execute(update(Request).where(Request.id == 2).values(title="kept"))
    assert _since(count) == [("UPDATE", "Request", "2")]
    assert_sheet_equals_tables(app)
