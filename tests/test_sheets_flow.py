"""The Sheets writer's flow control against the fake with Google's quota (60 reads and 60 writes
per rolling minute per account, on a clock ``FACTOR`` times faster than real time): reads are
limited too (finding 6 of issue 11), several processes and spreadsheets share one account's
budget, and one batch at a time writes to a spreadsheet."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from typing import Any

import pytest
from fake_sheets import READ_KINDS, WRITE_KINDS, FakeSheets, Quota
from items import Feeder, item
from sheets_helpers import SID, MakeWriter, write_until_done

from syncqueue_tasks.celery.batch import writer_context
from syncqueue_tasks.settings import get_settings
from syncqueue_tasks.writers.sheets import GoogleSheetsWriter, SheetsTuning

pytest_plugins = ["sheets_fixtures"]

pytestmark = pytest.mark.integration

FACTOR = 30.0  # quota seconds per real second: Google's minute lasts 2 s


def _quota_env(env: pytest.MonkeyPatch) -> None:
    env.setenv("SYNCQUEUE_SHEETS_READ_QUOTA", "60")
    env.setenv("SYNCQUEUE_SHEETS_WRITE_QUOTA", "60")
    get_settings.cache_clear()


def _batches(writer: Any, sid: str, count: int) -> None:
    """``count`` batches of updates (a read of the ids, one of the rows, one write each),
    then ``count`` batches that only read (deletes of records the sheet never had)."""
    write_until_done(writer, [item("CREATE", f"{sid}-{k}", name="x") for k in range(5)])
    for b in range(count):
        batch = [item("UPDATE", f"{sid}-{k}", status=f"{b}") for k in range(5)]
        write_until_done(writer, batch, rounds=200)
    for b in range(count):
        write_until_done(writer, [item("DELETE", f"{sid}-never-{b}")], rounds=200)


def _process(sid: str, prefix: str, count: int) -> None:
    """Child process: its own writer and spreadsheet, the shared account."""
    os.environ["SYNCQUEUE_SHEETS_SPREADSHEET_ID"] = sid
    get_settings.cache_clear()
    tuning = SheetsTuning(key_prefix=prefix, quota_window=60 / FACTOR, limiter_wait=30.0)
    writer = GoogleSheetsWriter.from_context(writer_context(), tuning=tuning)
    try:
        _batches(Feeder(writer), sid, count)
    finally:
        writer.close()


def test_reads_and_writes_of_several_processes_stay_within_the_accounts_quota(
    fake: FakeSheets, env: pytest.MonkeyPatch, prefix: str
) -> None:
    """Finding 6: reads were not limited; two workers got 52 of 170 reads answered 429."""
    _quota_env(env)
    fake.quota = Quota(time_factor=FACTOR)
    sids = ["flow-a", "flow-b"]
    for sid in sids:
        fake.add_spreadsheet(sid, {"Requests": [["id", "name", "status"]]})
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_process, args=(sid, prefix, 20)) for sid in sids]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    counts = fake.quota_counts()
    assert counts["read_429"] == 0 and counts["write_429"] == 0
    assert counts["read"] > 120 and counts["write"] > 40  # more than a quota minute's worth
    window = 60 / FACTOR
    for kinds in (READ_KINDS, WRITE_KINDS):
        times = sorted(c.at for c in fake.calls if c.kind in kinds)
        for i in range(len(times) - 60):  # never 61 in one rolling minute
            assert times[i + 60] - times[i] > window, kinds
    per_sheet = {
        sid: sum(1 for c in fake.calls if c.kind in WRITE_KINDS and sid in c.path) for sid in sids
    }
    assert min(per_sheet.values()) >= 20  # both got their turns
    for sid in sids:
        assert {r["status"] for r in fake.records(sid, "Requests")} == {"19"}


def test_one_batch_at_a_time_per_spreadsheet(fake: FakeSheets, make_writer: MakeWriter) -> None:
    fake.delay = 0.005
    writers = [make_writer(lock_wait=0.05) for _ in range(4)]
    inside, peak, guard = [0], [0], threading.Lock()
    original = GoogleSheetsWriter._round

    def counting(self: GoogleSheetsWriter, *args: Any) -> None:
        with guard:
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
        try:
            time.sleep(0.01)
            original(self, *args)
        finally:
            with guard:
                inside[0] -= 1

    errors: list[BaseException] = []
    handed_back: list[Any] = []

    def work(n: int, writer: Any) -> None:
        try:
            for b in range(4):
                batch = [item("CREATE", f"t{n}-{b}-{k}", name="x") for k in range(3)]
                handed_back.extend(
                    o
                    for o in write_until_done(writer, batch, rounds=400)
                    if "another batch" in o.error
                )
        except BaseException as exc:
            errors.append(exc)

    GoogleSheetsWriter._round = counting  # type: ignore[method-assign]
    try:
        threads = [threading.Thread(target=work, args=(n, w)) for n, w in enumerate(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        GoogleSheetsWriter._round = original  # type: ignore[method-assign]
    assert not errors, errors
    assert peak[0] == 1
    assert handed_back and all(not o.count_attempt and o.retry_after for o in handed_back)
    ids = [r["id"] for r in fake.records(SID, "Requests")]
    assert len(ids) == 48 == len(set(ids))
