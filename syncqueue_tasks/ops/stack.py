"""``syncqueue run``: everything the queue needs, on a machine with nothing set up.

In order: an embedded PostgreSQL (when ``DATABASE_URL`` is unset; data in
``<data dir>/pgdata``, database ``syncqueue``), an embedded Redis (when ``CELERY_BROKER_URL``
is unset; a free 127.0.0.1 port), the migrations, a Celery worker, the one beat process,
Flower, and optionally the queue's metrics server (in this process). SIGINT / SIGTERM stop
all of it in reverse order, by pid, and nothing else. A second run reuses the data.

Locked down: the embedded Redis has a random password and no administrative commands
(``embedded.EmbeddedRedis``) and keeps its messages in an fsync-always append-only file;
Flower asks for a login (``FLOWER_BASIC_AUTH``, or a generated password printed once). The
URLs and the generated login are published only in owner-only files (``runstate``).
"""

from __future__ import annotations

import fcntl
import os
import secrets
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any

import psycopg
from sqlalchemy.engine import make_url

from syncqueue_tasks.core.errors import SyncQueueError, sanitize_error
from syncqueue_tasks.local import runstate
from syncqueue_tasks.local.supervise import Child, ChildError, RestartPolicy, Supervisor, port_open
from syncqueue_tasks.redis_client import get_redis
from syncqueue_tasks.settings import get_settings
from syncqueue_tasks.store import sql
from syncqueue_tasks.store.db import dispose_engine
from syncqueue_tasks.writers.loading import WORKBOOK, writer_spec

APP = "syncqueue_tasks.celery_app"
DATABASE = "syncqueue"
START_TIMEOUT = 90.0
FLOWER_USER = "admin"


class StackError(SyncQueueError):
    """The stack could not start (everything it had started is stopped again)."""


class _Interrupted(Exception):
    """SIGINT / SIGTERM arrived while starting."""


@dataclass(frozen=True)
class StackOptions:
    """What ``syncqueue run`` was asked for."""

    data_dir: Path
    flower_port: int = 5555
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    concurrency: int = 2
    restart: RestartPolicy = field(default_factory=RestartPolicy)


