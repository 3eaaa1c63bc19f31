"""The ``syncqueue`` CLI against the real test database (CliRunner, and subprocesses)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner, Result
from dbutil import count_rows, create_database, drop_database, use_database
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from processes import ROOT, celery_worker, child_env
from sqlalchemy import text

from syncqueue_tasks.core.errors import ValidationError
from syncqueue_tasks.core.validation import validate_change
from syncqueue_tasks.local import runstate
from syncqueue_tasks.local.embedded import free_port
from syncqueue_tasks.ops.cli import main
from syncqueue_tasks.redis_client import get_redis
from syncqueue_tasks.redis_client import key as redis_key
from syncqueue_tasks.settings import DEFAULT_DATABASE_URL, get_settings
from syncqueue_tasks.store import queue, schema
from syncqueue_tasks.store.db import dispose_engine, get_engine
from syncqueue_tasks.store.schema import head_revisions

pytestmark = pytest.mark.timeout(120)

CLI = [sys.executable, "-m", "syncqueue_tasks.ops.cli"]

HEAD = head_revisions()[0]  # the newest migration
SECRET = "s3cret-payload-value"


def cli(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def assert_one_line_error(result: Result | subprocess.CompletedProcess[str]) -> str:
    """Non-zero exit, exactly one ``Error:`` line on stderr, no traceback anywhere."""
    code = result.exit_code if isinstance(result, Result) else result.returncode
    assert code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


def make_failed(model: str = "Request", record_id: str = "1", error: str = "boom") -> str:
    """Enqueue a change and park it as FAILED with ``error``; return its id."""
    item_id = queue.enqueue("CREATE", model, record_id, {"name": "x"})
    [item] = queue.dequeue(1)
    assert queue.mark_failed(item, error, retryable=False) == "FAILED"
    return item_id


def status_of(item_id: str) -> str | None:
    rows = [s for s in ("PENDING", "FAILED", "COMPLETED") if count_rows(
        "id = :id AND status = CAST(:s AS queue_status)", id=item_id, s=s
    )]  # fmt: skip
    return rows[0] if rows else None


@pytest.mark.integration
def test_stats_text_and_json(db: None) -> None:
    queue.enqueue("CREATE", "Request", "1", {"a": 1})
    queue.enqueue("CREATE", "Request", "2", {"a": 2})
    make_failed("Operator", "9")

    text = cli("stats")
    assert text.exit_code == 0
    assert re.search(r"PENDING\s+2", text.stdout) and re.search(r"FAILED\s+1", text.stdout)

    data = json.loads(cli("stats", "--json").stdout)
    assert data["pending"] == 2 and data["failed"] == 1 and data["failed_last_24h"] == 1
    assert data["completed"] == 0 and data["completed_last_hour"] == 0
    assert data["oldest_pending_age_seconds"] >= 0


@pytest.mark.integration
def test_failed_lists_last_errors_by_model(db: None) -> None:
    assert "No FAILED items." in cli("failed").stdout
    make_failed("Request", "1", "column 'x' is protected")
    make_failed("Operator", "2", "quota exceeded")

    both = cli("failed").stdout
    assert "Request/1" in both and "column 'x' is protected" in both
    assert "Operator/2" in both and "quota exceeded" in both

    only = cli("failed", "--model", "Operator").stdout
    assert "Operator/2" in only and "Request/1" not in only
    assert len(json.loads(cli("failed", "--limit", "1", "--json").stdout)) == 1


@pytest.mark.integration
def test_retry_by_id_model_and_all(db: None) -> None:
    a = make_failed("Request", "1")
    b = make_failed("Request", "2")
    c = make_failed("Operator", "3")

    assert "1 FAILED item(s) back to PENDING" in cli("retry", "--id", a).stdout
    assert (status_of(a), status_of(b), status_of(c)) == ("PENDING", "FAILED", "FAILED")
    assert "1 FAILED" in cli("retry", "--model", "Request").stdout
    assert status_of(b) == "PENDING" and status_of(c) == "FAILED"
    assert "1 FAILED" in cli("retry", "--all").stdout
    assert status_of(c) == "PENDING"

    assert "--id" in assert_one_line_error(cli("retry"))
    assert "--all cannot" in assert_one_line_error(cli("retry", "--all", "--model", "Request"))
    assert "invalid id" in assert_one_line_error(cli("retry", "--id", "nope"))


@pytest.mark.integration
def test_discard_asks_first(db: None) -> None:
    a = make_failed("Request", "1")
    make_failed("Operator", "2")
    make_failed("Operator", "3")

    no = cli("discard", "--id", a, input="n\n")
    assert no.exit_code != 0 and "Aborted" in no.output and status_of(a) == "FAILED"
    yes = cli("discard", "--id", a, input="y\n")
    assert yes.exit_code == 0 and "Deleted 1" in yes.stdout and status_of(a) is None

    quiet = cli("discard", "--model", "Operator", "--yes")
    assert quiet.exit_code == 0 and "Deleted 2" in quiet.stdout and "[y/N]" not in quiet.stdout
    assert "No FAILED items match." in cli("discard", "--all").stdout
    assert count_rows() == 0


@pytest.mark.integration
def test_enqueue_good_and_bad_input(db: None) -> None:
    good = cli("enqueue", "CREATE", "Request", "42", "--payload", '{"name": "Ann"}', "--row", "7")
    assert good.exit_code == 0, good.output
    item_id = good.stdout.strip()
    assert len(item_id) == 26
    assert count_rows(
        "id = :id AND payload->>'name' = 'Ann' AND sheet_row_index = 7", id=item_id
    ) == 1  # fmt: skip

    for args in (
        ["CREATE", "Request", "42", "--payload", "{bad"],
        ["CREATE", "Request", "42", "--payload", "[1, 2]"],
        ["CREATE", "Nope", "42"],
        ["MOVE", "Request", "42"],
        ["CREATE", "Request", ""],
        ["CREATE", "Request", "42", "--row", "abc"],
        ["CREATE", "Request"],
    ):
        assert_one_line_error(cli("enqueue", *args))
    assert count_rows() == 1


ARG = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=12)
VALID_ARGS = {
    "action": st.sampled_from(["CREATE", "update", "Delete"]),
    "model": st.sampled_from(["Request", "Operator", "Revenue"]),
    "record_id": st.one_of(st.integers(-(2**70), 2**70).map(str), ARG.filter(bool)),
    "payload": st.dictionaries(ARG, st.one_of(st.none(), st.integers(), ARG), max_size=3).map(
        json.dumps
    ),
    "row": st.one_of(st.none(), st.integers(1, 2**31 - 1).map(str)),
}
BROKEN_ARGS = {  # each may still be valid by chance: the oracle decides
    "action": st.one_of(st.sampled_from(["MOVE", ""]), ARG),
    "model": st.one_of(st.sampled_from(["request", "Nope"]), ARG),
    "record_id": st.one_of(st.just(""), st.text("x", min_size=256, max_size=256), ARG),
    "payload": st.one_of(
        ARG,  # mostly not JSON
        st.sampled_from(['{"n": NaN}', '{"n": 1e400}', '{"s": "\\u0000"}', '{"s": "\\ud800"}']),
        st.sampled_from(["[]", "12", "null", '"text"']),
    ),
    "row": st.one_of(st.integers(-5, 0), st.integers(2**31, 2**40)).map(str) | ARG,
}
CLI_ARGS = st.fixed_dictionaries(VALID_ARGS).flatmap(
    lambda valid: st.one_of(
        st.just(valid),
        st.sampled_from(sorted(BROKEN_ARGS)).flatmap(
            lambda field: BROKEN_ARGS[field].map(lambda bad: {**valid, field: bad})
        ),
    )
)


@pytest.mark.integration
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)  # the fixture gives the test its database; each example counts rows before and after
@given(args=CLI_ARGS)
def test_property_cli_enqueue_stores_the_change_or_says_why_in_one_line(
    db: None, args: dict[str, str | None]
) -> None:
    """Whatever the arguments: exit 0 and exactly the change given, stored; or a one-line error
    and nothing stored. The library's validation is the oracle for which one (its own property
    tests, in test_validation.py, check it against an independent model)."""
    action, model, record_id, payload, row = (
        args["action"], args["model"], args["record_id"], args["payload"], args["row"]
    )  # fmt: skip
    assert action is not None and model is not None and record_id is not None
    assert payload is not None
    before = count_rows()
    options = [f"--payload={payload}", *([f"--row={row}"] if row is not None else [])]
    result = cli("enqueue", *options, "--", action, model, record_id)  # "--": a record "-1"
    try:
        fields = json.loads(payload)
        row_number = None if row is None else int(row)
        change = validate_change(
            action, model, record_id, fields, row_number, limits=get_settings().limits
        )
    except (ValueError, ValidationError):
        change = None
    event("refused" if change is None else "stored")
    if change is None:
        assert_one_line_error(result)
        assert count_rows() == before
        return
    assert result.exit_code == 0, result.output
    item_id = result.stdout.strip()
    [stored] = _row(item_id)
    assert stored == (change.action.value, change.model, change.record_id, change.sheet_row_index)
    assert count_rows() == before + 1
    assert count_rows("id = :i AND payload = CAST(:p AS jsonb)", i=item_id, p=change.payload_json)


def _row(item_id: str) -> list[tuple[object, ...]]:
    with get_engine().connect() as conn:
        rows = conn.execute(
            text("SELECT action, model, record_id, sheet_row_index FROM sync_queue WHERE id = :i"),
            {"i": item_id},
        ).all()
    return [(str(r[0]), r[1], r[2], r[3]) for r in rows]


@pytest.mark.integration
def test_migrate_from_empty_and_without_alembic_ini(
    db: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert f"already at head ({HEAD})" in cli("migrate").stdout

    original = os.environ["DATABASE_URL"]
    name = f"sq_cli_migrate_{os.getpid()}"
    use_database(create_database(name))
    try:
        assert f"empty -> {HEAD}" in cli("migrate").stdout
        assert f"OK    migrations: at head {HEAD}" in cli("doctor").stdout
    finally:
        use_database(original)
        drop_database(name)

    # An install without alembic.ini: the configuration is built in code.
    (tmp_path / "migrations").symlink_to(ROOT / "migrations")
    monkeypatch.setattr(schema, "REPO_ROOT", tmp_path)
    assert schema.alembic_config().config_file_name is None
    assert f"already at head ({HEAD})" in cli("migrate").stdout
    (tmp_path / "migrations").unlink()
    assert "migrations are not installed" in assert_one_line_error(cli("migrate"))


@pytest.mark.integration
def test_doctor_all_ok(db: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCQUEUE_WORKBOOK_PATH", str(tmp_path / "book.xlsx"))
    get_settings.cache_clear()
    result = cli("doctor")
    assert result.exit_code == 0, result.output
    for name in ("database", "migrations", "broker", "writer"):
        assert f"OK    {name}: " in result.stdout
    assert "All checks passed." in result.stdout


@pytest.mark.integration  # doctor's broker check needs Redis
@pytest.mark.parametrize("command", [["doctor"], ["stats"], ["enqueue", "CREATE", "Request", "1"]])
def test_unreachable_database_is_one_clear_line(command: list[str]) -> None:
    env = child_env({"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/x"})
    result = subprocess.run(
        [*CLI, *command], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    line = assert_one_line_error(result)
    if command == ["doctor"]:
        assert "2 of 4 checks failed: database, migrations" in line
        assert re.search(r"^FAIL  database: .*refused.* -> start PostgreSQL", result.stdout, re.M)
        assert "OK    broker" in result.stdout
    else:
        assert "database unavailable" in line and "check DATABASE_URL" in line


@pytest.mark.system
def test_demo_and_via_celery_with_a_real_worker(db: None, recorded: Path, tmp_path: Path) -> None:
    with celery_worker(tmp_path):
        result = cli("demo", "--count", "12", "--timeout", "60")
        assert result.exit_code == 0, result.output
        assert "Enqueued 12 changes" in result.stdout and "12 completed, 0 failed" in result.stdout
        assert count_rows("status = 'COMPLETED'") == 12
        written = [json.loads(line) for line in recorded.read_text().splitlines()]
        assert sum(len(w["changes"]) for w in written) == 12  # one line per record write
        assert {w["model"] for w in written} <= {"Request", "Operator", "Revenue"}
        assert "CREATE" in {w["action"] for w in written}

        via = cli("enqueue", "UPDATE", "Operator", "7", "--payload", '{"x": 1}', "--via-celery")
        assert via.exit_code == 0, via.output
        item_id = via.stdout.strip()
        deadline = time.monotonic() + 30
        while status_of(item_id) != "COMPLETED" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status_of(item_id) == "COMPLETED"


def _scrape(url: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return str(response.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture
def metrics_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``syncqueue metrics`` as a subprocess on a free port; killed by pid afterwards."""
    port = free_port()
    log = (tmp_path / "metrics.log").open("wb")
    proc = subprocess.Popen(
        [*CLI, "metrics", "--port", str(port)],
        env=child_env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        yield proc, port
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        log.close()


@pytest.mark.integration
def test_metrics_serves_what_stats_shows(
    db: None, metrics_server: tuple[subprocess.Popen[bytes], int], tmp_path: Path
) -> None:
    proc, port = metrics_server
    for n in range(3):
        queue.enqueue("CREATE", "Request", str(n), {"n": n})
    make_failed("Operator", "9")
    [item] = queue.dequeue(1)  # Request 0
    queue.mark_complete(item)
    queue.dequeue(1)  # Request 1 stays PROCESSING

    body = _scrape(f"http://127.0.0.1:{port}/metrics")
    stats = json.loads(cli("stats", "--json").stdout)
    for status in ("PENDING", "PROCESSING", "COMPLETED", "FAILED"):
        match = re.search(rf'^syncqueue_items{{status="{status}"}} (\S+)$', body, re.M)
        assert match and float(match.group(1)) == stats[status.lower()], (status, body)
    assert (stats["pending"], stats["processing"], stats["completed"], stats["failed"]) == (
        1, 1, 1, 1,
    )  # fmt: skip
    age = re.search(r"^syncqueue_oldest_pending_age_seconds (\S+)$", body, re.M)
    assert age and abs(float(age.group(1)) - stats["oldest_pending_age_seconds"]) < 5

    proc.send_signal(signal.SIGTERM)  # stopped by its pid
    assert proc.wait(15) == 0
    assert "stopped" in (tmp_path / "metrics.log").read_text()


@pytest.mark.integration
def test_metrics_port_in_use_is_one_line(db: None) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = assert_one_line_error(cli("metrics", "--port", str(port)))
    assert f"cannot listen on 127.0.0.1:{port}" in line


@pytest.mark.integration
def test_enqueue_reads_the_payload_from_a_file_or_stdin(db: None, tmp_path: Path) -> None:
    big = {"notes": "x" * 5000, "name": "Ann", "tags": ["a", "b"]}
    (tmp_path / "change.json").write_text(json.dumps(big, indent=2))
    from_file = cli("enqueue", "CREATE", "Request", "1", "--payload", f"@{tmp_path}/change.json")
    assert from_file.exit_code == 0, from_file.output
    from_stdin = cli("enqueue", "UPDATE", "Request", "1", "--payload", "-", input='{"n": 2}')
    assert from_stdin.exit_code == 0, from_stdin.output
    assert count_rows("id = :i AND payload = CAST(:p AS jsonb)",
                      i=from_file.stdout.strip(), p=json.dumps(big)) == 1  # fmt: skip
    assert count_rows("id = :i AND payload->>'n' = '2'", i=from_stdin.stdout.strip()) == 1

    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "latin1.json").write_bytes(b'{"name": "\xe9"}')
    for payload, message in (
        (f"@{tmp_path}/missing.json", f"invalid payload: cannot read {tmp_path}/missing.json"),
        (f"@{tmp_path}", f"invalid payload: cannot read {tmp_path}"),
        (f"@{tmp_path}/bad.json", "invalid payload: not valid JSON"),
        (f"@{tmp_path}/latin1.json", "is not UTF-8 text"),
    ):
        assert message in assert_one_line_error(
            cli("enqueue", "CREATE", "Request", "2", "--payload", payload)
        )
    empty = cli("enqueue", "CREATE", "Request", "2", "--payload", "-", input="")
    assert "not valid JSON" in assert_one_line_error(empty)
    assert count_rows() == 2


