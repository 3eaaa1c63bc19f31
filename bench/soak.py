"""Soak: many changes through the full pipeline, with periodic faults, and an exact accounting.

    .venv/bin/python bench/soak.py                      # 100,000 changes, at most 20 minutes
    .venv/bin/python bench/soak.py --changes 10000 --max-minutes 6
    SYNCQUEUE_ENQUEUE_MODE=broker .venv/bin/python bench/soak.py --changes 30000 --records 300 \
        --fault-every 8 --max-minutes 9 --seed 1 --broker redis --json soak.json

Everything runs on servers this script starts and stops itself (by pid): an embedded
PostgreSQL on its own folder and port (migrated with Alembic) and a persistent embedded Redis
(the broker, and the package's own Redis) on its own port; never the shared ones. With
``--broker amqp`` the broker is the local RabbitMQ instead, in a virtual host of this run's
own (deleted at the end). The enqueue mode is the environment's ``SYNCQUEUE_ENQUEUE_MODE``.
The pipeline:

    producer subprocess (.delay(), tests/fault_producer.py)
      -> PostgreSQL / Redis -> 2 Celery worker processes + beat (process_batch every second)
      -> the flaky recording writer (tests/recording_writer.py:flaky_span: a share of calls fail
         retryably, half of those after writing: the lost-response case)

Faults, one every ``--fault-every`` seconds while the producer runs, in turn: SIGKILL of a
worker's process group (a new worker replaces it), a broker outage (Redis: a restart, down
3 s; RabbitMQ: every connection of the run's virtual host closed), a PostgreSQL restart (fast
shutdown, or an immediate one every other time). ``--seed`` fixes the producer's changes and
the choice of victims. A thread calls ``queue.reset_stuck``
like beat would; a worker or beat that exits on its own is restarted (as a supervisor would).

The time bound (``--max-minutes``) covers everything: the producer stops early if needed and
the drain gets what is left. The report (also written as JSON with ``--json``) gives changes
accepted and written, lost (must be 0; on Redis, split into those whose message is still in
the broker and those gone from it: popped and never recorded as unacknowledged), records in
two writes at the same time (must be 0), records whose final state is not their last change
(must be 0), end-to-end latency (max, p99), peak queue depth and the rows left per status.
Exit status 1 if a promise was broken.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from alembic import command  # noqa: E402
from dbutil import alembic_config, use_database  # noqa: E402
from faultkit import (  # noqa: E402
    Fleet,
    Janitor,
    Producer,
    RabbitVhost,
    account,
    broker_backlog,
    broker_whereabouts,
    completed_of,
    pipeline_env,
    statuses,
)
from sqlalchemy.exc import SQLAlchemyError  # noqa: E402

from syncqueue_tasks.local.embedded import EmbeddedPostgres, EmbeddedRedis, free_port  # noqa: E402

TAKEN_NEVER_SAVED = "restored a message its worker took but never saved"  # broker_guard's log


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--changes", type=int, default=100_000)
    p.add_argument("--records", type=int, default=2_000)
    p.add_argument("--rate", type=float, default=150.0, help="producer target, changes/s")
    p.add_argument("--bulk-every", type=int, default=2, help="every Nth call: enqueue_changes")
    p.add_argument("--max-minutes", type=float, default=20.0, help="bound for the whole run")
    p.add_argument("--workers", type=int, default=2, help="Celery worker processes")
    p.add_argument("--concurrency", type=int, default=1, help="pool processes per worker")
    p.add_argument("--fault-every", type=float, default=45.0, help="seconds between faults")
    p.add_argument("--fail-rate", type=float, default=0.3, help="flaky writer failure share")
    p.add_argument("--stuck-seconds", type=float, default=30.0, help="reset_stuck threshold")
    p.add_argument("--seed", type=int, help="producer and fault choices (default: random)")
    p.add_argument("--broker", choices=("redis", "amqp"), default="redis")
    p.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672", help="RabbitMQ")
    p.add_argument("--workdir", type=Path, help="keep logs and data here (default: temp dir)")
    p.add_argument("--json", type=Path, help="also write the report here")
    return p.parse_args(argv)


class Soak:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.seed = random.randrange(1 << 30) if args.seed is None else args.seed
        self.rng = random.Random(self.seed)
        self.rabbit = RabbitVhost(args.amqp_url) if args.broker == "amqp" else None
        self.workdir = workdir
        self.started = time.monotonic()
        self.deadline = self.started + args.max_minutes * 60
        self.pg = EmbeddedPostgres(workdir / "pg", port=free_port())
        self.redis = EmbeddedRedis(data_dir=workdir / "redis", persistent=True)
        self.written = workdir / "written.jsonl"
        self.faults: list[dict[str, Any]] = []
        self.peak_backlog = 0
        self.peak_broker = 0
        self.beat_restarts = 0
        self.db_sample_errors = 0
        self.fleet: Fleet | None = None
        self.producer: Producer | None = None

    @staticmethod
    def mode() -> str:
        return os.environ.get("SYNCQUEUE_ENQUEUE_MODE", "") or "direct"

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def log(self, message: str) -> None:
        print(f"[{self.elapsed():7.1f}s] {message}", flush=True)

    # -- setup --------------------------------------------------------------------------------

    def start(self) -> None:
        self.pg.start()
        self.redis.start()
        if self.rabbit is not None:
            self.rabbit.__enter__()
        self.broker_url = self.redis.url if self.rabbit is None else self.rabbit.url
        assert self.pg.tcp_url is not None
        use_database(self.pg.tcp_url)
        command.upgrade(alembic_config(), "head")
        env = pipeline_env(
            self.written,
            DATABASE_URL=self.pg.tcp_url,
            CELERY_BROKER_URL=self.broker_url,
            SYNCQUEUE_REDIS_URL=self.redis.url,
            CELERY_QUEUE="soak",
            SYNCQUEUE_WRITER="recording_writer:flaky_span",
            RECORDING_FAIL_RATE=str(self.args.fail_rate),
            SYNCQUEUE_PROCESS_BATCH_EVERY="1",
        )
        self.env = env
        self.fleet = Fleet(self.workdir, env)
        for _ in range(self.args.workers):
            self.fleet.worker(self.args.concurrency)
        self.beat = self.fleet.beat()
        production = max(30.0, self.args.max_minutes * 60 * 0.8 - self.elapsed())
        self.producer = Producer(
            self.workdir,
            env,
            changes=self.args.changes,
            records=self.args.records,
            rate=self.args.rate,
            bulk_every=self.args.bulk_every,
            max_seconds=production,
            seed=self.seed,
        )
        self.log(
            f"seed {self.seed}, enqueue mode {self.mode()}, broker {self.args.broker}; "
            f"postgres pid {self.pg.pid} port {self.pg.port}, redis pid {self.redis.pid} "
            f"port {self.redis.port}, {self.args.workers} worker(s), beat, producer "
            f"pid {self.producer.proc.pid} ({self.args.changes} changes, {production:.0f}s max)"
        )

    # -- faults -------------------------------------------------------------------------------

    def fault(self, n: int) -> None:
        assert self.fleet is not None
        broker_fault = "restart-redis" if self.rabbit is None else "drop-amqp-connections"
        kind = ("kill-worker", broker_fault, "restart-postgres")[n % 3]
        t0 = time.monotonic()
        detail = ""
        if kind == "kill-worker":
            alive = [w for w in self.fleet.workers() if w.proc.poll() is None]
            victim = self.rng.choice(alive)
            processing = self._processing()
            self.fleet.kill(victim)
            self.fleet.worker(self.args.concurrency)
            detail = f"pid {victim.pid}, {processing} row(s) PROCESSING at the kill"
        elif kind == "restart-redis":
            self.redis.stop()
            time.sleep(3)
            self.redis.start()
            detail = "down 3s"
        elif kind == "drop-amqp-connections":
            assert self.rabbit is not None
            detail = f"{self.rabbit.drop_connections()} connection(s) closed"
        else:
            immediate = (n // 3) % 2 == 1
            self.pg.stop(immediate=immediate)
            time.sleep(3)
            self.pg.start()
            detail = f"{'immediate' if immediate else 'fast'} shutdown, down 3s"
        took = time.monotonic() - t0
        self.faults.append({"at_s": round(self.elapsed(), 1), "kind": kind, "detail": detail})
        self.log(f"fault {n + 1}: {kind} ({detail}; {took:.1f}s)")

    def _processing(self) -> int | str:
        try:
            return statuses()["PROCESSING"]
        except SQLAlchemyError:
            return "?"

    # -- monitoring ---------------------------------------------------------------------------

    def sample(self) -> dict[str, int] | None:
        try:
            counts = statuses()
        except SQLAlchemyError:
            self.db_sample_errors += 1
            return None
        self.peak_backlog = max(self.peak_backlog, counts["PENDING"] + counts["PROCESSING"])
        self.peak_broker = max(self.peak_broker, self._broker_backlog() or 0)
        return counts

    def _broker_backlog(self) -> int | None:
        """Messages the broker still holds (queued or unacknowledged); None if unknown."""
        try:
            return broker_backlog(self.broker_url, "soak", self.rabbit)
        except Exception:
            return None

    def supervise(self) -> None:
        """Restart what exited on its own (a worker, beat), as a process supervisor would."""
        assert self.fleet is not None
        for _ in range(self.fleet.revive()):
            self.log(f"worker exited on its own: {self.fleet.revived[-1][:200]}")
        if self.beat.proc.poll() is not None:
            self.beat_restarts += 1
            self.log("beat exited on its own; restarting it")
            self.beat = self.fleet.beat()

    def run(self) -> dict[str, Any]:
        assert self.producer is not None
        with Janitor(threshold_seconds=self.args.stuck_seconds, every=1.0) as janitor:
            next_fault = self.started + self.args.fault_every
            n = 0
            last_report = 0.0
            while self.producer.running() and time.monotonic() < self.deadline:
                if time.monotonic() >= next_fault:
                    self.fault(n)
                    n += 1
                    next_fault = time.monotonic() + self.args.fault_every
                self.supervise()
                counts = self.sample()
                if time.monotonic() - last_report > 15 and counts:
                    last_report = time.monotonic()
                    accepted = len(self.producer.accepted())
                    self.log(f"accepted {accepted}, rows {counts}")
                time.sleep(0.5)
            if self.producer.running():
                self.producer.stop()
            summary = self.producer.wait(30) if self.producer.proc.returncode == 0 else {}
            accepted = self.producer.accepted()
            self.log(f"producer done: {summary or 'stopped'}; draining")
            counts = self._drain([a["id"] for a in accepted])
            self.log(f"drained: {counts}")
            reset = janitor.reset
        acc = account(accepted, self.written)
        where = {}
        if acc.rows_missing and self.rabbit is None:
            where = broker_whereabouts(self.redis.url, "soak", [a["id"] for a in accepted])
        calls = [a["lat"] for a in self.producer.accepted()]
        errors = self.producer.errors()
        assert self.fleet is not None
        summary_acc = acc.summary()
        report = {
            "seed": self.seed,
            "enqueue_mode": self.mode(),
            "broker": self.args.broker,
            "changes_requested": self.args.changes,
            "changes_accepted": acc.accepted,
            "enqueue_errors": len(errors),
            "written_changes": acc.written_ids,
            "written_lines": acc.written_lines,
            "lost": len(acc.lost),
            "lost_never_stored": acc.rows_missing,
            "lost_messages_still_in_broker": len(where),
            # Redis: gone from the list and never saved as unacknowledged (kombu's window)
            "lost_gone_from_broker": acc.rows_missing - len(where) if self.rabbit is None else 0,
            # Redis: messages a worker took (BLMOVE) and never saved as unacknowledged, put back
            # by the guarded transport: what kombu's own transport would have lost
            "taken_never_saved_restored": self.fleet.logs().count(TAKEN_NEVER_SAVED),
            "records_in_two_writes_at_once": len(acc.overlaps),
            "duplicates_across_time": acc.duplicates,
            "records_with_stale_final_write": len(acc.stale_final),
            "latency_end_to_end_max_s": summary_acc["latency_max"],
            "latency_end_to_end_p99_s": summary_acc["latency_p99"],
            "store_delay_p99_s": summary_acc["store_delay_p99"],
            "store_delay_max_s": summary_acc["store_delay_max"],
            "delay_call_latency_max_s": round(max(calls, default=0.0), 4),
            "peak_queue_depth_rows": self.peak_backlog,
            "peak_broker_queue_length": self.peak_broker,
            "rows_per_status": acc.statuses,
            "faults": self.faults,
            "reset_stuck_rows": reset,
            "workers_exited_on_their_own": self.fleet.revived,
            "beat_restarts": self.beat_restarts,
            "elapsed_s": round(self.elapsed(), 1),
            "examples": {
                "lost": acc.lost[:3],
                "stale_final": acc.stale_final[:3],
                "overlaps": acc.overlaps[:3],
            },
        }
        return report

    def _drain(self, ids: list[str]) -> dict[str, int]:
        """Wait for the backlog to empty (supervising), within the deadline."""
        last: dict[str, int] = {}
        quiet_since = time.monotonic()
        while time.monotonic() < self.deadline:
            self.supervise()
            counts = self.sample()
            if counts is None:
                time.sleep(0.5)
                continue
            if counts != last:
                last, quiet_since = counts, time.monotonic()
            idle = counts["PENDING"] == 0 and counts["PROCESSING"] == 0
            idle = idle and self._broker_backlog() == 0  # a message still to be stored
            try:
                if idle and completed_of(ids) == len(ids):
                    break
            except SQLAlchemyError:
                pass
            if idle and time.monotonic() - quiet_since > 60:
                break  # nothing left to process; what is missing is not coming
            time.sleep(0.5)
        return last

    def stop(self) -> None:
        if self.producer is not None:
            self.producer.stop()
        if self.fleet is not None:
            self.fleet.stop_all()
        if self.rabbit is not None:
            self.rabbit.__exit__(None, None, None)
        self.redis.stop()
        self.pg.stop()


def print_report(report: dict[str, Any]) -> None:
    width = max(len(k) for k in report)
    print("\n== soak report " + "=" * 60)
    for key, value in report.items():
        if key in ("faults", "examples", "workers_exited_on_their_own"):
            continue
        print(f"{key:<{width}}  {value}")
    print(f"{'faults':<{width}}  {len(report['faults'])}:")
    for fault in report["faults"]:
        print(f"{'':<{width}}    {fault['at_s']:7.1f}s {fault['kind']:<17} {fault['detail']}")
    print(f"{'workers_exited_on_their_own':<{width}}  {len(report['workers_exited_on_their_own'])}")
    for line in report["workers_exited_on_their_own"][:5]:
        print(f"{'':<{width}}    {line[:160]}")
    for kind, items in report["examples"].items():
        for item in items:
            print(f"{'example ' + kind:<{width}}  {item[:200]}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="syncqueue-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    session_url = os.environ.get("DATABASE_URL")
    soak = Soak(args, workdir)
    try:
        soak.start()
        report = soak.run()
    finally:
        soak.stop()
        if session_url is not None:
            os.environ["DATABASE_URL"] = session_url
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if (
        args.workdir is None
        and report["lost"] == 0
        and report["records_in_two_writes_at_once"] == 0
    ):
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"logs and data kept in {workdir}")
    broken = report["lost"] or report["records_in_two_writes_at_once"]
    broken = broken or report["records_with_stale_final_write"]
    left = {s: n for s, n in report["rows_per_status"].items() if s != "COMPLETED" and n}
    return 1 if broken or left else 0


if __name__ == "__main__":
    sys.exit(main())
