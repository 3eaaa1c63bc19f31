"""What the embedded Redis's append-only file (``appendfsync always``) costs ``.delay()``.

Broker mode (``SYNCQUEUE_ENQUEUE_MODE=broker``): every ``enqueue_change.delay()`` is one publish
to Redis, so every call waits for Redis to write and fsync the message. Two embedded Redis
servers are started the way ``syncqueue run`` starts its own (password, renamed commands,
127.0.0.1), one with the append-only file (fsync always), one without persistence, both with
their data in a folder on the same filesystem as ``.syncqueue`` (``--dir``, default: a
temporary folder in the current one). Rounds alternate between the two, each in a fresh
process (the package reads its broker URL at import), so that load from other processes
falls on both alike. No worker consumes; each round deletes its own queue afterwards.

    .venv/bin/python bench/aof_cost.py                 # 6 rounds x 2,000 calls per server
    .venv/bin/python bench/aof_cost.py --rounds 2 --calls 500

Prints p50 / p99 / mean per server and the difference; ``--json FILE`` writes them too.
Both servers are stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_CHILD = """
import json, sys, time, redis
from syncqueue_tasks.celery.tasks import enqueue_change
calls, warmup = int(sys.argv[1]), int(sys.argv[2])
samples = []
for i in range(warmup + calls):
    start = time.perf_counter()
    enqueue_change.delay("UPDATE", "Request", str(i % 500), {"status": "open", "n": i})
    if i >= warmup:
        samples.append(time.perf_counter() - start)
client = redis.Redis.from_url(sys.argv[3])
client.delete(sys.argv[4])
client.close()
print(json.dumps(samples))
"""


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * len(ordered)) - 1))]


def one_round(url: str, calls: int, warmup: int) -> list[float]:
    """``calls`` timed ``.delay()`` calls in a fresh process publishing to ``url``."""
    queue = f"syncqueue_aofbench_{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCQUEUE_", "CELERY_"))}
    env.update(
        CELERY_BROKER_URL=url, CELERY_QUEUE=queue, SYNCQUEUE_ENQUEUE_MODE="broker",
        PYTHONPATH=str(ROOT),
    )  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(calls), str(warmup), url, queue],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    return [float(x) for x in json.loads(out.stdout.strip().splitlines()[-1])]


def summary(samples: list[float]) -> dict[str, float]:
    """p50, p99 and mean in milliseconds."""
    return {
        "p50_ms": round(percentile(samples, 50) * 1000, 3),
        "p99_ms": round(percentile(samples, 99) * 1000, 3),
        "mean_ms": round(statistics.fmean(samples) * 1000, 3),
    }


def main() -> int:
    """Run the rounds, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds per server")
    parser.add_argument("--calls", type=int, default=2000, help="timed calls per round")
    parser.add_argument("--warmup", type=int, default=100, help="untimed calls per round")
    parser.add_argument("--dir", type=Path, default=Path.cwd(), help="where the data goes")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from syncqueue_tasks.local.embedded import EmbeddedRedis

    work = Path(tempfile.mkdtemp(prefix=".aofbench-", dir=args.dir))
    servers = {
        "aof_always": EmbeddedRedis(data_dir=work / "aof", persistent=True),
        "no_persistence": EmbeddedRedis(data_dir=work / "none", persistent=False),
    }
    samples: dict[str, list[float]] = {name: [] for name in servers}
    started = time.monotonic()
    try:
        for server in servers.values():
            server.start()
        for n in range(args.rounds):
            order = list(servers) if n % 2 == 0 else list(reversed(servers))
            for name in order:
                samples[name] += one_round(servers[name].url, args.calls, args.warmup)
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    figures = {name: summary(values) for name, values in samples.items()}
    with_aof, without = figures["aof_always"], figures["no_persistence"]
    print(f"enqueue_change.delay(), broker mode, embedded Redis; {args.rounds} rounds x "
          f"{args.calls} calls per server, alternating; data on {args.dir}")  # fmt: skip
    print(f"{'':<34}{'p50':>10}{'p99':>10}{'mean':>10}")
    for name, label in (("no_persistence", "no persistence"), ("aof_always", "AOF, fsync always")):
        row = figures[name]
        print(f"{label:<34}{row['p50_ms']:>8.2f}ms{row['p99_ms']:>8.2f}ms{row['mean_ms']:>8.2f}ms")
    diff = {k: round(with_aof[k] - without[k], 3) for k in with_aof}
    print(f"{'cost of the AOF':<34}{diff['p50_ms']:>8.2f}ms{diff['p99_ms']:>8.2f}ms"
          f"{diff['mean_ms']:>8.2f}ms")  # fmt: skip
    load = os.getloadavg()
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, load {load[0]:.1f}; "
          f"{time.monotonic() - started:.0f}s")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"figures": figures, "cost": diff}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
