"""One ``write_records`` call of the Sheets writer: its records' outcomes so far (``Batch``),
and the ways a round of it stops (``Abort``, ``Retry``, ``Invalid``). Shared by the writer
and its ``verify``."""

from __future__ import annotations

from collections.abc import Sequence

from syncqueue_tasks.core.outcomes import Outcome, OutcomeKind
from syncqueue_tasks.core.records import RecordKey, RecordWrite
from syncqueue_tasks.writers.sheets.api import ApiFailure


class Abort(Exception):
    """Stop: every record not yet resolved gets ``outcome``."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.error)
        self.outcome = outcome


class Retry(Exception):
    """The round failed in a way a new round (a fresh read) may fix."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Invalid(Exception):
    """The write's content was refused (400): split the batch to find the record at fault."""

    def __init__(self, failure: ApiFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


_RANK = {OutcomeKind.DONE: 0, OutcomeKind.RETRY: 1, OutcomeKind.FAIL: 2}


class Batch:
    """The records of one ``write_records`` call and their outcomes so far."""

    def __init__(self, writes: Sequence[RecordWrite]) -> None:
        self.writes = list(writes)
        self.outcomes: dict[int, Outcome] = {}

    def resolve(self, index: int, outcome: Outcome) -> None:
        """Record an outcome; a worse one (fail > retry > done) is never overwritten."""
        current = self.outcomes.get(index)
        if index >= 0 and (current is None or _RANK[outcome.kind] > _RANK[current.kind]):
            self.outcomes[index] = outcome

    def open(self, index: int) -> bool:
        """Whether a record has no outcome yet."""
        return index not in self.outcomes

    def fill(self, outcome: Outcome) -> None:
        """Give ``outcome`` to every record still unresolved."""
        for index in range(len(self.writes)):
            self.outcomes.setdefault(index, outcome)

    def result(self) -> dict[RecordKey, Outcome]:
        """One outcome per record."""
        self.fill(Outcome.retry("not written"))
        return {w.key: self.outcomes[i] for i, w in enumerate(self.writes)}
