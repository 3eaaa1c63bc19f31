"""Merge the changes of one batch into one write per record, in enqueue order.

Shared by every writer, so that all destinations apply the same semantics:

- CREATE then UPDATEs -> one upsert with the merged fields (later values win).
- UPDATE then UPDATEs -> one update with the merged fields.
- anything then DELETE -> the delete (fields merged before it are dropped).
- DELETE then CREATE -> an upsert with only the fields from the CREATE onward.
- DELETE then UPDATE -> an update with only the fields after the DELETE.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from syncqueue_tasks.models import QueueItem, SyncAction


class WriteKind(enum.StrEnum):
    """What a merged write does to the record's row."""

    CREATE = "create"  # upsert: append the row, or update it if the id is already there
    UPDATE = "update"  # write the changed cells of an existing row
    DELETE = "delete"  # tombstone (or remove) the row


@dataclass
class RecordWrite:
    """One record's merged changes within a batch."""

    model: str
    record_id: str
    kind: WriteKind
    fields: dict[str, Any] = field(default_factory=dict)
    item_ids: list[str] = field(default_factory=list)
    row_hint: int | None = None


def coalesce(items: Sequence[QueueItem]) -> list[RecordWrite]:
    """Return one ``RecordWrite`` per (model, record_id), ordered by each record's first item.

    ``items`` must be in enqueue order (``dequeue`` returns them so).
    """
    writes: dict[tuple[str, str], RecordWrite] = {}
    for item in items:
        key = (item.model, item.record_id)
        current = writes.get(key)
        if current is None:
            current = writes[key] = RecordWrite(item.model, item.record_id, _KIND[item.action])
        elif item.action is SyncAction.DELETE:
            current.kind = WriteKind.DELETE
            current.fields = {}
        elif current.kind is WriteKind.DELETE:
            current.kind = _KIND[item.action]
            current.fields = {}
        if item.action is not SyncAction.DELETE:
            current.fields.update(item.payload)
        current.item_ids.append(item.id)
        if item.sheet_row_index is not None:
            current.row_hint = item.sheet_row_index
    return list(writes.values())


_KIND = {
    SyncAction.CREATE: WriteKind.CREATE,
    SyncAction.UPDATE: WriteKind.UPDATE,
    SyncAction.DELETE: WriteKind.DELETE,
}
