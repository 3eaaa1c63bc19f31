"""Input validation of the queue's public functions, against the real PostgreSQL.

Every bad input must raise ``syncqueue_tasks.core.errors.ValidationError`` (a ``ValueError``) whose
message starts with the field's name, and must store nothing. Example-based tests pin each
rule; property-based tests throw random (mostly wrong) arguments at ``enqueue`` and
``enqueue_many`` and check that each call either stores exactly the given rows or raises
``ValidationError`` and stores nothing. Any other exception is a failure.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Any, NamedTuple

import pytest
from dbutil import count_rows
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from syncqueue_tasks.core.errors import ValidationError
from syncqueue_tasks.core.ids import new_id
from syncqueue_tasks.core.items import SyncAction
from syncqueue_tasks.settings import get_settings
from syncqueue_tasks.store import queue
from syncqueue_tasks.store.db import get_engine

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("db")]

ACTIONS = ("CREATE", "UPDATE", "DELETE")
REQUIRED = frozenset({"action", "model", "record_id", "payload"})
ALLOWED = REQUIRED | {"sheet_row_index", "max_retries"}
INT32_MAX = 2**31 - 1
GOOD: dict[str, Any] = {
    "action": "CREATE",
    "model": "Request",
    "record_id": "r-1",
    "payload": {"a": 1},
}


# --------------------------------------------------------------------------------- helpers


def _empty_queue() -> None:
    """Empty the queue's tables (the property tests call it inside every example).

    DELETE, not TRUNCATE: same result for a table only this process writes, but ~2 ms instead
    of ~80 ms (TRUNCATE makes and syncs new relation files), which is most of an example.
    """
    with get_engine().begin() as conn:
        conn.execute(text("DELETE FROM sync_queue"))
        conn.execute(text("DELETE FROM sync_record"))


def _rows() -> list[dict[str, Any]]:
    """Every stored row, oldest id first, as the fields a caller gave."""
    with get_engine().connect() as conn:
        rows = conn.execute(
            text(
                """SELECT id, action::text AS action, model, record_id, payload, sheet_row_index,
                          max_retries, status::text AS status, retries
                   FROM sync_queue ORDER BY id"""
            )
        ).mappings()
        return [dict(r) for r in rows]


@pytest.fixture
def db() -> Iterator[None]:
    """conftest's ``db`` (an empty ``sync_queue``, default settings), emptied with DELETE.

    This module has ~170 short tests; TRUNCATE before each would be most of the run time.
    """
    get_settings.cache_clear()
    _empty_queue()
    yield
    get_settings.cache_clear()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str | None], None]]:
    """Set (or, with None, unset) an environment variable and re-read the settings."""

    def set_env(name: str, value: str | None) -> None:
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()

    yield set_env
    monkeypatch.undo()
    get_settings.cache_clear()


def _submit(via: str, **change: Any) -> None:
    """Enqueue one change through ``enqueue`` or (behind a good change) ``enqueue_many``."""
    if via == "enqueue":
        fields = {k: change[k] for k in ("action", "model", "record_id", "payload")}
        options = {k: change[k] for k in ("sheet_row_index", "max_retries") if k in change}
        queue.enqueue(*fields.values(), **options)
    else:
        queue.enqueue_many([GOOD, change])


def _assert_rejected(field: str, call: Callable[..., object], *args: Any, **kwargs: Any) -> str:
    """``call`` raises ValidationError naming ``field`` and stores nothing; return the message."""
    before = count_rows()
    with pytest.raises(ValidationError) as info:
        call(*args, **kwargs)
    assert isinstance(info.value, ValueError)
    assert info.value.field == field, str(info.value)
    message = str(info.value)
    assert message.startswith(f"{field}: "), message
    assert count_rows() == before
    return message


def _deep(levels: int) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    node = payload
    for _ in range(levels):
        node["d"] = {}
        node = node["d"]
    return payload


def _circular() -> dict[str, Any]:
    payload: dict[str, Any] = {}
    payload["self"] = payload
    return payload


# ------------------------------------------------------------------ one rule at a time

BAD_FIELDS = [
    # action
    ("action", "INSERT"),
    ("action", ""),
    ("action", "CREATE "),
    ("action", "CREATE\x00"),
    ("action", None),
    ("action", 1),
    ("action", b"CREATE"),
    ("action", ["CREATE"]),
    # model: outside the default set (Request, Operator, Revenue), or not a name at all
    ("model", "Invoice"),
    ("model", "request"),
    ("model", " Request"),
    ("model", ""),
    ("model", "Request\x00"),
    ("model", "R" * 65),
    ("model", None),
    ("model", 7),
    ("model", SyncAction.CREATE),
    # record_id
    ("record_id", ""),
    ("record_id", "x" * 256),
    ("record_id", "é" * 256),
    ("record_id", 10**256),
    ("record_id", "a\x00b"),
    ("record_id", "\ud800"),
    ("record_id", None),
    ("record_id", True),
    ("record_id", 1.5),
    ("record_id", b"1"),
    # payload: not a dict
    ("payload", None),
    ("payload", []),
    ("payload", [["a", 1]]),
    ("payload", "{}"),
    ("payload", b"{}"),
    ("payload", 1),
    ("payload", MappingProxyType({"a": 1})),
    # payload: not JSON (or would not come back unchanged)
    ("payload", {"s": {1, 2}}),
    ("payload", {"o": object()}),
    ("payload", {"t": (1, 2)}),
    ("payload", {"b": b"x"}),
    ("payload", {"d": Decimal("1.5")}),
    ("payload", {"c": 1j}),
    ("payload", {"nan": math.nan}),
    ("payload", {"inf": math.inf}),
    ("payload", {"list": [1, -math.inf]}),
    ("payload", {1: "int key"}),
    ("payload", {None: "None key"}),
    ("payload", {True: "bool key"}),
    ("payload", {("t",): "tuple key"}),
    ("payload", {"nested": {2.5: "float key"}}),
    ("payload", {"nul": "a\x00b"}),
    ("payload", {"a\x00": 1}),
    ("payload", {"lone surrogate": "\udc80"}),
    ("payload", {"\ud83d": "surrogate key"}),
    ("payload", _deep(200)),
    ("payload", _circular()),
    # sheet_row_index: a positive 32-bit int or None
    ("sheet_row_index", 0),
    ("sheet_row_index", -1),
    ("sheet_row_index", INT32_MAX + 1),
    ("sheet_row_index", True),
    ("sheet_row_index", False),
    ("sheet_row_index", "3"),
    ("sheet_row_index", 3.0),
    ("sheet_row_index", 1.5),
    # max_retries: 0..100 or None
    ("max_retries", -1),
    ("max_retries", 101),
    ("max_retries", 10**20),
    ("max_retries", True),
    ("max_retries", "3"),
    ("max_retries", 3.0),
]


@pytest.mark.parametrize("via", ["enqueue", "enqueue_many"])
@pytest.mark.parametrize(
    ("field", "value"), BAD_FIELDS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_FIELDS)]
)
def test_a_bad_field_is_rejected_by_name_and_nothing_is_stored(
    via: str, field: str, value: object
) -> None:
    named = field if via == "enqueue" else f"changes[1].{field}"  # the element is named
    _assert_rejected(named, _submit, via, **{**GOOD, field: value})
    assert count_rows() == 0


@pytest.mark.parametrize("via", ["enqueue", "enqueue_many"])
def test_boundary_values_are_accepted_and_stored_as_given(via: str) -> None:
    accepted: list[dict[str, Any]] = [
        {**GOOD, "action": "create"},
        {**GOOD, "action": "Delete"},
        {**GOOD, "action": SyncAction.UPDATE},
        {**GOOD, "model": "Operator"},
        {**GOOD, "model": "Revenue"},
        {**GOOD, "record_id": "x" * 255},
        {**GOOD, "record_id": "😀" * 255},
        {**GOOD, "record_id": 42},
        {**GOOD, "record_id": -(10**200)},
        {**GOOD, "record_id": "NULL"},
        {**GOOD, "payload": {}},
        {**GOOD, "payload": {"k": [None, True, 0, -1.5, "é", {"": []}], "NULL": "null"}},
        {**GOOD, "payload": _deep(40)},
        {**GOOD, "payload": {"big": 10**100, "small": 5e-324, "neg": -0.0}},
        {**GOOD, "sheet_row_index": 1},
        {**GOOD, "sheet_row_index": INT32_MAX},
        {**GOOD, "sheet_row_index": None},
        {**GOOD, "max_retries": 0},
        {**GOOD, "max_retries": 100},
        {**GOOD, "max_retries": None},
    ]
    if via == "enqueue":
        for change in accepted:
            queue.enqueue(
                change["action"],
                change["model"],
                change["record_id"],
                change["payload"],
                sheet_row_index=change.get("sheet_row_index"),
                max_retries=change.get("max_retries"),
            )
    else:
        queue.enqueue_many(accepted)
    rows = _rows()
    assert len(rows) == len(accepted)
    for row, change in zip(rows, accepted, strict=True):
        assert row["action"] == str(change["action"]).upper()
        assert row["model"] == change["model"]
        assert row["record_id"] == str(change["record_id"])
        assert row["payload"] == change["payload"]
        assert row["sheet_row_index"] == change.get("sheet_row_index")
        expected_retries = change.get("max_retries")
        assert row["max_retries"] == (3 if expected_retries is None else expected_retries)
        assert (row["status"], row["retries"]) == ("PENDING", 0)


def test_model_set_can_be_configured(env: Callable[[str, str | None], None]) -> None:
    env("SYNCQUEUE_MODELS", " Invoice , Customer ,")
    message = _assert_rejected("model", queue.enqueue, "CREATE", "Request", "1", {})
    assert "Customer, Invoice" in message
    _assert_rejected("changes[0].model", queue.enqueue_many, [{**GOOD, "model": "Operator"}])
    _assert_rejected("model", queue.enqueue, "CREATE", " Invoice ", "1", {})
    queue.enqueue("CREATE", "Invoice", "1", {})
    queue.enqueue_many([{**GOOD, "model": "Customer"}])
    assert [r["model"] for r in _rows()] == ["Invoice", "Customer"]

    env("SYNCQUEUE_MODELS", None)  # back to the default set
    _assert_rejected("model", queue.enqueue, "CREATE", "Invoice", "1", {})
    queue.enqueue("CREATE", "Revenue", "1", {})
    assert count_rows() == 3


def test_payload_size_limit_counts_serialized_utf8_bytes() -> None:
    overhead = len('{"p":""}')  # compact JSON, as stored
    at_limit = {"p": "x" * (65536 - overhead)}
    queue.enqueue("CREATE", "Request", "1", at_limit)
    message = _assert_rejected(
        "payload", queue.enqueue, "CREATE", "Request", "1", {"p": "x" * (65537 - overhead)}
    )
    assert "65536" in message
    # 32_765 characters, but 65_538 bytes in UTF-8: over the limit.
    _assert_rejected("payload", queue.enqueue, "CREATE", "Request", "1", {"p": "é" * 32765})
    _assert_rejected(
        "changes[1].payload", queue.enqueue_many, [GOOD, {**GOOD, "payload": {"p": "x" * 70000}}]
    )
    assert [r["payload"] for r in _rows()] == [at_limit]


def test_payload_size_limit_can_be_configured(env: Callable[[str, str | None], None]) -> None:
    env("SYNCQUEUE_MAX_PAYLOAD_BYTES", "100")
    overhead = len('{"p":""}')
    queue.enqueue("CREATE", "Request", "1", {"p": "x" * (100 - overhead)})
    message = _assert_rejected(
        "payload", queue.enqueue, "CREATE", "Request", "1", {"p": "x" * (101 - overhead)}
    )
    assert "100 bytes" in message
    _assert_rejected(
        "changes[0].payload",
        queue.enqueue_many,
        [{**GOOD, "payload": {"p": "x" * (101 - overhead)}}],
    )
    assert count_rows() == 1


@pytest.mark.parametrize("batch_size", [0, -1, 1001, 10**9, True, False, "5", 5.0, None])
def test_dequeue_rejects_a_batch_size_outside_1_to_1000(batch_size: object) -> None:
    queue.enqueue(**GOOD)
    _assert_rejected("batch_size", queue.dequeue, batch_size)
    assert count_rows("status = 'PENDING' AND claim_token IS NULL") == 1  # nothing claimed


def test_dequeue_accepts_batch_sizes_1_and_1000() -> None:
    queue.enqueue_many({**GOOD, "record_id": str(i)} for i in range(3))
    assert len(queue.dequeue(1)) == 1
    assert len(queue.dequeue(1000)) == 2


@pytest.mark.parametrize(
    "change",
    [
        {**GOOD, "extra": 1},
        {**GOOD, "Action": "CREATE"},
        {**GOOD, 1: "non-str key"},
    ],
    ids=["extra", "wrong-case", "int-key"],
)
def test_enqueue_many_rejects_unknown_keys(change: dict[Any, Any]) -> None:
    message = _assert_rejected("changes[1].change", queue.enqueue_many, [GOOD, change])
    assert "unknown keys" in message
    unknown = next(k for k in change if k not in ALLOWED)
    assert str(unknown) in message


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_enqueue_many_rejects_missing_keys(missing: str) -> None:
    change = {k: v for k, v in GOOD.items() if k != missing}
    message = _assert_rejected("changes[1].change", queue.enqueue_many, [GOOD, change])
    assert f"missing keys: {missing}" in message


@pytest.mark.parametrize(
    "change",
    [None, 42, "CREATE", b"CREATE", ["CREATE", "Request", "1", {}], ("CREATE",), object()],
    ids=["none", "int", "str", "bytes", "list", "tuple", "object"],
)
def test_enqueue_many_rejects_an_element_that_is_not_a_mapping(change: object) -> None:
    message = _assert_rejected("changes[1].change", queue.enqueue_many, [GOOD, change])
    assert "expected a mapping" in message


def test_enqueue_many_rejects_a_dict_passed_instead_of_a_list_of_dicts() -> None:
    # Iterating a dict yields its keys (strings): each is rejected as a non-mapping.
    _assert_rejected("changes", queue.enqueue_many, GOOD)


@dataclass
class TypedChange:
    action: object
    model: object
    record_id: object
    payload: object
    sheet_row_index: object = None
    max_retries: object = None


class MinimalChange(NamedTuple):
    action: object
    model: object
    record_id: object
    payload: object


def test_enqueue_many_accepts_typed_objects_and_other_mappings() -> None:
    ids = queue.enqueue_many(
        [
            TypedChange("UPDATE", "Operator", 7, {"x": [1]}, sheet_row_index=3, max_retries=9),
            MinimalChange("delete", "Revenue", "r", {}),
            MappingProxyType({**GOOD, "max_retries": 0}),
        ]
    )
    rows = _rows()
    assert [r["id"] for r in rows] == ids
    got = [
        (r["action"], r["model"], r["record_id"], r["payload"], r["sheet_row_index"]) for r in rows
    ]
    assert got == [
        ("UPDATE", "Operator", "7", {"x": [1]}, 3),
        ("DELETE", "Revenue", "r", {}, None),
        ("CREATE", "Request", "r-1", {"a": 1}, None),
    ]
    assert [r["max_retries"] for r in rows] == [9, 3, 0]


def test_a_typed_object_with_a_bad_field_is_rejected_by_that_field() -> None:
    _assert_rejected(
        "changes[0].sheet_row_index",
        queue.enqueue_many,
        [TypedChange(*GOOD.values(), sheet_row_index=0)],
    )
    _assert_rejected(
        "changes[0].payload",
        queue.enqueue_many,
        [MinimalChange("CREATE", "Request", "1", {"x": {1}})],
    )


def test_enqueue_many_with_item_ids_must_give_one_unique_id_per_change() -> None:
    ids = [new_id(), new_id()]
    _assert_rejected("item_ids", queue.enqueue_many, [GOOD], item_ids=ids)
    _assert_rejected("item_ids", queue.enqueue_many, [GOOD, GOOD], item_ids=[ids[0], ids[0]])
    _assert_rejected("id", queue.enqueue_many, [GOOD], item_ids=["not-an-id"])
    _assert_rejected("id", queue.enqueue, **GOOD, item_id="01ARZ3NDEKTSV4RRFFQ69G5FA")
    assert queue.enqueue_many([GOOD, GOOD], item_ids=ids) == ids


def test_reset_stuck_rejects_a_negative_threshold() -> None:
    _assert_rejected("older_than_minutes", queue.reset_stuck, -1)


# ---------------------------------------------------- package bugs found (failing tests)


def test_a_huge_int_in_the_payload_raises_validation_error() -> None:
    """Regression: json.dumps raises a plain ValueError (Python's 4300-digit int->str limit)."""
    _assert_rejected("payload", queue.enqueue, "CREATE", "Request", "1", {"n": 10**5000})


def test_a_huge_int_record_id_raises_validation_error() -> None:
    """Regression: str(record_id) raises a plain ValueError before the length check runs."""
    _assert_rejected("record_id", queue.enqueue, "CREATE", "Request", 10**5000, {})


@pytest.mark.parametrize(
    "value",
    [1e23, 1.7976931348623157e308, -9.999999999999999e22, 2.702159776422295e16],
    ids=["1e23", "max-float", "-9.999999999999999e22", "2.702159776422295e16"],
)
def test_a_large_float_is_stored_unchanged_or_rejected(value: float) -> None:
    """Regression: a float whose repr is an exponent with no fraction ("1e+23") came back from
    JSONB
    as the *integer* 10**23, which is a different number (the float is 99999999999999991611392).
    The validator claims to accept only what survives the JSONB round trip unchanged."""
    try:
        queue.enqueue("CREATE", "Request", "1", {"x": value})
    except ValidationError as exc:
        assert exc.field == "payload"
        assert count_rows() == 0
        return
    [row] = _rows()
    assert row["payload"] == {"x": value}


@pytest.mark.parametrize("minutes", [math.nan, math.inf])
def test_reset_stuck_rejects_a_threshold_that_is_not_a_finite_number(minutes: float) -> None:
    """Regression: NaN / inf pass the ``< 0`` check and PostgreSQL raises DataError (interval out of
    range) instead of a ValidationError naming older_than_minutes."""
    _assert_rejected("older_than_minutes", queue.reset_stuck, minutes)


# ------------------------------------------------------------------- property-based tests

PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

ANY_CHAR = st.characters(exclude_categories=())  # with NUL and lone surrogates
TEXT = st.text(ANY_CHAR, max_size=12)
LONG_TEXT = st.builds(
    lambda ch, n: ch * n, st.sampled_from(["a", "é", "😀", "\x00", "\ud800"]), st.integers(250, 260)
)
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.binary(max_size=6),
    st.lists(st.integers(), max_size=2),
)

