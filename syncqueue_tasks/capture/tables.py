"""``table_source``: describe a table that no ORM class tracks (trigger capture, the CLI)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine, MetaData, Table
from sqlalchemy.exc import NoSuchTableError

from syncqueue_tasks.capture.errors import CaptureError
from syncqueue_tasks.capture.registry import Tracked, check_model
from syncqueue_tasks.capture.values import check_column_type


def table_source(
    engine: Engine,
    model: str,
    table: str,
    *,
    key: str | None = None,
    columns: Sequence[str] | None = None,
) -> Tracked:
    """Reflect ``table`` (``name`` or ``schema.name``) into a ``Tracked`` for ``model``.

    ``key``: the column whose value is the record id (default: the one-column primary key);
    ``columns``: the fields, in the order they should appear (default: every column but the
    key, in table order). Field names are column names.
    """
    schema, _, name = table.rpartition(".")
    try:
        reflected = Table(name, MetaData(), schema=schema or None, autoload_with=engine)
    except NoSuchTableError:
        raise CaptureError(f"table {table!r} does not exist") from None
    if key is None:
        primary_key = [c.name for c in reflected.primary_key.columns]
        if len(primary_key) != 1:
            raise CaptureError(f"table {table!r} has no one-column primary key; pass key=")
        key = primary_key[0]
    _require(reflected, [key])
    fields = [c.name for c in reflected.columns if c.name != key] if columns is None else columns
    if not fields or len(set(fields)) != len(fields):
        raise CaptureError("columns must name at least one column, each once")
    _require(reflected, fields)
    check_model(model)
    for field in fields:
        check_column_type(model, field, reflected.c[field].type)
    return Tracked(
        model=model,
        table=reflected,
        key_field=key,
        key_column=key,
        fields=tuple(fields),
        columns=tuple(fields),
    )


def _require(table: Table, names: Sequence[str]) -> None:
    missing = [n for n in names if n not in table.c]
    if missing:
        raise CaptureError(f"table {table.fullname!r} has no column(s) {', '.join(missing)}")
