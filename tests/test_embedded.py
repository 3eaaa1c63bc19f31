"""The private PostgreSQL and Redis servers: start, keep data, restart, stop by pid."""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from kombu import Connection

from syncqueue_tasks.local.embedded import (
    PG_SYSTEM_USER,
    REDIS_DISABLED_COMMANDS,
    EmbeddedPostgres,
    EmbeddedRedis,
    free_port,
)

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path / "pgdata", port=free_port())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def rds() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis()
    try:
        yield server
    finally:
        server.stop()


def _socket_conn(server: EmbeddedPostgres) -> psycopg.Connection:
    return psycopg.connect(
        host=str(server.socket_dir), port=server.port, user="postgres", dbname="postgres"
    )


def test_postgres_keeps_data_across_stop_start_and_restart(pg: EmbeddedPostgres) -> None:
    pg.start()
    first_pid = pg.pid
    assert first_pid is not None and _alive(first_pid)
    pg.start()  # idempotent
    assert pg.pid == first_pid
    assert pg.url.startswith("postgresql+psycopg://postgres@/postgres?host=")

    with _socket_conn(pg) as conn:
        conn.execute("CREATE TABLE kept (id int PRIMARY KEY)")
        conn.execute("INSERT INTO kept VALUES (1), (2)")
    with psycopg.connect(host="127.0.0.1", port=pg.port, user="postgres", dbname="postgres") as c:
        assert c.execute("SELECT count(*) FROM kept").fetchone() == (2,)

    pg.stop()
    assert pg.pid is None and not _alive(first_pid)
    assert not _port_open(pg.port or 0)
    pg.stop()  # idempotent

    pg.start()  # reuses the data dir, no initdb
    with _socket_conn(pg) as conn:
        assert conn.execute("SELECT count(*) FROM kept").fetchone() == (2,)

    before = pg.pid
    pg.restart()
    assert pg.pid is not None and pg.pid != before and before is not None and not _alive(before)
    with psycopg.connect(host="127.0.0.1", port=pg.port, user="postgres", dbname="postgres") as c:
        assert c.execute("SELECT count(*) FROM kept").fetchone() == (2,)

    crashed = pg.pid
    pg.stop(immediate=True)
    assert not _alive(crashed)
    pg.start()  # crash recovery
    with _socket_conn(pg) as conn:
        assert conn.execute("SELECT count(*) FROM kept").fetchone() == (2,)


def test_postgres_context_manager_and_long_path(tmp_path: Path) -> None:
    data_dir = tmp_path / ("d" * 90) / "pgdata"  # too long for a socket path inside it
    with EmbeddedPostgres(data_dir) as server:
        pid = server.pid
        assert pid is not None
        assert server.socket_dir != data_dir and server.tcp_url is None
        with psycopg.connect(host=str(server.socket_dir), user="postgres", dbname="postgres") as c:
            assert c.execute("SELECT 1").fetchone() == (1,)
    assert server.pid is None and not _alive(pid)


def test_redis_start_restart_stop(rds: EmbeddedRedis) -> None:
    rds.start()
    pid = rds.pid
    assert pid is not None and rds.url == f"redis://:{rds.password}@127.0.0.1:{rds.port}/0"
    client = redis.Redis.from_url(rds.url)
    try:
        assert client.ping() is True
        port = rds.port
        rds.restart()
        assert rds.port == port and rds.pid != pid and not _alive(pid)
        assert client.ping() is True  # same URL works again
    finally:
        client.close()
    last = rds.pid
    assert last is not None
    rds.stop()
    assert rds.pid is None and not _alive(last)
    assert not _port_open(rds.port)
    rds.stop()  # idempotent


def test_persistent_redis_keeps_keys_across_restart(tmp_path: Path) -> None:
    with EmbeddedRedis(data_dir=tmp_path / "redis", persistent=True) as server:
        client = redis.Redis.from_url(server.url)
        try:
            client.set("k", "v")
            server.restart()
            assert client.get("k") == b"v"
        finally:
            client.close()


def _uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


