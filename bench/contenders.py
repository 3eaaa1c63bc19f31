"""The four contenders of ``bench/peers.py``, each doing the same work its own way.

Every contender runs inside an agent process (``peers.agent_main``) and offers the same
operations: enqueue one change per transaction, enqueue 1,000 a statement, drain (claim 100,
complete them) until nothing is left, count what it stored, and, where it has the notion,
claim once for a latency sample. syncqueue-tasks is driven through its public API only
(``queue.enqueue``, ``enqueue_many``, ``dequeue``, ``mark_complete_many``,
``get_queue_stats``, ``tasks.enqueue_change.delay``): no table, column or statement of ours
appears here. pgqueuer and procrastinate come from the ``bench`` extra; they run no-op jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

import psycopg

MODEL = "Request"
BATCH = 1000  # enqueue batched: changes per statement
CLAIM = 100  # drain: changes per claim
HOT = "hot"  # the record id of the hot record in the backlog work
HOT_LOCK = f"{MODEL}:{HOT}0"  # procrastinate: the hot record's lock (its per-record order)
QUEUE = "bench"  # the queue name the peers' jobs go to


def change(i: int, records: int, prefix: str = "rec") -> dict[str, Any]:
    """Change number ``i`` of a run: an UPDATE of one of ``records`` records of ``MODEL``."""
    return {
        "action": "UPDATE",
        "model": MODEL,
        "record_id": f"{prefix}{i % records}",
        "payload": {"name": f"name-{i}", "status": "open", "amount": i, "note": "bench row"},
    }


def changes(start: int, n: int, records: int, prefix: str = "rec") -> list[dict[str, Any]]:
    """``n`` changes numbered from ``start``."""
    return [change(i, records, prefix) for i in range(start, start + n)]


def batches(items: list[Any], size: int = BATCH) -> list[list[Any]]:
    """``items`` cut into lists of at most ``size``."""
    return [items[i : i + size] for i in range(0, len(items), size)]


class Contender:
    """One implementation under test. ``history`` / ``hot``: the latency works apply
    (else the reason why not, shown in the table)."""

    name: ClassVar[str]
    title: ClassVar[str]
    history: ClassVar[str | None] = None  # None: applies; else why not
    hot: ClassVar[str | None] = None
    claim_size: ClassVar[int] = CLAIM  # changes one latency claim takes
    note: ClassVar[str] = ""  # how it does the work, printed under the table

    def install(self, dsn: str) -> None:
        """Create the contender's schema in the (template) database ``dsn``."""
        self.open(dsn)
        try:
            self.create_schema()
        finally:
            self.close()

    def create_schema(self) -> None:
        """Create the schema on the open connection(s)."""
        raise NotImplementedError

    def open(self, dsn: str) -> None:
        """Connect to the work database ``dsn``."""
        raise NotImplementedError

    def close(self) -> None:
        """Close every connection (the database is about to be copied or dropped)."""
        raise NotImplementedError

    def enqueue_each(self, items: list[dict[str, Any]]) -> None:
        """Store each change in its own transaction."""
        raise NotImplementedError

    def enqueue_batched(self, items: list[dict[str, Any]]) -> None:
        """Store the changes ``BATCH`` a statement."""
        raise NotImplementedError

    def drain_prepare(self) -> None:
        """Everything a drain needs before the clock starts (connections, worker objects)."""

    def drain_run(self) -> int:
        """Claim ``CLAIM`` at a time and complete them until nothing is left; return how
        many jobs this process handled."""
        raise NotImplementedError

    def counts(self) -> dict[str, int]:
        """``completed`` and ``left`` (anything not completed yet) in the store."""
        raise NotImplementedError

    def claim(self) -> tuple[Any, list[str]]:
        """One claim (latency works): (what ``complete`` needs, the record ids claimed)."""
        raise NotImplementedError

    def complete(self, handle: Any) -> None:
        """Complete what ``claim`` returned."""
        raise NotImplementedError

    def add_history(self, n: int) -> None:
        """Add ``n`` completed jobs (the history work)."""
        raise NotImplementedError

    def hold_hot(self) -> None:
        """Put one change of record ``HOT`` in flight (claimed, never completed)."""
        raise NotImplementedError

    def add_hot(self, items: list[dict[str, Any]]) -> None:
        """Enqueue changes of record ``HOT`` (they wait behind the one in flight)."""
        self.enqueue_batched(items)