ACTION = st.one_of(
    st.sampled_from([*ACTIONS, "create", "uPdAtE", "delete", "INSERT", "", "CREATE "]),
    st.sampled_from(list(SyncAction)),
    TEXT,
    JUNK,
)
MODEL = st.one_of(
    st.sampled_from(["Request", "Operator", "Revenue", "request", "Nope", "", "Request\x00"]),
    TEXT,
    JUNK,
)
RECORD_ID = st.one_of(
    TEXT,
    LONG_TEXT,
    st.integers(),
    st.sampled_from(["", "x" * 255, "x" * 256, "NULL", "a,b", '"{}"', "\\", " "]),
    JUNK,
)
SHEET_ROW_INDEX = st.one_of(
    st.none(),
    st.integers(-2, 5),
    st.integers(),
    st.sampled_from([INT32_MAX, INT32_MAX + 1]),
    st.booleans(),
    st.floats(),
    TEXT,
)
MAX_RETRIES = st.one_of(
    st.none(), st.integers(-2, 102), st.integers(), st.booleans(), st.floats(), TEXT
)

JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), TEXT)
NON_JSON_LEAF = st.one_of(
    st.binary(max_size=4),
    st.sets(st.integers(), max_size=2),
    st.tuples(st.integers()),
    st.builds(object),
    st.decimals(allow_nan=False, allow_infinity=False, places=1),
)
KEY = st.one_of(TEXT, st.integers(), st.none(), st.booleans(), st.floats())


