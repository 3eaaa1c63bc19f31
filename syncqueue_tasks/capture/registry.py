"""What is tracked: one ``Tracked`` per model, found by model name, mapper or table.

A ``Tracked`` describes a table well enough to build changes from its rows and to backfill
it, whether the ORM (``track``) or, later, a database trigger captures its changes: the ORM
side adds the mapper, the trigger side only needs the table, the key and the columns.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from sqlalchemy import Column, Table, inspect
from sqlalchemy.orm import Mapper

from syncqueue_tasks.capture.errors import CaptureError
from syncqueue_tasks.settings import get_settings


@dataclass(frozen=True)
class Tracked:
    """One tracked table. ``fields`` are the payload names in declared order; ``columns``
    the table column behind each field; ``refreshed`` the fields the database sets on every
    UPDATE (``onupdate``, computed columns), so every captured UPDATE carries them."""

    model: str
    table: Table
    key_field: str
    key_column: str
    fields: tuple[str, ...]
    columns: tuple[str, ...]
    refreshed: frozenset[str] = frozenset()
    mapper: Mapper[object] | None = field(default=None, compare=False)

    def column(self, name: str) -> Column[object]:
        """The table column behind field ``name`` (the key field included)."""
        if name == self.key_field:
            return self.table.c[self.key_column]
        return self.table.c[self.columns[self.fields.index(name)]]

    @property
    def key_is_primary_key(self) -> bool:
        """Whether the key is the table's (one-column) primary key."""
        return [c.name for c in self.table.primary_key.columns] == [self.key_column]


_lock = threading.Lock()
_by_model: dict[str, Tracked] = {}


def register(tracked: Tracked) -> None:
    """Add ``tracked``; a model or a table can be tracked once."""
    with _lock:
        if tracked.model in _by_model:
            raise CaptureError(f"model {tracked.model!r} is already tracked")
        for other in _by_model.values():
            if other.table is tracked.table:
                raise CaptureError(
                    f"table {tracked.table.fullname!r} is already tracked as {other.model!r}"
                )
        _by_model[tracked.model] = tracked


def unregister(model: str) -> Tracked:
    """Stop tracking ``model``; return what it was."""
    with _lock:
        try:
            return _by_model.pop(model)
        except KeyError:
            raise CaptureError(f"model {model!r} is not tracked") from None


def get(model: str) -> Tracked:
    """The tracked table of ``model``."""
    try:
        return _by_model[model]
    except KeyError:
        known = ", ".join(sorted(_by_model)) or "none"
        raise CaptureError(f"model {model!r} is not tracked (tracked: {known})") from None


def find(model: str) -> Tracked | None:
    """The tracked table of ``model``, or None."""
    return _by_model.get(model)


def for_mapper(mapper: Mapper[object]) -> Tracked | None:
    """The ``Tracked`` of ``mapper`` or of the nearest mapper it inherits from."""
    current: Mapper[object] | None = mapper
    while current is not None:
        for tracked in _by_model.values():
            if tracked.mapper is current:
                return tracked
        current = current.inherits
    return None


def for_class(orm_class: object) -> Tracked | None:
    """The ``Tracked`` of a mapped class (or of a class it inherits from), or None."""
    mapper = inspect(orm_class, raiseerr=False)
    return for_mapper(mapper) if isinstance(mapper, Mapper) else None


def for_table(table: object) -> Tracked | None:
    """The ``Tracked`` whose table is ``table`` (an ORM statement's annotated copy too)."""
    for tracked in _by_model.values():
        if tracked.table == table:
            return tracked
    return None


def check_model(model: str) -> None:
    """Refuse a model the queue would refuse (not in ``SYNCQUEUE_MODELS``)."""
    models = get_settings().limits.models
    if model not in models:
        known = ", ".join(sorted(models))
        raise CaptureError(f"model {model!r} is not in SYNCQUEUE_MODELS ({known})")


def tracked_fields(model: str) -> list[str]:
    """The payload fields of ``model`` in declared order (the order columns should appear)."""
    return list(get(model).fields)
