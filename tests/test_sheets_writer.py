"""GoogleSheetsWriter against the fake Sheets server: request budget, semantics, faults, flow."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import requests
from fake_sheets import WRITE_KINDS, FakeSheets, Formula
from items import Feeder, item
from redis import Redis

from syncqueue_tasks.models import QueueItem
from syncqueue_tasks.settings import get_settings
from syncqueue_tasks.writers.base import Outcome, OutcomeKind, Writer
from syncqueue_tasks.writers.flow import RateLimiter, SpreadsheetLock
from syncqueue_tasks.writers.sheets import GoogleSheetsWriter, SheetsTuning, create_writer

REDIS_URL = "redis://127.0.0.1:6379/0"
SID = "sheet-test"

MakeWriter = Callable[..., GoogleSheetsWriter]


def write_until_done(
    writer: GoogleSheetsWriter, items: Sequence[QueueItem], rounds: int = 50
) -> list[Outcome]:
    """Resubmit retried items (as the queue would) until all are done; return every retry."""
    retries: list[Outcome] = []
    pending = list(items)
    for _ in range(rounds):
        outcomes = writer.write(pending)
        assert set(outcomes) == {i.id for i in pending}
        retries += [o for o in outcomes.values() if o.kind is OutcomeKind.RETRY]
        assert not [o for o in outcomes.values() if o.kind is OutcomeKind.FAIL]
        pending = [i for i in pending if outcomes[i.id].kind is not OutcomeKind.DONE]
        if not pending:
            return retries
    raise AssertionError(f"{len(pending)} items still pending")


def kinds(outcomes: Any) -> dict[str, OutcomeKind]:
    return {k: o.kind for k, o in outcomes.items()}


@pytest.fixture
def fake() -> Iterator[FakeSheets]:
    server = FakeSheets().start()
    server.add_spreadsheet(SID, {"Requests": [["id", "name", "status"]], "Operators": [["id"]]})
    yield server
    server.stop()


@pytest.fixture
def prefix() -> Iterator[str]:
    key_prefix = f"test:sheets:{uuid.uuid4().hex}"
    yield key_prefix
    redis = Redis.from_url(REDIS_URL)
    keys = list(redis.scan_iter(f"{key_prefix}:*"))
    if keys:
        redis.delete(*keys)
    redis.close()


@pytest.fixture
def env(fake: FakeSheets, monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.setenv("SYNCQUEUE_SHEETS_API_URL", fake.url)
    monkeypatch.setenv("SYNCQUEUE_SHEETS_SPREADSHEET_ID", SID)
    monkeypatch.setenv("SYNCQUEUE_SHEETS_TABS", "Request=Requests,Operator=Operators")
    monkeypatch.setenv("SYNCQUEUE_REDIS_URL", REDIS_URL)
    for name in ("SYNCQUEUE_SHEETS_CREDENTIALS_FILE", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


@pytest.fixture
def make_writer(env: pytest.MonkeyPatch, prefix: str) -> Iterator[MakeWriter]:
    writers: list[GoogleSheetsWriter] = []

    def make(**tuning: Any) -> GoogleSheetsWriter:
        options: dict[str, Any] = {
            "key_prefix": prefix,
            "rate_limit": 10_000,
            "backoff_base": 0.01,
            "lock_wait": 2.0,
            "limiter_wait": 2.0,
            "max_inline_wait": 1.0,
        }
        get_settings.cache_clear()
        writer = GoogleSheetsWriter(get_settings(), tuning=SheetsTuning(**(options | tuning)))
        writers.append(writer)
        return Feeder(writer)  # type: ignore[return-value]

    yield make
    for writer in writers:
        writer.close()


def seed(fake: FakeSheets, n: int, tab: str = "Requests") -> None:
    """Rows r0..r{n-1} with name n<i>."""
    fake.set_rows(SID, tab, [["id", "name", "status"]] + [[f"r{i}", f"n{i}", ""] for i in range(n)])


# ----------------------------------------------------------------------------- request budget


@pytest.mark.parametrize("n", [10, 200])
def test_requests_per_batch_do_not_grow_with_the_batch(
    fake: FakeSheets, make_writer: MakeWriter, n: int
) -> None:
    seed(fake, 500)
    writer = make_writer()
    assert isinstance(writer, Writer)
    writer.write([item("UPDATE", "r0", status="warm")])  # metadata is fetched once, here
    fake.reset_calls()
    items = [item("UPDATE", f"r{i}", status=f"s{i}") for i in range(n // 2)]
    items += [item("CREATE", f"new{i}", name=f"new{i}") for i in range(n - n // 2)]
    outcomes = writer.write(items)
    assert all(o.kind is OutcomeKind.DONE for o in outcomes.values())
    by_kind = {c.kind for c in fake.calls}
    assert fake.count() == 3, [c.kind for c in fake.calls]
    assert by_kind == {"values.batchGet", "values.batchUpdate", "values.append"}
    records = {r["id"]: r for r in fake.records(SID, "Requests")}
    assert len(records) == 500 + n - n // 2
    assert records[f"r{n // 2 - 1}"]["status"] == f"s{n // 2 - 1}"
    assert records[f"new{n - n // 2 - 1}"]["name"] == f"new{n - n // 2 - 1}"


def test_a_second_tab_costs_one_more_request(fake: FakeSheets, make_writer: MakeWriter) -> None:
    seed(fake, 20)
    writer = make_writer()
    writer.write([item("UPDATE", "r0", status="warm")])
    fake.reset_calls()
    items = [item("UPDATE", f"r{i}", status="x") for i in range(10)]
    items += [item("CREATE", f"n{i}", name="y") for i in range(10)]
    items += [item("CREATE", f"op{i}", model="Operator", name="z") for i in range(10)]
    outcomes = writer.write(items)
    assert all(o.kind is OutcomeKind.DONE for o in outcomes.values())
    assert fake.count() <= 3 + 1
    assert fake.count({"values.batchGet"}) == 1
    assert len(fake.records(SID, "Operators")) == 10


def test_requests_are_split_only_above_the_body_limit(
    fake: FakeSheets, make_writer: MakeWriter, env: pytest.MonkeyPatch
) -> None:
    env.setenv("SYNCQUEUE_SHEETS_MAX_REQUEST_BYTES", "10000")
    seed(fake, 200)
    writer = make_writer()
    fake.reset_calls()
    items = [item("UPDATE", f"r{i}", status="x" * 100) for i in range(200)]
    items += [item("CREATE", f"new{i}", name="y" * 100) for i in range(100)]
    outcomes = writer.write(items)
    assert all(o.kind is OutcomeKind.DONE for o in outcomes.values())
    updates = [c for c in fake.calls if c.kind == "values.batchUpdate"]
    appends = [c for c in fake.calls if c.kind == "values.append"]
    assert len(updates) > 1 and len(appends) > 1
    assert all(c.body_bytes <= 10_000 for c in updates + appends)
    records = fake.records(SID, "Requests")
    assert len(records) == 300 and all(r["status"] == "x" * 100 for r in records[:200])


# ----------------------------------------------------------------------------- semantics


def test_changes_to_one_record_are_coalesced(fake: FakeSheets, make_writer: MakeWriter) -> None:
    seed(fake, 1)
    writer = make_writer()
    fake.reset_calls()
    items = [
        item("CREATE", "a", name="first"),
        item("UPDATE", "a", status="open"),
        item("UPDATE", "a", name="second"),
        item("CREATE", "gone", name="x"),
        item("DELETE", "gone"),
        item("UPDATE", "r0", name="old"),
        item("DELETE", "r0"),
        item("CREATE", "r0", name="again"),
    ]
    outcomes = writer.write(items)
    assert set(kinds(outcomes).values()) == {OutcomeKind.DONE}
    assert fake.count({"values.append"}) == 1
    assert fake.find(SID, "Requests", "a") == [{"id": "a", "name": "second", "status": "open"}]
    assert fake.find(SID, "Requests", "gone") == []
    assert fake.find(SID, "Requests", "r0") == [{"id": "r0", "name": "again", "status": ""}]


def test_per_record_order_across_batches(fake: FakeSheets, make_writer: MakeWriter) -> None:
    writer = make_writer()
    for batch in (
        [item("CREATE", "k", name="v1", status="new")],
        [item("UPDATE", "k", name="v2")],
        [item("DELETE", "k")],
        [item("CREATE", "k", name="v3")],
        [item("UPDATE", "k", status="done")],
    ):
        assert set(kinds(writer.write(batch)).values()) == {OutcomeKind.DONE}
    rows = fake.find(SID, "Requests", "k")
    assert rows == [{"id": "k", "name": "v3", "status": "done", "_deleted": ""}]


def test_rows_moved_by_a_person_are_found_by_id(fake: FakeSheets, make_writer: MakeWriter) -> None:
    writer = make_writer()
    assert set(
        kinds(writer.write([item("CREATE", f"p{i}", name=f"n{i}") for i in range(6)])).values()
    ) == {OutcomeKind.DONE}
    rows = fake.rows(SID, "Requests")
    header, body = rows[0], rows[1:]
    # A person sorts descending, inserts a blank row and a row of their own at the top.
    fake.set_rows(
        SID, "Requests", [header, ["", "note", ""], ["manual", "mine", ""], *reversed(body)]
    )
    stale_hint = 2  # where p0 used to be
    outcomes = writer.write(
        [item("UPDATE", "p0", row=stale_hint, status="ok0"), item("UPDATE", "p5", status="ok5")]
    )
    assert set(kinds(outcomes).values()) == {OutcomeKind.DONE}
    assert fake.find(SID, "Requests", "p0") == [{"id": "p0", "name": "n0", "status": "ok0"}]
    assert fake.find(SID, "Requests", "p5") == [{"id": "p5", "name": "n5", "status": "ok5"}]
    assert fake.find(SID, "Requests", "manual") == [{"id": "manual", "name": "mine", "status": ""}]
    assert fake.rows(SID, "Requests")[1] == ["", "note"]


def test_row_hint_picks_among_duplicate_ids(fake: FakeSheets, make_writer: MakeWriter) -> None:
    fake.set_rows(SID, "Requests", [["id", "name"], ["d", "one"], ["x", "-"], ["d", "two"]])
    writer = make_writer()
    writer.write([item("UPDATE", "d", row=4, name="hinted")])
    assert fake.rows(SID, "Requests")[1:] == [["d", "one"], ["x", "-"], ["d", "hinted"]]
    writer.write([item("UPDATE", "d", row=3, name="first")])  # row 3 is not d: hint ignored
    assert fake.rows(SID, "Requests")[1:] == [["d", "first"], ["x", "-"], ["d", "hinted"]]


def test_formula_looking_values_stay_text(fake: FakeSheets, make_writer: MakeWriter) -> None:
    writer = make_writer()
    writer.write([item("CREATE", "f", name="=SUM(1)", status="+1")])
    writer.write([item("UPDATE", "f", status='=HYPERLINK("x")')])
    row = fake.rows(SID, "Requests")[1]
    assert row == ["f", "=SUM(1)", '=HYPERLINK("x")']
    assert not any(isinstance(cell, Formula) for cell in row)
    writes = [c for c in fake.calls if c.kind in WRITE_KINDS]
    options = {
        c.query.get("valueInputOption", [None])[0] or c.body.get("valueInputOption") for c in writes
    }
    assert options == {"RAW"}


def test_values_keep_their_types(fake: FakeSheets, make_writer: MakeWriter) -> None:
    writer = make_writer()
    writer.write([item("CREATE", "t", name=12, status=True, extra={"b": 1, "a": [1]}, none=None)])
    assert fake.rows(SID, "Requests") == [
        ["id", "name", "status", "extra", "none"],
        ["t", 12, True, '{"b": 1, "a": [1]}'],
    ]


def test_tombstone_delete(fake: FakeSheets, make_writer: MakeWriter) -> None:
    seed(fake, 3)
    writer = make_writer()
    outcomes = writer.write([item("DELETE", "r1"), item("DELETE", "never-existed")])
    assert set(kinds(outcomes).values()) == {OutcomeKind.DONE}
    rows = fake.rows(SID, "Requests")
    assert rows[0] == ["id", "name", "status", "_deleted"]
    assert rows[2] == ["r1", "", "", True]
    assert rows[1] == ["r0", "n0"] and rows[3] == ["r2", "n2"]


def test_remove_delete_mode(
    fake: FakeSheets, make_writer: MakeWriter, env: pytest.MonkeyPatch
) -> None:
    env.setenv("SYNCQUEUE_DELETE_MODE", "remove")
    seed(fake, 6)
    writer = make_writer()
    fake.reset_calls()
    outcomes = writer.write(
        [
            item("DELETE", "r1"),
            item("DELETE", "r4"),
            item("DELETE", "r2"),
            item("UPDATE", "r5", status="kept"),
        ]
    )
    assert set(kinds(outcomes).values()) == {OutcomeKind.DONE}
    deletes = [c for c in fake.calls if c.kind == "spreadsheets.batchUpdate"]
    assert len(deletes) == 1
    starts = [r["deleteDimension"]["range"]["startIndex"] for r in deletes[0].body["requests"]]
    assert starts == sorted(starts, reverse=True) == [5, 3, 2]
    assert [r["id"] for r in fake.records(SID, "Requests")] == ["r0", "r3", "r5"]
    assert fake.find(SID, "Requests", "r5")[0]["status"] == "kept"


def test_unknown_fields_add_columns_or_fail(
    fake: FakeSheets, make_writer: MakeWriter, env: pytest.MonkeyPatch
) -> None:
    seed(fake, 1)
    writer = make_writer()
    fake.reset_calls()
    assert set(
        kinds(
            writer.write([item("UPDATE", "r0", color="red"), item("CREATE", "c", size=3)])
        ).values()
    ) == {OutcomeKind.DONE}
    assert fake.count({"values.batchUpdate"}) == 1  # header cells travel with the updates
    assert fake.rows(SID, "Requests")[0] == ["id", "name", "status", "color", "size"]
    assert fake.find(SID, "Requests", "c")[0]["size"] == 3

    env.setenv("SYNCQUEUE_UNKNOWN_FIELDS", "fail")
    strict = make_writer()
    good, bad = item("UPDATE", "r0", name="fine"), item("UPDATE", "r0", weight=9)
    outcomes = strict.write([item("CREATE", "z", name="ok"), bad])
    assert outcomes[bad.id].kind is OutcomeKind.FAIL
    assert "has no column for field(s) 'weight'" in outcomes[bad.id].error
    assert strict.write([good])[good.id].kind is OutcomeKind.DONE
    assert fake.find(SID, "Requests", "z")[0]["name"] == "ok"


def test_update_of_a_missing_record(
    fake: FakeSheets, make_writer: MakeWriter, env: pytest.MonkeyPatch
) -> None:
    writer = make_writer()
    assert writer.write([u := item("UPDATE", "m", name="made")])[u.id].kind is OutcomeKind.DONE
    assert fake.find(SID, "Requests", "m") == [{"id": "m", "name": "made", "status": ""}]
    env.setenv("SYNCQUEUE_UPDATE_MISSING", "fail")
    strict = make_writer()
    outcome = strict.write([u2 := item("UPDATE", "nope", name="x")])[u2.id]
    assert outcome.kind is OutcomeKind.FAIL and "'nope' not found" in outcome.error
    strict.write([item("DELETE", "m")])  # a tombstoned row counts as missing too
    outcome = strict.write([u3 := item("UPDATE", "m", name="x")])[u3.id]
    assert outcome.kind is OutcomeKind.FAIL and "'m' not found" in outcome.error
    assert strict.write([c := item("CREATE", "m", name="back")])[c.id].kind is OutcomeKind.DONE
    assert fake.find(SID, "Requests", "m")[0]["name"] == "back"


def test_unfit_fields_fail_before_any_request(fake: FakeSheets, make_writer: MakeWriter) -> None:
    writer = make_writer()
    writer.write([item("CREATE", "warm", name="x")])
    fake.reset_calls()
    long_ = item("CREATE", "long", name="x" * 50_001)
    empty = item("CREATE", "empty", **{" ": "blank name"})
    outcomes = writer.write([long_, empty])
    assert "longer than 50000" in outcomes[long_.id].error
    assert "empty name" in outcomes[empty.id].error
    assert fake.count(WRITE_KINDS) == 0


def test_new_tab_and_grid_growth(
    fake: FakeSheets, make_writer: MakeWriter, env: pytest.MonkeyPatch
) -> None:
    fake.add_tab(SID, "Narrow", [["id", "a"]], col_count=2)
    env.setenv("SYNCQUEUE_SHEETS_TABS", "Request=Narrow")
    writer = make_writer()
    items = [item("CREATE", "w", a=1, b=2, c=3), item("CREATE", "rev1", model="Revenue", amount=5)]
    assert set(kinds(writer.write(items)).values()) == {OutcomeKind.DONE}
    assert fake.rows(SID, "Narrow") == [["id", "a", "b", "c"], ["w", 1, 2, 3]]
    assert fake.tab(SID, "Narrow").col_count >= 4
    assert fake.rows(SID, "Revenue") == [["id", "amount"], ["rev1", 5]]


def test_create_writer_uses_settings(
    fake: FakeSheets, env: pytest.MonkeyPatch, prefix: str
) -> None:
    writer = create_writer()
    try:
        assert writer.settings.sheets_api_url == fake.url
        writer.limiter.key = f"{prefix}:rate"
        writer.lock_key = f"{prefix}:lock"
        assert writer.write([i := item("CREATE", "cw", name="x")])[i.id].kind is OutcomeKind.DONE
    finally:
        writer.close()
    assert fake.find(SID, "Requests", "cw")


def test_tab_titles_are_quoted(
    fake: FakeSheets, make_writer: MakeWriter, env: pytest.MonkeyPatch
) -> None:
    env.setenv("SYNCQUEUE_SHEETS_TABS", "Operator=Op's tab 1")
    writer = make_writer()
    writer.write([item("CREATE", "o1", model="Operator", name="a")])
    writer.write([item("UPDATE", "o1", model="Operator", name="b")])
    assert fake.rows(SID, "Op's tab 1") == [["id", "name"], ["o1", "b"]]


def test_moved_id_column_is_found_again(fake: FakeSheets, make_writer: MakeWriter) -> None:
    seed(fake, 3)
    writer = make_writer()
    writer.write([item("UPDATE", "r0", status="a")])
    # A person moves the id column to the end: the cached guess (column A) is stale.
    rows = [[*row, "", "", ""][:3] for row in fake.rows(SID, "Requests")]
    fake.set_rows(SID, "Requests", [row[1:] + row[:1] for row in rows])
    fake.reset_calls()
    outcomes = writer.write([item("UPDATE", "r1", status="b"), item("CREATE", "new", name="n")])
    assert set(kinds(outcomes).values()) == {OutcomeKind.DONE}
    assert fake.count({"values.batchGet"}) == 2  # once more, for the id column's new place
    assert fake.find(SID, "Requests", "r1") == [{"id": "r1", "name": "n1", "status": "b"}]
    assert fake.find(SID, "Requests", "new") == [{"id": "new", "name": "n", "status": ""}]


def test_service_account_credentials_end_to_end(
    fake: FakeSheets, env: pytest.MonkeyPatch, prefix: str, tmp_path: Any
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "fake",
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": "writer@fake.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": f"{fake.url}/token",
    }
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(info))
    env.setenv("SYNCQUEUE_SHEETS_CREDENTIALS_FILE", str(path))
    get_settings.cache_clear()
    writer = GoogleSheetsWriter(get_settings(), tuning=SheetsTuning(key_prefix=prefix))
    try:
        assert writer.limiter.key.endswith(":rate:writer@fake.iam.gserviceaccount.com")
        assert writer.write([i := item("CREATE", "sa", name="x")])[i.id].kind is OutcomeKind.DONE
    finally:
        writer.close()
    assert fake.count({"oauth.token"}) == 1
    api_calls = [c for c in fake.calls if c.kind != "oauth.token"]
    assert api_calls and all(
        (c.authorization or "").startswith("Bearer fake-token-") for c in api_calls
    )
    assert fake.find(SID, "Requests", "sa")


def test_fake_value_batch_update_is_atomic(fake: FakeSheets) -> None:
    url = f"{fake.url}/v4/spreadsheets/{SID}/values:batchUpdate"
    body = {
        "valueInputOption": "RAW",
        "data": [
            {"range": "'Requests'!A2:B2", "values": [["x", "y"]]},
            {"range": "'Nope'!A1", "values": [["z"]]},
        ],
    }
    answer = requests.post(url, json=body, timeout=5)
    assert answer.status_code == 400
    assert answer.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert fake.rows(SID, "Requests") == [["id", "name", "status"]]
    body["data"] = body["data"][:1]
    assert requests.post(url, json=body, timeout=5).json()["totalUpdatedCells"] == 2
    assert fake.rows(SID, "Requests")[1] == ["x", "y"]


# ----------------------------------------------------------------------------- faults


@pytest.mark.parametrize("mode", ["disconnect", "503"])
def test_lost_append_answer_then_retry_leaves_one_row(
    fake: FakeSheets, make_writer: MakeWriter, mode: str
) -> None:
    writer = make_writer()
    fake.lose_next(1, kinds={"values.append"}, mode=mode)
    create = item("CREATE", "once", name="x")
    first = writer.write([create])[create.id]
    assert first.kind is OutcomeKind.RETRY and first.count_attempt
    assert len(fake.find(SID, "Requests", "once")) == 1  # it did land
    assert fake.count({"values.append"}) == 1  # and was not re-sent blindly
    second = writer.write([create, later := item("UPDATE", "once", status="y")])
    assert set(kinds(second).values()) == {OutcomeKind.DONE}
    assert fake.count({"values.append"}) == 1
    assert fake.find(SID, "Requests", "once") == [{"id": "once", "name": "x", "status": "y"}]
    assert later.id in second


def test_a_storm_of_429s_is_ridden_out_without_counting_attempts(
    fake: FakeSheets, make_writer: MakeWriter
) -> None:
    seed(fake, 10)
    writer = make_writer(max_attempts=2)
    fake.fail_next(25, status=429, retry_after=0)
    items = [item("UPDATE", f"r{i}", status="s") for i in range(10)]
    items += [item("CREATE", f"c{i}", name="n") for i in range(10)]
    retries = write_until_done(writer, items)
    assert retries, "the storm should have produced retries"
    assert all(not o.count_attempt and o.retry_after is not None for o in retries)
    assert all("429" in o.error for o in retries)
    records = fake.records(SID, "Requests")
    assert len(records) == 20 and len({r["id"] for r in records}) == 20
    assert all(r["status"] == "s" for r in records[:10])


def test_retry_after_is_handed_back_when_long(fake: FakeSheets, make_writer: MakeWriter) -> None:
    writer = make_writer(max_inline_wait=1.0)
    fake.fail_next(1, status=429, retry_after=30)
    started = time.monotonic()
    outcome = writer.write([i := item("CREATE", "ra", name="x")])[i.id]
    assert time.monotonic() - started < 2
    assert outcome.kind is OutcomeKind.RETRY
    assert outcome.retry_after == 30 and not outcome.count_attempt


def test_idempotent_calls_are_retried_inline_on_5xx(
    fake: FakeSheets, make_writer: MakeWriter
) -> None:
    seed(fake, 2)
    writer = make_writer()
    fake.fail_next(2, status=503, kinds={"values.batchUpdate", "values.batchGet"})
    outcomes = writer.write([item("UPDATE", "r0", status="a"), item("UPDATE", "r1", status="b")])
    assert set(kinds(outcomes).values()) == {OutcomeKind.DONE}
    fake.fail_next(5, status=500, kinds={"values.batchUpdate"})
    outcome = writer.write([u := item("UPDATE", "r0", status="c")])[u.id]
    assert outcome.kind is OutcomeKind.RETRY and outcome.count_attempt


def test_one_bad_record_fails_alone(fake: FakeSheets, make_writer: MakeWriter) -> None:
    seed(fake, 12)
    fake.poison("POISON", "Bad value access_token=abc123secret in cell")
    writer = make_writer()
    items = [item("UPDATE", f"r{i}", status="ok") for i in range(12) if i != 7]
    items += [item("CREATE", f"c{i}", name="ok") for i in range(9)]
    bad_update = item("UPDATE", "r7", name="POISON")
    bad_create = item("CREATE", "c-bad", name="POISON")
    items[5:5] = [bad_update]
    items.append(bad_create)
    outcomes = writer.write(items)
    failed = {k for k, o in outcomes.items() if o.kind is OutcomeKind.FAIL}
    assert failed == {bad_update.id, bad_create.id}
    for bad in (bad_update, bad_create):
        error = outcomes[bad.id].error
        assert "Sheets rejected Request" in error and repr(bad.record_id) in error
        assert "400" in error and "Bad value" in error
        assert "abc123secret" not in error
    assert sum(o.kind is OutcomeKind.DONE for o in outcomes.values()) == len(items) - 2
    records = {r["id"]: r for r in fake.records(SID, "Requests")}
    assert "c-bad" not in records and records["r7"]["status"] == ""
    assert all(records[f"r{i}"]["status"] == "ok" for i in range(12) if i != 7)
    assert all(records[f"c{i}"]["name"] == "ok" for i in range(9))


def test_refused_whole_call_is_not_bisected(fake: FakeSheets, make_writer: MakeWriter) -> None:
    seed(fake, 8)
    writer = make_writer()
    writer.write([item("UPDATE", "r0", status="warm")])
    fake.reset_calls()
    fake.fail_next(1, status=403, kinds={"values.batchUpdate"})
    outcomes = writer.write([item("UPDATE", f"r{i}", status="x") for i in range(8)])
    assert {o.kind for o in outcomes.values()} == {OutcomeKind.RETRY}
    assert all(o.count_attempt for o in outcomes.values())
    assert fake.count({"values.batchUpdate"}) == 1


# ----------------------------------------------------------------------------- flow control


def test_rate_limit_exhausted_returns_uncounted_retries(
    fake: FakeSheets, make_writer: MakeWriter
) -> None:
    writer = make_writer(rate_limit=2, rate_window=30.0, limiter_wait=0.2)
    writer.write([item("CREATE", "a", name="1")])  # 1 write: append
    writer.write([item("CREATE", "b", name="2")])  # 2nd write
    outcome = writer.write([i := item("CREATE", "c", name="3")])[i.id]
    assert outcome.kind is OutcomeKind.RETRY and not outcome.count_attempt
    assert outcome.retry_after is not None and 0 < outcome.retry_after <= 30
    assert fake.find(SID, "Requests", "c") == []


def test_a_held_lock_returns_uncounted_retries(fake: FakeSheets, make_writer: MakeWriter) -> None:
    writer = make_writer(lock_wait=0.2)
    other = SpreadsheetLock(writer.redis, writer.lock_key, ttl=10)
    assert other.acquire(0)
    try:
        outcome = writer.write([i := item("CREATE", "l", name="x")])[i.id]
    finally:
        other.release()
    assert outcome.kind is OutcomeKind.RETRY and not outcome.count_attempt
    assert outcome.retry_after and outcome.retry_after > 0
    assert fake.count(WRITE_KINDS) == 0
    assert writer.write([i])[i.id].kind is OutcomeKind.DONE


def test_lock_is_compare_and_delete(prefix: str) -> None:
    redis = Redis.from_url(REDIS_URL)
    try:
        first = SpreadsheetLock(redis, f"{prefix}:lock:x", ttl=0.2)
        assert first.acquire(0)
        time.sleep(0.3)  # expired
        second = SpreadsheetLock(redis, f"{prefix}:lock:x", ttl=5)
        assert second.acquire(0)
        assert not first.refresh()
        first.held = True  # pretend it still thinks it holds the lock
        first.release()  # must not free the second holder's lock
        assert redis.get(f"{prefix}:lock:x") == second.token.encode()
        second.release()
        assert redis.get(f"{prefix}:lock:x") is None
    finally:
        redis.close()


class _CountingWriter(GoogleSheetsWriter):
    """Tracks how many batches are inside ``_run`` at once."""

    guard = threading.Lock()
    inside = 0
    peak = 0

    def _run(self, *args: Any) -> None:
        cls = _CountingWriter
        with cls.guard:
            cls.inside += 1
            cls.peak = max(cls.peak, cls.inside)
        try:
            time.sleep(0.01)
            super()._run(*args)
        finally:
            with cls.guard:
                cls.inside -= 1


def test_one_batch_in_flight_per_spreadsheet(
    fake: FakeSheets, env: pytest.MonkeyPatch, prefix: str
) -> None:
    fake.delay = 0.005
    writers = [
        _CountingWriter(
            get_settings(),
            tuning=SheetsTuning(key_prefix=prefix, rate_limit=10_000, lock_wait=0.05),
        )
        for _ in range(4)
    ]
    errors: list[BaseException] = []
    lock_retries: list[Outcome] = []

    def work(n: int, writer: GoogleSheetsWriter) -> None:
        try:
            for b in range(4):
                batch = [item("CREATE", f"t{n}-{b}-{k}", name="x") for k in range(3)]
                lock_retries.extend(
                    o
                    for o in write_until_done(writer, batch, rounds=400)
                    if "another batch" in o.error
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n, w)) for n, w in enumerate(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for w in writers:
        w.close()
    assert not errors, errors
    assert _CountingWriter.peak == 1
    assert lock_retries and all(not o.count_attempt for o in lock_retries)
    ids = [r["id"] for r in fake.records(SID, "Requests")]
    assert len(ids) == 48 == len(set(ids))


def _limited_process(sid: str, prefix: str, batches: int) -> None:
    """Child process: write ``batches`` batches of creates to its own spreadsheet."""
    import os

    os.environ["SYNCQUEUE_SHEETS_SPREADSHEET_ID"] = sid
    get_settings.cache_clear()
    tuning = SheetsTuning(key_prefix=prefix, rate_limit=5, rate_window=2.0, limiter_wait=10.0)
    writer = GoogleSheetsWriter(get_settings(), tuning=tuning)
    try:
        for b in range(batches):
            write_until_done(writer, [item("CREATE", f"{sid}-{b}-{k}", name="x") for k in range(3)])
    finally:
        writer.close()


def test_rate_limit_is_shared_across_processes(
    fake: FakeSheets, env: pytest.MonkeyPatch, prefix: str
) -> None:
    sids = ["proc-a", "proc-b"]
    for sid in sids:
        fake.add_spreadsheet(sid, {"Requests": [["id", "name"]]})
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_limited_process, args=(sid, prefix, 6)) for sid in sids]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    times = sorted(c.at for c in fake.calls if c.kind in WRITE_KINDS)
    assert len(times) == 12  # one append per batch, two processes
    for i in range(len(times) - 5):  # no 6 writes within any 2 s window
        assert times[i + 5] - times[i] >= 2.0 - 0.1, times
    for sid in sids:
        assert len(fake.records(sid, "Requests")) == 18


def test_rate_limiter_sliding_window(prefix: str) -> None:
    redis = Redis.from_url(REDIS_URL)
    try:
        limiter = RateLimiter(redis, f"{prefix}:rate:unit", limit=3, window=0.5)
        assert [limiter.try_acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
        wait = limiter.try_acquire()
        assert 0 < wait <= 0.5
        assert limiter.acquire(max_wait=0.01) > 0
        assert limiter.acquire(max_wait=1.0) == 0.0
    finally:
        redis.close()


def test_requests_and_429_answers_are_counted_in_the_queue_metrics(
    fake: FakeSheets, make_writer: MakeWriter
) -> None:
    from syncqueue_tasks import metrics

    seed(fake, 3)
    writer = make_writer(max_attempts=2)
    before = metrics.read_counters()
    fake.reset_calls()
    fake.fail_next(2, status=429, retry_after=0)
    write_until_done(writer, [item("UPDATE", f"r{i}", status="m") for i in range(3)])
    after = metrics.read_counters()
    with fake.lock:
        sent = [c for c in fake.calls if c.kind != "oauth.token"]
    assert after["writer_requests"] - before["writer_requests"] == len(sent)
    assert after["writer_throttled"] - before["writer_throttled"] == 2
