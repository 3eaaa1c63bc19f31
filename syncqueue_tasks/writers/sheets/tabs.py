"""Which tab holds each model's rows, and how big the spreadsheet's grid is.

A model's tab is found by its sheetId, remembered in Redis (shared by every worker process):
a renamed tab is followed. The first time (or when the remembered tab is gone) it is found by
its title (``SYNCQUEUE_SHEETS_TABS``, else the model's name); a tab that does not exist is made
by the next write, with the header the package knows for the model. Redis also remembers the
columns the package wrote for the model, so a column renamed, deleted or blanked in the sheet
is told apart from a field that never had one.

The tabs' properties come from ``spreadsheets.get`` (one read), kept for ``ttl`` seconds and
updated from every write's answer; they give the cells in use, checked against Google's
10,000,000 before rows or columns are added.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterable, Mapping
from typing import Any

from redis import Redis

from syncqueue_tasks.writers.sheets.layout import TabInfo


def parse_info(properties: dict[str, Any]) -> TabInfo:
    """A tab's ``SheetProperties``."""
    grid = properties.get("gridProperties", {})
    return TabInfo(
        int(properties["sheetId"]),
        str(properties.get("title", "")),
        int(grid.get("rowCount", 0)),
        int(grid.get("columnCount", 0)),
    )


class Tabs:
    """The spreadsheet's tabs as last seen, and the models' tabs and columns (Redis)."""

    def __init__(self, redis: Redis, key: str, titles: Mapping[str, str], ttl: float) -> None:
        self.redis = redis
        self.key = key
        self.titles = titles  # model -> its tab's title (SYNCQUEUE_SHEETS_TABS)
        self.ttl = ttl
        self._infos: dict[int, TabInfo] | None = None
        self._fetched = 0.0

    # ------------------------------------------------------------------ properties

    @property
    def stale(self) -> bool:
        """Whether the tabs must be read again (never read, expired, or invalidated)."""
        return self._infos is None or time.monotonic() - self._fetched > self.ttl

    def invalidate(self) -> None:
        """Read the tabs again before the next round."""
        self._infos = None

    def load(self, answer: dict[str, Any]) -> None:
        """Take a ``spreadsheets.get`` answer."""
        sheets = answer.get("sheets", [])
        self._infos = {i.sheet_id: i for i in (parse_info(s["properties"]) for s in sheets)}
        self._fetched = time.monotonic()

    def update(self, infos: Iterable[TabInfo]) -> None:
        """Take tabs as a write's answer shows them."""
        if self._infos is not None:
            self._infos.update((i.sheet_id, i) for i in infos)

    @property
    def count(self) -> int:
        """Tabs in the spreadsheet as last seen."""
        return len(self._infos or {})

    @property
    def cells(self) -> int:
        """Cells in the spreadsheet's grids (all tabs) as last seen."""
        return sum(i.row_count * i.col_count for i in (self._infos or {}).values())

    def title(self, model: str) -> str:
        """The title a model's tab is looked up by, and made with."""
        return self.titles.get(model, model)

    # ------------------------------------------------------------------ the models' tabs

    def find(self, model: str) -> TabInfo | None:
        """The model's tab (remembered sheetId first, then title); None: it must be made."""
        infos = self._infos or {}
        memory = self._memory(model)
        remembered = memory.get("sheet_id")
        if remembered in infos:
            return infos[remembered]
        title = self.title(model)
        for info in infos.values():
            if info.title == title:
                self.remember(model, info.sheet_id)
                return info
        return None

    def new(self, model: str) -> TabInfo:
        """A tab to make for ``model`` (a fresh sheetId; Google's default grid)."""
        used = set(self._infos or {})
        sheet_id = random.randrange(1, 2**31)
        while sheet_id in used:
            sheet_id = random.randrange(1, 2**31)
        return TabInfo(sheet_id, self.title(model), 1000, 26)

    def columns(self, model: str) -> list[str]:
        """The columns the package has written for ``model``, in the order they were made."""
        return list(self._memory(model).get("columns", []))

    def remember(self, model: str, sheet_id: int, columns: Iterable[str] = ()) -> None:
        """Note the model's tab and any columns just made for it."""
        memory = self._memory(model)
        known = list(memory.get("columns", []))
        known += [c for c in columns if c not in known]
        if memory == {"sheet_id": sheet_id, "columns": known}:
            return
        self.redis.hset(self.key, model, json.dumps({"sheet_id": sheet_id, "columns": known}))

    def _memory(self, model: str) -> dict[str, Any]:
        raw = self.redis.hget(self.key, model)
        return json.loads(raw) if raw else {}
