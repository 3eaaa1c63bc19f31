"""Writers for tests, loaded by real workers through SYNCQUEUE_WRITER=recording_writer:<name>.

Each records what it received in ``SYNCQUEUE_JSONL_PATH``, one line per record write (the
``JsonLinesWriter`` line: model, record_id, action, cells, state, the ids of the changes folded
into it), so a test can check every change was written, when, by which process, and what each
record's final state is. Behaviour knobs come from the environment: RECORDING_FAIL_RATE,
RECORDING_SLEEP. ``recording_span`` and ``flaky_span`` (fault tests) stamp each line with the
span of the whole call, so two writes of one record at the same time can be detected.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Mapping, Sequence

from syncqueue_tasks.celery.batch import writer_context
from syncqueue_tasks.core.records import RecordKey, RecordWrite
from syncqueue_tasks.writers.base import Outcome
from syncqueue_tasks.writers.jsonl import JsonLinesWriter, append_lines, create_writer, line


def _sleep() -> None:
    time.sleep(float(os.environ.get("RECORDING_SLEEP", "0")))


def _all(writes: Sequence[RecordWrite], outcome: Outcome) -> dict[RecordKey, Outcome]:
    return {w.key: outcome for w in writes}


class Recording:
    """Records every record write, then reports done."""

    def __init__(self) -> None:
        self.inner: JsonLinesWriter = create_writer(writer_context())

    def write_records(self, writes: Sequence[RecordWrite]) -> Mapping[RecordKey, Outcome]:
        _sleep()
        return self.inner.write_records(writes)

    def _append(self, writes: Sequence[RecordWrite], started: float) -> None:
        """Lines whose [started, finished] span the whole call (``finished`` just now)."""
        finished = time.time()
        pid = os.getpid()
        append_lines(
            self.inner.path, [line(w, pid=pid, started=started, finished=finished) for w in writes]
        )


class Raising(Recording):
    """Raises an exception carrying a credential, without writing anything."""

    def write_records(self, writes: Sequence[RecordWrite]) -> Mapping[RecordKey, Outcome]:
        raise ConnectionError("cannot reach https://svc:s3cr3t@sheets.example/v4 (token=abc123)")


class Picky(Recording):
    """Writes records whose state has no "bad" field; the others fail permanently."""

    def write_records(self, writes: Sequence[RecordWrite]) -> Mapping[RecordKey, Outcome]:
        good = [w for w in writes if "bad" not in w.state.fields]
        result = dict(self.inner.write_records(good)) if good else {}
        for w in writes:
            if "bad" in w.state.fields:
                result[w.key] = Outcome.fail(f"column {w.state.fields['bad']!r} is protected")
        return result


class Flaky(Recording):
    """Fails a share of calls retryably; sometimes writes, then reports failure anyway."""

    def write_records(self, writes: Sequence[RecordWrite]) -> Mapping[RecordKey, Outcome]:
        _sleep()
        rate = float(os.environ.get("RECORDING_FAIL_RATE", "0.3"))
        roll = random.random()
        if roll < rate / 2:
            return _all(writes, Outcome.retry("503 backend unavailable"))
        if roll < rate:
            self.inner.write_records(writes)  # applied, but the answer was lost
            return _all(writes, Outcome.retry("connection reset after write"))
        return self.inner.write_records(writes)


class Spanning(Recording):
    """Like ``Recording``, but a line's [started, finished] spans the whole call (sleep
    included): two writes of one record that overlap in time show up as overlapping spans."""

    def write_records(self, writes: Sequence[RecordWrite]) -> Mapping[RecordKey, Outcome]:
        started = time.time()
        _sleep()
        self._append(writes, started)
        return _all(writes, Outcome.done())


class FlakySpanning(Recording):
    """``Flaky`` with spanning lines: a share of calls fail retryably (RECORDING_FAIL_RATE,
    default 0.3); half of those write first, then report failure (the lost response)."""

    def write_records(self, writes: Sequence[RecordWrite]) -> Mapping[RecordKey, Outcome]:
        started = time.time()
        _sleep()
        rate = float(os.environ.get("RECORDING_FAIL_RATE", "0.3"))
        roll = random.random()
        if roll < rate / 2:
            return _all(writes, Outcome.retry("503 backend unavailable"))
        self._append(writes, started)
        if roll < rate:
            return _all(writes, Outcome.retry("connection reset after write"))
        return _all(writes, Outcome.done())


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
