"""``syncqueue dashboard`` and ``syncqueue run`` serving it: real uvicorn processes, real HTTP."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import httpx2
import pytest
from processes import ROOT, child_env
from test_run import Run

from syncqueue_tasks.dashboard.auth import LOGIN_FAILURES_ALLOWED
from syncqueue_tasks.local import runstate
from syncqueue_tasks.local.embedded import free_port
from syncqueue_tasks.local.supervise import group_members

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]

CLI = [sys.executable, "-m", "syncqueue_tasks.ops.cli"]
LISTENING = re.compile(r"Dashboard on (http://127\.0\.0\.1:\d+/)")
GENERATED = re.compile(r"Password \(generated for this run; [^)]*\): (\S+)")


@dataclass
class DashboardProcess:
    """A ``syncqueue dashboard`` subprocess in its own process group."""

    proc: subprocess.Popen[bytes]
    log: Path
    url: str = ""

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def dashboard_process(tmp_path: Path, env: dict[str, str]) -> Iterator[DashboardProcess]:
    """Start ``syncqueue dashboard --port 0``; wait until it listens; stop it by pid."""
    log = tmp_path / f"dashboard-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*CLI, "dashboard", "--port", "0"], cwd=ROOT, env=child_env(env),
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    dashboard = DashboardProcess(proc, log)
    try:
        deadline = time.monotonic() + 60
        while not (match := LISTENING.search(dashboard.output())):
            assert proc.poll() is None, f"dashboard exited:\n{dashboard.output()[-3000:]}"
            assert time.monotonic() < deadline, dashboard.output()[-3000:]
            time.sleep(0.1)
        dashboard.url = match.group(1)
        yield dashboard
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process, then SIGKILL whatever is left of its process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(15)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(5)


def browser_like(url: str) -> httpx2.Client:
    """An HTTP client of the dashboard at ``url`` sending its Origin, as a browser does."""
    return httpx2.Client(base_url=url, headers={"Origin": url.rstrip("/")}, timeout=10)


def http_login(web: httpx2.Client, password: str) -> int:
    """Log in through the login form; return the status code of the answer."""
    form = web.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token, form.text
    return web.post("/login", data={"csrf_token": token.group(1), "password": password}).status_code


def test_dashboard_command_prints_a_generated_password_once_and_asks_for_it(
    db: None, tmp_path: Path
) -> None:
    env = {"SYNCQUEUE_DASHBOARD_PASSWORD": ""}
    with dashboard_process(tmp_path, env) as dashboard:
        match = GENERATED.search(dashboard.output())
        assert match, dashboard.output()
        password = match.group(1)
        anonymous = httpx2.get(dashboard.url, timeout=10)
        assert anonymous.status_code == 303
        assert anonymous.headers["location"].startswith("/login")
        with browser_like(dashboard.url) as web:
            assert http_login(web, "not it") == 401
            assert http_login(web, password) == 303
            overview = web.get("/")
            assert overview.status_code == 200 and 'id="overview"' in overview.text
            htmx = web.get("/static/htmx.min.js")
            assert htmx.status_code == 200 and htmx.text.startswith("/*! htmx 2.")
        dashboard.proc.send_signal(signal.SIGTERM)  # uvicorn shuts down, then re-raises it
        assert dashboard.proc.wait(15) in (0, -signal.SIGTERM)
    output = dashboard.output()
    assert output.count(password) == 1, output  # printed once; never logged again
    assert "failed login from 127.0.0.1" in output


def test_dashboard_command_with_a_set_password_prints_none(db: None, tmp_path: Path) -> None:
    with dashboard_process(tmp_path, {"SYNCQUEUE_DASHBOARD_PASSWORD": "s3t-by-me"}) as dashboard:
        with browser_like(dashboard.url) as web:
            assert http_login(web, "s3t-by-me") == 303
        assert "Password" not in dashboard.output() and "s3t-by-me" not in dashboard.output()


def test_a_forged_x_forwarded_for_does_not_escape_the_login_limit(db: None, tmp_path: Path) -> None:
    with dashboard_process(tmp_path, {"SYNCQUEUE_DASHBOARD_PASSWORD": "pw"}) as dashboard:
        for n in range(LOGIN_FAILURES_ALLOWED):
            with browser_like(dashboard.url) as web:
                web.headers["X-Forwarded-For"] = f"203.0.113.{n}"
                assert http_login(web, "guess") == 401
        with browser_like(dashboard.url) as web:
            web.headers["X-Forwarded-For"] = "198.51.100.1"
            assert http_login(web, "pw") == 429


def test_dashboard_command_on_a_busy_port_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [*CLI, "dashboard", "--port", str(port)],
            env=child_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"
        " (set SYNCQUEUE_DASHBOARD_PORT or --port)"
    ]


def test_syncqueue_run_serves_the_dashboard_behind_a_login(db: None, tmp_path: Path) -> None:
    port = free_port()
    env = child_env(
        {
            "SYNCQUEUE_DATA_DIR": str(tmp_path / "data"),
            "SYNCQUEUE_FLOWER_PORT": str(free_port()),
            "SYNCQUEUE_DASHBOARD_PORT": str(port),
            "SYNCQUEUE_DASHBOARD_PASSWORD": "",
            "SYNCQUEUE_WORKBOOK_PATH": str(tmp_path / "workbook.xlsx"),
        }
    )
    run = Run(tmp_path, env, tmp_path / "run.log")
    children: dict[str, int] = {}
    try:
        run.wait_ready()
        state = runstate.read_live(tmp_path / "data")
        assert state is not None and "dashboard" in state.processes
        children = state.processes
        line = re.search(
            rf"dashboard  http://127\.0\.0\.1:{port}/  \(queue dashboard; password: (\S+)\)",
            run.output(),
        )
        assert line, run.output()
        url = f"http://127.0.0.1:{port}/"
        anonymous = httpx2.get(url, timeout=10)
        assert anonymous.status_code == 303
        assert anonymous.headers["location"].startswith("/login")
        with browser_like(url) as web:
            assert http_login(web, line.group(1)) == 303
        dashboard_log = (tmp_path / "data" / "logs" / "dashboard.log").read_text()
        assert line.group(1) not in dashboard_log  # printed by the run only, not logged
        run.proc.send_signal(signal.SIGINT)
        assert run.proc.wait(90) == 0, run.output()[-3000:]
        assert "stopped dashboard" in run.output()
        with pytest.raises(httpx2.ConnectError):
            httpx2.get(url, timeout=5)
    finally:
        for pid in [run.proc.pid, *children.values()]:
            with suppress(ProcessLookupError):
                if group_members(pid):
                    os.killpg(pid, signal.SIGKILL)
        run.proc.wait(10)
    assert not group_members(children["dashboard"])


def test_every_asset_ships_in_the_wheel_and_nothing_loads_from_elsewhere() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    package = ROOT / "syncqueue_tasks" / "dashboard"
    for folder in ("templates", "static"):
        name = f"syncqueue_tasks.dashboard.{folder}"
        assert name in config["packages"]
        patterns = config["package-data"][name]
        assets = [p.name for p in (package / folder).iterdir() if p.name != "__pycache__"]
        assert all(any(fnmatch(a, pattern) for pattern in patterns) for a in assets), assets
    assert {"htmx.min.js", "htmx.LICENSE"} <= {p.name for p in (package / "static").iterdir()}
    for template in (package / "templates").glob("*.html"):
        links = re.findall(r'(?:src|href|action)="([^"]*)"', template.read_text())
        assert all(link.startswith("/") for link in links), (template.name, links)
    assert (package / "static" / "htmx.min.js").read_text().startswith("/*! htmx 2.0.11")
