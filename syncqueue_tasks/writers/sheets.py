"""``GoogleSheetsWriter``: queued changes -> rows of a Google Sheet, a few requests per batch.

Per batch (one write per record, see ``records.RecordWrite``): one ``values.batchGet``
(header row + id column of every tab touched), one ``values.batchUpdate`` (changed cells,
tombstones, new header cells), one ``values.append`` per tab (new rows), and in ``remove``
mode one ``spreadsheets.batchUpdate`` (``deleteDimension``, highest row first). A request is
split only when its body would exceed ``sheets_max_request_bytes``. Rows are found by id on
every batch, never by stored row numbers, so a retried append whose first answer was lost
finds its row and updates it.

A 400 on an atomic write is bisected to find the bad records (the rest are written); 429
and 5xx are retried a few times, then handed back as ``Outcome.retry``. Redis holds a write
rate limiter per service account and a lock per spreadsheet (one batch in flight).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from redis import Redis
from redis.exceptions import RedisError

from syncqueue_tasks.errors import ConfigurationError, sanitize_error
from syncqueue_tasks.outcomes import Outcome
from syncqueue_tasks.records import RecordKey, RecordWrite
from syncqueue_tasks.settings import Settings, get_settings
from syncqueue_tasks.writers.flow import RateLimiter, SpreadsheetLock
from syncqueue_tasks.writers.rules import DELETED_COLUMN
from syncqueue_tasks.writers.sheets_api import (
    ApiFailure,
    FailureKind,
    SheetsApi,
    classify,
    make_http_client,
)
from syncqueue_tasks.writers.sheets_layout import (
    TabLayout,
    column_range,
    header_range,
    parse_header,
    parse_row_span,
    quote_title,
)
from syncqueue_tasks.writers.sheets_plan import Batch, Plan, Unit, body_size, chunks, plan_tab

T = TypeVar("T")
_ENVELOPE_BYTES = 512  # JSON around the data of a request body


@dataclass(frozen=True)
class SheetsTuning:
    """Knobs that are not settings: waits, retries, Redis keys (tests shrink them)."""

    key_prefix: str = "syncqueue:sheets"
    rate_limit: int | None = None  # default: settings.sheets_writes_per_minute
    rate_window: float = 60.0
    limiter_wait: float = 5.0
    lock_ttl: float = 120.0
    lock_wait: float = 5.0
    max_attempts: int = 3  # per request, within one write()
    backoff_base: float = 1.0
    backoff_cap: float = 64.0
    max_inline_wait: float = 10.0  # a longer Retry-After is handed back to the queue
    timeout: tuple[float, float] = (10.0, 60.0)


class _Abort(Exception):
    """Stop the batch: every record not yet resolved gets ``outcome``."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.error)
        self.outcome = outcome


