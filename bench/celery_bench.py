"""Celery benchmark: ``.delay()`` latency, end-to-end latency, drain rate through real workers.

Run from the repository root (needs the local PostgreSQL and Redis of the tests; by default
``postgresql://postgres@127.0.0.1:5432/postgres`` and ``redis://127.0.0.1:6379/0``,
overridden by ``SYNCQUEUE_TEST_ADMIN_URL`` and ``SYNCQUEUE_TEST_REDIS_URL``)::

    .venv/bin/python bench/celery_bench.py            # full run, about 2 minutes
    .venv/bin/python bench/celery_bench.py --quick    # smaller sizes, under a minute

The script creates a throwaway database (migrated with Alembic, dropped at the end), uses a
Celery queue of its own on the local Redis (``CELERY_QUEUE``, which also namespaces the
package's Redis keys) and removes every Redis key and kombu binding it made at the end. Workers
are real ``celery worker`` subprocesses, each in its own process group, stopped by pid.
Every ``SYNCQUEUE_*`` / ``CELERY_*`` variable inherited from the shell is dropped first, so the
package runs with its default settings; only the writer (the JSON lines writer) is chosen.

1. caller side: ``enqueue_change.delay(...)`` against a bare kombu ``Producer.publish`` of the
   same Celery message (same body, headers, JSON serializer, queue and Redis), interleaved,
   no worker consuming;
2. end to end: ``.delay()`` at a steady rate into one worker with the default settings (kick
   debounce on, no beat); latency = the writer's ``started`` time minus the send time;
3. drain: items pre-enqueued with ``queue.enqueue_many``, then one ``process_batch.delay()``
   per worker process; items per second through 1 and 2 workers (concurrency 1 each), from
   the first ``process_batch.delay()`` to the last item COMPLETED.

Targets (issue 3, section 7): ``.delay()`` p99 within 3x of the bare publish; end-to-end p50
under 1 second. Printed, not asserted.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

# The package reads its configuration at import time: set it before importing anything.
RUN = f"{os.getpid()}_{uuid.uuid4().hex[:8]}"
QUEUE = f"syncqueue_bench_{RUN}"
DB_NAME = f"syncqueue_bench_{RUN}"
REDIS_URL = os.environ.get("SYNCQUEUE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
for _name in [n for n in os.environ if n.startswith(("SYNCQUEUE_", "CELERY_"))]:
    if _name not in ("SYNCQUEUE_TEST_ADMIN_URL", "SYNCQUEUE_TEST_REDIS_URL"):
        del os.environ[_name]
os.environ["CELERY_QUEUE"] = QUEUE
os.environ["CELERY_BROKER_URL"] = REDIS_URL

import celery  # noqa: E402
import kombu  # noqa: E402
import psycopg  # noqa: E402
import redis  # noqa: E402
from alembic import command  # noqa: E402
from dbutil import alembic_config, create_database, drop_database, use_database  # noqa: E402
from processes import CeleryProcess, child_env, worker_args  # noqa: E402

from syncqueue_tasks.celery.app import app  # noqa: E402
from syncqueue_tasks.celery.tasks import enqueue_change, process_batch  # noqa: E402
from syncqueue_tasks.core.ids import new_id  # noqa: E402
from syncqueue_tasks.settings import get_settings  # noqa: E402
from syncqueue_tasks.store import queue  # noqa: E402
from syncqueue_tasks.store.db import dispose_engine  # noqa: E402

MODEL = "Request"
JSONL_WRITER = "syncqueue_tasks.writers.jsonl:create_writer"
TARGET_DELAY_P99_RATIO = 3.0
TARGET_E2E_P50 = 1.0
WAIT_TIMEOUT = 120.0


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the full run and ``--quick``."""

    delay_calls: int  # per side
    delay_warmup: int
    e2e_rate: float  # sends per second
    e2e_seconds: float
    e2e_warmup: int
    drain_items: int
    drain_rounds: int  # alternating 1-worker / 2-worker runs; the best of each is reported


