"""The dashboard through Starlette's TestClient, against the real test database and Redis.

Security first (login, CSRF, replays, cross-site POSTs), then what each page shows and does.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from starlette.testclient import TestClient

from syncqueue_tasks.dashboard import rates
from syncqueue_tasks.dashboard.app import DashboardConfig, create_app
from syncqueue_tasks.dashboard.auth import LOGIN_FAILURES_ALLOWED
from syncqueue_tasks.dashboard.guard import COOKIE
from syncqueue_tasks.ops import metrics
from syncqueue_tasks.redis_client import get_redis, key
from syncqueue_tasks.store import queue
from syncqueue_tasks.store.db import get_engine
from syncqueue_tasks.store.queue import Failure

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PASSWORD = "correct horse battery staple"
ORIGIN = "http://testserver"
SECRET_VALUE = "payload-value-7f3a9"  # must never appear in a page or a URL


def client(origin: str = ORIGIN, **config: object) -> TestClient:
    """A browser-like client: it sends this server's Origin with every request."""
    app = create_app(DashboardConfig(password=PASSWORD, sample_counters=False, **config))  # type: ignore[arg-type]
    return TestClient(app, base_url=origin, headers={"Origin": origin}, follow_redirects=False)


def csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html[:2000]
    return match.group(1)


def login(web: TestClient, password: str = PASSWORD, next_: str = "/") -> object:
    token = csrf(web.get("/login").text)
    return web.post("/login", data={"csrf_token": token, "password": password, "next": next_})


@pytest.fixture
def web(db: None) -> Iterator[TestClient]:
    """A logged-in client."""
    with client() as logged_in:
        response = login(logged_in)
        assert response.status_code == 303, response.text
        yield logged_in


def park_failed(*records: tuple[str, str], error: str = "ValueError: bad cell") -> list[str]:
    """Enqueue one CREATE per (model, record id), claim them and park them FAILED."""
    ids = queue.enqueue_many(
        {"action": "CREATE", "model": m, "record_id": r, "payload": {"name": SECRET_VALUE}}
        for m, r in records
    )
    claimed = queue.dequeue(len(ids))
    assert sorted(i.id for i in claimed) == sorted(ids)
    queue.mark_failed_many(Failure(item, error, retryable=False) for item in claimed)
    return ids


def statuses(ids: list[str]) -> list[str]:
    with get_engine().connect() as conn:
        rows = dict(conn.execute(text("SELECT id, status FROM sync_queue")).all())
    return [rows.get(i, "GONE") for i in ids]


def confirm(web: TestClient, page: str, **form: object) -> tuple[str, str]:
    """Post a Failed page form to /failed/confirm; return the confirmation page and token."""
    response = web.post("/failed/confirm", data={"csrf_token": csrf(page), **form})
    assert response.status_code == 200, response.text
    match = re.search(r'name="confirmation" value="([^"]+)"', response.text)
    assert match, response.text
    return response.text, match.group(1)


def apply(web: TestClient, page: str, token: str) -> object:
    return web.post("/failed/apply", data={"csrf_token": csrf(page), "confirmation": token})


# -- security ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/failed", "/record?model=Request&record_id=1", "/nope"])
def test_without_a_login_every_page_redirects_to_the_login(db: None, path: str) -> None:
    with client() as anonymous:
        response = anonymous.get(path)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/login?next=")
        assert COOKIE not in response.cookies  # no session is made for it
        page = anonymous.get(response.headers["location"])
        assert page.status_code == 200 and 'type="password"' in page.text


def test_htmx_polls_without_a_login_send_the_whole_page_to_the_login(db: None) -> None:
    with client() as anonymous:
        response = anonymous.get("/overview/panel", headers={"HX-Request": "true"})
    assert response.status_code == 401 and response.headers["HX-Redirect"] == "/login"


