"""Flow control shared by every worker process, kept in Redis.

- :class:`AccountLimiter`: the request budget of one service account (Google counts its quota
  per user and per kind), shared by all its spreadsheets and all processes. One Lua script
  (Redis' own clock) runs a GCRA per kind: requests are paced one emission interval apart, with
  a small burst, so that no rolling window ever holds more than the quota. A caller reserves its
  slot and sleeps until it; a caller that would wait longer than it may is told the real expected
  wait and reserves nothing. Fairness: a spreadsheet holds at most one future slot per kind, so
  busy spreadsheets of one account take turns (round robin), while a lone busy spreadsheet still
  gets the whole budget.
- :class:`SpreadsheetLock`: at most one holder at a time (``SET NX PX`` with a random token;
  refreshed and released only by compare-and-set scripts, so an expired holder can't free
  someone else's lock). The holder may publish when it expects to finish (:meth:`expect`); a
  waiter is then told that wait instead of the lock's time-to-live.

All wait only briefly: a caller that can't get in should give the work back for later.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from redis import Redis

from syncqueue_tasks.settings import SheetsConfig

KINDS = ("read", "write")

# GCRA with reservations, for one or more kinds at once. KEYS: per kind, its theoretical
# arrival time (us) and the hash of each spreadsheet's last reserved slot. ARGV: the longest
# wait the caller accepts (us), the spreadsheet, then per kind: emission interval (us), burst
# tolerance (us), how many requests. Finds the first instant T at which every kind's requests
# all conform (sent together at T), reserves them there and returns T - now (us); or returns
# minus the expected wait and reserves nothing (T too far, or the spreadsheet already holds a
# future slot of one of the kinds: it waits its turn, so busy spreadsheets take turns).
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local max_wait, sheet = tonumber(ARGV[1]), ARGV[2]
local kinds = (#ARGV - 2) / 3
local at, blocked = now, false
for i = 1, kinds do
  local interval, tau, count = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1]),
    tonumber(ARGV[3 * i + 2])
  local tat = math.max(tonumber(redis.call('GET', KEYS[2 * i - 1]) or now), now)
  local own = tonumber(redis.call('HGET', KEYS[2 * i], sheet) or 0)
  at = math.max(at, tat + (count - 1) * interval - tau)
  if own > now then
    blocked = true
    at = math.max(at, own + interval)
  end
end
if blocked or at - now > max_wait then return -(at - now) end
for i = 1, kinds do
  local interval, count = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 2])
  local tat = math.max(tonumber(redis.call('GET', KEYS[2 * i - 1]) or now), now, at)
  local ttl = math.ceil((tat + count * interval - now) / 1000) + 1000
  redis.call('SET', KEYS[2 * i - 1], tat + count * interval, 'PX', ttl)
  redis.call('HSET', KEYS[2 * i], sheet, at)
  redis.call('PEXPIRE', KEYS[2 * i], ttl)
end
return at - now
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1], KEYS[2]) end
return 0
"""

