"""``syncqueue run`` end to end, on embedded PostgreSQL and Redis that it starts and stops.

DATABASE_URL and CELERY_BROKER_URL are removed from its environment (and from the CLI's), so
the stack starts its own servers and the CLI finds them through ``<data dir>/run.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openpyxl
import pytest
from processes import child_env

from syncqueue_tasks import runstate
from syncqueue_tasks.embedded import free_port
from syncqueue_tasks.stack import RESTART_LIMIT, Stack, StackError, StackOptions
from syncqueue_tasks.supervise import Child

pytestmark = pytest.mark.timeout(240)

_SCRIPT = Path(sys.executable).parent / "syncqueue"
SYNCQUEUE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "syncqueue_tasks.cli"]
_UNSET = (
    "DATABASE_URL", "CELERY_BROKER_URL", "SYNCQUEUE_REDIS_URL", "SYNCQUEUE_WRITER",
    "SYNCQUEUE_JSONL_PATH", "SYNCQUEUE_WORKBOOK_PATH", "CELERY_BEAT_SCHEDULE_FILE",
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


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


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
        assert "migrated the database: empty -> 0003" in run.output()
        assert state.env["DATABASE_URL"].startswith("postgresql+psycopg://postgres@/syncqueue?")
        assert _get(f"http://127.0.0.1:{flower}/healthcheck") == "OK"

        # The CLI, run from the same folder with nothing set, finds the embedded servers.
        cli_env = _env(data)
        enqueued = subprocess.run(
            [*SYNCQUEUE, "enqueue", "CREATE", "Request", "42", "--payload", '{"name": "Ann"}'],
            cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert enqueued.returncode == 0, enqueued.stderr
        assert re.fullmatch(r"[0-9A-Z]{26}", enqueued.stdout.strip())

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
        assert f"worker (pid {killed}) exited with code -9; restarting it" in run.output()
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

        # Second run: same data, nothing to migrate, the completed changes are still there.
        env2 = _env(data, SYNCQUEUE_FLOWER_PORT=str(flower), SYNCQUEUE_DASHBOARD_PORT=dashboard)
        run = Run(tmp_path, env2, tmp_path / "run2.log")
        runs.append(run)
        run.wait_ready()
        state = runstate.read_live(data)
        assert state is not None
        seen.update({f"{k}2": v for k, v in state.processes.items()})
        assert "migrated" not in run.output()
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


def test_a_child_that_keeps_exiting_is_given_up_on(tmp_path: Path) -> None:
    stack = Stack(StackOptions(data_dir=tmp_path), echo=lambda _: None)
    crashing = Child("crashing", [sys.executable, "-c", "raise SystemExit(3)"], os.environ,
                     tmp_path / "crashing.log")  # fmt: skip
    stack.adopt(crashing)
    try:
        with pytest.raises(StackError, match=rf"crashing exited {RESTART_LIMIT + 1} times"):
            stack.wait()  # restarts it RESTART_LIMIT times, then gives up
    finally:
        stack.stop()
    assert crashing.returncode() == 3