def test_wrong_password_is_refused_slowly_and_logs_nobody_in(db: None) -> None:
    with client(login_delay_seconds=0.4) as web:
        started = time.monotonic()
        response = login(web, password="wrong")
        assert time.monotonic() - started >= 0.4
        assert response.status_code == 401 and "Wrong password." in response.text
        assert web.get("/").status_code == 303  # still not logged in


def test_failed_logins_are_limited_even_the_right_password_waits(db: None) -> None:
    with client(login_delay_seconds=0) as web:
        for _ in range(LOGIN_FAILURES_ALLOWED):
            assert login(web, password="guess").status_code == 401
        refused = login(web)
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) > 0
        assert web.get("/").status_code == 303


def test_login_sets_a_strict_httponly_cookie_and_replaces_the_session(db: None) -> None:
    with client() as web:
        form = web.get("/login")
        anonymous_id = form.cookies[COOKIE]
        token = csrf(form.text)
        response = web.post(
            "/login", data={"csrf_token": token, "password": PASSWORD, "next": "/failed"}
        )
        assert response.status_code == 303 and response.headers["location"] == "/failed"
        cookie = response.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
        assert response.cookies[COOKIE] != anonymous_id
        assert web.get("/failed").status_code == 200
        # The login form, replayed: its session (and token) ended with the login.
        web.cookies.set(COOKIE, anonymous_id)
        replay = web.post(
            "/login", data={"csrf_token": token, "password": PASSWORD, "next": "/failed"}
        )
        assert replay.status_code == 403


def test_the_cookie_is_secure_behind_tls_and_next_cannot_leave_the_site(db: None) -> None:
    with client("https://testserver", secure_cookies=True) as web:
        response = login(web, next_="//evil.example/x")
        assert "Secure" in response.headers["set-cookie"]
        assert response.headers["location"] == "/"


def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(web: TestClient) -> None:
    [item] = park_failed(("Request", "1"))
    for form in ({}, {"csrf_token": "forged"}):
        response = web.post("/failed/confirm", data={**form, "action": "retry", "ids": item})
        assert response.status_code == 403 and "CSRF" in response.text
    page = web.get("/failed").text
    _, token = confirm(web, page, action="discard", ids=item)
    refused = web.post("/failed/apply", data={"confirmation": token})
    assert refused.status_code == 403
    assert statuses([item]) == ["FAILED"]
    # A token of another session does not work either.
    with client() as other:
        login(other)
        stolen = other.post(
            "/failed/apply", data={"csrf_token": csrf(other.get("/").text), "confirmation": token}
        )
    assert stolen.status_code == 409  # that session never saw this confirmation
    assert statuses([item]) == ["FAILED"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null", "Referer": "https://evil.example/page"},
        {"Origin": ""},  # neither Origin nor Referer
    ],
)
def test_a_cross_site_post_is_refused_even_with_a_valid_token(
    web: TestClient, headers: dict[str, str]
) -> None:
    [item] = park_failed(("Request", "1"))
    page = web.get("/failed").text
    _, token = confirm(web, page, action="discard", ids=item)
    response = web.post(
        "/failed/apply", data={"csrf_token": csrf(page), "confirmation": token}, headers=headers
    )
    assert response.status_code == 403 and "cross-site" in response.text
    assert statuses([item]) == ["FAILED"]
    # The same form from this origin goes through (the token was not used up by the refusal).
    same = {"Origin": "", "Referer": f"{ORIGIN}/failed"}
    done = web.post(
        "/failed/apply", data={"csrf_token": csrf(page), "confirmation": token}, headers=same
    )
    assert done.status_code == 303 and statuses([item]) == ["GONE"]


def test_a_replayed_confirmation_is_refused(web: TestClient) -> None:
    [item] = park_failed(("Request", "1"))
    page = web.get("/failed").text
    _, token = confirm(web, page, action="retry", ids=item)
    assert apply(web, page, token).status_code == 303
    assert statuses([item]) == ["PENDING"]
    # The item fails again; replaying the confirmation must not retry it a second time.
    [claimed] = queue.dequeue(1)
    queue.mark_failed(claimed, "boom", retryable=False)
    replay = apply(web, page, token)
    assert replay.status_code == 409 and "already used" in replay.text
    assert statuses([item]) == ["FAILED"]


