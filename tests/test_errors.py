"""``sanitize_error``: one line, no traceback, credentials masked, bounded; and end to end.

What reaches ``sync_queue.last_error`` and the logs must be safe to show an operator: the
tests feed it exceptions and messages carrying the credentials this system handles
(PostgreSQL and Redis URLs, Google OAuth tokens, a service account's private key).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import pytest
from dbutil import count_rows
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from syncqueue_tasks.core.errors import MAX_ERROR_LENGTH, sanitize_error
from syncqueue_tasks.core.items import QueueItem, QueueStatus
from syncqueue_tasks.core.records import RecordWrite
from syncqueue_tasks.store import queue
from syncqueue_tasks.store.db import get_engine

DB_PASSWORD = "s3cr3t-Pa55w0rd"
REDIS_PASSWORD = "r3d1s-Pa55w0rd"
OAUTH_TOKEN = "ya29.a0AfB_byC-Secr3tT0ken"
PEM_BODY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj"
PRIVATE_KEY = f"-----BEGIN PRIVATE KEY-----\\n{PEM_BODY}\\n-----END PRIVATE KEY-----\\n"


def _one_line(result: str) -> None:
    assert len(result.splitlines()) <= 1, result
    assert result == result.strip()
    assert "  " not in result


# ---------------------------------------------------------------------- no traceback


def _connect() -> None:
    _open_pool()


def _open_pool() -> None:
    _handshake()


def _handshake() -> None:
    raise ConnectionError("server closed the connection\n\tunexpectedly (attempt 3)")


@pytest.mark.unit
def test_an_exception_raised_deep_in_a_call_chain_becomes_type_colon_message() -> None:
    with pytest.raises(ConnectionError) as info:
        _connect()
    assert info.value.__traceback__ is not None  # it has a traceback to leak
    result = sanitize_error(info.value)
    assert result == "ConnectionError: server closed the connection unexpectedly (attempt 3)"
    for frame_text in ("Traceback", "File ", "_handshake", "_open_pool", "line "):
        assert frame_text not in result


@pytest.mark.unit
def test_a_chained_exception_reports_only_the_outer_one() -> None:
    try:
        try:
            _connect()
        except ConnectionError as inner:
            raise RuntimeError("sheet write failed") from inner
    except RuntimeError as outer:
        result = sanitize_error(outer)
    assert result == "RuntimeError: sheet write failed"


@pytest.mark.unit
def test_an_exception_without_a_message_is_its_type_name() -> None:
    assert sanitize_error(TimeoutError()) == "TimeoutError"
    assert sanitize_error(KeyError("row")) == "KeyError: 'row'"


@pytest.mark.unit
def test_a_string_error_is_kept_as_given_on_one_line() -> None:
    assert sanitize_error("HTTP 503\r\nretry later") == "HTTP 503 retry later"
    assert sanitize_error("  plain  ") == "plain"


# ----------------------------------------------------------------- credentials masked

MASKED = [
    # (error text, secret that must disappear, text that must survive)
    (
        f"could not connect to postgresql://app_user:{DB_PASSWORD}@db.internal:5432/queue",
        DB_PASSWORD,
        "postgresql://***@db.internal:5432/queue",
    ),
    (
        f"bad url postgresql+psycopg://app_user:{DB_PASSWORD}@db.internal/queue?sslmode=require",
        DB_PASSWORD,
        "postgresql+psycopg://***@db.internal/queue?sslmode=require",
    ),
    (
        f"Error 111 connecting to redis://:{REDIS_PASSWORD}@cache.internal:6379/0.",
        REDIS_PASSWORD,
        "redis://***@cache.internal:6379/0.",
    ),
    (
        f"rediss://default:{REDIS_PASSWORD}@cache.internal:6380/1 refused",
        REDIS_PASSWORD,
        "rediss://***@cache.internal:6380/1 refused",
    ),
    (
        f"GET https://robot:{OAUTH_TOKEN}@git.example.com/org/repo.git failed",
        OAUTH_TOKEN,
        "https://***@git.example.com/org/repo.git failed",
    ),
    (
        f"GET https://sheets.googleapis.com/v4/x?access_token={OAUTH_TOKEN}&alt=json: 401",
        OAUTH_TOKEN,
        "access_token=***&alt=json: 401",
    ),
    (f"token refresh: access_token={OAUTH_TOKEN}", OAUTH_TOKEN, "access_token=***"),
    (f"refresh_token: {OAUTH_TOKEN} expired", OAUTH_TOKEN, "expired"),
    (f"Authorization: Bearer {OAUTH_TOKEN}", OAUTH_TOKEN, "Authorization: Bearer ***"),
    (f"authorization: bearer {OAUTH_TOKEN} rejected", OAUTH_TOKEN, "rejected"),
    ("Authorization: Basic dXNlcjpodW50ZXIy", "dXNlcjpodW50ZXIy", "Authorization: Basic ***"),
    (
        f'{{"error": "invalid_grant", "access_token": "{OAUTH_TOKEN}", "expires_in": 3599}}',
        OAUTH_TOKEN,
        '"expires_in": 3599',
    ),
    (f'client_secret="{OAUTH_TOKEN}"', OAUTH_TOKEN, "client_secret="),
    (f"api_key={OAUTH_TOKEN}", OAUTH_TOKEN, "api_key=***"),
    (f"host=db user=app password={DB_PASSWORD} dbname=queue", DB_PASSWORD, "dbname=queue"),
]


@pytest.mark.unit
@pytest.mark.parametrize(("error", "secret", "kept"), MASKED, ids=[m[2][:40] for m in MASKED])
@pytest.mark.parametrize("as_exception", [False, True], ids=["str", "exception"])
def test_credentials_are_masked(error: str, secret: str, kept: str, as_exception: bool) -> None:
    result = sanitize_error(RuntimeError(error) if as_exception else error)
    assert secret not in result
    assert kept in result
    _one_line(result)


@pytest.mark.unit
@pytest.mark.parametrize(
    "error",
    [
        # A service account key file's JSON, as a Google auth library quotes it back: the
        # PEM body (the secret) comes after a space inside the JSON string.
        '{"type": "service_account", "private_key_id": "1a2b", '
        f'"private_key": "{PRIVATE_KEY}", "client_email": "sync@proj.iam.gserviceaccount.com"}}',
        f'"private_key": "{PRIVATE_KEY}"',
    ],
    ids=["service-account-json", "private-key-pair"],
)
def test_a_json_private_key_is_masked_entirely(error: str) -> None:
    """Regression: the value pattern stopped at the first space, so only "-----BEGIN" was
    masked and the
    key body (``MIIEv...``) is stored and logged in clear."""
    result = sanitize_error(ValueError(error))
    assert PEM_BODY not in result
    assert PEM_BODY[:16] not in result
    assert "PRIVATE KEY-----" not in result


@pytest.mark.unit
@pytest.mark.parametrize(
    "error",
    [
        f"{{'host': 'db', 'password': '{DB_PASSWORD}'}}",
        f"unexpected options {{'access_token': '{OAUTH_TOKEN}'}}",
    ],
    ids=["password", "access_token"],
)
def test_a_python_dict_repr_with_a_secret_is_masked(error: str) -> None:
    """Regression: the key pattern allows ``"`` around the key but not ``'``, so the repr of a dict
    (how most Python exceptions quote their arguments) keeps the secret in clear."""
    result = sanitize_error(TypeError(error))
    assert DB_PASSWORD not in result
    assert OAUTH_TOKEN not in result


@pytest.mark.unit
def test_an_exception_whose_str_fails_is_still_sanitized() -> None:
    """Regression: ``str(error)`` is called unguarded, so ``sanitize_error`` itself raises; in
    ``batch._write`` that escapes ``process`` and leaves the batch PROCESSING until
    ``reset_stuck``. Expected: the type name, with some placeholder for the message."""

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no str for you")

    result = sanitize_error(Unprintable())
    assert result.startswith("Unprintable")
    _one_line(result)


# -------------------------------------------------------------------- length bounded


@pytest.mark.unit
def test_length_is_bounded_by_default_and_by_limit() -> None:
    assert MAX_ERROR_LENGTH <= 1000
    long = sanitize_error(RuntimeError("x" * 5000))
    assert len(long) <= 1000
    assert long.startswith("RuntimeError: xxx") and long.endswith("…")
    assert len(sanitize_error("y" * 5000, limit=50)) <= 50
    assert sanitize_error("short", limit=50) == "short"
    exactly = "z" * MAX_ERROR_LENGTH
    assert sanitize_error(exactly) == exactly


@pytest.mark.unit
def test_masking_happens_before_truncation() -> None:
    # The secret straddles the cut: masking after truncation would leave a prefix of it.
    for padding in range(MAX_ERROR_LENGTH - 40, MAX_ERROR_LENGTH + 5):
        result = sanitize_error("p" * padding + f" postgresql://u:{DB_PASSWORD}@h/db")
        assert len(result) <= MAX_ERROR_LENGTH
        assert DB_PASSWORD[:4] not in result, padding


CREDENTIAL_FORMS = [
    "postgresql://user:{}@db.internal:5432/queue",
    "redis://:{}@cache:6379/0",
    "https://user:{}@example.com/path",
    "access_token={}",
    "refresh_token: {}",
    "api-key={}",
    "Authorization: Bearer {}",
    '"client_secret": "{}"',
    "password={}",
]
SECRET = st.text("ABCDEFGHJKMNPQRSTVWXYZabcdefghijkmnopqrstuvwxyz0123456789._~-", min_size=10).map(
    lambda s: "Zq9" + s[:40]
)


@pytest.mark.unit
@settings(max_examples=150, deadline=None)
@given(
    before=st.text(),
    after=st.text(),
    form=st.sampled_from(CREDENTIAL_FORMS),
    secret=SECRET,
    limit=st.one_of(st.just(MAX_ERROR_LENGTH), st.integers(1, 2000)),
    as_exception=st.booleans(),
)
def test_property_one_line_bounded_and_the_secret_is_gone(
    before: str, after: str, form: str, secret: str, limit: int, as_exception: bool
) -> None:
    message = f"{before} {form.format(secret)} {after}"
    result = sanitize_error(ValueError(message) if as_exception else message, limit=limit)
    assert len(result) <= limit
    assert len(result.splitlines()) <= 1
    assert secret[:6] not in result
    assert "Traceback" not in result or "Traceback" in message


# ------------------------------------------------------------------------ end to end


def _claim_one(record_id: str = "r-1", max_retries: int = 1) -> QueueItem:
    queue.enqueue("UPDATE", "Request", record_id, {"v": 1}, max_retries=max_retries)
    [item] = queue.dequeue()
    return item


def _last_errors() -> list[str]:
    with get_engine().connect() as conn:
        return list(conn.execute(text("SELECT last_error FROM sync_queue ORDER BY id")).scalars())


def _leaked(texts: Sequence[str]) -> list[str]:
    secrets = (DB_PASSWORD, REDIS_PASSWORD, OAUTH_TOKEN)
    return [t for t in texts if any(s in t for s in secrets)]


@pytest.mark.integration
@pytest.mark.usefixtures("db")
def test_mark_failed_stores_a_masked_bounded_one_line_error() -> None:
    item = _claim_one()
    error = RuntimeError(
        f"could not connect to postgresql://svc:{DB_PASSWORD}@db.internal:5432/app\n"
        + "detail " * 800
    )
    assert queue.mark_failed(item, error, retryable=False) is QueueStatus.FAILED
    [stored] = _last_errors()
    assert DB_PASSWORD not in stored
    assert stored.startswith(
        "RuntimeError: could not connect to postgresql://***@db.internal:5432/app detail"
    )
    assert len(stored) <= 1000 and stored.endswith("…")
    _one_line(stored)
    [listed] = queue.list_failed()
    assert listed["last_error"] == stored


@pytest.mark.integration
@pytest.mark.usefixtures("db")
def test_mark_failed_many_masks_string_and_exception_errors() -> None:
    first, second = _claim_one("a"), _claim_one("b")
    statuses = queue.mark_failed_many(
        [
            queue.Failure(first, f"401 for access_token={OAUTH_TOKEN}", retry_after=60),
            queue.Failure(second, ConnectionError(f"redis://:{REDIS_PASSWORD}@cache:6379/0")),
        ]
    )
    assert set(statuses.values()) == {QueueStatus.FAILED}  # max_retries=1
    stored = _last_errors()
    assert stored == ["401 for access_token=***", "ConnectionError: redis://***@cache:6379/0"]


class _LeakyWriter:
    """A writer whose failure message carries credentials, as a client library's might."""

    def write_records(self, writes: Sequence[RecordWrite]) -> dict[object, object]:
        raise ConnectionError(
            f"POST https://sheets.googleapis.com/v4/x?access_token={OAUTH_TOKEN} via "
            f"redis://:{REDIS_PASSWORD}@cache:6379/0 failed\nTraceback-looking detail"
        )