def _json_tree(leaf: st.SearchStrategy[Any], key: st.SearchStrategy[Any]) -> Any:
    return st.recursive(
        leaf,
        lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(key, kids, max_size=4)),
        max_leaves=12,
    )


CLEAN_JSON = _json_tree(JSON_LEAF, st.text(max_size=8))
MESSY_JSON = _json_tree(st.one_of(JSON_LEAF, NON_JSON_LEAF), KEY)
PAYLOAD = st.one_of(
    st.dictionaries(st.text(max_size=8), CLEAN_JSON, max_size=5),
    st.dictionaries(KEY, MESSY_JSON, max_size=5),
    st.builds(lambda n: {"pad": "x" * n}, st.integers(0, 400)),
    MESSY_JSON,
    JUNK,
)
# None: the default limit (64 KiB); small limits make the size rule reachable.
PAYLOAD_LIMIT = st.sampled_from([None, "16", "64", "300"])

ARGS = {
    "action": ACTION,
    "model": MODEL,
    "record_id": RECORD_ID,
    "payload": PAYLOAD,
    "sheet_row_index": SHEET_ROW_INDEX,
    "max_retries": MAX_RETRIES,
}
GOOD_ARGS = {
    "action": st.sampled_from([*ACTIONS, "create", SyncAction.DELETE]),
    "model": st.sampled_from(["Request", "Operator", "Revenue"]),
    "record_id": st.one_of(st.text(min_size=1, max_size=10), st.integers()),
    "payload": st.dictionaries(st.text(max_size=8), CLEAN_JSON, max_size=4),
    "sheet_row_index": st.one_of(st.none(), st.integers(1, INT32_MAX)),
    "max_retries": st.one_of(st.none(), st.integers(0, 100)),
}
FIELDS = ("action", "model", "record_id", "payload", "sheet_row_index", "max_retries")
REQUIRED_FIELDS = FIELDS[:4]
# A good change with exactly one field drawn from the wild: reaches every field's rule (the
# validator checks the payload first, so an all-random change rarely gets past it).
ONE_FIELD_OFF = st.sampled_from(FIELDS).flatmap(
    lambda off: st.fixed_dictionaries({**GOOD_ARGS, off: ARGS[off]})
)


