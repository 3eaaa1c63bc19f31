"""Real Celery worker and beat subprocesses for tests, each stopped by its pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
PACKAGE_APP = "syncqueue_tasks.celery_app"


def child_env(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment (DATABASE_URL, broker, queue...) plus ``overrides``.

    ``tests/`` is on PYTHONPATH so that workers can load the test writers.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH", "")]))
    env.update(overrides or {})
    return env


class CeleryProcess:
    """A ``celery worker`` or ``celery beat`` of ``app`` (default: the package's), started in
    its own session (process group)."""

    def __init__(
        self, args: list[str], env: dict[str, str], log_path: Path, app: str = PACKAGE_APP
    ) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", app, *args],
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        """The main process's pid (also the process group's id)."""
        return self.proc.pid

    def log(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 30) -> None:
        """Wait until ``text`` appears in the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"celery exited early:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"{text!r} not seen in {timeout}s:\n{self.log()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the whole process group (the worker and its pool children)."""
        with suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM (warm shutdown), then SIGKILL the group if it is still there."""
        self.kill(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        self.kill(signal.SIGKILL)
        self.proc.wait(5)
        self._log.close()


def worker_args(name: str, concurrency: int, pool: str = "prefork") -> list[str]:
    """``celery worker`` arguments for a test or bench worker named ``name``."""
    return [
        "worker",
        "--loglevel=INFO",
        f"--concurrency={concurrency}",
        f"--pool={pool}",
        f"--hostname={name}@%h",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]


@contextmanager
def celery_worker(
    tmp_path: Path,
    env: Mapping[str, str] | None = None,
    *,
    concurrency: int = 1,
    pool: str = "prefork",
    app: str = PACKAGE_APP,
    queue: str | None = None,
) -> Iterator[CeleryProcess]:
    """A real worker of ``app`` consuming the test queue (or ``queue``); stopped (group-killed)
    on exit."""
    name = f"w{uuid.uuid4().hex[:6]}"
    proc = CeleryProcess(
        [*worker_args(name, concurrency, pool), *([f"--queues={queue}"] if queue else [])],
        child_env(env),
        tmp_path / f"{name}.log",
        app,
    )
    try:
        proc.wait_for("ready.", timeout=60)
        yield proc
    finally:
        proc.stop()


@contextmanager
def celery_beat(tmp_path: Path, env: Mapping[str, str] | None = None) -> Iterator[CeleryProcess]:
    """A real beat process with its schedule file in ``tmp_path``; stopped on exit."""
    overrides = {"CELERY_BEAT_SCHEDULE_FILE": str(tmp_path / "beat-schedule"), **(env or {})}
    proc = CeleryProcess(["beat", "--loglevel=INFO"], child_env(overrides), tmp_path / "beat.log")
    try:
        proc.wait_for("beat: Starting", timeout=30)
        yield proc
    finally:
        proc.stop()
