"""The record fold: applying changes by version equals applying them one by one in id order,
whatever order they arrive in, however they are cut into batches and however often a batch
is retried. Stated as property tests against an independent model of a sheet row, first on the
fold and the shared row rules alone, then through the real queue and the real workbook writer.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from dbutil import assert_records_consistent, truncate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from items import item

from syncqueue_tasks.core.ids import new_id
from syncqueue_tasks.core.items import QueueItem, SyncAction
from syncqueue_tasks.core.outcomes import Outcome
from syncqueue_tasks.core.records import RecordKey, RecordState, fold, record_write
from syncqueue_tasks.store import queue
from syncqueue_tasks.writers.rules import RowAction, plan_row
from syncqueue_tasks.writers.workbook import LocalWorkbookWriter

RECORDS = ["a", "b", "c"]
FIELDS = ["name", "phone", "status"]


@dataclass(frozen=True)
class Spec:
    """One change of a generated history: (record, action, payload)."""

    record: str
    action: str
    payload: dict[str, Any]


def histories(max_size: int) -> st.SearchStrategy[list[Spec]]:
    """Random change histories over a few records and fields."""
    return st.lists(
        st.builds(
            Spec,
            st.sampled_from(RECORDS),
            st.sampled_from(["CREATE", "UPDATE", "UPDATE", "DELETE"]),
            st.dictionaries(st.sampled_from(FIELDS), st.integers(0, 9) | st.none(), max_size=3),
        ),
        min_size=1,
        max_size=max_size,
    )


def in_order(history: list[tuple[str, Spec]]) -> dict[str, tuple[bool, dict[str, Any]]]:
    """The model: apply each change one by one, in id order, to a sheet of rows.

    A row is (tombstoned, cells). DELETE tombstones an existing row and clears its cells;
    CREATE and UPDATE write their fields, into a new row if there is none, or into a
    tombstoned row cleared first (a record created again starts empty). Blank cells (None)
    count as absent.
    """
    rows: dict[str, tuple[bool, dict[str, Any]]] = {}
    for _, spec in sorted(history, key=lambda h: h[0]):
        row = rows.get(spec.record)
        if spec.action == "DELETE":
            if row is not None:
                rows[spec.record] = (True, {})
            continue
        cells = {} if row is None or row[0] else dict(row[1])
        cells.update(spec.payload)
        rows[spec.record] = (False, cells)
    return {
        r: (dead, {k: v for k, v in cells.items() if v is not None})
        for r, (dead, cells) in rows.items()
    }


class Sheet:
    """A sheet that executes the shared row rules' plans, as the spreadsheet writers do."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[bool, dict[str, Any]]] = {}

    def write(self, write: Any) -> None:
        row = self.rows.get(write.record_id)
        plan = plan_row(
            write,
            found=row is not None,
            tombstoned=row is not None and row[0],
            update_missing="create",
            delete_mode="tombstone",
        )
        assert plan.action is not RowAction.FAIL
        if plan.action is RowAction.NOTHING:
            return
        cells = {} if row is None else dict(row[1])
        cells.update(plan.values)
        dead = plan.action is RowAction.TOMBSTONE or plan.tombstone
        self.rows[write.record_id] = (dead, cells)

    def view(self) -> dict[str, tuple[bool, dict[str, Any]]]:
        return {
            r: (dead, {k: v for k, v in cells.items() if v is not None})
            for r, (dead, cells) in self.rows.items()
        }


def _queue_item(change_id: str, spec: Spec) -> QueueItem:
    base = item(spec.action, spec.record, **spec.payload)
    return QueueItem(
        change_id,
        base.action,
        base.model,
        base.record_id,
        None,
        dict(spec.payload),
        0,
        3,
        base.created_at,
        base.claim_token,
    )


