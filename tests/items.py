"""QueueItem factory for writer tests that need no database."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime
from typing import Any

from syncqueue_tasks.models import QueueItem, SyncAction

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