def take_all(c: Contender) -> None:
    """Claim and complete until a claim comes back empty (the latency works' leftovers)."""
    while True:
        handle, records = c.claim()
        if not records:
            return
        c.complete(handle)


# --- plain psycopg SQL ----------------------------------------------------------------------

PLAIN_SCHEMA = """
CREATE TABLE jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model text NOT NULL,
    record_id text NOT NULL,
    payload jsonb NOT NULL,
    status text NOT NULL DEFAULT 'pending',
    created_at timestamptz NOT NULL DEFAULT now(),
    claimed_at timestamptz,
    completed_at timestamptz
);
CREATE INDEX jobs_pending ON jobs (id) WHERE status = 'pending';
CREATE INDEX jobs_completed ON jobs (completed_at) WHERE status = 'completed';
"""
PLAIN_INSERT = "INSERT INTO jobs (model, record_id, payload) VALUES (%s, %s, %s)"
PLAIN_INSERT_MANY = """
INSERT INTO jobs (model, record_id, payload)
SELECT * FROM unnest(%s::text[], %s::text[], %s::jsonb[])
"""
PLAIN_CLAIM = """
UPDATE jobs SET status = 'processing', claimed_at = now()
WHERE id IN (SELECT id FROM jobs WHERE status = 'pending' ORDER BY id LIMIT %s
             FOR UPDATE SKIP LOCKED)
RETURNING id, model, record_id, payload
"""
PLAIN_COMPLETE = """
UPDATE jobs SET status = 'completed', completed_at = now()
WHERE id = ANY(%s) AND status = 'processing'
"""
PLAIN_ANY_PENDING = "SELECT EXISTS (SELECT 1 FROM jobs WHERE status = 'pending')"
PLAIN_COUNTS = """
SELECT count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status <> 'completed')
FROM jobs
"""
PLAIN_HISTORY = """
INSERT INTO jobs (model, record_id, payload, status, created_at, claimed_at, completed_at)
SELECT %s, 'old' || (g %% 1000), jsonb_build_object('name', 'old', 'amount', g), 'completed',
       now() - interval '2 days', now() - interval '2 days', now() - interval '1 day'
FROM generate_series(1, %s) AS g
"""


class Plain(Contender):
    """What a good engineer writes by hand: a minimal jobs table, partial indexes, prepared
    statements, autocommit (one round trip per statement), ``unnest`` for batches and
    ``FOR UPDATE SKIP LOCKED`` for claims. No per-record order."""

    name = "plain"
    title = "plain SQL"
    hot = "no per-record order: the backlog is claimable"
    note = (
        "psycopg 3, prepared statements, autocommit; INSERT ... SELECT unnest(...) for batches;"
        " claim: UPDATE ... WHERE id IN (SELECT ... LIMIT 100 FOR UPDATE SKIP LOCKED)"
    )

    def create_schema(self) -> None:
        self.conn.execute(PLAIN_SCHEMA)

    def open(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True, application_name="bench-plain")
        self.cur = self.conn.cursor()

    def close(self) -> None:
        self.conn.close()

    def enqueue_each(self, items: list[dict[str, Any]]) -> None:
        for c in items:
            self.cur.execute(
                PLAIN_INSERT, (c["model"], c["record_id"], json.dumps(c["payload"])), prepare=True
            )

    def enqueue_batched(self, items: list[dict[str, Any]]) -> None:
        for batch in batches(items):
            self.cur.execute(
                PLAIN_INSERT_MANY,
                (
                    [c["model"] for c in batch],
                    [c["record_id"] for c in batch],
                    [json.dumps(c["payload"]) for c in batch],
                ),
                prepare=True,
            )

    def drain_run(self) -> int:
        done = 0
        while True:
            ids, _ = self.claim()
            if ids:
                self.complete(ids)
                done += len(ids)
            elif not self.cur.execute(PLAIN_ANY_PENDING).fetchone()[0]:  # type: ignore[index]
                return done

    def counts(self) -> dict[str, int]:
        completed, left = self.cur.execute(PLAIN_COUNTS).fetchone()  # type: ignore[misc]
        return {"completed": completed, "left": left}

    def claim(self) -> tuple[Any, list[str]]:
        rows = self.cur.execute(PLAIN_CLAIM, (CLAIM,), prepare=True).fetchall()
        return [r[0] for r in rows], [r[2] for r in rows]

    def complete(self, handle: Any) -> None:
        self.cur.execute(PLAIN_COMPLETE, (handle,), prepare=True)

    def add_history(self, n: int) -> None:
        self.cur.execute(PLAIN_HISTORY, (MODEL, n))


