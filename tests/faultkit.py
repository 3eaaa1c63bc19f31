"""Fault-injection kit shared by ``tests/test_faults.py`` and ``bench/soak.py``.

- ``Producer``: a ``tests/fault_producer.py`` subprocess calling ``.delay()``; its log lists
  every accepted change (id, record, per-record sequence number, time, call latency).
- ``Fleet``: real ``celery worker`` / ``celery beat`` subprocesses (each in its own process
  group), SIGKILLed or replaced at will, all stopped by pid in ``stop_all``.
- ``Janitor``: a thread calling ``queue.reset_stuck`` with a short threshold, as beat would.
- ``settle``: wait until every accepted change is COMPLETED (or nothing moves any more).
- ``account`` / ``Accounting.assert_ok``: the exact accounting every fault test ends with.
- ``RabbitVhost``: a RabbitMQ virtual host of its own on the local server (made with
  ``rabbitmqctl``, deleted at the end), so a test can drop its own connections and nobody
  else's; ``broker_backlog``: messages a broker still holds (queued or unacknowledged).

Every process started here is stopped by its pid (or its own process group), never by name.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from processes import ROOT, TESTS, CeleryProcess, child_env, worker_args
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from syncqueue_tasks.store import queue
from syncqueue_tasks.store.db import get_engine

PRODUCER = TESTS / "fault_producer.py"


def pipeline_env(written: Path, **overrides: str) -> dict[str, str]:
    """Worker / beat / producer settings for a fast pipeline that parks nothing as FAILED."""
    env = {
        "SYNCQUEUE_WRITER": "recording_writer:recording_span",
        "SYNCQUEUE_JSONL_PATH": str(written),
        "SYNCQUEUE_MAX_RETRIES": "100",
        "SYNCQUEUE_BACKOFF_BASE_SECONDS": "0.05",
        "SYNCQUEUE_BACKOFF_MAX_SECONDS": "0.5",
        "SYNCQUEUE_BATCH_SIZE": "25",
        "RECORDING_SLEEP": "0.01",
    }
    env.update(overrides)
    return env


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSON-lines file (none if it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def wait_for(
    predicate: Callable[[], bool], timeout: float, interval: float = 0.05, what: str = ""
) -> None:
    """Poll until ``predicate()`` is true; AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"not within {timeout}s: {what or predicate}")


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


# ------------------------------------------------------------------------ processes


