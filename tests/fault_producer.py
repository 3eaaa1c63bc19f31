"""A producer process for fault tests and the soak: calls ``.delay()`` and logs what was accepted.

Run as ``python tests/fault_producer.py --out FILE ...`` with the environment of the pipeline
under test (CELERY_BROKER_URL, CELERY_QUEUE, DATABASE_URL, SYNCQUEUE_MAX_RETRIES...). Every
accepted change is appended to ``--out`` as one JSON line, flushed at once, so a test can read
the log even if this process is killed:

    {"id", "model", "record_id", "seq", "t", "lat", "bulk"}

``seq`` numbers the changes of one record in call order (0, 1, 2, ...): enqueue order. ``t``
is the wall-clock time the call started, ``lat`` its duration in seconds. A call that raises
logs ``{"error", "t", "lat"}`` and its change is not accepted. At the end one summary line is
printed on stdout.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, required=True, help="JSON-lines log of accepted changes")
    p.add_argument("--changes", type=int, default=2000, help="changes to enqueue")
    p.add_argument("--records", type=int, default=250, help="records the changes spread over")
    p.add_argument("--prefix", default="r", help="record id prefix (records of this producer)")
    p.add_argument("--model", default="Request")
    p.add_argument("--rate", type=float, default=200.0, help="target changes per second")
    p.add_argument(
        "--bulk-every",
        type=int,
        default=0,
        help="every Nth call is one enqueue_changes.delay of --bulk-size changes (0: never)",
    )
    p.add_argument("--bulk-size", type=int, default=5)
    p.add_argument("--max-seconds", type=float, default=0.0, help="stop early after this long")
    p.add_argument("--seed", type=int, default=1)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from syncqueue_tasks.celery.tasks import enqueue_change, enqueue_changes
    from syncqueue_tasks.core.errors import EnqueueError, ValidationError

    rng = random.Random(args.seed)
    seq: dict[str, int] = {}
    accepted = errors = calls = 0
    max_lat = 0.0
    started = time.monotonic()
    deadline = started + args.max_seconds if args.max_seconds > 0 else float("inf")

    def change_for(record_id: str) -> dict[str, Any]:
        n = seq.get(record_id, 0)
        return {
            "action": "CREATE" if n == 0 else "UPDATE",
            "model": args.model,
            "record_id": record_id,
            "payload": {"seq": n, "value": rng.randrange(1_000_000)},
        }

    with args.out.open("a", encoding="utf-8") as log:
        while accepted < args.changes and time.monotonic() < deadline:
            ahead = started + accepted / args.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            calls += 1
            bulk = bool(args.bulk_every) and calls % args.bulk_every == 0
            size = min(args.bulk_size if bulk else 1, args.changes - accepted)
            records = rng.sample(range(args.records), min(size, args.records))
            changes = [change_for(f"{args.prefix}{k}") for k in records]
            t = time.time()
            t0 = time.perf_counter()
            try:
                if bulk:
                    prepared = enqueue_changes.prepare(changes).message
                    enqueue_changes.delay(**prepared)
                    ids = prepared["item_ids"]
                else:
                    c = changes[0]
                    ids = [
                        enqueue_change.delay(
                            c["action"], c["model"], c["record_id"], c["payload"]
                        ).id
                    ]
            except (EnqueueError, ValidationError) as exc:
                lat = time.perf_counter() - t0
                errors += 1
                log.write(json.dumps({"error": f"{type(exc).__name__}: {exc}", "t": t, "lat": lat}))
                log.write("\n")
                log.flush()
                time.sleep(0.05)
                continue
            lat = time.perf_counter() - t0
            max_lat = max(max_lat, lat)
            for item_id, c in zip(ids, changes, strict=True):
                seq[c["record_id"]] = c["payload"]["seq"] + 1
                log.write(
                    json.dumps(
                        {
                            "id": item_id,
                            "model": c["model"],
                            "record_id": c["record_id"],
                            "seq": c["payload"]["seq"],
                            "t": t,
                            "lat": lat,
                            "bulk": bulk,
                        }
                    )
                    + "\n"
                )
            log.flush()
            accepted += len(ids)
    summary = {
        "accepted": accepted,
        "errors": errors,
        "calls": calls,
        "max_latency": max_lat,
        "seconds": time.monotonic() - started,
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
