"""Input checks shared by ``queue`` and the Celery tasks. Each raises ``ValidationError``.

The limits a change is checked against (models, sizes, the default retry count) are passed in
as :class:`Limits`; the caller reads them from its configuration (``settings.limits_from_env``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from syncqueue_tasks.core.errors import ValidationError
from syncqueue_tasks.core.ids import is_valid_id
from syncqueue_tasks.core.items import SyncAction

_INT32_MAX = 2**31 - 1
_MAX_DEPTH = 64
# JSONB keeps numbers as numeric and prints 1e+16 and up without exponent or fraction, so such
# a float would come back as an int (and 1e23 as 10**23, a different number): refuse it.
_FLOAT_EXACT_LIMIT = 1e16
_PLAIN_INT = 2**63  # ints this small need no size check (see _check_json)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc
_REQUIRED_KEYS = frozenset({"action", "model", "record_id", "payload"})
_ALLOWED_KEYS = _REQUIRED_KEYS | {"sheet_row_index", "max_retries"}
_ACTIONS = {a.value: a for a in SyncAction}
# What json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")) uses,
# made once rather than per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


@dataclass(frozen=True)
class Limits:
    """What a change may be: ``SYNCQUEUE_MODELS``, ``..._MAX_RECORD_ID_LENGTH``,
    ``..._MAX_PAYLOAD_BYTES`` and the retries a change gets by default (``..._MAX_RETRIES``)."""

    models: frozenset[str] = frozenset({"Request", "Operator", "Revenue"})
    max_record_id_length: int = 255
    max_payload_bytes: int = 65536
    default_max_retries: int = 3


@dataclass(frozen=True, slots=True)
class Change:
    """A validated change, ready to insert. ``payload_json`` is the serialized payload."""

    action: SyncAction
    model: str
    record_id: str
    payload: dict[str, Any]
    payload_json: str
    sheet_row_index: int | None
    max_retries: int


def validate_change(
    action: object,
    model: object,
    record_id: object,
    payload: object,
    sheet_row_index: object = None,
    max_retries: object = None,
    *,
    limits: Limits,
) -> Change:
    """Check every field of one change against ``limits``; return it normalized, or raise
    ``ValidationError``."""
    payload_dict = _payload(payload)
    payload_json = _serialize(payload_dict)
    if len(payload_json.encode("utf-8")) > limits.max_payload_bytes:
        raise ValidationError(
            "payload", f"serialized size exceeds the limit of {limits.max_payload_bytes} bytes"
        )
    return Change(
        action=_action(action),
        model=_model(model, limits.models),
        record_id=_record_id(record_id, limits.max_record_id_length),
        payload=payload_dict,
        payload_json=payload_json,
        sheet_row_index=_optional_int("sheet_row_index", sheet_row_index, 1, _INT32_MAX),
        max_retries=(
            limits.default_max_retries
            if max_retries is None
            else _int_in_range("max_retries", max_retries, 0, 100)
        ),
    )


def validate_change_mapping(change: object, limits: Limits) -> Change:
    """Validate one element of ``enqueue_many``: a mapping (or object) with ``enqueue``'s keys."""
    if isinstance(change, Mapping):
        unknown = set(change) - _ALLOWED_KEYS
        if unknown:
            raise ValidationError("change", f"unknown keys: {', '.join(sorted(map(str, unknown)))}")
        missing = _REQUIRED_KEYS - set(change)
        if missing:
            raise ValidationError("change", f"missing keys: {', '.join(sorted(missing))}")
        return validate_change(
            change["action"],
            change["model"],
            change["record_id"],
            change["payload"],
            change.get("sheet_row_index"),
            change.get("max_retries"),
            limits=limits,
        )
    if all(hasattr(change, k) for k in ("action", "model", "record_id", "payload")):
        return validate_change(
            change.action,  # type: ignore[attr-defined]
            change.model,  # type: ignore[attr-defined]
            change.record_id,  # type: ignore[attr-defined]
            change.payload,  # type: ignore[attr-defined]
            getattr(change, "sheet_row_index", None),
            getattr(change, "max_retries", None),
            limits=limits,
        )
    raise ValidationError(
        "change", f"expected a mapping of enqueue's arguments, got {_kind(change)}"
    )


def validate_changes(changes: object, limits: Limits) -> list[Change]:
    """Validate every element of a list of changes; an error names the element:
    ``changes[3].payload: ...``."""
    if isinstance(changes, Mapping | str | bytes) or not hasattr(changes, "__iter__"):
        raise ValidationError("changes", "must be a list of changes")
    validated = []
    for index, change in enumerate(cast(Iterable[object], changes)):
        try:
            validated.append(validate_change_mapping(change, limits))
        except ValidationError as exc:
            raise ValidationError(f"changes[{index}].{exc.field}", exc.problem) from None
    return validated


def validate_batch_size(batch_size: object) -> int:
    """A claim size in 1..1000."""
    return _int_in_range("batch_size", batch_size, 1, 1000)


def validate_limit(field: str, value: object, high: int) -> int:
    """A count in 1..``high`` (chunk sizes, list limits)."""
    return _int_in_range(field, value, 1, high)


