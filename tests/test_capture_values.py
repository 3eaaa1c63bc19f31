"""The capture value table: every row of the documented table, and its refusals."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import uuid

import pytest
from sqlalchemy import JSON, Date, Interval, LargeBinary, Numeric, String
from sqlalchemy.types import UserDefinedType

from syncqueue_tasks.capture.values import MAX_EXACT_INT, check_column_type, to_json
from syncqueue_tasks.core.errors import ValidationError
from syncqueue_tasks.core.validation import Limits, validate_change

pytestmark = pytest.mark.unit


class Color(enum.Enum):
    RED = "red"
    NESTED = (1, dt.date(2026, 1, 2))


class Level(enum.IntEnum):
    HIGH = 3


PARIS = dt.timezone(dt.timedelta(hours=1))
CASES = [
    (None, None),
    (True, True),
    (42, 42),
    (MAX_EXACT_INT, MAX_EXACT_INT),
    (MAX_EXACT_INT + 1, str(MAX_EXACT_INT + 1)),
    (-(2**63), str(-(2**63))),
    (1.25, 1.25),
    (float("nan"), "NaN"),
    (float("-inf"), "-Infinity"),
    (1e20, "1e+20"),
    (-2.5e16, "-2.5e+16"),
    (6.103139631862482e16, "6.1031396318624816e+16"),  # 17 digits: C's %.16e, as SQL prints
    (decimal.Decimal("12.30"), "12.30"),
    (decimal.Decimal("0.1000000000000000000000000001"), "0.1000000000000000000000000001"),
    (decimal.Decimal("1E+3"), "1000"),
    (decimal.Decimal("-0.00"), "-0.00"),
    (decimal.Decimal("NaN"), "NaN"),
    ("text ü", "text ü"),
    (dt.datetime(2026, 11, 30, 13, 0, tzinfo=PARIS), "2026-11-30T12:00:00+00:00"),
    (dt.datetime(2026, 11, 30, 12, 0, 0, 5), "2026-11-30T12:00:00.000005"),  # naive: as is
    (dt.date(2026, 11, 30), "2026-11-30"),
    (dt.time(12, 30), "12:30:00"),
    (dt.time(12, 30, tzinfo=PARIS), "12:30:00+01:00"),
    (Color.RED, "red"),
    (Color.NESTED, [1, "2026-01-02"]),
    (Level.HIGH, 3),
    (uuid.UUID("0f8e4b6a-0000-4000-8000-000000000001"), "0f8e4b6a-0000-4000-8000-000000000001"),
    ([1, decimal.Decimal("2.5"), (None,)], [1, "2.5", [None]]),
    ({"a": {"b": dt.date(2026, 1, 1)}}, {"a": {"b": "2026-01-01"}}),
]


@pytest.mark.parametrize(("value", "expected"), CASES, ids=[repr(c[0])[:40] for c in CASES])
def test_each_value_converts_as_the_table_says_and_the_queue_accepts_it(
    value: object, expected: object
) -> None:
    converted = to_json("Request", "f", value)
    assert converted == expected and type(converted) is type(expected)
    change = validate_change(
        "CREATE", "Request", "1", {"f": converted}, limits=Limits()
    )  # stored unchanged
    assert json.loads(change.payload_json) == {"f": expected}


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (b"\x00", "binary values"),
        (bytearray(b"x"), "binary values"),
        (dt.timedelta(days=1), "type timedelta have no JSON form"),
        (object(), "type object have no JSON form"),
        ({1: "a"}, "has a key of type int"),
        (["ok", {"deep": b"x"}], "binary values"),
        ("a\x00b", "NUL character"),
    ],
)
def test_anything_else_is_refused_naming_the_field(value: object, problem: str) -> None:
    with pytest.raises(ValidationError, match=rf"^Request\.due_on: .*{problem}"):
        to_json("Request", "due_on", value)


def test_column_types_are_checked_before_any_row_is_written() -> None:
    for accepted in (String(), Numeric(), Date(), JSON()):
        check_column_type("Request", "f", accepted)
    check_column_type("Request", "f", UserDefinedType())  # says nothing: checked per value
    with pytest.raises(ValidationError, match=r"Request\.blob: binary values"):
        check_column_type("Request", "blob", LargeBinary())
    with pytest.raises(ValidationError, match=r"Request\.span: values of type timedelta"):
        check_column_type("Request", "span", Interval())
