"""The fake Sheets API's own behaviour, over real HTTP: the parts the writer's tests rely on."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from fake_sheets import FakeSheets, Formula, Options, Quota

pytestmark = pytest.mark.unit

SID = "fake-self-test"
V4 = "/v4/spreadsheets/"


class Clock:
    """A quota clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fake(clock: Clock) -> Iterator[FakeSheets]:
    server = FakeSheets(quota=Quota(clock=clock)).start()
    server.add_spreadsheet(SID, {"Data": [["id", "name"], ["a", "alice"], ["b", "bob"]]})
    yield server
    server.stop()


def call(
    fake: FakeSheets, method: str, path: str, body: Any = None, token: str | None = None
) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(method, fake.url + V4 + path, json=body, headers=headers, timeout=10)


def batch(fake: FakeSheets, *subrequests: dict[str, Any]) -> requests.Response:
    return call(fake, "POST", f"{SID}:batchUpdate", {"requests": list(subrequests)})


def sheet_id(fake: FakeSheets, title: str = "Data") -> int:
    return fake.tab(SID, title).sheet_id


def row_meta(sheet: int, row: int, value: str, **extra: Any) -> dict[str, Any]:
    """createDeveloperMetadata on 0-based ``row``."""
    location = {"dimensionRange": {"sheetId": sheet, "dimension": "ROWS", "startIndex": row,
                                   "endIndex": row + 1}}  # fmt: skip
    body = {"metadataKey": "id", "metadataValue": value, "location": location,
            "visibility": "DOCUMENT", **extra}  # fmt: skip
    return {"createDeveloperMetadata": {"developerMetadata": body}}


def by_meta(value: str) -> dict[str, Any]:
    return {"developerMetadataLookup": {"metadataKey": "id", "metadataValue": value}}


def cells(*values: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"values": [{"userEnteredValue": v} for v in values]}]


# ----------------------------------------------------------------------------- batchUpdate


def test_one_invalid_subrequest_applies_nothing(fake: FakeSheets) -> None:
    sheet = sheet_id(fake)
    before = fake.rows(SID, "Data")
    answer = batch(
        fake,
        {"addSheet": {"properties": {"title": "New"}}},
        {"updateCells": {"start": {"sheetId": sheet, "rowIndex": 1, "columnIndex": 1},
                         "rows": cells({"stringValue": "CHANGED"}), "fields": "userEnteredValue"}},
        row_meta(sheet, 1, "a"),
        {"insertDimension": {"range": {"sheetId": sheet, "dimension": "ROWS", "startIndex": 1,
                                       "endIndex": 2}}},
        {"deleteDimension": {"range": {"sheetId": 999, "dimension": "ROWS", "startIndex": 0,
                                       "endIndex": 1}}},
    )  # fmt: skip
    assert answer.status_code == 400
    assert answer.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert "requests[4]" in answer.json()["error"]["message"]
    assert fake.rows(SID, "Data") == before
    assert fake.developer_metadata(SID) == []
    meta = call(fake, "GET", SID).json()
    assert [s["properties"]["title"] for s in meta["sheets"]] == ["Data"]
    assert meta["sheets"][0]["properties"]["gridProperties"]["rowCount"] == 1000


