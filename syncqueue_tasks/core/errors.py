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


# user:password@ in any URL-like string (postgresql://, redis://, amqp://, https://); up to the
# last "@" of the authority, so a raw "@" inside the password is masked too.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)[^\s/?#]*@")
_SECRET_KEYS = (
    r"access_token|refresh_token|id_token|api[_-]?key|client_secret|password|passwd|pwd|"
    r"private_key|secret|token|key"
)
# key=value, key: value, "key": "value", 'key': 'value': a quoted value is masked whole (a PEM
# key has spaces), an unquoted one up to the next separator.
_SECRET_PAIRS = re.compile(
    rf"(?i)(?P<key>\b(?:{_SECRET_KEYS}))(?P<sep>[\"']?\s*[=:]\s*)"
    r"(?P<value>\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|[^\s\"'&,;}]+)"
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]+")
_WHITESPACE = re.compile(r"\s+")


def _mask_value(match: re.Match[str]) -> str:
    value = match.group("value")
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{match.group('key')}{match.group('sep')}{quote}***{quote}"


def sanitize_error(error: BaseException | str, limit: int = MAX_ERROR_LENGTH) -> str:
    """Return ``"Type: message"`` on one line, with credentials masked, at most ``limit`` chars.

    Never includes a traceback: only the exception's type name and its message.
    """
    if isinstance(error, BaseException):
        try:
            message = str(error)
        except Exception:
            message = "<message could not be read>"
        text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    else:
        text = str(error)
    text = _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)
    text = _SECRET_PAIRS.sub(_mask_value, text)
    text = _BEARER.sub(r"\1 ***", text)
    text = _WHITESPACE.sub(" ", text).strip()
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text
