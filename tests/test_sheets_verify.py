"""``verify`` against the fake Sheets API and the real queue: each kind of difference is found
by reading each tab once, ``--repair`` rewrites them within the quota and never touches rows
without an id or a person's columns; the result is stored for the metrics; the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from dbutil import REDIS_URL
from fake_sheets import FakeSheets
from redis import Redis
from sheets_helpers import SID

from syncqueue_tasks.celery import batch
from syncqueue_tasks.celery.batch import writer_context
from syncqueue_tasks.celery.verify import last_result, verify
from syncqueue_tasks.ops import metrics
from syncqueue_tasks.ops.cli import main
from syncqueue_tasks.settings import get_settings
from syncqueue_tasks.store import queue
from syncqueue_tasks.writers import loading
from syncqueue_tasks.writers.sheets import GoogleSheetsWriter, SheetsTuning

pytest_plugins = ["sheets_fixtures"]
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("db")]


@pytest.fixture
def writer(env: pytest.MonkeyPatch, prefix: str) -> Iterator[GoogleSheetsWriter]:
    env.setenv("SYNCQUEUE_MODELS", "Request")
    get_settings.cache_clear()
    made = GoogleSheetsWriter.from_context(writer_context(), tuning=SheetsTuning(key_prefix=prefix))
    yield made
    made.close()


def write(writer: GoogleSheetsWriter, *changes: tuple[str, str, dict[str, Any]]) -> None:
    """Enqueue changes of Request records and drain them through the writer."""
    queue.enqueue_many(
        {"action": a, "model": "Request", "record_id": r, "payload": p} for a, r, p in changes
    )
    report = batch.process(writer, batch_size=100, time_budget=30)
    assert report.completed == report.claimed == len(changes)


def rows(fake: FakeSheets) -> list[list[Any]]:
    return fake.rows(SID, "Requests")


def seeded(fake: FakeSheets, writer: GoogleSheetsWriter) -> None:
    """Records a..f written; e deleted (a tombstone); a person's row and column."""
    write(writer, *[("CREATE", r, {"name": f"n{r}", "status": "s"}) for r in "abcdef"])
    write(writer, ("DELETE", "e", {}))
    fake.insert_rows(SID, "Requests", 4, [["", "a person's row", "", "", "x"]])
    fake.set_cell(SID, "Requests", 1, 5, "notes")


def test_each_kind_of_difference_is_found_and_repaired(
    fake: FakeSheets, writer: GoogleSheetsWriter
) -> None:
    seeded(fake, writer)
    clean = verify("Request", writer=writer)
    assert clean.findings == 0 and clean.reports[0].reads == 1  # one read of the tab
    row = {r[0]: n for n, r in enumerate(rows(fake), start=1) if r}
    fake.delete_rows(SID, "Requests", row["a"])  # a: missing
    row = {r[0]: n for n, r in enumerate(rows(fake), start=1) if r}
    fake.insert_rows(SID, "Requests", 2, [["zz", "typed by a person"]])  # orphan
    fake.insert_rows(SID, "Requests", 2, [["b", "nb", "s"]])  # b: duplicate
    row = {r[0]: n for n, r in enumerate(rows(fake), start=1) if r}
    fake.set_cell(SID, "Requests", row["c"], 2, "edited")  # c: differs
    fake.set_cell(SID, "Requests", row["d"], 4, True)  # d: should be live
    fake.set_cell(SID, "Requests", row["e"], 4, "")  # e: should be deleted
    fake.set_cell(SID, "Requests", row["f"], 5, "a note")  # a person's column: not a finding

    found = verify("Request", writer=writer).reports[0]
    assert {k: n for k, n in found.counts().items() if n} == {
        "missing": 1,
        "orphan": 1,
        "duplicate": 1,
        "differs": 1,
        "should_be_live": 1,
        "should_be_deleted": 1,
    }
    described = {f.kind.value: f.describe() for f in found.findings}
    assert described["differs"].startswith("record 'c' field 'name' differs")
    assert "edited" not in json.dumps(found.to_json())  # no values in reports

    repaired = verify("Request", repair=True, writer=writer).reports[0]
    assert repaired.repaired == 5 and repaired.unrepaired == 0
    assert repaired.writes == 1  # one request for all of them
    after = verify("Request", writer=writer).reports[0]
    assert [f.kind.value for f in after.findings] == ["orphan"]  # never touched
    records = {r["id"]: r for r in fake.records(SID, "Requests") if r.get("id")}
    assert records["zz"]["name"] == "typed by a person"
    for r in "abcdf":
        assert (records[r]["name"], records[r]["status"]) == (f"n{r}", "s")
        assert records[r].get("_deleted", "") == ""
    assert records["e"]["_deleted"] is True and records["e"]["name"] == ""
    assert records["f"]["notes"] == "a note"
    assert ["", "a person's row", "", "", "x"] in rows(fake)
    ids = [r[0] for r in rows(fake)[1:] if r and r[0]]
    assert len(ids) == len(set(ids))  # the copy of b lost its id...
    assert ["", "nb", "s"] not in rows(fake)  # ...and its owned cells


