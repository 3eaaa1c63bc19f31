"""``syncqueue run`` end to end, on embedded PostgreSQL and Redis that it starts and stops.

DATABASE_URL and CELERY_BROKER_URL are removed from its environment (and from the CLI's), so
the stack starts its own servers and the CLI finds them through ``<data dir>/run.json``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import openpyxl
import pytest
import redis
from processes import child_env

from syncqueue_tasks.local import runstate
from syncqueue_tasks.local.embedded import PG_SYSTEM_USER, free_port
from syncqueue_tasks.local.supervise import Child, RestartPolicy
from syncqueue_tasks.ops.stack import Stack, StackError, StackOptions
from syncqueue_tasks.store.schema import head_revisions

pytestmark = pytest.mark.timeout(240)

_SCRIPT = Path(sys.executable).parent / "syncqueue"
SYNCQUEUE = (
    [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "syncqueue_tasks.ops.cli"]
)
_UNSET = (
    "DATABASE_URL", "CELERY_BROKER_URL", "SYNCQUEUE_REDIS_URL", "SYNCQUEUE_WRITER",
    "SYNCQUEUE_JSONL_PATH", "SYNCQUEUE_WORKBOOK_PATH", "CELERY_BEAT_SCHEDULE_FILE",
    "FLOWER_BASIC_AUTH", runstate.CLI_ENV,
)  # fmt: skip


def _env(data: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in child_env().items() if k not in _UNSET}
    return {**env, "SYNCQUEUE_DATA_DIR": str(data), **extra}


def _group_alive(pgid: int) -> list[int]:
    """Live (non-zombie) members of process group ``pgid``."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                alive.append(int(stat.parent.name))
    return alive


def _wait_for(what: str, check: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _get(url: str, login: str | None = None) -> str:
    request = urllib.request.Request(url)
    if login is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(login.encode()).decode())
    with urllib.request.urlopen(request, timeout=5) as response:
        return str(response.read().decode())


def _status(url: str, login: str | None = None) -> int:
    try:
        _get(url, login)
    except urllib.error.HTTPError as exc:
        return exc.code
    return 200


def _uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


def _check_locked_down(data: Path, state: runstate.RunState, output: str, flower: int) -> str:
    """The first run's security, checked from outside; return Flower's generated login."""
    for name in (runstate.STATE_FILE, runstate.ENV_FILE):
        assert (data / name).stat().st_mode & 0o077 == 0, name
    url = state.env["CELERY_BROKER_URL"]
    password = redis.connection.parse_url(url)["password"]
    assert len(password) >= 24 and password not in output  # printed nowhere
    assert f"CELERY_BROKER_URL={url}" in (data / runstate.ENV_FILE).read_text()
    port = redis.connection.parse_url(url)["port"]
    anonymous = redis.Redis(host="127.0.0.1", port=port, protocol=2)
    client = redis.Redis.from_url(url)
    try:
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        with pytest.raises(redis.ResponseError, match="unknown command"):
            client.config_set("dir", "/tmp")
    finally:
        anonymous.close()
        client.close()
    if os.geteuid() == 0:
        assert _uid_of(state.processes["redis"]) == pwd.getpwnam(PG_SYSTEM_USER).pw_uid

    login = state.env["FLOWER_BASIC_AUTH"]
    user, _, secret = login.partition(":")
    assert f"login: user {user}, password {secret}  (shown once" in output
    assert output.count(secret) == 1
    assert _status(f"http://127.0.0.1:{flower}/") == 401
    assert _status(f"http://127.0.0.1:{flower}/api/workers") == 401
    assert _status(f"http://127.0.0.1:{flower}/", f"{user}:wrong") == 401
    assert _status(f"http://127.0.0.1:{flower}/", login) == 200
    return login


class Run:
    """One ``syncqueue run`` subprocess in its own session, its output in a file."""

    def __init__(self, cwd: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*SYNCQUEUE, "run"], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, f"syncqueue run exited:\n{self.output()[-3000:]}"
            return f"syncqueue ready (pid {self.proc.pid})" in self.output()

        _wait_for("the ready banner", ready, timeout)


def _stop_and_check(run: Run, data: Path, pids: dict[str, int]) -> None:
    run.proc.send_signal(signal.SIGINT)  # what Ctrl-C does
    assert run.proc.wait(90) == 0, run.output()[-3000:]
    assert run.output().rstrip().endswith("syncqueue stopped")
    for name, pid in pids.items():
        assert not _group_alive(pid), f"{name} (pid {pid}) left processes behind"
    assert not _group_alive(run.proc.pid)
    assert not (data / runstate.STATE_FILE).exists() and not (data / runstate.ENV_FILE).exists()