# KEYS: the lock, its expected-release key. ARGV: token, seconds from now, ttl (ms).
_EXPECT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('SET', KEYS[2], now + math.floor(tonumber(ARGV[2]) * 1000000), 'PX', ARGV[3])
return 1
"""

# KEYS: the lock, its expected-release key. Returns {0, 0} when free, {1, us} with the
# holder's published expectation, or {2, us} with the lock's time-to-live when it published none.
_EXPECTED_WAIT = """
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then return {0, 0} end
local eta = tonumber(redis.call('GET', KEYS[2]) or 0)
if eta == 0 then return {2, ttl * 1000} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
return {1, math.max(0, math.min(eta - now, ttl * 1000))}
"""

_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


@dataclass(frozen=True)
class Budget:
    """Pacing for one kind: ``quota`` requests per ``window`` seconds, stretched by ``margin``
    seconds, with bursts of up to ``burst`` requests."""

    quota: int = 60
    window: float = 60.0
    margin: float = 2.0
    burst: int = 2

    def __post_init__(self) -> None:
        if self.quota < 1 or not 1 <= self.burst <= self.quota or self.window <= 0:
            raise ValueError("need quota >= 1, 1 <= burst <= quota and window > 0")
        if self.margin < 0:
            raise ValueError("margin must be >= 0")

    @property
    def interval(self) -> float:
        """Seconds between paced requests: with the burst tolerance, any rolling
        ``window + margin`` holds at most ``quota`` grants."""
        return (self.window + self.margin) / (self.quota - self.burst + 1)

    @property
    def tolerance(self) -> float:
        """How far ahead of the pace a burst may run (seconds)."""
        return (self.burst - 1) * self.interval


class AccountLimiter:
    """The read and write budget of one service account, across spreadsheets and processes."""

    def __init__(
        self,
        redis: Redis,
        account: str,
        budgets: dict[str, Budget] | None = None,
        *,
        key_prefix: str = "syncqueue:sheets:quota",
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.budgets = budgets or {kind: Budget() for kind in KINDS}
        if set(self.budgets) != set(KINDS):
            raise ValueError(f"budgets must be given for exactly {KINDS}")
        self.key = f"{key_prefix}:{account}"
        self._sleep = sleep
        self._script = redis.register_script(_GCRA)

    @classmethod
    def from_config(
        cls,
        redis: Redis,
        account: str,
        config: SheetsConfig,
        key_prefix: str,
        *,
        window: float = 60.0,
    ) -> AccountLimiter:
        """The budgets configured by ``SYNCQUEUE_SHEETS_{READ,WRITE}_QUOTA`` and friends, on a
        quota minute of ``window`` seconds (a benchmark shrinks it with a fake's faster clock;
        the margin shrinks with it)."""
        margin = config.quota_margin * window / 60.0
        burst = config.quota_burst
        quotas = {"read": config.read_quota, "write": config.write_quota}
        budgets = {k: Budget(q, window, margin, min(burst, q)) for k, q in quotas.items()}
        return cls(redis, account, budgets, key_prefix=f"{key_prefix}:quota")

    def reserve(self, kind: str, max_wait: float, spreadsheet: str = "") -> float:
        """Reserve the next ``kind`` slot if it comes within ``max_wait`` seconds.

        Returns the seconds until the reserved slot (>= 0; the caller sends then), or minus the
        expected wait when nothing was reserved (the slot is further away, or ``spreadsheet``
        already holds a future slot of this kind).
        """
        return self.reserve_many({kind: 1}, max_wait, spreadsheet)

    def reserve_many(
        self, needs: Mapping[str, int], max_wait: float, spreadsheet: str = ""
    ) -> float:
        """Reserve ``needs`` (kind -> requests) to be sent together at one instant, the first
        at which all of them conform, if it comes within ``max_wait`` seconds: the seconds
        until then (>= 0), or minus the expected wait with nothing reserved. Up to a kind's
        burst can go at one instant (a read, a second read and a write, say)."""
        keys: list[str] = []
        args: list[int | str] = [int(max(0.0, max_wait) * 1_000_000), spreadsheet]
        for kind, count in needs.items():
            budget = self.budgets[kind]
            if not 1 <= count <= budget.burst:
                raise ValueError(f"{count} {kind} request(s) at once: the burst is {budget.burst}")
            keys += [f"{self.key}:{kind}", f"{self.key}:{kind}:tickets"]
            args += [
                math.ceil(budget.interval * 1_000_000),
                int(budget.tolerance * 1_000_000),
                count,
            ]
        return int(self._script(keys=keys, args=args)) / 1_000_000

    def wait_for(self, kind: str, max_wait: float, spreadsheet: str = "") -> float:
        """Wait up to ``max_wait`` seconds for a ``kind`` slot: 0.0 once it is time to send,
        else the expected wait (nothing reserved; hand the work back with it)."""
        return self.wait_for_many({kind: 1}, max_wait, spreadsheet)

    def wait_for_many(
        self, needs: Mapping[str, int], max_wait: float, spreadsheet: str = ""
    ) -> float:
        """:meth:`wait_for` for several requests sent together (see :meth:`reserve_many`)."""
        deadline = time.monotonic() + max_wait
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            wait = self.reserve_many(needs, remaining, spreadsheet)
            if wait >= 0:
                if wait:
                    self._sleep(wait)
                return 0.0
            if -wait > remaining:
                return -wait
            self._sleep(-wait)  # this spreadsheet's own slot comes first: queue behind it


class SpreadsheetLock:
    """A mutex with a time-to-live; one instance per acquisition attempt (it keeps the token)."""

    def __init__(self, redis: Redis, key: str, ttl: float = 120.0) -> None:
        self.key = key
        self.ttl_ms = max(1, int(ttl * 1000))
        self.token = uuid.uuid4().hex
        self.held = False
        self._redis = redis
        self._release = redis.register_script(_RELEASE)
        self._refresh = redis.register_script(_REFRESH)
        self._expect = redis.register_script(_EXPECT)
        self._expected_wait = redis.register_script(_EXPECTED_WAIT)
        self.eta_key = f"{key}:eta"

    def acquire(self, max_wait: float) -> bool:
        """Try for up to ``max_wait`` seconds; return whether the lock is now held."""
        return self.wait_for(max_wait) == 0.0

    def wait_for(self, max_wait: float) -> float:
        """Try for up to ``max_wait`` seconds: 0.0 once held, else the expected wait. When the
        holder published an expectation longer than the time left, gives up at once with it;
        without one, polls until ``max_wait`` and answers the lock's time-to-live."""
        deadline = time.monotonic() + max_wait
        delay = 0.01
        while True:
            if self._redis.set(self.key, self.token, nx=True, px=self.ttl_ms):
                self.held = True
                return 0.0
            expected, published = self._expectation()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (published and expected > remaining):
                return max(expected, 0.01)
            pause = max(expected, delay) if published else delay
            time.sleep(min(remaining, pause * random.uniform(0.9, 1.1)))
            delay = min(delay * 2, 0.25)

    def expect(self, seconds: float) -> bool:
        """As the holder: publish that the lock should be free in ``seconds``."""
        if not self.held:
            return False
        args: list[str | float] = [self.token, max(0.0, seconds), self.ttl_ms]
        return bool(self._expect(keys=[self.key, self.eta_key], args=args))

    def expected_wait(self) -> float:
        """Seconds a waiter should expect before the lock is free (0.0 when free now): the
        holder's published expectation, else the lock's time-to-live."""
        return self._expectation()[0]

    def _expectation(self) -> tuple[float, bool]:
        state, us = self._expected_wait(keys=[self.key, self.eta_key])
        return int(us) / 1_000_000, int(state) == 1

    def refresh(self) -> bool:
        """Push the expiry ``ttl`` further; False if the lock was lost (expired, taken over)."""
        if not self.held:
            return False
        self.held = bool(self._refresh(keys=[self.key], args=[self.token, self.ttl_ms]))
        return self.held

    def release(self) -> None:
        """Free the lock if this instance still holds it."""
        if self.held:
            self.held = False
            self._release(keys=[self.key, self.eta_key], args=[self.token])

    def remaining(self) -> float:
        """Seconds until the current holder's lock expires (0 when free)."""
        ms = int(self._redis.pttl(self.key))
        return max(0.0, ms / 1000)