@pytest.mark.integration
def test_demo_says_where_it_writes_and_asks_before_a_google_sheet(
    db: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    book = tmp_path / "book.xlsx"
    monkeypatch.setenv("SYNCQUEUE_WORKBOOK_PATH", str(book))
    get_settings.cache_clear()
    local = cli("demo", "--count", "2", "--timeout", "0")  # no worker: it times out
    assert f"The demo writes into the local workbook {book}." in local.stdout
    assert "[y/N]" not in local.output and count_rows() == 2

    monkeypatch.setenv("SYNCQUEUE_SHEETS_SPREADSHEET_ID", "sheet-abc")
    monkeypatch.setenv("SYNCQUEUE_SHEETS_CREDENTIALS_FILE", str(tmp_path / "sa.json"))
    monkeypatch.setenv("SYNCQUEUE_SHEETS_TABS", "Request=Requests")
    get_settings.cache_clear()
    where = (
        "The demo writes into the Google Sheet sheet-abc "
        "(https://docs.google.com/spreadsheets/d/sheet-abc), tabs Requests, Operator, Revenue."
    )
    refused = cli("demo", "--count", "3", input="n\n")
    assert where in refused.stdout
    assert "Write 3 demo changes into this Google Sheet? [y/N]" in refused.stderr
    assert "nothing enqueued" in refused.stderr.splitlines()[-1] and refused.exit_code == 1
    assert "nothing enqueued" in cli("demo", "--count", "3").stderr  # no answer at all
    assert count_rows() == 2

    accepted = cli("demo", "--count", "3", "--timeout", "0", input="y\n")
    assert "Enqueued 3 changes" in accepted.stdout and count_rows() == 5
    unasked = cli("demo", "--count", "3", "--timeout", "0", "--yes")
    assert "Enqueued 3 changes" in unasked.stdout and "[y/N]" not in unasked.output
    assert count_rows() == 8


def _default_database_tables() -> tuple[str | None, str | None]:
    """Read-only look at the built-in default database."""
    with psycopg.connect(DEFAULT_DATABASE_URL.replace("postgresql+psycopg:", "postgresql:")) as c:
        row = c.execute(
            "SELECT to_regclass('public.sync_queue')::text, to_regclass('alembic_version')::text"
        ).fetchone()
    assert row is not None
    return row[0], row[1]


@pytest.mark.integration
def test_without_a_running_stack_or_database_url_the_cli_says_so_and_migrate_asks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    test_database = os.environ["DATABASE_URL"]
    monkeypatch.delenv("DATABASE_URL")
    monkeypatch.setenv("SYNCQUEUE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SYNCQUEUE_CLI", "./syncq")
    note = (
        f"Note: no running `syncqueue run` found (nothing live in {tmp_path}/run.json) and "
        f"DATABASE_URL is unset: using the default database {DEFAULT_DATABASE_URL}"
    )
    try:
        get_settings.cache_clear()
        dispose_engine()
        before = _default_database_tables()
        for answer in ("n\n", None):  # a no, and no terminal to ask
            refused = cli("migrate", input=answer)
            assert refused.exit_code == 1
            assert refused.stderr.startswith(note + "\n")
            assert f"the default database {DEFAULT_DATABASE_URL}? [y/N]" in refused.stderr
            assert refused.stderr.splitlines()[-1].endswith(
                "Error: not migrated: start `./syncq run` (every command finds its database) "
                "or set DATABASE_URL; to migrate the default database: `./syncq migrate --yes`"
            )
        assert _default_database_tables() == before  # untouched

        doctor = cli("doctor")
        assert doctor.stderr.startswith(note)
        assert "the default: no running stack, DATABASE_URL unset)" in doctor.stdout
        if before[1] is None:  # never migrated (the usual case): say why not to, and how
            assert "`./syncq migrate --yes`" in doctor.stdout
            assert "start `./syncq run`" in doctor.stdout

        # With a running stack published in the data dir, its database is used, silently.
        runstate.write(runstate.RunState(pid=os.getpid(), env={"DATABASE_URL": test_database}),
                       tmp_path)  # fmt: skip
        stats = cli("stats", "--json")
        assert stats.exit_code == 0 and "Note:" not in stats.stderr
        assert os.environ["DATABASE_URL"] == test_database
    finally:
        runstate.clear(tmp_path, os.getpid())
        monkeypatch.undo()
        get_settings.cache_clear()
        dispose_engine()


@pytest.mark.integration
def test_record_shows_the_synced_state_and_the_changes(db: None) -> None:
    queue.enqueue("CREATE", "Request", "r9", {"name": "Ann", "phone": "555"})
    queue.mark_complete_many(queue.dequeue())
    queue.enqueue("UPDATE", "Request", "r9", {"name": "Bo"})
    out = cli("record", "Request", "r9").stdout
    assert "Request r9: live; fields name, phone" in out and "waiting 1" in out
    assert "COMPLETED" in out and "PENDING" in out and "555" not in out and "Bo" not in out
    as_json = json.loads(cli("record", "Request", "r9", "--json").stdout)
    assert as_json["fields"] == {"name": "Ann", "phone": "555"} and as_json["pending"] == 1
    assert [c["status"] for c in as_json["changes"]] == ["COMPLETED", "PENDING"]
    missing = cli("record", "Request", "nope")
    assert missing.exit_code == 1 and "never had a change" in missing.output


@pytest.mark.integration
@pytest.mark.usefixtures("db")
def test_invalid_lists_retries_and_discards_kept_broker_messages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from syncqueue_tasks.celery.invalid_messages import keep, list_invalid

    # What a worker keeps (see test_broker_reliability): a model it did not know, and a
    # message sent by hand without the model argument.
    args = {"action": "CREATE", "model": "Operator", "record_id": "op-7"}
    keep("syncqueue.enqueue_change", "m-unknown-model", [], {**args, "payload": {"n": SECRET}},
         "ValidationError: model 'Operator' is not in SYNCQUEUE_MODELS")  # fmt: skip
    keep("syncqueue.enqueue_change", "m-misshapen", ["CREATE"], {}, "TypeError: missing 'model'")
    try:
        listed = cli("invalid")
        assert listed.exit_code == 0
        assert "m-unknown-model  syncqueue.enqueue_change  CREATE Operator op-7" in listed.stdout
        assert "TypeError: missing 'model'" in listed.stdout
        assert SECRET not in listed.stdout  # payload values are not shown
        as_json = json.loads(cli("invalid", "--json").stdout)
        assert [m["id"] for m in as_json] == ["m-unknown-model", "m-misshapen"]
        assert as_json[0]["kwargs"]["record_id"] == "op-7"

        assert "--id ID" in assert_one_line_error(cli("invalid", "retry"))
        # Still refused where Operator is unknown: nothing is stored, both stay kept.
        monkeypatch.setenv("SYNCQUEUE_MODELS", "Request")
        monkeypatch.setenv("SYNCQUEUE_ENQUEUE_MODE", "direct")
        get_settings.cache_clear()
        refused = cli("invalid", "retry", "--all")
        assert "2 message(s) still kept" in assert_one_line_error(refused)
        assert "m-unknown-model  still kept: ValidationError" in refused.stdout
        assert count_rows() == 0 and len(list_invalid()) == 2
        # The cause fixed: retried by id, stored, no longer kept.
        monkeypatch.setenv("SYNCQUEUE_MODELS", "Request,Operator")
        get_settings.cache_clear()
        retried = cli("invalid", "retry", "--id", "m-unknown-model", "--id", "m-gone")
        assert "m-gone  still kept: no kept message has this id" in retried.stdout
        assert "1 message(s) accepted." in retried.stdout
        assert count_rows("model = 'Operator' AND record_id = 'op-7'") == 1
        assert [m.id for m in list_invalid()] == ["m-misshapen"]

        kept = cli("invalid", "discard", "--id", "m-misshapen", input="n\n")
        assert kept.exit_code != 0 and [m.id for m in list_invalid()] == ["m-misshapen"]
        gone = cli("invalid", "discard", "--id", "m-misshapen", "--yes")
        assert "Deleted 1 kept message(s)." in gone.stdout
        assert cli("invalid").stdout.strip() == "No invalid messages kept."
    finally:
        get_redis().delete(redis_key("invalid"))
