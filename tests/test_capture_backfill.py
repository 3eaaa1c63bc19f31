"""Backfill: every row of a tracked table enqueued as a CREATE; resumable; harmless twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from capture_app import (
    Operator,
    Request,
    app,  # noqa: F401  (fixture)
    assert_sheet_equals_tables,
    drain,
    queued,
    session,
    sheet,
    table_as_sheet,
)
from click.testing import CliRunner
from items import Feeder
from sqlalchemy import insert, text

from syncqueue_tasks import capture
from syncqueue_tasks.capture import registry
from syncqueue_tasks.celery.batch import writer_context
from syncqueue_tasks.core.items import QueueItem, SyncAction
from syncqueue_tasks.ops.cli import main
from syncqueue_tasks.store import queue
from syncqueue_tasks.store.db import get_engine
from syncqueue_tasks.writers.loading import load_writer

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("app")]

WORKBOOK = "syncqueue_tasks.writers.workbook:create_writer"
SYNCQUEUE = [str(Path(sys.executable).with_name("syncqueue"))]  # the installed command


def _existing_rows(requests: int = 7, operators: int = 4) -> None:
    """Rows written before capture was set up (through the engine: no session, no capture)."""
    with get_engine().begin() as conn:
        if requests:
            conn.execute(insert(Request), [{"title": f"r{i}"} for i in range(requests)])
        if operators:
            conn.execute(
                insert(Operator), [{"code": f"op{i:02}", "name": f"n{i}"} for i in range(operators)]
            )
    assert queued() == []


def test_backfill_enqueues_every_row_and_the_sheet_equals_the_tables(
    app: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    _existing_rows()
    seen: list[capture.Progress] = []
    report = capture.backfill(get_engine(), "Request", batch_size=3, progress=seen.append)
    assert (report.rows, report.enqueued, report.skipped, report.resumed) == (7, 7, 0, False)
    assert [(p.done, p.total) for p in seen] == [(3, 7), (6, 7), (7, 7)]
    assert seen[-1].line().startswith("Request: 7/7 rows (100%), ")
    capture.backfill(get_engine(), Operator)  # by class
    creates = queued()
    assert {c["action"] for c in creates} == {"CREATE"}
    assert [c["record_id"] for c in creates if c["model"] == "Request"] == [
        str(i) for i in range(1, 8)
    ]
    assert not (tmp_path / "data" / "backfill" / "Request.json").exists()  # finished
    assert_sheet_equals_tables(app)


def test_running_it_twice_leaves_the_sheet_as_running_it_once(app: Path) -> None:  # noqa: F811
    _existing_rows(requests=0)
    capture.backfill(get_engine(), "Operator")
    again = capture.backfill(get_engine(), "Operator")  # before the first was written
    assert (again.enqueued, again.skipped) == (4, 0)
    assert_sheet_equals_tables(app)
    once = sheet(app, "Operator")
    again = capture.backfill(get_engine(), "Operator")  # after: the records hold these values
    assert (again.enqueued, again.skipped) == (0, 4)
    assert len(queued("Operator")) == 8
    assert_sheet_equals_tables(app)
    assert sheet(app, "Operator") == once


def test_an_interrupted_backfill_resumes_after_the_last_batch_it_committed(
    app: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    _existing_rows(requests=10, operators=0)

    def interrupt_after_two_batches(progress: capture.Progress) -> None:
        if progress.done >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        capture.backfill(
            get_engine(), "Request", batch_size=2, progress=interrupt_after_two_batches
        )
    stored = json.loads((tmp_path / "data" / "backfill" / "Request.json").read_text())
    assert (stored["last_key"], stored["done"]) == (4, 4)
    report = capture.backfill(get_engine(), "Request", batch_size=2)
    assert (report.rows, report.resumed) == (6, True)
    assert [c["record_id"] for c in queued()] == [str(i) for i in range(1, 11)]  # each once
    assert_sheet_equals_tables(app)
    report = capture.backfill(get_engine(), "Request", batch_size=2)
    assert (report.rows, report.resumed) == (10, False)  # finished: the next run starts over


def test_backfill_waits_for_a_row_being_changed_and_sends_its_committed_value() -> None:
    _existing_rows(requests=0, operators=2)
    finished: list[capture.BackfillReport] = []
    with session() as s:
        s.begin()
        operator = s.get(Operator, "op00")
        assert operator is not None
        operator.name = "changed"
        s.flush()  # the UPDATE ran and was captured; the row stays locked until commit
        worker = threading.Thread(
            target=lambda: finished.append(capture.backfill(get_engine(), "Operator"))
        )
        worker.start()
        try:
            _wait_until_a_backfill_waits_for_a_row_lock()
            assert not finished
        finally:
            s.commit()
            worker.join(30)
    assert finished and finished[0].rows == 2
    changes = [(c["action"], c["record_id"], c["payload"]["name"]) for c in queued("Operator")]
    assert changes == [
        ("UPDATE", "op00", "changed"),
        ("CREATE", "op00", "changed"),
        ("CREATE", "op01", "n1"),
    ]


def _wait_until_a_backfill_waits_for_a_row_lock() -> None:
    deadline = time.monotonic() + 10
    with get_engine().connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE '%FOR SHARE%' AND datname = current_database()"
                )
            ).scalar_one()
            if waiting:
                return
            conn.rollback()
            time.sleep(0.02)
    raise AssertionError("the backfill never waited for the row being changed")


def test_a_resume_file_for_another_table_is_refused_until_restart(tmp_path: Path) -> None:
    _existing_rows(requests=3, operators=0)
    path = tmp_path / "data" / "backfill" / "Request.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"table": "other", "key": "id", "last_key": 1, "done": 1}))
    with pytest.raises(capture.CaptureError, match="use --restart"):
        capture.backfill(get_engine(), "Request")
    assert queued() == []
    assert capture.backfill(get_engine(), "Request", restart=True).rows == 3


def test_a_table_no_orm_class_tracks_is_backfilled_from_its_name(app: Path) -> None:  # noqa: F811
    with get_engine().begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS capture_revenue"))
        conn.execute(
            text(
                "CREATE TABLE capture_revenue (month text PRIMARY KEY, total numeric(12, 2), "
                "note text, raw bytea)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO capture_revenue SELECT '2026-' || lpad(m::text, 2, '0'), m * 100.5, "
                "NULL, '\\x00' FROM generate_series(1, 12) AS m"
            )
        )
    with pytest.raises(capture.CaptureError, match="no column"):
        capture.table_source(get_engine(), "Revenue", "capture_revenue", columns=["nope"])
    with pytest.raises(ValueError, match=r"Revenue\.raw: binary values"):
        capture.table_source(get_engine(), "Revenue", "public.capture_revenue")
    source = capture.table_source(
        get_engine(), "Revenue", "public.capture_revenue", columns=["total", "note"]
    )
    assert (source.key_field, source.fields) == ("month", ("total", "note"))
    assert capture.backfill(get_engine(), source, batch_size=5).rows == 12
    assert queued("Revenue")[0]["payload"] == {"total": "100.50", "note": None}
    drain()
    assert sheet(app, "Revenue") == table_as_sheet(source)


def test_rows_whose_record_state_already_matches_are_skipped(app: Path) -> None:  # noqa: F811
    """Skipped: a record written live with these values and nothing waiting. Enqueued: a
    changed row, a record whose state is deleted, a record with a change waiting."""
    _existing_rows(requests=0, operators=4)
    capture.backfill(get_engine(), "Operator")
    drain()
    queue.enqueue("DELETE", "Operator", "op02", {})  # the sheet lost it (by hand)
    drain()
    with get_engine().begin() as conn:  # not through a session: no capture
        conn.execute(text("UPDATE capture_operator SET name = 'changed' WHERE code = 'op01'"))
    queue.enqueue("UPDATE", "Operator", "op03", {"name": "n3"})  # waiting, not drained
    report = capture.backfill(get_engine(), "Operator")
    assert (report.rows, report.enqueued, report.skipped) == (4, 3, 1)
    assert [c["record_id"] for c in queued("Operator")[6:]] == ["op01", "op02", "op03"]
    assert_sheet_equals_tables(app)
    again = capture.backfill(get_engine(), "Operator")
    assert (again.enqueued, again.skipped) == (0, 4)


def test_the_cli_backfills_a_tracked_model_or_a_named_table_with_progress_on_stderr(
    app: Path,  # noqa: F811
) -> None:
    _existing_rows(requests=5, operators=2)
    result = CliRunner().invoke(main, ["backfill", "--model", "Operator"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Backfilled Operator: 2 rows read, 2 enqueued")
    assert "Operator: 2/2 rows (100%)" in result.stderr
    result = CliRunner().invoke(
        main,
        ["backfill", "--model", "Revenue", "--table", "capture_request", "--columns", "title"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert [c["payload"] for c in queued("Revenue")] == [{"title": f"r{i}"} for i in range(5)]
    result = CliRunner().invoke(main, ["backfill", "--model", "Revenue"])
    assert result.exit_code == 1
    assert "neither tracked in this process nor captured by triggers" in result.stderr
    assert registry.find("Revenue") is None


@pytest.mark.slow
def test_backfill_of_100000_rows_killed_midway_and_resumed_puts_every_row_in_the_sheet_once(
    tmp_path: Path,
) -> None:
    rows = 100_000
    with get_engine().begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS capture_big"))
        conn.execute(text("CREATE TABLE capture_big (id bigint PRIMARY KEY, title text, n int)"))
        conn.execute(
            text(
                "INSERT INTO capture_big SELECT i, 'row ' || i, i % 97 "
                "FROM generate_series(1, :rows) AS i"
            ),
            {"rows": rows},
        )
    data = tmp_path / "data"
    env = {**os.environ, "SYNCQUEUE_DATA_DIR": str(data)}
    command = [*SYNCQUEUE, "backfill", "--model", "Revenue", "--table", "capture_big"]
    resume_file = data / "backfill" / "Revenue.json"
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if resume_file.exists() and json.loads(resume_file.read_text())["done"] >= 30_000:
                break
            time.sleep(0.05)
        assert process.poll() is None, "the backfill ended before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    stored = json.loads(resume_file.read_text())
    assert 30_000 <= stored["done"] < rows
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert "(resumed)" in finished.stdout
    assert f"Revenue: {rows:,}/{rows:,} rows (100%)" in finished.stderr

    with get_engine().connect() as conn:
        queued_rows = conn.execute(
            text(
                "SELECT id, action, model, record_id, sheet_row_index, payload, retries, "
                "max_retries, created_at FROM sync_queue WHERE model = 'Revenue'"
            )
        ).all()
    items = [
        QueueItem(**dict(r._mapping, action=SyncAction(r.action)), claim_token=uuid.uuid4())
        for r in queued_rows
    ]
    assert {i.record_id for i in items} == {str(i) for i in range(1, rows + 1)}
    assert len(items) - rows <= 1000  # at most the batch in flight at the kill, again
    # the queue's claims are tested elsewhere; here the changes go to the writer as one batch
    # (one workbook load and save), folded per record as process_batch folds them
    outcomes = Feeder(load_writer(WORKBOOK, writer_context())).write(items)
    assert {o.kind.value for o in outcomes.values()} == {"done"}
    source = capture.table_source(get_engine(), "Revenue", "capture_big")
    assert sheet(tmp_path / "book.xlsx", "Revenue") == table_as_sheet(source)
