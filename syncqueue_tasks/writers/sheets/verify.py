"""``verify`` for the Sheets writer: read a model's tab once, compare it with the records'
synced states (``verify_compare``), and with ``repair`` rewrite what differs.

Verify holds the spreadsheet's lock from before it reads the synced states until its repair is
written (writers wait, then hand back), so the tab and the states it compares are of one
moment; records a claim holds are skipped. The read and every repair write go through the
account's limiter. A repair writes each record's whole synced state through the writer's
rounds (found by id on a fresh read, checked against the write's answer): a missing row is
added, a tombstone that should be live revived (and the reverse), an id held by several rows
keeps its first row (the others lose the id and the owned cells, keeping a person's columns),
a lost owned column is made again at the end. Rows whose id no record has, and columns the
package does not own, are never touched. Under ``SYNCQUEUE_SHEETS_CONFLICTS=keep`` a cell a
person edited is reported, not rewritten.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from syncqueue_tasks.core.errors import SyncQueueError
from syncqueue_tasks.core.records import RecordKey, SyncedRecord
from syncqueue_tasks.writers.flow import SpreadsheetLock
from syncqueue_tasks.writers.sheets.batch import Abort, Batch
from syncqueue_tasks.writers.sheets.cells import (
    CellTooLong,
    encode,
    header_name,
    id_key,
    is_tombstone,
)
from syncqueue_tasks.writers.sheets.layout import grid
from syncqueue_tasks.writers.sheets.plan import Job, record_size
from syncqueue_tasks.writers.verify_compare import (
    REPAIRABLE,
    Cells,
    Grid,
    Kind,
    ModelReport,
    compare,
    restore_write,
    same,
)

if TYPE_CHECKING:
    from syncqueue_tasks.writers.sheets.writer import GoogleSheetsWriter


def sheet_cells(truncate: bool) -> Cells:
    """How Google Sheets holds values (typed reads)."""

    def expected(value: Any) -> Any:
        try:
            return encode(value, truncate=truncate).read
        except CellTooLong:
            return None

    return Cells(expected, same, id_key, is_tombstone)


def verify_tab(
    writer: GoogleSheetsWriter,
    model: str,
    load: Callable[[], Mapping[str, SyncedRecord]],
    *,
    repair: bool,
) -> ModelReport:
    """Verify (and repair) one model's tab; see the module docstring."""
    started = time.monotonic()
    sent = dict(writer.api.sent)
    report = ModelReport(model, f"tab {writer.tab_for(model)!r}")
    lock = SpreadsheetLock(writer.redis, writer.lock_key, writer.tuning.lock_ttl)
    wait = lock.wait_for(writer.tuning.verify_lock_wait)
    if wait:
        raise SyncQueueError(
            f"the spreadsheet stayed busy (writers expect to need it {wait:.0f}s more); "
            "try again later"
        )
    try:
        records = load()
        header, rows = _read(writer, model, lock)
        findings, report.in_flight = compare(
            Grid(header, rows),
            records,
            sheet_cells(writer.policy.truncate),
            id_column=writer.policy.id_column,
            delete_mode=writer.policy.delete_mode,
        )
        report.rows, report.records, report.findings = len(rows), len(records), findings
        if repair:
            _repair(writer, model, records, report, lock)
    except Abort as abort:  # the quota or the API: say why, as an error
        raise SyncQueueError(f"verify of {model} stopped: {abort.outcome.error}") from None
    finally:
        lock.release()
    report.reads = writer.api.sent["read"] - sent.get("read", 0)
    report.writes = writer.api.sent["write"] - sent.get("write", 0)
    report.seconds = time.monotonic() - started
    return report


def _read(
    writer: GoogleSheetsWriter, model: str, lock: SpreadsheetLock
) -> tuple[list[str], list[list[Any]]]:
    """The whole tab, one read (a tab that does not exist reads as an empty one)."""
    if writer.tabs.stale:
        writer._reserve({"read": 1}, lock)
        writer.load_tabs(lock)
    info = writer.tabs.find(model)
    if info is None:
        return [writer.policy.id_column], []
    writer._reserve({"read": 1}, lock)
    [answer] = writer._call(lambda: writer.api.read([grid(info.sheet_id)]), lock)
    values = answer.get("values", [])
    header = [header_name(v) for v in values[0]] if values else []
    return header, [list(r) for r in values[1:]]


def _repair(
    writer: GoogleSheetsWriter,
    model: str,
    records: Mapping[str, SyncedRecord],
    report: ModelReport,
    lock: SpreadsheetLock,
) -> None:
    """Rewrite every record a finding names (within the quota, a request's budget at a time)."""
    keep = writer.policy.keep_conflicts
    wanted = {
        f.record_id
        for f in report.findings
        if f.kind in REPAIRABLE and not (keep and f.kind is Kind.DIFFERS)
    }
    lost = {f.name for f in report.findings if f.kind is Kind.COLUMN}
    wanted |= {k for k, r in records.items() if lost & set(r.state.fields)}
    ids = sorted(k for k in wanted if k in records and not records[k].claimed)
    if not ids:
        return
    blanks = writer.tabs.columns(model)
    writes = [restore_write(RecordKey(model, k), records[k].state, blanks) for k in ids]
    batch = Batch(writes)
    budget, used = writer.config.max_request_bytes, 0
    chunk: list[Job] = []
    chunks: list[list[Job]] = []
    for index, write in enumerate(writes):
        size = record_size(write)
        if chunk and used + size > budget:
            chunks.append(chunk)
            chunk, used = [], 0
        chunk.append(Job(index, write, checks=False, verify=True))
        used += size
    chunks.append(chunk)
    try:
        for jobs in chunks:
            writer._run(batch, jobs, lock)
    except Abort as abort:
        batch.fill(abort.outcome)
    outcomes = batch.result()
    report.repaired = sum(1 for o in outcomes.values() if o.kind.value == "done")
    report.unrepaired = len(outcomes) - report.repaired
