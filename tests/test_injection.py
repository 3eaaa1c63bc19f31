"""Dependencies passed in: a queue on a database and with limits of its own, not the
environment's; writers made from the context they are given.

Each test would fail if a part read the environment (or the process's database) behind the
caller's back: the second queue's model is one the environment refuses, its database is not the
one ``DATABASE_URL`` names, and the context's synced states are not the database's.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import openpyxl
import pytest
from alembic import command

from syncqueue_tasks.celery import batch
from syncqueue_tasks.core.errors import ValidationError
from syncqueue_tasks.core.records import RecordKey, RecordState
from syncqueue_tasks.core.validation import Limits
from syncqueue_tasks.settings import DatabaseConfig, QueueConfig, get_settings
from syncqueue_tasks.store import queue
from syncqueue_tasks.store.db import Database
from syncqueue_tasks.store.queue import QueueStore
from syncqueue_tasks.writers.base import WriterContext
from syncqueue_tasks.writers.loading import load_writer
from syncqueue_tasks.writers.workbook import LocalWorkbookWriter
from tests.dbutil import alembic_config, create_database, drop_database, use_database

pytestmark = pytest.mark.integration

WIDGETS = Limits(models=frozenset({"Widget"}), max_payload_bytes=64, default_max_retries=7)


@pytest.fixture
def other_queue(db: None) -> Iterator[QueueStore]:
    """A migrated database of its own, and a queue on it with limits the environment lacks."""
    name = f"syncqueue_other_{uuid.uuid4().hex[:8]}"
    own = os.environ["DATABASE_URL"]
    url = create_database(name)
    database = None
    try:
        use_database(url)  # Alembic migrates the database the environment names
        command.upgrade(alembic_config(), "head")
        use_database(own)
        database = Database.connect(DatabaseConfig(url=url, pool_size=2))
        yield QueueStore(database, limits=WIDGETS, config=QueueConfig(backoff_base_seconds=0))
    finally:
        use_database(own)
        if database is not None:
            database.dispose()
        drop_database(name)


def test_a_queue_passed_its_database_and_limits_reads_no_environment(
    other_queue: QueueStore, tmp_path: Path
) -> None:
    change_id = other_queue.enqueue("CREATE", "Widget", "w1", {"size": 3})
    assert other_queue.get_queue_stats()["pending"] == 1
    assert queue.get_queue_stats()["pending"] == 0  # not in the environment's database
    with pytest.raises(ValidationError, match="model"):
        queue.enqueue("CREATE", "Widget", "w1", {"size": 3})  # the environment's models
    with pytest.raises(ValidationError, match="model"):
        other_queue.enqueue("CREATE", "Request", "r1", {})
    with pytest.raises(ValidationError, match="64 bytes"):
        other_queue.enqueue("UPDATE", "Widget", "w1", {"text": "x" * 100})

    writer = LocalWorkbookWriter(tmp_path / "other.xlsx")
    report = batch.process(writer, batch_size=10, time_budget=5, sync_queue=other_queue)
    assert report.completed == 1
    rows = list(
        openpyxl.load_workbook(tmp_path / "other.xlsx")["Widget"].iter_rows(values_only=True)
    )
    assert [dict(zip(rows[0], r, strict=False)) for r in rows[1:]] == [{"id": "w1", "size": 3}]
    view = other_queue.get_record("Widget", "w1")
    assert view is not None and view.changes[0]["id"] == change_id
    assert view.changes[0]["max_retries"] == 7  # the limits' default, not SYNCQUEUE_MAX_RETRIES
    assert queue.get_record("Widget", "w1") is None


def test_the_module_functions_follow_the_environment_they_are_called_in(
    db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = queue.default_queue()
    assert queue.default_queue() is first  # made once per settings
    monkeypatch.setenv("SYNCQUEUE_MODELS", "Request,Gadget")
    get_settings.cache_clear()
    assert queue.default_queue() is not first
    assert queue.enqueue("CREATE", "Gadget", "g1", {})  # the new limits apply
    assert queue.get_queue_stats()["pending"] == 1


def _synced(model: str, record_ids: Sequence[str]) -> Mapping[str, RecordState]:
    return {i: RecordState({"from": "context"}) for i in record_ids}


def with_context(context: WriterContext) -> object:
    """A factory taking the context: a writer that remembers it."""
    return Remembering(context)


def without_context() -> object:
    """A factory taking nothing (the README's first form)."""
    return Remembering(None)


def with_options(path: str | None = None) -> object:
    """A factory with optional parameters only: called without an argument."""
    return Remembering(None if path is None else WriterContext(get_settings(), _synced))


class Remembering:
    def __init__(self, context: WriterContext | None) -> None:
        self.context = context

    def write_records(self, writes: Sequence[object]) -> dict[RecordKey, object]:
        return {}


def test_a_writer_factory_is_given_the_context_it_asks_for(db: None) -> None:
    context = WriterContext(get_settings(), _synced)
    given = load_writer(f"{__name__}:with_context", context)
    assert isinstance(given, Remembering) and given.context is context
    assert given.context.synced_states("Request", ["a"])["a"].fields == {"from": "context"}
    for name in ("without_context", "with_options"):
        plain = load_writer(f"{__name__}:{name}", context)
        assert isinstance(plain, Remembering) and plain.context is None


def test_the_workers_context_reads_the_queues_synced_states(db: None, tmp_path: Path) -> None:
    queue.enqueue("CREATE", "Request", "r1", {"name": "one"})
    writer = LocalWorkbookWriter(tmp_path / "w.xlsx")
    assert batch.process(writer, batch_size=10, time_budget=5).completed == 1
    states = batch.writer_context().synced_states("Request", ["r1", "never"])
    assert set(states) == {"r1"} and states["r1"].fields == {"name": "one"}