def test_logout_ends_the_session_for_good(web: TestClient) -> None:
    session_id = web.cookies[COOKIE]
    response = web.post("/logout", data={"csrf_token": csrf(web.get("/").text)})
    assert response.status_code == 303 and response.headers["location"] == "/login"
    web.cookies.set(COOKIE, session_id)  # the old cookie, kept by an attacker
    assert web.get("/").status_code == 303


def test_every_answer_carries_strict_security_headers(web: TestClient) -> None:
    for path in ("/", "/login", "/static/htmx.min.js"):
        headers = web.get(path).headers
        assert "script-src 'self'" in headers["content-security-policy"]
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"
    assert web.get("/").headers["cache-control"] == "no-store"


# -- pages -------------------------------------------------------------------------------------


def test_failed_page_lists_dead_letters_with_sanitized_errors_by_model(web: TestClient) -> None:
    [request_item] = park_failed(("Request", "7"))
    [revenue_item] = park_failed(("Revenue", "2026-11"))
    with get_engine().begin() as conn:  # an error stored unsanitized (an older version, a trigger)
        conn.execute(
            text("UPDATE sync_queue SET last_error = :e WHERE id = :id"),
            {
                "e": "OperationalError: postgresql://app:hunter2@db/app\nTraceback",
                "id": revenue_item,
            },
        )
    page = web.get("/failed").text
    assert request_item in page and revenue_item in page
    assert "ValueError: bad cell" in page and "postgresql://***@db/app" in page
    assert "hunter2" not in page and SECRET_VALUE not in page
    only = web.get("/failed", params={"model": "Revenue"}).text
    assert revenue_item in only and request_item not in only


def test_retry_one_item_after_confirmation(web: TestClient) -> None:
    ids = park_failed(("Request", "1"), ("Request", "2"))
    page = web.get("/failed").text
    shown, token = confirm(web, page, action="retry", ids=ids[0])
    assert "Retry 1 FAILED item(s)?" in shown and ids[0] in shown and ids[1] not in shown
    assert statuses(ids) == ["FAILED", "FAILED"]  # nothing happens before the confirmation
    done = apply(web, page, token)
    assert done.status_code == 303 and done.headers["location"] == "/failed"
    assert statuses(ids) == ["PENDING", "FAILED"]
    assert "1 FAILED item(s) back to PENDING." in web.get("/failed").text


def test_discard_a_selection_after_confirmation(web: TestClient) -> None:
    ids = park_failed(("Request", "1"), ("Operator", "2"), ("Request", "3"))
    page = web.get("/failed").text
    shown, token = confirm(web, page, action="discard", ids=[ids[0], ids[1]])
    assert "Discard 2 FAILED item(s)?" in shown and "1 Operator, 1 Request" in shown
    apply(web, page, token)
    assert statuses(ids) == ["GONE", "GONE", "FAILED"]
    assert "Deleted 2 FAILED item(s)." in web.get("/failed").text


def test_all_of_a_filter_pins_the_items_shown_on_the_confirmation(web: TestClient) -> None:
    ids = park_failed(("Request", "1"), ("Request", "2"), ("Revenue", "3"))
    page = web.get("/failed", params={"model": "Request"}).text
    shown, token = confirm(web, page, action="retry", scope="filter", model="Request")
    assert "Retry 2 FAILED item(s)?" in shown
    [late] = park_failed(("Request", "4"))  # fails after the confirmation page was shown
    done = apply(web, page, token)
    assert done.headers["location"] == "/failed?model=Request"
    assert statuses([*ids, late]) == ["PENDING", "PENDING", "FAILED", "FAILED"]


