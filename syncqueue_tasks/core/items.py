"""The queue's vocabulary: what happened to a record (``SyncAction``), where a change is
(``QueueStatus``), and a claimed change (``QueueItem``)."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any


class SyncAction(enum.StrEnum):
    """What happened to the record."""

    CREATE = "CREATE"
    UPDATE = "UPDATE"
    DELETE = "DELETE"


class QueueStatus(enum.StrEnum):
    """PENDING -> PROCESSING -> COMPLETED; PROCESSING -> PENDING (backoff) or FAILED."""

    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


@dataclass(frozen=True, slots=True)
class QueueItem:
    """A claimed change, as handed out by ``dequeue``. ``claim_token`` proves ownership."""

    id: str
    action: SyncAction
    model: str
    record_id: str
    sheet_row_index: int | None
    payload: dict[str, Any]
    retries: int
    max_retries: int
    created_at: datetime
    claim_token: uuid.UUID