@pytest.mark.unit
@settings(max_examples=400, deadline=None)
@given(histories(25), st.randoms(use_true_random=False))
def test_fold_equals_applying_changes_in_id_order_whatever_the_arrival_and_the_batches(
    specs: list[Spec], rnd: random.Random
) -> None:
    history = [(f"{n:026d}", spec) for n, spec in enumerate(specs)]  # ids in enqueue order
    arrival = history[:]
    rnd.shuffle(arrival)  # late arrivals: any order
    sheet = Sheet()
    states: dict[str, RecordState] = {}
    pending = [_queue_item(i, s) for i, s in arrival]
    while pending:  # random batches; a batch may be written, then reported lost, and retried
        cut = rnd.randint(1, len(pending))
        batch, pending = pending[:cut], pending[cut:]
        per_record: dict[str, list[QueueItem]] = {}
        for change in batch:
            per_record.setdefault(change.record_id, []).append(change)
        for record, changes in per_record.items():
            base = states.get(record, RecordState())
            write = record_write(RecordKey("Request", record), base, changes)
            outcome = rnd.choice(["done", "done", "lost", "failed"])
            if outcome != "failed":
                sheet.write(write)  # "lost": written, but the answer never came back
            if outcome == "done":
                states[record] = write.state
            else:
                pending.extend(changes)  # retried later, after whatever came meanwhile
    assert sheet.view() == in_order(history)


@pytest.mark.unit
@given(histories(25))
def test_fold_is_independent_of_order_and_idempotent(specs: list[Spec]) -> None:
    changes = [_queue_item(f"{n:026d}", s) for n, s in enumerate(specs) if s.record == "a"]
    forward = fold(RecordState(), changes)
    assert fold(RecordState(), reversed(changes)) == forward
    assert fold(forward, changes) == forward  # applying again changes nothing


@pytest.mark.unit
def test_delete_then_create_in_one_write_starts_from_an_empty_record() -> None:
    """Finding 3 of issue 10: DELETE then CREATE in one batch kept the deleted record's
    other cells."""
    base = fold(RecordState(), [_queue_item("1", Spec("a", "CREATE", {"name": "bob", "ssn": "1"}))])
    write = record_write(
        RecordKey("Request", "a"),
        base,
        [
            _queue_item("2", Spec("a", "DELETE", {})),
            _queue_item("3", Spec("a", "CREATE", {"name": "ann"})),
        ],
    )
    assert write.action is SyncAction.CREATE and write.restarted
    assert write.state.fields == {"name": "ann"}
    assert write.cells == {"name": "ann", "ssn": None}


# --------------------------------------------------------------------------- through the queue


def _table(path: Path) -> dict[str, tuple[bool, dict[str, Any]]]:
    if not path.exists():
        return {}
    ws = openpyxl.load_workbook(path)["Request"]
    rows = list(ws.iter_rows(values_only=True))
    header = rows[0]
    out = {}
    for values in rows[1:]:
        row = dict(zip(header, values, strict=False))
        record = str(row.pop("id"))
        dead = bool(row.pop("_deleted", None))
        out[record] = (dead, {k: v for k, v in row.items() if v is not None})
    return out


@pytest.fixture
def workbook(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "book.xlsx"


@pytest.mark.integration
@pytest.mark.usefixtures("db")
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.large_base_example],
)
@given(histories(12), st.randoms(use_true_random=False))
def test_through_the_queue_and_the_workbook_the_sheet_ends_as_if_applied_in_order(
    workbook: Path, specs: list[Spec], rnd: random.Random
) -> None:
    truncate()
    workbook.unlink(missing_ok=True)
    writer = LocalWorkbookWriter(workbook)
    history = [(new_id(), spec) for spec in specs]
    arrival = history[:]
    rnd.shuffle(arrival)
    while True:
        if arrival:  # store a few late or early changes, then claim a random cut
            cut = rnd.randint(1, len(arrival))
            stored, arrival = arrival[:cut], arrival[cut:]
            queue.enqueue_many(
                [
                    {
                        "action": s.action,
                        "model": "Request",
                        "record_id": s.record,
                        "payload": s.payload,
                    }
                    for _, s in stored
                ],
                item_ids=[i for i, _ in stored],
            )
        batch = queue.claim_records(rnd.randint(1, 3), max_changes=rnd.randint(1, 6))
        if not batch.records and not arrival:
            break
        writes = [record_write(r.key, r.base, r.changes) for r in batch.records]
        outcomes = writer.write_records(writes)
        if rnd.random() < 0.3:  # the answer was lost: retried, written again later
            outcomes = {
                k: Outcome.retry("lost", retry_after=0, count_attempt=False) for k in outcomes
            }
        queue.finish_records(batch, outcomes, {w.key: w.state for w in writes})
    assert _table(workbook) == in_order(history)
    assert_records_consistent()