def validate_age(field: str, value: object) -> float:
    """A finite, non-negative age threshold (minutes, days)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(field, f"must be a number, got {_kind(value)}")
    if not math.isfinite(value) or value < 0:
        raise ValidationError(field, f"must be a finite number >= 0, got {value}")
    return float(value)


def validate_item_id(item_id: object) -> str:
    """An id made by ``syncqueue_tasks.core.ids.new_id``."""
    if not is_valid_id(item_id):
        raise ValidationError("id", "must be a 26-character ULID string")
    return str(item_id)


def _kind(value: object) -> str:
    return type(value).__name__


def _action(value: object) -> SyncAction:
    if isinstance(value, str):
        action = _ACTIONS.get(value.upper())
        if action is not None:
            return action
    raise ValidationError("action", f"must be one of CREATE, UPDATE, DELETE; got {value!r:.60}")


def _text(field: str, value: object, max_length: int) -> str:
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a string, got {_kind(value)}")
    if not value:
        raise ValidationError(field, "must not be empty")
    if len(value) > max_length:
        raise ValidationError(field, f"must be at most {max_length} characters, got {len(value)}")
    if "\x00" in value:
        raise ValidationError(field, "must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(field, "must be valid Unicode text") from None
    return value


def _model(value: object, models: frozenset[str]) -> str:
    model = _text("model", value, 64)
    if model not in models:
        raise ValidationError(
            "model", f"unknown model {model!r:.70}; configured: {', '.join(sorted(models))}"
        )
    return model


def _record_id(value: object, max_length: int) -> str:
    """A record id: a string (or int) that a destination reads back exactly as it is.

    Spreadsheets trim what they show and people cannot see control characters, so an id with
    leading or trailing whitespace or any control character (tab, newline, ...) is refused:
    ``" 42"`` and ``"42"`` would otherwise be two records in one row.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value) if value.bit_length() <= 4 * max_length else ""
        if not value:
            raise ValidationError("record_id", f"must be at most {max_length} characters")
    record_id = _text("record_id", value, max_length)
    if record_id != record_id.strip():
        raise ValidationError("record_id", "must not start or end with whitespace")
    if _CONTROL.search(record_id):
        raise ValidationError("record_id", "must not contain control characters")
    return record_id


def _int_in_range(field: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(field, f"must be an integer, got {_kind(value)}")
    if not low <= value <= high:
        raise ValidationError(field, f"must be between {low} and {high}, got {value}")
    return value


def _optional_int(field: str, value: object, low: int, high: int) -> int | None:
    return None if value is None else _int_in_range(field, value, low, high)


def _payload(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValidationError("payload", f"must be a JSON object (dict), got {_kind(value)}")
    _check_json(value, "", 0)
    return value


def _where(path: str) -> str:
    """How a message names a place in the payload: "" at the top, else "at .a[2]: "."""
    return f"at {path}: " if path else ""


def _check_json(value: object, path: str, depth: int) -> None:
    """Accept exactly what survives a JSONB round trip unchanged."""
    if depth > _MAX_DEPTH:
        raise ValidationError("payload", f"nested deeper than {_MAX_DEPTH} levels")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if value.bit_length() > 10_000:  # ~3,000 digits; Python prints at most 4,300
            raise ValidationError("payload", f"{_where(path)}an integer too large to store")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError("payload", f"{_where(path)}{value}, which JSON cannot hold")
        if abs(value) >= _FLOAT_EXACT_LIMIT:
            raise ValidationError(
                "payload",
                f"{_where(path)}a float of 1e16 or more; send it as an int or a string",
            )
        return
    if isinstance(value, str):
        if "\x00" in value:
            raise ValidationError("payload", f"{_where(path)}text with a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError(
                "payload", f"{_where(path)}text that is not valid Unicode"
            ) from None
        return
    if isinstance(value, list):
        for i, element in enumerate(value):
            if not _plain(element):  # a container, or a scalar to look at closely
                _check_json(element, f"{path}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, element in value.items():
            if not isinstance(key, str):
                raise ValidationError(
                    "payload", f"{_where(path)}a key of type {_kind(key)}, not a string"
                )
            if not _plain(key):
                _check_json(key, f"{path}.<key>", depth + 1)
            if not _plain(element):
                _check_json(element, f"{path}.{key:.40}", depth + 1)
        return
    raise ValidationError(
        "payload", f"{_where(path)}a {_kind(value)}, which is not JSON-serializable"
    )


def _plain(value: object) -> bool:
    """A scalar ``_check_json`` would accept, recognized cheaply (most payload values are).

    False means "look closer", not "refused": containers, non-ASCII text (checked for lone
    surrogates), subclasses of the JSON types and anything out of range go to ``_check_json``.
    """
    kind = type(value)
    if kind is str:
        text = cast(str, value)
        return text.isascii() and "\x00" not in text
    if kind is int:
        return -_PLAIN_INT <= cast(int, value) <= _PLAIN_INT
    if kind is float:
        return -_FLOAT_EXACT_LIMIT < cast(float, value) < _FLOAT_EXACT_LIMIT
    return value is None or kind is bool


def _serialize(payload: dict[str, Any]) -> str:
    return _ENCODER.encode(payload)