def _element(draw_args: dict[str, Any]) -> Any:
    return st.one_of(
        st.fixed_dictionaries(
            {k: draw_args[k] for k in REQUIRED_FIELDS},
            optional={k: draw_args[k] for k in FIELDS[4:]},
        ),
        st.builds(TypedChange, **draw_args),
        st.builds(MinimalChange, **{k: draw_args[k] for k in REQUIRED_FIELDS}),
    )


ELEMENT = st.one_of(
    _element(GOOD_ARGS),
    _element(ARGS),
    ONE_FIELD_OFF,
    ONE_FIELD_OFF.map(lambda change: TypedChange(**change)),
    # keys missing, unknown or misspelled
    st.fixed_dictionaries(
        {}, optional={**ARGS, "extra": st.integers(), "Model": MODEL, 0: st.none()}
    ),
    JUNK,
    TEXT,
)
CHANGES = st.one_of(st.lists(_element(GOOD_ARGS), max_size=5), st.lists(ELEMENT, max_size=5))


# The oracle: the rules of the documentation, written independently of validation.py.


def _is_unicode(value: str) -> bool:
    """No NUL (PostgreSQL text cannot hold it) and no lone surrogate (not UTF-8 encodable)."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_text(value: object, max_length: int) -> bool:
    return isinstance(value, str) and 0 < len(value) <= max_length and _is_unicode(value)


def _is_json(value: object, depth: int = 0) -> bool:
    """Values that JSONB stores and gives back unchanged (nested at most 64 levels)."""
    if depth > 64:
        return False
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return value.bit_length() <= 10_000
    if isinstance(value, float):
        # JSONB would give 1e16 and up back as an int (a different number): refused.
        return math.isfinite(value) and abs(value) < 1e16
    if isinstance(value, str):
        return _is_unicode(value)
    if isinstance(value, list):
        return all(_is_json(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(
            isinstance(k, str) and _is_json(k, depth + 1) and _is_json(v, depth + 1)
            for k, v in value.items()
        )
    return False


def _has_decimal_form(value: int) -> bool:
    """False for an int too long for str() (Python's 4300-digit limit): JSON cannot hold it."""
    try:
        str(value)
    except ValueError:
        return False
    return True


def _is_int(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _expected_row(
    action: object,
    model: object,
    record_id: object,
    payload: object,
    sheet_row_index: object = None,
    max_retries: object = None,
) -> dict[str, Any] | None:
    """The row ``enqueue`` must store for these arguments, or None if it must reject them."""
    s = get_settings().limits
    if not isinstance(action, str) or action.upper() not in ACTIONS:
        return None
    if not _is_text(model, 64) or model not in s.models:
        return None
    if isinstance(record_id, int) and not isinstance(record_id, bool):
        if not _has_decimal_form(record_id):
            return None
        record_id = str(record_id)
    if not _is_text(record_id, s.max_record_id_length):
        return None
    if record_id.strip() != record_id or any(
        ord(c) < 32 or 127 <= ord(c) < 160 for c in record_id
    ):  # read back as written: no surrounding whitespace, no control characters
        return None
    if not isinstance(payload, dict) or not _is_json(payload):
        return None
    size = len(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode())
    if size > s.max_payload_bytes:
        return None
    if sheet_row_index is not None and not _is_int(sheet_row_index, 1, INT32_MAX):
        return None
    if max_retries is not None and not _is_int(max_retries, 0, 100):
        return None
    return {
        "action": action.upper(),
        "model": model,
        "record_id": record_id,
        "payload": payload,
        "sheet_row_index": sheet_row_index,
        "max_retries": s.default_max_retries if max_retries is None else max_retries,
        "status": "PENDING",
        "retries": 0,
    }


def _expected_element(change: object) -> dict[str, Any] | None:
    if isinstance(change, Mapping):
        if set(change) - ALLOWED or REQUIRED - set(change):
            return None
        return _expected_row(**change)
    if all(hasattr(change, k) for k in REQUIRED):
        return _expected_row(
            *(getattr(change, k) for k in ("action", "model", "record_id", "payload")),
            getattr(change, "sheet_row_index", None),
            getattr(change, "max_retries", None),
        )
    return None


def _stored_without_ids() -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "id"} for row in _rows()]


