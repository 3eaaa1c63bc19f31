"""Helpers shared by the Sheets writer tests (the fixtures are in ``sheets_fixtures``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fake_sheets import FakeSheets

from syncqueue_tasks.core.items import QueueItem
from syncqueue_tasks.core.outcomes import Outcome, OutcomeKind

SID = "sheet-test"
HEADER = ["id", "name", "status"]

MakeWriter = Callable[..., Any]


def seed(fake: FakeSheets, n: int, tab: str = "Requests") -> None:
    """Rows r0..r{n-1} with name n<i>."""
    fake.set_rows(SID, tab, [list(HEADER)] + [[f"r{i}", f"n{i}", ""] for i in range(n)])


def kinds(outcomes: Any) -> dict[str, OutcomeKind]:
    return {k: o.kind for k, o in outcomes.items()}


def all_done(outcomes: Any) -> bool:
    return set(kinds(outcomes).values()) == {OutcomeKind.DONE}


def write_until_done(writer: Any, items: Sequence[QueueItem], rounds: int = 50) -> list[Outcome]:
    """Resubmit retried items (as the queue would) until all are done; return every retry."""
    retries: list[Outcome] = []
    pending = list(items)
    for _ in range(rounds):
        outcomes = writer.write(pending)
        assert set(outcomes) == {i.id for i in pending}
        retries += [o for o in outcomes.values() if o.kind is OutcomeKind.RETRY]
        assert not [o for o in outcomes.values() if o.kind is OutcomeKind.FAIL], outcomes
        pending = [i for i in pending if outcomes[i.id].kind is not OutcomeKind.DONE]
        if not pending:
            return retries
    raise AssertionError(f"{len(pending)} items still pending")
