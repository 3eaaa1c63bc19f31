"""A writer to a local ``.xlsx`` workbook (openpyxl), with the Google Sheets writer's semantics.

One worksheet per model (title = model name); row 1 is the header and maps field names to
columns; what to do to a record's row is decided by ``writers.rules`` (shared with Sheets).
Every cell, header cells included, is written as a value: text stays text, never a formula.
Rows are found by the record id in the id column, never by a stored row number:
people sort, insert and delete rows. A batch is applied as a whole under an exclusive
``flock`` on ``<path>.lock`` and saved atomically (temp file, fsync, ``os.replace``), so a
crash never leaves a half-written workbook and concurrent processes never lose each
other's batches.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openpyxl
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.workbook.workbook import Workbook
from openpyxl.worksheet.worksheet import Worksheet

from syncqueue_tasks.core.errors import ConfigurationError, sanitize_error
from syncqueue_tasks.core.outcomes import Outcome, OutcomeKind
from syncqueue_tasks.core.records import RecordKey, RecordWrite, SyncedRecord
from syncqueue_tasks.writers.base import WriterContext
from syncqueue_tasks.writers.rules import (
    DELETED_COLUMN,
    DeleteMode,
    RowAction,
    UnknownFields,
    UpdateMissing,
    plan_row,
)
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

MAX_CELL_CHARS = 32767  # Excel's limit for one cell's text


class _Reject(Exception):
    """A permanent problem with one record; raised before its row is touched."""


@dataclass
class _Sheet:
    """One model's worksheet, indexed by record id for the duration of a batch."""

    ws: Worksheet
    columns: dict[str, int]  # header text -> 1-based column
    rows: dict[str, list[int]]  # record id -> rows holding it, top first
    next_row: int  # first row below the last non-empty one
    to_remove: list[int] = field(default_factory=list)

    def add_column(self, name: str) -> int:
        """Append a header cell ``name`` (as text) after every used column; return its column."""
        col = max([int(self.ws.max_column), *self.columns.values()]) + 1
        _set(self.ws, 1, col, name)
        self.columns[name] = col
        return col

    def find(self, record_id: str, hint: int | None) -> int | None:
        """The record's row: ``hint`` if that row holds the id, else the first row that does."""
        rows = self.rows.get(record_id, [])
        if hint is not None and hint in rows:
            return hint
        return rows[0] if rows else None

    def is_deleted(self, row: int) -> bool:
        """Whether ``row`` carries a tombstone."""
        col = self.columns.get(DELETED_COLUMN)
        return col is not None and _is_true(self.ws.cell(row=row, column=col).value)


