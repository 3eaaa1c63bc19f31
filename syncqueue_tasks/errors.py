"""Typed exceptions, and the one function that makes an error safe to store or log."""

from __future__ import annotations

import re

MAX_ERROR_LENGTH = 1000


class SyncQueueError(Exception):
    """Base class of every error this package raises on purpose."""


class ValidationError(SyncQueueError, ValueError):
    """Bad input, detected before anything was written. The message names the field."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class EnqueueError(SyncQueueError):
    """A change could not be accepted: neither the broker nor the database took it."""


class ConfigurationError(SyncQueueError):
    """A setting (environment variable) is missing or malformed."""


# user:password@ in any URL-like string (postgresql://, redis://, amqp://, https://).
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)[^/\s:@]*(:[^/\s@]*)?@")
# access_token=..., api_key: ..., Authorization: Bearer ..., "private_key": "..."
_SECRET_PAIRS = re.compile(
    r"(?i)(?P<key>access_token|refresh_token|id_token|api[_-]?key|client_secret|password|"
    r"private_key|token|secret)(?P<sep>\"?\s*[=:]\s*\"?)(?P<value>[^\s\"'&,;}]+)"
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{8,}")
_WHITESPACE = re.compile(r"\s+")


def sanitize_error(error: BaseException | str, limit: int = MAX_ERROR_LENGTH) -> str:
    """Return ``"Type: message"`` on one line, with credentials masked, at most ``limit`` chars.

    Never includes a traceback: only the exception's type name and its message.
    """
    if isinstance(error, BaseException):
        message = str(error)
        text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    else:
        text = str(error)
    text = _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)
    text = _SECRET_PAIRS.sub(r"\g<key>\g<sep>***", text)
    text = _BEARER.sub(r"\1 ***", text)
    text = _WHITESPACE.sub(" ", text).strip()
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text
