"""One value table: a row captured by a trigger and the same row captured or backfilled in
Python give the same payload, for every column type the table converts."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import random
import struct
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from capture_app import Status, create_schema, empty_tables, queued, session
from sqlalchemy import (
    CHAR,
    JSON,
    REAL,
    BigInteger,
    Double,
    Integer,
    Numeric,
    SmallInteger,
    Text,
    Time,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, ENUM, JSONB, TIMESTAMP
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from syncqueue_tasks import capture
from syncqueue_tasks.capture import triggers
from syncqueue_tasks.store.db import get_engine


class ValueBase(DeclarativeBase):
    """A base of its own: the table exists only while these tests run."""


class Value(ValueBase):
    """A column of every type the value table converts."""

    __tablename__ = "capture_value"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    small: Mapped[int | None] = mapped_column(SmallInteger)
    big: Mapped[int | None] = mapped_column(BigInteger)
    double: Mapped[float | None] = mapped_column(Double)
    single: Mapped[float | None] = mapped_column(REAL)
    amount: Mapped[decimal.Decimal | None] = mapped_column(Numeric)
    label: Mapped[str | None] = mapped_column(Text)
    fixed: Mapped[str | None] = mapped_column(CHAR(5))  # psycopg reads it with its padding
    stamp: Mapped[dt.datetime | None] = mapped_column(TIMESTAMP(timezone=True))
    naive: Mapped[dt.datetime | None] = mapped_column(TIMESTAMP(timezone=False))
    day: Mapped[dt.date | None]
    clock: Mapped[dt.time | None] = mapped_column(Time(timezone=False))
    zoned: Mapped[dt.time | None] = mapped_column(Time(timezone=True))
    ref: Mapped[uuid.UUID | None]
    doc: Mapped[Any] = mapped_column(JSONB, nullable=True)
    raw: Mapped[Any] = mapped_column(JSON, nullable=True)
    tags: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    numbers: Mapped[list[int] | None] = mapped_column(ARRAY(Integer))
    flag: Mapped[bool | None]
    status: Mapped[Status | None] = mapped_column(  # the type of capture_app's Request.status
        ENUM(
            Status,
            name="capture_status",
            create_type=False,
            values_callable=lambda e: [m.value for m in e],
        )
    )


FIELDS = [c.name for c in Value.__table__.columns if c.name != "id"]


@pytest.fixture
def values_table(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The table, empty, captured by its trigger (model Revenue); the queue empty."""
    monkeypatch.setenv("SYNCQUEUE_DATA_DIR", str(tmp_path))
    create_schema()  # the enum type
    empty_tables()
    ValueBase.metadata.create_all(get_engine())
    try:
        triggers.install(get_engine(), "capture_value", "Revenue", columns=FIELDS)
        yield
    finally:
        triggers.remove(get_engine(), "capture_value")
        ValueBase.metadata.drop_all(get_engine())


pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("values_table")]

PLUS_0530 = dt.timezone(dt.timedelta(hours=5, minutes=30))


