"""End to end: ``.delay()`` -> Celery worker -> ``process_batch`` -> Sheets writer -> fake API.

The package's own Celery app runs in a worker thread (``celery_worker``), so the settings and
the writer it builds come from this process's environment. The writer is selected and
configured through the environment only (``SYNCQUEUE_WRITER`` or the spreadsheet-id +
credentials auto-selection), authenticates with a service-account JSON whose ``token_uri`` is
the fake's ``/token``, and talks to the fake through ``SYNCQUEUE_SHEETS_API_URL``.

Nothing calls beat here: :func:`settle` kicks ``process_batch`` (as beat would) while changes
wait out a backoff or a ``Retry-After``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dbutil import count_rows
from fake_sheets import WRITE_KINDS, FakeSheets, Formula
from sqlalchemy import text

from syncqueue_tasks.celery import batch as batch_module
from syncqueue_tasks.celery.app import app as celery_app
from syncqueue_tasks.celery.batch import process_writer
from syncqueue_tasks.celery.kick import kick_key
from syncqueue_tasks.celery.tasks import enqueue_change, enqueue_changes, process_batch
from syncqueue_tasks.core.records import RecordKey, RecordWrite
from syncqueue_tasks.redis_client import get_redis
from syncqueue_tasks.settings import get_settings
from syncqueue_tasks.store.db import get_engine
from syncqueue_tasks.writers import loading
from syncqueue_tasks.writers.base import Outcome, WriterContext
from syncqueue_tasks.writers.sheets import GoogleSheetsWriter, SheetsTuning

pytestmark = pytest.mark.system

# The Redis keys a writer made by create_writer() uses (default tuning).
KEY_PREFIX = SheetsTuning().key_prefix
QUOTA_ERROR = (
    "Sheets API 429 RESOURCE_EXHAUSTED: Quota exceeded for quota metric 'Write requests' and "
    "limit 'Write requests per minute per user' of service 'sheets.googleapis.com'"
)
# Every kind of Sheets API call the writer makes (the OAuth token endpoint excluded).
API_KINDS = frozenset({"spreadsheets.get", "values.batchGetByDataFilter"} | WRITE_KINDS)


@dataclass
class Sheet:
    """The fake server and the spreadsheet / service account of one test."""

    fake: FakeSheets
    sid: str
    account: str

    def rows(self, tab: str) -> list[list[Any]]:
        return self.fake.rows(self.sid, tab)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def private_key_pem() -> str:
    """A fresh RSA key for the fake service account (made once: it takes a moment)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def configure(monkeypatch: pytest.MonkeyPatch, **env: str | None) -> None:
    """Set (or, with None, unset) environment variables and re-read the settings.

    Call it before the first change of a test is enqueued: the worker builds its writer from
    the settings on its first ``process_batch``.
    """
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    get_settings.cache_clear()