class Producer:
    """A ``fault_producer.py`` subprocess in its own session; ``stop`` kills it by pid."""

    def __init__(
        self, workdir: Path, env: Mapping[str, str], name: str = "producer", **options: object
    ) -> None:
        self.log_path = workdir / f"{name}.jsonl"
        self.out_path = workdir / f"{name}.out"
        args = [sys.executable, str(PRODUCER), "--out", str(self.log_path)]
        for key, value in options.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        self._out = self.out_path.open("wb")
        self.proc = subprocess.Popen(
            args,
            env=child_env(env),
            cwd=ROOT,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> dict[str, Any]:
        """Wait for the end; return its summary line (AssertionError if it failed)."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"producer still running after {timeout}s") from None
        output = self.out_path.read_text(errors="replace")
        assert code == 0, f"producer exited with {code}:\n{output[-3000:]}"
        return json.loads(output.strip().splitlines()[-1])

    def accepted(self) -> list[dict[str, Any]]:
        """Changes accepted so far (each call's returned ids), in call order."""
        return [line for line in read_jsonl(self.log_path) if "id" in line]

    def errors(self) -> list[dict[str, Any]]:
        return [line for line in read_jsonl(self.log_path) if "error" in line]

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._out.close()


class Fleet:
    """Celery workers and beat for one test; every one of them is stopped in ``stop_all``."""

    def __init__(self, workdir: Path, env: Mapping[str, str]) -> None:
        self.workdir = workdir
        self.env = dict(env)
        self.procs: list[CeleryProcess] = []
        self.kills = 0
        self.revived: list[str] = []  # workers that exited on their own, with their last error
        self._concurrency: dict[int, int] = {}
        self._killed: set[int] = set()

    def worker(self, concurrency: int = 1, *, wait: bool = True, **env: str) -> CeleryProcess:
        name = f"w{uuid.uuid4().hex[:6]}"
        proc = CeleryProcess(
            worker_args(name, concurrency),
            child_env({**self.env, **env}),
            self.workdir / f"{name}.log",
        )
        self.procs.append(proc)
        self._concurrency[proc.pid] = concurrency
        if wait:
            proc.wait_for("ready.", timeout=60)
        return proc

    def workers(self) -> list[CeleryProcess]:
        return [p for p in self.procs if p.pid in self._concurrency]

    def revive(self) -> int:
        """Replace every worker that exited without being killed here, as a supervisor
        (``restart: unless-stopped``) would; remember why each one exited."""
        revived = 0
        for proc in self.workers():
            if proc.proc.poll() is None or proc.pid in self._killed:
                continue
            self._killed.add(proc.pid)
            errors = [line for line in proc.log().splitlines() if "Unrecoverable error" in line]
            self.revived.append(errors[-1][:300] if errors else f"exit {proc.proc.returncode}")
            self.worker(self._concurrency[proc.pid])
            revived += 1
        return revived

    def beat(self, **env: str) -> CeleryProcess:
        overrides = {
            "CELERY_BEAT_SCHEDULE_FILE": str(self.workdir / f"beat-{uuid.uuid4().hex[:6]}"),
            **self.env,
            **env,
        }
        proc = CeleryProcess(
            ["beat", "--loglevel=INFO"], child_env(overrides), self.workdir / "beat.log"
        )
        self.procs.append(proc)
        proc.wait_for("beat: Starting", timeout=30)
        return proc

    def kill(self, proc: CeleryProcess) -> None:
        """SIGKILL the whole process group (main process and pool children), reap it."""
        self._killed.add(proc.pid)
        proc.kill(signal.SIGKILL)
        proc.proc.wait(10)
        self.kills += 1

    def logs(self) -> str:
        return "\n".join(p.log() for p in self.procs)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop(timeout=10)


class Janitor:
    """Calls ``queue.reset_stuck(threshold)`` every ``every`` seconds in a thread, as beat's
    reset-stuck entry would; database errors (an outage) are counted and ignored."""

    def __init__(self, threshold_seconds: float, every: float = 0.5) -> None:
        self.minutes = threshold_seconds / 60
        self.every = every
        self.reset = 0
        self.db_errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="janitor", daemon=True)

    def __enter__(self) -> Janitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.reset += queue.reset_stuck(older_than_minutes=self.minutes)
            except SQLAlchemyError:
                self.db_errors += 1


def statuses() -> dict[str, int]:
    """Rows of ``sync_queue`` per status."""
    with get_engine().connect() as conn:
        rows = conn.execute(text("SELECT status::text, count(*) FROM sync_queue GROUP BY 1")).all()
    counts = {"PENDING": 0, "PROCESSING": 0, "COMPLETED": 0, "FAILED": 0}
    counts.update({status: int(n) for status, n in rows})
    return counts


def completed_of(ids: list[str]) -> int:
    """How many of ``ids`` are COMPLETED."""
    with get_engine().connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM sync_queue WHERE id = ANY(:ids) AND status = 'COMPLETED'"
                ),
                {"ids": ids},
            ).scalar_one()
        )


def settle(ids: list[str], timeout: float, quiet: float = 15.0) -> dict[str, int]:
    """Wait until every change in ``ids`` is COMPLETED and no row is PENDING or PROCESSING.

    Gives up early when nothing is PENDING or PROCESSING and the counts have not moved for
    ``quiet`` seconds (what is missing then is not coming soon); returns the last counts.
    """
    deadline = time.monotonic() + timeout
    last: dict[str, int] = {}
    last_change = time.monotonic()
    while time.monotonic() < deadline:
        try:
            now = statuses()
            idle = now["PENDING"] == 0 and now["PROCESSING"] == 0
            if idle and completed_of(ids) == len(ids):
                return now
        except SQLAlchemyError:
            time.sleep(0.2)
            continue
        if now != last:
            last, last_change = now, time.monotonic()
        if idle and time.monotonic() - last_change > quiet:
            return now
        time.sleep(0.2)
    return last


# ------------------------------------------------------------------------ accounting


class RabbitVhost:
    """A throwaway virtual host on the local RabbitMQ for one test or soak run.

    ``url`` is its ``amqp://`` URL (user guest, which gets every permission on it);
    ``drop_connections`` closes every client connection to it (a broker outage as the clients
    see it: only this vhost's clients, so other users of the server are untouched).
    """

    def __init__(self, base_url: str = "amqp://guest:guest@127.0.0.1:5672") -> None:
        self.name = f"syncqueue-{uuid.uuid4().hex[:10]}"
        self.url = f"{base_url.rstrip('/')}/{self.name}"

    def _ctl(self, *args: str) -> str:
        done = subprocess.run(
            ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=True
        )
        return done.stdout

    def __enter__(self) -> RabbitVhost:
        self._ctl("add_vhost", self.name)
        self._ctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self._ctl("delete_vhost", self.name)

    def drop_connections(self) -> int:
        """Close every connection to this vhost; returns how many there were."""
        names = [
            line.split("\t", 1)[1]
            for line in self._ctl("list_connections", "vhost", "name").splitlines()
            if line.startswith(self.name + "\t")
        ]
        for name in names:
            with contextlib.suppress(subprocess.CalledProcessError):
                self._ctl("close_connection", name, "syncqueue fault injection")
        return len(names)

    def messages(self, queue_name: str) -> int:
        """Messages of ``queue_name`` in this vhost, ready or unacknowledged (0 if none)."""
        for line in self._ctl("list_queues", "-p", self.name, "name", "messages").splitlines():
            name, _, count = line.partition("\t")
            if name == queue_name and count.strip().isdigit():
                return int(count)
        return 0


