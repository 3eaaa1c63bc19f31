"""The private PostgreSQL and Redis servers: start, keep data, restart, stop by pid."""

from __future__ import annotations

import json
import os
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

from syncqueue_tasks.embedded import EmbeddedPostgres, EmbeddedRedis, free_port

pytestmark = pytest.mark.timeout(120)


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
    assert pid is not None and rds.url == f"redis://127.0.0.1:{rds.port}/0"
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


def test_atexit_stops_what_the_process_started(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import json
        from pathlib import Path
        from syncqueue_tasks.embedded import EmbeddedPostgres, EmbeddedRedis
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
