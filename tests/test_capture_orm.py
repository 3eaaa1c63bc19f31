"""ORM capture: every flush of a tracked class enqueues its changes in the same transaction."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
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
    sheet,
)
from sqlalchemy import select

from syncqueue_tasks import capture

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("app")]


def test_insert_update_delete_reach_the_sheet_with_the_key_read_after_the_flush(
    app: Path,  # noqa: F811
) -> None:
    ref = uuid.uuid4()
    with session() as s, s.begin():
        first = Request(
            title="Fix the pump", amount=decimal.Decimal("12.30"), due=dt.date(2026, 12, 1), ref=ref
        )
        s.add_all([first, Request(title="Paint the hall"), Operator(code="op-7", name="Bo")])
        s.flush()
        first_id = first.id
    assert first_id == 1
    changes = queued("Request")
    assert [(c["action"], c["record_id"]) for c in changes] == [("CREATE", "1"), ("CREATE", "2")]
    payload = changes[0]["payload"]
    assert set(payload) == {"title", "status", "amount", "due", "ref", "updated_at"}
    assert payload["status"] == "open" and payload["amount"] == "12.30"
    assert payload["due"] == "2026-12-01" and payload["ref"] == str(ref)
    assert payload["updated_at"].endswith("+00:00")  # a server default, read after the flush
    assert [c["payload"] for c in queued("Operator")] == [
        {"name": "Bo", "rate": None, "active": True, "tags": None}
    ]
    assert_sheet_equals_tables(app)

    with session() as s, s.begin():
        request = s.get(Request, 1)
        assert request is not None
        request.status = Status.CLOSED
        request.title = request.title  # the same value: not a change
        operator = s.get(Operator, "op-7")
        assert operator is not None
        operator.rate = 1.5
        operator.tags = {"team": ["north", 2], "since": "2020"}
        s.delete(s.get(Request, 2))
    changes = queued("Request")[2:]  # s.get() autoflushed the UPDATE before the DELETE
    assert [(c["action"], c["record_id"]) for c in changes] == [("UPDATE", "1"), ("DELETE", "2")]
    assert set(changes[0]["payload"]) == {"status", "updated_at"}  # onupdate: set every time
    assert changes[0]["payload"]["status"] == "closed"
    assert queued("Operator")[1]["payload"] == {
        "rate": 1.5,
        "tags": {"team": ["north", 2], "since": "2020"},
    }
    assert_sheet_equals_tables(app)
    assert set(sheet(app, "Request")) == {"1"}


def test_a_flush_with_no_changed_tracked_field_enqueues_nothing() -> None:
    with session() as s, s.begin():
        s.add(Request(title="a"))
    before = len(queued())
    with session() as s, s.begin():
        request = s.get(Request, 1)
        assert request is not None
        request.title = "a"  # unchanged
        request.secret = b"\x00\x01"  # changed, but not tracked and no onupdate field...
    # ...except that the row was updated, so its onupdate field changed: only that is sent
    assert [list(c["payload"]) for c in queued()[before:]] == [["updated_at"]]
    with session() as s, s.begin():
        operator = Operator(code="x", name="n")
        s.add(operator)
        s.flush()
        operator.name = "n"
    assert len(queued("Operator")) == 1


def test_changes_of_one_flush_are_one_enqueue_many_call(monkeypatch: pytest.MonkeyPatch) -> None:
    from syncqueue_tasks.store import queue

    calls: list[int] = []
    real = queue.enqueue_many

    def counting(changes, **kwargs):  # type: ignore[no-untyped-def]
        changes = list(changes)
        calls.append(len(changes))
        assert kwargs["session"] is not None
        return real(changes, **kwargs)

    monkeypatch.setattr(queue, "enqueue_many", counting)
    with session() as s, s.begin():
        s.add_all([Request(title=f"r{i}") for i in range(5)])
        s.add_all([Operator(code=f"o{i}", name="n") for i in range(3)])
    assert calls == [8]


def test_a_rolled_back_transaction_leaves_nothing_queued(app: Path) -> None:  # noqa: F811
    with session() as s:
        s.add(Request(title="never"))
        s.add(Operator(code="ghost", name="g"))
        s.flush()
        assert len(queued()) == 0  # another connection: not committed yet
        s.rollback()
    assert queued() == []
    with session() as s, s.begin():
        s.add(Request(title="kept"))
    assert [c["payload"]["title"] for c in queued()] == ["kept"]
    assert_sheet_equals_tables(app)


def test_savepoints_behave_like_the_data_they_wrap(app: Path) -> None:  # noqa: F811
    with session() as s, s.begin():
        s.add(Operator(code="outer", name="o"))
        with s.begin_nested():
            s.add(Operator(code="kept", name="k"))
        savepoint = s.begin_nested()
        s.add(Operator(code="dropped", name="d"))
        s.get(Operator, "outer").name = "renamed in the dropped savepoint"  # type: ignore[union-attr]
        s.flush()
        savepoint.rollback()
        with s.begin_nested():
            s.add(Request(title="inner"))
    assert [(c["action"], c["record_id"]) for c in queued("Operator")] == [
        ("CREATE", "outer"),
        ("CREATE", "kept"),
    ]
    assert [(c["action"], c["record_id"]) for c in queued("Request")] == [("CREATE", "1")]
    assert_sheet_equals_tables(app)
    assert sheet(app, "Operator")["outer"]["name"] == "o"


def test_a_changed_key_deletes_the_old_record_and_creates_the_new(app: Path) -> None:  # noqa: F811
    with session() as s, s.begin():
        s.add(Operator(code="old", name="n", rate=2.0))
    with session() as s, s.begin():
        operator = s.get(Operator, "old")
        assert operator is not None
        operator.code = "new"
        s.flush()
        s.add(Operator(code="old", name="another"))  # the old key, now a different row
    moved = [(c["action"], c["record_id"]) for c in queued()[1:]]
    assert sorted(moved) == [("CREATE", "new"), ("CREATE", "old"), ("DELETE", "old")]
    assert moved.index(("DELETE", "old")) < moved.index(("CREATE", "old"))
    assert_sheet_equals_tables(app)


def test_objects_deleted_after_a_commit_expired_them_are_deleted_by_key(
    app: Path,  # noqa: F811
) -> None:
    with session() as s:
        request = Request(title="t")
        operator = Operator(code="c", name="n")
        s.add_all([request, operator])
        s.commit()  # expires both: the delete must not need to load them
        s.delete(request)
        s.delete(operator)
        s.commit()
    assert sorted((c["action"], c["record_id"]) for c in queued()[2:]) == [
        ("DELETE", "1"),
        ("DELETE", "c"),
    ]
    assert_sheet_equals_tables(app)


def test_a_value_the_table_refuses_fails_the_flush_naming_the_field() -> None:
    from syncqueue_tasks.core.errors import ValidationError

    with session() as s:
        s.add(Operator(code="c", name="n", tags={1: "a JSON column stores this key as '1'"}))
        with pytest.raises(ValidationError, match=r"Operator\.tags: has a key of type int"):
            s.flush()
        s.rollback()
    assert queued() == []
    with session() as s:
        assert s.scalars(select(Operator)).all() == []


def test_track_refuses_what_it_cannot_capture_before_tracking() -> None:
    from syncqueue_tasks.core.errors import ValidationError

    capture.untrack(Request)
    with pytest.raises(ValidationError, match=r"Request\.secret: binary values"):
        capture.track(Request)  # every column, the bytes one included
    with pytest.raises(capture.CaptureError, match="not in SYNCQUEUE_MODELS"):
        capture.track(Request, model="Nope")
    with pytest.raises(capture.CaptureError, match="not an attribute mapped to one column"):
        capture.track(Request, fields=["title", "missing"])
    with pytest.raises(capture.CaptureError, match="not a mapped class"):
        capture.track(str)
    with pytest.raises(capture.CaptureError, match="already tracked"):
        capture.track(Operator, model="Request")  # Operator's table is tracked already
    capture.track(Request, fields=["title", "status"])
    with pytest.raises(capture.CaptureError, match="already tracked"):
        capture.track(Request, model="Revenue", fields=["title"])
    assert capture.tracked_fields("Request") == ["title", "status"]
    assert capture.tracked_fields("Operator") == ["name", "rate", "active", "tags"]