@pytest.mark.integration
@pytest.mark.usefixtures("db")
def test_logged_errors_contain_no_secret(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from syncqueue_tasks import counters
    from syncqueue_tasks.celery import batch  # imported here: batch is a heavier module

    monkeypatch.setattr(counters, "record_outcomes", lambda **_: None)  # no Redis in tests
    caplog.set_level(logging.DEBUG)

    # reset_stuck: an item whose claim is old, after a failure with a secret in it.
    item = _claim_one("stuck", max_retries=3)
    status = queue.mark_failed(item, f"postgresql://svc:{DB_PASSWORD}@db/app", retry_after=0)
    assert status is QueueStatus.PENDING
    assert len(queue.dequeue()) == 1
    with get_engine().begin() as conn:
        conn.execute(text("UPDATE sync_record SET claimed_at = now() - interval '1 hour'"))
    assert queue.reset_stuck(older_than_minutes=10) == 1

    # batch.process: the writer raises; the batch's failure is logged and stored.
    queue.enqueue("CREATE", "Request", "w", {"v": 1})
    report = batch.process(_LeakyWriter(), batch_size=10, time_budget=0.2)
    assert (report.claimed, report.retried) == (2, 2)

    messages = [r.getMessage() for r in caplog.records]
    assert any("reset_stuck returned 1 item(s)" in m for m in messages)
    assert any("writer failed on a batch" in m and "access_token=***" in m for m in messages)
    assert _leaked(messages) == []
    assert _leaked([caplog.text]) == []
    assert all(r.exc_info is None and r.exc_text is None for r in caplog.records)
    assert _leaked([str(report)]) == []
    assert _leaked([e for e in _last_errors() if e]) == []
    assert count_rows("last_error LIKE '%access_token=***%'") >= 1
    assert not re.search(r"Traceback \(most recent call last\)", caplog.text)