# --- syncqueue-tasks, public API only -------------------------------------------------------


class _NoopWriter:
    """The no-op job: every record is written at once."""

    def write_records(self, writes: Any) -> Any:
        from syncqueue_tasks.core.outcomes import Outcome

        return {w.key: Outcome.done() for w in writes}


class Ours(Contender):
    """syncqueue-tasks through ``syncqueue_tasks.store.queue`` (and ``tasks`` for ``.delay``)."""

    name = "ours"
    title = "syncqueue-tasks"
    note = (
        "public API only: queue.enqueue, enqueue_change.delay (direct mode), enqueue_many;"
        " the drain is a worker's path, batch.process with a no-op writer (claims of 100)"
    )

    def create_schema(self) -> None:
        from alembic import command
        from dbutil import alembic_config

        command.upgrade(alembic_config(), "head")

    def open(self, dsn: str) -> None:
        from dbutil import use_database

        os.environ["SYNCQUEUE_CLAIM_MAX_CHANGES"] = str(CLAIM)  # a claim takes 100 changes
        use_database(dsn)

    def close(self) -> None:
        from syncqueue_tasks.store.db import dispose_engine

        dispose_engine()

    def enqueue_each(self, items: list[dict[str, Any]]) -> None:
        from syncqueue_tasks.store import queue

        for c in items:
            queue.enqueue(c["action"], c["model"], c["record_id"], c["payload"])

    def enqueue_delay(self, items: list[dict[str, Any]]) -> None:
        """``enqueue_change.delay`` one change at a time (direct mode: commits in PostgreSQL)."""
        from syncqueue_tasks.celery.tasks import enqueue_change

        for c in items:
            enqueue_change.delay(c["action"], c["model"], c["record_id"], c["payload"])

    def enqueue_batched(self, items: list[dict[str, Any]]) -> None:
        from syncqueue_tasks.store import queue

        for batch in batches(items):
            queue.enqueue_many(batch)

    def drain_run(self) -> int:
        """What a worker's ``process_batch`` does, with a writer that writes nothing."""
        from syncqueue_tasks.celery import batch
        from syncqueue_tasks.store import queue

        done = 0
        while True:
            done += batch.process(_NoopWriter(), batch_size=CLAIM, time_budget=3600).completed
            stats = queue.get_queue_stats()
            if stats["pending"] + stats["processing"] == 0:
                return done
            time.sleep(0.001)  # what is left waits behind another process's claim

    def counts(self) -> dict[str, int]:
        from syncqueue_tasks.store import queue

        stats = queue.get_queue_stats()
        left = stats["pending"] + stats["processing"] + stats["failed"]
        return {"completed": stats["completed"], "left": left}

    def claim(self) -> tuple[Any, list[str]]:
        from syncqueue_tasks.store import queue

        items = queue.dequeue(CLAIM)
        return items, [i.record_id for i in items]

    def complete(self, handle: Any) -> None:
        from syncqueue_tasks.store import queue

        queue.mark_complete_many(handle)

    def add_history(self, n: int) -> None:
        """Through the API: enqueue ``n`` changes, then claim and complete them all."""
        from syncqueue_tasks.store import queue

        for start in range(0, n, BATCH):
            queue.enqueue_many(changes(start, min(BATCH, n - start), 1000, "old"))
        while items := queue.dequeue(1000):
            queue.mark_complete_many(items)

    def hold_hot(self) -> None:
        from syncqueue_tasks.store import queue

        queue.enqueue_many(changes(0, 1, 1, HOT))
        held = queue.dequeue(1)
        if [i.record_id for i in held] != [f"{HOT}0"]:
            raise RuntimeError(f"expected to claim the hot record's change, got {len(held)}")


