"""Column values as JSON payload values: the one conversion table of change capture.

ORM capture, bulk capture and backfill convert Python values (``to_json``); the database
triggers convert PostgreSQL values with SQL that prints the same JSON (``sqlvalues``), so a
row gives the same payload whichever path captured it (``tests/test_capture_trigger_values.py``
compares them value by value).

| Python value (PostgreSQL type)                  | JSON value                                  |
|-------------------------------------------------|---------------------------------------------|
| ``None`` (NULL)                                 | ``null``                                    |
| ``bool`` (``boolean``)                          | ``true`` / ``false``                        |
| ``int`` within +-(2**53 - 1) (``smallint``,     | number                                      |
| ``integer``, ``bigint``)                        |                                             |
| ``int`` beyond that (``bigint``)                | string of its digits (a sheet keeps numbers |
|                                                 | as doubles, which would round it)           |
| ``float`` (``real``, ``double precision``)      | number; NaN and infinities as the strings   |
|                                                 | ``"NaN"``, ``"Infinity"``, ``"-Infinity"``; |
|                                                 | a magnitude of 1e16 or more as text with 17 |
|                                                 | significant digits, trailing zeros dropped  |
|                                                 | (``"1e+20"``, ``"6.1031396318624816e+16"``) |
| ``Decimal`` (``numeric``)                       | string, exactly as PostgreSQL prints it     |
|                                                 | (``"12.30"``: digits and scale kept, never  |
|                                                 | an exponent); ``"NaN"``, ``"Infinity"``     |
| ``str`` (``text``, ``varchar``, ``char(n)``     | string (a NUL character is refused)         |
| with its padding, ``citext``, ``name``)         |                                             |
| ``datetime`` aware (``timestamptz``)            | ISO 8601 in UTC:                            |
|                                                 | ``"2026-11-30T12:00:00+00:00"``             |
|                                                 | (microseconds only when not zero)           |
| ``datetime`` naive (``timestamp``)              | ISO 8601 without offset, as stored: wall-   |
|                                                 | clock time, no time zone assumed            |
| ``date`` (``date``)                             | ``"2026-11-30"``                            |
| ``time`` (``time``, ``timetz``)                 | ``"12:00:00"``; an aware time keeps its     |
|                                                 | offset (``"12:00:00+01:00"``)               |
| ``enum.Enum`` (an enum type: its label)         | its ``.value``, converted by this table     |
| ``uuid.UUID`` (``uuid``)                        | ``"0f8e...-..."`` (lower-case, hyphenated)  |
| ``list`` / ``tuple`` (an array; triggers: of    | array, each element converted by this table |
| ``boolean``, ``smallint``, ``integer``,         |                                             |
| ``text``, ``varchar`` or ``uuid``)              |                                             |
| ``dict`` (``json``, ``jsonb``)                  | object with string keys, values converted   |
|                                                 | (a JSON number: an int if written without   |
|                                                 | ``.`` or exponent, else a float, as above)  |
| ``bytes`` (``bytea``)                           | refused: a sheet cell cannot show or edit   |
|                                                 | binary data; leave the column out           |
|                                                 | (``fields=``, ``--columns``)                |
| anything else (``timedelta``/``interval``, ...) | refused                                     |

A refusal raises ``ValidationError`` naming ``Model.field``. ``check_column_type`` applies the
same table to a column's declared type, so ``track`` refuses an unfit column before any row
is written (and ``sqlvalues`` refuses it before a trigger is installed).
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import math
import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy.types import TypeEngine

from syncqueue_tasks.core.errors import ValidationError

MAX_EXACT_INT = 2**53 - 1  # the largest integer a double (a sheet's number) holds exactly
_FLOAT_EXACT_LIMIT = 1e16  # the queue refuses floats this large (JSONB would print them as ints)
_ACCEPTED_TYPES: tuple[type, ...] = (
    type(None),
    bool,
    int,
    float,
    decimal.Decimal,
    str,
    dt.date,  # datetime too
    dt.time,
    enum.Enum,
    uuid.UUID,
    list,
    tuple,
    dict,
)


def to_json(model: str, field: str, value: Any) -> Any:
    """Convert one column value by the table above; ``ValidationError`` names ``model.field``."""
    try:
        return _convert(value)
    except _Refused as exc:
        raise ValidationError(f"{model}.{field}", str(exc)) from None


def check_column_type(model: str, field: str, column_type: TypeEngine[Any]) -> None:
    """Refuse a column whose declared Python type the table cannot convert (a type that does
    not say, or ``object`` (a JSON column's), can hold anything: its values are checked one
    by one)."""
    try:
        python_type = column_type.python_type
    except NotImplementedError:
        return
    if python_type is object:
        return
    if issubclass(python_type, bytes | bytearray | memoryview):
        raise ValidationError(f"{model}.{field}", BINARY_REFUSED)
    if not issubclass(python_type, _ACCEPTED_TYPES):
        raise ValidationError(f"{model}.{field}", unsupported(python_type.__name__))


class _Refused(Exception):
    """A value the table does not convert (the message says why)."""


BINARY_REFUSED = (
    "binary values (bytes) are not written to a sheet; leave the column out "
    "(fields=[...], --columns)"
)


def unsupported(kind: str) -> str:
    """Why values of type ``kind`` are refused (the same words for ORM and trigger capture)."""
    return (
        f"values of type {kind} have no JSON form in the capture table; leave the column "
        "out (fields=[...], --columns) or convert it in the database"
    )


def _convert(value: Any) -> Any:
    kind = type(value)
    if value is None or kind is bool or (kind is str and "\x00" not in value):
        return value
    if isinstance(value, enum.Enum):  # before int and str: IntEnum, StrEnum
        return _convert(value.value)
    if isinstance(value, int):
        return int(value) if -MAX_EXACT_INT <= value <= MAX_EXACT_INT else str(int(value))
    if isinstance(value, float):
        return _float(float(value))
    if isinstance(value, decimal.Decimal):
        return _decimal(value)
    if isinstance(value, str):
        if "\x00" in value:
            raise _Refused("contains a NUL character, which PostgreSQL JSON cannot hold")
        return str(value)
    if isinstance(value, dt.datetime):  # before date: a datetime is a date
        return _datetime(value)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [_convert(v) for v in value]
    if isinstance(value, Mapping):
        return _mapping(value)
    if isinstance(value, bytes | bytearray | memoryview):
        raise _Refused(BINARY_REFUSED)
    raise _Refused(unsupported(kind.__name__))


def _float(value: float) -> float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if abs(value) < _FLOAT_EXACT_LIMIT:
        return value
    return _float_text(value)


def _float_text(value: float) -> str:
    """17 significant digits (exact for a double), trailing zeros dropped: ``"1e+20"``,
    ``"6.1031396318624816e+16"``; what C's ``%.16e`` prints, so SQL's ``to_char`` can match."""
    mantissa, exponent = format(value, ".16e").split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{exponent}"


def _decimal(value: decimal.Decimal) -> str:
    if value.is_nan():
        return "NaN"
    if value.is_infinite():
        return "Infinity" if value > 0 else "-Infinity"
    return format(value, "f")


def _datetime(value: dt.datetime) -> str:
    if value.utcoffset() is None:
        return value.isoformat()
    return value.astimezone(dt.UTC).isoformat()


def _mapping(value: Mapping[Any, Any]) -> dict[str, Any]:
    result = {}
    for key, element in value.items():
        if not isinstance(key, str):
            raise _Refused(f"has a key of type {type(key).__name__}; JSON keys are strings")
        result[key] = _convert(element)
    return result
