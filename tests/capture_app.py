"""The application schema the capture tests write to, and how they read the sheet back.

Two tables: ``capture_request`` (autoincrement integer key, tracked as ``Request``) and
``capture_operator`` (text key, tracked as ``Operator``), captured by the ORM (fixture ``app``)
or by triggers (fixture ``trigger_app``). Their changes are drained through
the real workbook writer (``batch.process``, the driver behind ``process_batch``), and
the workbook is compared with the tables.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from sqlalchemy import (
    DateTime,
    Enum,
    Integer,
    LargeBinary,
    Numeric,
    String,
    func,
    select,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from syncqueue_tasks import capture
from syncqueue_tasks.capture import registry, triggers
from syncqueue_tasks.capture.registry import Tracked
from syncqueue_tasks.capture.values import to_json
from syncqueue_tasks.celery import batch
from syncqueue_tasks.settings import get_settings
from syncqueue_tasks.store.db import get_engine
from syncqueue_tasks.writers.loading import load_writer

WORKBOOK = "syncqueue_tasks.writers.workbook:create_writer"
REQUEST_FIELDS = ["title", "status", "amount", "due", "ref", "updated_at"]


class AppBase(DeclarativeBase):
    """The application's declarative base (not the package's)."""


class Status(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class Request(AppBase):
    __tablename__ = "capture_request"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    title: Mapped[str] = mapped_column(String(200))
    status: Mapped[Status] = mapped_column(
        Enum(Status, name="capture_status", values_callable=lambda e: [m.value for m in e]),
        default=Status.OPEN,
        server_default="open",
    )
    amount: Mapped[decimal.Decimal | None] = mapped_column(Numeric(12, 2))
    due: Mapped[dt.date | None]
    ref: Mapped[uuid.UUID | None]
    secret: Mapped[bytes | None] = mapped_column(LargeBinary)  # never sent to the sheet
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class Operator(AppBase):
    __tablename__ = "capture_operator"

    code: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    rate: Mapped[float | None]
    active: Mapped[bool] = mapped_column(default=True, server_default=true())
    tags: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


def create_schema() -> None:
    """The application's tables, made afresh (a test may have altered a column or left
    triggers behind)."""
    AppBase.metadata.drop_all(get_engine())
    AppBase.metadata.create_all(get_engine())


def empty_tables() -> None:
    with get_engine().begin() as conn:
        conn.execute(text("TRUNCATE capture_request, capture_operator, sync_queue, sync_record"))
        conn.execute(text("ALTER SEQUENCE capture_request_id_seq RESTART"))


def _fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty tables and queue, a fresh workbook (the writer's settings point at it)."""
    book = tmp_path / "book.xlsx"
    monkeypatch.setenv("SYNCQUEUE_WRITER", WORKBOOK)
    monkeypatch.setenv("SYNCQUEUE_WORKBOOK_PATH", str(book))
    monkeypatch.setenv("SYNCQUEUE_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    create_schema()
    empty_tables()
    return book


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Empty tables and queue, both classes tracked, a fresh workbook; yields its path."""
    book = _fresh(tmp_path, monkeypatch)
    try:
        capture.track(Request, model="Request", fields=REQUEST_FIELDS)
        capture.track(Operator)
        yield book
    finally:
        for model in ("Request", "Operator"):
            if registry.find(model) is not None:
                capture.untrack(model)
        get_settings.cache_clear()


@pytest.fixture
def trigger_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Empty tables and queue, both tables captured by triggers (no ORM capture), with the
    fields the ``app`` fixture tracks; a fresh workbook; yields its path."""
    book = _fresh(tmp_path, monkeypatch)
    try:
        triggers.install(get_engine(), "capture_request", "Request", columns=REQUEST_FIELDS)
        triggers.install(get_engine(), "public.capture_operator", "Operator")
        yield book
    finally:
        remove_triggers()
        get_settings.cache_clear()


def remove_triggers() -> None:
    """Remove every capture trigger the tests installed."""
    for found in triggers.installed(get_engine()):
        triggers.remove(get_engine(), found.name)


def trigger_sources() -> dict[str, Tracked]:
    """What the triggers of ``trigger_app`` capture, as ``Tracked`` (for the comparisons)."""
    return {
        model: found
        for model in ("Request", "Operator")
        if (found := triggers.tracked(get_engine(), model)) is not None
    }


def session() -> Session:
    return Session(get_engine())


def drain() -> None:
    """Write everything queued to the workbook through the real batch driver and writer."""
    batch.process(load_writer(WORKBOOK, batch.writer_context()), batch_size=1000, time_budget=120)
    with get_engine().connect() as conn:
        left = conn.execute(text("SELECT count(*) FROM sync_queue WHERE status <> 'COMPLETED'"))
        assert left.scalar_one() == 0


def queued(model: str | None = None) -> list[dict[str, Any]]:
    """The queued changes, in id order."""
    with get_engine().connect() as conn:
        rows = conn.execute(
            text(
                "SELECT action, model, record_id, payload FROM sync_queue "
                "WHERE CAST(:model AS text) IS NULL OR model = :model ORDER BY id"
            ),
            {"model": model},
        )
        return [dict(r._mapping, action=str(r.action)) for r in rows]


def sheet(book: Path, model: str) -> dict[str, dict[str, Any]]:
    """The live rows of ``model``'s worksheet by id, empty cells left out (asserts each id
    is on one row)."""
    if not book.exists():
        return {}
    workbook = openpyxl.load_workbook(book)
    if model not in workbook.sheetnames:
        return {}
    rows = list(workbook[model].iter_rows(values_only=True))
    header = [str(h) for h in rows[0]]
    records = [dict(zip(header, r, strict=False)) for r in rows[1:]]
    counts = Counter(str(r["id"]) for r in records)
    assert max(counts.values(), default=1) == 1, counts.most_common(3)
    return {
        str(r.pop("id")): {k: v for k, v in r.items() if k != "_deleted" and v is not None}
        for r in records
        if r.get("_deleted") is not True
    }


def table_as_sheet(tracked: Tracked) -> dict[str, dict[str, Any]]:
    """What the sheet must hold for a tracked table: every row, each non-empty field as the
    table converts it (an empty cell and a missing column read alike: left out)."""
    columns = [tracked.column(f) for f in tracked.fields]
    with get_engine().connect() as conn:
        rows = conn.execute(select(tracked.column(tracked.key_field), *columns)).all()
    return {
        str(to_json(tracked.model, tracked.key_field, key)): {
            f: _cell(to_json(tracked.model, f, v))
            for f, v in zip(tracked.fields, values, strict=True)
            if v is not None
        }
        for key, *values in rows
    }


def _cell(value: Any) -> Any:
    """A payload value as the workbook writer stores it (nested data as JSON text)."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else value


def assert_sheet_equals_tables(book: Path, sources: Mapping[str, Tracked] | None = None) -> None:
    """Drain the queue, then: the workbook holds exactly the rows of both tables (as
    ``sources`` describe them; default: the classes ``track`` registered)."""
    drain()
    for model in ("Request", "Operator"):
        source = registry.get(model) if sources is None else sources[model]
        assert sheet(book, model) == table_as_sheet(source), model
