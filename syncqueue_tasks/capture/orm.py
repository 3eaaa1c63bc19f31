"""``track``: capture every flush of a mapped class into the queue, in the same transaction.

Mapper events (``after_insert``, ``after_update``, ``after_delete``) note which rows a flush
wrote, cascades and orphans included; the session's ``after_flush`` (all statements done,
autoincrement keys known, attribute history still that of the flush) turns them into
changes and enqueues them with one ``enqueue_many(..., session=session)``: they commit or
roll back with the data, savepoints included.

- CREATE: every tracked field, read after the flush (server defaults included).
- UPDATE: the tracked fields whose attribute history changed, plus the fields the database
  sets on every UPDATE; no changed field, no change. A changed key is a DELETE of the old
  record id and a CREATE of the new one.
- DELETE: the record id only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Column, Table, event, inspect
from sqlalchemy.orm import ColumnProperty, InstanceState, Mapper, Session, UOWTransaction
from sqlalchemy.orm.exc import UnmappedColumnError

from syncqueue_tasks.capture import changes, registry
from syncqueue_tasks.capture.errors import CaptureError
from syncqueue_tasks.capture.registry import Tracked, check_model
from syncqueue_tasks.capture.suppress import is_suppressed
from syncqueue_tasks.capture.values import check_column_type

_WRITTEN = "syncqueue.capture.written"  # session.info: {state: (action, tracked)} of a flush


def track(
    orm_class: type,
    model: str | None = None,
    fields: Sequence[str] | None = None,
    key: str | None = None,
) -> Tracked:
    """Capture every change of ``orm_class`` as a change of ``model`` (default: class name).

    ``fields``: the attributes to send, in the order their columns should appear (default:
    every mapped column of the class's table, in table order, without the key). ``key``: the
    attribute whose value is the record id (default: the one-column primary key).
    Raises ``CaptureError`` or ``ValidationError`` before anything is tracked.
    """
    tracked = describe(orm_class, model, fields, key)
    registry.register(tracked)
    for name, listener in _LISTENERS.items():
        event.listen(tracked.mapper, name, listener, propagate=True)
    return tracked


def untrack(orm_class_or_model: type | str) -> None:
    """Stop capturing a class (or model) given to ``track``."""
    if isinstance(orm_class_or_model, str):
        model = orm_class_or_model
    else:
        found = registry.for_class(orm_class_or_model)
        if found is None:
            raise CaptureError(f"{orm_class_or_model.__name__} is not tracked")
        model = found.model
    tracked = registry.unregister(model)
    if tracked.mapper is not None:
        for name, listener in _LISTENERS.items():
            event.remove(tracked.mapper, name, listener)


def describe(
    orm_class: type, model: str | None, fields: Sequence[str] | None, key: str | None
) -> Tracked:
    """The ``Tracked`` that ``track`` would register (checked, not registered)."""
    mapper = _mapper(orm_class)
    model = orm_class.__name__ if model is None else model
    check_model(model)
    table = mapper.local_table
    if not isinstance(table, Table):
        raise CaptureError(f"{orm_class.__name__} is not mapped to one table")
    if key is None:
        primary_key = list(table.primary_key.columns)
        if len(primary_key) != 1:
            raise CaptureError(
                f"{orm_class.__name__} has a composite primary key; pass key= naming one "
                "attribute whose value identifies a row"
            )
        key = mapper.get_property_by_column(primary_key[0]).key
    key_column = _column(mapper, table, key)
    if fields is None:
        fields = [
            prop.key
            for column in table.columns
            if (prop := _property_of(mapper, column)) is not None and prop.key != key
        ]
    if len(set(fields)) != len(fields) or not fields:
        raise CaptureError("fields must name at least one attribute, each once")
    columns = [_column(mapper, table, name) for name in fields]
    for name, column in zip(fields, columns, strict=True):
        check_column_type(model, name, column.type)
    return Tracked(
        model=model,
        table=table,
        key_field=key,
        key_column=key_column.name,
        fields=tuple(fields),
        columns=tuple(c.name for c in columns),
        refreshed=frozenset(
            name
            for name, c in zip(fields, columns, strict=True)
            if c.onupdate is not None or c.server_onupdate is not None or c.computed is not None
        ),
        mapper=mapper,
    )


def _mapper(orm_class: type) -> Mapper[Any]:
    mapper: object = inspect(orm_class, raiseerr=False)
    if not isinstance(mapper, Mapper):
        raise CaptureError(f"{getattr(orm_class, '__name__', orm_class)!r} is not a mapped class")
    return mapper


def _property_of(mapper: Mapper[Any], column: Column[Any]) -> ColumnProperty[Any] | None:
    try:
        prop = mapper.get_property_by_column(column)
    except UnmappedColumnError:
        return None
    return prop if isinstance(prop, ColumnProperty) else None


def _column(mapper: Mapper[Any], table: Table, name: str) -> Column[Any]:
    """The one column of ``table`` behind attribute ``name``."""
    prop = mapper.attrs.get(name)
    columns = prop.columns if isinstance(prop, ColumnProperty) else []
    if len(columns) != 1 or not isinstance(columns[0], Column) or columns[0].table is not table:
        raise CaptureError(
            f"{mapper.class_.__name__}.{name} is not an attribute mapped to one column of "
            f"table {table.fullname!r}"
        )
    return columns[0]


def _note(action: str) -> Any:
    """A mapper event handler noting the row a flush wrote, for ``_after_flush``."""

    def handler(mapper: Mapper[Any], connection: Any, target: Any) -> None:
        state = inspect(target)
        session = state.session
        if session is None or is_suppressed(session):
            return
        tracked = registry.for_mapper(state.mapper)
        if tracked is not None:
            session.info.setdefault(_WRITTEN, {}).setdefault(state, (action, tracked))

    return handler


_LISTENERS = {
    "after_insert": _note("INSERT"),
    "after_update": _note("UPDATE"),
    "after_delete": _note("DELETE"),
}


@event.listens_for(Session, "before_flush")
def _before_flush(session: Session, flush_context: UOWTransaction, instances: Any) -> None:
    session.info.pop(_WRITTEN, None)  # left over by a flush that failed
    if is_suppressed(session):
        return
    for target in session.deleted:  # a key that is not the primary key cannot be loaded
        state = inspect(target)  # once its row is deleted: load it now
        tracked = registry.for_mapper(state.mapper)
        if tracked is not None and not tracked.key_is_primary_key:
            getattr(target, tracked.key_field)


@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, flush_context: UOWTransaction) -> None:
    written = session.info.pop(_WRITTEN, None)
    if not written:
        return
    deletes: list[changes.Change] = []
    writes: list[changes.Change] = []
    for state, (action, tracked) in written.items():
        if action == "DELETE":
            deletes.append(changes.delete(tracked, _old_key(state, tracked)))
        elif action == "INSERT" or state.obj() in session.new:  # new, or a row switch
            writes.append(changes.create(tracked, *_read(state, tracked, tracked.fields)))
        else:
            _updated(state, tracked, deletes, writes)
    changes.enqueue(session, deletes + writes)  # a DELETE first: a key may move to a new row


def _updated(
    state: InstanceState[Any],
    tracked: Tracked,
    deletes: list[changes.Change],
    writes: list[changes.Change],
) -> None:
    """The changes of an updated row: its changed fields, or a move to a new key."""
    attrs = state.attrs
    if attrs[tracked.key_field].history.has_changes():
        deletes.append(changes.delete(tracked, _old_key(state, tracked)))
        writes.append(changes.create(tracked, *_read(state, tracked, tracked.fields)))
        return
    fields = [f for f in tracked.fields if attrs[f].history.has_changes()]
    if tracked.refreshed and _row_changed(state):
        fields = [f for f in tracked.fields if f in fields or f in tracked.refreshed]
    if fields:
        writes.append(changes.update(tracked, *_read(state, tracked, fields)))


def _read(
    state: InstanceState[Any], tracked: Tracked, fields: Iterable[str]
) -> tuple[Any, dict[str, Any]]:
    """The key and ``fields`` of a flushed object (an expired one is loaded)."""
    target = state.obj()
    return getattr(target, tracked.key_field), {f: getattr(target, f) for f in fields}


def _row_changed(state: InstanceState[Any]) -> bool:
    return any(state.attrs[p.key].history.has_changes() for p in state.mapper.column_attrs)


def _old_key(state: InstanceState[Any], tracked: Tracked) -> Any:
    """The key a row had before the flush."""
    history = state.attrs[tracked.key_field].history
    if history.deleted:
        return history.deleted[0]
    if history.unchanged:
        return history.unchanged[0]
    if tracked.key_is_primary_key and state.identity:
        return state.identity[0]
    raise CaptureError(
        f"the old key {tracked.key_field!r} of a {tracked.model} was not loaded before the "
        "flush; load it (or use the primary key as key) so the old record can be deleted"
    )
