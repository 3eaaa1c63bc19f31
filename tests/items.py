"""Changes and a batch driver for writer tests that need no database."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from syncqueue_tasks.core.items import QueueItem, SyncAction
from syncqueue_tasks.core.outcomes import Outcome, OutcomeKind
from syncqueue_tasks.core.records import RecordKey, RecordState, record_write

_seq = itertools.count()


def item(
    action: str, record_id: str, model: str = "Request", row: int | None = None, **payload: Any
) -> QueueItem:
    """A claimed queue item; ids increase in creation order, like the queue's."""
    return QueueItem(
        id=f"item-{next(_seq):08d}",
        action=SyncAction(action),
        model=model,
        record_id=record_id,
        sheet_row_index=row,
        payload=payload,
        retries=0,
        max_retries=3,
        created_at=datetime.now(UTC),
        claim_token=uuid.uuid4(),
    )


class Feeder:
    """Feeds a writer the way ``process_batch`` does, from plain changes.

    Each ``write`` call is one batch: its changes are grouped per record and folded onto the
    state the record's last done write left (``records.record_write``); the result maps each
    change's id to its record's outcome. Other attributes are the writer's own.
    """

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self.states: dict[RecordKey, RecordState] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.writer, name)

    def write(self, items: Sequence[QueueItem]) -> dict[str, Outcome]:
        """Write ``items`` as one batch; return an outcome per change id."""
        per_record: dict[RecordKey, list[QueueItem]] = {}
        for change in items:
            per_record.setdefault(RecordKey(change.model, change.record_id), []).append(change)
        writes = [
            record_write(
                key,
                self.states.get(key, RecordState()),
                changes,
                next((c.sheet_row_index for c in reversed(changes) if c.sheet_row_index), None),
            )
            for key, changes in per_record.items()
        ]
        outcomes = self.writer.write_records(writes) if writes else {}
        result: dict[str, Outcome] = {}
        for write in writes:
            outcome = outcomes.get(write.key) or Outcome.retry("no outcome")
            if outcome.kind is OutcomeKind.DONE:
                self.states[write.key] = write.state
            result.update(dict.fromkeys(write.change_ids, outcome))
        return result