FULL = Sizes(
    delay_calls=2_000,
    delay_warmup=200,
    e2e_rate=20,
    e2e_seconds=10,
    e2e_warmup=20,
    drain_items=10_000,
    drain_rounds=2,
)
QUICK = Sizes(
    delay_calls=300,
    delay_warmup=50,
    e2e_rate=20,
    e2e_seconds=5,
    e2e_warmup=10,
    drain_items=2_000,
    drain_rounds=1,
)


class FallbackCounter(logging.Handler):
    """Counts ``.delay()`` calls that could not publish and stored in PostgreSQL instead."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


FALLBACKS = FallbackCounter()
logging.getLogger("syncqueue_tasks.celery.publishing").addHandler(FALLBACKS)


def payload(i: int) -> dict[str, Any]:
    return {"name": f"name-{i}", "status": "open", "amount": i, "note": "benchmark row"}


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


# --- the database -----------------------------------------------------------------------------


class Db:
    """One autocommit psycopg connection to the throwaway database, for setup and polling."""

    def __init__(self, sa_url: str) -> None:
        self.url = sa_url.replace("postgresql+psycopg://", "postgresql://", 1)
        self.conn = psycopg.connect(self.url, autocommit=True)

    def one(self, statement: str, params: Any = None) -> Any:
        row = self.conn.execute(statement, params).fetchone()
        assert row is not None
        return row

    def truncate(self) -> None:
        self.conn.execute("TRUNCATE sync_queue")

    def completed(self, ids: list[str] | None = None) -> int:
        if ids is None:
            return int(self.one("SELECT count(*) FROM sync_queue WHERE status = 'COMPLETED'")[0])
        return int(
            self.one(
                "SELECT count(*) FROM sync_queue WHERE status = 'COMPLETED' AND id = ANY(%s)",
                (ids,),
            )[0]
        )

    def wait_completed(self, expected: int, ids: list[str] | None = None) -> None:
        deadline = time.monotonic() + WAIT_TIMEOUT
        while self.completed(ids) < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.completed(ids)} of {expected} items COMPLETED")
            time.sleep(0.05)

    def close(self) -> None:
        self.conn.close()


# --- Redis: the queue, and cleanup of everything this run made ---------------------------------


def purge_queue(r: redis.Redis) -> None:
    """Drop the messages waiting in this run's queue and the kick debounce key."""
    r.delete(QUEUE, f"{QUEUE}:kick:{QUEUE}")


def cleanup_redis(r: redis.Redis) -> int:
    """Delete this run's keys, binding-set members and unacked messages; return the count."""
    removed = 0
    keys = list(r.scan_iter(f"*{RUN}*"))
    if keys:
        removed += int(r.delete(*keys))
    for shared in r.scan_iter("_kombu.binding*"):
        kind = r.type(shared)
        if kind == b"set":
            members = [m for m in r.smembers(shared) if RUN.encode() in m]
            if members:
                removed += int(r.srem(shared, *members))
        elif kind == b"zset":
            ranked: list[bytes] = list(r.zrange(shared, 0, -1))  # type: ignore[arg-type]
            members = [m for m in ranked if RUN.encode() in m]
            if members:
                removed += int(r.zrem(shared, *members))
    for tag, raw in r.hscan_iter("unacked"):
        if RUN.encode() in raw:
            removed += int(r.hdel("unacked", tag))
            r.zrem("unacked_index", tag)
    return removed


# --- workers ----------------------------------------------------------------------------------


