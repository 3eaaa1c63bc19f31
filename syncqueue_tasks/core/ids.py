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
import secrets
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: sorts like the number
_RANDOM_BITS = 70
_SUB_MS_BITS = 10
_lock = threading.Lock()
_last = 0


def _reset_after_fork() -> None:
    global _last
    _last = 0


os.register_at_fork(after_in_child=_reset_after_fork)


def new_id() -> str:
    """Return a new 26-character id, greater than every id this process made before."""
    global _last
    micros = time.time_ns() // 1000
    millis, sub = divmod(micros, 1000)
    with _lock:
        value = ((millis << _SUB_MS_BITS | sub) << _RANDOM_BITS) | secrets.randbits(_RANDOM_BITS)
        if value <= _last:
            value = _last + 1
        _last = value
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def is_valid_id(value: object) -> bool:
    """True if ``value`` looks like an id made by :func:`new_id` (or any 26-character ULID)."""
    return (
        isinstance(value, str)
        and len(value) == 26
        and value[0] in "01234567"
        and all(c in _ALPHABET for c in value)
    )
