"""Flow control shared by every worker process, kept in Redis.

- :class:`RateLimiter`: a sliding-window log (one Lua script, Redis' own clock): at most
  ``limit`` grants in any ``window`` seconds, across all processes that share the key.
- :class:`SpreadsheetLock`: at most one holder at a time (``SET NX PX`` with a random token;
  refreshed and released only by compare-and-set scripts, so an expired holder can't free
  someone else's lock).

Both wait only briefly: a caller that can't get in should give the work back for later.
"""

from __future__ import annotations

import random
import time
import uuid

from redis import Redis

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

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
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

    def acquire(self, max_wait: float) -> bool:
        """Try for up to ``max_wait`` seconds; return whether the lock is now held."""
        deadline = time.monotonic() + max_wait
        delay = 0.01
        while True:
            if self._redis.set(self.key, self.token, nx=True, px=self.ttl_ms):
                self.held = True
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(remaining, delay * random.uniform(0.5, 1.5)))
            delay = min(delay * 2, 0.25)

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
            self._release(keys=[self.key], args=[self.token])

    def remaining(self) -> float:
        """Seconds until the current holder's lock expires (0 when free)."""
        ms = int(self._redis.pttl(self.key))
        return max(0.0, ms / 1000)
