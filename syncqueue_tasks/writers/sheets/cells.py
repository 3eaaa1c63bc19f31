"""Cell values for the Sheets writer: a payload value as the typed ``ExtendedValue`` it is
written as, and the value an ``UNFORMATTED_VALUE`` read gives back for it.

- text is a ``stringValue`` (never parsed: ``=SUM(1)`` stays text), booleans a ``boolValue``,
  numbers a ``numberValue`` (a double);
- an integer beyond +-2^53 and a ``Decimal`` that is not exactly a double would be rounded as
  a double: they are written as text, digit for digit;
- nested data (dicts, lists) is JSON text; anything else its ``str``; ``None`` blanks the cell;
- a text longer than Google's 50,000 characters per cell is refused (``CellTooLong``), or cut
  to 50,000 characters with ``SYNCQUEUE_SHEETS_LONG_CELLS=truncate``.

Reads are typed too (``UNFORMATTED_VALUE``): a tombstone is the boolean ``true`` whatever the
spreadsheet's locale shows for it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

MAX_CELL_CHARS = 50_000
MAX_EXACT_INT = 2**53


class CellTooLong(ValueError):
    """A text longer than a cell holds (and truncation is not enabled)."""


@dataclass(frozen=True, slots=True)
class Cell:
    """One cell to write: the ``ExtendedValue`` (None: blank) and what a read returns for it."""

    value: dict[str, Any] | None
    read: Any

    def data(self) -> dict[str, Any]:
        """As ``CellData`` for ``updateCells`` (an empty ``CellData`` clears the cell)."""
        return {} if self.value is None else {"userEnteredValue": self.value}


BLANK = Cell(None, "")


def encode(value: Any, *, truncate: bool = False) -> Cell:
    """The cell a payload value is written as; ``CellTooLong`` for an overlong text."""
    if value is None:
        return BLANK
    if isinstance(value, bool):
        return Cell({"boolValue": value}, value)
    if isinstance(value, int):
        if -MAX_EXACT_INT <= value <= MAX_EXACT_INT:
            return Cell({"numberValue": value}, value)
        return _text(str(value), truncate)
    if isinstance(value, float):
        if math.isfinite(value):
            return Cell({"numberValue": value}, value)
        return _text(str(value), truncate)
    if isinstance(value, Decimal):
        if value.is_finite() and Decimal(float(value)) == value:
            number = float(value)
            return Cell({"numberValue": number}, number)
        return _text(str(value), truncate)
    if isinstance(value, dict | list):
        return _text(json.dumps(value, ensure_ascii=False, default=str), truncate)
    return _text(str(value), truncate)


def text(value: str) -> Cell:
    """A text cell (header names, ids): always a ``stringValue``."""
    return Cell({"stringValue": value}, value) if value else BLANK


def _text(value: str, truncate: bool) -> Cell:
    if len(value) > MAX_CELL_CHARS:
        if not truncate:
            raise CellTooLong(
                f"is {len(value)} characters long; a Google Sheets cell holds at most "
                f"{MAX_CELL_CHARS} (SYNCQUEUE_SHEETS_LONG_CELLS=truncate cuts it instead)"
            )
        value = value[:MAX_CELL_CHARS]
    return text(value)


def id_key(value: Any) -> str | None:
    """The record id a cell holds, exactly (no trimming: ``" 42"`` is not ``"42"``); a typed
    number ``42`` reads as ``"42"``; a blank or boolean cell holds none."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def header_name(value: Any) -> str:
    """A header cell as a column name ('' when blank)."""
    return id_key(value) or ""


def is_tombstone(value: Any) -> bool:
    """Whether a ``_deleted`` cell marks a tombstone: the typed boolean true only."""
    return value is True