# --- the asyncio peers --------------------------------------------------------------------


class AsyncContender(Contender):
    """A contender whose library is asyncio: one event loop per agent, kept across calls so
    connections (and their prepared statements) live from warm-up to the last repetition."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(coroutine)


def pgqueuer_payload(c: dict[str, Any]) -> bytes:
    return json.dumps({k: c[k] for k in ("model", "record_id", "payload")}).encode()


class PgQueuer(AsyncContender):
    """pgqueuer with its asyncpg driver (its fastest; the psycopg driver drained ~10x slower
    here): ``Queries.enqueue`` for single and batched jobs, ``QueueManager.run`` in drain mode
    with ``batch_size=100`` and a no-op entrypoint. Completed jobs leave its queue table."""

    name = "pgqueuer"
    title = "pgqueuer"
    history = "completed jobs are deleted from its queue table"
    hot = "no per-record order"
    note = (
        "asyncpg driver; Queries.enqueue (single, lists of 1,000);"
        " QueueManager.run(batch_size=100, mode=drain), no-op entrypoint"
    )

    def create_schema(self) -> None:
        self.run(self.queries.install())

    def open(self, dsn: str) -> None:
        import asyncpg
        from pgqueuer import Queries

        self.dsn = dsn
        self.conn = self.run(asyncpg.connect(dsn))
        self.queries = Queries.from_asyncpg_connection(self.conn)

    def close(self) -> None:
        self.run(self.conn.close())

    def enqueue_each(self, items: list[dict[str, Any]]) -> None:
        async def go() -> None:
            for c in items:
                await self.queries.enqueue("noop", pgqueuer_payload(c))

        self.run(go())

    def enqueue_batched(self, items: list[dict[str, Any]]) -> None:
        async def go() -> None:
            for batch in batches(items):
                n = len(batch)
                await self.queries.enqueue(
                    ["noop"] * n, [pgqueuer_payload(c) for c in batch], [0] * n
                )

        self.run(go())

    def drain_prepare(self) -> None:
        import asyncpg
        from pgqueuer import Queries, QueueManager

        self.handled = 0
        self.worker_conn = self.run(asyncpg.connect(self.dsn))
        self.qm = QueueManager(Queries.from_asyncpg_connection(self.worker_conn))

        async def noop(job: Any) -> None:
            self.handled += 1

        self.qm.entrypoint("noop")(noop)

    def drain_run(self) -> int:
        from datetime import timedelta

        from pgqueuer import types

        self.run(
            self.qm.run(
                batch_size=CLAIM,
                mode=types.QueueExecutionMode.drain,
                log_aggregation_interval=timedelta(0),
            )
        )
        self.run(self.worker_conn.close())
        return self.handled

    def counts(self) -> dict[str, int]:
        async def go() -> dict[str, int]:
            left = await self.conn.fetchval("SELECT count(*) FROM pgqueuer")
            completed = await self.conn.fetchval(
                "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'"
            )
            return {"completed": completed, "left": left}

        return dict(self.run(go()))


class Procrastinate(AsyncContender):
    """procrastinate with its psycopg connector: ``defer_async`` / ``batch_defer_async``, and a
    worker (``run_worker_async(wait=False)``, concurrency 1) per process. It fetches one job
    per statement (it has no batch claim); a record's order is its ``lock``. Finished jobs
    stay in its table (``delete_jobs="never"``, the default)."""

    name = "procrastinate"
    title = "procrastinate"
    claim_size = 1
    note = (
        "psycopg connector; defer_async, batch_defer_async (1,000); run_worker_async(wait=False,"
        " concurrency=1), no-op task; it fetches one job per statement (no batch claim), so its"
        " latency rows time one fetch; the hot record is its lock; drains 1/10 of the items"
    )

    def create_schema(self) -> None:
        self.run(self.app.schema_manager.apply_schema_async())

    def open(self, dsn: str) -> None:
        import procrastinate

        self.app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))
        self.handled = 0

        def noop(**kwargs: Any) -> None:
            self.handled += 1

        self.task = self.app.task(name="noop", queue=QUEUE)(noop)
        self.run(self.app.open_async())
        self.worker_id: int | None = None

    def close(self) -> None:
        self.run(self.app.close_async())

    def enqueue_each(self, items: list[dict[str, Any]]) -> None:
        async def go() -> None:
            for c in items:
                await self.task.defer_async(**c)

        self.run(go())

    def enqueue_batched(self, items: list[dict[str, Any]]) -> None:
        async def go() -> None:
            for batch in batches(items):
                await self.task.batch_defer_async(*batch)

        self.run(go())

    def drain_prepare(self) -> None:
        self.handled = 0

    def drain_run(self) -> int:
        self.run(
            self.app.run_worker_async(
                queues=[QUEUE],
                wait=False,
                concurrency=1,
                install_signal_handlers=False,
                listen_notify=False,
                delete_jobs="never",
            )
        )
        return self.handled

    def _query(self, sql: str) -> list[dict[str, Any]]:
        result = self.run(self.app.connector.execute_query_all_async(sql))
        return list(result)

    def counts(self) -> dict[str, int]:
        rows = self._query(
            "SELECT status::text AS s, count(*) AS n FROM procrastinate_jobs GROUP BY 1"
        )
        by = {r["s"]: r["n"] for r in rows}
        return {
            "completed": by.get("succeeded", 0),
            "left": sum(by.values()) - by.get("succeeded", 0),
        }

    def claim(self) -> tuple[Any, list[str]]:
        if self.worker_id is None:
            self.worker_id = self.run(self.app.job_manager.register_worker())
        job = self.run(self.app.job_manager.fetch_job(queues=[QUEUE], worker_id=self.worker_id))
        return job, [] if job is None else [job.task_kwargs["record_id"]]

    def complete(self, handle: Any) -> None:
        from procrastinate.jobs import Status

        self.run(self.app.job_manager.finish_job(handle, Status.SUCCEEDED, delete_job=False))

    def add_history(self, n: int) -> None:
        self.run(
            self.app.connector.execute_query_async(
                "INSERT INTO procrastinate_jobs (queue_name, task_name, args, status, attempts)"
                f" SELECT '{QUEUE}', 'noop', jsonb_build_object('record_id', 'old' || g),"
                " 'succeeded', 1 FROM generate_series(1, %(n)s) AS g",
                n=n,
            )
        )

    def hold_hot(self) -> None:
        self.run(self.task.configure(lock=HOT_LOCK).defer_async(**change(0, 1, HOT)))
        _, records = self.claim()
        if records != [f"{HOT}0"]:
            raise RuntimeError("expected to claim the hot record's job")

    def add_hot(self, items: list[dict[str, Any]]) -> None:
        hot = self.task.configure(lock=HOT_LOCK)

        async def go() -> None:
            for batch in batches(items):
                await hot.batch_defer_async(*batch)

        self.run(go())


def clean_redis(prefix: str) -> None:
    """Delete the kick keys and queued ``process_batch`` messages of the ``.delay`` row."""
    from redis import Redis
    from redis.exceptions import RedisError

    url = os.environ.get("CELERY_BROKER_URL", "") or "redis://localhost:6379/0"
    with contextlib.suppress(RedisError, OSError):
        redis = Redis.from_url(url, socket_connect_timeout=2)
        keys = [*redis.scan_iter(f"{prefix}*"), prefix]
        redis.delete(*keys)
        redis.close()


CONTENDERS: dict[str, Callable[[], Contender]] = {
    "plain": Plain,
    "pgqueuer": PgQueuer,
    "procrastinate": Procrastinate,
    "ours": Ours,
}
# The Python packages a contender needs beyond the project's own dependencies.
NEEDS = {"pgqueuer": ("pgqueuer", "asyncpg"), "procrastinate": ("procrastinate",)}