class Stack:
    """Starts the services in order, remembers how to stop each one, stops them in reverse."""

    def __init__(self, options: StackOptions, echo: Callable[[str], None] = print) -> None:
        self.options = options
        self.data = options.data_dir.absolute()
        self.echo = echo
        self.stop_requested = threading.Event()
        self._stops: list[tuple[str, Callable[[], None]]] = []
        self._supervisor = Supervisor(
            options.restart, echo, on_start=lambda child: self._record(child.name, child.pid)
        )
        self._flower_password: str | None = None  # generated: printed once, in the banner
        self._state = runstate.RunState(pid=os.getpid())
        self._lock: IO[str] | None = None
        self._signal: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start everything; on any failure stop what was started and raise."""
        self.data.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        self._warn_leftovers()
        self._state.info["data"] = str(self.data)
        self._start_database()
        self._check()
        self._start_broker()
        self._check()
        self._set_defaults()
        from syncqueue_tasks.store.schema import upgrade_head

        self.echo("migrating the database...")
        before, after = upgrade_head()
        if before != after:
            self.echo(f"migrated the database: {_revs(before)} -> {_revs(after)}")
        self._check()
        self._start_celery()
        self._start_dashboard()
        self._start_metrics()
        self._state.ready = True
        self._publish()
        self._banner()

    def wait(self) -> None:
        """Block until a stop is requested, restarting a child that exits, with backoff.

        Raises ``StackError`` when a child is given up on (``StackOptions.restart``: one that
        keeps exiting without ever staying up, e.g. a worker that cannot start at all).
        """
        while not self.stop_requested.wait(0.2):
            try:
                self._supervisor.check()
            except ChildError as exc:
                raise StackError(str(exc)) from None

    def stop(self) -> None:
        """Stop everything this stack started, newest first. Idempotent."""
        if self._stops and self._signal is not None:
            self.echo(f"{self._signal}: stopping...")
        while self._stops:
            name, stop = self._stops.pop()
            try:
                stop()
            except Exception as exc:
                self.echo(f"stopping {name} failed: {exc}")
            else:
                self.echo(f"stopped {name}")
        runstate.clear(self.data, os.getpid())
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def request_stop(self, signum: int, _frame: Any = None) -> None:
        """Signal handler: ask the stack to stop (safe to call repeatedly; prints nothing)."""
        self._signal = self._signal or signal.Signals(signum).name
        self.stop_requested.set()

    # -- steps -------------------------------------------------------------------------------

    def _take_lock(self) -> None:
        handle = open(self.data / "run.lock", "a")  # noqa: SIM115 - held until stop()
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            other = runstate.read_any(self.data)
            who = f" (pid {other.pid})" if other else ""
            raise StackError(f"another `syncqueue run`{who} is using {self.data}") from None
        self._lock = handle

    def _warn_leftovers(self) -> None:
        old = runstate.read_any(self.data)
        if old is None:
            return
        alive = {n: p for n, p in old.processes.items() if runstate.pid_alive(p)}
        if alive:
            listing = ", ".join(f"{n} {p}" for n, p in alive.items())
            self.echo(
                f"warning: a previous run (pid {old.pid}) did not stop cleanly; still running: "
                f"{listing}. Stop them with: kill -TERM -- -<pid>"
            )
        runstate.clear(self.data, old.pid)

    def _given(self, variable: str, service: str) -> bool:
        """Whether ``variable`` names a ``service`` to use rather than start (noted if so)."""
        given = os.environ.get(variable, "").strip()
        if given:
            self._state.info[service] = variable
            self._state.env[variable] = given  # for the CLI in another terminal
        return bool(given)

    def _start_database(self) -> None:
        if self._given("DATABASE_URL", "database"):
            return
        from syncqueue_tasks.local.embedded import EmbeddedPostgres

        pgdata = self.data / "pgdata"
        first = "" if (pgdata / "PG_VERSION").exists() else "; first run: creating the cluster"
        self.echo(f"starting PostgreSQL (embedded, data in {pgdata}{first})...")
        pg = EmbeddedPostgres(pgdata)
        self._stops.append(("postgres", pg.stop))
        pg.start()
        assert pg.pid is not None
        _create_database(pg.socket_dir, DATABASE)
        url = make_url(pg.url).set(database=DATABASE).render_as_string(hide_password=False)
        self._export("DATABASE_URL", url)
        self._record("postgres", pg.pid)
        self._state.info["database"] = f"embedded PostgreSQL, socket in {pg.socket_dir}"

    def _start_broker(self) -> None:
        if self._given("CELERY_BROKER_URL", "broker"):
            return
        from syncqueue_tasks.local.embedded import EmbeddedRedis

        workdir = self.data / "redis"
        self.echo(f"starting Redis (embedded, password-protected, data in {workdir})...")
        redis = EmbeddedRedis(data_dir=workdir, persistent=True)
        self._stops.append(("redis", redis.stop))
        redis.start()
        assert redis.pid is not None
        self._export("CELERY_BROKER_URL", redis.url)
        self._record("redis", redis.pid)
        self._state.info["broker"] = (
            f"embedded Redis {sanitize_error(redis.url)} (password in {self._env_file()};"
            " append-only file, fsync always)"
        )

    def _set_defaults(self) -> None:
        os.environ["SYNCQUEUE_DATA_DIR"] = str(self.data)
        if not os.environ.get("SYNCQUEUE_WORKBOOK_PATH", "").strip():
            self._export("SYNCQUEUE_WORKBOOK_PATH", str(self.data / "workbook.xlsx"))
        if not os.environ.get("CELERY_BEAT_SCHEDULE_FILE", "").strip():
            os.environ["CELERY_BEAT_SCHEDULE_FILE"] = str(self.data / "celerybeat-schedule")
        get_settings.cache_clear()
        get_redis.cache_clear()
        dispose_engine()
        settings = get_settings()
        spec = writer_spec(settings)
        self._state.info["writer"] = (
            f"workbook {Path(settings.destination.workbook_path).absolute()}"
            if spec == WORKBOOK
            else spec
        )

    def _start_celery(self) -> None:
        """Start worker, beat and Flower together, then wait until each is ready."""
        self.echo("starting the Celery worker, beat and Flower...")
        celery = [sys.executable, "-m", "celery", "-A", APP]
        port = self.options.flower_port
        if port_open(port):
            raise StackError(f"port {port} is in use: set SYNCQUEUE_FLOWER_PORT or --flower-port")
        logs = self.data / "logs"
        # FLOWER_BASIC_AUTH reaches Flower through the environment (not visible in ps).
        flower_env = {**os.environ, "FLOWER_BASIC_AUTH": self._flower_login()}
        specs: list[tuple[str, list[str], Mapping[str, str], Callable[[Child], bool]]] = [
            ("worker", ["worker", "--loglevel=INFO", f"--concurrency={self.options.concurrency}"],
             os.environ, lambda c: "ready." in c.log_text()),
            ("beat", ["beat", "--loglevel=INFO"], os.environ,
             lambda c: "beat: Starting" in c.log_text()),
            ("flower", ["flower", f"--port={port}", "--address=127.0.0.1"], flower_env,
             lambda c: port_open(port)),
        ]  # fmt: skip
        waits = []
        for name, args, env, ready in specs:
            child = Child(name, [*celery, *args], env, logs / f"{name}.log")
            self.adopt(child)
            waits.append((child, partial(ready, child)))
        for child, is_ready in waits:
            child.wait_until(is_ready, START_TIMEOUT, self.stop_requested.is_set)
            self._check()
        self._state.info["flower"] = f"http://127.0.0.1:{port}"
        self._state.info["logs"] = str(logs)

    def adopt(self, child: Child) -> None:
        """Start ``child``; from now on ``wait`` restarts it and ``stop`` stops it."""
        self._stops.append((child.name, child.stop))
        self._supervisor.adopt(child)

    def _flower_login(self) -> str:
        """``FLOWER_BASIC_AUTH``, or a generated ``admin:<password>``, published 0600."""
        given = os.environ.get("FLOWER_BASIC_AUTH", "").strip()
        if given:
            self._state.info["flower_login"] = "from FLOWER_BASIC_AUTH"
            return given
        self._flower_password = secrets.token_urlsafe(18)
        login = f"{FLOWER_USER}:{self._flower_password}"
        self._state.env["FLOWER_BASIC_AUTH"] = login
        self._state.info["flower_login"] = f"user {FLOWER_USER}, password in {self._env_file()}"
        self._publish()
        return login

    def _start_dashboard(self) -> None:
        """The queue dashboard, a child like Flower, behind a login (password printed once)."""
        from syncqueue_tasks.dashboard.auth import generate_password

        port, password = get_settings().dashboard.port, get_settings().dashboard.password
        if port_open(port):
            raise StackError(f"port {port} is in use: set SYNCQUEUE_DASHBOARD_PORT")
        generated = "" if password else generate_password()
        # The password reaches it through the environment (not argv, so not visible in ps).
        env = {**os.environ, "SYNCQUEUE_DASHBOARD_PASSWORD": password or generated}
        args = [sys.executable, "-m", "syncqueue_tasks.ops.cli", "dashboard", f"--port={port}"]
        child = Child("dashboard", args, env, self.data / "logs" / "dashboard.log")
        self.adopt(child)
        child.wait_until(lambda: port_open(port), START_TIMEOUT, self.stop_requested.is_set)
        self._check()
        self._state.info["dashboard"] = url = f"http://127.0.0.1:{port}/"
        shown = generated or "the one in SYNCQUEUE_DASHBOARD_PASSWORD"
        self.echo(f"dashboard  {url}  (queue dashboard; password: {shown})")

    def _start_metrics(self) -> None:
        port = self.options.metrics_port
        if port is None:
            return
        from syncqueue_tasks.ops.metrics import serve

        host = self.options.metrics_host
        try:
            server = serve(port, host)
        except OSError as exc:
            raise StackError(f"metrics: cannot listen on {host}:{port}: {exc.strerror}") from None

        def stop_metrics() -> None:
            server.shutdown()
            server.server_close()

        self._stops.append(("metrics", stop_metrics))
        self._state.info["metrics"] = f"http://{host}:{server.server_port}/metrics"

    # -- helpers -----------------------------------------------------------------------------

    def _check(self) -> None:
        if self.stop_requested.is_set():
            raise _Interrupted

    def _export(self, key: str, value: str) -> None:
        """Set ``key`` for this process and its children, and publish it for the CLI."""
        os.environ[key] = value
        self._state.env[key] = value
        self._publish()

    def _record(self, name: str, pid: int | None) -> None:
        assert pid is not None
        self._state.processes[name] = pid
        self._publish()

    def _env_file(self) -> Path:
        return self.data / runstate.ENV_FILE

    def _publish(self) -> None:
        runstate.write(self._state, self.data)

    def _banner(self) -> None:
        info, procs = self._state.info, self._state.processes
        cli = runstate.cli_command()
        if self._flower_password is not None:
            login = f"user {FLOWER_USER}, password {self._flower_password}  (shown once; in env)"
        else:
            login = info["flower_login"]
        lines = [
            "",
            "syncqueue is running. Ctrl-C stops everything it started.",
            f"  data       {self.data}  (logs in {info['logs']})",
            f"  database   {info['database']}",
            f"  broker     {info['broker']}",
            f"  writer     {info['writer']}",
            f"  flower     {info['flower']}  (Celery workers and tasks; its /metrics is Celery's)",
            f"             login: {login}",
            f"  metrics    {info.get('metrics', 'off (set SYNCQUEUE_METRICS_PORT)')}",
            "  pids       " + ", ".join(f"{name} {pid}" for name, pid in procs.items()),
            f"  env        {self._env_file()}  (URLs and passwords, mode 0600)",
            "",
            f"Enqueue a change from another terminal{self._where()}:",
            f"""  {cli} enqueue CREATE Request 42 --payload '{{"name": "Ann"}}'""",
            f"  {cli} stats",
            f"or from Python, with the variables of {self._env_file()} set",
            f"(set -a; . {self._env_file()}; set +a):",
            "  from syncqueue_tasks.celery.tasks import enqueue_change",
            """  enqueue_change.delay("CREATE", "Request", 42, {"name": "Ann"})""",
            "",
            f"syncqueue ready (pid {os.getpid()})",
        ]
        self.echo("\n".join(lines))

    def _where(self) -> str:
        """Where the hint's command finds this stack (``./syncq`` works from any folder)."""
        folder = "" if os.environ.get(runstate.CLI_ENV, "").strip() else " in this folder"
        if self.data == Path.cwd() / runstate.DEFAULT_DATA_DIR:
            return folder
        return f"{folder}, with {runstate.DATA_DIR_ENV}={self.data}"


def run(options: StackOptions, echo: Callable[[str], None] = print) -> None:
    """Start the stack, wait for SIGINT / SIGTERM, stop it. Raises ``StackError`` on failure."""
    stack = Stack(options, echo)
    previous = {
        sig: signal.signal(sig, stack.request_stop) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        stack.start()
        stack.wait()
    except _Interrupted:
        pass
    finally:
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    echo("syncqueue stopped")


def _create_database(socket_dir: Path, name: str) -> None:
    """Create database ``name`` on the embedded server unless it exists."""
    with psycopg.connect(
        host=str(socket_dir), user="postgres", dbname="postgres", autocommit=True
    ) as conn:
        if conn.execute(sql.DATABASE_EXISTS, (name,)).fetchone():
            return
        conn.execute(f'CREATE DATABASE "{name}"')


def _revs(revisions: tuple[str, ...]) -> str:
    return ",".join(revisions) or "empty"
