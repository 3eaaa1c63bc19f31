"""The SQL side of the value table (``values``): a column's value as JSONB, in a trigger.

``expression(model, field, column_type, ref)`` is a SQL expression turning the value ``ref``
(``n."amount"``) into the JSONB value that ``values.to_json`` makes of the same value as
psycopg loads it. It assumes ``extra_float_digits = 1`` (PostgreSQL's default; the trigger
functions set it): floats print as the shortest text that reads back as the same double.
A type the table has no exact form for raises ``ValidationError`` naming ``Model.field``,
before anything is installed.
"""

from __future__ import annotations

from dataclasses import dataclass

from syncqueue_tasks.capture.values import BINARY_REFUSED, MAX_EXACT_INT, unsupported
from syncqueue_tasks.core.errors import ValidationError

JSON_FUNCTION = "syncqueue_capture_json"  # the helper converting json/jsonb values (triggers)

_AS_IS = "to_jsonb({x})"  # to_jsonb prints these exactly as the table says
_AS_TEXT = "to_jsonb({x}::text)"
_FRACTION = "CASE WHEN date_trunc('second', {t}) = {t} THEN '' ELSE to_char({t}, '.US') END"
_CLOCK = "to_char({t}, 'HH24:MI:SS') || " + _FRACTION
_STAMP = "to_char({t}, 'YYYY-MM-DD\"T\"HH24:MI:SS') || " + _FRACTION


def float_text(double: str) -> str:
    """SQL text of a double as ``values._float_text`` prints it (C's ``%.16e``, trailing zeros
    of the mantissa dropped)."""
    return f"regexp_replace(btrim(to_char({double}, '9.9999999999999999EEEE')), '\\.?0+e', 'e')"


def _float(double: str) -> str:
    """A float column's value; ``double`` is it as the double psycopg would load."""
    return (
        "CASE WHEN {x} IN ('NaN', 'Infinity', '-Infinity') THEN to_jsonb({x}::text) "
        f"WHEN abs({{x}}) >= 1e16 THEN to_jsonb({float_text(double)}) "
        "ELSE to_jsonb({x}) END"
    )


def _offset(z: str) -> str:
    """``+HH:MM`` (``:SS`` when not zero) of a UTC offset of ``z`` seconds, as Python prints."""
    part = "lpad((abs({z}) {op})::text, 2, '0')"
    hours = part.format(z=z, op="/ 3600")
    minutes = part.format(z=z, op="% 3600 / 60")
    seconds = part.format(z=z, op="% 60")
    return (
        f"CASE WHEN {z} < 0 THEN '-' ELSE '+' END || {hours} || ':' || {minutes} || "
        f"CASE WHEN {z} % 60 = 0 THEN '' ELSE ':' || {seconds} END"
    )


_TIME_OF = "('2000-01-01'::date + {x})"
_ZONE = "extract(timezone FROM {x})::integer"

# PostgreSQL type name (pg_catalog, or citext) -> the expression, {x} the value
_SCALARS = {
    "bool": _AS_IS,
    "int2": _AS_IS,
    "int4": _AS_IS,
    "int8": (
        f"CASE WHEN {{x}} BETWEEN -{MAX_EXACT_INT} AND {MAX_EXACT_INT} THEN to_jsonb({{x}}) "
        "ELSE to_jsonb({x}::text) END"
    ),
    "float8": _float("{x}"),
    "float4": _float("{x}::text::float8"),  # psycopg reads real as its text
    "numeric": _AS_TEXT,
    "text": _AS_IS,
    "varchar": _AS_IS,
    "bpchar": _AS_IS,  # with its padding, as psycopg reads it
    "name": _AS_IS,
    "citext": _AS_IS,
    "uuid": _AS_TEXT,
    "date": "to_jsonb(to_char({x}, 'YYYY-MM-DD'))",
    "timestamp": "to_jsonb(" + _STAMP.format(t="{x}") + ")",
    "timestamptz": "to_jsonb(" + _STAMP.format(t="({x} AT TIME ZONE 'UTC')") + " || '+00:00')",
    "time": "to_jsonb(" + _CLOCK.format(t=_TIME_OF) + ")",
    "timetz": (
        "to_jsonb("
        + _CLOCK.format(t=_TIME_OF.format(x="{x}::time"))
        + " || "
        + _offset(_ZONE)
        + ")"
    ),
    "json": JSON_FUNCTION + "({x})",
    "jsonb": JSON_FUNCTION + "({x}::json)",
}
_ARRAY_ELEMENTS = {"bool", "int2", "int4", "text", "varchar", "uuid"}  # to_jsonb is exact
# key types whose JSON form is text or an integer (a record id); the first ones print it as is
_PLAIN_KEYS = {"int2", "int4", "int8", "numeric", "text", "varchar", "name", "citext", "uuid"}
_KEYS = _PLAIN_KEYS | {"bpchar", "date", "timestamp", "timestamptz", "time", "timetz"}
_TEXT_KEYS = {"text", "varchar", "bpchar", "name", "citext"}  # ids a person could have typed
# comparisons where ``=`` differs from Python's ``==`` of the loaded values
_COMPARED_AS = {"json": "{x}::jsonb", "citext": "{x}::text"}


@dataclass(frozen=True)
class ColumnType:
    """A column's type as the catalog says, domains resolved to their base type.

    ``name``: the type's name (``int8``, ``timestamptz``, an enum's name); ``builtin``: it is
    in ``pg_catalog`` (or is ``citext``); ``enum``: an enum type; ``element``: an array's
    element type name (else None); ``shown``: ``format_type``'s text, for messages.
    """

    name: str
    builtin: bool
    enum: bool = False
    element: str | None = None
    shown: str = ""


def expression(model: str, field: str, column_type: ColumnType, ref: str) -> str:
    """The SQL expression of ``ref``'s value as JSONB, by the value table."""
    return _template(model, field, column_type).format(x=ref)


def record_id(model: str, field: str, column_type: ColumnType, ref: str) -> str:
    """The SQL text of the record id of key value ``ref``: its JSON form as text, as
    ``changes.record_id`` makes it. Refuses a key type whose JSON form is not text or an
    integer."""
    if column_type.enum or (column_type.builtin and column_type.name in _PLAIN_KEYS):
        return f"{ref}::text"
    if column_type.builtin and column_type.name in _KEYS:
        return f"({expression(model, field, column_type, ref)}) #>> '{{}}'"
    raise ValidationError(
        f"{model}.{field}", f"a key must be text or a number, got {column_type.shown}"
    )


def typed_key(column_type: ColumnType) -> bool:
    """Whether record ids of this key type could be anything a person types (so the trigger
    checks them as the queue checks record ids)."""
    return column_type.builtin and column_type.name in _TEXT_KEYS


def distinct(column_type: ColumnType, old: str, new: str) -> str:
    """SQL that is true when the value changed, as Python's ``!=`` of the loaded values."""
    template = _COMPARED_AS.get(column_type.name, "{x}") if column_type.builtin else "{x}"
    return f"{template.format(x=old)} IS DISTINCT FROM {template.format(x=new)}"


def _template(model: str, field: str, column_type: ColumnType) -> str:
    if column_type.enum:
        return _AS_TEXT
    if column_type.builtin and column_type.name in _SCALARS:
        return _SCALARS[column_type.name]
    if column_type.element in _ARRAY_ELEMENTS and column_type.builtin:
        return _AS_IS
    if column_type.builtin and column_type.name == "bytea":
        raise ValidationError(f"{model}.{field}", BINARY_REFUSED)
    raise ValidationError(f"{model}.{field}", unsupported(column_type.shown or column_type.name))