# Explicit examples run first and fail at once, without the long shrinking of a generated
# failure: a regression of the large-float rule fails fast with a readable example.
EDGE_EXAMPLES: list[dict[str, Any]] = [{**GOOD, "payload": {"x": 1e23}}]


def _with_bug_examples(make: Callable[[dict[str, Any]], dict[str, Any]]) -> Any:
    def decorate(test: Any) -> Any:
        for change in reversed(EDGE_EXAMPLES):
            test = example(**make(change), limit=None)(test)
        return test

    return decorate


@PROPERTY
@given(
    args=st.one_of(st.fixed_dictionaries(ARGS), st.fixed_dictionaries(GOOD_ARGS), ONE_FIELD_OFF),
    limit=PAYLOAD_LIMIT,
)
@_with_bug_examples(lambda c: {"args": {"sheet_row_index": None, "max_retries": None, **c}})
def test_property_enqueue_stores_exactly_the_change_or_rejects_it(
    env: Callable[[str, str | None], None], args: dict[str, Any], limit: str | None
) -> None:
    env("SYNCQUEUE_MAX_PAYLOAD_BYTES", limit)
    _empty_queue()
    expected = _expected_row(**args)
    try:
        item_id = queue.enqueue(
            args["action"],
            args["model"],
            args["record_id"],
            args["payload"],
            sheet_row_index=args["sheet_row_index"],
            max_retries=args["max_retries"],
        )
    except ValidationError as exc:
        assert count_rows() == 0
        assert str(exc).startswith(f"{exc.field}: ")
        assert expected is None, f"valid change rejected: {exc}"
        event(f"rejected: {exc.field}")
        return
    assert expected is not None, "invalid change accepted"
    event("stored")
    assert [r["id"] for r in _rows()] == [item_id]
    assert _stored_without_ids() == [expected]


