"""``JsonLinesWriter``: appends every change to a JSON Lines file. Simple, inspectable, testable.

One line per item: ``{"id", "action", "model", "record_id", "payload", "pid", "started",
"finished"}``. Lines of one batch are written with one ``write`` under an exclusive lock, so
several worker processes can share the file.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from syncqueue_tasks.errors import ConfigurationError
from syncqueue_tasks.models import QueueItem
from syncqueue_tasks.settings import get_settings
from syncqueue_tasks.writers.base import Outcome


class JsonLinesWriter:
    """Writes each item as one JSON line to ``path``; every item is done."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, items: Sequence[QueueItem]) -> Mapping[str, Outcome]:
        """Append ``items`` and fsync; the file is the destination."""
        started = time.time()
        lines = "".join(
            json.dumps(
                {
                    "id": item.id,
                    "action": item.action.value,
                    "model": item.model,
                    "record_id": item.record_id,
                    "payload": item.payload,
                    "pid": os.getpid(),
                    "started": started,
                    "finished": time.time(),
                },
                ensure_ascii=False,
            )
            + "\n"
            for item in items
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(lines)
            fh.flush()
            os.fsync(fh.fileno())
        return {item.id: Outcome.done() for item in items}


def create_writer() -> JsonLinesWriter:
    """Factory for ``SYNCQUEUE_WRITER=syncqueue_tasks.writers.jsonl:create_writer``."""
    path = get_settings().jsonl_path
    if not path:
        raise ConfigurationError("SYNCQUEUE_JSONL_PATH must name the file to append to")
    return JsonLinesWriter(Path(path))