def test_the_orm_and_the_trigger_capture_the_same_row_with_the_same_payload() -> None:
    """Rows written through the ORM with both captures on: each change is queued twice, once
    by each path, with equal payloads (values the columns store as given)."""
    capture.track(Value, model="Revenue")
    try:
        with session() as s, s.begin():
            s.add_all(
                [
                    Value(
                        id=1,
                        small=-32768,
                        big=2**53,
                        double=6.103139631862482e16,
                        single=1.5,
                        amount=decimal.Decimal("12.30"),
                        label="ü 'quoted' \\ back",
                        fixed="abcde",
                        stamp=dt.datetime(2026, 11, 30, 13, 0, 0, 5, tzinfo=PLUS_0530),
                        naive=dt.datetime(2026, 11, 30, 12, 0, 0, 5),
                        day=dt.date(2026, 11, 30),
                        clock=dt.time(23, 59, 59, 1),
                        zoned=dt.time(12, 30, tzinfo=PLUS_0530),
                        ref=uuid.UUID("0f8e4b6a-0000-4000-8000-00000000000a"),
                        doc={"a": [1, 0.1, "x", None, True, {"b": -7}], "n": {"deep": 1e-7}},
                        raw={"big": 1e20, "long": 12345678901234567890, "small": 1.0},
                        tags=["a", None, "ü"],
                        numbers=[1, -2, None],
                        flag=True,
                        status=Status.CLOSED,
                    ),
                    Value(
                        id=2,
                        big=-(2**63),
                        double=math.nan,
                        single=-math.inf,
                        amount=decimal.Decimal("NaN"),
                        tags=[],
                        doc=[],
                        raw="text",
                    ),
                    Value(id=3),
                ]
            )
        with session() as s, s.begin():
            first = s.get(Value, 1)
            assert first is not None
            first.double, first.amount, first.label, first.stamp = 2.5, None, "new", None
            first.doc = {"a": 2}
            third = s.get(Value, 3)
            assert third is not None
            third.day, third.numbers = dt.date(2000, 1, 1), [3]
    finally:
        capture.untrack(Value)
    pairs: dict[tuple[str, str], list[Any]] = {}
    for change in queued("Revenue"):
        pairs.setdefault((change["action"], change["record_id"]), []).append(change["payload"])
    assert sorted(pairs) == [
        ("CREATE", "1"),
        ("CREATE", "2"),
        ("CREATE", "3"),
        ("UPDATE", "1"),
        ("UPDATE", "3"),
    ]
    for key, (one, other) in pairs.items():
        assert one == other, key
    assert pairs["CREATE", "1"][0]["double"] == "6.1031396318624816e+16"
    assert pairs["CREATE", "1"][0]["raw"] == {
        "big": "1e+20",
        "long": "12345678901234567890",
        "small": 1.0,
    }
    assert pairs["UPDATE", "1"][0] == {
        "double": 2.5,
        "amount": None,
        "label": "new",
        "stamp": None,
        "doc": {"a": 2},
    }


def test_random_rows_give_the_trigger_and_the_backfill_the_same_payloads() -> None:
    """Random values of every type, written by SQL in a session with unusual settings (time
    zone, float digits, date style): the trigger's CREATE of each row equals the CREATE the
    backfill (Python, from the values psycopg loads) makes of it."""
    rng = random.Random(20261204)
    rows = [_random_row(rng, i) for i in range(1, 301)]
    columns = ", ".join(["id", *FIELDS])
    placeholders = ", ".join(
        f"CAST(:{c} AS {t})" for c, t in [("id", "bigint"), *zip(FIELDS, _SQL_TYPES, strict=True)]
    )
    with get_engine().begin() as conn:
        conn.execute(text("SET LOCAL TimeZone = 'Asia/Kathmandu'"))
        conn.execute(text("SET LOCAL extra_float_digits = 0"))
        conn.execute(text("SET LOCAL DateStyle = 'SQL, DMY'"))
        conn.execute(text(f"INSERT INTO capture_value ({columns}) VALUES ({placeholders})"), rows)
    by_trigger = {c["record_id"]: c["payload"] for c in queued("Revenue")}
    source = capture.table_source(get_engine(), "Revenue", "capture_value", columns=FIELDS)
    report = capture.backfill(get_engine(), source)
    assert report.enqueued == len(rows)
    by_backfill = {c["record_id"]: c["payload"] for c in queued("Revenue")[len(rows) :]}
    assert set(by_trigger) == set(by_backfill) == {str(r["id"]) for r in rows}
    for record_id, payload in by_trigger.items():
        for name in FIELDS:
            assert payload[name] == by_backfill[record_id][name], (record_id, name)
    doubles = [p["double"] for p in by_trigger.values()]
    assert any(isinstance(d, str) and "e+" in d for d in doubles)  # the text form was reached
    assert any(isinstance(p["big"], str) for p in by_trigger.values())


_SQL_TYPES = [
    "smallint",
    "bigint",
    "double precision",
    "real",
    "numeric",
    "text",
    "char(5)",
    "timestamptz",
    "timestamp",
    "date",
    "time",
    "timetz",
    "uuid",
    "jsonb",
    "json",
    "text[]",
    "integer[]",
    "boolean",
    "capture_status",
]


