"""Logins, server-side sessions, CSRF tokens and one-time confirmations of the dashboard.

- One password (``SYNCQUEUE_DASHBOARD_PASSWORD``, or one generated at start), compared in
  constant time. Failed logins are slowed down and limited per client address.
- Sessions live in this process's memory; the browser holds only a random id, in a cookie
  that is ``HttpOnly`` and ``SameSite=Strict`` (``Secure`` behind TLS). A restart logs
  everyone out; a logout really ends the session (a signed cookie could not be revoked).
- Every session, also the anonymous one that shows the login form, has a CSRF token that every
  POST must carry. Logging in replaces the session (and its token), so a login form cannot be
  replayed and a session id seen before the login is worthless after it.
- A retry or discard is confirmed on a page whose form carries a one-time token bound to the
  exact items shown: used once, it is gone, so a replayed confirmation is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from urllib.parse import urlsplit

SESSION_IDLE_SECONDS = 8 * 3600
MAX_SESSIONS = 10_000
CONFIRMATION_SECONDS = 600
MAX_CONFIRMATIONS = 20
LOGIN_FAILURES_ALLOWED = 5
LOGIN_WINDOW_SECONDS = 60.0


def generate_password() -> str:
    """A random password for a run that was not given one (96 bits)."""
    return secrets.token_urlsafe(12)


def password_matches(given: str, expected: str) -> bool:
    """Constant-time comparison (of digests, so the length does not leak either)."""
    return hmac.compare_digest(
        hashlib.sha256(given.encode()).digest(), hashlib.sha256(expected.encode()).digest()
    )


def tokens_match(given: str, expected: str) -> bool:
    """Constant-time comparison of a submitted token with the expected one."""
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())


def same_origin(host: str | None, origin: str | None, referer: str | None) -> bool:
    """Whether a POST comes from a page of this server (``Origin``, else ``Referer``).

    Browsers send ``Origin`` with every POST; a request with neither header is refused, as a
    cross-site one is.
    """
    source = origin if origin and origin != "null" else referer
    if not host or not source:
        return False
    return urlsplit(source).netloc.lower() == host.lower()


@dataclass(frozen=True)
class Confirmation:
    """A retry or discard shown on a confirmation page: exactly these items."""

    action: str
    ids: tuple[str, ...]
    model: str | None  # the filter of the page it came from
    created: float


@dataclass
class Session:
    """One browser's session."""

    id: str
    csrf_token: str
    authenticated: bool
    last_seen: float
    confirmations: dict[str, Confirmation] = field(default_factory=dict)
    notice: str | None = None  # shown once on the next page (after a redirect)

    def confirmation_token(self, action: str, ids: tuple[str, ...], model: str | None) -> str:
        """Remember ``action`` on ``ids``; return the one-time token that applies it."""
        now = time.monotonic()
        live = {
            t: c for t, c in self.confirmations.items() if now - c.created < CONFIRMATION_SECONDS
        }
        while len(live) >= MAX_CONFIRMATIONS:
            live.pop(next(iter(live)))
        token = secrets.token_urlsafe(32)
        live[token] = Confirmation(action, ids, model, now)
        self.confirmations = live
        return token

    def use_confirmation(self, token: str | None) -> Confirmation | None:
        """The confirmation for ``token``, removed so it cannot be used again (None: unknown,
        already used or expired)."""
        if not token:
            return None
        found = self.confirmations.pop(token, None)
        if found is None or time.monotonic() - found.created >= CONFIRMATION_SECONDS:
            return None
        return found


class SessionStore:
    """Sessions by id, in memory, least recently used first; thread-safe."""

    def __init__(self) -> None:
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id, marked as just used (None: unknown or idle too long)."""
        if not session_id:
            return None
        now = time.monotonic()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if now - session.last_seen > SESSION_IDLE_SECONDS:
                del self._sessions[session_id]
                return None
            session.last_seen = now
            self._sessions.move_to_end(session_id)
            return session

    def new(self, *, authenticated: bool = False) -> Session:
        """A fresh session with its own id and CSRF token.

        Past ``MAX_SESSIONS`` the least recently used anonymous session goes first, so a flood
        of login page visits cannot log an operator out.
        """
        session = Session(
            id=secrets.token_urlsafe(32),
            csrf_token=secrets.token_urlsafe(32),
            authenticated=authenticated,
            last_seen=time.monotonic(),
        )
        with self._lock:
            self._sessions[session.id] = session
            if len(self._sessions) > MAX_SESSIONS:
                anonymous = (k for k, v in self._sessions.items() if not v.authenticated)
                del self._sessions[next(anonymous, next(iter(self._sessions)))]
        return session

    def end(self, session: Session) -> None:
        """Forget ``session`` (logout, or replaced at login)."""
        with self._lock:
            self._sessions.pop(session.id, None)


class LoginLimiter:
    """At most ``LOGIN_FAILURES_ALLOWED`` failed logins per client within a sliding window."""

    def __init__(
        self, allowed: int = LOGIN_FAILURES_ALLOWED, window: float = LOGIN_WINDOW_SECONDS
    ) -> None:
        self.allowed = allowed
        self.window = window
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> float:
        """Seconds until ``client`` may try again (0: now)."""
        now = time.monotonic()
        with self._lock:
            failures = self._failures.get(client)
            if failures is None:
                return 0.0
            while failures and now - failures[0] >= self.window:
                failures.popleft()
            if not failures:
                del self._failures[client]  # the table holds only clients failing right now
                return 0.0
            if len(failures) < self.allowed:
                return 0.0
            return failures[0] + self.window - now

    def failed(self, client: str) -> None:
        """Count a failed login of ``client``."""
        with self._lock:
            self._failures.setdefault(client, deque()).append(time.monotonic())
