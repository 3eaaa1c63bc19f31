"""Where the time of one enqueue goes (``bench/peers.py --profile``).

For ``queue.enqueue``, ``enqueue_change.delay`` (direct mode) and, as the reference, the plain
SQL contender's single INSERT: the wall time per enqueue, the client's CPU time (this
process: validation, SQLAlchemy, psycopg), the server's CPU time (the backend process's
utime + stime from /proc, when the server runs on this machine) and the rest (waiting:
round-trip latency, the commit's WAL flush, scheduling). Then, from a libpq trace of a second
run (the trace costs client time, so it is not timed): the round trips per enqueue (each turn
from client messages to server messages), the time spent waiting for the server's answers,
and the statements by command tag (``SELECT`` includes a pool pre-ping). The trace sees what
psycopg sends, whatever the package's code or statements; nothing here depends on them.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from contenders import Ours, Plain, changes, clean_redis

TICK = os.sysconf("SC_CLK_TCK")


def backend_cpu(pid: int) -> float | None:
    """Seconds of CPU the server process ``pid`` used so far (None: not on this machine)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def parse_trace(text: str) -> tuple[int, float, Counter[str]]:
    """(round trips, seconds waiting for answers, command tags) of a libpq trace."""
    turns, waited, tags = 0, 0.0, Counter[str]()
    last_sent: datetime | None = None
    previous = "B"
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 4:
            continue
        stamp, direction, kind = datetime.fromisoformat(parts[0]), parts[1], parts[3]
        if direction == "F":
            last_sent = stamp
        elif previous == "F" and last_sent is not None:
            turns += 1
            waited += (stamp - last_sent).total_seconds()
        if direction == "B" and kind == "CommandComplete":
            tags[parts[4].strip().strip('"').split()[0]] += 1
        previous = direction
    return turns, waited, tags


class Subject:
    """One way to enqueue, with the psycopg connections it uses."""

    def __init__(self, title: str, enqueue: Callable[[dict[str, Any]], None]) -> None:
        self.title = title
        self.enqueue = enqueue
        self.connections: list[psycopg.Connection[Any]] = []


def measure(subject: Subject, n: int) -> dict[str, Any]:
    items = changes(0, 2 * n + 50, max(1, n // 5))
    for c in items[:50]:  # warm-up: connections made, statements prepared
        subject.enqueue(c)
    pids = [c.info.backend_pid for c in subject.connections]
    server0 = [backend_cpu(p) for p in pids]
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for c in items[50 : 50 + n]:
        subject.enqueue(c)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    server1 = [backend_cpu(p) for p in pids]
    server = (
        None
        if None in server0 or None in server1
        else sum(b - a for a, b in zip(server0, server1, strict=True))  # type: ignore[operator]
    )
    with tempfile.TemporaryFile("w+") as trace:
        for conn in subject.connections:
            conn.pgconn.trace(trace.fileno())
        for c in items[50 + n :]:
            subject.enqueue(c)
        for conn in subject.connections:
            conn.pgconn.untrace()
        trace.seek(0)
        turns, waited, tags = parse_trace(trace.read())
    return {
        "wall_ms": wall / n * 1000,
        "client_cpu_ms": cpu / n * 1000,
        "server_cpu_ms": None if server is None else server / n * 1000,
        "round_trips": turns / n,
        "answer_wait_ms": waited / n * 1000,
        "statements": {tag: count / n for tag, count in tags.most_common()},
    }


def record_connections(into: list[psycopg.Connection[Any]]) -> None:
    """From now on, every psycopg connection this process opens is appended to ``into``,
    whichever pool (SQLAlchemy's, psycopg_pool) opens it: the package's own code is not
    looked at."""
    opened = psycopg.Connection.connect.__func__  # type: ignore[attr-defined]

    def connect(cls: Any, *args: Any, **kwargs: Any) -> Any:
        conn = opened(cls, *args, **kwargs)
        into.append(conn)
        return conn

    psycopg.Connection.connect = classmethod(connect)  # type: ignore[method-assign,assignment]
    psycopg.connect = psycopg.Connection.connect  # the module's alias, bound at import


def ours_subjects() -> list[Subject]:
    """``queue.enqueue`` and ``.delay`` (one process, so the connections they open are
    shared); call before either has connected."""
    from syncqueue_tasks.celery.tasks import enqueue_change
    from syncqueue_tasks.store import queue

    direct = Subject("syncqueue-tasks queue.enqueue", lambda c: queue.enqueue(**c))
    delay = Subject(
        "syncqueue-tasks enqueue_change.delay (direct mode)",
        lambda c: enqueue_change.delay(c["action"], c["model"], c["record_id"], c["payload"]),
    )
    record_connections(direct.connections)
    delay.connections = direct.connections
    return [direct, delay]


def profile(admin_url: str, n: int) -> int:
    """Print the profile of ``n`` enqueues per subject; databases made and dropped here."""
    base = admin_url.rsplit("/", 1)[0]
    run = f"bench_profile_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    names = [f"{run}_ours", f"{run}_plain"]
    os.environ.setdefault("CELERY_QUEUE", run)
    os.environ["SYNCQUEUE_ENQUEUE_MODE"] = "direct"
    admin = psycopg.connect(admin_url, autocommit=True)
    ours, plain = Ours(), Plain()
    results = []
    try:
        for name in names:
            admin.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
        ours.install(f"{base}/{names[0]}")
        ours.open(f"{base}/{names[0]}")
        plain.install(f"{base}/{names[1]}")
        plain.open(f"{base}/{names[1]}")
        reference = Subject("plain SQL INSERT (autocommit)", lambda c: plain.enqueue_each([c]))
        reference.connections = [plain.conn]
        for subject in [reference, *ours_subjects()]:
            results.append((subject.title, measure(subject, n)))
    finally:
        ours.close()
        plain.close()
        for name in names:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]
        admin.close()
        clean_redis(os.environ["CELERY_QUEUE"])
    print(f"one enqueue, mean of {n:,} (load average {os.getloadavg()[0]:.2f})")
    for title, r in results:
        server = "n/a" if r["server_cpu_ms"] is None else f"{r['server_cpu_ms']:.3f}"
        rest = r["wall_ms"] - r["client_cpu_ms"] - (r["server_cpu_ms"] or 0.0)
        statements = ", ".join(f"{tag} {count:g}" for tag, count in r["statements"].items())
        print(f"\n{title}")
        wall, client, waited = r["wall_ms"], r["client_cpu_ms"], r["answer_wait_ms"]
        print(f"  wall {wall:.3f} ms = client CPU {client:.3f} + server CPU {server}", end="")
        print(f" + waiting/other {rest:.3f}")
        print(f"  round trips {r['round_trips']:g}, waiting for answers {waited:.3f} ms", end="")
        print(f" (traced run; includes the server's CPU), statements: {statements}")
    return 0
