"""Time-sortable, collision-resistant ids (ULID: 48-bit milliseconds + 80 random bits).

Ids made in one process are strictly increasing, even within one millisecond, so ordering by id
is enqueue order for the changes one process makes (the per-record order the queue keeps).
"""

from __future__ import annotations

import os
import secrets
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: sorts like the number
_RANDOM_BITS = 80
_lock = threading.Lock()
_last = 0


def _reset_after_fork() -> None:
    global _last
    _last = 0


os.register_at_fork(after_in_child=_reset_after_fork)


def new_id() -> str:
    """Return a new 26-character ULID, greater than every id this process made before."""
    global _last
    with _lock:
        value = (time.time_ns() // 1_000_000) << _RANDOM_BITS | secrets.randbits(_RANDOM_BITS)
        if value <= _last:
            value = _last + 1
        _last = value
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def is_valid_id(value: object) -> bool:
    """True if ``value`` looks like an id made by :func:`new_id`."""
    return (
        isinstance(value, str)
        and len(value) == 26
        and value[0] in "01234567"
        and all(c in _ALPHABET for c in value)
    )