def test_a_selection_that_is_no_longer_failed_is_reported_not_applied(web: TestClient) -> None:
    [item] = park_failed(("Request", "1"))
    page = web.get("/failed").text
    _, token = confirm(web, page, action="discard", ids=item)
    queue.retry_failed([item])  # someone else (the CLI) retried it meanwhile
    apply(web, page, token)
    assert statuses([item]) == ["PENDING"]
    assert "Deleted 0 FAILED item(s). 1 were no longer FAILED" in web.get("/failed").text
    gone = web.post(
        "/failed/confirm", data={"csrf_token": csrf(page), "action": "retry", "ids": item}
    )
    assert gone.status_code == 303
    assert "No FAILED item matches" in web.get("/failed").text
    bad = web.post(
        "/failed/confirm", data={"csrf_token": csrf(page), "action": "retry", "ids": "x"}
    )
    assert bad.status_code == 400 and "26-character" in bad.text


def test_record_page_shows_every_change_in_order_without_payload_values(web: TestClient) -> None:
    first = queue.enqueue("CREATE", "Request", "42", {"title": SECRET_VALUE, "status": "open"})
    second = queue.enqueue("UPDATE", "Request", "42", {"status": SECRET_VALUE})
    queue.enqueue("UPDATE", "Request", "43", {"status": "other record"})
    claimed = queue.dequeue(2)
    assert [c.id for c in claimed] == [first, second]
    queue.mark_complete(claimed[0])
    queue.mark_failed(claimed[1], "HTTPError: 500 from Sheets", retryable=True, retry_after=600)
    response = web.get("/record", params={"model": "Request", "record_id": "42"})
    page = response.text
    assert response.status_code == 200 and SECRET_VALUE not in page
    rows = re.findall(r"<tr class=\"status-(\w+)\">(.*?)</tr>", page, re.S)
    assert [status for status, _ in rows] == ["completed", "pending"]
    assert first in rows[0][1] and "status, title" in rows[0][1] and "UTC" in rows[0][1]
    assert second in rows[1][1] and "1 / 3" in rows[1][1] and "HTTPError: 500" in rows[1][1]
    assert "other record" not in page
    state = re.search(r'<dl class="state" id="state">(.*?)</dl>', page, re.S)
    assert (
        state
        and "present" in state.group(1)
        and "waiting changes</dt><dd>1, in backoff" in state.group(1)
    )
    fields = re.findall(r"<tr><td>(\w+)</td><td><code>(\w+)</code></td></tr>", page)
    assert fields == [("status", first), ("title", first)]  # written by the first change
    none = web.get("/record", params={"model": "Request", "record_id": "nope"}).text
    assert "The queue never had a change of Request nope" in none
    assert web.get("/record", params={"model": "Request", "record_id": ""}).status_code == 400