@pytest.fixture
def sheet(
    db: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, private_key_pem: str
) -> Iterator[Sheet]:
    """A started fake with a ``Requests`` tab, a service-account file, and the environment that
    makes ``process_batch`` write there. Afterwards: every writer the worker built is closed,
    the server stopped, this test's Redis keys and leftover Celery messages removed, and
    nothing may be left PROCESSING."""
    fake = FakeSheets().start()
    sid = f"pipeline-{uuid.uuid4().hex[:12]}"
    account = f"pipeline-{uuid.uuid4().hex[:12]}@fake.iam.gserviceaccount.com"
    fake.add_spreadsheet(sid, {"Requests": [["id", "name", "status"]]})
    credentials = tmp_path / "service-account.json"
    credentials.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "fake",
                "private_key_id": "k1",
                "private_key": private_key_pem,
                "client_email": account,
                "client_id": "1",
                "token_uri": f"{fake.url}/token",
            }
        )
    )
    # Every writer the worker builds (one per settings object) is closed at the end.
    built: list[Any] = []
    load_writer = loading.load_writer

    def load_and_keep(spec: str, context: WriterContext) -> Any:
        writer = load_writer(spec, context)
        built.append(writer)
        return writer

    monkeypatch.setattr(loading, "load_writer", load_and_keep)
    monkeypatch.setattr(loading, "_cached", None)
    configure(
        monkeypatch,
        SYNCQUEUE_WRITER=loading.SHEETS,
        SYNCQUEUE_SHEETS_SPREADSHEET_ID=sid,
        SYNCQUEUE_SHEETS_CREDENTIALS_FILE=str(credentials),
        SYNCQUEUE_SHEETS_API_URL=fake.url,
        SYNCQUEUE_SHEETS_TABS="Request=Requests",
        SYNCQUEUE_SHEETS_READ_QUOTA="100000",
        SYNCQUEUE_SHEETS_WRITE_QUOTA="100000",
        SYNCQUEUE_SHEETS_BATCH_RECORDS=None,
        SYNCQUEUE_BACKOFF_BASE_SECONDS="0.05",
        SYNCQUEUE_BACKOFF_MAX_SECONDS="0.5",
        SYNCQUEUE_KICK_DELAY="0.05",
        SYNCQUEUE_BATCH_SIZE=None,
        SYNCQUEUE_MAX_RETRIES=None,
        SYNCQUEUE_REDIS_URL=None,
        SYNCQUEUE_ID_COLUMN=None,
        SYNCQUEUE_UNKNOWN_FIELDS=None,
        SYNCQUEUE_UPDATE_MISSING=None,
        SYNCQUEUE_DELETE_MODE=None,
        SYNCQUEUE_SHEETS_MAX_REQUEST_BYTES=None,
        GOOGLE_APPLICATION_CREDENTIALS=None,
    )
    try:
        yield Sheet(fake, sid, account)
    finally:
        for writer in built:
            if isinstance(writer, GoogleSheetsWriter):
                writer.close()
        fake.stop()
        celery_app.control.purge()  # kicks still queued (the worker has stopped by now)
        redis = get_redis()
        stale = [*redis.scan_iter(f"{KEY_PREFIX}:quota:{account}*"), kick_key(celery_app)]
        redis.delete(*stale, f"{KEY_PREFIX}:lock:{sid}", f"{KEY_PREFIX}:tabs:{sid}")
        get_settings.cache_clear()
    assert count_rows("status = 'PROCESSING'") == 0


@pytest.fixture
def pipeline(sheet: Sheet, celery_worker: Any) -> Sheet:
    """``sheet`` plus the in-process worker (stopped before ``sheet`` is torn down)."""
    return sheet


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[list[RecordWrite]]:
    """The record writes of every ``GoogleSheetsWriter.write_records`` call, in call order."""
    seen: list[list[RecordWrite]] = []
    write = GoogleSheetsWriter.write_records

    def recording(
        self: GoogleSheetsWriter, writes: Sequence[RecordWrite]
    ) -> Mapping[RecordKey, Outcome]:
        seen.append(list(writes))
        return write(self, writes)

    monkeypatch.setattr(GoogleSheetsWriter, "write_records", recording)
    return seen


@pytest.fixture
def reports(monkeypatch: pytest.MonkeyPatch) -> list[batch_module.BatchReport]:
    """The report of every ``process_batch`` run, in order."""
    seen: list[batch_module.BatchReport] = []
    process = batch_module.process

    def recording(*args: Any, **kwargs: Any) -> batch_module.BatchReport:
        report = process(*args, **kwargs)
        seen.append(report)
        return report

    monkeypatch.setattr(batch_module, "process", recording)
    return seen


# ----------------------------------------------------------------------------- helpers


def settle(total: int, timeout: float = 20.0) -> None:
    """Wait until ``total`` changes are stored and none is PENDING or PROCESSING; meanwhile
    kick ``process_batch`` now and then, as beat would, for changes waiting out a backoff."""
    deadline = time.monotonic() + timeout
    last_kick = time.monotonic()
    while time.monotonic() < deadline:
        with get_engine().connect() as conn:
            stored, pending, processing = conn.execute(
                text(
                    "SELECT count(*), count(*) FILTER (WHERE status = 'PENDING'), "
                    "count(*) FILTER (WHERE status = 'PROCESSING') FROM sync_queue"
                )
            ).one()
        if stored == total and pending == 0 and processing == 0:
            return
        if pending and not processing and time.monotonic() - last_kick > 0.2:
            process_batch.delay()
            last_kick = time.monotonic()
        time.sleep(0.02)
    left = [(r["record_id"], r["action"], r["status"], r["retries"]) for r in queue_rows()]
    raise AssertionError(f"queue not settled in {timeout}s (of {total}): {left[:20]}")


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll until ``predicate()`` is true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.01)