def broker_backlog(broker_url: str, queue_name: str, rabbit: RabbitVhost | None = None) -> int:
    """Messages the broker still holds for ``queue_name``: queued, or delivered and not yet
    acknowledged (Redis: the queue's list, kombu's ``unacked`` hash and the guarded
    transport's in-flight list)."""
    if rabbit is not None:
        return rabbit.messages(queue_name)
    from redis import Redis

    client = Redis.from_url(broker_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        held = int(client.hlen("unacked")) + int(client.llen("unacked_inflight"))
        return int(client.llen(queue_name)) + held
    finally:
        client.close()


def broker_whereabouts(redis_url: str, queue_name: str, ids: Iterable[str]) -> dict[str, str]:
    """Where each id's message is in a Redis broker: ``unacked`` (delivered to a worker that
    never acknowledged it: redelivered only after the visibility timeout) or ``queued``."""
    import base64

    from redis import Redis

    wanted = set(ids)
    found: dict[str, str] = {}

    def item_ids(message: dict[str, Any]) -> list[str]:
        with contextlib.suppress(Exception):
            _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
            return list(kwargs.get("item_ids") or [kwargs.get("item_id")])
        return []

    client = Redis.from_url(redis_url, socket_timeout=5)
    try:
        for tag, raw in client.hscan_iter("unacked"):
            message = json.loads(raw)[0]
            for i in item_ids(message):
                if i in wanted:
                    found[i] = f"unacked since {client.zscore('unacked_index', tag) or 0:.0f}"
        for raw in client.lrange(queue_name, 0, -1):
            for i in item_ids(json.loads(raw)):
                if i in wanted:
                    found.setdefault(i, "queued")
        for raw in client.lrange("unacked_inflight", 0, -1):
            for i in item_ids(json.loads(raw)):
                if i in wanted:
                    found.setdefault(i, "in flight (taken, not yet saved as unacked)")
    finally:
        client.close()
    return found


def _p(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class Accounting:
    """What the destination received, checked against what ``.delay()`` accepted."""

    accepted: int = 0
    written_lines: int = 0
    written_ids: int = 0
    duplicates: int = 0  # writes of a change beyond its first: at-least-once rewrites
    lost: list[str] = field(default_factory=list)  # accepted, never written
    unknown: list[str] = field(default_factory=list)  # written, never accepted
    overlaps: list[str] = field(default_factory=list)  # one record in two writes at once
    stale_final: list[str] = field(default_factory=list)  # record's final state is not its last
    statuses: dict[str, int] = field(default_factory=dict)
    rows_missing: int = 0  # accepted ids with no row in sync_queue
    rows_unknown: int = 0  # rows whose id was never accepted
    latencies: list[float] = field(default_factory=list)  # accepted -> first write finished
    notes: list[str] = field(default_factory=list)  # diagnostics shown with the problems
    store_delays: list[float] = field(default_factory=list)  # accepted -> row inserted

    def problems(self) -> list[str]:
        """Every broken promise, with a few examples each; empty when all is well."""
        out = []
        checks: list[tuple[str, list[str]]] = [
            ("lost (accepted, never written)", self.lost),
            ("unknown (written, never accepted)", self.unknown),
            ("records in two writes at the same time", self.overlaps),
            ("records whose final write is not their last change", self.stale_final),
        ]
        for what, items in checks:
            if items:
                out.append(f"{len(items)} {what}, e.g.:\n    " + "\n    ".join(items[:5]))
        left = {s: n for s, n in self.statuses.items() if s != "COMPLETED" and n}
        if left:
            out.append(f"rows not COMPLETED: {left}")
        if self.rows_missing or self.rows_unknown:
            out.append(
                f"sync_queue rows: {self.rows_missing} accepted ids without a row, "
                f"{self.rows_unknown} rows never accepted"
            )
        return out + self.notes if out else out

    def assert_ok(self, *, exactly_once: bool = False) -> None:
        problems = self.problems()
        if exactly_once and self.duplicates:
            problems.append(f"{self.duplicates} duplicate writes where exactly-once is expected")
        assert not problems, "accounting failed:\n" + "\n".join(problems) + f"\n{self.summary()}"

    def summary(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "written_ids": self.written_ids,
            "written_lines": self.written_lines,
            "duplicates": self.duplicates,
            "lost": len(self.lost),
            "overlapping": len(self.overlaps),
            "stale_final": len(self.stale_final),
            "statuses": self.statuses,
            "latency_max": round(max(self.latencies, default=0.0), 3),
            "latency_p99": round(_p(self.latencies, 0.99), 3),
            "store_delay_p99": round(_p(self.store_delays, 0.99), 3),
            "store_delay_max": round(max(self.store_delays, default=0.0), 3),
        }


def _db_rows(ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    with get_engine().connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, status::text AS status, retries, last_error, "
                "extract(epoch FROM created_at)::float8 AS created FROM sync_queue "
                "WHERE id = ANY(:ids)"
            ),
            {"ids": list(ids)},
        ).mappings()
        return {r["id"]: dict(r) for r in rows}


def account(accepted: list[dict[str, Any]], written_path: Path, *, db: bool = True) -> Accounting:
    """Check the destination (the recording writer's file, one line per record write) against
    the accepted changes.

    - every accepted change was written at least once (in some write's ``changes``); nothing
      else was written;
    - no two writes of one record overlap in time ([started, finished] of different calls);
    - per record, the state of its last write (file order: writes of one record never
      overlap, so that is the order they were applied in) is that of its last-enqueued change
      (the producer's changes each set ``seq``; in id order the last one wins);
    - with ``db``: every accepted id has a row, no other row exists, all are COMPLETED.
    """
    acc = Accounting(accepted=len(accepted))
    by_id = {a["id"]: a for a in accepted}
    assert len(by_id) == len(accepted), "the producer returned one id twice"
    lines = read_jsonl(written_path)
    acc.written_lines = len(lines)
    writes: dict[str, list[dict[str, Any]]] = defaultdict(list)  # change id -> its writes
    per_record: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for line in lines:
        per_record[(line["model"], line["record_id"])].append(line)
        for change_id in line["changes"]:
            writes[change_id].append(line)
    acc.written_ids = len(writes)
    acc.duplicates = sum(len(w) for w in writes.values()) - len(writes)
    acc.lost = [i for i in by_id if i not in writes]
    acc.unknown = [i for i in writes if i not in by_id]
    db_rows = _db_rows(acc.lost) if db and acc.lost else {}
    acc.lost = [
        f"{i} {by_id[i]['record_id']}#{by_id[i]['seq']}: "
        + (
            f"row {db_rows[i]['status']} retries={db_rows[i]['retries']}"
            if i in db_rows
            else "no row in sync_queue (never stored)"
        )
        for i in acc.lost
    ]
    for item_id, ws in writes.items():
        if item_id in by_id:
            acc.latencies.append(min(w["finished"] for w in ws) - by_id[item_id]["t"])

    expected: dict[tuple[str, str], dict[str, Any]] = {}
    for a in sorted(accepted, key=lambda a: a["id"]):  # applied in id order, the last wins
        expected[(a["model"], a["record_id"])] = a
    for record, record_writes in per_record.items():
        spans = sorted(record_writes, key=lambda w: w["started"])
        for a, b in itertools.pairwise(spans):
            if (a["pid"], a["started"]) != (b["pid"], b["started"]) and b["started"] < a[
                "finished"
            ]:
                acc.overlaps.append(
                    f"{record[1]}: pid {a['pid']} [{a['started']:.3f}, {a['finished']:.3f}] and "
                    f"pid {b['pid']} [{b['started']:.3f}, {b['finished']:.3f}]"
                )
        last = expected.get(record)
        final = record_writes[-1]["state"] or {}
        if last is not None and final.get("seq") != last["seq"]:
            acc.stale_final.append(
                f"{record[1]}: final state has seq {final.get('seq')!r}, last change #{last['seq']}"
            )

    if db:
        acc.statuses = statuses()
        with get_engine().connect() as conn:
            created = dict(
                conn.execute(
                    text("SELECT id, extract(epoch FROM created_at)::float8 FROM sync_queue")
                ).all()
            )
        stored = set(created)
        acc.store_delays = [created[i] - by_id[i]["t"] for i in by_id if i in created]
        acc.rows_missing = len(by_id.keys() - stored)
        acc.rows_unknown = len(stored - by_id.keys())
    return acc