@pytest.mark.system
def test_run_starts_everything_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    flower, metrics, dashboard = free_port(), free_port(), str(free_port())
    env = _env(data, SYNCQUEUE_FLOWER_PORT=str(flower), SYNCQUEUE_METRICS_PORT=str(metrics))
    env["SYNCQUEUE_DASHBOARD_PORT"] = dashboard
    seen: dict[str, int] = {}
    runs: list[Run] = []
    try:
        # First run: initdb, migrations, worker, beat, Flower, metrics.
        run = Run(tmp_path, env, tmp_path / "run1.log")
        runs.append(run)
        run.wait_ready()
        state = runstate.read_live(data)
        assert state is not None and state.pid == run.proc.pid and state.ready
        pids = state.processes
        seen.update(pids)
        assert set(pids) == {"postgres", "redis", "worker", "beat", "flower", "dashboard"}
        assert all(runstate.pid_alive(p) for p in pids.values())
        output = run.output()
        steps = [
            "starting PostgreSQL (embedded, data in ", "first run: creating the cluster)",
            "starting Redis (embedded, password-protected", "migrating the database...",
            f"migrated the database: empty -> {head_revisions()[0]}",
            "starting the Celery worker, beat and Flower",
            "syncqueue is running",
        ]  # fmt: skip
        at = [output.find(step) for step in steps]
        assert -1 not in at and at == sorted(at), output
        assert state.env["DATABASE_URL"].startswith("postgresql+psycopg://postgres@/syncqueue?")
        assert _get(f"http://127.0.0.1:{flower}/healthcheck") == "OK"  # open, says only OK
        _check_locked_down(data, state, output, flower)
        kept = redis.Redis.from_url(state.env["CELERY_BROKER_URL"])
        kept.set("syncqueue-test-kept", "across runs")
        kept.close()

        # The banner's own hint, run from the same folder with nothing set, finds the
        # embedded servers (the CLI is not on PATH here: the hint gives its path).
        cli_env = _env(data)
        [hint] = [line for line in output.splitlines() if " enqueue CREATE Request 42" in line]
        assert shlex.split(hint)[0] == SYNCQUEUE[0] != "syncqueue"
        enqueued = subprocess.run(
            shlex.split(hint), cwd=tmp_path, env=cli_env, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert enqueued.returncode == 0, enqueued.stderr
        assert re.fullmatch(r"[0-9A-Z]{26}", enqueued.stdout.strip())
        assert "Note:" not in enqueued.stderr  # it found the stack: no default-database note

        book = data / "workbook.xlsx"

        def in_workbook() -> bool:
            if not book.exists():
                return False
            sheet = openpyxl.load_workbook(book, read_only=True)["Request"]
            return ("42", "Ann") in [tuple(r) for r in sheet.iter_rows(values_only=True)]

        _wait_for("the change in the workbook", in_workbook, 45)
        scraped = _get(f"http://127.0.0.1:{metrics}/metrics")
        assert 'syncqueue_items{status="COMPLETED"} 1.0' in scraped

        # A worker that dies is restarted, as a supervisor would, and work goes on.
        killed = pids["worker"]
        os.killpg(killed, signal.SIGKILL)

        def restarted() -> bool:
            live = runstate.read_live(data)
            return live is not None and live.processes["worker"] != killed

        _wait_for("the worker to be restarted", restarted, 30)
        assert re.search(
            rf"worker \(pid {killed}\) exited with code -9 after [0-9.]+s; restarting it in 1s "
            r"\(exit 1 in a row;",
            run.output(),
        )  # fmt: skip
        assert re.search(r"restarted worker \(pid \d+\)", run.output())
        assert not _group_alive(killed)
        state = runstate.read_live(data)
        assert state is not None
        pids = state.processes
        seen["worker-restarted"] = pids["worker"]
        again = subprocess.run(
            [*SYNCQUEUE, "enqueue", "UPDATE", "Request", "42", "--payload", '{"name": "Bo"}'],
            cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert again.returncode == 0, again.stderr

        def updated() -> bool:
            sheet = openpyxl.load_workbook(book, read_only=True)["Request"]
            return ("42", "Bo") in [tuple(r) for r in sheet.iter_rows(values_only=True)]

        _wait_for("the update from the restarted worker", updated, 60)

        _stop_and_check(run, data, pids)

        # Second run: same data, nothing to migrate, the completed changes are still there;
        # the broker kept its data (append-only file); Flower takes the login it is given.
        given = "ops:given-secret"
        env2 = _env(
            data,
            SYNCQUEUE_FLOWER_PORT=str(flower),
            FLOWER_BASIC_AUTH=given,
            SYNCQUEUE_DASHBOARD_PORT=dashboard,
        )
        run = Run(tmp_path, env2, tmp_path / "run2.log")
        runs.append(run)
        run.wait_ready()
        state = runstate.read_live(data)
        assert state is not None
        seen.update({f"{k}2": v for k, v in state.processes.items()})
        assert "migrated" not in run.output() and "first run" not in run.output()
        kept = redis.Redis.from_url(state.env["CELERY_BROKER_URL"])  # new password and port
        assert kept.get("syncqueue-test-kept") == b"across runs"
        kept.close()
        assert "login: from FLOWER_BASIC_AUTH" in run.output()
        assert "FLOWER_BASIC_AUTH" not in state.env and "given-secret" not in run.output()
        assert _status(f"http://127.0.0.1:{flower}/") == 401
        assert _status(f"http://127.0.0.1:{flower}/", given) == 200
        stats = subprocess.run(
            [*SYNCQUEUE, "stats", "--json"],
            cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert stats.returncode == 0, stats.stderr
        assert json.loads(stats.stdout)["completed"] == 2
        _stop_and_check(run, data, state.processes)
    finally:
        for run in runs:
            if run.proc.poll() is None:
                os.killpg(run.proc.pid, signal.SIGKILL)
                run.proc.wait(10)
        for pid in seen.values():
            if _group_alive(pid):
                os.killpg(pid, signal.SIGKILL)
        shutil.rmtree(tmp_path / "data", ignore_errors=True)


@pytest.mark.unit
def test_cli_uses_the_env_of_a_live_run_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SYNCQUEUE_TEST_ONLY", raising=False)
    monkeypatch.setenv("SYNCQUEUE_TEST_SET", "mine")
    env = {"SYNCQUEUE_TEST_ONLY": "from-run", "SYNCQUEUE_TEST_SET": "from-run"}
    runstate.write(runstate.RunState(pid=2**22 + 1, env=env), tmp_path)  # above pid_max
    assert runstate.apply_env(tmp_path) == {}  # no such process: stale files are ignored

    runstate.write(runstate.RunState(pid=os.getpid(), env=env), tmp_path)
    assert runstate.apply_env(tmp_path) == {"SYNCQUEUE_TEST_ONLY": "from-run"}
    assert os.environ["SYNCQUEUE_TEST_SET"] == "mine"  # what is set wins
    assert "SYNCQUEUE_TEST_ONLY=from-run" in (tmp_path / runstate.ENV_FILE).read_text()
    assert (tmp_path / runstate.STATE_FILE).stat().st_mode & 0o077 == 0
    runstate.clear(tmp_path, os.getpid())
    assert not (tmp_path / runstate.STATE_FILE).exists()
    monkeypatch.delenv("SYNCQUEUE_TEST_ONLY")


def _supervised(
    tmp_path: Path,
    policy: RestartPolicy,
    code: str,
    stop_when: Callable[[list[tuple[float, str]]], bool] = lambda _: False,
) -> tuple[Stack, Child, list[tuple[float, str]]]:
    """A stack supervising one child that runs ``code``; the lines it says, with their times.

    ``stop_when(lines)`` true after a line: the stack is asked to stop."""
    lines: list[tuple[float, str]] = []

    def echo(line: str) -> None:
        lines.append((time.monotonic(), line))
        if stop_when(lines):
            stack.stop_requested.set()

    stack = Stack(StackOptions(data_dir=tmp_path, restart=policy), echo=echo)
    child = Child("crashing", [sys.executable, "-c", code], os.environ, tmp_path / "child.log")
    stack.adopt(child)
    return stack, child, lines


def _delay(line: str) -> float | None:
    match = re.search(r"restarting it in (\S+)s", line)
    return None if match is None else float(match.group(1))


@pytest.mark.unit
def test_a_child_that_keeps_exiting_is_restarted_with_backoff_then_given_up_on(
    tmp_path: Path,
) -> None:
    policy = RestartPolicy(first_delay=0.2, max_delay=0.5, stable_after=30, give_up_after=5)
    stack, crashing, lines = _supervised(tmp_path, policy, "raise SystemExit(3)")
    try:
        with pytest.raises(
            StackError,
            match=r"crashing \(pid \d+\) exited with code 3 after [0-9.]+s: 5 exits in a row, "
            r"none after staying up 30s; giving up on it",
        ):
            stack.wait()  # restarts it 4 times, each later than the one before, then gives up
    finally:
        stack.stop()
    assert crashing.returncode() == 3
    exits = [(t, line) for t, line in lines if _delay(line) is not None]
    starts = [t for t, line in lines if line.startswith("restarted crashing (pid ")]
    assert [_delay(line) for _, line in exits] == [0.2, 0.4, 0.5, 0.5]  # doubled, capped
    assert len(starts) == 4
    for n, ((exited, line), started) in enumerate(zip(exits, starts, strict=True), start=1):
        assert f"(exit {n} in a row;" in line
        assert started - exited >= (_delay(line) or 0) - 0.01  # it did wait


@pytest.mark.unit
def test_a_child_that_stays_up_starts_its_backoff_over(tmp_path: Path) -> None:
    """Each run lasts longer than ``stable_after``: every exit is the first in a row, so it is
    restarted after the first delay, for ever, although ``give_up_after`` is 2."""
    policy = RestartPolicy(first_delay=0.1, max_delay=5, stable_after=0.5, give_up_after=2)
    stack, _child, lines = _supervised(
        tmp_path, policy, "import time; time.sleep(0.8); raise SystemExit(4)",
        stop_when=lambda seen: sum("restarted crashing" in line for _, line in seen) == 4,
    )  # fmt: skip
    try:
        stack.wait()  # returns: the stop was requested, nothing was given up on
    finally:
        stack.stop()
    exits = [line for _, line in lines if _delay(line) is not None]
    assert [_delay(line) for line in exits] == [0.1] * 4
    assert all("(exit 1 in a row;" in line for line in exits)