def test_subrequests_apply_in_order_and_replies_mirror_them(fake: FakeSheets) -> None:
    answer = batch(
        fake,
        {"addSheet": {"properties": {"title": "Later", "sheetId": 77}}},
        {"updateCells": {"start": {"sheetId": 77, "rowIndex": 0, "columnIndex": 0},
                         "rows": cells({"stringValue": "=1+2"}, {"numberValue": 2**53 + 1},
                                       {"boolValue": False}, {"formulaValue": "=A1"}),
                         "fields": "userEnteredValue"}},
        {"appendCells": {"sheetId": 77, "rows": cells({"stringValue": "next"}), "fields": "*"}},
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    replies = answer.json()["replies"]
    assert replies[0]["addSheet"]["properties"]["sheetId"] == 77
    assert replies[1:] == [{}, {}]
    rows = fake.rows(SID, "Later")
    assert rows == [["=1+2", 2**53, False, "=A1"], ["next"]]
    assert not isinstance(rows[0][0], Formula) and isinstance(rows[0][3], Formula)
    assert isinstance(rows[0][2], bool)


def test_typed_values_are_validated(fake: FakeSheets) -> None:
    start = {"sheetId": sheet_id(fake), "rowIndex": 5, "columnIndex": 0}
    for bad in ({"stringValue": "x", "numberValue": 1}, {"numberValue": "1"}, {"boolValue": 1}):
        answer = batch(
            fake,
            {"updateCells": {"start": start, "rows": cells(bad), "fields": "userEnteredValue"}},
        )
        assert answer.status_code == 400, bad
    no_mask = batch(fake, {"updateCells": {"start": start, "rows": cells({"stringValue": "x"})}})
    assert no_mask.status_code == 400
    assert len(fake.rows(SID, "Data")) == 3


# ----------------------------------------------------------------------------- metadata


def test_metadata_follows_its_row_through_insert_sort_move_and_delete(fake: FakeSheets) -> None:
    sheet = sheet_id(fake)
    assert batch(fake, row_meta(sheet, 1, "a"), row_meta(sheet, 2, "b")).status_code == 200

    def row_of(value: str) -> int | None:
        found = [m for m in fake.developer_metadata(SID) if m["metadataValue"] == value]
        return found[0]["location"]["dimensionRange"]["startIndex"] if found else None

    fake.insert_rows(SID, "Data", 2, [["new", "person"]])  # above "a"
    assert (row_of("a"), row_of("b")) == (2, 3)
    fake.sort_rows(SID, "Data", column=2, descending=True)  # person, bob, alice
    assert fake.rows(SID, "Data")[1:] == [["new", "person"], ["b", "bob"], ["a", "alice"]]
    assert (row_of("a"), row_of("b")) == (3, 2)
    fake.move_rows(SID, "Data", row=4, count=1, before=2)  # alice to the top
    assert fake.rows(SID, "Data")[1][0] == "a" and row_of("a") == 1

    # A write addressed by metadata lands on the row where it is now.
    update = {"valueInputOption": "RAW",
              "data": [{"dataFilter": by_meta("b"), "values": [["b", "BOB"]]}]}  # fmt: skip
    answer = call(fake, "POST", f"{SID}/values:batchUpdateByDataFilter", update)
    assert answer.status_code == 200, answer.text
    assert answer.json()["responses"][0]["updatedRange"] == "'Data'!A4:B4"
    assert fake.find(SID, "Data", "b") == [{"id": "b", "name": "BOB"}]

    fake.delete_rows(SID, "Data", row=4)  # b's row: its metadata goes with it
    assert row_of("b") is None and row_of("a") == 1
    found = call(fake, "POST", f"{SID}/developerMetadata:search", {"dataFilters": [by_meta("b")]})
    assert found.json() == {}


def test_metadata_can_stay_put_when_a_sort_does_not_move_it(clock: Clock) -> None:
    with FakeSheets(options=Options(metadata_follows_sort=False)) as fake:
        fake.add_spreadsheet(SID, {"Data": [["id"], ["b"], ["a"]]})
        assert batch(fake, row_meta(sheet_id(fake), 1, "b")).status_code == 200
        fake.sort_rows(SID, "Data", column=1)
        assert fake.rows(SID, "Data") == [["id"], ["a"], ["b"]]
        location = fake.developer_metadata(SID)[0]["location"]["dimensionRange"]
        assert location["startIndex"] == 1  # now on a's row: the drift verify must catch


def test_metadata_lookups_reads_and_unmatched_filters(fake: FakeSheets) -> None:
    sheet = sheet_id(fake)
    created = batch(fake, row_meta(sheet, 2, "b", metadataId=42)).json()["replies"][0]
    assert created["createDeveloperMetadata"]["developerMetadata"]["metadataId"] == 42
    duplicate = batch(fake, row_meta(sheet, 1, "a", metadataId=42))
    assert duplicate.status_code == 400 and len(fake.developer_metadata(SID)) == 1

    read = {"dataFilters": [by_meta("b")], "valueRenderOption": "UNFORMATTED_VALUE"}
    got = call(fake, "POST", f"{SID}/values:batchGetByDataFilter", read).json()
    assert [m["valueRange"]["values"] for m in got["valueRanges"]] == [[["b", "bob"]]]

    missing = {"valueInputOption": "RAW",
               "data": [{"dataFilter": by_meta("zz"), "values": [["zz"]]}]}  # fmt: skip
    answer = call(fake, "POST", f"{SID}/values:batchUpdateByDataFilter", missing)
    assert answer.status_code == 200 and answer.json()["responses"] == []
    with fake.lock:
        fake.options.unmatched_filter = "error"
    assert call(fake, "POST", f"{SID}/values:batchUpdateByDataFilter", missing).status_code == 400
    gone = {"deleteDeveloperMetadata": {"dataFilter": by_meta("zz")}}
    assert batch(fake, gone).status_code == 400
    assert len(fake.rows(SID, "Data")) == 3


def test_metadata_limits_refuse_the_whole_request() -> None:
    with FakeSheets(options=Options(metadata_chars_per_sheet=10)) as fake:
        fake.add_spreadsheet(SID, {"Data": [["id"], ["abcd"], ["efgh"]]})
        sheet = sheet_id(fake)
        assert batch(fake, row_meta(sheet, 1, "abcd")).status_code == 200  # 2 + 4 chars
        refused = batch(
            fake,
            {"updateCells": {"start": {"sheetId": sheet, "rowIndex": 2, "columnIndex": 1},
                             "rows": cells({"stringValue": "x"}), "fields": "*"}},
            row_meta(sheet, 2, "efgh"),
        )  # fmt: skip
        assert refused.status_code == 400
        assert fake.rows(SID, "Data") == [["id"], ["abcd"], ["efgh"]]
        assert len(fake.developer_metadata(SID)) == 1


# ----------------------------------------------------------------------------- tabs and values


def test_a_renamed_tab_keeps_its_id_and_its_old_title_is_a_400(fake: FakeSheets) -> None:
    sheet = sheet_id(fake)
    fake.rename_tab(SID, "Data", "Renamed")
    old = call(fake, "GET", f"{SID}/values/Data!A1:B2")
    assert old.status_code == 400
    assert old.json()["error"]["message"] == "Unable to parse range: Data!A1:B2"
    assert call(fake, "GET", f"{SID}/values/Renamed!A1:A1").json()["values"] == [["id"]]
    assert sheet_id(fake, "Renamed") == sheet
    start = {"sheetId": sheet, "rowIndex": 1, "columnIndex": 1}
    by_id = {"updateCells": {"start": start, "rows": cells({"stringValue": "x"}), "fields": "*"}}
    assert batch(fake, by_id).status_code == 200


def test_values_render_by_locale_and_numbers_are_doubles() -> None:
    with FakeSheets() as fake:
        fake.add_spreadsheet(SID, {"T": [["id"]]}, locale="de_DE")
        body = {
            "valueInputOption": "RAW",
            "data": [{"range": "T!A2:B2", "values": [[True, 2**53 + 1]]}],
        }
        assert call(fake, "POST", f"{SID}/values:batchUpdate", body).status_code == 200
        formatted = call(fake, "GET", f"{SID}/values/T!A2:B2").json()["values"]
        raw = call(fake, "GET", f"{SID}/values/T!A2:B2?valueRenderOption=UNFORMATTED_VALUE")
        assert formatted == [["WAHR", str(2**53)]]
        assert raw.json()["values"] == [[True, 2**53]]
        assert call(fake, "GET", SID).json()["properties"]["locale"] == "de_DE"


# ----------------------------------------------------------------------------- quota


def _write(fake: FakeSheets, token: str | None = None) -> int:
    body = {"valueInputOption": "RAW", "data": [{"range": "Data!C1", "values": [["x"]]}]}
    return call(fake, "POST", f"{SID}/values:batchUpdate", body, token).status_code


def _read(fake: FakeSheets, token: str | None = None) -> int:
    return call(fake, "GET", f"{SID}/values/Data!A1", token=token).status_code


def test_the_61st_write_in_a_window_gets_googles_429_and_the_window_rolls(
    fake: FakeSheets, clock: Clock
) -> None:
    assert [_write(fake) for _ in range(30)] == [200] * 30
    clock.now += 30
    assert [_write(fake) for _ in range(30)] == [200] * 30
    answer = call(fake, "POST", f"{SID}/values:batchUpdate", {"valueInputOption": "RAW"})
    assert answer.status_code == 429 and "Retry-After" not in answer.headers
    error = answer.json()["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED"
    assert "'Write requests per minute per user'" in error["message"]
    assert error["details"][0]["metadata"]["quota_limit"] == "WriteRequestsPerMinutePerUser"
    assert [_read(fake) for _ in range(60)] == [200] * 60  # reads have their own quota
    assert _read(fake) == 429
    clock.now += 30  # the first 30 writes leave the window
    assert [_write(fake) for _ in range(30)] == [200] * 30
    assert _write(fake) == 429
    assert fake.quota_counts() == {"read": 60, "write": 90, "read_429": 1, "write_429": 2}
    assert fake.count({"values.batchUpdate"}) == 92


def test_quota_is_per_account_from_the_jwt_grant(fake: FakeSheets) -> None:
    def token(account: str) -> str:
        claims = base64.urlsafe_b64encode(json.dumps({"iss": account}).encode()).decode()
        grant = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                 "assertion": f"e30.{claims.rstrip('=')}.sig"}  # fmt: skip
        return str(
            requests.post(fake.url + "/token", data=grant, timeout=10).json()["access_token"]
        )

    one, two, again = token("one@x"), token("two@x"), token("one@x")
    assert [_write(fake, one) for _ in range(60)] == [200] * 60
    assert _write(fake, again) == 429  # the same account, another token
    assert _write(fake, two) == 200
    assert fake.quota_counts("one@x")["write_429"] == 1


def test_faults_meet_only_requests_the_quota_admitted(fake: FakeSheets, clock: Clock) -> None:
    assert [_write(fake) for _ in range(59)] == [200] * 59
    fake.fail_next(2, status=503)
    assert _write(fake) == 503  # admitted (the 60th), then the fault
    assert _write(fake) == 429  # refused by the quota: the second fault is still pending
    clock.now += 61
    assert _write(fake) == 503
    assert _write(fake) == 200


# ----------------------------------------------------------------------------- the person


def test_the_person_acts_between_a_read_and_the_next_write(fake: FakeSheets) -> None:
    acted: list[str] = []

    def person(server: FakeSheets, sid: str) -> None:
        acted.append(sid)
        server.insert_rows(sid, "Data", 2, [["mine", "keep me"]])

    fake.person = person
    assert _write(fake) == 200 and acted == []  # no read before it
    assert _read(fake) == 200
    body = {"valueInputOption": "RAW", "data": [{"range": "Data!B2", "values": [["ALICE"]]}]}
    assert call(fake, "POST", f"{SID}/values:batchUpdate", body).status_code == 200
    assert acted == [SID]
    # The write used the row number from the read: it hit the person's row (finding 1).
    assert fake.rows(SID, "Data")[1] == ["mine", "ALICE"]
    assert _write(fake) == 200 and acted == [SID]  # once per read