def test_overview_counts_backoff_and_counters(web: TestClient) -> None:
    redis = get_redis()
    redis.delete(key("metrics"))
    park_failed(("Revenue", "9"))
    queue.enqueue_many(
        [
            {"action": "CREATE", "model": "Request", "record_id": "1", "payload": {}},
            {"action": "CREATE", "model": "Request", "record_id": "2", "payload": {}},
            {"action": "CREATE", "model": "Operator", "record_id": "3", "payload": {}},
            {"action": "CREATE", "model": "Operator", "record_id": "4", "payload": {}},
        ]
    )
    first, second = queue.dequeue(2)
    queue.mark_failed(first, "boom", retry_after=600)  # its record waits out a backoff
    queue.mark_complete(second)
    with get_engine().begin() as conn:
        conn.execute(text("UPDATE sync_queue SET created_at = now() - interval '90 seconds'"))
        conn.execute(
            text("UPDATE sync_queue SET created_at = now() - interval '5 minutes' "
                 "WHERE model = 'Operator' AND status = 'PENDING'")
        )  # fmt: skip
    metrics.count("writer_requests", 12)
    metrics.count("writer_throttled", 3)
    page = web.get("/").text
    assert 'hx-get="/overview/panel"' in page and 'hx-trigger="every 5s"' in page
    table = re.search(r'<table id="by-model">(.*?)</table>', page, re.S)
    assert table
    cells = [
        re.sub(r"<[^>]+>", "", c).strip()
        for c in re.findall(r"<td[^>]*>(.*?)</td>", table.group(1), re.S)
    ]
    # model, PENDING, PROCESSING, FAILED, how long its oldest PENDING item has waited
    by_model = [cells[i : i + 5] for i in range(0, len(cells), 5)]
    assert by_model == [
        ["Operator", "2", "0", "0", "5.0 min"],
        ["Request", "1", "0", "0", "1.5 min"],  # back from a failed attempt; the other written
        ["Revenue", "0", "0", "1", "-"],
    ]
    assert re.search(r'id="count-pending">3<', page) and re.search(r'id="count-failed">.*>1<', page)
    assert re.search(r'id="oldest-pending">5\.0 min<', page)
    assert re.search(r'id="count-completed">1<', page)
    assert re.search(r'id="backoff-records">1<', page)
    assert re.search(r"next retry in (9\.\d|10\.0) min", page)
    assert re.search(r'id="writer-requests">12<', page)
    assert re.search(r'id="writer-throttled">3<', page)
    assert "no samples yet" in page
    panel = web.get("/overview/panel", headers={"HX-Request": "true"}).text
    assert panel.startswith('<section id="overview"') and "<html" not in panel


def test_chart_shows_per_minute_rates_from_the_sampled_counters(web: TestClient) -> None:
    redis = get_redis()
    redis.delete(key("metrics"), rates.samples_key())
    now = time.time()
    start = (int(now // 60) - 3) * 60  # three whole minutes ago
    rates.sample(start + 1)
    metrics.record_outcomes(completed=30, retried=4, failed=1)
    rates.sample(start + 61)
    rates.sample(start + 65)  # a later sample in the same minute does not replace the first
    metrics.record_outcomes(completed=12, retried=0, failed=0)
    rates.sample(start + 121)
    recent = rates.rates(now)
    assert recent.per_minute["completed"][-3:] == [30, 12, None]
    assert recent.per_minute["retried"][-3:] == [4, 0, None]
    assert recent.per_minute["completed"][:-3] == [None] * (rates.WINDOW_MINUTES - 3)
    assert recent.last_hour("completed") == 42
    page = web.get("/").text
    assert '<polyline class="line completed"' in page and "no samples yet" not in page
    assert "0 in the sampled last hour" in page  # writer requests: sampled, none counted


def test_sheet_page_shows_the_latest_verify_without_values(
    web: TestClient, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Sheet page: the latest verify report (here of the local workbook), counts per
    kind and the findings by record id and field, never a value."""
    from openpyxl import load_workbook

    from syncqueue_tasks.celery import batch
    from syncqueue_tasks.celery.verify import verify
    from syncqueue_tasks.writers.workbook import LocalWorkbookWriter

    get_redis().delete(key("verify"))  # no result left by another test
    assert "No verify has run yet" in web.get("/sheet").text
    path = tmp_path / "book.xlsx"
    writer = LocalWorkbookWriter(path)
    queue.enqueue("CREATE", "Request", "1", {"title": SECRET_VALUE})
    queue.enqueue("CREATE", "Request", "2", {"title": "b"})
    batch.process(writer, batch_size=10, time_budget=5)
    book = load_workbook(path)
    book["Request"]["B3"] = "edited by a person"  # record 2's title
    book.save(path)
    verify("Request", writer=writer)
    page = web.get("/sheet").text
    assert "1 finding(s)" in page and SECRET_VALUE not in page and "edited" not in page
    row = re.search(r"<td>differs</td><td>2</td><td>title</td>", page)
    assert row, page
