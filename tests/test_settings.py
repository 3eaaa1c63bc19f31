"""Numeric settings: parsed, bounded, and refused with the variable's name."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from syncqueue_tasks.core.errors import ConfigurationError
from syncqueue_tasks.settings import get_settings

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_numbers_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCQUEUE_BACKOFF_BASE_SECONDS", " 3 ")
    monkeypatch.setenv("SYNCQUEUE_CLAIM_MAX_CHANGES", "7")
    settings = get_settings()
    assert (settings.queue.backoff_base_seconds, settings.queue.claim_max_changes) == (3.0, 7)


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("SYNCQUEUE_CLAIM_MAX_CHANGES", "1.5", "must be an integer, got '1.5'"),
        ("SYNCQUEUE_BACKOFF_BASE_SECONDS", "x", "must be a number, got 'x'"),
        ("SYNCQUEUE_BACKOFF_BASE_SECONDS", "5000", "must be between 0.0 and 3600.0, got 5000.0"),
    ],
)
def test_a_bad_number_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, raw: str, message: str
) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(ConfigurationError, match=f"^{name} {message}$".replace(".", r"\.")):
        get_settings()
