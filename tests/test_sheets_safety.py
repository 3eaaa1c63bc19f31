"""People edit the sheet while the Sheets writer works: rows and columns move, tabs are renamed,
owned cells are edited. The fake's ``person`` acts exactly between the writer's read and its
write, the worst moment. Findings 1-4 of issue 11 are here (each fails on the old writer)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from dbutil import REDIS_URL
from fake_sheets import WRITE_KINDS, FakeSheets
from items import item
from redis import Redis
from sheets_helpers import SID, MakeWriter, all_done, seed

from syncqueue_tasks.core.outcomes import OutcomeKind
from syncqueue_tasks.ops import metrics
from syncqueue_tasks.writers.flow import SpreadsheetLock

pytest_plugins = ["sheets_fixtures"]

pytestmark = pytest.mark.integration


def once(fake: FakeSheets, action: Callable[[FakeSheets], Any]) -> list[int]:
    """Let the person do ``action`` before the next write that follows a read; returns a list
    that gets one entry when it happened."""
    done: list[int] = []

    def person(server: FakeSheets, sid: str) -> None:
        if not done:
            done.append(1)
            action(server)

    fake.person = person
    return done


def ids(fake: FakeSheets, tab: str = "Requests") -> list[Any]:
    return [row[0] if row else "" for row in fake.rows(SID, tab)[1:]]


# ----------------------------------------------------------------------------- finding 1


def test_an_update_lands_on_its_record_when_a_person_inserts_a_row_above(
    fake: FakeSheets, make_writer: MakeWriter
) -> None:
    """Finding 1: the UPDATE of record 1 overwrote the person's new row, and record 1 stayed
    untouched, while the outcome said done."""
    writer = make_writer()
    writer.write([item("CREATE", "1", name="ALICE", status="new")])
    acted = once(fake, lambda f: f.insert_rows(SID, "Requests", 2, [["77", "", "", "keep me"]]))
    before = metrics.read_counters().get("writer_astray", 0)
    outcome = writer.write([u := item("UPDATE", "1", name="ALICE-UPDATED")])[u.id]
    assert acted and outcome.kind is OutcomeKind.DONE
    assert fake.find(SID, "Requests", "1") == [
        {"id": "1", "name": "ALICE-UPDATED", "status": "new"}
    ]
    person = fake.rows(SID, "Requests")[1]
    assert person[0] == "77" and person[3] == "keep me"  # the person's row keeps its id
    assert metrics.read_counters()["writer_astray"] > before


def test_remove_mode_never_leaves_another_records_row_deleted(
    fake: FakeSheets, make_writer: MakeWriter, env: pytest.MonkeyPatch
) -> None:
    """Finding 1: in remove mode a DELETE of record 2 removed record 1's row."""
    env.setenv("SYNCQUEUE_DELETE_MODE", "remove")
    writer = make_writer()
    writer.write([item("CREATE", r, name=f"n{r}") for r in ("1", "2", "3")])
    acted = once(fake, lambda f: f.insert_rows(SID, "Requests", 2, [["", "a person's row"]]))
    assert all_done(writer.write([item("DELETE", "2")]))
    assert acted
    assert sorted(i for i in ids(fake) if i) == ["1", "3"]
    assert fake.find(SID, "Requests", "1") == [{"id": "1", "name": "n1", "status": ""}]


# ----------------------------------------------------------------------------- finding 2


def test_ids_are_matched_exactly_never_trimmed(fake: FakeSheets, make_writer: MakeWriter) -> None:
    """Finding 2: the writer stripped the ids it read back: a DELETE of "42" tombstoned the rows
    of " 42" and "42\\n", and two UPDATEs of "x " appended two rows."""
    fake.set_rows(
        SID,
        "Requests",
        [["id", "name"], [" 42", "a"], ["42\n", "b"], ["42", "c"], ["x ", "d"]],
    )
    writer = make_writer()
    assert all_done(writer.write([item("DELETE", "42")]))
    assert all_done(writer.write([item("UPDATE", "x ", name="d1")]))
    assert all_done(writer.write([item("UPDATE", "x ", name="d2")]))
    rows = fake.rows(SID, "Requests")
    assert rows[1:] == [[" 42", "a"], ["42\n", "b"], ["42", "c", True], ["x ", "d2"]]


# ----------------------------------------------------------------------------- finding 3