class Workers:
    """Real ``celery worker`` subprocesses; every one still running is stopped by ``stop_all``."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: list[CeleryProcess] = []
        self.count = 0

    def start(self, concurrency: int, env: dict[str, str]) -> CeleryProcess:
        self.count += 1
        name = f"bench{RUN}w{self.count}"
        proc = CeleryProcess(
            worker_args(name, concurrency),
            child_env(env),
            self.logs / f"{name}.log",
        )
        self.running.append(proc)
        proc.wait_for("ready.", timeout=60)
        return proc

    def stop(self, proc: CeleryProcess) -> None:
        if proc in self.running:
            self.running.remove(proc)
            proc.stop()

    def stop_all(self) -> None:
        for proc in list(self.running):
            self.stop(proc)


def batches_done(proc: CeleryProcess) -> int:
    """How many ``process_batch`` runs the worker logged as finished."""
    return sum(
        1
        for line in proc.log().splitlines()
        if "syncqueue.process_batch[" in line and " succeeded in " in line
    )


def writer_env(path: Path) -> dict[str, str]:
    return {"SYNCQUEUE_WRITER": JSONL_WRITER, "SYNCQUEUE_JSONL_PATH": str(path)}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The recording writer's lines (one per record write), one row per change they carried."""
    if not path.exists():
        return []
    writes = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [{**write, "id": change} for write in writes for change in write["changes"]]


# --- 1. caller-side .delay() latency ---------------------------------------------------------


def bench_delay(r: redis.Redis, sizes: Sizes) -> dict[str, dict[str, float]]:
    """p50 / p99 / mean seconds per call: ``enqueue_change.delay`` and a bare kombu publish.

    The bare side publishes the message Celery itself put on the queue for the first
    ``.delay()`` (same body layout, headers and properties; fresh id and record per call),
    with a kombu ``Producer`` on its own ``Connection`` to the same Redis: the same anonymous
    exchange and routing key (the queue's name) and JSON serializer as Celery's publish.
    """
    purge_queue(r)
    enqueue_change.delay("UPDATE", MODEL, "template", payload(0))
    raw = r.rpop(QUEUE)
    assert raw is not None, "the template message did not reach the queue"
    envelope = json.loads(raw)  # type: ignore[arg-type]
    template_headers: dict[str, Any] = envelope["headers"]
    props = envelope["properties"]
    body = envelope["body"]
    if props.get("body_encoding") == "base64":
        body = base64.b64decode(body)
    embed = json.loads(body)[2]  # Celery's protocol 2 body: [args, kwargs, embed]

    connection = kombu.Connection(REDIS_URL)
    producer = kombu.Producer(connection.channel(), serializer="json")
    declared = [kombu.Queue(QUEUE, kombu.Exchange(QUEUE), routing_key=QUEUE)]

    def ours(i: int) -> int:
        started = time.perf_counter_ns()
        enqueue_change.delay("UPDATE", MODEL, f"rec{i}", payload(i))
        return time.perf_counter_ns() - started

    def bare(i: int) -> int:
        started = time.perf_counter_ns()
        item_id = new_id()
        kwargs = {
            "action": "UPDATE",
            "model": MODEL,
            "record_id": f"rec{i}",
            "payload": payload(i),
            "sheet_row_index": None,
            "item_id": item_id,
        }
        headers = dict(template_headers, id=item_id, root_id=item_id)
        producer.publish(
            ([], kwargs, embed),
            exchange="",
            routing_key=QUEUE,
            serializer="json",
            headers=headers,
            correlation_id=item_id,
            reply_to="",
            delivery_mode=props.get("delivery_mode", 2),
            declare=declared,
            retry=False,
        )
        return time.perf_counter_ns() - started

    def set_mode(mode: str) -> None:
        os.environ["SYNCQUEUE_ENQUEUE_MODE"] = mode
        get_settings.cache_clear()

    try:
        # broker mode: .delay() publishes, like the bare publish it is compared with
        set_mode("broker")
        for i in range(sizes.delay_warmup):
            ours(i)
            bare(i)
        purge_queue(r)
        times: dict[str, list[float]] = {"ours": [], "bare": [], "direct": []}
        for i in range(sizes.delay_calls):  # interleaved, so drift hits both alike
            times["ours"].append(ours(i) / 1e9)
            times["bare"].append(bare(i) / 1e9)
        depth = int(r.llen(QUEUE))
        expected = 2 * sizes.delay_calls
        if depth != expected:
            raise RuntimeError(
                f"expected {expected} messages on the queue, found {depth} "
                f"({FALLBACKS.count} .delay() call(s) fell back to PostgreSQL)"
            )
        # direct mode (the default): .delay() commits the row in PostgreSQL (and kicks a run)
        set_mode("direct")
        for i in range(sizes.delay_calls):
            times["direct"].append(ours(i) / 1e9)
    finally:
        os.environ.pop("SYNCQUEUE_ENQUEUE_MODE", None)
        get_settings.cache_clear()
        connection.release()
        purge_queue(r)
    return {
        side: {
            "p50": percentile(v, 50),
            "p99": percentile(v, 99),
            "mean": sum(v) / len(v),
            "max": max(v),
        }
        for side, v in times.items()
    }