@PROPERTY
@given(changes=CHANGES, limit=PAYLOAD_LIMIT)
@_with_bug_examples(lambda c: {"changes": [GOOD, c]})
def test_property_enqueue_many_stores_exactly_the_changes_or_nothing(
    env: Callable[[str, str | None], None], changes: list[Any], limit: str | None
) -> None:
    env("SYNCQUEUE_MAX_PAYLOAD_BYTES", limit)
    _empty_queue()
    expected = [_expected_element(c) for c in changes]
    try:
        ids = queue.enqueue_many(changes)
    except ValidationError as exc:
        assert count_rows() == 0
        assert str(exc).startswith(f"{exc.field}: ")
        assert None in expected, f"valid changes rejected: {exc}"
        event(f"rejected: {exc.field}")
        return
    assert None not in expected, "an invalid change was accepted"
    event(f"stored {len(ids)} row(s)")
    assert len(ids) == len(set(ids)) == len(changes)
    assert [r["id"] for r in _rows()] == ids
    assert _stored_without_ids() == expected


@pytest.mark.parametrize(
    "record_id", [" 42", "42 ", "42\n", "  ", "\t7", "a\tb", "a\x1bb", "x\u0085", "\u00a0x"]
)
def test_a_record_id_a_sheet_would_not_read_back_exactly_is_refused(record_id: str) -> None:
    """Finding 2 of issue 11: " 42" and "42\\n" passed, and the writer stripped the ids it
    read back, so they landed on the row of "42"."""
    message = _assert_rejected("record_id", queue.enqueue, "UPDATE", "Request", record_id, {})
    assert "whitespace" in message or "control characters" in message
    _assert_rejected(
        "changes[0].record_id",
        queue.enqueue_many,
        [{"action": "UPDATE", "model": "Request", "record_id": record_id, "payload": {}}],
    )


def test_errors_name_the_element_and_the_place_in_the_payload_once() -> None:
    message = _assert_rejected(
        "changes[2].payload",
        queue.enqueue_many,
        [GOOD, GOOD, {**GOOD, "payload": {"ok": 1, "nested": {"bad": math.nan}}}],
    )
    assert message == "changes[2].payload: at .nested.bad: nan, which JSON cannot hold"
