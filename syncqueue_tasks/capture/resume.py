"""Where an interrupted backfill goes on: a small JSON file per model.

Kept under ``$SYNCQUEUE_DATA_DIR/backfill/<model>.json``: a run's own bookkeeping, on the host
that runs it, needing no schema of its own (this module is the only one that knows where it
lives, so a table could replace it). Written atomically (temp file, fsync, rename) after each
batch commits, so it never claims a batch that did not: a
kill between the commit and the write only makes the next run enqueue that batch again,
which is harmless (a CREATE of a record with the same values).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from syncqueue_tasks.capture.errors import CaptureError
from syncqueue_tasks.capture.registry import Tracked


@dataclass(frozen=True)
class ResumePoint:
    """The last key done (its JSON form) and how many rows were enqueued up to it."""

    table: str
    key: str
    last_key: Any
    done: int


def path_for(directory: Path, model: str) -> Path:
    """The resume file of ``model`` in ``directory``."""
    return directory / f"{model}.json"


def load(path: Path, tracked: Tracked) -> ResumePoint | None:
    """The stored point for ``tracked``'s table, or None; refuse one made for another table."""
    try:
        point = ResumePoint(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise CaptureError(f"the resume file {path} is unreadable ({exc}); use --restart") from None
    if (point.table, point.key) != (tracked.table.fullname, tracked.key_column):
        raise CaptureError(
            f"the resume file {path} is for table {point.table!r} key {point.key!r}, not "
            f"{tracked.table.fullname!r} key {tracked.key_column!r}; use --restart"
        )
    return point


def save(path: Path, point: ResumePoint) -> None:
    """Replace the stored point atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temp, "w") as handle:
        json.dump(asdict(point), handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def clear(path: Path) -> None:
    """Forget the stored point (the backfill finished, or starts over)."""
    path.unlink(missing_ok=True)
