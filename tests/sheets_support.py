"""Fixtures and helpers shared by the Sheets writer tests (import the fixtures by name).

``fake``: a started fake Sheets server with a spreadsheet ``SID`` (tabs ``Requests`` with
``id, name, status`` and ``Operators`` with ``id``); ``env``: the settings pointing at it, with
quotas high enough to never wait; ``make_writer(**tuning)``: a ``GoogleSheetsWriter`` driven
through ``items.Feeder`` (so ``writer.write(items)`` feeds record writes like
``process_batch``), closed afterwards, with Redis keys of the test's own.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from fake_sheets import FakeSheets
from items import Feeder
from redis import Redis

from syncqueue_tasks.models import QueueItem
from syncqueue_tasks.outcomes import Outcome, OutcomeKind
from syncqueue_tasks.records import RecordKey
from syncqueue_tasks.settings import get_settings
from syncqueue_tasks.writers.sheets import GoogleSheetsWriter, SheetsTuning

REDIS_URL = "redis://127.0.0.1:6379/0"
SID = "sheet-test"
HEADER = ["id", "name", "status"]

MakeWriter = Callable[..., Any]


@pytest.fixture
def fake() -> Iterator[FakeSheets]:
    server = FakeSheets().start()
    server.add_spreadsheet(SID, {"Requests": [list(HEADER)], "Operators": [["id"]]})
    yield server
    server.stop()


@pytest.fixture
def prefix() -> Iterator[str]:
    key_prefix = f"test:sheets:{uuid.uuid4().hex}"
    yield key_prefix
    redis = Redis.from_url(REDIS_URL)
    keys = list(redis.scan_iter(f"{key_prefix}:*"))
    if keys:
        redis.delete(*keys)
    redis.close()


@pytest.fixture
def env(fake: FakeSheets, monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.setenv("SYNCQUEUE_SHEETS_API_URL", fake.url)
    monkeypatch.setenv("SYNCQUEUE_SHEETS_SPREADSHEET_ID", SID)
    monkeypatch.setenv("SYNCQUEUE_SHEETS_TABS", "Request=Requests,Operator=Operators")
    monkeypatch.setenv("SYNCQUEUE_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("SYNCQUEUE_SHEETS_READ_QUOTA", "100000")
    monkeypatch.setenv("SYNCQUEUE_SHEETS_WRITE_QUOTA", "100000")
    for name in ("SYNCQUEUE_SHEETS_CREDENTIALS_FILE", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


@pytest.fixture
def make_writer(env: pytest.MonkeyPatch, prefix: str) -> Iterator[MakeWriter]:
    writers: list[GoogleSheetsWriter] = []

    def make(**tuning: Any) -> Any:
        options: dict[str, Any] = {"key_prefix": prefix, "lock_wait": 2.0, "limiter_wait": 5.0}
        get_settings.cache_clear()
        holder: dict[str, Feeder] = {}

        def synced(model: str, ids: Sequence[str]) -> dict[str, Any]:
            states = holder["feeder"].states
            return {i: states[RecordKey(model, i)] for i in ids if RecordKey(model, i) in states}

        writer = GoogleSheetsWriter(
            get_settings(), tuning=SheetsTuning(**(options | tuning)), synced=synced
        )
        writers.append(writer)
        holder["feeder"] = Feeder(writer)
        return holder["feeder"]

    yield make
    for writer in writers:
        writer.close()


def seed(fake: FakeSheets, n: int, tab: str = "Requests") -> None:
    """Rows r0..r{n-1} with name n<i>."""
    fake.set_rows(SID, tab, [list(HEADER)] + [[f"r{i}", f"n{i}", ""] for i in range(n)])


def kinds(outcomes: Any) -> dict[str, OutcomeKind]:
    return {k: o.kind for k, o in outcomes.items()}


def all_done(outcomes: Any) -> bool:
    return set(kinds(outcomes).values()) == {OutcomeKind.DONE}


def write_until_done(writer: Any, items: Sequence[QueueItem], rounds: int = 50) -> list[Outcome]:
    """Resubmit retried items (as the queue would) until all are done; return every retry."""
    retries: list[Outcome] = []
    pending = list(items)
    for _ in range(rounds):
        outcomes = writer.write(pending)
        assert set(outcomes) == {i.id for i in pending}
        retries += [o for o in outcomes.values() if o.kind is OutcomeKind.RETRY]
        assert not [o for o in outcomes.values() if o.kind is OutcomeKind.FAIL], outcomes
        pending = [i for i in pending if outcomes[i.id].kind is not OutcomeKind.DONE]
        if not pending:
            return retries
    raise AssertionError(f"{len(pending)} items still pending")