class _Invalid(Exception):
    """The request's content was refused (400): bisect to find the bad records."""

    def __init__(self, failure: ApiFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


class GoogleSheetsWriter:
    """Writes batches of queue items to one spreadsheet; one tab per model."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        tuning: SheetsTuning | None = None,
        api: SheetsApi | None = None,
        redis: Redis | None = None,
        account: str | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.tuning = tuning or SheetsTuning()
        if not self.settings.sheets_spreadsheet_id:
            raise ConfigurationError("SYNCQUEUE_SHEETS_SPREADSHEET_ID is required for Sheets")
        if api is None:
            http, default_account = make_http_client(
                self.settings.sheets_api_url,
                self.settings.sheets_credentials_file,
                self.tuning.timeout,
            )
            api = SheetsApi(http, self.settings.sheets_spreadsheet_id)
            account = account or default_account
        self.api = api
        self._owns_redis = redis is None
        self.redis = redis if redis is not None else Redis.from_url(self.settings.redis_url)
        prefix = self.tuning.key_prefix
        self.limiter = RateLimiter(
            self.redis,
            f"{prefix}:rate:{account or 'anonymous'}",
            self.tuning.rate_limit or self.settings.sheets_writes_per_minute,
            self.tuning.rate_window,
        )
        self.lock_key = f"{prefix}:lock:{self.settings.sheets_spreadsheet_id}"
        self.last_rows: dict[tuple[str, str], int] = {}  # rows appended by the last write
        self._sheets: dict[str, tuple[int, int]] | None = None  # title -> (sheetId, columns)
        self._headers: dict[str, list[str]] = {}  # last header seen per tab: column guesses

    # ------------------------------------------------------------------ entry point

    def write_records(self, writes: Sequence[RecordWrite]) -> Mapping[RecordKey, Outcome]:
        """Apply ``writes`` and return an outcome per record."""
        batch = Batch(list(writes))
        if not batch.writes:
            return {}
        lock = SpreadsheetLock(self.redis, self.lock_key, self.tuning.lock_ttl)
        try:
            if not lock.acquire(self.tuning.lock_wait):
                wait = min(max(lock.remaining(), 0.5), 30.0)
                busy = "another batch is being written to this spreadsheet"
                batch.fill(Outcome.retry(busy, retry_after=wait, count_attempt=False))
                return batch.result()
        except RedisError as exc:
            batch.fill(Outcome.retry(sanitize_error(exc)))
            return batch.result()
        self.last_rows = {}
        try:
            self._run(batch, lock)
        except _Abort as abort:
            batch.fill(abort.outcome)
        finally:
            with contextlib.suppress(RedisError):  # else it expires on its own
                lock.release()
        return batch.result()

    def close(self) -> None:
        """Close the HTTP session and the Redis connections this writer opened."""
        self.api.http.session.close()
        if self._owns_redis:
            self.redis.close()

    def tab_for(self, model: str) -> str:
        """The tab a model's rows live in (SYNCQUEUE_SHEETS_TABS, else the model's name)."""
        return self.settings.sheets_tabs.get(model, model)

    # ------------------------------------------------------------------ the batch

    def _run(self, batch: Batch, lock: SpreadsheetLock) -> None:
        tabs: dict[str, list[int]] = {}
        for i, w in enumerate(batch.writes):
            tabs.setdefault(self.tab_for(w.model), []).append(i)
        sheets = self._metadata(lock)
        missing = [t for t in tabs if t not in sheets]
        if missing:
            sheets = self._add_tabs(missing, lock)
        layouts = self._read({t: sheets[t] for t in tabs if t not in missing}, lock) | {
            t: TabLayout(t, *sheets[t]) for t in missing
        }
        plan = Plan()
        for title, indexes in tabs.items():
            plan_tab(self.settings, batch, layouts[title], indexes, plan)
            self._headers[title] = list(layouts[title].header)
        if plan.grow:
            self._grow(plan.grow, lock)
        if plan.updates or plan.headers:
            self._send_values(batch, plan.updates, plan.headers, lock)
        if plan.deletes:
            self._send_deletes(batch, plan.deletes, lock)
        for title, units in plan.appends.items():
            self._send_appends(batch, title, units, lock)

    def _metadata(self, lock: SpreadsheetLock) -> dict[str, tuple[int, int]]:
        """Tab title -> (sheetId, column count); fetched once per writer, then cached."""
        if self._sheets is None:
            answer = self._call(self.api.metadata, lock, write=False, idempotent=True)
            self._sheets = {
                p["title"]: (
                    int(p["sheetId"]),
                    int(p.get("gridProperties", {}).get("columnCount", 26)),
                )
                for p in (s["properties"] for s in answer.get("sheets", []))
            }
        return self._sheets

    def _structure(self, requests: list[dict[str, Any]], lock: SpreadsheetLock) -> Any:
        """One spreadsheets.batchUpdate for tabs/columns; any failure drops the cached metadata."""
        try:
            return self._call(
                lambda: self.api.batch_update(requests), lock, write=True, idempotent=False
            )
        except _Invalid as bad:
            self._sheets = None
            raise _Abort(Outcome.retry(bad.failure.message)) from None
        except _Abort:
            self._sheets = None
            raise

    def _add_tabs(self, titles: list[str], lock: SpreadsheetLock) -> dict[str, tuple[int, int]]:
        """Create missing tabs (one request); return the updated title -> (sheetId, columns)."""
        requests = [{"addSheet": {"properties": {"title": t}}} for t in titles]
        answer = self._structure(requests, lock)
        sheets = dict(self._metadata(lock))
        for reply in answer.get("replies", []):
            props = reply.get("addSheet", {}).get("properties", {})
            columns = props.get("gridProperties", {}).get("columnCount", 26)
            sheets[props["title"]] = (int(props["sheetId"]), int(columns))
        self._sheets = sheets
        return sheets

    def _grow(self, grow: dict[str, int], lock: SpreadsheetLock) -> None:
        sheets = self._metadata(lock)
        requests = [
            {"appendDimension": {"sheetId": sheets[t][0], "dimension": "COLUMNS", "length": n}}
            for t, n in grow.items()
        ]
        self._structure(requests, lock)
        for title, n in grow.items():
            sheet_id, cols = sheets[title]
            sheets[title] = (sheet_id, cols + n)

    # ------------------------------------------------------------------ reading

    def _read(
        self, sheets: dict[str, tuple[int, int]], lock: SpreadsheetLock
    ) -> dict[str, TabLayout]:
        """Header + id column (+ ``_deleted`` column) of each tab: one batchGet, two if the
        cached column positions were stale."""
        if not sheets:
            return {}
        id_name = self.settings.id_column
        wanted: dict[str, list[int]] = {}
        for title in sheets:
            guess = self._headers.get(title, [])
            cols = [guess.index(id_name) + 1 if id_name in guess else 1]
            if DELETED_COLUMN in guess:
                cols.append(guess.index(DELETED_COLUMN) + 1)
            wanted[title] = cols
        ranges = [
            r
            for t, cols in wanted.items()
            for r in [header_range(t)] + [column_range(t, c) for c in cols]
        ]
        values = iter(self._batch_get(ranges, lock))
        headers: dict[str, list[str]] = {}
        columns: dict[str, dict[int, list[list[Any]]]] = {}
        for title, cols in wanted.items():
            headers[title] = parse_header(next(values).get("values", []))
            columns[title] = {c: next(values).get("values", []) for c in cols}
        refetch: list[tuple[str, int]] = []
        for title, header in headers.items():
            for name in (id_name, DELETED_COLUMN):
                col = header.index(name) + 1 if name in header else None
                if col is not None and col not in columns[title]:
                    refetch.append((title, col))
        if refetch:
            extra = self._batch_get([column_range(t, c) for t, c in refetch], lock)
            for (title, col), answer in zip(refetch, extra, strict=True):
                columns[title][col] = answer.get("values", [])
        layouts = {}
        for title, (sheet_id, col_count) in sheets.items():
            layout = TabLayout(title, sheet_id, col_count, headers[title])
            if (col := layout.column(id_name)) is not None:
                layout.read_ids(columns[title][col])
            if (col := layout.column(DELETED_COLUMN)) is not None:
                layout.read_tombstones(columns[title][col])
            self._headers[title] = list(headers[title])
            layouts[title] = layout
        return layouts

    def _batch_get(self, ranges: list[str], lock: SpreadsheetLock) -> list[Any]:
        try:
            return self._call(
                lambda: self.api.batch_get(ranges), lock, write=False, idempotent=True
            )
        except _Invalid as bad:  # a tab renamed or deleted, columns removed: drop the caches
            self._sheets = None
            self._headers.clear()
            raise _Abort(Outcome.retry(bad.failure.message)) from None

    # ------------------------------------------------------------------ planning

    # ------------------------------------------------------------------ writing

    def _send_values(
        self,
        batch: Batch,
        units: list[Unit],
        headers: list[dict[str, Any]],
        lock: SpreadsheetLock,
    ) -> None:
        limit = self.settings.sheets_max_request_bytes - _ENVELOPE_BYTES - body_size(headers)
        for chunk in chunks(units, lambda u: body_size(u.data), limit) or [[]]:
            self._values_request(batch, chunk, headers, lock)

    def _values_request(
        self,
        batch: Batch,
        units: list[Unit],
        headers: list[dict[str, Any]],
        lock: SpreadsheetLock,
    ) -> None:
        data = headers + [vr for u in units for vr in u.data]
        try:
            self._call(
                lambda: self.api.batch_update_values(data), lock, write=True, idempotent=True
            )
        except _Invalid as bad:
            if not units:  # only new header cells, and they were refused
                raise _Abort(Outcome.retry(bad.failure.message)) from None
            self._bisect(
                batch, units, bad, lambda part: self._values_request(batch, part, headers, lock)
            )
            return
        for u in units:
            batch.resolve(u.index, Outcome.done())

    def _send_appends(
        self, batch: Batch, title: str, units: list[Unit], lock: SpreadsheetLock
    ) -> None:
        for u in units:
            width = max(u.cells)
            u.data = [{"row": [u.cells.get(c, "") for c in range(1, width + 1)]}]
        limit = self.settings.sheets_max_request_bytes - _ENVELOPE_BYTES
        for chunk in chunks(units, lambda u: body_size(u.data[0]["row"]), limit):
            self._append_request(batch, title, chunk, lock)

    def _append_request(
        self, batch: Batch, title: str, units: list[Unit], lock: SpreadsheetLock
    ) -> None:
        rows = [u.data[0]["row"] for u in units]
        a1 = f"{quote_title(title)}!A1"
        try:
            answer = self._call(
                lambda: self.api.append(a1, rows), lock, write=True, idempotent=False
            )
        except _Invalid as bad:
            self._bisect(
                batch, units, bad, lambda part: self._append_request(batch, title, part, lock)
            )
            return
        try:
            first, _ = parse_row_span(answer["updates"]["updatedRange"])
        except (KeyError, TypeError, ValueError):
            first = 0
        for offset, u in enumerate(units):
            w = batch.writes[u.index]
            if first:
                self.last_rows[(w.model, w.record_id)] = first + offset
            batch.resolve(u.index, Outcome.done())

    def _send_deletes(self, batch: Batch, units: list[Unit], lock: SpreadsheetLock) -> None:
        units = sorted(units, key=lambda u: u.row, reverse=True)  # highest first: no shifting
        limit = self.settings.sheets_max_request_bytes - _ENVELOPE_BYTES
        for chunk in chunks(units, lambda u: 120, limit):
            self._delete_request(batch, chunk, lock)

    def _delete_request(self, batch: Batch, units: list[Unit], lock: SpreadsheetLock) -> None:
        requests = [
            {
                "deleteDimension": {
                    "range": {
                        "sheetId": u.sheet_id,
                        "dimension": "ROWS",
                        "startIndex": u.row - 1,
                        "endIndex": u.row,
                    }
                }
            }
            for u in units
        ]
        try:
            self._call(lambda: self.api.batch_update(requests), lock, write=True, idempotent=False)
        except _Invalid as bad:
            self._bisect(batch, units, bad, lambda part: self._delete_request(batch, part, lock))
            return
        for u in units:
            batch.resolve(u.index, Outcome.done())

    def _bisect(
        self, batch: Batch, units: list[Unit], bad: _Invalid, send: Callable[[list[Unit]], None]
    ) -> None:
        """A 400 on an atomic request: resend halves until the bad records are alone."""
        message = bad.failure.message
        if "grid limits" in message:  # our cached grid size is stale: not the records' fault
            self._sheets = None
            raise _Abort(Outcome.retry(message))
        if len({u.index for u in units}) <= 1:
            for u in units:
                w = batch.writes[u.index]
                batch.resolve(
                    u.index,
                    Outcome.fail(
                        sanitize_error(f"Sheets rejected {w.model} {w.record_id!r}: {message}")
                    ),
                )
            return
        middle = len(units) // 2
        send(units[:middle])
        send(units[middle:])

    # ------------------------------------------------------------------ calls

    def _call(
        self, fn: Callable[[], T], lock: SpreadsheetLock, *, write: bool, idempotent: bool
    ) -> T:
        """One API call with flow control; 429 (and 5xx when idempotent) retried a few times.

        Raises ``_Invalid`` for a refused content, ``_Abort`` when the batch must stop.
        """
        tuning = self.tuning
        for attempt in range(1, tuning.max_attempts + 1):
            self._admit(lock, write)
            try:
                return fn()
            except Exception as exc:  # classified below; anything unexpected is re-raised
                failure = classify(exc)
            if failure.kind is FailureKind.INVALID:
                raise _Invalid(failure)
            quota = failure.kind is FailureKind.QUOTA
            backoff = min(tuning.backoff_cap, tuning.backoff_base * 2 ** (attempt - 1))
            wait = failure.retry_after if failure.retry_after is not None else backoff
            inline = quota or (idempotent and failure.kind is FailureKind.TRANSIENT)
            if not inline or attempt >= tuning.max_attempts or wait > tuning.max_inline_wait:
                retry_after = wait if quota else failure.retry_after
                raise _Abort(Outcome.retry(failure.message, retry_after, count_attempt=not quota))
            time.sleep(min(wait * random.uniform(1.0, 1.25), max(wait, tuning.backoff_cap)))
        raise AssertionError("unreachable")  # pragma: no cover

    def _admit(self, lock: SpreadsheetLock, write: bool) -> None:
        """Keep the lock alive and, for a write, take a rate-limit slot (or stop the batch)."""
        try:
            if not lock.refresh():
                lost = "lost the spreadsheet lock (the batch ran past its time-to-live)"
                raise _Abort(Outcome.retry(lost, count_attempt=False))
            if write:
                wait = self.limiter.acquire(self.tuning.limiter_wait)
                if wait:
                    limit = f"{self.limiter.limit} per {self.limiter.window:g}s"
                    raise _Abort(
                        Outcome.retry(
                            f"Sheets write rate limit reached ({limit})", wait, count_attempt=False
                        )
                    )
        except RedisError as exc:
            raise _Abort(Outcome.retry(sanitize_error(exc))) from None


def create_writer() -> GoogleSheetsWriter:
    """A writer configured from :func:`get_settings`."""
    return GoogleSheetsWriter(get_settings())
