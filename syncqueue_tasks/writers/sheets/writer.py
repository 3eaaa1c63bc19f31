"""``GoogleSheetsWriter``: record writes -> rows of a Google Sheet, one write request per batch.

A batch is written in *rounds*. A round takes the spreadsheet's lock and reserves its request
slots with the account's limiter first (the reads and the write together, all due at one
instant), then sends back to back, with nothing in between:

1. one read (``values:batchGetByDataFilter``, by sheetId): each tab's header, id column and
   ``_deleted`` column — rows are found by id, columns by header name, every round;
2. when records are updated in place, one read of their rows, to tell a person's edits of an
   owned cell from what the package last wrote (``SYNCQUEUE_SHEETS_CONFLICTS``);
3. one atomic ``spreadsheets.batchUpdate`` with every tab's new columns, cell updates, new rows
   and (``remove`` mode) row deletions, whose answer holds each tab's header and id column as
   they are right after it.

The answer is checked (``TabPlan.check``): every column written still under the meant header,
every row written still holding the meant id. If a person moved rows or columns between the
read and the write, the write went astray: the rows are repaired at once from the answer — the
records of the round written again where they are now, cells written onto another record's
row put back from that record's synced state — in another write checked the same way. A failed
or lost request starts a new round (a new read); a refused one (400) is split in halves until
the record at fault is alone. What cannot be written now is handed back (``Outcome.retry``;
quota waits do not use up attempts) with the real expected wait.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from redis import Redis
from redis.exceptions import RedisError

from syncqueue_tasks import counters
from syncqueue_tasks.core.errors import ConfigurationError, SyncQueueError, sanitize_error
from syncqueue_tasks.core.outcomes import Outcome
from syncqueue_tasks.core.records import (
    RecordKey,
    RecordWrite,
    SyncedRecord,
    SyncedStates,
)
from syncqueue_tasks.settings import DestinationConfig, RedisConfig, SheetsConfig
from syncqueue_tasks.writers.base import WriterContext
from syncqueue_tasks.writers.flow import AccountLimiter, SpreadsheetLock
from syncqueue_tasks.writers.rules import DELETED_COLUMN
from syncqueue_tasks.writers.sheets.api import (
    ApiFailure,
    FailureKind,
    SheetsApi,
    classify,
    make_http_client,
)
from syncqueue_tasks.writers.sheets.batch import Abort, Batch, Invalid, Retry
from syncqueue_tasks.writers.sheets.layout import (
    Layout,
    build,
    column_filter,
    first_cells,
    grid,
    grid_column,
    grid_row,
    header_filter,
    row_cells,
    runs,
)
from syncqueue_tasks.writers.sheets.plan import Conflict, Job, Policy, TabPlan, record_size
from syncqueue_tasks.writers.sheets.tabs import Tabs, parse_info
from syncqueue_tasks.writers.sheets.verify import verify_tab
from syncqueue_tasks.writers.verify_compare import ModelReport, restore_write

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class SheetsTuning:
    """Knobs that are not settings: waits, rounds, Redis keys (tests and benches change them)."""

    key_prefix: str = "syncqueue:sheets"
    lock_ttl: float = 120.0
    lock_wait: float = 5.0  # a second worker waits this long for the spreadsheet, then hands back
    verify_lock_wait: float = 60.0  # verify waits this long for the writers to pause
    limiter_wait: float = 10.0  # longest wait for a round's request slots before handing back
    max_rounds: int = 3  # read + write rounds per batch (a failed or lost request re-reads)
    max_repairs: int = 3  # repair writes after a write went astray, per round
    metadata_ttl: float = 60.0  # the tabs' properties (cells in use) are read again after this
    quota_window: float = 60.0  # Google's quota minute (a bench shrinks it with the fake's clock)
    request_seconds: float = 1.0  # expected time per request, told to a waiting worker
    timeout: tuple[float, float] = (10.0, 60.0)


class GoogleSheetsWriter:
    """Writes batches of record writes to one spreadsheet; one tab per model."""

    def __init__(
        self,
        config: SheetsConfig,
        synced: SyncedStates,
        *,
        rules: DestinationConfig | None = None,
        redis: Redis | str = RedisConfig.url,
        tuning: SheetsTuning | None = None,
        api: SheetsApi | None = None,
        account: str | None = None,
    ) -> None:
        """Write to ``config``'s spreadsheet, following ``rules``; ``synced`` gives records'
        synced states (the rows a misplaced write touched are put back from them); ``redis``:
        a client, or the URL of the Redis the account's limiter and tab cache live in."""
        self.config = config
        self.tuning = tuning or SheetsTuning()
        sid = config.spreadsheet_id
        if not sid:
            raise ConfigurationError("SYNCQUEUE_SHEETS_SPREADSHEET_ID is required for Sheets")
        if api is None:
            http, default_account = make_http_client(
                self.config.api_url,
                self.config.credentials_file,
                self.tuning.timeout,
            )
            api = SheetsApi(http, sid)
            account = account or default_account
        self.api = api
        self.account = account or "anonymous"
        self._owns_redis = isinstance(redis, str)
        self.redis = Redis.from_url(redis) if isinstance(redis, str) else redis
        prefix = self.tuning.key_prefix
        self.limiter = AccountLimiter.from_config(
            self.redis, self.account, config, prefix, window=self.tuning.quota_window
        )
        self.lock_key = f"{prefix}:lock:{sid}"
        self.tabs = Tabs(self.redis, f"{prefix}:tabs:{sid}", config.tabs, self.tuning.metadata_ttl)
        self.policy = Policy.from_config(rules or DestinationConfig(), config)
        self.synced = synced
        # How many records process_batch claims for one call (follows the byte budget).
        self.batch_records = self.config.batch_records
        self.batch_changes = 100_000
        self.conflicts: list[Conflict] = []  # those of the last call (tests, verify)
        self._headers: dict[str, list[str]] = {}  # last header seen per model: column guesses

    @classmethod
    def from_context(cls, context: WriterContext, **options: Any) -> GoogleSheetsWriter:
        """A writer with the configs and synced states of ``context`` (``options``: the
        keyword arguments of the constructor)."""
        settings = context.settings
        return cls(
            settings.sheets,
            context.synced_states,
            rules=settings.destination,
            **({"redis": settings.redis.url} | options),
        )

    # ------------------------------------------------------------------ entry points

    def write_records(self, writes: Sequence[RecordWrite]) -> Mapping[RecordKey, Outcome]:
        """Apply ``writes`` and return an outcome per record."""
        batch = Batch(writes)
        if not batch.writes:
            return {}
        self.conflicts = []
        jobs = self._fit(batch)
        self._locked(batch, lambda lock: self._run(batch, jobs, lock))
        return batch.result()

    def close(self) -> None:
        """Close the HTTP session and the Redis connections this writer opened."""
        self.api.http.session.close()
        if self._owns_redis:
            self.redis.close()

    def tab_for(self, model: str) -> str:
        """The title a model's tab is found by, or made with."""
        return self.tabs.title(model)

    def usage(self) -> tuple[int, int, int]:
        """(cells in use, the cell limit, tabs) as the spreadsheet says now (one read)."""
        wait = self.limiter.wait_for("read", self.tuning.limiter_wait, self.config.spreadsheet_id)
        if wait:
            raise SyncQueueError(f"the account's read quota is spent for {wait:.0f}s")
        self.tabs.load(self.api.metadata())
        self._note_usage()
        return self.tabs.cells, self.config.max_cells, self.tabs.count

    def verify_model(
        self, model: str, load: Callable[[], Mapping[str, SyncedRecord]], *, repair: bool
    ) -> ModelReport:
        """Compare the model's tab with the synced states (``load``), repairing if asked;
        see ``writers.sheets.verify``."""
        return verify_tab(self, model, load, repair=repair)

    # ------------------------------------------------------------------ budget and lock

    def _fit(self, batch: Batch) -> list[Job]:
        """The records that fit one request's byte budget; the rest are handed back at once
        (no attempt used), and the next claim is sized to what fits."""
        budget = self.config.max_request_bytes
        jobs: list[Job] = []
        used = 0
        for index, write in enumerate(batch.writes):
            size = record_size(write)
            if jobs and used + size > budget:
                batch.resolve(
                    index,
                    Outcome.retry("did not fit this request", retry_after=0, count_attempt=False),
                )
                continue
            jobs.append(Job(index, write))
            used += size
        per_record = max(1.0, used / len(jobs))
        self.batch_records = max(1, min(self.config.batch_records, int(0.9 * budget / per_record)))
        return jobs

    def _locked(self, batch: Batch, work: Callable[[SpreadsheetLock], None]) -> None:
        """Run ``work`` holding the spreadsheet's lock, waiting for it up to ``lock_wait``;
        a busy spreadsheet hands the records back with the holder's expected wait."""
        lock = SpreadsheetLock(self.redis, self.lock_key, self.tuning.lock_ttl)
        try:
            wait = lock.wait_for(self.tuning.lock_wait)
        except RedisError as exc:
            batch.fill(Outcome.retry(sanitize_error(exc)))
            return
        if wait:
            busy = "another batch is being written to this spreadsheet"
            batch.fill(Outcome.retry(busy, retry_after=max(wait, 0.05), count_attempt=False))
            return
        try:
            work(lock)
        except Abort as abort:
            batch.fill(abort.outcome)
        finally:
            with contextlib.suppress(RedisError):  # else it expires on its own
                lock.release()

    def _reserve(self, needs: dict[str, int], lock: SpreadsheetLock) -> None:
        """Wait for the round's request slots (all due at one instant), or stop with the
        expected wait. The lock's waiters are told when this round should be done."""
        try:
            wait = self.limiter.wait_for_many(
                needs, self.tuning.limiter_wait, self.config.spreadsheet_id
            )
            lock.expect(sum(needs.values()) * self.tuning.request_seconds)
        except RedisError as exc:
            raise Abort(Outcome.retry(sanitize_error(exc))) from None
        if wait:
            raise Abort(
                Outcome.retry(
                    f"Sheets quota: the next request slot is {wait:.1f}s away",
                    retry_after=wait,
                    count_attempt=False,
                )
            )

    # ------------------------------------------------------------------ rounds

    def _run(self, batch: Batch, jobs: list[Job], lock: SpreadsheetLock) -> None:
        """Write ``jobs`` in up to ``max_rounds`` rounds; split them when a write is refused."""
        message = ""
        for _ in range(self.tuning.max_rounds):
            try:
                self._round(batch, jobs, lock)
                return
            except Retry as retry:
                message = retry.message
            except Invalid as bad:
                self._split(batch, jobs, lock, bad.failure)
                return
        raise Abort(Outcome.retry(message or "the sheet kept changing"))

    def _split(
        self, batch: Batch, jobs: list[Job], lock: SpreadsheetLock, failure: ApiFailure
    ) -> None:
        """A refused write: halve until the record at fault is alone, and fail it."""
        live = [j for j in jobs if batch.open(j.index)]
        if len(live) <= 1:
            for job in live:
                w = job.write
                batch.resolve(
                    job.index,
                    Outcome.fail(
                        sanitize_error(
                            f"Sheets rejected {w.model} {w.record_id!r}: {failure.message}"
                        )
                    ),
                )
            return
        middle = len(live) // 2
        self._run(batch, live[:middle], lock)
        self._run(batch, live[middle:], lock)

    def _round(self, batch: Batch, jobs: list[Job], lock: SpreadsheetLock) -> None:
        """Read, plan, write and check once (see the module docstring)."""
        stale = self.tabs.stale
        models = sorted({j.write.model for j in jobs})
        infos = {m: None if stale else self.tabs.find(m) for m in models}
        some = stale or any(infos.values())  # a tab to read (assumed while the tabs are stale)
        checks = some and any(j.write.base.fields for j in jobs)
        reads = [stale, some, checks]
        burst = self.limiter.budgets["read"].burst
        if sum(reads) > burst:  # the tabs' read cannot go with the others: it goes first
            self._reserve({"read": 1}, lock)
            self.load_tabs(lock)
            reads[0] = stale = False
        self._reserve({"write": 1} | ({"read": sum(reads)} if any(reads) else {}), lock)
        if stale:
            self.load_tabs(lock)
        infos = {m: self.tabs.find(m) for m in models}
        existing = {m: i for m, i in infos.items() if i is not None}
        layouts = self._read(existing, lock)
        for model, info in infos.items():
            if info is None:
                layouts[model] = Layout(self.tabs.new(model), [], created=True)
        plans = {m: TabPlan(layouts[m], self.policy, m, self.tabs.columns(m)) for m in models}
        for job in jobs:
            error = plans[job.write.model].add(job)
            if error:
                batch.resolve(job.index, Outcome.fail(sanitize_error(error)))
            elif error == "":
                batch.resolve(job.index, Outcome.done())
        self._detect_conflicts(plans, lock)
        self._limit_cells(batch, plans)
        written = {m: p for m, p in plans.items() if p.requests()}
        if written:
            after = self._write(written, lock)
            self._settle(batch, written, after, lock)
        for plan in plans.values():
            for index in plan.indexes:
                batch.resolve(index, Outcome.done())

    def load_tabs(self, lock: SpreadsheetLock) -> None:
        """Read the tabs' properties (one read; its slot already reserved)."""
        self.tabs.load(self._call(self.api.metadata, lock))
        self._note_usage()

    def _note_usage(self) -> None:
        counters.record_sheet_usage(
            self.config.spreadsheet_id, self.tabs.cells, self.config.max_cells
        )

    def _read(self, infos: Mapping[str, Any], lock: SpreadsheetLock) -> dict[str, Layout]:
        """Header, id column and ``_deleted`` column of each tab: one read (a second one when
        the columns were not where the last header put them)."""
        if not infos:
            return {}
        guesses = {m: self._guess(m) for m in infos}
        values = self._read_columns(infos, guesses, lock)
        layouts = {}
        for model, info in infos.items():
            header, ids, deleted = values[model]
            layout = build(info, header, ids, deleted)
            actual = self._positions(layout.header)
            if actual != guesses[model]:
                self._headers[model] = layout.header
                self._reserve({"read": 1}, lock)
                header, ids, deleted = self._read_columns({model: info}, {model: actual}, lock)[
                    model
                ]
                layout = build(info, header, ids, deleted)
            self._headers[model] = layout.header
            layouts[model] = layout
        return layouts

    def _guess(self, model: str) -> tuple[int, int | None]:
        return self._positions(self._headers.get(model, [self.policy.id_column]))

    def _positions(self, header: Sequence[str]) -> tuple[int, int | None]:
        """Where the id and ``_deleted`` columns are (the first of each name)."""
        name = self.policy.id_column
        return (
            header.index(name) if name in header else 0,
            header.index(DELETED_COLUMN) if DELETED_COLUMN in header else None,
        )

    def _read_columns(
        self,
        infos: Mapping[str, Any],
        positions: Mapping[str, tuple[int, int | None]],
        lock: SpreadsheetLock,
    ) -> dict[str, tuple[list[Any], list[Any], list[Any]]]:
        filters: list[dict[str, Any]] = []
        for model, info in infos.items():
            id_col, deleted_col = positions[model]
            filters += [header_filter(info.sheet_id), column_filter(info.sheet_id, id_col)]
            if deleted_col is not None:
                filters.append(column_filter(info.sheet_id, deleted_col))
        answer = iter(self._call(lambda: self.api.read(filters), lock))
        out = {}
        for model in infos:
            header, ids = row_cells(next(answer)), first_cells(next(answer))
            deleted = first_cells(next(answer)) if positions[model][1] is not None else []
            out[model] = (header, ids, deleted)
        return out

    def _detect_conflicts(self, plans: Mapping[str, TabPlan], lock: SpreadsheetLock) -> None:
        """Read the rows about to be updated and compare their owned cells with what was
        last written there (one read for every tab)."""
        wanted = {m: p.check_rows() for m, p in plans.items() if p.check_rows()}
        if not wanted:
            return
        filters, spans = [], []
        for model, rows in wanted.items():
            layout = plans[model].layout
            for first, count in runs(rows):
                filters.append(
                    grid(
                        layout.info.sheet_id,
                        startRowIndex=first,
                        endRowIndex=first + count,
                        startColumnIndex=0,
                        endColumnIndex=layout.width,
                    )
                )
                spans.append((model, first))
        answer = self._call(lambda: self.api.read(filters), lock)
        current: dict[str, dict[int, list[Any]]] = {m: {} for m in wanted}
        for (model, first), value_range in zip(spans, answer, strict=True):
            for offset, cells in enumerate(value_range.get("values", [])):
                current[model][first + offset] = list(cells)
        for model, rows in wanted.items():
            plan = plans[model]
            id_col = plan.layout.positions(self.policy.id_column)[0]
            for row in rows:
                cells = current[model].get(row, [])
                held = cells[id_col] if id_col < len(cells) else None
                if str(held) != plan.layout.ids[row]:
                    raise Retry("the sheet changed between two reads")
            found = plan.apply_conflicts(current[model])
            self._report_conflicts(model, found)

    def _report_conflicts(self, model: str, found: Sequence[Conflict]) -> None:
        if not found:
            return
        self.conflicts += found
        counters.count("writer_conflicts", len(found))
        for c in found:
            log.warning(
                "Sheets: %s %r field %r was edited in the sheet since it was last written; %s",
                model,
                c.record_id,
                c.field,
                "kept the sheet's value (SYNCQUEUE_SHEETS_CONFLICTS=keep)"
                if c.kept
                else "overwritten (SYNCQUEUE_SHEETS_CONFLICTS=overwrite)",
            )

    def _limit_cells(self, batch: Batch, plans: Mapping[str, TabPlan]) -> None:
        """Refuse new rows (then new columns) that would take the spreadsheet past its cell
        limit, before Google does."""
        limit = self.config.max_cells
        for pick in (TabPlan.inserting, TabPlan.column_users):
            used, added = self.tabs.cells, self._added(plans)
            if used + added <= limit:
                return
            error = (
                f"the spreadsheet would pass its limit of {limit:,} cells (Google allows "
                f"10,000,000; {used:,} in use, {added:,} more for this batch): new rows and "
                "columns are refused; delete unused rows, columns or tabs, then retry the "
                "failed changes"
            )
            for plan in plans.values():
                for index in pick(plan):
                    batch.resolve(index, Outcome.fail(error))
                    plan.drop(index)

    @staticmethod
    def _added(plans: Mapping[str, TabPlan]) -> int:
        total = 0
        for plan in plans.values():
            rows, cols = plan.added_cells()
            info = plan.layout.info
            total += rows * (info.col_count + cols) + cols * info.row_count
        return total

    # ------------------------------------------------------------------ the write

    def _write(self, plans: Mapping[str, TabPlan], lock: SpreadsheetLock) -> dict[str, Layout]:
        """One atomic batchUpdate for every tab; returns the tabs as they are right after it."""
        requests_: list[dict[str, Any]] = []
        ranges: list[str] = []
        for plan in plans.values():
            requests_ += plan.requests()
            ranges += plan.response_ranges(plan.layout.info.title)
        answer = self._call(lambda: self.api.batch_update(requests_, ranges), lock)
        for model, plan in plans.items():
            self.tabs.remember(model, plan.layout.info.sheet_id, plan.written_names())
        return self._layouts_after(plans, answer)

    def _layouts_after(self, plans: Mapping[str, TabPlan], answer: Any) -> dict[str, Layout]:
        sheets = {
            int(s["properties"]["sheetId"]): s
            for s in answer.get("updatedSpreadsheet", {}).get("sheets", [])
        }
        self.tabs.update(parse_info(s["properties"]) for s in sheets.values())
        self._note_usage()
        out = {}
        for model, plan in plans.items():
            sheet = sheets.get(plan.layout.info.sheet_id)
            if sheet is None:
                raise Retry("the write's answer did not show the tab")
            data = sheet.get("data", [])
            header, ids = grid_row(data[0]), grid_column(data[1])
            deleted = grid_column(data[2]) if len(data) > 2 else []
            layout = build(parse_info(sheet["properties"]), header, ids, deleted)
            self._headers[model] = layout.header
            out[model] = layout
        return out

    def _settle(
        self,
        batch: Batch,
        plans: Mapping[str, TabPlan],
        after: dict[str, Layout],
        lock: SpreadsheetLock,
    ) -> None:
        """Check the write against its answer; repair what went astray, at once."""
        for attempt in range(self.tuning.max_repairs + 1):
            astray = {}
            for model, plan in plans.items():
                bad, hits, vanished = plan.check(after[model].header, after[model].ids)
                if bad:
                    if not plan.answer_readable(after[model].header):
                        raise Retry("the id column moved while the batch was written")
                    astray[model] = (hits, vanished)
            if not astray:
                return
            counters.count("writer_astray")
            log.warning(
                "Sheets: rows or columns moved while a batch was written (tab(s) %s); "
                "repairing from the write's answer",
                ", ".join(repr(plans[m].layout.info.title) for m in astray),
            )
            if attempt == self.tuning.max_repairs:
                break
            plans = {m: self._repair(plans[m], after[m], *astray[m]) for m in astray}
            self._reserve({"write": 1}, lock)
            after = self._write(plans, lock)
        raise Abort(
            Outcome.retry(
                "the sheet kept changing while the batch was written", count_attempt=False
            )
        )

    def _repair(
        self,
        plan: TabPlan,
        layout: Layout,
        hits: Sequence[tuple[int, str | None, list[str]]],
        vanished: Sequence[str],
    ) -> TabPlan:
        """The repair of one tab, from its layout right after the write: the round's records
        written again where they are now; cells written onto another record's row put back
        from that record's state; a record whose row vanished written again whole."""
        model = plan.model
        repair = TabPlan(layout, self.policy, model, self.tabs.columns(model))
        states = {j.write.record_id: j.write.state for j in plan.jobs.values()}
        others = {h for _, h, _ in hits if h is not None} | set(vanished)
        missing = sorted(others - set(states))
        if missing:
            try:
                states.update(self.synced(model, missing))
            except Exception as exc:  # the repair of other records is best effort: verify
                log.warning("Sheets: synced states not available: %s", sanitize_error(exc))
        for job in plan.jobs.values():
            repair.add(replace(job, checks=False, keep=plan.kept_fields(job.index)))
        owned = set(self.tabs.columns(model)) | {DELETED_COLUMN}
        for row, holder, names in hits:
            state = states.get(holder) if holder is not None else None
            if state is None:  # a row of no known record: take the package's values out
                log.warning(
                    "Sheets: tab %r row %d (%s) got cells meant for another row; blanked",
                    layout.info.title,
                    row + 1,
                    "no id" if holder is None else "not a known record",
                )
                repair.restore(row, holder, dict.fromkeys(names))
                continue
            values = {n: state.fields.get(n) for n in names if n in owned or n in state.fields}
            if DELETED_COLUMN in names:
                values[DELETED_COLUMN] = None if state.live else True
            values.pop(self.policy.id_column, None)
            repair.restore(row, holder, values)
        for record_id in vanished:
            if record_id in states and not any(
                j.write.record_id == record_id for j in plan.jobs.values()
            ):
                write = restore_write(RecordKey(model, record_id), states[record_id])
                repair.add(Job(-1, write, checks=False, verify=True))
        return repair

    # ------------------------------------------------------------------ calls

    def _call(self, fn: Callable[[], T], lock: SpreadsheetLock) -> T:
        """One API call; failures become ``Retry`` (read again), ``Invalid`` (split) or
        ``Abort`` (hand back)."""
        try:
            if not lock.refresh():
                lost = "lost the spreadsheet lock (the batch ran past its time-to-live)"
                raise Abort(Outcome.retry(lost, count_attempt=False))
        except RedisError as exc:
            raise Abort(Outcome.retry(sanitize_error(exc))) from None
        try:
            return fn()
        except Exception as exc:  # classified below; anything unexpected is re-raised
            failure = classify(exc)
        if failure.kind is FailureKind.QUOTA:
            pause = failure.retry_after or self.limiter.budgets["write"].interval * 2
            raise Abort(Outcome.retry(failure.message, pause, count_attempt=False))
        if failure.kind is FailureKind.STALE:
            self.tabs.invalidate()
            self._headers.clear()
            raise Retry(failure.message)
        if failure.kind is FailureKind.TRANSIENT:
            raise Retry(failure.message)
        if failure.kind is FailureKind.INVALID:
            raise Invalid(failure)
        raise Abort(Outcome.retry(failure.message))


def create_writer(context: WriterContext) -> GoogleSheetsWriter:
    """The writer ``SYNCQUEUE_WRITER`` names (or the default with Sheets configured)."""
    return GoogleSheetsWriter.from_context(context)