class LocalWorkbookWriter:
    """Applies batches of record writes to a local workbook; see the module docstring."""

    def __init__(
        self,
        path: Path | str,
        *,
        id_column: str = "id",
        unknown_fields: str = "add_column",
        update_missing: str = "create",
        delete_mode: str = "tombstone",
    ) -> None:
        try:
            self.unknown_fields = UnknownFields(unknown_fields)
            self.update_missing = UpdateMissing(update_missing)
            self.delete_mode = DeleteMode(delete_mode)
        except ValueError as exc:
            raise ConfigurationError(f"workbook writer: {exc}") from None
        if not id_column:
            raise ConfigurationError("id_column must not be empty")
        self.path = Path(path)
        self.id_column = id_column

    def write_records(self, writes: Sequence[RecordWrite]) -> Mapping[RecordKey, Outcome]:
        """Apply ``writes`` in one atomic save; return an outcome per record."""
        if not writes:
            return {}
        outcomes: dict[RecordKey, Outcome] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(Path(f"{self.path}.lock")):
            _remove_stale_temps(self.path)
            if self.path.exists():
                book = openpyxl.load_workbook(self.path)
            else:
                book = Workbook()
                book.remove(book.worksheets[0])  # any success opens (or creates) a sheet
            sheets: dict[str, _Sheet] = {}
            changed = False
            for write in writes:
                try:
                    changed = self._apply(book, sheets, write) or changed
                    outcomes[write.key] = Outcome.done()
                except _Reject as exc:
                    outcomes[write.key] = Outcome.fail(sanitize_error(str(exc)))
            if changed:
                for sheet in sheets.values():
                    _remove_rows(sheet.ws, sheet.to_remove)
                _save_atomic(book, self.path)
        return outcomes

    def _apply(self, book: Workbook, sheets: dict[str, _Sheet], write: RecordWrite) -> bool:
        """Apply one record's write; raise ``_Reject`` before touching its row. Return
        whether the workbook changed."""
        sheet = sheets.get(write.model)
        if sheet is None:
            sheet = sheets[write.model] = self._open_sheet(book, write.model)
        rows = sheet.rows.get(write.record_id, [])
        row = sheet.find(write.record_id, write.row_hint)
        plan = plan_row(
            write,
            found=row is not None,
            tombstoned=row is not None and sheet.is_deleted(row),
            update_missing=self.update_missing,
            delete_mode=self.delete_mode,
        )
        if plan.action is RowAction.FAIL:
            raise _Reject(plan.error)
        if plan.action is RowAction.NOTHING:
            return False
        if plan.action is RowAction.REMOVE:
            sheet.to_remove.extend(sheet.rows.pop(write.record_id))
            return True
        values = {
            name: _cell_value(name, value)
            for name, value in plan.values.items()
            if name not in (self.id_column, DELETED_COLUMN)
        }
        unknown = [n for n, v in values.items() if v is not None and n not in sheet.columns]
        if unknown and self.unknown_fields is UnknownFields.FAIL:
            raise _Reject(f"{write.model} has no column for field(s): {', '.join(unknown)}")
        for name in unknown:
            sheet.add_column(name)
        if plan.action is RowAction.APPEND:
            row = sheet.next_row
            sheet.next_row += 1
            rows = sheet.rows[write.record_id] = [row]
            _set(sheet.ws, row, sheet.columns[self.id_column], write.record_id)
        targets = rows if plan.action is RowAction.TOMBSTONE or row is None else [row]
        for target in targets:
            for name, value in values.items():
                if name in sheet.columns:
                    _set(sheet.ws, target, sheet.columns[name], value)
            if plan.action is RowAction.TOMBSTONE or plan.tombstone:
                deleted_col = sheet.columns.get(DELETED_COLUMN) or sheet.add_column(DELETED_COLUMN)
                _set(sheet.ws, target, deleted_col, True)
            elif plan.revive:
                _set(sheet.ws, target, sheet.columns[DELETED_COLUMN], None)
        return True

    def _open_sheet(self, book: Workbook, model: str) -> _Sheet:
        """Index ``model``'s worksheet, creating it (with an id header in A1) if absent."""
        if model in book.sheetnames:
            ws = book[model]
        else:
            try:
                ws = book.create_sheet(title=model)
            except ValueError as exc:
                raise _Reject(f"cannot create a worksheet named {model!r}: {exc}") from None
        header = next(ws.iter_rows(min_row=1, max_row=1, values_only=True), ())
        columns: dict[str, int] = {}
        for col, value in enumerate(header, start=1):
            if value is not None and str(value) != "":
                columns.setdefault(str(value), col)
        if not columns:
            _set(ws, 1, 1, self.id_column)
            columns[self.id_column] = 1
        if self.id_column not in columns:
            raise _Reject(f"worksheet {model!r} has no {self.id_column!r} column in row 1")
        id_index = columns[self.id_column] - 1
        rows: dict[str, list[int]] = {}
        last = 1
        for row, values in enumerate(ws.iter_rows(min_row=2, values_only=True), start=2):
            if any(v is not None and v != "" for v in values):
                last = row
            key = _id_key(values[id_index]) if id_index < len(values) else None
            if key is not None:
                rows.setdefault(key, []).append(row)
        return _Sheet(ws, columns, rows, last + 1)

    def verify_model(
        self, model: str, load: Callable[[], Mapping[str, SyncedRecord]], *, repair: bool
    ) -> ModelReport:
        """Compare the model's worksheet with the synced states (``load``) under the
        workbook's lock; with ``repair``, rewrite each record a finding names (an id in
        several rows is reported, not fixed). See ``verify_compare``."""
        started = time.monotonic()
        report = ModelReport(model, f"sheet {model!r} of {self.path.name}")
        with _exclusive_lock(Path(f"{self.path}.lock")):
            records = load()
            header, rows = self._grid(model)
            report.findings, report.in_flight = compare(
                Grid(header, rows),
                records,
                _CELLS,
                id_column=self.id_column,
                delete_mode=self.delete_mode,
            )
        report.rows, report.records = len(rows), len(records)
        ids = sorted(
            {f.record_id for f in report.findings if f.kind in REPAIRABLE - {Kind.DUPLICATE}}
        )
        if repair and ids:
            writes = [restore_write(RecordKey(model, k), records[k].state) for k in ids]
            outcomes = self.write_records(writes)
            report.repaired = sum(o.kind is OutcomeKind.DONE for o in outcomes.values())
            report.unrepaired = len(writes) - report.repaired
        report.seconds = time.monotonic() - started
        return report

    def _grid(self, model: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        """The worksheet's header and rows (an absent one reads as empty)."""
        if not self.path.exists():
            return [self.id_column], []
        book = openpyxl.load_workbook(self.path, read_only=True)
        try:
            if model not in book.sheetnames:
                return [self.id_column], []
            rows = list(book[model].iter_rows(values_only=True))
        finally:
            book.close()
        header = [_id_key(v) or "" for v in rows[0]] if rows else [self.id_column]
        return header, rows[1:]


def _expected(value: Any) -> Any:
    """What a cell reads back as for a payload value (None: it cannot be stored)."""
    try:
        stored = _cell_value("field", value)
    except _Reject:
        return None
    return "" if stored is None else stored


def create_writer(context: WriterContext) -> LocalWorkbookWriter:
    """Build a ``LocalWorkbookWriter`` from the context's destination rules."""
    rules = context.settings.destination
    return LocalWorkbookWriter(
        rules.workbook_path,
        id_column=rules.id_column,
        unknown_fields=rules.unknown_fields,
        update_missing=rules.update_missing,
        delete_mode=rules.delete_mode,
    )


def _cell_value(name: str, value: Any) -> Any:
    """A payload value as a plain cell value: JSON text for nested data; ``_Reject`` if unfit."""
    if isinstance(value, dict | list):
        value = json.dumps(value, ensure_ascii=False)
    elif value is not None and not isinstance(value, str | int | float | bool):
        value = str(value)
    if name == "":
        raise _Reject("a field with an empty name cannot be a column")
    if isinstance(value, str):
        if ILLEGAL_CHARACTERS_RE.search(value):
            raise _Reject(f"field {name!r} contains control characters a workbook cannot store")
        if len(value) > MAX_CELL_CHARS:
            raise _Reject(f"field {name!r} is longer than {MAX_CELL_CHARS} characters")
    return value


def _set(ws: Worksheet, row: int, col: int, value: Any) -> None:
    """Store ``value`` as a plain value: a string is always text, never a formula."""
    cell = ws.cell(row=row, column=col)
    cell.value = value
    if isinstance(value, str):
        cell.data_type = "s"  # openpyxl would make "=..." a formula


def _id_key(value: Any) -> str | None:
    """The record id a cell holds (a typed-in ``42`` or ``42.0`` reads as ``"42"``)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    return text or None


def _is_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().upper() == "TRUE")


def _remove_rows(ws: Worksheet, rows: list[int]) -> None:
    """Delete ``rows``, highest first, one call per run of adjacent rows."""
    runs: list[list[int]] = []  # [first, count], highest run first
    for row in sorted(set(rows), reverse=True):
        if runs and runs[-1][0] == row + 1:
            runs[-1] = [row, runs[-1][1] + 1]
        else:
            runs.append([row, 1])
    for first, count in runs:
        ws.delete_rows(first, count)


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (never deleted) for the block."""
    with open(lock_path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _remove_stale_temps(path: Path) -> None:
    """Delete temp files a killed writer left behind (call with the lock held)."""
    for stale in path.parent.glob(f"{_temp_prefix(path)}*.tmp"):
        stale.unlink(missing_ok=True)


def _save_atomic(book: Workbook, path: Path) -> None:
    """Save to a temp file beside ``path``, fsync it, rename it over ``path``, fsync the dir."""
    tmp = path.with_name(f"{_temp_prefix(path)}{os.getpid()}.{secrets.token_hex(4)}.tmp")
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o666
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            book.save(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            os.chmod(tmp, mode)  # keep the workbook's permissions despite the umask
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


_CELLS = Cells(_expected, same, _id_key, _is_true)