# --- 2. end-to-end latency ----------------------------------------------------------------------


def send_at_rate(count: int, rate: float, start_index: int) -> dict[str, float]:
    """``enqueue_change.delay`` ``count`` times, evenly spaced; item id -> send time."""
    sent: dict[str, float] = {}
    began = time.monotonic()
    for k in range(count):
        pause = began + k / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        i = start_index + k
        at = time.time()
        result = enqueue_change.delay("UPDATE", MODEL, f"rec{i}", payload(i))
        sent[result.id] = at
    return sent


def bench_e2e(db: Db, r: redis.Redis, workers: Workers, sizes: Sizes, tmp: Path) -> dict[str, Any]:
    """Latency from ``.delay()`` to the writer's ``started`` time, one default worker."""
    db.truncate()
    purge_queue(r)
    path = tmp / "e2e.jsonl"
    concurrency = os.cpu_count() or 1  # what `celery worker` uses when not told
    worker = workers.start(concurrency, writer_env(path))
    try:
        warm = send_at_rate(sizes.e2e_warmup, sizes.e2e_rate, 0)
        db.wait_completed(len(warm), list(warm))
        time.sleep(1.0)  # let the last kick expire: every measured item starts from rest
        count = int(sizes.e2e_rate * sizes.e2e_seconds)
        fallbacks = FALLBACKS.count
        sent = send_at_rate(count, sizes.e2e_rate, len(warm))
        fallbacks = FALLBACKS.count - fallbacks
        if fallbacks:  # stored straight in PostgreSQL, no kick: beat's job, and there is none
            process_batch.delay()
        db.wait_completed(count, list(sent))
    finally:
        workers.stop(worker)
    started = {row["id"]: row["started"] for row in read_jsonl(path) if row["id"] in sent}
    if len(started) != len(sent):
        raise RuntimeError(f"the writer saw {len(started)} of {len(sent)} items")
    stamps = db.conn.execute(
        "SELECT id, extract(epoch FROM created_at)::float8 FROM sync_queue WHERE id = ANY(%s)",
        (list(sent),),
    ).fetchall()
    stored = [created - sent[i] for i, created in stamps]
    written = [started[i] - created for i, created in stamps]
    total = [started[i] - sent[i] for i in sent]
    return {
        "count": len(sent),
        "concurrency": concurrency,
        "fallbacks": fallbacks,
        "batches": batches_done_from(path, set(sent)),
        "total": total,
        "stored": stored,
        "written": written,
    }


def batches_done_from(path: Path, ids: set[str]) -> int:
    """Writer calls (distinct ``started`` stamps) that carried measured items."""
    return len({(row["pid"], row["started"]) for row in read_jsonl(path) if row["id"] in ids})


# --- 3. drain ---------------------------------------------------------------------------------


def warm_workers(procs: list[CeleryProcess]) -> None:
    """``process_batch`` on the empty queue until every worker has run one (imports, DB)."""
    deadline = time.monotonic() + 60
    before = sum(batches_done(p) for p in procs)
    sent = 0
    while any(batches_done(p) == 0 for p in procs):
        if time.monotonic() > deadline:
            raise TimeoutError("a worker never ran its warm-up process_batch")
        process_batch.delay()
        sent += 1
        time.sleep(0.3)
    # No warm-up run may still be waiting: it would start draining before the clock does.
    while sum(batches_done(p) for p in procs) - before < sent:
        if time.monotonic() > deadline:
            raise TimeoutError("warm-up process_batch runs did not all finish")
        time.sleep(0.05)


