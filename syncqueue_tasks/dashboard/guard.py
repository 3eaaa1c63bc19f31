"""The dashboard's gate: sessions from cookies, the login redirect, CSRF checks, headers.

Every request passes the middleware: it finds the session named by the cookie, sends a
visitor without a login to the login page (deny by default: only ``/login`` and
``/static/`` are public), refuses a POST whose ``Origin`` (or ``Referer``) is not this server,
and puts strict security headers on every answer. Every POST endpoint is wrapped by
:func:`csrf_protected`, which refuses a form without the session's CSRF token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import quote

from starlette.datastructures import FormData
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp

from syncqueue_tasks.dashboard.auth import Session, SessionStore, same_origin, tokens_match

COOKIE = "syncqueue_dashboard"
LOGIN = "/login"
PUBLIC_PREFIXES = ("/static/",)
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}

FormHandler = Callable[[Request, FormData], Awaitable[Response]]


def session_of(request: Request) -> Session:
    """The request's session (the middleware set it; a login page visitor's is anonymous)."""
    session: Session | None = request.state.session
    assert session is not None, "only /login runs without a session"
    return session


def form_text(value: object) -> str:
    """A form field as text ("" when missing, or a file)."""
    return value if isinstance(value, str) else ""


def refuse(status: int, reason: str) -> Response:
    """A short plain-text refusal (nothing was done)."""
    return PlainTextResponse(f"Refused: {reason}. Nothing was done.\n", status_code=status)


def csrf_protected(handler: FormHandler) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a POST handler: it runs only with the session's CSRF token in the form."""

    async def endpoint(request: Request) -> Response:
        session: Session | None = request.state.session
        form = await request.form(max_files=0)
        token = form_text(form.get("csrf_token"))
        if session is None or not tokens_match(token, session.csrf_token):
            return refuse(403, "missing or wrong CSRF token (reload the page and try again)")
        return await handler(request, form)

    return endpoint


class Guard(BaseHTTPMiddleware):
    """Sessions, the login requirement, same-origin POSTs and security headers."""

    def __init__(self, app: ASGIApp, sessions: SessionStore, secure_cookies: bool) -> None:
        super().__init__(app)
        self.sessions = sessions
        self.secure_cookies = secure_cookies

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        """Admit, redirect or refuse the request; set the cookie and headers on the answer."""
        path = request.url.path
        if path.startswith(PUBLIC_PREFIXES):
            return _with_headers(await call_next(request), cache=True)
        incoming = request.cookies.get(COOKIE)
        session = self.sessions.get(incoming)
        if session is None and path == LOGIN and request.method == "GET":
            session = self.sessions.new()  # anonymous: carries the login form's CSRF token
        request.state.session = session
        if request.method == "POST" and not same_origin(
            request.headers.get("host"), request.headers.get("origin"),
            request.headers.get("referer"),
        ):  # fmt: skip
            response = refuse(403, "cross-site request (Origin/Referer is not this dashboard)")
        elif path != LOGIN and (session is None or not session.authenticated):
            response = _to_login(request)
        else:
            response = await call_next(request)
        self._set_cookie(response, incoming, request.state.session)
        return _with_headers(response, cache=False)

    def _set_cookie(
        self, response: Response, incoming: str | None, session: Session | None
    ) -> None:
        if session is None:
            if incoming:
                response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        elif session.id != incoming:
            response.set_cookie(
                COOKIE, session.id, path="/", httponly=True, samesite="strict",
                secure=self.secure_cookies,
            )  # fmt: skip


def _to_login(request: Request) -> Response:
    if request.headers.get("hx-request"):  # htmx polling: make the whole page go to the login
        return Response(status_code=401, headers={"HX-Redirect": LOGIN})
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{LOGIN}?next={quote(target, safe='')}", status_code=303)


def _with_headers(response: Response, *, cache: bool) -> Response:
    response.headers.update(HEADERS)
    if not cache:
        response.headers["Cache-Control"] = "no-store"
    return response