@pytest.mark.parametrize("when_refused", ["refuse", "after"])
def test_a_tab_renamed_mid_batch_is_followed(
    fake: FakeSheets, make_writer: MakeWriter, when_refused: str
) -> None:
    """Finding 3: renaming a tab mid-batch failed every record of the batch."""
    with fake.lock:
        fake.options.response_range_error = when_refused
    seed(fake, 3)
    writer = make_writer()
    acted = once(fake, lambda f: f.rename_tab(SID, "Requests", "Renamed"))
    outcomes = writer.write([item("UPDATE", "r1", status="x"), item("CREATE", "new", name="n")])
    assert acted and all_done(outcomes)
    assert fake.find(SID, "Renamed", "r1") == [{"id": "r1", "name": "n1", "status": "x"}]
    assert fake.find(SID, "Renamed", "new") == [{"id": "new", "name": "n", "status": ""}]
    assert all_done(writer.write([item("UPDATE", "new", status="y")]))
    assert fake.find(SID, "Renamed", "new")[0]["status"] == "y"


def test_a_deleted_tab_is_made_again_with_its_header(
    fake: FakeSheets, make_writer: MakeWriter
) -> None:
    writer = make_writer()
    writer.write([item("CREATE", "o1", model="Operator", name="a", shift="day")])
    sheet_id = fake.tab(SID, "Operators").sheet_id
    fake.edit(SID, [{"deleteSheet": {"sheetId": sheet_id}}])
    assert all_done(writer.write([item("UPDATE", "o1", model="Operator", shift="night")]))
    assert fake.rows(SID, "Operators") == [["id", "name", "shift"], ["o1", "a", "night"]]


def test_a_second_worker_is_told_the_holders_expected_wait(
    fake: FakeSheets, make_writer: MakeWriter
) -> None:
    """Finding 3: a second worker waited 5 s, then parked its items with retry_after=30, the
    lock's time-to-live, not the expected wait."""
    writer = make_writer(lock_wait=0.2)
    redis = Redis.from_url(REDIS_URL)
    holder = SpreadsheetLock(redis, writer.lock_key, ttl=120)
    try:
        assert holder.acquire(0) and holder.expect(7.0)
        outcome = writer.write([i := item("CREATE", "l", name="x")])[i.id]
    finally:
        holder.release()
        redis.close()
    assert outcome.kind is OutcomeKind.RETRY and not outcome.count_attempt
    assert outcome.retry_after is not None and 6.0 < outcome.retry_after <= 7.0
    assert fake.count(WRITE_KINDS) == 0
    assert writer.write([i])[i.id].kind is OutcomeKind.DONE


# ----------------------------------------------------------------------------- finding 4


@pytest.mark.parametrize("locale", ["de_DE", "fr_FR"])
def test_tombstones_are_recognized_whatever_the_locale_shows(
    fake: FakeSheets, make_writer: MakeWriter, env: pytest.MonkeyPatch, locale: str
) -> None:
    """Finding 4: tombstones were recognized by their formatted value "TRUE" (WAHR, VRAI...)."""
    fake.add_spreadsheet(SID, {"Requests": [["id", "name", "status"]]}, locale=locale)
    writer = make_writer()
    writer.write([item("CREATE", "k", name="a", status="s")])
    writer.write([item("DELETE", "k")])
    assert all_done(writer.write([item("UPDATE", "k", name="b")]))  # revives the row
    assert fake.find(SID, "Requests", "k") == [
        {"id": "k", "name": "b", "status": "", "_deleted": ""}
    ]
    writer.write([item("DELETE", "k")])
    env.setenv("SYNCQUEUE_UPDATE_MISSING", "fail")
    strict = make_writer()
    strict.states.update(writer.states)
    outcome = strict.write([u := item("UPDATE", "k", name="c")])[u.id]
    assert outcome.kind is OutcomeKind.FAIL and "no row to update" in outcome.error


# ----------------------------------------------------------------------------- moving rows


@pytest.mark.parametrize(
    "action",
    [
        "sort",
        "sort_desc",
        "insert_above",
        "delete_other",
        "delete_persons_row",
        "move",
        "insert_column",
    ],
)
def test_every_record_ends_on_its_own_row_whatever_the_person_did(
    fake: FakeSheets, make_writer: MakeWriter, action: str
) -> None:
    writer = make_writer()
    writer.write([item("CREATE", f"k{i}", name=f"z{9 - i}", status="s0") for i in range(8)])
    fake.insert_rows(SID, "Requests", 5, [["", "a person's row", "", "mine"]])
    edits: dict[str, Callable[[FakeSheets], Any]] = {
        "sort": lambda f: f.sort_rows(SID, "Requests", 2),
        "sort_desc": lambda f: f.sort_rows(SID, "Requests", 1, descending=True),
        "insert_above": lambda f: f.insert_rows(SID, "Requests", 2, [["", "new", "", "x"]]),
        "delete_other": lambda f: f.delete_rows(SID, "Requests", 8),
        "delete_persons_row": lambda f: f.delete_rows(SID, "Requests", 5),
        "move": lambda f: f.move_rows(SID, "Requests", 2, 2, 9),
        "insert_column": lambda f: f.edit(
            SID,
            [
                {
                    "insertDimension": {
                        "range": {
                            "sheetId": f.tab(SID, "Requests").sheet_id,
                            "dimension": "COLUMNS",
                            "startIndex": 1,
                            "endIndex": 2,
                        }
                    }
                }
            ],
        ),
    }
    acted = once(fake, edits[action])
    changes = [item("UPDATE", f"k{i}", status=f"s{i}") for i in range(0, 8, 2)]
    changes += [item("DELETE", "k1"), item("CREATE", "k9", name="new")]
    assert all_done(writer.write(changes)) and acted
    records = {r["id"]: r for r in fake.records(SID, "Requests") if r.get("id")}
    for i in range(8):
        if action == "delete_other" and f"k{i}" not in records:
            continue  # the person deleted this record's row: verify puts it back
        want = {"name": f"z{9 - i}", "status": f"s{i}" if i % 2 == 0 else "s0"}
        if i == 1:
            want = {"name": "", "status": ""}
        got = records[f"k{i}"]
        assert {k: got[k] for k in want} == want, (i, got)
        assert got.get("_deleted", "") == (True if i == 1 else "")
    assert records["k9"]["name"] == "new"
    assert sum(1 for i in ids(fake) if i) == len(records)  # no id twice


