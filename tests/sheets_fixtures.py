"""Fixtures of the Sheets writer tests (``pytest_plugins = ["sheets_fixtures"]``).

``fake``: a started fake Sheets server with a spreadsheet ``SID`` (tabs ``Requests`` with
``id, name, status`` and ``Operators`` with ``id``); ``env``: the settings pointing at it, with
quotas high enough to never wait; ``make_writer(**tuning)``: a ``GoogleSheetsWriter`` driven
through ``items.Feeder`` (so ``writer.write(items)`` feeds record writes like
``process_batch``; the writer's synced states are the feeder's), closed afterwards, with Redis
keys of the test's own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from dbutil import REDIS_URL
from fake_sheets import FakeSheets
from items import Feeder
from redis import Redis
from sheets_helpers import HEADER, SID, MakeWriter

from syncqueue_tasks.core.records import RecordKey
from syncqueue_tasks.settings import get_settings
from syncqueue_tasks.writers.base import WriterContext
from syncqueue_tasks.writers.sheets import GoogleSheetsWriter, SheetsTuning


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

        writer = GoogleSheetsWriter.from_context(
            WriterContext(get_settings(), synced), tuning=SheetsTuning(**(options | tuning))
        )
        writers.append(writer)
        holder["feeder"] = Feeder(writer)
        return holder["feeder"]

    yield make
    for writer in writers:
        writer.close()
