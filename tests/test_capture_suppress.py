"""No echo: what an importer writes inside ``capture.suppressed`` reaches the table only."""

from __future__ import annotations

from pathlib import Path

import pytest
from capture_app import (
    Operator,
    Request,
    app,  # noqa: F401  (fixture)
    drain,
    queued,
    session,
    sheet,
    table_as_sheet,
)
from sqlalchemy import text, update
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session

from syncqueue_tasks import capture
from syncqueue_tasks.capture import registry

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("app")]


def _switch(s: Session) -> str | None:
    """The trigger switch as the session's transaction sees it."""
    return s.execute(text("SELECT current_setting('syncqueue.capture', true)")).scalar()


def test_an_importers_write_reaches_the_table_and_not_the_sheet(app: Path) -> None:  # noqa: F811
    with session() as s, s.begin():
        s.add_all([Request(title="typed by the app"), Operator(code="op", name="Bo")])
    drain()
    before = sheet(app, "Request"), sheet(app, "Operator")

    # the importer: sheet edits copied into the database
    with session() as s, s.begin(), capture.suppressed(s):
        request = s.get(Request, 1)
        assert request is not None
        request.title = "edited in the sheet"
        s.add(Operator(code="typed-in-sheet", name="Al"))
        s.execute(update(Operator).where(Operator.code == "op").values(rate=2.5))
    with session() as s:
        assert s.get(Request, 1).title == "edited in the sheet"  # type: ignore[union-attr]
        assert s.get(Operator, "typed-in-sheet") is not None
    assert len(queued()) == 2  # the two CREATEs from before, nothing since
    drain()
    assert (sheet(app, "Request"), sheet(app, "Operator")) == before
    assert sheet(app, "Request") != table_as_sheet(registry.get("Request"))


def test_only_the_block_is_suppressed() -> None:
    with session() as s, s.begin():
        s.add(Operator(code="before", name="b"))  # pending when the block opens: captured
        with capture.suppressed(s):
            s.add(Operator(code="inside", name="i"))  # flushed when the block closes: skipped
        s.add(Operator(code="after", name="a"))
        with session() as other, other.begin():  # another session meanwhile: captured
            other.add(Operator(code="other", name="o"))
    assert sorted(c["record_id"] for c in queued()) == ["after", "before", "other"]


def test_the_trigger_switch_is_off_for_the_block_in_every_transaction_it_spans() -> None:
    with session() as s:
        s.begin()
        assert _switch(s) != "off"
        with capture.suppressed(s):
            assert _switch(s) == "off"
            s.commit()
            assert _switch(s) == "off"  # the transaction begun inside the block
            with capture.suppressed(s):  # nested blocks
                assert _switch(s) == "off"
            assert _switch(s) == "off"
        assert _switch(s) == ""  # put back for the rest of the transaction
        s.commit()
        savepoint = s.begin_nested()
        assert _switch(s) != "off"  # the SAVEPOINT is sent
        with capture.suppressed(s):
            savepoint.rollback()  # undoes the SET LOCAL made inside the savepoint...
            assert _switch(s) == "off"  # ...so the block sets it again
        s.rollback()
        assert _switch(s) != "off"


def test_an_error_inside_the_block_propagates_unchanged() -> None:
    with session() as s:
        with pytest.raises(DataError, match="NUL"), capture.suppressed(s):
            s.add(Operator(code="c", name="bad\x00"))
            s.flush()  # PostgreSQL refuses: the transaction is aborted, nothing to put back
        s.rollback()
        assert _switch(s) != "off"
    assert queued() == []
