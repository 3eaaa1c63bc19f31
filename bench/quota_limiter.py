"""Requests per minute that the account limiter admits, against the quota-enforcing fake.

Run from the repository root (needs Redis, ``SYNCQUEUE_REDIS_URL`` or redis://127.0.0.1:6379/0)::

    .venv/bin/python bench/quota_limiter.py [--factor 20] [--minutes 3]

1, 2 and 4 worker processes share one service account, each with a spreadsheet of its own, and
send as fast as their limiter lets them: per round one read and two writes (a batch's shape).
The fake enforces Google's 60 reads and 60 writes per rolling minute per account, on a clock
``--factor`` times faster than real time (the limiter's window is scaled the same way). Printed
per configuration: reads and writes admitted per minute, 429s answered by the fake, each
process's share, the most requests in any rolling minute, and how evenly the writes spread over
tenths of a minute. ``sliding`` is the previous limiter (``RateLimiter``, a sliding-window log)
for comparison.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from redis import Redis  # noqa: E402

from syncqueue_tasks.writers.flow import AccountLimiter, Budget  # noqa: E402
from tests.fake_sheets import FakeSheets, Quota  # noqa: E402

# The sliding-window log the Sheets writer used before issue 11 (for comparison only).
_SLIDING_WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
"""


class RateLimiter:
    """At most ``limit`` grants per sliding ``window`` seconds, shared through ``key``."""

    def __init__(self, redis: Redis, key: str, limit: int, window: float = 60.0) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("limit must be >= 1 and window > 0")
        self.key = key
        self.limit = limit
        self.window = window
        self._script = redis.register_script(_SLIDING_WINDOW)

    def try_acquire(self) -> float:
        """Take a slot if one is free: return 0.0, else the seconds until one frees up."""
        wait_us = self._script(
            keys=[self.key],
            args=[self.limit, int(self.window * 1_000_000), uuid.uuid4().hex],
        )
        return int(wait_us) / 1_000_000

    def acquire(self, max_wait: float) -> float:
        """Wait up to ``max_wait`` seconds for a slot: 0.0 when granted, else a retry-after hint."""
        deadline = time.monotonic() + max_wait
        while True:
            wait = self.try_acquire()
            if wait == 0.0:
                return 0.0
            remaining = deadline - time.monotonic()
            if wait > remaining:
                return wait
            time.sleep(wait + random.uniform(0.0, 0.01))  # jitter: don't stampede together


REDIS_URL = os.environ.get("SYNCQUEUE_REDIS_URL", "redis://127.0.0.1:6379/0")
ACCOUNT = "bench-sa@fake.iam.gserviceaccount.com"
ROUND = ("read", "write", "write")


def _worker(
    mode: str, url: str, sid: str, prefix: str, factor: float, span: tuple[float, float], out: Any
) -> None:
    """Send limited requests from ``span[0]`` to ``span[1]`` (epoch seconds); put
    [(kind, at, status)] on out."""
    start, until = span
    redis = Redis.from_url(REDIS_URL)
    minute = 60.0 / factor
    if mode == "gcra":
        budget = Budget(quota=60, window=minute, margin=2.0 / factor, burst=2)
        limiter = AccountLimiter(
            redis, ACCOUNT, {"read": budget, "write": budget}, key_prefix=prefix
        )

        def admit(kind: str, max_wait: float) -> float:
            return limiter.wait_for(kind, max_wait, spreadsheet=sid)
    else:
        sliding = {k: RateLimiter(redis, f"{prefix}:{k}", 60, minute) for k in ("read", "write")}

        def admit(kind: str, max_wait: float) -> float:
            return sliding[kind].acquire(max_wait)

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {ACCOUNT}"
    body = {"valueInputOption": "RAW", "data": [{"range": "T!A1", "values": [["x"]]}]}
    sent = []
    time.sleep(max(0.0, start - time.time()))
    while time.time() < until:
        for kind in ROUND:
            if admit(kind, until - time.time()) != 0.0:
                break
            at = time.time()
            if kind == "read":
                answer = session.get(f"{url}/v4/spreadsheets/{sid}/values/T!A1", timeout=10)
            else:
                answer = session.post(
                    f"{url}/v4/spreadsheets/{sid}/values:batchUpdate", json=body, timeout=10
                )
            sent.append((kind, at, answer.status_code))
    out.put((sid, sent))
    redis.close()


def _most_in_any_window(times: list[float], window: float) -> int:
    times, best, lo = sorted(times), 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def run(mode: str, processes: int, factor: float, minutes: float) -> dict[str, Any]:
    """One configuration; returns its figures."""
    fake = FakeSheets(quota=Quota(time_factor=factor)).start()
    prefix = f"bench:quota:{uuid.uuid4().hex}"
    sids = [f"bench-{i}" for i in range(processes)]
    for sid in sids:
        fake.add_spreadsheet(sid, {"T": [["x"]]})
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    minute = 60.0 / factor
    start = time.time() + 2.0 + processes  # let the processes start (spawn imports)
    until = start + minutes * minute
    procs = [
        ctx.Process(target=_worker, args=(mode, fake.url, sid, prefix, factor, (start, until), out))
        for sid in sids
    ]
    try:
        for p in procs:
            p.start()
        results = dict(out.get(timeout=minutes * minute + 60) for _ in procs)
        for p in procs:
            p.join(10)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        fake.stop()
        redis = Redis.from_url(REDIS_URL)
        keys = list(redis.scan_iter(f"{prefix}:*"))
        if keys:
            redis.delete(*keys)
        redis.close()
    sent = [s for per in results.values() for s in per]
    ok = {
        k: [at for kind, at, status in sent if kind == k and status == 200]
        for k in ("read", "write")
    }
    per_minute = {k: len(v) / minutes for k, v in ok.items()}
    tenth = minute / 10
    first = start
    bins = [0] * int(minutes * 10)
    for at in ok["write"]:
        index = int((at - first) // tenth)
        if index < len(bins):
            bins[index] += 1
    counts = fake.quota_counts(ACCOUNT)
    shares = [
        sum(1 for kind, _, status in results[sid] if kind == "write" and status == 200)
        for sid in sids
    ]
    return {
        "mode": mode,
        "processes": processes,
        "reads/min": per_minute["read"],
        "writes/min": per_minute["write"],
        "429 read": counts["read_429"],
        "429 write": counts["write_429"],
        "max writes in any minute": _most_in_any_window(ok["write"], minute),
        "writes per tenth (min-max)": f"{min(bins[1:-1] or bins)}-{max(bins[1:-1] or bins)}",
        "write share per process": "/".join(str(n) for n in shares),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factor", type=float, default=20.0, help="quota minutes per real minute")
    parser.add_argument(
        "--minutes", type=float, default=3.0, help="quota minutes per configuration"
    )
    args = parser.parse_args()
    print(f"quota 60 reads + 60 writes per rolling minute per account; clock x{args.factor:g}; "
          f"{args.minutes:g} quota minutes per row; limiter: margin 2 s, burst 2")  # fmt: skip
    rows = [run("gcra", n, args.factor, args.minutes) for n in (1, 2, 4)]
    rows.append(run("sliding", 2, args.factor, args.minutes))
    header = list(rows[0])
    print(" | ".join(header))
    for row in rows:
        print(
            " | ".join(
                f"{row[h]:.1f}" if isinstance(row[h], float) else str(row[h]) for h in header
            )
        )


if __name__ == "__main__":
    main()
