"""Writers for tests, loaded by real workers through SYNCQUEUE_WRITER=recording_writer:<name>.

Each records what it received in ``SYNCQUEUE_JSONL_PATH`` (via ``JsonLinesWriter``), so a
test can check every item was written, when, by which process, and in which order.
Behaviour knobs come from the environment: RECORDING_FAIL_RATE, RECORDING_SLEEP.
``recording_span`` and ``flaky_span`` (fault tests) stamp each line with the span of the
whole ``write`` call, so overlapping writes of one item can be detected.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from syncqueue_tasks.models import QueueItem
from syncqueue_tasks.writers.base import Outcome
from syncqueue_tasks.writers.jsonl import JsonLinesWriter, create_writer


def _sleep() -> None:
    time.sleep(float(os.environ.get("RECORDING_SLEEP", "0")))


class Recording:
    """Records every item, then reports done."""

    def __init__(self) -> None:
        self.inner: JsonLinesWriter = create_writer()

    def write(self, items: Sequence[QueueItem]) -> Mapping[str, Outcome]:
        _sleep()
        return self.inner.write(items)


class Raising(Recording):
    """Raises an exception carrying a credential, without writing anything."""

    def write(self, items: Sequence[QueueItem]) -> Mapping[str, Outcome]:
        raise ConnectionError("cannot reach https://svc:s3cr3t@sheets.example/v4 (token=abc123)")


class Picky(Recording):
    """Writes items whose payload has no "bad" key; the others fail permanently."""

    def write(self, items: Sequence[QueueItem]) -> Mapping[str, Outcome]:
        good = [i for i in items if "bad" not in i.payload]
        result = dict(self.inner.write(good)) if good else {}
        for item in items:
            if "bad" in item.payload:
                result[item.id] = Outcome.fail(f"column {item.payload['bad']!r} is protected")
        return result


class Flaky(Recording):
    """Fails a share of calls retryably; sometimes writes, then reports failure anyway."""

    def write(self, items: Sequence[QueueItem]) -> Mapping[str, Outcome]:
        _sleep()
        rate = float(os.environ.get("RECORDING_FAIL_RATE", "0.3"))
        roll = random.random()
        if roll < rate / 2:
            return {i.id: Outcome.retry("503 backend unavailable") for i in items}
        if roll < rate:
            self.inner.write(items)  # applied, but the answer was lost
            return {i.id: Outcome.retry("connection reset after write") for i in items}
        return self.inner.write(items)


def _append_span(path: Path, items: Sequence[QueueItem], started: float) -> None:
    """Append one ``JsonLinesWriter``-style line per item, ``started`` given by the caller.

    ``finished`` is taken under the file lock, just before the lines are written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        finished = time.time()
        fh.write(
            "".join(
                json.dumps(
                    {
                        "id": item.id,
                        # a replayed copy of a change names the change it applies
                        "origin_id": getattr(item, "origin_id", None) or item.id,
                        "action": item.action.value,
                        "model": item.model,
                        "record_id": item.record_id,
                        "payload": item.payload,
                        "pid": os.getpid(),
                        "started": started,
                        "finished": finished,
                        "retries": item.retries,
                    },
                    ensure_ascii=False,
                )
                + "\n"
                for item in items
            )
        )
        fh.flush()
        os.fsync(fh.fileno())


class Spanning(Recording):
    """Like ``Recording``, but a line's [started, finished] spans the whole call (sleep
    included): two writes of one item that overlap in time show up as overlapping spans."""

    def write(self, items: Sequence[QueueItem]) -> Mapping[str, Outcome]:
        started = time.time()
        _sleep()
        _append_span(self.inner.path, items, started)
        return {i.id: Outcome.done() for i in items}


class FlakySpanning(Recording):
    """``Flaky`` with spanning lines: a share of calls fail retryably (RECORDING_FAIL_RATE,
    default 0.3); half of those write first, then report failure (the lost response)."""

    def write(self, items: Sequence[QueueItem]) -> Mapping[str, Outcome]:
        started = time.time()
        _sleep()
        rate = float(os.environ.get("RECORDING_FAIL_RATE", "0.3"))
        roll = random.random()
        if roll < rate / 2:
            return {i.id: Outcome.retry("503 backend unavailable") for i in items}
        _append_span(self.inner.path, items, started)
        if roll < rate:
            return {i.id: Outcome.retry("connection reset after write") for i in items}
        return {i.id: Outcome.done() for i in items}


def recording() -> Recording:
    return Recording()


def raising() -> Raising:
    return Raising()


def picky() -> Picky:
    return Picky()


def flaky() -> Flaky:
    return Flaky()


def recording_span() -> Spanning:
    return Spanning()


def flaky_span() -> FlakySpanning:
    return FlakySpanning()