def _random_row(rng: random.Random, key: int) -> dict[str, Any]:
    """One row of random values, as SQL text (None: NULL, one value in eight)."""

    def maybe(value: Any) -> Any:
        return None if rng.random() < 0.125 else value

    stamp = dt.datetime(rng.randint(1, 9999), 1, 1) + dt.timedelta(
        days=rng.randint(0, 364), microseconds=rng.randint(0, 86_400_000_000 - 1)
    )
    offset = rng.choice([0, 1, -1]) * rng.randint(0, 15 * 3600 + 59 * 60 + 59)
    return {
        "id": key,
        "small": maybe(str(rng.randint(-(2**15), 2**15 - 1))),
        "big": maybe(
            str(rng.choice([rng.randint(-(2**63), 2**63 - 1), rng.randint(-(2**54), 2**54)]))
        ),
        "double": maybe(_double(rng)),
        "single": maybe(repr(struct.unpack("f", struct.pack("I", rng.getrandbits(32)))[0])),
        "amount": maybe(_numeric(rng)),
        "label": maybe(
            "".join(
                chr(rng.choice([rng.randint(32, 126), rng.randint(160, 0xD7FF)]))
                for _ in range(rng.randint(0, 12))
            )
        ),
        "fixed": maybe("".join(rng.choice("ab ü") for _ in range(rng.randint(0, 5)))),
        "stamp": maybe(stamp.isoformat() + "+00"),
        "naive": maybe(stamp.isoformat()),
        "day": maybe(stamp.date().isoformat()),
        "clock": maybe(stamp.time().isoformat()),
        "zoned": maybe(stamp.time().isoformat() + _offset(offset)),
        "ref": maybe(str(uuid.UUID(int=rng.getrandbits(128)))),
        "doc": maybe(json.dumps(_json(rng, 3))),
        "raw": maybe(_json_text(rng)),
        "tags": maybe(
            "{"
            + ",".join(
                rng.choice(['"a b"', "NULL", '"ü"', '"x,y"']) for _ in range(rng.randint(0, 3))
            )
            + "}"
        ),
        "numbers": maybe(
            "{"
            + ",".join(
                rng.choice([str(rng.randint(-9, 9)), "NULL"]) for _ in range(rng.randint(0, 3))
            )
            + "}"
        ),
        "flag": maybe(rng.choice(["true", "false"])),
        "status": maybe(rng.choice(["open", "closed"])),
    }


def _offset(seconds: int) -> str:
    """A UTC offset as timetz input: ``+05:30``, ``-00:00:15``."""
    sign, value = ("-" if seconds < 0 else "+"), abs(seconds)
    return f"{sign}{value // 3600:02}:{value % 3600 // 60:02}:{value % 60:02}"


def _double(rng: random.Random) -> str:
    kind = rng.randint(0, 4)
    if kind == 0:
        value = struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0]
    elif kind == 1:
        value = rng.uniform(1, 10) * 10 ** rng.randint(15, 300) * rng.choice([1, -1])
    elif kind == 2:
        value = rng.uniform(-1e6, 1e6)
    elif kind == 3:
        return rng.choice(["NaN", "Infinity", "-Infinity", "-0"])
    else:
        value = float(rng.randint(-(2**60), 2**60))
    return repr(value) if math.isfinite(value) else "NaN"


def _numeric(rng: random.Random) -> str:
    if rng.random() < 0.05:
        return "NaN"
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 40)))
    point = rng.randint(0, len(digits))
    sign = rng.choice(["", "-"])
    return f"{sign}{digits[:point] or '0'}.{digits[point:] or '0'}"


def _json(rng: random.Random, depth: int) -> Any:
    kind = rng.randint(0, 6 if depth else 4)
    if kind == 0:
        return rng.randint(-(2**64), 2**64)
    if kind == 1:
        return rng.choice([rng.uniform(-1e20, 1e20), rng.uniform(-1, 1), 1e16, 2.5e17])
    if kind == 2:
        return rng.choice(["", "text", "ü", "a\nb"])
    if kind == 3:
        return rng.choice([None, True, False])
    if kind == 4:
        return rng.randint(-100, 100)
    if kind == 5:
        return [_json(rng, depth - 1) for _ in range(rng.randint(0, 3))]
    return {f"k{i}": _json(rng, depth - 1) for i in range(rng.randint(0, 3))}


def _json_text(rng: random.Random) -> str:
    """JSON text with numbers written every way JSON allows (json keeps the text)."""
    numbers = ["1E5", "1.0", "-0", "1e-7", "12345678901234567890", "2.5E+17", "0.1", "-3"]
    numbers += ["12345678901234567.5", "1.5E300", "-9007199254740993", "9007199254740991.0"]
    chosen = rng.sample(numbers, rng.randint(1, 4))
    return '{"n": [' + ", ".join(chosen) + '], "s": "x"}'
