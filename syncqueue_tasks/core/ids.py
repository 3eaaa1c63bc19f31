"""Time-sortable, collision-resistant ids: 26 Crockford base32 characters (a ULID layout).

10 characters of Unix time in milliseconds, 2 of the microseconds within that millisecond,
and 14 random ones (70 bits). Ids sort by the time they were made (bytewise, ``COLLATE "C"``);
ids made in one process strictly increase, even within one microsecond. The SQL function
``syncqueue_new_id()`` (migration 0004) makes ids with the same layout from the database's
clock, so ids made by triggers and by Python sort together; see the README on clocks.

A change's id is its version: a record's changes are applied in id order (``records``).
"""

from __future__ import annotations

import os
import re
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: sorts like the number
_RANDOM_BITS = 70
_SUB_MS_BITS = 10
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # 10 bits -> their 2 digits
_FORTY_BITS = (1 << 40) - 1
_RANDOM_BYTES = 9  # 72 bits read per id, the top 70 kept (as secrets.randbits does)
_RANDOM_CHUNK = _RANDOM_BYTES * 512  # os.urandom is read this much at a time
_ID = re.compile("[0-7][0-9A-HJKMNP-TV-Z]{25}")  # the first digit: 130 bits at most
_lock = threading.Lock()
_last = 0
_random = b""  # bytes of os.urandom not used yet; a child process never shares its parent's
_random_at = 0


def _reset_after_fork() -> None:
    global _last, _random, _random_at
    _last, _random, _random_at = 0, b"", 0


os.register_at_fork(after_in_child=_reset_after_fork)


def new_id() -> str:
    """Return a new 26-character id, greater than every id this process made before."""
    global _last, _random, _random_at
    micros = time.time_ns() // 1000
    millis, sub = divmod(micros, 1000)
    with _lock:
        if _random_at + _RANDOM_BYTES > len(_random):
            _random, _random_at = os.urandom(_RANDOM_CHUNK), 0
        bits = int.from_bytes(_random[_random_at : _random_at + _RANDOM_BYTES], "big")
        _random_at += _RANDOM_BYTES
        value = ((millis << _SUB_MS_BITS | sub) << _RANDOM_BITS) | bits >> 2
        if value <= _last:
            value = _last + 1
        _last = value
    return _encode(value)


def _encode(value: int) -> str:
    """The low 130 bits of ``value`` as 26 Crockford base32 digits, most significant first:
    two digits per 10 bits, from three parts of at most 50, 40 and 40 bits (cheap shifts)."""
    p = _PAIRS
    a = value >> 80 & (1 << 50) - 1
    b = value >> 40 & _FORTY_BITS
    c = value & _FORTY_BITS
    return (
        p[a >> 40] + p[a >> 30 & 1023] + p[a >> 20 & 1023] + p[a >> 10 & 1023] + p[a & 1023]
        + p[b >> 30] + p[b >> 20 & 1023] + p[b >> 10 & 1023] + p[b & 1023]
        + p[c >> 30] + p[c >> 20 & 1023] + p[c >> 10 & 1023] + p[c & 1023]
    )  # fmt: skip


def is_valid_id(value: object) -> bool:
    """True if ``value`` looks like an id made by :func:`new_id` (or any 26-character ULID)."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None
