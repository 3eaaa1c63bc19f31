"""The dashboard in a real browser: Debian's chromium driven by Playwright for Python.

The browser is the system's ``chromium`` (``executable_path``; Playwright never downloads
one); the tests skip, saying why, where there is none. The dashboard is a real
``syncqueue dashboard`` process and the writer a real Celery worker writing the local
workbook. Screenshots go to the test's tmp dir (``screenshots/``).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import openpyxl
import pytest
from processes import celery_worker
from test_dashboard import park_failed, statuses
from test_dashboard_cli import dashboard_process

from syncqueue_tasks.store import queue

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

pytestmark = [pytest.mark.system, pytest.mark.timeout(240)]

PASSWORD = "browser-test-password"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
WORKBOOK_WRITER = "syncqueue_tasks.writers.workbook:create_writer"


def chromium_path() -> str | None:
    """Debian's chromium (or ``SYNCQUEUE_TEST_CHROMIUM``), if there is one."""
    return os.environ.get("SYNCQUEUE_TEST_CHROMIUM") or shutil.which("chromium")


@pytest.fixture
def browser() -> Iterator[sync_api.Browser]:
    path = chromium_path()
    if path is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; .ci/run does it)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    folder = tmp_path / "screenshots"
    folder.mkdir()
    return folder


@pytest.fixture
def dashboard(db: None, tmp_path: Path) -> Iterator[str]:
    """A ``syncqueue dashboard`` process refreshing every second; yields its URL."""
    env = {"SYNCQUEUE_DASHBOARD_PASSWORD": PASSWORD, "SYNCQUEUE_DASHBOARD_REFRESH_SECONDS": "1"}
    with dashboard_process(tmp_path, env) as process:
        yield process.url


def log_in(page: sync_api.Page, url: str) -> None:
    page.goto(url)
    assert "/login?next=" in page.url  # no session: the login page first
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(url)


def wait_until(what: str, check: object, timeout: float = 45) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def test_operator_retries_a_failed_item_and_watches_it_complete(
    browser: sync_api.Browser, dashboard: str, screenshots: Path, tmp_path: Path
) -> None:
    [item] = park_failed(("Request", "42"), error="SheetError: column 'status' is protected")
    queue.enqueue("CREATE", "Operator", "op-7", {"name": "Bo"})
    book = tmp_path / "workbook.xlsx"
    writer = {"SYNCQUEUE_WRITER": WORKBOOK_WRITER, "SYNCQUEUE_WORKBOOK_PATH": str(book)}
    page = browser.new_page(viewport={"width": 1280, "height": 900})

    log_in(page, dashboard)
    assert page.inner_text("#count-failed") == "1" and page.inner_text("#count-pending") == "1"
    page.screenshot(path=screenshots / "overview.png", full_page=True)
    # htmx refreshes the overview by itself: the new count arrives without a reload (no worker
    # yet, so nothing drains the queue meanwhile).
    queue.enqueue("UPDATE", "Operator", "op-7", {"name": "Bo Ek"})
    sync_api.expect(page.locator("#count-pending")).to_have_text("2", timeout=15_000)
    with celery_worker(tmp_path, writer):
        page.click("nav >> text=Failed")
        row = page.locator(f"#item-{item}")
        assert "SheetError: column 'status' is protected" in row.inner_text()
        page.screenshot(path=screenshots / "failed.png", full_page=True)
        row.locator("button[value=retry]").click()
        sync_api.expect(page.locator("h1")).to_have_text("Retry 1 FAILED item(s)?")
        page.screenshot(path=screenshots / "confirm.png", full_page=True)
        page.click("#confirm")
        sync_api.expect(page.locator(".notice")).to_have_text("1 FAILED item(s) back to PENDING.")

        page.click("nav >> text=Record")
        page.wait_for_url(f"{dashboard}record")
        page.fill("#model", "Request")
        page.fill("#record_id", "42")
        page.click("button:has-text('Find')")
        page.wait_for_url(f"{dashboard}record?model=Request&record_id=42")

        def written() -> bool:
            page.goto(f"{dashboard}record?model=Request&record_id=42")  # waits for the load
            return page.inner_text("#history tbody tr .status") == "COMPLETED"

        wait_until("the retried change to be written", written)
        page.screenshot(path=screenshots / "record.png", full_page=True)
    assert statuses([item]) == ["COMPLETED"]
    rows = openpyxl.load_workbook(book, read_only=True)["Request"].iter_rows(values_only=True)
    assert "42" in [row[0] for row in rows]
    for name in ("overview", "failed", "confirm", "record"):
        assert (screenshots / f"{name}.png").stat().st_size > 10_000


class _AttackerPage(BaseHTTPRequestHandler):
    """Serves a page of another origin whose form posts to the dashboard."""

    target = ""

    def do_GET(self) -> None:
        body = (
            f'<form method="post" action="{self.target}failed/confirm">'
            '<input name="csrf_token" value="guessed"><input name="scope" value="filter">'
            '<button name="action" value="discard">win a prize</button></form>'
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_posts_without_the_token_or_from_another_site_are_refused(
    browser: sync_api.Browser, dashboard: str, screenshots: Path
) -> None:
    [item] = park_failed(("Request", "1"))
    page = browser.new_page()
    log_in(page, dashboard)
    page.goto(f"{dashboard}failed")
    # A form whose CSRF token was removed: refused, nothing done.
    page.locator(f"#item-{item} input[name=csrf_token]").evaluate("input => input.remove()")
    page.locator(f"#item-{item} button[value=retry]").click()
    sync_api.expect(page.locator("body")).to_contain_text("Refused: missing or wrong CSRF token")
    page.screenshot(path=screenshots / "csrf-refused.png")
    assert statuses([item]) == ["FAILED"]

    # A page on another port (same site for cookies, another origin) posting to the dashboard.
    _AttackerPage.target = dashboard
    attacker = ThreadingHTTPServer(("127.0.0.1", 0), _AttackerPage)
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    try:
        page.goto(f"http://127.0.0.1:{attacker.server_port}/")
        page.click("button")
        page.wait_for_url(f"{dashboard}failed/confirm")
        sync_api.expect(page.locator("body")).to_contain_text("Refused: cross-site request")
    finally:
        attacker.shutdown()
        attacker.server_close()
    assert statuses([item]) == ["FAILED"]
