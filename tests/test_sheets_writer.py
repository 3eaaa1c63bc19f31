"""GoogleSheetsWriter against the fake Sheets server: request budget, semantics, values, columns,
limits, faults. (People editing the sheet mid-batch: ``test_sheets_safety.py``; flow control
and the quota: ``test_sheets_flow.py``.)"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from fake_sheets import READ_KINDS, WRITE_KINDS, FakeSheets, Formula
from items import item
from sheets_helpers import SID, MakeWriter, all_done, kinds, seed, write_until_done

from syncqueue_tasks.celery.batch import writer_context
from syncqueue_tasks.ops import metrics
from syncqueue_tasks.settings import get_settings
from syncqueue_tasks.writers.base import OutcomeKind, Writer
from syncqueue_tasks.writers.sheets import GoogleSheetsWriter, SheetsTuning, create_writer

pytest_plugins = ["sheets_fixtures"]

pytestmark = pytest.mark.integration

# ----------------------------------------------------------------------------- request budget


@pytest.mark.parametrize("n", [10, 400])
def test_one_write_request_per_batch_whatever_its_size(
    fake: FakeSheets, make_writer: MakeWriter, n: int
) -> None:
    seed(fake, 500)
    writer = make_writer()
    assert isinstance(writer.writer, Writer)
    writer.write([item("UPDATE", "r0", status="warm")])  # the tabs' properties are read here
    fake.reset_calls()
    items = [item("UPDATE", f"r{i}", status=f"s{i}") for i in range(n // 2)]
    items += [item("CREATE", f"new{i}", name=f"new{i}") for i in range(n - n // 2)]
    items += [item("DELETE", f"r{499 - i}") for i in range(5)]
    assert all_done(writer.write(items))
    assert fake.count(WRITE_KINDS) == 1 == fake.count({"spreadsheets.batchUpdate"})
    assert fake.count(READ_KINDS) == 2  # the ids, then the rows updated in place
    records = {r["id"]: r for r in fake.records(SID, "Requests")}
    assert len(records) == 500 + n - n // 2
    assert records[f"r{n // 2 - 1}"]["status"] == f"s{n // 2 - 1}"
    assert records[f"new{n - n // 2 - 1}"]["name"] == f"new{n - n // 2 - 1}"
    assert records["r499"]["_deleted"] is True


def test_a_second_tab_shares_the_reads_and_the_write(
    fake: FakeSheets, make_writer: MakeWriter
) -> None:
    seed(fake, 20)
    writer = make_writer()
    writer.write([item("UPDATE", "r0", status="warm")])
    fake.reset_calls()
    items = [item("UPDATE", f"r{i}", status="x") for i in range(10)]
    items += [item("CREATE", f"op{i}", model="Operator", name="z") for i in range(10)]
    assert all_done(writer.write(items))
    assert fake.count(WRITE_KINDS) == 1 and fake.count(READ_KINDS) == 2
    assert len(fake.records(SID, "Operators")) == 10


def test_records_beyond_the_byte_budget_are_handed_back_and_the_claim_shrinks(
    fake: FakeSheets, make_writer: MakeWriter, env: pytest.MonkeyPatch
) -> None:
    env.setenv("SYNCQUEUE_SHEETS_MAX_REQUEST_BYTES", "20000")
    writer = make_writer()
    items = [item("CREATE", f"big{i}", name="y" * 300) for i in range(100)]
    outcomes = writer.write(items)
    done = [i for i in items if outcomes[i.id].kind is OutcomeKind.DONE]
    back = [outcomes[i.id] for i in items if outcomes[i.id].kind is not OutcomeKind.DONE]
    assert 20 < len(done) < 100 and done == items[: len(done)]
    assert all(o.retry_after == 0 and not o.count_attempt for o in back)
    call = next(c for c in fake.calls if c.kind == "spreadsheets.batchUpdate")
    assert call.body_bytes <= 20_000
    assert writer.batch_records <= len(done)
    write_until_done(writer, items)
    assert len(fake.records(SID, "Requests")) == 100


# ----------------------------------------------------------------------------- semantics


def test_changes_to_one_record_are_coalesced(fake: FakeSheets, make_writer: MakeWriter) -> None:
    seed(fake, 1)
    writer = make_writer()
    outcomes = writer.write(
        [
            item("CREATE", "a", name="first"),
            item("UPDATE", "a", status="open"),
            item("UPDATE", "a", name="second"),
            item("CREATE", "gone", name="x"),
            item("DELETE", "gone"),
            item("UPDATE", "r0", name="old"),
            item("DELETE", "r0"),
            item("CREATE", "r0", name="again"),
        ]
    )
    assert all_done(outcomes)
    assert fake.find(SID, "Requests", "a") == [
        {"id": "a", "name": "second", "status": "open", "_deleted": ""}
    ]
    assert fake.find(SID, "Requests", "gone") == [
        {"id": "gone", "name": "", "status": "", "_deleted": True}
    ]
    assert fake.find(SID, "Requests", "r0") == [
        {"id": "r0", "name": "again", "status": "", "_deleted": ""}
    ]


def test_per_record_order_across_batches(fake: FakeSheets, make_writer: MakeWriter) -> None:
    writer = make_writer()
    for batch in (
        [item("CREATE", "k", name="v1", status="new")],
        [item("UPDATE", "k", name="v2")],
        [item("DELETE", "k")],
        [item("CREATE", "k", name="v3")],
        [item("UPDATE", "k", status="done")],
    ):
        assert all_done(writer.write(batch))
    assert fake.find(SID, "Requests", "k") == [
        {"id": "k", "name": "v3", "status": "done", "_deleted": ""}
    ]


def test_rows_moved_by_a_person_are_found_by_id(fake: FakeSheets, make_writer: MakeWriter) -> None:
    writer = make_writer()
    assert all_done(writer.write([item("CREATE", f"p{i}", name=f"n{i}") for i in range(6)]))
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
    assert all_done(outcomes)
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


def test_tombstone_delete_is_a_typed_boolean(fake: FakeSheets, make_writer: MakeWriter) -> None:
    seed(fake, 3)
    writer = make_writer()
    outcomes = writer.write([item("DELETE", "r1"), item("DELETE", "never-existed")])
    assert all_done(outcomes)
    rows = fake.rows(SID, "Requests")
    assert rows[0] == ["id", "name", "status", "_deleted"]
    # A tombstone blanks only the cells the package wrote for the record (none here: the
    # rows were typed in), and marks the row with the typed boolean.
    assert rows[2] == ["r1", "n1", "", True] and rows[2][3] is True
    assert rows[1] == ["r0", "n0"] and rows[3] == ["r2", "n2"]


def test_remove_delete_mode_in_the_same_request(
    fake: FakeSheets, make_writer: MakeWriter, env: pytest.MonkeyPatch
) -> None:
    env.setenv("SYNCQUEUE_DELETE_MODE", "remove")
    seed(fake, 7)
    writer = make_writer()
    fake.reset_calls()
    outcomes = writer.write(
        [
            item("DELETE", "r1"),
            item("DELETE", "r4"),
            item("DELETE", "r2"),
            item("UPDATE", "r5", status="kept"),
            item("CREATE", "n1", name="new"),
        ]
    )
    assert all_done(outcomes)
    [write] = [c for c in fake.calls if c.kind in WRITE_KINDS]
    deletes = [
        r["deleteDimension"]["range"] for r in write.body["requests"] if "deleteDimension" in r
    ]
    assert [(d["startIndex"], d["endIndex"]) for d in deletes] == [(5, 6), (2, 4)]  # highest first
    assert [r["id"] for r in fake.records(SID, "Requests")] == ["r0", "r3", "r5", "r6", "n1"]
    assert fake.find(SID, "Requests", "r5")[0]["status"] == "kept"


def test_unknown_fields_add_columns_or_fail(
    fake: FakeSheets, make_writer: MakeWriter, env: pytest.MonkeyPatch
) -> None:
    seed(fake, 1)
    writer = make_writer()
    fake.reset_calls()
    assert all_done(writer.write([item("UPDATE", "r0", color="red"), item("CREATE", "c", size=3)]))
    assert fake.count(WRITE_KINDS) == 1  # header cells travel with the rest
    assert fake.rows(SID, "Requests")[0] == ["id", "name", "status", "color", "size"]
    assert fake.find(SID, "Requests", "c")[0]["size"] == 3

    env.setenv("SYNCQUEUE_UNKNOWN_FIELDS", "fail")
    strict = make_writer()
    good, bad = item("UPDATE", "r0", name="fine"), item("UPDATE", "r0", weight=9)
    outcomes = strict.write([item("CREATE", "z", name="ok"), bad])
    assert outcomes[bad.id].kind is OutcomeKind.FAIL
    assert "has no column for field 'weight'" in outcomes[bad.id].error
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
    assert outcome.kind is OutcomeKind.FAIL and "'nope' has no row to update" in outcome.error
    strict.write([item("DELETE", "m")])  # a tombstoned row counts as missing too
    outcome = strict.write([u3 := item("UPDATE", "m", name="x")])[u3.id]
    assert outcome.kind is OutcomeKind.FAIL and "'m' has no row to update" in outcome.error
    assert strict.write([c := item("CREATE", "m", name="back")])[c.id].kind is OutcomeKind.DONE
    assert fake.find(SID, "Requests", "m")[0]["name"] == "back"


def test_new_tab_and_grid_growth(
    fake: FakeSheets, make_writer: MakeWriter, env: pytest.MonkeyPatch
) -> None:
    fake.add_tab(SID, "Narrow", [["id", "a"]], col_count=2)
    env.setenv("SYNCQUEUE_SHEETS_TABS", "Request=Narrow")
    writer = make_writer()
    items = [item("CREATE", "w", a=1, b=2, c=3), item("CREATE", "rev1", model="Revenue", amount=5)]
    assert all_done(writer.write(items))
    assert fake.rows(SID, "Narrow") == [["id", "a", "b", "c"], ["w", 1, 2, 3]]
    assert fake.tab(SID, "Narrow").col_count >= 4
    assert fake.rows(SID, "Revenue") == [["id", "amount"], ["rev1", 5]]


def test_tab_titles_are_quoted(
    fake: FakeSheets, make_writer: MakeWriter, env: pytest.MonkeyPatch
) -> None:
    env.setenv("SYNCQUEUE_SHEETS_TABS", "Operator=Op's tab 1")
    writer = make_writer()
    writer.write([item("CREATE", "o1", model="Operator", name="a")])
    assert all_done(writer.write([item("UPDATE", "o1", model="Operator", name="b")]))
    assert fake.rows(SID, "Op's tab 1") == [["id", "name"], ["o1", "b"]]


def test_moved_id_column_is_found_again(fake: FakeSheets, make_writer: MakeWriter) -> None:
    seed(fake, 3)
    writer = make_writer()
    writer.write([item("UPDATE", "r0", status="a")])
    # A person moves the id column to the end: the last header seen (column A) is stale.
    rows = [[*row, "", "", ""][:3] for row in fake.rows(SID, "Requests")]
    fake.set_rows(SID, "Requests", [row[1:] + row[:1] for row in rows])
    fake.reset_calls()
    outcomes = writer.write([item("UPDATE", "r1", status="b"), item("CREATE", "new", name="n")])
    assert all_done(outcomes)
    assert fake.count({"values.batchGetByDataFilter"}) == 2  # once more for the id's new place
    assert fake.find(SID, "Requests", "r1") == [{"id": "r1", "name": "n1", "status": "b"}]
    assert fake.find(SID, "Requests", "new") == [{"id": "new", "name": "n", "status": ""}]


# ----------------------------------------------------------------------------- values


def test_text_is_written_typed_and_stays_text(fake: FakeSheets, make_writer: MakeWriter) -> None:
    writer = make_writer()
    writer.write([item("CREATE", "f", name="=SUM(1)", status="+1")])
    writer.write([item("UPDATE", "f", status='=HYPERLINK("x")')])
    row = fake.rows(SID, "Requests")[1]
    assert row == ["f", "=SUM(1)", '=HYPERLINK("x")']
    assert not any(isinstance(cell, Formula) for cell in row)
    sent = json.dumps([c.body for c in fake.calls if c.kind in WRITE_KINDS])
    assert '{"stringValue": "=SUM(1)"}' in sent and "formulaValue" not in sent


def test_values_keep_their_types_and_none_gets_no_column(
    fake: FakeSheets, make_writer: MakeWriter
) -> None:
    writer = make_writer()
    writer.write([item("CREATE", "t", name=12, status=True, extra={"b": 1, "a": [1]}, none=None)])
    assert fake.rows(SID, "Requests") == [
        ["id", "name", "status", "extra"],  # no column for a field that only ever was None
        ["t", 12, True, '{"b": 1, "a": [1]}'],
    ]
    writer.write([item("UPDATE", "t", none="now")])
    assert fake.rows(SID, "Requests")[0] == ["id", "name", "status", "extra", "none"]


def test_big_integers_and_inexact_decimals_are_written_as_text(
    fake: FakeSheets, make_writer: MakeWriter
) -> None:
    """Finding 4 of issue 11: integers beyond 2^53 went out as JSON numbers and were rounded."""
    writer = make_writer()
    big, inexact = 2**53 + 1, Decimal("0.1000000000000000000001")
    writer.write(
        [
            item(
                "CREATE",
                "n",
                name=big,
                status=-(2**60) - 3,
                exact=2**53,
                dec=inexact,
                half=Decimal("0.5"),
            )
        ]
    )
    row = fake.find(SID, "Requests", "n")[0]
    assert row["name"] == str(big) and row["status"] == str(-(2**60) - 3)
    assert row["dec"] == "0.1000000000000000000001"
    assert row["exact"] == 2**53 and row["half"] == 0.5  # exact doubles stay numbers


def test_long_cells_fail_alone_or_are_truncated_by_setting(
    fake: FakeSheets, make_writer: MakeWriter, env: pytest.MonkeyPatch
) -> None:
    writer = make_writer()
    writer.write([item("CREATE", "warm", name="x")])
    fake.reset_calls()
    long_ = item("CREATE", "long", name="x" * 50_001)
    empty = item("CREATE", "empty", **{" ": "blank name"})
    ok = item("CREATE", "ok", name="fine")
    outcomes = writer.write([long_, empty, ok])
    assert outcomes[long_.id].kind is OutcomeKind.FAIL
    assert "field 'name' is 50001 characters long" in outcomes[long_.id].error
    assert "SYNCQUEUE_SHEETS_LONG_CELLS=truncate" in outcomes[long_.id].error
    assert "blank cannot be a column" in outcomes[empty.id].error
    assert outcomes[ok.id].kind is OutcomeKind.DONE
    assert [r["id"] for r in fake.records(SID, "Requests")] == ["warm", "ok"]

    env.setenv("SYNCQUEUE_SHEETS_LONG_CELLS", "truncate")
    cutting = make_writer()
    assert cutting.write([long_])[long_.id].kind is OutcomeKind.DONE
    assert fake.find(SID, "Requests", "long")[0]["name"] == "x" * 50_000


# ----------------------------------------------------------------------------- columns


def test_new_columns_follow_the_configured_order_then_the_first_writes_order(
    fake: FakeSheets, make_writer: MakeWriter, env: pytest.MonkeyPatch
) -> None:
    env.setenv("SYNCQUEUE_SHEETS_COLUMNS", "Revenue=amount,currency;Operator=login")
    writer = make_writer()
    writer.write(
        [
            item("CREATE", "v1", model="Revenue", zeta=1, currency="EUR", alpha=2, amount=3),
            item("CREATE", "v2", model="Revenue", beta=4, amount=5),
        ]
    )
    assert fake.rows(SID, "Revenue")[0] == ["id", "amount", "currency", "zeta", "alpha", "beta"]
    writer.write([item("UPDATE", "v2", model="Revenue", gamma=1, amount=6)])
    assert fake.rows(SID, "Revenue")[0][-1] == "gamma"  # existing columns never move


def test_a_persons_columns_are_never_touched(fake: FakeSheets, make_writer: MakeWriter) -> None:
    fake.set_rows(
        SID, "Requests", [["id", "notes", "name", "mine"], ["a", "n1", "x", "m1"], ["b", "n2", "y"]]
    )
    writer = make_writer()
    writer.write([item("UPDATE", "a", name="x2", status="s"), item("DELETE", "b")])
    writer.write([item("CREATE", "c", name="z")])
    sent = [c.body for c in fake.calls if c.kind in WRITE_KINDS]
    touched = {
        r["updateCells"]["start"]["columnIndex"] + k
        for body in sent
        for r in body["requests"]
        if "updateCells" in r and r["updateCells"]["start"]["rowIndex"] > 0
        for k in range(len(r["updateCells"]["rows"][0]["values"]))
        if r["updateCells"]["start"]["rowIndex"] <= 2
    }
    assert 1 not in touched and 3 not in touched  # notes and mine, in the existing rows
    assert fake.rows(SID, "Requests") == [
        ["id", "notes", "name", "mine", "status", "_deleted"],
        ["a", "n1", "x2", "m1", "s"],
        ["b", "n2", "y", "", "", True],  # typed in, not written by the package: kept
        ["c", "", "z"],
    ]


def test_renamed_duplicated_or_blank_headers_fail_only_the_records_that_need_them(
    fake: FakeSheets, make_writer: MakeWriter
) -> None:
    writer = make_writer()
    assert all_done(writer.write([item("CREATE", f"h{i}", name="n", status="s") for i in range(3)]))
    fake.set_cell(SID, "Requests", 1, 3, "State")  # a person renames "status"
    outcomes = writer.write(
        [
            a := item("UPDATE", "h0", status="x"),
            b := item("UPDATE", "h1", name="fine"),
            c := item("CREATE", "h9", status="new"),  # a new record needs the column too
        ]
    )
    assert kinds(outcomes) == {
        a.id: OutcomeKind.FAIL,
        b.id: OutcomeKind.DONE,
        c.id: OutcomeKind.FAIL,
    }
    assert "tab 'Requests' has no column 'status' any more" in outcomes[a.id].error
    assert fake.rows(SID, "Requests")[0] == ["id", "name", "State"]  # nothing was added

    fake.set_cell(SID, "Requests", 1, 3, "name")  # now two columns are named "name"
    outcomes = writer.write([d := item("UPDATE", "h2", name="z"), e := item("DELETE", "h1")])
    assert outcomes[d.id].kind is OutcomeKind.FAIL
    assert "has 2 columns named 'name' (B, C): rename or remove all but one" in outcomes[d.id].error
    assert outcomes[e.id].kind is OutcomeKind.FAIL  # a tombstone blanks name too

    fake.set_cell(SID, "Requests", 1, 1, "")  # the id header blanked: the whole tab stops
    outcome = writer.write([f := item("CREATE", "h8", other=1)])[f.id]
    assert outcome.kind is OutcomeKind.FAIL and "has no 'id' column" in outcome.error


# ----------------------------------------------------------------------------- limits


def test_new_rows_are_refused_before_the_cell_limit(
    fake: FakeSheets, make_writer: MakeWriter, env: pytest.MonkeyPatch
) -> None:
    seed(fake, 2)
    used = 2 * 1000 * 26  # two tabs of Google's default grid
    env.setenv("SYNCQUEUE_SHEETS_MAX_CELLS", str(used + 26 * 2))
    with fake.lock:
        fake.options.max_cells = used + 26 * 2
    writer = make_writer()
    assert all_done(writer.write([item("CREATE", f"c{i}", name="x") for i in range(2)]))
    outcomes = writer.write(
        [n := item("CREATE", "c3", name="x"), u := item("UPDATE", "r0", name="y")]
    )
    assert outcomes[u.id].kind is OutcomeKind.DONE
    assert outcomes[n.id].kind is OutcomeKind.FAIL
    assert "its limit of 52,052 cells (Google allows 10,000,000" in outcomes[n.id].error
    assert not [c for c in fake.calls if c.status == 400]  # refused before Google would


# ----------------------------------------------------------------------------- faults


@pytest.mark.parametrize("mode", ["disconnect", "503"])
def test_a_lost_answer_is_read_again_and_leaves_one_row(
    fake: FakeSheets, make_writer: MakeWriter, mode: str
) -> None:
    writer = make_writer()
    fake.lose_next(1, kinds={"spreadsheets.batchUpdate"}, mode=mode)
    create = item("CREATE", "once", name="x")
    assert writer.write([create])[create.id].kind is OutcomeKind.DONE  # a new round found it
    assert fake.count({"spreadsheets.batchUpdate"}) == 2
    second = writer.write([create, later := item("UPDATE", "once", status="y")])
    assert all_done(second) and later.id in second
    assert fake.find(SID, "Requests", "once") == [{"id": "once", "name": "x", "status": "y"}]


def test_a_storm_of_429s_is_handed_back_without_using_attempts(
    fake: FakeSheets, make_writer: MakeWriter
) -> None:
    seed(fake, 10)
    writer = make_writer()
    fake.fail_next(25, status=429)
    items = [item("UPDATE", f"r{i}", status="s") for i in range(10)]
    items += [item("CREATE", f"c{i}", name="n") for i in range(10)]
    retries = write_until_done(writer, items)
    assert retries and all(not o.count_attempt and o.retry_after for o in retries)
    assert all("429" in o.error for o in retries)
    records = fake.records(SID, "Requests")
    assert len(records) == 20 and len({r["id"] for r in records}) == 20
    assert all(r["status"] == "s" for r in records[:10])


def test_5xx_answers_start_a_new_round_then_hand_back(
    fake: FakeSheets, make_writer: MakeWriter
) -> None:
    seed(fake, 2)
    writer = make_writer()
    fake.fail_next(2, status=503)
    assert all_done(
        writer.write([item("UPDATE", "r0", status="a"), item("UPDATE", "r1", status="b")])
    )
    fake.fail_next(10, status=500)
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
        assert "400" in error and "Bad value" in error and "abc123secret" not in error
    assert sum(o.kind is OutcomeKind.DONE for o in outcomes.values()) == len(items) - 2
    records = {r["id"]: r for r in fake.records(SID, "Requests")}
    assert "c-bad" not in records and records["r7"]["status"] == ""
    assert all(records[f"r{i}"]["status"] == "ok" for i in range(12) if i != 7)


def test_a_refused_call_is_not_split(fake: FakeSheets, make_writer: MakeWriter) -> None:
    seed(fake, 8)
    writer = make_writer()
    writer.write([item("UPDATE", "r0", status="warm")])
    fake.reset_calls()
    fake.fail_next(1, status=403, kinds={"spreadsheets.batchUpdate"})
    outcomes = writer.write([item("UPDATE", f"r{i}", status="x") for i in range(8)])
    assert {o.kind for o in outcomes.values()} == {OutcomeKind.RETRY}
    assert all(o.count_attempt for o in outcomes.values())
    assert fake.count({"spreadsheets.batchUpdate"}) == 1


def test_requests_and_429_answers_are_counted_in_the_queue_metrics(
    fake: FakeSheets, make_writer: MakeWriter
) -> None:
    seed(fake, 3)
    writer = make_writer()
    before = metrics.read_counters()
    fake.reset_calls()
    fake.fail_next(2, status=429)
    write_until_done(writer, [item("UPDATE", f"r{i}", status="m") for i in range(3)])
    after = metrics.read_counters()
    with fake.lock:
        sent = [c for c in fake.calls if c.kind != "oauth.token"]
    assert after["writer_requests"] - before["writer_requests"] == len(sent)
    assert after["writer_throttled"] - before["writer_throttled"] == 2


# ----------------------------------------------------------------------------- building it


def test_create_writer_uses_settings(
    fake: FakeSheets, env: pytest.MonkeyPatch, prefix: str
) -> None:
    writer = create_writer(writer_context())
    try:
        assert writer.config.api_url == fake.url
        assert writer.limiter.key == "syncqueue:sheets:quota:anonymous"
        assert writer.batch_records == get_settings().sheets.batch_records
    finally:
        writer.close()
    assert fake.count() == 0  # building a writer sends nothing


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
    writer = GoogleSheetsWriter.from_context(
        writer_context(), tuning=SheetsTuning(key_prefix=prefix)
    )
    try:
        assert writer.limiter.key.endswith(":quota:writer@fake.iam.gserviceaccount.com")
        from items import Feeder

        feeder = Feeder(writer)
        assert feeder.write([i := item("CREATE", "sa", name="x")])[i.id].kind is OutcomeKind.DONE
    finally:
        writer.close()
    assert fake.count({"oauth.token"}) == 1
    api_calls = [c for c in fake.calls if c.kind != "oauth.token"]
    assert api_calls and all(
        (c.authorization or "").startswith("Bearer fake-token-") for c in api_calls
    )
    assert fake.quota_counts()["write"] == 0  # (no quota configured: nothing counted)
    assert fake.find(SID, "Requests", "sa")
