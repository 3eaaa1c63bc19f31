"""The writer interface: a batch of claimed items in, one outcome per item out.

A writer knows nothing of Celery or SQL. ``process_batch`` records each outcome:

- ``Outcome.done()``: the change is in the destination -> COMPLETED.
- ``Outcome.retry(error, retry_after=None, count_attempt=True)``: try again later. With
  ``retry_after`` (seconds) the item waits that long instead of the queue's backoff; with
  ``count_attempt=False`` (a quota answer, say) it does not use up one of its attempts.
- ``Outcome.fail(error)``: permanent; the item is parked as FAILED at once.

An item missing from the returned mapping counts as a retryable failure. An exception that
escapes ``write`` fails the whole batch as retryable.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from syncqueue_tasks.models import QueueItem


class OutcomeKind(enum.StrEnum):
    """What happened to one item."""

    DONE = "done"
    RETRY = "retry"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of writing one item."""

    kind: OutcomeKind
    error: str = ""
    retry_after: float | None = None
    count_attempt: bool = True

    @classmethod
    def done(cls) -> Outcome:
        """The change was written."""
        return cls(OutcomeKind.DONE)

    @classmethod
    def retry(
        cls, error: str, retry_after: float | None = None, *, count_attempt: bool = True
    ) -> Outcome:
        """A transient failure: try again after a backoff (or ``retry_after`` seconds)."""
        return cls(OutcomeKind.RETRY, error, retry_after, count_attempt)

    @classmethod
    def fail(cls, error: str) -> Outcome:
        """A permanent failure: park the item as FAILED."""
        return cls(OutcomeKind.FAIL, error)


@runtime_checkable
class Writer(Protocol):
    """Writes a batch of changes to a destination (a spreadsheet, a workbook, ...)."""

    def write(self, items: Sequence[QueueItem]) -> Mapping[str, Outcome]:
        """Apply ``items`` (oldest first) and return an outcome per item id."""
        ...
