"""What happened to a claimed record (or change): done, retry later, or failed for good.

A writer returns one ``Outcome`` per record; the queue records it for the record's changes:

- ``Outcome.done()``: written -> COMPLETED, and the record's synced state moves on.
- ``Outcome.retry(error, retry_after=None, count_attempt=True)``: try again later. With
  ``retry_after`` (seconds) the record waits that long instead of the queue's backoff; with
  ``count_attempt=False`` (a quota answer, say) it does not use up one of the attempts.
- ``Outcome.fail(error)``: permanent; the changes are parked as FAILED at once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class OutcomeKind(enum.StrEnum):
    """What happened to one record."""

    DONE = "done"
    RETRY = "retry"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of writing one record."""

    kind: OutcomeKind
    error: str = ""
    retry_after: float | None = None
    count_attempt: bool = True

    @classmethod
    def done(cls) -> Outcome:
        """The record was written."""
        return cls(OutcomeKind.DONE)

    @classmethod
    def retry(
        cls, error: str, retry_after: float | None = None, *, count_attempt: bool = True
    ) -> Outcome:
        """A transient failure: try again after a backoff (or ``retry_after`` seconds)."""
        return cls(OutcomeKind.RETRY, error, retry_after, count_attempt)

    @classmethod
    def fail(cls, error: str) -> Outcome:
        """A permanent failure: park the record's changes as FAILED."""
        return cls(OutcomeKind.FAIL, error)
