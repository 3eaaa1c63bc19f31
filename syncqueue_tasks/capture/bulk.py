"""Statements run through ``Session.execute`` on a tracked table: captured, or refused.

``do_orm_execute`` sees every statement a session runs, ORM (``update(Request)``) and Core
(``update(requests_table)``) alike. On a tracked table:

- INSERT (``insert(Cls).values([...])``, ``session.execute(insert(Cls), rows)``,
  ``from_select``, ``ON CONFLICT`` upserts): RETURNING the key and every tracked field,
  one CREATE per row it returns (an upsert's update is a CREATE too: CREATE of an existing
  record updates it).
- UPDATE with a WHERE clause: RETURNING the key and the tracked fields the SET clause names
  (plus the fields the database sets on every UPDATE), one UPDATE per row.
- ORM bulk UPDATE by primary key (``session.execute(update(Cls), [{"id": 1, ...}, ...])``):
  SQLAlchemy cannot add RETURNING to it, so the rows are read back after it by primary key,
  in the same transaction (the UPDATE holds their row locks, so the values read are its own).
- DELETE with a WHERE clause: RETURNING the key, one DELETE per row.
- Refused with ``CaptureError`` before anything runs: a bulk UPDATE whose SET clause changes
  the key (the old record ids are gone by then), and a Core executemany UPDATE or DELETE
  (a list of parameter sets: PostgreSQL cannot return their rows).

A statement that already has RETURNING gets its own columns back, exactly; one without
gets its cursor result back (``rowcount`` as usual, its rows already read). Statements
outside SQLAlchemy's view (``text()``, a raw connection, ``COPY``) are the triggers' job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Column, event, select, tuple_
from sqlalchemy.engine import Result
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.sql.dml import UpdateBase

from syncqueue_tasks.capture import changes, registry
from syncqueue_tasks.capture.errors import CaptureError
from syncqueue_tasks.capture.registry import Tracked
from syncqueue_tasks.capture.suppress import is_suppressed

_OWN = "syncqueue_capture"  # execution option: a statement capture itself runs


@event.listens_for(Session, "do_orm_execute")
def _on_execute(state: ORMExecuteState) -> Result[Any] | None:
    if not (state.is_insert or state.is_update or state.is_delete):
        return None
    if state.execution_options.get(_OWN) or is_suppressed(state.session):
        return None
    tracked = registry.for_table(cast(UpdateBase, state.statement).table)
    if tracked is None:
        return None
    many = isinstance(state.parameters, list | tuple)
    if state.is_insert:
        return _returning(state, tracked, tracked.fields, changes.create)
    if many and state.is_update and state.is_orm_statement:
        return _update_by_primary_key(state, tracked)
    if many:
        raise CaptureError(
            f"an executemany UPDATE or DELETE on {tracked.table.fullname!r} (tracked as "
            f"{tracked.model!r}) cannot be captured; use one statement with a WHERE clause, "
            "ORM objects, or an ORM bulk UPDATE by primary key"
        )
    if state.is_delete:
        return _returning(state, tracked, (), lambda t, key, values: changes.delete(t, key))
    fields = _set_fields(state, tracked)
    if not fields:
        return None  # no tracked field changes
    return _returning(state, tracked, fields, changes.update)


def _returning(
    state: ORMExecuteState, tracked: Tracked, fields: Sequence[str], build: Any
) -> Result[Any]:
    """Run the statement with RETURNING key + ``fields``; enqueue ``build``'s change per row."""
    statement = cast(UpdateBase, state.statement)
    # the caller's own RETURNING entries (an entity is one); returning_column_descriptions
    # expands entities into columns (and fails on some), so the statement's tuple is read
    own = len(statement._returning)
    columns = [tracked.column(name) for name in (tracked.key_field, *fields)]
    result = state.invoke_statement(
        statement=statement.returning(*columns), execution_options={_OWN: True}
    )
    frozen = result.freeze()
    captured = []
    for row in frozen().all():
        key, *values = row[own:]
        captured.append(build(tracked, key, dict(zip(fields, values, strict=True))))
    changes.enqueue(state.session, captured)
    if own:
        return frozen().columns(*range(own))
    raw = getattr(result, "raw", None)  # an ORM result wraps the cursor result
    return raw if raw is not None else result


def _update_by_primary_key(state: ORMExecuteState, tracked: Tracked) -> Result[Any]:
    """ORM bulk UPDATE by primary key: run it, then read the rows it names back."""
    mapper = state.bind_mapper
    if mapper is None:
        raise CaptureError(f"an ORM bulk UPDATE of {tracked.model!r} names no mapped class")
    primary_key = [mapper.get_property_by_column(c).key for c in mapper.primary_key]
    rows: Sequence[Mapping[str, Any]] = state.parameters  # type: ignore[assignment]
    if not tracked.key_is_primary_key and any(tracked.key_field in row for row in rows):
        raise _key_change(tracked)
    result = state.invoke_statement(execution_options={_OWN: True})
    wanted = {
        tuple(row[name] for name in primary_key): [
            f for f in tracked.fields if f in row or f in tracked.refreshed
        ]
        for row in rows
    }
    fields = sorted({f for names in wanted.values() for f in names}, key=tracked.fields.index)
    if not fields:
        return result
    pk_columns = [tracked.table.c[c.name] for c in mapper.primary_key]
    query = select(
        *pk_columns, tracked.column(tracked.key_field), *(tracked.column(f) for f in fields)
    ).where(tuple_(*pk_columns).in_(list(wanted)))
    found = state.session.execute(query, execution_options={_OWN: True}).all()
    captured = []
    for row in found:
        pk, (key, *values) = tuple(row[: len(pk_columns)]), row[len(pk_columns) :]
        current = dict(zip(fields, values, strict=True))
        if wanted[pk]:
            captured.append(changes.update(tracked, key, {f: current[f] for f in wanted[pk]}))
    changes.enqueue(state.session, captured)
    return result


def _set_fields(state: ORMExecuteState, tracked: Tracked) -> list[str]:
    """The tracked fields an UPDATE's SET clause names (``values()`` and parameter keys),
    plus the fields the database sets on every UPDATE; refuse a change of the key."""
    statement = state.statement
    names = list(getattr(statement, "_values", None) or ())  # no public accessor
    if isinstance(state.parameters, Mapping):
        names += list(state.parameters)
    by_column = dict(zip(tracked.columns, tracked.fields, strict=True))
    changed = set(tracked.refreshed)
    for name in names:
        column = _column_name(name, tracked, state.is_orm_statement)
        if column == tracked.key_column:
            raise _key_change(tracked)
        if column in by_column:
            changed.add(by_column[column])
    return [f for f in tracked.fields if f in changed] if names else []


def _column_name(name: Any, tracked: Tracked, orm: bool) -> str | None:
    """The column of ``tracked``'s table that a SET key names (a string, column or attribute)."""
    if isinstance(name, str):
        prop = tracked.mapper.attrs.get(name) if orm and tracked.mapper is not None else None
        if prop is not None:
            column = getattr(prop, "columns", [None])[0]
            return column.name if isinstance(column, Column) else None
        found = tracked.table.c.get(name)
        return None if found is None else found.name
    element = name.__clause_element__() if hasattr(name, "__clause_element__") else name
    if isinstance(element, Column) and element.table == tracked.table:
        return element.name
    return None


def _key_change(tracked: Tracked) -> CaptureError:
    return CaptureError(
        f"a bulk UPDATE that sets the key {tracked.key_field!r} of {tracked.model!r} cannot be "
        "captured (the old record ids are gone once it ran); change the key through ORM "
        "objects, or delete and insert"
    )