def test_a_lost_column_is_reported_and_made_again_by_repair(
    fake: FakeSheets, writer: GoogleSheetsWriter
) -> None:
    write(writer, *[("CREATE", r, {"name": f"n{r}", "status": "s"}) for r in "ab"])
    fake.set_cell(SID, "Requests", 1, 3, "State")
    found = verify("Request", writer=writer).reports[0]
    assert [(f.kind.value, f.name) for f in found.findings] == [("column", "status")]
    assert verify("Request", repair=True, writer=writer).reports[0].repaired == 2
    assert rows(fake)[0] == ["id", "name", "State", "status"]
    assert verify("Request", writer=writer).findings == 0


def test_keep_reports_a_persons_edit_without_rewriting_it(
    fake: FakeSheets, env: pytest.MonkeyPatch, prefix: str
) -> None:
    env.setenv("SYNCQUEUE_SHEETS_CONFLICTS", "keep")
    get_settings.cache_clear()
    keeper = GoogleSheetsWriter.from_context(
        writer_context(), tuning=SheetsTuning(key_prefix=prefix)
    )
    try:
        write(keeper, ("CREATE", "a", {"name": "na"}))
        fake.set_cell(SID, "Requests", 2, 2, "mine")
        result = verify("Request", repair=True, writer=keeper)
        assert result.reports[0].counts()["differs"] == 1 and result.reports[0].repaired == 0
        assert fake.find(SID, "Requests", "a")[0]["name"] == "mine"
    finally:
        keeper.close()


def test_the_result_is_stored_for_the_metrics(fake: FakeSheets, writer: GoogleSheetsWriter) -> None:
    write(writer, ("CREATE", "a", {"name": "na"}))
    fake.set_cell(SID, "Requests", 2, 2, "edited")
    verify("Request", writer=writer)
    stored = last_result()
    assert stored is not None and stored["models"][0]["counts"]["differs"] == 1
    text = metrics.render().decode()
    assert 'syncqueue_verify_last_findings{kind="differs",model="Request"} 1.0' in text
    assert "syncqueue_verify_findings_total" in text  # the counter: every run adds its findings
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(families) == len(set(families))
    assert 'syncqueue_sheets_cells{spreadsheet="sheet-test"}' in text


def test_the_cli_reports_and_repairs(
    fake: FakeSheets, writer: GoogleSheetsWriter, env: pytest.MonkeyPatch
) -> None:
    write(writer, *[("CREATE", r, {"name": f"n{r}"}) for r in "ab"])
    fake.set_cell(SID, "Requests", 3, 2, "edited")
    env.setenv("SYNCQUEUE_WRITER", loading.SHEETS)
    env.setattr(loading, "_cached", None)
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        found = runner.invoke(main, ["verify", "--model", "Request"])
        assert found.exit_code == 1, found.output
        assert "Request (tab 'Requests'): 2 row(s), 2 record(s), 1 differs" in found.output
        assert "record 'b' field 'name' differs from what was last written (row 3)" in found.output
        assert "1 difference(s) left; run with --repair" in found.output
        fixed = runner.invoke(main, ["verify", "--model", "Request", "--repair", "--json"])
        assert fixed.exit_code == 0, fixed.output
        data = json.loads(fixed.output.splitlines()[-1])
        assert data["models"][0]["repaired"] == 1
        assert fake.find(SID, "Requests", "b")[0]["name"] == "nb"
    finally:
        built = loading._cached
        if built is not None:
            built[2].close()  # type: ignore[attr-defined]
        _forget_default_keys()


def _forget_default_keys() -> None:
    """Remove the keys a writer with the default tuning made for this spreadsheet."""
    redis = Redis.from_url(REDIS_URL)
    keys = list(redis.scan_iter("syncqueue:sheets:*sheet-test*"))
    keys += list(redis.scan_iter("syncqueue:sheets:quota:anonymous*"))
    if keys:
        redis.delete(*keys)
    redis.close()


def test_doctor_reports_how_full_the_spreadsheet_is(
    fake: FakeSheets, env: pytest.MonkeyPatch
) -> None:
    from syncqueue_tasks.ops.doctor import check_sheet

    try:
        check = check_sheet()
        assert check.ok, check
        assert check.detail == "52,000 of 10,000,000 cells in use (1%) in 2 tab(s)"
        env.setenv("SYNCQUEUE_SHEETS_MAX_CELLS", "55000")
        get_settings.cache_clear()
        check = check_sheet()
        assert not check.ok and "new rows will soon be refused" in check.detail
        assert fake.count({"spreadsheets.get"}) == 2
        usage = metrics.read_sheet_usage()
        assert usage[SID] == (52_000, 55_000)
    finally:
        _forget_default_keys()


def test_a_beat_entry_runs_verify_only_when_configured() -> None:
    import subprocess
    import sys

    from processes import child_env

    script = (
        "import json, celeryconfig as c; e = c.beat_schedule.get('verify'); "
        "print(json.dumps(e and [e['task'], e['schedule'], e['kwargs']]))"
    )

    def entry(**env: str) -> Any:
        out = subprocess.run(
            [sys.executable, "-c", script], env=child_env(env), capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    assert entry() is None  # off by default
    assert entry(SYNCQUEUE_VERIFY_EVERY="3600") == ["syncqueue.verify", 3600.0, {"repair": False}]
    assert entry(SYNCQUEUE_VERIFY_EVERY="60", SYNCQUEUE_VERIFY_REPAIR="true")[2] == {"repair": True}
    from syncqueue_tasks.celery.app import app

    app.loader.import_default_modules()
    assert "syncqueue.verify" in app.tasks
