"""``JsonLinesWriter``: appends every record write to a JSON Lines file. Simple, inspectable.

One line per record write: ``{"model", "record_id", "action", "cells", "state", "changes",
"pid", "started", "finished"}`` (``state``: the record's whole new state; ``changes``: the ids
of the changes folded into it). Lines of one batch are written with one ``write`` under an
exclusive lock, so several worker processes can share the file.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from syncqueue_tasks.core.errors import ConfigurationError
from syncqueue_tasks.core.outcomes import Outcome
from syncqueue_tasks.core.records import RecordKey, RecordWrite
from syncqueue_tasks.writers.base import WriterContext


def line(write: RecordWrite, **extra: Any) -> dict[str, Any]:
    """The JSON object that stands for one record write."""
    return {
        "model": write.model,
        "record_id": write.record_id,
        "action": write.action.value,
        "cells": dict(write.cells),
        "state": dict(write.state.fields) if write.state.live else None,
        "changes": list(write.change_ids),
        **extra,
    }


def append_lines(path: Path, lines: Sequence[dict[str, Any]]) -> None:
    """Append ``lines`` as JSON Lines with one ``write``, under an exclusive lock, fsynced."""
    text = "".join(json.dumps(obj, ensure_ascii=False) + "\n" for obj in lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


class JsonLinesWriter:
    """Writes each record write as one JSON line to ``path``; every record is done."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write_records(self, writes: Sequence[RecordWrite]) -> Mapping[RecordKey, Outcome]:
        """Append ``writes`` and fsync; the file is the destination."""
        started = time.time()
        pid = os.getpid()
        append_lines(
            self.path, [line(w, pid=pid, started=started, finished=time.time()) for w in writes]
        )
        return {w.key: Outcome.done() for w in writes}


def create_writer(context: WriterContext) -> JsonLinesWriter:
    """Factory for ``SYNCQUEUE_WRITER=syncqueue_tasks.writers.jsonl:create_writer``."""
    path = context.settings.destination.jsonl_path
    if not path:
        raise ConfigurationError("SYNCQUEUE_JSONL_PATH must name the file to append to")
    return JsonLinesWriter(Path(path))