def queue_rows() -> list[dict[str, Any]]:
    """Every queued change, in enqueue order."""
    with get_engine().connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, action, model, record_id, payload, status, retries, last_error "
                "FROM sync_queue ORDER BY id"
            )
        ).mappings()
        return [dict(r) for r in rows]


def applied_rows(fake: FakeSheets) -> list[list[Any]]:
    """Every row of cells carried by a write the fake applied, in the order it applied them
    (the rows of each ``updateCells``; refused calls left out)."""
    with fake.lock:
        calls = [c for c in fake.calls if c.status in (200, -1)]  # -1: applied, answer lost
    out: list[list[Any]] = []
    for call in calls:
        if call.kind == "spreadsheets.batchUpdate":
            for request in call.body["requests"]:
                for row in request.get("updateCells", {}).get("rows", []):
                    values = [
                        next(iter(c.get("userEnteredValue", {"": ""}).values()))
                        for c in row["values"]
                    ]
                    out.append(values)
    return out


def sequence_per_record(fake: FakeSheets, records: Sequence[str]) -> dict[str, list[int]]:
    """The ``seq`` values written for each record, in the order they landed.

    Payloads are ``{"rec": record_id, "seq": n}``: an appended row is ``[id, rec, seq]`` and
    an update writes the run ``[rec, seq]``, so the last two cells identify the change.
    """
    out: dict[str, list[int]] = {r: [] for r in records}
    for row in applied_rows(fake):
        if len(row) >= 2 and row[-2] in out and isinstance(row[-1], int):
            out[row[-2]].append(row[-1])
    return out


def assert_landed_in_order(written: dict[str, list[int]], last: int) -> None:
    """Per record, the values that landed follow enqueue order and end with the last change.

    Changes of one record claimed together are merged into one write, so intermediate values
    may never land on their own; none may land after a later one.
    """
    for record, seqs in written.items():
        assert seqs == sorted(set(seqs)), f"{record}: {seqs}"
        assert seqs and seqs[-1] == last, f"{record}: {seqs}"


def calls_by_kind(fake: FakeSheets) -> dict[str, int]:
    with fake.lock:
        kinds = [c.kind for c in fake.calls]
    return {k: kinds.count(k) for k in sorted(set(kinds))}


# ----------------------------------------------------------------------------- selection


