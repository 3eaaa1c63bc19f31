"""Changes (``enqueue_many``'s mappings) built from a tracked table's values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.orm import Session

from syncqueue_tasks.capture.registry import Tracked
from syncqueue_tasks.capture.values import to_json
from syncqueue_tasks.core.errors import ValidationError
from syncqueue_tasks.store import queue

Change = dict[str, Any]


def record_id(tracked: Tracked, key: Any) -> str:
    """The record id of key value ``key``: its JSON form as text (an int's digits, ...)."""
    value = to_json(tracked.model, tracked.key_field, key)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValidationError(
            f"{tracked.model}.{tracked.key_field}",
            f"a key must be text or a number, got {type(key).__name__}",
        )
    return str(value)


def create(tracked: Tracked, key: Any, values: Mapping[str, Any]) -> Change:
    """A CREATE carrying every tracked field (``values`` by field name)."""
    return _change("CREATE", tracked, key, values, tracked.fields)


def update(tracked: Tracked, key: Any, values: Mapping[str, Any]) -> Change:
    """An UPDATE carrying the fields in ``values``, in declared order."""
    return _change("UPDATE", tracked, key, values, [f for f in tracked.fields if f in values])


def delete(tracked: Tracked, key: Any) -> Change:
    """A DELETE."""
    return _change("DELETE", tracked, key, {}, ())


def enqueue(session: Session, changes: Sequence[Change]) -> None:
    """Enqueue ``changes`` in ``session``'s transaction, in one ``enqueue_many`` call."""
    if changes:
        queue.enqueue_many(changes, session=session)


def _change(
    action: str, tracked: Tracked, key: Any, values: Mapping[str, Any], fields: Sequence[str]
) -> Change:
    model = tracked.model
    return {
        "action": action,
        "model": model,
        "record_id": record_id(tracked, key),
        "payload": {f: to_json(model, f, values[f]) for f in fields},
    }