def test_redis_refuses_clients_without_the_password(rds: EmbeddedRedis) -> None:
    rds.start()
    anonymous = redis.Redis(host="127.0.0.1", port=rds.port, protocol=2)
    wrong = redis.Redis(host="127.0.0.1", port=rds.port, password="guess", protocol=2)
    try:
        with pytest.raises(redis.AuthenticationError):
            anonymous.set("k", "v")
        with pytest.raises(redis.AuthenticationError):
            wrong.ping()
    finally:
        anonymous.close()
        wrong.close()
    with socket.create_connection(("127.0.0.1", rds.port), timeout=5) as sock:
        sock.sendall(b"KEYS *\r\n")  # inline command, as from netcat
        assert sock.recv(256).startswith(b"-NOAUTH")
    assert rds.password not in Path(f"/proc/{rds.pid}/cmdline").read_text()  # not in `ps`


def test_redis_refuses_administrative_commands_even_with_the_password(
    rds: EmbeddedRedis,
) -> None:
    rds.start()
    client = redis.Redis.from_url(rds.url)
    try:
        assert client.set("k", "v") is True  # the password works
        with pytest.raises(redis.ResponseError, match="unknown command"):
            client.config_set("dir", "/tmp")
        with pytest.raises(redis.ResponseError, match="unknown command"):
            client.config_get("requirepass")
        for command in REDIS_DISABLED_COMMANDS:
            with pytest.raises(redis.ResponseError, match="unknown command"):
                client.execute_command(command, "HELP")
        assert client.get("k") == b"v"
    finally:
        client.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_redis_started_as_root_runs_as_the_postgres_system_user(tmp_path: Path) -> None:
    workdir = tmp_path / "redis"
    workdir.mkdir(mode=0o700)  # as an earlier run as root left it: owned by root
    (workdir / "appendonly.aof").write_bytes(b"")
    with EmbeddedRedis(data_dir=workdir, persistent=True) as server:
        assert server.pid is not None
        account = pwd.getpwnam(PG_SYSTEM_USER)
        assert _uid_of(server.pid) == account.pw_uid != 0
        config = (workdir / "redis.conf").stat()
        assert config.st_uid == account.pw_uid and config.st_mode & 0o077 == 0
        assert (workdir / "appendonly.aof").stat().st_uid == account.pw_uid
        client = redis.Redis.from_url(server.url)
        try:
            assert client.set("k", "v") is True  # it can write its append-only file
        finally:
            client.close()


def test_queued_messages_survive_a_crash_of_persistent_redis(tmp_path: Path) -> None:
    """fsync always: a message acknowledged by Redis is on disk, even when it is SIGKILLed."""
    server = EmbeddedRedis(data_dir=tmp_path / "redis", persistent=True)
    try:
        server.start()
        with Connection(server.url) as conn:
            queue = conn.SimpleQueue("syncqueue-aof-test")
            for n in range(20):
                queue.put({"n": n})
            queue.close()
        crashed = server.pid
        assert crashed is not None
        os.kill(crashed, signal.SIGKILL)  # no shutdown: nothing is flushed on the way out
        server.stop()  # reaps it
        assert not _alive(crashed)
        server.start()
        client = redis.Redis.from_url(server.url)
        try:
            assert client.llen("syncqueue-aof-test") == 20
        finally:
            client.close()
        with Connection(server.url) as conn:
            queue = conn.SimpleQueue("syncqueue-aof-test")
            got = []
            for _ in range(20):
                message = queue.get(timeout=5)
                got.append(message.payload["n"])
                message.ack()
            queue.close()
        assert got == list(range(20))
    finally:
        server.stop()


def test_atexit_stops_what_the_process_started(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import json
        from pathlib import Path
        from syncqueue_tasks.local.embedded import EmbeddedPostgres, EmbeddedRedis
        pg = EmbeddedPostgres(Path({str(tmp_path / "pgdata")!r}))
        pg.start()
        r = EmbeddedRedis()
        r.start()
        print(json.dumps([pg.pid, r.pid]))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    pids = json.loads(out.stdout.strip().splitlines()[-1])
    try:
        assert all(not _alive(pid) for pid in pids)
    finally:
        for pid in pids:  # never leak, even if the assertion failed
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