def test_cells_written_onto_another_records_row_are_put_back(
    fake: FakeSheets, make_writer: MakeWriter
) -> None:
    """A person swaps two rows between the read and the write: k0's update lands on k1's row
    (its id cell is not rewritten, so the answer shows whose row it was); k1's cell is put
    back from k1's synced state, k0's row gets the update."""
    writer = make_writer()
    writer.write([item("CREATE", "k0", name="a0", status="s"), item("CREATE", "k1", name="a1")])
    acted = once(fake, lambda f: f.move_rows(SID, "Requests", 2, 1, 4))
    assert all_done(writer.write([item("UPDATE", "k0", name="b0")])) and acted
    assert fake.find(SID, "Requests", "k0") == [{"id": "k0", "name": "b0", "status": "s"}]
    assert fake.find(SID, "Requests", "k1") == [{"id": "k1", "name": "a1", "status": ""}]


def test_a_person_acting_before_every_write_is_handed_back_not_failed(
    fake: FakeSheets, make_writer: MakeWriter
) -> None:
    seed(fake, 6)
    writer = make_writer(max_rounds=2)
    flips = iter(["A", "B"] * 10)

    def renamer(server: FakeSheets, sid: str) -> None:
        titles = [t for t in ("Requests", "A", "B") if _has(server, t)]
        server.rename_tab(sid, titles[0], next(flips))

    fake.person = renamer
    outcome = writer.write([u := item("UPDATE", "r1", status="x")])[u.id]
    assert outcome.kind is OutcomeKind.RETRY and outcome.count_attempt


def _has(fake: FakeSheets, title: str) -> bool:
    try:
        fake.tab(SID, title)
    except Exception:
        return False
    return True


# ----------------------------------------------------------------------------- conflicts


def test_an_edited_owned_cell_is_overwritten_and_reported(
    fake: FakeSheets, make_writer: MakeWriter, caplog: pytest.LogCaptureFixture
) -> None:
    writer = make_writer()
    writer.write([item("CREATE", "c", name="mine", status="s1", note="n")])
    fake.set_cell(SID, "Requests", 2, 2, "edited by a person")
    fake.set_cell(SID, "Requests", 2, 4, "edited too")  # not written now: no conflict
    before = metrics.read_counters()["writer_conflicts"]
    with caplog.at_level(logging.WARNING):
        assert all_done(writer.write([item("UPDATE", "c", name="new", status="s2")]))
    assert fake.find(SID, "Requests", "c") == [
        {"id": "c", "name": "new", "status": "s2", "note": "edited too"}
    ]
    assert [(c.record_id, c.field, c.kept) for c in writer.conflicts] == [("c", "name", False)]
    assert metrics.read_counters()["writer_conflicts"] == before + 1
    assert "'c' field 'name' was edited in the sheet" in caplog.text
    assert "edited by a person" not in caplog.text  # no values in the log


def test_keep_leaves_the_persons_value_and_reports_it(
    fake: FakeSheets, make_writer: MakeWriter, env: pytest.MonkeyPatch
) -> None:
    env.setenv("SYNCQUEUE_SHEETS_CONFLICTS", "keep")
    writer = make_writer()
    writer.write([item("CREATE", "c", name="mine", status="s1")])
    fake.set_cell(SID, "Requests", 2, 2, 42)  # a typed number where text was written
    assert all_done(writer.write([item("UPDATE", "c", name="new", status="s2")]))
    assert fake.find(SID, "Requests", "c") == [{"id": "c", "name": 42, "status": "s2"}]
    assert [(c.field, c.kept) for c in writer.conflicts] == [("name", True)]
    assert all_done(writer.write([item("UPDATE", "c", status="s3")]))
    assert writer.conflicts == []  # name was not written this time