def test_writer_spec_picks_sheets_when_spreadsheet_and_credentials_are_set(
    sheet: Sheet, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(monkeypatch, SYNCQUEUE_WRITER=None)
    assert loading.writer_spec(get_settings()) == loading.SHEETS
    writer = process_writer()
    assert isinstance(writer, GoogleSheetsWriter)
    assert writer.config.api_url == sheet.fake.url
    assert writer.limiter.key == f"{KEY_PREFIX}:quota:{sheet.account}"
    assert process_writer() is writer  # built once per settings
    credentials = get_settings().sheets.credentials_file

    configure(monkeypatch, SYNCQUEUE_SHEETS_CREDENTIALS_FILE=None)
    assert loading.writer_spec(get_settings()) == loading.WORKBOOK
    configure(
        monkeypatch,
        SYNCQUEUE_SHEETS_CREDENTIALS_FILE=credentials,
        SYNCQUEUE_SHEETS_SPREADSHEET_ID=None,
    )
    assert loading.writer_spec(get_settings()) == loading.WORKBOOK
    configure(
        monkeypatch, SYNCQUEUE_SHEETS_SPREADSHEET_ID=sheet.sid, SYNCQUEUE_WRITER="pkg.mod:make"
    )
    assert loading.writer_spec(get_settings()) == "pkg.mod:make"  # an explicit choice wins
    assert sheet.fake.count() == 0  # building a writer sends nothing


# ----------------------------------------------------------------------------- the pipeline


@pytest.mark.parametrize("selection", ["explicit", "auto"])
def test_delay_create_update_delete_across_two_models(
    pipeline: Sheet, monkeypatch: pytest.MonkeyPatch, selection: str
) -> None:
    if selection == "auto":  # spreadsheet id + credentials file, no SYNCQUEUE_WRITER
        configure(monkeypatch, SYNCQUEUE_WRITER=None)
        assert loading.writer_spec(get_settings()) == loading.SHEETS
    # Two rounds, so that the deletes meet rows already in the sheet (changes of one record
    # claimed together are merged: a create then a delete would leave no row at all).
    first = [
        ("CREATE", "Request", "r1", {"name": "Ann", "status": "new"}),
        ("CREATE", "Request", "r2", {"name": "Bob", "status": "new"}),
        ("CREATE", "Operator", "o1", {"name": "Olga"}),
        ("CREATE", "Operator", "o2", {"name": "Oscar", "shift": "night"}),
    ]
    second = [
        ("UPDATE", "Request", "r1", {"status": "done"}),
        ("CREATE", "Request", "r3", {"name": "Cy"}),
        ("DELETE", "Request", "r2", {}),
        ("UPDATE", "Operator", "o1", {"shift": "day"}),
        ("DELETE", "Operator", "o2", {}),
        ("UPDATE", "Request", "r3", {"status": "=SUM(1,2)"}),
    ]
    ids = [enqueue_change.delay(*change).id for change in first]
    settle(len(first))
    ids += [enqueue_change.delay(*change).id for change in second]
    settle(len(first) + len(second))

    assert pipeline.rows("Requests") == [
        ["id", "name", "status", "_deleted"],
        ["r1", "Ann", "done"],
        ["r2", "", "", True],  # tombstone: the id stays, no row moves
        ["r3", "Cy", "=SUM(1,2)"],
    ]
    assert not isinstance(pipeline.rows("Requests")[3][2], Formula)  # RAW: text, not a formula
    assert pipeline.rows("Operator") == [  # a tab named after the model, made on first use
        ["id", "name", "shift", "_deleted"],
        ["o1", "Olga", "day"],
        ["o2", "", "", True],
    ]
    assert [(r["id"], r["status"], r["retries"], r["last_error"]) for r in queue_rows()] == [
        (i, "COMPLETED", 0, None) for i in ids
    ]
    assert isinstance(process_writer(), GoogleSheetsWriter)
    calls = calls_by_kind(pipeline.fake)
    assert calls["oauth.token"] == 1 and calls["spreadsheets.get"] == 1
    with pipeline.fake.lock:
        api_calls = [c for c in pipeline.fake.calls if c.kind != "oauth.token"]
    assert {(c.authorization or "")[:18] for c in api_calls} == {"Bearer fake-token-"}


def test_per_record_order_across_small_batches(
    pipeline: Sheet, monkeypatch: pytest.MonkeyPatch, batches: list[list[RecordWrite]]
) -> None:
    configure(monkeypatch, SYNCQUEUE_BATCH_SIZE="3", SYNCQUEUE_SHEETS_BATCH_RECORDS="3")
    records, updates = ["k0", "k1", "k2", "k3"], 9
    ids: dict[str, list[str]] = {r: [] for r in records}
    for seq in range(updates + 1):
        for rec in records:
            action = "CREATE" if seq == 0 else "UPDATE"
            ids[rec].append(
                enqueue_change.delay(action, "Revenue", rec, {"rec": rec, "seq": seq}).id
            )
    total = len(records) * (updates + 1)
    settle(total)

    rows = pipeline.rows("Revenue")
    assert rows[0] == ["id", "rec", "seq"]
    assert sorted(rows[1:]) == [[rec, rec, updates] for rec in records]  # the last update wins
    assert_landed_in_order(sequence_per_record(pipeline.fake, records), last=updates)
    assert all(len(b) <= 3 for b in batches)
    handed = [c for b in batches for w in b for c in w.change_ids]
    assert sorted(handed) == sorted(i for r in records for i in ids[r])
    for rec in records:  # across batches, a record's changes were handed over in enqueue order
        assert [c for b in batches for w in b if w.record_id == rec for c in w.change_ids] == ids[
            rec
        ]
    assert {(r["status"], r["retries"], r["last_error"]) for r in queue_rows()} == {
        ("COMPLETED", 0, None)
    }


def test_a_storm_of_429s_is_ridden_out_without_using_attempts(
    pipeline: Sheet, monkeypatch: pytest.MonkeyPatch
) -> None:
    storm = 30
    pipeline.fake.fail_next(storm, status=429, retry_after=0.05, kinds=API_KINDS)
    records, updates = ["q0", "q1", "q2", "q3", "q4"], 5
    for seq in range(updates + 1):
        for rec in records:
            action = "CREATE" if seq == 0 else "UPDATE"
            enqueue_change.delay(action, "Revenue", rec, {"rec": rec, "seq": seq})
    total = len(records) * (updates + 1)
    settle(total, timeout=30)

    with pipeline.fake.lock:
        refused = [c for c in pipeline.fake.calls if c.status == 429]
    assert len(refused) == storm  # the whole storm was met
    rows = pipeline.rows("Revenue")
    assert rows[0] == ["id", "rec", "seq"]
    assert sorted(rows[1:]) == [[rec, rec, updates] for rec in records]
    assert_landed_in_order(sequence_per_record(pipeline.fake, records), last=updates)
    queued = queue_rows()
    assert {(r["status"], r["retries"]) for r in queued} == {("COMPLETED", 0)}
    # Some changes were handed back to the queue by the storm (not only retried inline).
    # (a record's later changes wait, without using attempts, behind one handed back)
    errors = {r["last_error"] for r in queued} - {"waiting for an earlier change of this record"}
    assert QUOTA_ERROR in errors and errors <= {None, QUOTA_ERROR}, errors


def test_one_bad_item_fails_alone_with_a_clear_sanitized_error(
    pipeline: Sheet, batches: list[list[RecordWrite]]
) -> None:
    fake = pipeline.fake
    fake.set_rows(
        pipeline.sid,
        "Requests",
        [["id", "name", "status"]] + [[f"r{i}", f"n{i}"] for i in range(6)],
    )
    fake.poison("POISON", "Bad value access_token=abc123secret in cell")
    changes = [
        {"action": "UPDATE", "model": "Request", "record_id": f"r{i}", "payload": {"status": "ok"}}
        for i in range(6)
    ]
    changes += [
        {"action": "CREATE", "model": "Request", "record_id": f"c{i}", "payload": {"name": f"c{i}"}}
        for i in range(4)
    ]
    changes.insert(
        7,
        {"action": "CREATE", "model": "Request", "record_id": "bad", "payload": {"name": "POISON"}},
    )
    prepared = enqueue_changes.prepare(changes).message
    enqueue_changes.delay(**prepared)
    settle(len(changes))

    assert [len(b) for b in batches] == [len(changes)]  # the bad one shared the good ones' batch
    assert fake.rows(pipeline.sid, "Requests") == [
        ["id", "name", "status"],
        *[[f"r{i}", f"n{i}", "ok"] for i in range(6)],
        *[[f"c{i}", f"c{i}"] for i in range(4)],
    ]
    bad_id = prepared["item_ids"][7]
    outcome = {r["id"]: (r["status"], r["retries"], r["last_error"]) for r in queue_rows()}
    status, retries, error = outcome.pop(bad_id)
    assert (status, retries) == ("FAILED", 1)
    assert error.startswith(
        "Sheets rejected Request 'bad': Sheets API 400 INVALID_ARGUMENT: Invalid requests["
    )
    assert error.endswith("].updateCells: Bad value access_token=*** in cell")
    assert set(outcome.values()) == {("COMPLETED", 0, None)}


@pytest.mark.parametrize("mode", ["disconnect", "503"])
def test_lost_append_answer_then_retry_leaves_one_row(pipeline: Sheet, mode: str) -> None:
    fake = pipeline.fake
    fake.lose_next(1, kinds={"spreadsheets.batchUpdate"}, mode=mode)
    created = enqueue_change.delay("CREATE", "Request", "once", {"name": "x"}).id
    settle(1)
    assert fake.rows(pipeline.sid, "Requests") == [["id", "name", "status"], ["once", "x"]]
    # The answer was lost: a new round read the ids, found the row and did not add another.
    assert fake.count({"spreadsheets.batchUpdate"}) == 2
    [row] = queue_rows()
    assert (row["id"], row["status"], row["retries"]) == (created, "COMPLETED", 0)

    updated = enqueue_change.delay("UPDATE", "Request", "once", {"status": "y"}).id
    settle(2)
    assert fake.rows(pipeline.sid, "Requests") == [["id", "name", "status"], ["once", "x", "y"]]
    assert fake.count({"spreadsheets.batchUpdate"}) == 3
    assert [(r["id"], r["status"]) for r in queue_rows()] == [
        (created, "COMPLETED"),
        (updated, "COMPLETED"),
    ]


def test_requests_per_batch_stay_fixed_as_the_batch_grows(
    pipeline: Sheet,
    monkeypatch: pytest.MonkeyPatch,
    reports: list[batch_module.BatchReport],
) -> None:
    configure(monkeypatch, SYNCQUEUE_BATCH_SIZE="100")
    fake, sid = pipeline.fake, pipeline.sid
    seeded = 200
    fake.set_rows(
        sid, "Requests", [["id", "name", "status"]] + [[f"r{i}", f"n{i}"] for i in range(seeded)]
    )
    expected = [["id", "name", "status"]] + [[f"r{i}", f"n{i}"] for i in range(seeded)]

    # Warm-up: the first batch also fetches a token and the spreadsheet's metadata (once).
    enqueue_change.delay("UPDATE", "Request", "r0", {"status": "warm"})
    settle(1)
    expected[1] = ["r0", "n0", "warm"]
    assert calls_by_kind(fake) == {
        "oauth.token": 1,
        "spreadsheets.get": 1,
        "values.batchGetByDataFilter": 1,
        "spreadsheets.batchUpdate": 1,
    }

    per_batch: dict[int, dict[str, int]] = {}
    done, row, created = 1, 0, 0
    for size in (10, 100):
        n_update, n_delete = size * 4 // 10, size * 2 // 10
        changes: list[dict[str, Any]] = []
        for _ in range(n_update):
            row += 1
            changes.append(
                {
                    "action": "UPDATE",
                    "model": "Request",
                    "record_id": f"r{row}",
                    "payload": {"status": f"s{row}"},
                }
            )
            expected[row + 1] = [f"r{row}", f"n{row}", f"s{row}"]
        for _ in range(n_delete):
            row += 1
            changes.append(
                {"action": "DELETE", "model": "Request", "record_id": f"r{row}", "payload": {}}
            )
            expected[row + 1] = [f"r{row}", f"n{row}", "", True]  # typed in: not blanked
        for _ in range(size - n_update - n_delete):
            changes.append(
                {
                    "action": "CREATE",
                    "model": "Request",
                    "record_id": f"c{created}",
                    "payload": {"name": f"new{created}"},
                }
            )
            expected.append([f"c{created}", f"new{created}"])
            created += 1
        fake.reset_calls()
        enqueue_changes.delay(changes)  # one message: one insert, one kick
        done += size
        settle(done)
        # A run reports after its last (empty) dequeue, a moment after the rows are COMPLETED.
        wait_for(lambda n=done: sum(r.claimed for r in reports) == n)
        per_batch[size] = calls_by_kind(fake)

    # One process_batch run per phase, each a single batch (a stray kick finds nothing to do).
    assert [(r.batches, r.claimed, r.completed) for r in reports if r.claimed] == [
        (1, 1, 1),
        (1, 10, 10),
        (1, 100, 100),
    ]
    one_each = {"values.batchGetByDataFilter": 1, "spreadsheets.batchUpdate": 1}
    assert per_batch == {10: one_each, 100: one_each}
    expected[0] = ["id", "name", "status", "_deleted"]
    assert fake.rows(sid, "Requests") == expected
    assert {(r["status"], r["retries"]) for r in queue_rows()} == {("COMPLETED", 0)}
