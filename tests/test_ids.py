"""Ids: the fast encoding and check give exactly what the plain definitions give."""

from __future__ import annotations

import itertools
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncqueue_tasks.core import ids
from syncqueue_tasks.core.ids import is_valid_id, new_id

pytestmark = pytest.mark.unit

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def reference_encode(value: int) -> str:
    """The definition: 26 base32 digits, the low 5 bits last."""
    chars = []
    for _ in range(26):
        chars.append(ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def reference_is_valid(value: object) -> bool:
    """The definition: 26 Crockford digits, the first at most 7 (130 bits)."""
    return (
        isinstance(value, str)
        and len(value) == 26
        and value[0] in "01234567"
        and all(c in ALPHABET for c in value)
    )


def decode(value: str) -> int:
    """An id's number."""
    return int(value.translate(str.maketrans(ALPHABET, "0123456789abcdefghijklmnopqrstuv")), 32)


@given(st.integers(min_value=0, max_value=2**130 - 1))
def test_encoding_equals_the_digit_by_digit_definition(value: int) -> None:
    assert ids._encode(value) == reference_encode(value)


@given(st.sampled_from([0, 1, 31, 32, 2**70 - 1, 2**70, 2**121 - 1, 2**130 - 1]))
def test_encoding_of_edge_values(value: int) -> None:
    assert ids._encode(value) == reference_encode(value)


@given(
    st.one_of(
        st.text(alphabet=ALPHABET + "ILOUabz!\n ", min_size=24, max_size=28),
        st.text(max_size=30),
        st.builds(new_id),
        st.integers(),
        st.none(),
    )
)
def test_is_valid_id_equals_the_definition(value: object) -> None:
    assert is_valid_id(value) is reference_is_valid(value)


def test_a_valid_id_followed_by_a_newline_is_refused() -> None:
    assert not is_valid_id(new_id() + "\n")


def test_ids_increase_even_when_the_clock_stands_still_or_goes_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = time.time_ns()
    clock = iter([now] * 50 + [now - 10**9] * 50 + [now + 10**6] * 10)
    monkeypatch.setattr(ids.time, "time_ns", lambda: next(clock))
    made = [new_id() for _ in range(110)]
    assert made == sorted(made) and len(set(made)) == len(made)
    assert all(is_valid_id(i) for i in made)
    # After the clock went back: each id is the previous one plus one.
    values = [decode(i) for i in made]
    assert all(b == a + 1 for a, b in itertools.pairwise(values[50:100]))
