"""Writers for tests, loaded by real workers through SYNCQUEUE_WRITER=recording_writer:<name>.

Each records what it received in ``SYNCQUEUE_JSONL_PATH`` (via ``JsonLinesWriter``), so a
test can check every item was written, when, by which process, and in which order.
Behaviour knobs come from the environment: RECORDING_FAIL_RATE, RECORDING_SLEEP.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Mapping, Sequence

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


def recording() -> Recording:
    return Recording()


def raising() -> Raising:
    return Raising()


def picky() -> Picky:
    return Picky()


def flaky() -> Flaky:
    return Flaky()