def bench_drain(
    db: Db, r: redis.Redis, procs: list[CeleryProcess], n: int, path: Path
) -> dict[str, Any]:
    """Items per second from the first ``process_batch.delay()`` to the last COMPLETED."""
    db.truncate()
    purge_queue(r)
    warm_workers(procs)
    path.unlink(missing_ok=True)
    records = max(1, n // 10)
    changes = [
        {
            "action": "UPDATE",
            "model": MODEL,
            "record_id": f"rec{(i * 7919) % records}",
            "payload": payload(i),
        }
        for i in range(n)
    ]
    for k in range(0, n, 1000):
        queue.enqueue_many(changes[k : k + 1000])
    db.conn.execute("ANALYZE sync_queue")
    before = sum(batches_done(p) for p in procs)
    sent = 0
    began = time.time()
    for _ in procs:
        process_batch.delay()
        sent += 1
    deadline = time.monotonic() + WAIT_TIMEOUT
    while db.completed() < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"drain: {db.completed()} of {n} COMPLETED")
        if sum(batches_done(p) for p in procs) - before >= sent:  # every run ended early
            for _ in procs:
                process_batch.delay()
                sent += 1
        time.sleep(0.05)
    last = float(db.one("SELECT extract(epoch FROM max(processed_at))::float8 FROM sync_queue")[0])
    seconds = last - began
    rows = read_jsonl(path)
    ids = {row["id"] for row in rows}
    if len(rows) != n or len(ids) != n:
        raise RuntimeError(f"drain: writer got {len(rows)} lines for {len(ids)} ids, not {n}")
    per_pid: dict[int, int] = {}
    for row in rows:
        per_pid[row["pid"]] = per_pid.get(row["pid"], 0) + 1
    return {
        "rate": n / seconds,
        "seconds": seconds,
        "runs": sent,
        "per_process": sorted(per_pid.values(), reverse=True),
        "writer_calls": len({(row["pid"], row["started"]) for row in rows}),
    }


# --- report -----------------------------------------------------------------------------------


def machine_facts(db: Db, r: redis.Redis) -> list[str]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    mem = ""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        mem = f", {pages / 2**30:.0f} GiB RAM"
    except (ValueError, OSError):
        pass
    pg = str(db.one("SHOW server_version")[0]).split()[0]
    rv = r.info("server")["redis_version"]
    return [
        f"cores: {os.cpu_count()} logical CPU(s) ({affinity} usable){mem}; "
        f"{model or 'unknown CPU'}",
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        f"Celery {celery.__version__}, kombu {kombu.__version__}, redis-py {redis.__version__}, "
        f"psycopg {psycopg.__version__}; Redis {rv}, PostgreSQL {pg} (both local)",
    ]


def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1 / 5 / 15 min)"
    except OSError:
        return "unknown"


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISS"


