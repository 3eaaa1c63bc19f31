"""``verify`` of the local workbook: the same findings as for Google Sheets, repaired by
rewriting the records (an id in several rows is reported, not fixed)."""

from __future__ import annotations

from pathlib import Path

import openpyxl
import pytest

from syncqueue_tasks.celery import batch
from syncqueue_tasks.celery.verify import verify
from syncqueue_tasks.store import queue
from syncqueue_tasks.writers.workbook import LocalWorkbookWriter

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("db")]


def test_the_workbook_is_verified_and_repaired(tmp_path: Path) -> None:
    path = tmp_path / "book.xlsx"
    writer = LocalWorkbookWriter(path)
    queue.enqueue_many(
        {"action": "CREATE", "model": "Request", "record_id": r, "payload": {"name": f"n{r}"}}
        for r in "abcd"
    )
    queue.enqueue("DELETE", "Request", "d", {})
    batch.process(writer, batch_size=10, time_budget=10)
    assert verify("Request", writer=writer).findings == 0

    book = openpyxl.load_workbook(path)
    ws = book["Request"]
    ws.cell(row=3, column=2).value = "edited"  # b differs
    ws.delete_rows(2)  # a is missing
    ws.append(["zz", "a person's"])  # an orphan
    ws.append(["c", "nc"])  # c twice
    book.save(path)

    found = verify("Request", writer=writer).reports[0]
    assert {k: n for k, n in found.counts().items() if n} == {
        "missing": 1,
        "orphan": 1,
        "duplicate": 1,
        "differs": 1,
    }
    repaired = verify("Request", repair=True, writer=writer).reports[0]
    assert repaired.repaired == 2
    left = verify("Request", writer=writer).reports[0]
    assert sorted(f.kind.value for f in left.findings) == ["duplicate", "orphan"]