def print_lines(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for k, row in enumerate(rows):
        print(
            "  ".join(
                cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                for i, cell in enumerate(row)
            ).rstrip()
        )
        if k == 0:
            print("  ".join("-" * w for w in widths))


def stats_row(name: str, values: list[float]) -> tuple[str, ...]:
    return (
        name,
        ms(percentile(values, 50)),
        ms(percentile(values, 99)),
        ms(sum(values) / len(values)),
        ms(max(values)),
    )


def run_phase(label: str, fn: Callable[[], Any]) -> Any:
    print(label, flush=True)
    started = time.perf_counter()
    result = fn()
    print(f"      done in {time.perf_counter() - started:.1f} s", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (under a minute)")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL

    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f"celerybench_{RUN}_"))
    r = redis.Redis.from_url(REDIS_URL)
    workers = Workers(tmp)
    db: Db | None = None
    created = ok = False
    try:
        url = create_database(DB_NAME)
        created = True
        use_database(url)
        command.upgrade(alembic_config(), "head")
        db = Db(url)
        get_settings.cache_clear()
        settings = get_settings()
        facts = machine_facts(db, r)
        print(f"celery benchmark ({'quick' if args.quick else 'full'}): database {DB_NAME},")
        print(f"queue {QUEUE} on {REDIS_URL}; worker logs in {tmp}")
        for fact in facts:
            print(fact)
        print(
            f"package defaults: batch_size={settings.tasks.batch_size}, "
            f"kick_delay={settings.tasks.kick_delay}s, task_send_sent_event="
            f"{app.conf.task_send_sent_event}, acks_late={app.conf.task_acks_late}, "
            f"prefetch={app.conf.worker_prefetch_multiplier}"
        )
        print(f"load average at start: {load_average()}")
        print()

        delay = run_phase(
            f"[1/3] .delay() vs bare kombu publish, {sizes.delay_calls:,} calls each "
            f"(+{sizes.delay_warmup} warm-up), interleaved ...",
            lambda: bench_delay(r, sizes),
        )
        e2e = run_phase(
            f"[2/3] end to end: .delay() at {sizes.e2e_rate:g}/s for {sizes.e2e_seconds:g} s "
            f"into 1 worker (concurrency {os.cpu_count()}), default settings ...",
            lambda: bench_e2e(db, r, workers, sizes, tmp),
        )
        n = sizes.drain_items
        path = tmp / "drain.jsonl"
        env = writer_env(path)
        rounds: dict[int, list[dict[str, Any]]] = {1: [], 2: []}

        def drain(count: int) -> dict[str, Any]:
            while len(workers.running) > count:
                workers.stop(workers.running[-1])
            while len(workers.running) < count:
                workers.start(1, env)
            return bench_drain(db, r, list(workers.running), n, path)

        for k in range(sizes.drain_rounds):
            for count in (1, 2):
                rounds[count].append(
                    run_phase(
                        f"[3/3] drain {n:,} items through {count} worker process(es), "
                        f"concurrency 1 (round {k + 1} of {sizes.drain_rounds}) ...",
                        lambda count=count: drain(count),  # type: ignore[misc]
                    )
                )
        workers.stop_all()
        drains = {count: max(runs, key=lambda d: d["rate"]) for count, runs in rounds.items()}

        # --- printout ------------------------------------------------------------------------
        ours, bare = delay["ours"], delay["bare"]
        ratio50, ratio99 = ours["p50"] / bare["p50"], ours["p99"] / bare["p99"]
        print()
        print(f"1. Caller-side latency per call ({sizes.delay_calls:,} calls each, interleaved)")
        print()
        print_lines(
            [
                ("", "p50", "p99", "mean", "max"),
                *(
                    (name, ms(s["p50"]), ms(s["p99"]), ms(s["mean"]), ms(s["max"]))
                    for name, s in (
                        ("enqueue_change.delay(), broker mode", ours),
                        ("bare kombu Producer.publish", bare),
                        ("enqueue_change.delay(), direct mode", delay["direct"]),
                    )
                ),
                (
                    "ours / bare",
                    f"{ratio50:.2f}x",
                    f"{ratio99:.2f}x",
                    f"{ours['mean'] / bare['mean']:.2f}x",
                    "",
                ),
            ]
        )
        print(
            f"   target: p99 within {TARGET_DELAY_P99_RATIO:g}x of bare -> "
            f"{verdict(ratio99 <= TARGET_DELAY_P99_RATIO)}"
        )
        print()
        p50_e2e = percentile(e2e["total"], 50)
        print(
            f"2. End to end, .delay() -> writer receives the item ({e2e['count']} items at "
            f"{sizes.e2e_rate:g}/s, {e2e['batches']} writer call(s))"
        )
        print()
        print_lines(
            [
                ("", "p50", "p99", "mean", "max"),
                stats_row("total: send -> writer 'started'", e2e["total"]),
                stats_row("  send -> row stored (enqueue_change ran)", e2e["stored"]),
                stats_row("  stored -> writer 'started' (kick, claim)", e2e["written"]),
            ]
        )
        print(f"   target: p50 under {TARGET_E2E_P50:g} s -> {verdict(p50_e2e < TARGET_E2E_P50)}")
        if e2e["fallbacks"]:
            print(
                f"   WARNING: {e2e['fallbacks']} .delay() call(s) could not publish and stored "
                "in PostgreSQL directly (their latency is not representative)"
            )
        print("   (parts use PostgreSQL's now() at transaction start; they add up to the total)")
        print()
        print(
            f"3. Drain, {n:,} items pre-enqueued, JSON lines writer "
            f"(best of {sizes.drain_rounds} round(s); every round: "
            + "; ".join(
                f"{count} worker(s) " + ", ".join(f"{d['rate']:,.0f}/s" for d in runs)
                for count, runs in rounds.items()
            )
            + ")"
        )
        print()
        print_lines(
            [
                (
                    "",
                    "items/s",
                    "seconds",
                    "process_batch runs",
                    "writer calls",
                    "items per process",
                ),
                *(
                    (
                        f"{count} worker process(es)",
                        f"{d['rate']:,.0f}",
                        f"{d['seconds']:.2f}",
                        str(d["runs"]),
                        f"{d['writer_calls']:,}",
                        " / ".join(f"{c:,}" for c in d["per_process"]),
                    )
                    for count, d in drains.items()
                ),
            ]
        )
        print(f"   2 workers / 1 worker: {drains[2]['rate'] / drains[1]['rate']:.2f}x")
        print()

        print("Summary (Markdown):")
        print()
        print("| Measure | syncqueue_tasks | reference | ratio | target | |")
        print("|---|---:|---:|---:|---:|:---:|")
        mark = {True: "✅", False: "❌"}
        print(
            f"| `.delay()` p50, caller side | {ms(ours['p50'])} | {ms(bare['p50'])} "
            f"(bare kombu publish) | {ratio50:.2f}x | | |"
        )
        print(
            f"| `.delay()` p99, caller side | {ms(ours['p99'])} | {ms(bare['p99'])} "
            f"(bare kombu publish) | {ratio99:.2f}x | <= {TARGET_DELAY_P99_RATIO:g}x "
            f"| {mark[ratio99 <= TARGET_DELAY_P99_RATIO]} |"
        )
        print(
            f"| End to end p50, `.delay()` -> writer | {ms(p50_e2e)} | | | "
            f"< {TARGET_E2E_P50:g} s | {mark[p50_e2e < TARGET_E2E_P50]} |"
        )
        print(
            f"| End to end p99, `.delay()` -> writer | {ms(percentile(e2e['total'], 99))} | | | | |"
        )
        for count, d in drains.items():
            ratio = f"{d['rate'] / drains[1]['rate']:.2f}x vs 1 worker" if count > 1 else ""
            print(
                f"| Drain {n:,} items, {count} worker process(es) x concurrency 1 "
                f"| {d['rate']:,.0f} items/s | | {ratio} | | |"
            )
        print()
        print(
            f"*{'; '.join(facts)}. Caller side: {sizes.delay_calls:,} calls each, interleaved, "
            f"no consumer. End to end: {e2e['count']} `.delay()` at {sizes.e2e_rate:g}/s into "
            f"one worker (concurrency {e2e['concurrency']}), default settings (kick delay "
            f"{settings.tasks.kick_delay:g} s, batch size {settings.tasks.batch_size}), no beat. "
            "Drain: JSON "
            f"lines writer (fsync per batch), best of {sizes.drain_rounds} round(s).*"
        )
        print()
        print(f"load average at end: {load_average()} (other processes skew the numbers)")
        print(f"total time {time.perf_counter() - started:.0f} s")
        ok = True
        return 0
    finally:
        workers.stop_all()
        if db is not None:
            db.close()
        dispose_engine()
        if created:
            drop_database(DB_NAME)
        try:
            print(f"redis cleanup: {cleanup_redis(r)} key(s) / member(s) of this run removed")
        finally:
            r.close()
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"worker logs kept in {tmp}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
